"""train_and_evaluate end to end on the built-in 'shapes' data (tiny model, 49 px crops, 96 steps):
learning, workdir outputs, exact resume, NaN stop, SIGTERM checkpoint, init_from another head."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from deeplax import checkpoint as ckpt_lib
from deeplax import data as data_lib
from deeplax import models
from deeplax import train
import train_configs
from train_configs import compilation_cache_dir  # pylint: disable=unused-import

TOTAL_STEPS = 96


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  return train_configs.tiny_config(str(tmp_path_factory.mktemp("tfds")), TOTAL_STEPS)


@pytest.fixture(scope="module")
def full_run(config, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  return workdir, train.train_and_evaluate(config, workdir)


def _params(workdir, step=None):
  return ckpt_lib.load_variables(workdir, step=step)[1]


def test_loss_falls_and_miou_rises(config, full_run):
  _, history = full_run
  losses = [e["loss"] for e in history["train"]]
  assert len(losses) == TOTAL_STEPS
  assert np.mean(losses[-6:]) < 0.85 * np.mean(losses[:3]), losses
  prepared = train.prepare_config(config)
  model = models.build(prepared.model)
  init_state, _ = train.create_train_state(prepared, model, jax.random.PRNGKey(0), (1, 33, 33, 3))
  before = train.evaluate(prepared, init_state)
  after = history["eval"][-1]
  assert after["miou"] > before["miou"] + 0.2, (before["miou"], after["miou"])
  assert after["pixel_accuracy"] > before["pixel_accuracy"] + 0.1


def test_workdir_outputs(full_run):
  workdir, history = full_run
  assert json.load(open(os.path.join(workdir, "config.json")))["total_steps"] == TOTAL_STEPS
  assert ckpt_lib.latest_step(workdir) == TOTAL_STEPS
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [
      TOTAL_STEPS - 16, TOTAL_STEPS - 8, TOTAL_STEPS]  # every 8, keep 3
  for step in (48, TOTAL_STEPS):
    result = json.load(open(os.path.join(workdir, "eval", f"step_{step}.json")))
    assert result["step"] == step
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["pixel_accuracy"] <= 1.0
    assert len(result["per_class_iou"]) == 5
    pngs = os.listdir(os.path.join(workdir, "eval", f"step_{step}_predictions"))
    assert len(pngs) == 2 and all(p.endswith(".png") for p in pngs)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
  assert history["step"] == TOTAL_STEPS and not history["preempted"]


def test_resume_continues_exactly(config, full_run, tmp_path):
  full_dir, _ = full_run
  workdir = str(tmp_path / "resumed")
  first = train.train_and_evaluate(config, workdir, stop_at_step=12)
  assert first["step"] == 12 and ckpt_lib.latest_step(workdir) == 12
  second = train.train_and_evaluate(config, workdir)
  assert second["step"] == TOTAL_STEPS
  expected, got = _params(full_dir), _params(workdir)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, expected)
  # The input iterator's position is part of the checkpoint.
  data_state = lambda d: {k: v for k, v in json.load(open(os.path.join(
      d, "checkpoints", str(TOTAL_STEPS), "data", "metadata"))).items() if k != "divergence"}
  assert data_state(workdir) == data_state(full_dir)


def _nan_from(n):
  """From batch `n` on, images contain NaN."""
  def edit(count, batch):
    if count >= n:
      batch["image"] = np.full_like(batch["image"], np.nan)
    return batch
  return edit


def test_nan_loss_stops_with_last_good_checkpoint(config, tmp_path, monkeypatch):
  real = data_lib.create_train_iterator
  monkeypatch.setattr(data_lib, "create_train_iterator",
                      lambda *a, **k: train_configs.EditedBatches(real(*a, **k), _nan_from(21)))
  workdir = str(tmp_path / "nan")
  # Checkpoint 16 is not yet followed by config.divergence.confirm_steps=5 healthy steps: it is
  # moved out of the resume path; 8 is the last good one.
  with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step 20.*checkpoints "
                     r"\[16\].*moved to.*last good checkpoint is step 8"):
    train.train_and_evaluate(config, workdir)
  assert ckpt_lib.latest_step(workdir) == 8
  assert os.listdir(os.path.join(workdir, "diverged_checkpoints")) == ["16"]
  params = _params(workdir)["params"]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_sigterm_saves_and_init_from_other_head(config, tmp_path):
  # A source run with 3 classes (as a converter would write it with save_variables).
  source_config = train.prepare_config(config)
  source_config.model.num_classes = 3
  source_model = models.build(source_config.model)
  source = source_model.init(jax.random.PRNGKey(7), np.zeros((1, 33, 33, 3), np.float32))
  source_dir = str(tmp_path / "source")
  ckpt_lib.save_variables(source_dir, source_config, source)

  run_config = config.copy_and_resolve_references()
  run_config.init_from = source_dir
  workdir = str(tmp_path / "sigterm")

  def kill_at_3(step, metrics):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  history = train.train_and_evaluate(run_config, workdir, step_callback=kill_at_3)
  assert history["preempted"] and history["step"] == 3
  assert ckpt_lib.latest_step(workdir) == 3
  report = json.load(open(os.path.join(workdir, "init_report.json")))
  mismatched = sorted(m.split(":")[0] for m in report["params"]["mismatched"])
  assert mismatched == ["logits/bias", "logits/kernel"]
  assert report["params"]["missing"] == [] and report["params"]["unused"] == []
  assert len(report["params"]["loaded"]) == len(jax.tree.leaves(source["params"])) - 2
  assert len(report["batch_stats"]["loaded"]) == len(jax.tree.leaves(source["batch_stats"]))
  # The loaded values are the source's; the head is freshly initialised with 5 classes.
  prepared = train.prepare_config(config)
  fresh, _ = train.create_train_state(prepared, models.build(prepared.model), jax.random.PRNGKey(0),
                                      (1, 33, 33, 3))
  merged, _ = train.load_init_variables(source_dir, fresh)
  np.testing.assert_array_equal(merged["params"]["backbone"]["conv1"]["kernel"],
                                source["params"]["backbone"]["conv1"]["kernel"])
  np.testing.assert_array_equal(merged["params"]["logits"]["kernel"],
                                fresh["params"]["logits"]["kernel"])
  assert merged["params"]["logits"]["kernel"].shape[-1] == 5
