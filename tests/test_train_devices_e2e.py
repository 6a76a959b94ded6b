"""End to end: the README's main config (configs/shapes.py) for 4 steps at batch 8 and seed 3
through `train.train_and_evaluate`, on 1 device and on 8 simulated devices (jit and pmap).

What must agree, and how closely (the measurements are in BENCHMARKS.md, "1 vs 8 devices"):
- step 1's loss and the batch statistics after step 1 depend only on the forward pass, so the
  data order, the global-batch BN and the loss normalisation show there: relative 1e-5;
- after that, gradients of this ReLU/max-pool network are not continuous in float32 (an
  activation within rounding of 0 switches its ReLU), so any change of summation order moves the
  first gradient by ~1% and the next steps amplify it. Two 1-device runs whose only difference
  is the kernel set (`DEEPLAX_KERNELS`, same numbers to float32 rounding per op) drift exactly as
  far. The 8-device states after step 4 must stay within 10x that 1-device spread (measured: 1.0-1.2x).
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
    parallelism, workdir = sys.argv[1], sys.argv[2]
    config = load_config_file("configs/shapes.py")
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

RUNS = {  # name: (devices, parallelism, DEEPLAX_KERNELS)
    "1": (1, "jit", "auto"),
    "1_canonical": (1, "jit", "canonical"),
    "8_jit": (8, "jit", "auto"),
    "8_pmap": (8, "pmap", "auto"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  results = {}
  for name, (devices, parallelism, kernels) in RUNS.items():
    workdir = tmp_path_factory.mktemp(f"run_{name}")
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", DEEPLAX_KERNELS=kernels, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, parallelism, str(workdir)], cwd=ROOT,
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


@pytest.mark.parametrize("name", ["8_jit", "8_pmap"])
def test_first_step_forward_matches_one_device(runs, name):
  losses_1, states_1 = runs["1"]
  losses_n, states_n = runs[name]
  assert len(losses_1) == len(losses_n) == 4
  np.testing.assert_allclose(losses_n[0], losses_1[0], rtol=1e-5)
  assert _leaf_deviation(states_1, states_n, 1, "batch_stats") < 1e-5
  assert _deviation(states_1, states_n, 1, "params") < 1e-5


@pytest.mark.parametrize("name", ["8_jit", "8_pmap"])
def test_after_four_steps_within_the_float32_spread_of_one_device(runs, name):
  _, states_1 = runs["1"]
  _, states_c = runs["1_canonical"]
  _, states_n = runs[name]
  for collection in ("params", "batch_stats", "opt_state"):
    spread = _deviation(states_1, states_c, 4, collection)
    got = _deviation(states_1, states_n, 4, collection)
    assert spread > 0, collection  # the two 1-device runs do differ (float32 rounding)
    assert got < 10 * spread + 1e-6, (collection, got, spread)
