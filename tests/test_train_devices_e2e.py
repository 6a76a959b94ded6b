"""End to end: the README's main config (configs/shapes.py) for 4 steps at batch 8 and seed 3
through `train.train_and_evaluate`, on 1 device and on 8 simulated devices (jit and pmap).

- In float64 (JAX_ENABLE_X64=1, config.model.dtype='float64'), parameters, batch statistics and
  optimizer state after 4 steps equal the 1-device run's (relative 1e-9 per leaf; measured
  3e-11 at worst): the data order, the global-batch BN, the loss normalisation and the update rule are
  the same on 1 and 8 devices, under jit and pmap.
- In float32 only step 1 is compared (its loss and batch statistics, relative 1e-5): after that,
  gradients of this ReLU network are not continuous in float32 (an activation within rounding of 0
  switches its ReLU), so any change of summation order, including a different kernel set on one
  device, moves the first gradient by ~1% and the next steps amplify it (BENCHMARKS.md, "1 vs 8
  devices").
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, orbax.checkpoint as ocp
    from deeplax import train
    from deeplax.cli import load_config_file
    parallelism, workdir, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
    config = load_config_file("configs/shapes.py")
    config.model.dtype = dtype
    config.total_steps, config.seed, config.batch_size = 4, 3, 8
    config.parallelism = parallelism
    config.checkpoint_every_steps, config.max_to_keep = 1, 4
    config.num_eval_images_to_save = 0
    losses = []
    train.train_and_evaluate(config, workdir,
                             step_callback=lambda step, m: losses.append(float(m["loss"])))
    manager = ocp.CheckpointManager(workdir + "/checkpoints",
                                    item_handlers={"state": ocp.PyTreeCheckpointHandler()})
    out = {}
    for step in (1, 4):
      meta = manager.item_metadata(step)["state"]
      tree = getattr(meta, "tree", meta)
      abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)
      args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
      state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=abstract, restore_args=args)))["state"]
      for collection in ("params", "batch_stats", "opt_state"):
        for path, x in jax.tree_util.tree_flatten_with_path(state[collection])[0]:
          out[f"{step}:{collection}:{jax.tree_util.keystr(path)}"] = np.asarray(x)
    np.savez(workdir + "/states.npz", **out)
    json.dump(losses, open(workdir + "/losses.json", "w"))
    print(jax.device_count(), "devices")
""")

RUNS = {  # name: (devices, parallelism, config.model.dtype)
    "1": (1, "jit", "float32"),
    "8_jit": (8, "jit", "float32"),
    "f64_1": (1, "jit", "float64"),
    "f64_8_jit": (8, "jit", "float64"),
    "f64_8_pmap": (8, "pmap", "float64"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  results = {}
  for name, (devices, parallelism, dtype) in RUNS.items():
    workdir = tmp_path_factory.mktemp(f"run_{name}")
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               JAX_ENABLE_X64="1" if dtype == "float64" else "0")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, parallelism, str(workdir), dtype], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith(f"{devices} devices"), proc.stdout
    states = dict(np.load(workdir / "states.npz"))
    results[name] = (json.loads((workdir / "losses.json").read_text()), states)
  return results


def _deviation(a, b, step, collection):
  """Norm of the difference over norm of `a`, over all leaves of one collection at `step`."""
  keys = [k for k in a if k.startswith(f"{step}:{collection}:")]
  assert keys and set(keys) == {k for k in b if k.startswith(f"{step}:{collection}:")}
  diff = sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in keys)
  norm = sum(float(np.sum(a[k].astype(np.float64) ** 2)) for k in keys)
  return np.sqrt(diff / norm)


def _leaf_deviation(a, b, step, collection):
  """Largest per-leaf max |a - b| / max |a| of one collection at `step`."""
  keys = [k for k in a if k.startswith(f"{step}:{collection}:")]
  return max(float(np.abs(a[k].astype(np.float64) - b[k]).max() / max(np.abs(a[k]).max(), 1e-30))
             for k in keys)


def test_float32_first_step_forward_matches_one_device(runs):
  losses_1, states_1 = runs["1"]
  losses_n, states_n = runs["8_jit"]
  assert len(losses_1) == len(losses_n) == 4
  np.testing.assert_allclose(losses_n[0], losses_1[0], rtol=1e-5)
  assert _leaf_deviation(states_1, states_n, 1, "batch_stats") < 1e-5
  assert _deviation(states_1, states_n, 1, "params") < 1e-5


@pytest.mark.parametrize("parallelism", ["jit", "pmap"])
def test_float64_four_steps_end_with_the_one_device_state(runs, parallelism):
  losses_1, states_1 = runs["f64_1"]
  losses_n, states_n = runs[f"f64_8_{parallelism}"]
  np.testing.assert_allclose(losses_n, losses_1, rtol=1e-9)
  for step in (1, 4):
    for collection in ("params", "batch_stats", "opt_state"):
      assert _leaf_deviation(states_1, states_n, step, collection) < 1e-9, (step, collection)
  # float64 really ran: float64 parameters, and a step-3 loss that differs from float32's by
  # more than float32's drift.
  assert {v.dtype for k, v in states_n.items() if ":params:" in k} == {np.dtype(np.float64)}
  assert abs(losses_1[2] - runs["1"][0][2]) > 1e-3
