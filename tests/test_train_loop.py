"""train_and_evaluate end to end on the built-in 'shapes' data (tiny model, 49 px crops, 96 steps):
learning, workdir outputs, exact resume, NaN stop, SIGTERM checkpoint, init_from another head."""

import json
import os
import signal

import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import pytest

from deeplax import checkpoint as ckpt_lib
from deeplax import data as data_lib
from deeplax import defaults
from deeplax import models
from deeplax import train
from deeplax.models import deeplab

TOTAL_STEPS = 96


@pytest.fixture(scope="module", autouse=True)
def compilation_cache_dir(tmp_path_factory):
  """The runs below compile the same step: a persistent cache compiles it once per module."""
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation_cache.reset_cache()
  yield
  jax.config.update("jax_compilation_cache_dir", None)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = defaults.get_base_config()
  c.model = deeplab.model_config(backbone="resnet_tiny", num_classes=5, output_stride=8,
                                 aspp_features=16, aspp_dropout=0.0, bn_momentum=0.9,
                                 align_corners=True)  # with 16k+1 crop and eval sizes
  c.data = data_lib.default_data_config()
  c.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  c.data.shapes = dict(seed=0, num_train=32, num_val=8, min_size=64, max_size=80)
  c.data.crop_size = 49
  c.data.min_scale, c.data.max_scale = 0.75, 1.25
  c.data.eval_pad_size = 81
  c.data.eval_batch_size = 8
  c.batch_size = 8
  c.total_steps = TOTAL_STEPS
  c.learning_rate = 0.1
  c.checkpoint_every_steps = 8
  c.eval_every_steps = 48
  c.log_every_steps = 1
  c.num_eval_images_to_save = 2
  return c


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
  before = train.evaluate(prepared, model, init_state)
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
  data_state = lambda d: json.load(open(os.path.join(d, "checkpoints", str(TOTAL_STEPS), "data",
                                                     "metadata")))
  assert data_state(workdir) == data_state(full_dir)


class _NaNAfter:
  """Wraps the real train iterator; from batch `n` on, images contain NaN."""

  def __init__(self, inner, n):
    self.inner, self.n, self.count = inner, n, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = dict(next(self.inner))
    self.count += 1
    if self.count >= self.n:
      batch["image"] = np.full_like(batch["image"], np.nan)
    return batch

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def test_nan_loss_stops_with_last_good_checkpoint(config, tmp_path, monkeypatch):
  real = data_lib.create_train_iterator
  monkeypatch.setattr(data_lib, "create_train_iterator",
                      lambda *a, **k: _NaNAfter(real(*a, **k), n=11))  # the first is a shape probe
  workdir = str(tmp_path / "nan")
  with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step 10.*last good checkpoint is step 8"):
    train.train_and_evaluate(config, workdir)
  assert ckpt_lib.latest_step(workdir) == 8
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
