"""Training's periodic evaluation and `deeplax eval` are one function: on the same checkpoint
and split (single-scale) they give the same confusion matrix and mIoU, on 1 and on 4 simulated
devices (each run in its own process with that many devices)."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

TRAIN = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, "tests")
    import jax
    from deeplax import train
    import train_configs
    data_dir, workdir = sys.argv[1], sys.argv[2]
    config = train_configs.tiny_config(data_dir, total_steps=6)
    config.checkpoint_every_steps = config.eval_every_steps = 6
    config.num_eval_images_to_save = 1
    history = train.train_and_evaluate(config, workdir)
    last = history["eval"][-1]
    json.dump({"step": last["step"], "miou": last["miou"], "confusion": last["confusion"],
               "devices": jax.device_count()}, open(workdir + "/periodic.json", "w"))
""")


@pytest.mark.parametrize("devices", [1, 4])
def test_periodic_miou_equals_deeplax_eval(devices, tmp_path):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), DEEPLAX_HUGE_PAGES="0")
  workdir, data_dir = tmp_path / "run", tmp_path / "data"
  proc = subprocess.run([sys.executable, "-c", TRAIN, str(data_dir), str(workdir)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  periodic = json.loads((workdir / "periodic.json").read_text())
  assert periodic["devices"] == devices and periodic["step"] == 6
  assert len(os.listdir(workdir / "eval" / "step_6_predictions")) == 1   # a panel, from arrays
  proc = subprocess.run([sys.executable, "-m", "deeplax.cli", "eval", "--checkpoint", str(workdir),
                         "--json", str(tmp_path / "eval.json"), "--quiet"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  evaluated = json.loads((tmp_path / "eval.json").read_text())
  assert evaluated["split"] == "val" and evaluated["num_images"] == 8
  assert evaluated["confusion_matrix"] == periodic["confusion"]
  assert evaluated["metrics"]["miou"] == periodic["miou"]
  assert 0.0 < periodic["miou"] < 1.0


def test_repeated_evaluations_reuse_one_compiled_step():
  """Training evaluates every eval_every_steps: the sharded step is built (and compiled) once."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from deeplax import evaluate, models  # pylint: disable=g-import-not-at-top
  from deeplax import defaults  # pylint: disable=g-import-not-at-top
  config = defaults.get_base_config()
  config.model = models.default_config("deeplab_v3", backbone="resnet_tiny", num_classes=3,
                                       aspp_features=8)
  model = models.build(config.model)
  images = np.random.default_rng(0).normal(size=(8, 33, 33, 3)).astype(np.float32)
  labels = np.random.default_rng(1).integers(0, 3, size=(8, 33, 33)).astype(np.int32)
  variables = model.init(jax.random.key(0), images[:1])
  batch = {"image": images, "label": labels}
  first = evaluate.evaluate(config, variables, eval_iter=[batch], progress=False)
  misses = evaluate._eval_step.cache_info().misses
  second = evaluate.evaluate(config, variables, eval_iter=[batch, batch], progress=False)
  assert evaluate._eval_step.cache_info().misses == misses
  assert second["confusion_matrix"] == [[2 * c for c in row] for row in first["confusion_matrix"]]
