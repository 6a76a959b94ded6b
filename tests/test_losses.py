"""deeplax.losses: ignore label, target modes, hard-pixel mining, class weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deeplax import layers
from deeplax import losses


def _data(n=2, h=9, w=9, c=4, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, h, w, c)).astype(np.float32)
  labels = rng.integers(0, c, (n, h, w)).astype(np.int32)
  return jnp.asarray(logits), jnp.asarray(labels)


def test_cross_entropy_matches_optax_on_valid_pixels():
  logits, labels = _data()
  labels = labels.at[0, :3].set(255)
  valid = np.asarray(labels) != 255
  expected = optax.softmax_cross_entropy_with_integer_labels(
      logits[valid], labels[valid]).mean()
  total, count = losses.cross_entropy_sum(logits, labels)
  assert count == valid.sum()
  np.testing.assert_allclose(total / count, expected, rtol=1e-6)


def test_ignore_label_contributes_nothing_to_loss_or_gradient():
  logits, labels = _data()
  labels = labels.at[1, 4:].set(255)
  ignored = np.asarray(labels) == 255
  # Arbitrary (even non-finite) scores at ignored pixels change nothing.
  changed = jnp.where(ignored[..., None], jnp.float32(1e30), logits)
  loss_fn = lambda x: losses.segmentation_loss(x, labels, target_mode="downsample_labels")
  np.testing.assert_allclose(loss_fn(logits), loss_fn(changed), rtol=1e-6)
  grads = jax.grad(loss_fn)(logits)
  assert np.all(np.asarray(grads)[ignored] == 0)
  assert np.any(np.asarray(grads)[~ignored] != 0)


def test_all_ignored_gives_zero_loss_and_gradient():
  logits, labels = _data()
  labels = jnp.full_like(labels, 255)
  loss, grads = jax.value_and_grad(lambda x: losses.segmentation_loss(x, labels))(logits)
  assert float(loss) == 0.0 and not np.any(np.asarray(grads))


def test_resize_labels_nearest_picks_stride_centres():
  labels = jnp.arange(17 * 17, dtype=jnp.int32).reshape(1, 17, 17)
  small = losses.resize_labels_nearest(labels, (3, 3))
  # A stride-8 map of a 17-px input has 3 positions centred on pixels 0, 8, 16 (ceil(17/8)).
  np.testing.assert_array_equal(small[0], np.asarray(labels)[0][::8, ::8])


def test_target_modes():
  logits_lowres, _ = _data(h=3, w=3)
  labels = jnp.asarray(np.random.default_rng(1).integers(0, 4, (2, 17, 17)), jnp.int32)
  up = losses.segmentation_loss(logits_lowres, labels, target_mode="upsample_logits")
  expected_up = optax.softmax_cross_entropy_with_integer_labels(
      layers.resize_bilinear(logits_lowres, (17, 17)), labels).mean()
  np.testing.assert_allclose(up, expected_up, rtol=1e-6)
  down = losses.segmentation_loss(logits_lowres, labels, target_mode="downsample_labels")
  expected_down = optax.softmax_cross_entropy_with_integer_labels(
      logits_lowres, labels[:, ::8, ::8]).mean()
  np.testing.assert_allclose(down, expected_down, rtol=1e-6)
  with pytest.raises(ValueError, match="target_mode"):
    losses.segmentation_loss(logits_lowres, labels, target_mode="nearest")


def test_hard_pixel_mining_keeps_the_top_fraction():
  logits, labels = _data(n=1, h=10, w=10)
  per_pixel, _ = losses.pixel_cross_entropy(logits, labels)
  top = np.sort(np.asarray(per_pixel).ravel())[::-1][:25]
  total, count = losses.cross_entropy_sum(logits, labels, top_k_fraction=0.25)
  assert count == 25
  np.testing.assert_allclose(total, top.sum(), rtol=1e-6)
  # Ignored pixels never add weight, even when picked.
  labels_ignored = labels.at[0, :9].set(255)
  _, count = losses.cross_entropy_sum(logits, labels_ignored, top_k_fraction=0.5)
  assert count <= 10
  with pytest.raises(ValueError, match="top_k_fraction"):
    losses.cross_entropy_sum(logits, labels, top_k_fraction=0.0)


def test_class_weights():
  logits, labels = _data()
  weights = (1.0, 2.0, 0.0, 0.5)
  total, count = losses.cross_entropy_sum(logits, labels, class_weights=weights)
  nll = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  w = np.asarray(weights)[np.asarray(labels)]
  np.testing.assert_allclose(total, (nll * w).sum(), rtol=1e-5)
  np.testing.assert_allclose(count, w.sum(), rtol=1e-6)
  with pytest.raises(ValueError, match="one entry per class"):
    losses.cross_entropy_sum(logits, labels, class_weights=(1.0, 2.0))


def test_shape_mismatch_is_a_clear_error():
  logits, labels = _data()
  with pytest.raises(ValueError, match="must agree"):
    losses.pixel_cross_entropy(logits, labels[:, :5])
