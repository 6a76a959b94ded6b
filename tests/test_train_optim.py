"""deeplax.optim: poly / step / warmup schedules, kernel-only weight decay, classifier lr, clipping."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from deeplax import defaults
from deeplax import optim


def _config(**kw):
  c = defaults.get_base_config()
  c.update(kw)
  return c


def _params():
  return {"backbone": {"conv": {"kernel": jnp.ones((3, 3, 2, 2))},
                       "bn": {"scale": jnp.ones((2,)), "bias": jnp.ones((2,))}},
          "logits": {"kernel": jnp.ones((1, 1, 2, 3)), "bias": jnp.ones((3,))}}


def test_poly_schedule():
  lr = optim.learning_rate_schedule(_config(learning_rate=0.007, total_steps=1000))
  for step in (0, 1, 500, 999, 1000):
    np.testing.assert_allclose(lr(step), 0.007 * (1 - step / 1000) ** 0.9, rtol=1e-4, atol=1e-12)


def test_step_schedule_and_warmup():
  lr = optim.learning_rate_schedule(_config(learning_rate=0.001, lr_schedule="step",
                                            lr_step_size=2000, total_steps=6000))
  np.testing.assert_allclose([lr(0), lr(1999), lr(2000), lr(4500)], [1e-3, 1e-3, 1e-4, 1e-5],
                             rtol=1e-5)
  warm = optim.learning_rate_schedule(_config(learning_rate=0.01, lr_schedule="constant",
                                              warmup_steps=10, total_steps=100))
  np.testing.assert_allclose([warm(0), warm(4), warm(9), warm(50)], [0.001, 0.005, 0.01, 0.01],
                             rtol=1e-5)
  with pytest.raises(ValueError, match="lr_schedule"):
    optim.learning_rate_schedule(_config(lr_schedule="cosine"))


def test_weight_decay_on_kernels_only():
  params = _params()
  tx = optim.create_optimizer(_config(learning_rate=1.0, lr_schedule="constant",
                                      weight_decay=0.1, momentum=0.0), params)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  np.testing.assert_allclose(updates["backbone"]["conv"]["kernel"], -0.1)
  np.testing.assert_allclose(updates["logits"]["kernel"], -0.1)
  for leaf in (updates["backbone"]["bn"]["scale"], updates["backbone"]["bn"]["bias"],
               updates["logits"]["bias"]):
    np.testing.assert_array_equal(leaf, 0.0)


def test_momentum_classifier_multiplier_and_clipping():
  params = _params()
  config = _config(learning_rate=0.5, lr_schedule="constant", weight_decay=0.0, momentum=0.9,
                   classifier_lr_mult=10.0, classifier_pattern=r"^logits/")
  tx = optim.create_optimizer(config, params)
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  u1, state = tx.update(grads, state, params)
  u2, state = tx.update(grads, state, params)
  np.testing.assert_allclose(u1["backbone"]["conv"]["kernel"], -0.5)
  np.testing.assert_allclose(u2["backbone"]["conv"]["kernel"], -0.5 * 1.9)  # v = 0.9 v + g
  np.testing.assert_allclose(u1["logits"]["kernel"], -5.0)
  np.testing.assert_allclose(u1["logits"]["bias"], -5.0)
  clipped = optim.create_optimizer(_config(learning_rate=1.0, lr_schedule="constant",
                                           weight_decay=0.0, momentum=0.0, grad_clip_norm=1.0),
                                   params)
  u, _ = clipped.update(grads, clipped.init(params), params)
  np.testing.assert_allclose(optax.tree.norm(u), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="matches no parameter"):
    optim.create_optimizer(_config(classifier_lr_mult=10.0, classifier_pattern="fc8"), params)


@pytest.mark.parametrize("name", ["deeplab_v1_largefov", "deeplab_v2_aspp_l", "deeplab_v3_aspp",
                                  "deeplab_v3_block7", "deeplab_v3plus_xception65", "shapes"])
def test_paper_configs_have_training_settings(name):
  """Every config validates and its optimiser masks match its model (shapes only, no compute)."""
  from deeplax import models
  from deeplax import train
  from deeplax.cli import load_config_file
  config = train.prepare_config(load_config_file(f"configs/{name}.py"), check_devices=False)
  assert config.data.name in ("voc", "shapes") and config.total_steps > 0
  model = models.build(config.model)
  crop = config.data.crop_size
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, crop, crop, 3)), train=False))
  tx = optim.create_optimizer(config, shapes["params"])
  jax.eval_shape(tx.init, shapes["params"])
  decayed = [p for p, m in zip(jax.tree.leaves(shapes["params"]),
                               jax.tree.leaves(optim.decay_mask(shapes["params"]))) if m]
  assert decayed and all(p.ndim == 4 for p in decayed)  # conv kernels only
