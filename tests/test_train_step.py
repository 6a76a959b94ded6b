"""The train step: sharded batch norm (jit mesh and pmap == one device), frozen BN, target modes,
multi-scale training. Tiny DeepLabv3 (resnet_tiny) on 33 px crops."""

import time

import jax
import ml_collections
import numpy as np
import pytest

from deeplax import defaults
from deeplax import evaluate as evaluate_lib
from deeplax import inference
from deeplax import models
from deeplax import train
from deeplax.models import deeplab

CROP = 33
BATCH = 8
NUM_CLASSES = 3


def _config(**overrides):
  c = defaults.get_base_config()
  # bn_epsilon 1e-3: at init a few channels of this tiny net have near-zero batch variance, which
  # with eps 1e-5 amplifies float rounding differences between reduction orders by ~1e3.
  c.model = deeplab.model_config(backbone="resnet_tiny", num_classes=NUM_CLASSES, output_stride=16,
                                 aspp_features=8, aspp_dropout=0.0, bn_momentum=0.9,
                                 bn_epsilon=1e-3)
  c.batch_size = BATCH
  c.total_steps = 100
  c.learning_rate = 0.01
  for key, value in overrides.items():
    target = c
    *path, last = key.split(".")
    for p in path:
      target = target[p]
    target[last] = value
  return c


def _batches(num, seed=0):
  """Learnable batches: the label is which colour channel is largest; some pixels ignored."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num):
    image = rng.normal(size=(BATCH, CROP, CROP, 3)).astype(np.float32)
    image = np.repeat(np.repeat(image[:, ::4, ::4], 4, 1), 4, 2)[:, :CROP, :CROP]
    label = image.argmax(-1).astype(np.int32)
    label[:, :3] = 255
    out.append({"image": image, "label": label})
  return out


def _run(config, batches, devices):
  config = train.prepare_config(config)
  model = models.build(config.model)
  state, tx = train.create_train_state(config, model, jax.random.PRNGKey(0),
                                       (BATCH, CROP, CROP, 3))
  step = train.make_train_step(config, model, tx,
                               axis_name=train.AXIS_NAME if config.parallelism == "pmap" else None)
  parallel = train.make_parallel(config, step, devices)
  state = parallel.put_state(state)
  losses = []
  for batch in batches:
    state, metrics = parallel.step(state, parallel.put_batch(batch))
    losses.append(float(parallel.get_metrics(metrics)["loss"]))
  return jax.device_get(parallel.get_state(state)), losses


@pytest.fixture(scope="module")
def sharded_runs():
  batches = _batches(3)
  devices = jax.devices()[:4]
  runs = {}
  for name, config, devs in [("one", _config(), jax.devices()[:1]), ("jit", _config(), devices),
                             ("pmap", _config(parallelism="pmap"), devices)]:
    t = time.time()
    runs[name] = _run(config, batches, devs)
    print(f"{name}: {time.time() - t:.1f}s")
  return runs


def _assert_close(a, b, atol):
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=atol)


@pytest.mark.parametrize("form", ["jit", "pmap"])
def test_sharded_batch_norm_equals_one_device(sharded_runs, form):
  (ref, ref_losses), (got, got_losses) = sharded_runs["one"], sharded_runs[form]
  np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-5)
  _assert_close(got["params"], ref["params"], atol=1e-5)
  _assert_close(got["batch_stats"], ref["batch_stats"], atol=1e-5)
  assert int(got["step"]) == 3


def test_pmap_and_jit_agree(sharded_runs):
  (jit_state, jit_losses), (pmap_state, pmap_losses) = sharded_runs["jit"], sharded_runs["pmap"]
  np.testing.assert_allclose(jit_losses, pmap_losses, rtol=1e-5)
  _assert_close(jit_state["params"], pmap_state["params"], atol=1e-5)
  _assert_close(jit_state["batch_stats"], pmap_state["batch_stats"], atol=1e-5)


def test_batch_statistics_are_trained(sharded_runs):
  state, _ = sharded_runs["one"]
  config = train.prepare_config(_config())
  init, _ = train.create_train_state(config, models.build(config.model), jax.random.PRNGKey(0),
                                     (1, CROP, CROP, 3))
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), state["batch_stats"],
                         jax.device_get(init["batch_stats"]))
  assert all(jax.tree.leaves(changed))


def test_frozen_batch_norm_keeps_statistics():
  config = _config(**{"model.freeze_bn": True})
  config = train.prepare_config(config)
  model = models.build(config.model)
  state, tx = train.create_train_state(config, model, jax.random.PRNGKey(0), (BATCH, CROP, CROP, 3))
  rng = np.random.default_rng(5)
  state["batch_stats"] = jax.tree_util.tree_map_with_path(  # non-trivial running averages
      lambda path, x: (rng.uniform(0.8, 1.5, x.shape) if "var" in jax.tree_util.keystr(path)
                       else rng.normal(0.0, 0.1, x.shape)).astype(np.float32),
      state["batch_stats"])
  before = jax.device_get(state)
  step = jax.jit(train.make_train_step(config, model, tx))
  for batch in _batches(2):
    state, metrics = step(state, batch)
    assert bool(metrics["finite"])
  after = jax.device_get(state)
  jax.tree.map(np.testing.assert_array_equal, after["batch_stats"], before["batch_stats"])
  assert not np.allclose(after["params"]["logits"]["kernel"], before["params"]["logits"]["kernel"])


def test_step_whose_update_is_not_finite_is_not_applied():
  """Finite loss and gradients, but an update that overflows the parameters (lr 1e39 is inf in
  float32): the state stays as it was and the step reports finite=False."""
  config = train.prepare_config(_config(learning_rate=1e39))
  model = models.build(config.model)
  state, tx = train.create_train_state(config, model, jax.random.PRNGKey(0), (BATCH, CROP, CROP, 3))
  before = jax.device_get(state)
  new_state, metrics = jax.jit(train.make_train_step(config, model, tx))(state, _batches(1)[0])
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
  assert not bool(metrics["finite"])
  after = jax.device_get(new_state)
  for key in ("params", "batch_stats", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, after[key], before[key])
  assert int(after["step"]) == 1


@pytest.mark.parametrize("overrides", [
    {"loss.target_mode": "upsample_logits", "train_scales": (1.0, 0.75, 0.5)},
    {"loss.target_mode": "downsample_labels", "train_scales": (1.0, 0.75, 0.5),
     "loss.top_k_fraction": 0.5, "model.dtype": "bfloat16", "model.remat": True},
], ids=["multiscale_upsample", "multiscale_downsample_topk_bf16_remat"])
def test_target_modes_and_multiscale_learn(overrides):
  config = _config(learning_rate=0.05, **overrides)
  batch = _batches(1, seed=3)[0]
  _, losses = _run(config, [batch] * 8, jax.devices()[:1])
  assert np.all(np.isfinite(losses))
  # Learning, not monotonicity: bf16 with top-k mining may bump once on the way down.
  assert losses[-1] < 0.95 * losses[0], losses
  assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_multiscale_sizes():
  assert [inference.scaled_size((321, 321), s)[0] for s in (1.0, 0.75, 0.5)] == [321, 241, 161]


def test_config_errors():
  with pytest.raises(ValueError, match="parallelism"):
    train.prepare_config(_config(parallelism="shard_map"))
  with pytest.raises(ValueError, match="divisible by the number of devices"):
    train.prepare_config(_config(batch_size=3))
  with pytest.raises(ValueError, match="unknown config.data keys"):
    c = _config()
    c.data.crop = 3
    train.prepare_config(c)


def test_align_corners_with_sizes_not_16k_plus_1_warns(caplog):
  """align_corners=True is exact only for 16k+1 crops and eval sizes; others are flagged."""
  import logging
  c = _config()
  c.model.align_corners = True
  c.data.crop_size, c.data.eval_pad_size = 113, 145
  with caplog.at_level(logging.WARNING):
    train.prepare_config(c)
  assert "not 16k+1" not in caplog.text
  c.data.crop_size = 112
  with caplog.at_level(logging.WARNING):
    train.prepare_config(c)
  assert "config.data.crop_size=112 is not 16k+1" in caplog.text


def test_ignore_label_is_honoured_by_loss_gradients_and_confusion():
  """config.data.ignore_label = 254 on data with 254 gives the loss, gradients and confusion of 255."""
  batch = _batches(1)[0]
  relabelled = dict(batch, label=np.where(batch["label"] == 255, 254, batch["label"]))
  results = {}
  for ignore, data in [(255, batch), (254, relabelled)]:
    config = train.prepare_config(_config(**{"data.ignore_label": ignore}), check_devices=False)
    model = models.build(config.model)
    state, tx = train.create_train_state(config, model, jax.random.PRNGKey(0),
                                         (BATCH, CROP, CROP, 3))
    new_state, metrics = jax.jit(train.make_train_step(config, model, tx))(state, data)
    variables = {"params": new_state["params"], "batch_stats": new_state["batch_stats"]}
    eval_batch = dict(data, mask=np.ones(data["label"].shape, bool),
                      height=np.full(BATCH, CROP), width=np.full(BATCH, CROP),
                      id=np.array([f"b{i}" for i in range(BATCH)]))
    evaluated = evaluate_lib.evaluate(config, variables, eval_iter=[eval_batch], progress=False)
    results[ignore] = (float(metrics["loss"]), float(metrics["grad_norm"]),
                       jax.device_get(new_state["params"]),
                       np.asarray(evaluated["confusion_matrix"]), evaluated["metrics"]["miou"])
  (loss_a, grad_a, params_a, conf_a, miou_a), (loss_b, grad_b, params_b, conf_b, miou_b) = (
      results[255], results[254])
  assert miou_a == miou_b
  np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
  np.testing.assert_allclose(grad_b, grad_a, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7), params_a, params_b)
  np.testing.assert_array_equal(conf_b, conf_a)
  assert conf_a.sum() == (batch["label"] != 255).sum()
