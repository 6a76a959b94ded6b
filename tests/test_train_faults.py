"""Training that never loses or corrupts work, end to end through train_and_evaluate and
`python -m deeplax.main`: divergence and the last healthy checkpoint, the validated and recorded
run config, fallback past a broken checkpoint, a failed save, labels beyond num_classes."""

import glob
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from deeplax import checkpoint as ckpt_lib
from deeplax import data as data_lib
from deeplax import train
import train_configs
from train_configs import compilation_cache_dir  # pylint: disable=unused-import

HEALTHY_STEPS = 20


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = train_configs.tiny_config(str(tmp_path_factory.mktemp("tfds")), total_steps=40)
  c.checkpoint_every_steps = 1  # as in the issue: every step, keep 3
  c.eval_every_steps = 1000
  c.num_eval_images_to_save = 0
  return c


@pytest.fixture(scope="module")
def healthy(config, tmp_path_factory):
  """A run stopped at step 20, kept as a template (copy it before use)."""
  workdir = str(tmp_path_factory.mktemp("healthy"))
  train.train_and_evaluate(config, workdir, stop_at_step=HEALTHY_STEPS)
  return workdir


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def _params(workdir, step=None):
  return ckpt_lib.load_variables(workdir, step=step)[1]["params"]


def _assert_close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


def test_a_stopped_run_keeps_its_unconfirmed_checkpoints_unconfirmed(healthy):
  """Stopped at 20 (as a preemption): 16..20 are not yet followed by 5 healthy steps, so rotation
  (max_to_keep=3) kept 13..15 beside them and checkpoint 20 lists them as pending."""
  assert sorted(int(s) for s in os.listdir(os.path.join(healthy, "checkpoints"))) == list(range(13, 21))
  data = json.load(open(os.path.join(healthy, "checkpoints", "20", "data", "metadata")))
  assert data["divergence"]["pending"] == [16, 17, 18, 19, 20]
  assert len(data["divergence"]["losses"]) == HEALTHY_STEPS


def test_divergence_keeps_the_last_healthy_checkpoint_and_a_restart_recovers(config, healthy, tmp_path):
  reference = _copy(healthy, tmp_path / "reference")
  train.train_and_evaluate(config, reference)  # never diverged: steps 21..40 at lr 0.1

  workdir = _copy(healthy, tmp_path / "diverged")
  wild = config.copy_and_resolve_references()
  wild.learning_rate = 300.0  # a training-only change: accepted and recorded
  with pytest.raises(train.TrainingDivergedError, match=r"above 10 x the median") as info:
    train.train_and_evaluate(wild, workdir)
  diverged_at = int(re.search(r"(?:at|after) step (\d+)", str(info.value)).group(1))
  # lr 300 takes over at step 21 and must be caught within 6 steps; the last good checkpoint is
  # then the newest followed by 5 healthy steps, one written before lr 300 took over.
  assert diverged_at <= HEALTHY_STEPS + 6, info.value
  good = diverged_at - 6
  assert f"last good checkpoint is step {good}" in str(info.value)
  assert ckpt_lib.latest_step(workdir) == good
  _assert_close(_params(workdir), _params(healthy, good), rtol=0, atol=0)
  # The healthy checkpoints were not rotated out by the diverged ones (max_to_keep=3) ...
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == \
      [good - 2, good - 1, good]
  # ... which are kept aside, out of the resume path.
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "diverged_checkpoints"))) == \
      list(range(good + 1, diverged_at))

  # A restart with the original lr continues as the run that never diverged.
  history = train.train_and_evaluate(config, workdir)
  assert history["step"] == 40
  _assert_close(_params(workdir), _params(reference), rtol=1e-5, atol=1e-6)
  changes = json.load(open(os.path.join(workdir, train.CONFIG_CHANGES_FILE)))
  assert [c["changes"]["learning_rate"] for c in changes] == [[0.1, 300.0], [300.0, 0.1]]
  assert [c["step"] for c in changes] == [HEALTHY_STEPS, good]


def test_defaults_and_training_only_model_keys_are_not_model_changes(config, tmp_path):
  """An older config.json without keys of today's defaults, and remat / freeze_bn / dtype
  changes, resume; an ASPP width change does not."""
  prepared = train.prepare_config(config)
  old = json.loads(prepared.to_json_best_effort())
  del old["divergence"], old["allow_config_change"], old["model"]["remat"], old["model"]["aspp_rates"]
  workdir = str(tmp_path / "older")
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(old, f)
  assert train.reconcile_config(prepared, workdir, 5, write=False) == {}
  new = prepared.copy_and_resolve_references()
  new.model.remat, new.model.freeze_bn, new.model.dtype = True, True, "bfloat16"
  assert set(train.reconcile_config(new, workdir, 5, write=False)) == {
      "model.remat", "model.freeze_bn", "model.dtype"}
  new.model.aspp_features = 32
  with pytest.raises(train.ConfigChangeError, match="model.aspp_features: 16 in the workdir, 32 now"):
    train.reconcile_config(new, workdir, 5, write=False)


def test_changed_model_config_is_refused_unless_allowed_and_recorded(config, healthy, tmp_path):
  workdir = _copy(healthy, tmp_path / "changed")
  config_json = open(os.path.join(workdir, "config.json")).read()
  changed = config.copy_and_resolve_references()
  changed.model.output_stride = 16
  with pytest.raises(train.ConfigChangeError) as info:
    train.train_and_evaluate(changed, workdir)
  message = str(info.value)
  assert "model.output_stride: 8 in the workdir, 16 now" in message
  assert "--config.allow_config_change=True" in message
  assert open(os.path.join(workdir, "config.json")).read() == config_json
  assert not os.path.exists(os.path.join(workdir, train.CONFIG_CHANGES_FILE))
  assert ckpt_lib.latest_step(workdir) == HEALTHY_STEPS

  changed.allow_config_change = True
  history = train.train_and_evaluate(changed, workdir, stop_at_step=HEALTHY_STEPS + 1)
  assert history["step"] == HEALTHY_STEPS + 1
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["output_stride"] == 16
  records = json.load(open(os.path.join(workdir, train.CONFIG_CHANGES_FILE)))
  assert records[-1]["step"] == HEALTHY_STEPS
  assert records[-1]["changes"] == {"model.output_stride": [8, 16]}


def test_invalid_config_writes_nothing_and_a_fixed_relaunch_replaces_a_stale_config(config, tmp_path):
  workdir = str(tmp_path / "invalid")
  bad = config.copy_and_resolve_references()
  bad.model.output_stride = 12
  with pytest.raises(ValueError, match="unsupported output_stride 12"):
    train.train_and_evaluate(bad, workdir)
  assert not os.path.exists(workdir)
  bad = config.copy_and_resolve_references()
  bad.model.num_classes = 4
  with pytest.raises(ValueError, match=r"num_classes=4 but dataset 'shapes' .* has 5 classes"):
    train.train_and_evaluate(bad, workdir)
  assert not os.path.exists(workdir)
  # A config.json left by a launch that saved no checkpoint (e.g. of an older deeplax) is replaced.
  os.makedirs(workdir)
  stale = config.copy_and_resolve_references()
  stale.model.output_stride = 12
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(stale.to_json_best_effort())
  train.train_and_evaluate(config, workdir, stop_at_step=1)
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["output_stride"] == 8


def _label_at(n, value):
  """Batch `n` gets label `value` in one pixel."""
  def edit(count, batch):
    if count == n:
      batch["label"] = np.array(batch["label"])
      batch["label"][1, 3, 4] = value
    return batch
  return edit


def test_labels_beyond_num_classes_stop_the_run_before_the_step_is_applied(config, tmp_path, monkeypatch):
  real = data_lib.create_train_iterator
  monkeypatch.setattr(data_lib, "create_train_iterator",
                      lambda *a, **k: train_configs.EditedBatches(real(*a, **k), _label_at(4, 7)))
  workdir = str(tmp_path / "labels")
  with pytest.raises(ValueError, match=r"batch of step 3 has 1 label pixels outside "
                     r"\[0, config.model.num_classes=5\).*largest: 7\); the step was not applied"):
    train.train_and_evaluate(config, workdir)
  assert ckpt_lib.latest_step(workdir) == 2


def test_truncated_newest_checkpoint_resume_falls_back_and_says_so(config, healthy, tmp_path, caplog):
  workdir = _copy(healthy, tmp_path / "truncated")
  newest = os.path.join(workdir, "checkpoints", str(HEALTHY_STEPS))
  arrays = [f for f in glob.glob(os.path.join(newest, "state", "**", "d", "*"), recursive=True)]
  biggest = max(arrays, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)

  # predict/eval (load_variables): the previous checkpoint, or with an explicit step the cause.
  with pytest.raises(ckpt_lib.CheckpointError, match=rf"checkpoint {newest} does not restore"):
    ckpt_lib.load_variables(workdir, step=HEALTHY_STEPS)
  with caplog.at_level(logging.WARNING):
    _, _, step = ckpt_lib.load_variables(workdir)
  assert step == HEALTHY_STEPS - 1
  assert f"checkpoint {newest} does not restore" in caplog.text

  caplog.clear()
  with caplog.at_level(logging.WARNING):
    history = train.train_and_evaluate(config, workdir, stop_at_step=HEALTHY_STEPS + 1)
  assert history["step"] == HEALTHY_STEPS + 1
  assert f"resumed from step {HEALTHY_STEPS - 1}, skipping the checkpoints [{HEALTHY_STEPS}]" in caplog.text
  assert os.listdir(os.path.join(workdir, "broken_checkpoints")) == [str(HEALTHY_STEPS)]
  assert ckpt_lib.latest_step(workdir) == HEALTHY_STEPS + 1


def test_no_intact_checkpoint_is_an_error_naming_each_and_nothing_moves(config, healthy, tmp_path):
  workdir = _copy(healthy, tmp_path / "all_broken")
  steps = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  for step in steps:
    os.remove(os.path.join(workdir, "checkpoints", step, "state", "_METADATA"))
  with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint in .* restores") as info:
    train.train_and_evaluate(config, workdir)
  for step in steps:
    assert os.path.join(workdir, "checkpoints", step) in str(info.value)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == steps


# --------------------------------------------------------------------------------------------
# Through the command line.

def _main_command(workdir, data_dir, *overrides):
  return [sys.executable, "-m", "deeplax.main", "--config=configs/shapes.py", f"--workdir={workdir}",
          "--config.model.backbone.name=resnet_tiny", "--config.model.aspp_features=16",
          "--config.data.crop_size=49", "--config.data.shapes.num_train=32",
          "--config.data.shapes.num_val=8", "--config.data.shapes.min_size=64",
          "--config.data.shapes.max_size=80", "--config.data.eval_pad_size=81",
          "--config.batch_size=8", "--config.eval_every_steps=1000", "--config.log_every_steps=1",
          "--config.warmup_steps=0", f"--config.data.data_dir={data_dir}", *overrides]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, DEEPLAX_HUGE_PAGES="0", XLA_FLAGS="", JAX_PLATFORMS="cpu")


def test_bad_config_exits_2_with_one_message(config, tmp_path):
  workdir = str(tmp_path / "cli_bad")
  cmd = _main_command(workdir, config.data.data_dir, "--config.model.output_stride=12")
  run = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert run.returncode == 2, run.stderr[-2000:]
  assert "unsupported output_stride 12" in run.stderr and "Traceback" not in run.stderr
  assert not os.path.exists(workdir)
  run = subprocess.run(cmd + ["--verbose"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 2 and "Traceback" in run.stderr


def test_failed_save_stops_the_run_naming_the_directory(config, tmp_path):
  """A file-size limit (as a full disk) imposed once checkpoint 2 is complete."""
  workdir = str(tmp_path / "cli_full")
  cmd = _main_command(workdir, config.data.data_dir, "--config.total_steps=200",
                      "--config.checkpoint_every_steps=2")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  first = os.path.join(workdir, "checkpoints", "2")
  deadline = time.time() + 300
  while not os.path.isdir(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert os.path.isdir(first), "the run did not save its first checkpoint"
  resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (65536, 65536))  # CPython ignores SIGXFSZ
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 5, out[-3000:]
  checkpoints = os.path.join(workdir, "checkpoints")
  assert f"to {checkpoints} failed" in out and "File too large" in out, out[-3000:]
  step = ckpt_lib.latest_step(workdir)
  assert step is not None and step < 200 and f"last complete checkpoint is step {step}" in out
  _, variables, restored = ckpt_lib.load_variables(workdir)  # the previous checkpoint is intact
  assert restored == step and jax.tree.leaves(variables["params"])
