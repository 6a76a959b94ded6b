"""Per-pixel softmax cross-entropy for segmentation, with the two DeepLab target conventions.

- 'upsample_logits' (v3 §4.1 "Upsampling logits"): the low-resolution scores are bilinearly
  upsampled to the label size, so fine annotations are kept.
- 'downsample_labels' (v1/v2, v3 §4.1): the ground truth is subsampled by nearest neighbour to the
  score map (the label pixel under each score position; with symmetric padding score i of a
  stride-s network is centred on input pixel s*i).

Pixels labelled `ignore_label` (255) contribute nothing to the loss or its gradient. Optional
per-class weights and online hard-pixel mining (only the top-k fraction of highest-loss pixels of
each image count, as TF DeepLab's `top_k_percent_pixels`).

Losses come as (sum, count) so a data-parallel step can normalise by the count over the global
batch (`psum` under pmap) and match a single device exactly; `mean = sum / count`.
"""

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from deeplax import layers

TARGET_MODES = ("upsample_logits", "downsample_labels")


def resize_labels_nearest(labels_NHW: jax.Array, size: Sequence[int]) -> jax.Array:
  """Nearest-neighbour subsampling of labels to `size` (corner-aligned: i -> round(i*(H-1)/(h-1)))."""
  _, h, w = labels_NHW.shape
  out_h, out_w = int(size[0]), int(size[1])
  if (out_h, out_w) == (h, w):
    return labels_NHW

  def index(n_in, n_out):
    if n_out == 1:
      return np.zeros((1,), np.int32)
    return np.round(np.arange(n_out) * (n_in - 1) / (n_out - 1)).astype(np.int32)

  return labels_NHW[:, index(h, out_h)][:, :, index(w, out_w)]


def pixel_cross_entropy(logits_NHWC: jax.Array, labels_NHW: jax.Array, *, ignore_label: int = 255,
                        class_weights: Optional[Sequence[float]] = None
                        ) -> Tuple[jax.Array, jax.Array]:
  """Per-pixel loss [N, H, W] (0 at ignored pixels) and per-pixel weight [N, H, W] (0 there too)."""
  if logits_NHWC.ndim != 4 or labels_NHW.ndim != 3 or logits_NHWC.shape[:3] != labels_NHW.shape:
    raise ValueError(f"logits [N, H, W, C] and labels [N, H, W] must agree; got logits "
                     f"{logits_NHWC.shape}, labels {labels_NHW.shape}")
  num_classes = logits_NHWC.shape[-1]
  labels = labels_NHW.astype(jnp.int32)
  valid = labels != ignore_label
  safe_labels = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits_NHWC.astype(layers.at_least_float32(logits_NHWC.dtype)), axis=-1)
  # A one-hot select, not a gather: its gradient is a select too, where the gather's is a
  # scatter into zeros (slower on XLA CPU).
  is_label = safe_labels[..., None] == jnp.arange(num_classes, dtype=jnp.int32)
  nll = -jnp.sum(jnp.where(is_label, log_probs, 0.0), axis=-1)
  weight = valid.astype(jnp.float32)
  if class_weights is not None:
    class_weights = jnp.asarray(class_weights, jnp.float32)
    if class_weights.shape != (num_classes,):
      raise ValueError(f"class_weights must have one entry per class ({num_classes}); "
                       f"got shape {class_weights.shape}")
    weight = weight * class_weights[safe_labels]
  # jnp.where (not a multiply) so a non-finite loss at an ignored pixel cannot leak through.
  return jnp.where(valid, nll * weight, 0.0), weight


def cross_entropy_sum(logits_NHWC: jax.Array, labels_NHW: jax.Array, *, ignore_label: int = 255,
                      class_weights: Optional[Sequence[float]] = None,
                      top_k_fraction: float = 1.0) -> Tuple[jax.Array, jax.Array]:
  """(sum of pixel losses, sum of their weights); `top_k_fraction` < 1 keeps the hardest pixels.

  Hard-pixel mining selects, per image, the ceil(top_k_fraction * H * W) pixels of highest loss
  (ignored pixels have loss 0, so they are picked only when nothing harder is left; they still
  add no weight).
  """
  if not 0.0 < top_k_fraction <= 1.0:
    raise ValueError(f"top_k_fraction must be in (0, 1]; got {top_k_fraction}")
  loss_NHW, weight_NHW = pixel_cross_entropy(logits_NHWC, labels_NHW, ignore_label=ignore_label,
                                             class_weights=class_weights)
  if top_k_fraction >= 1.0:
    return loss_NHW.sum(), weight_NHW.sum()
  n = loss_NHW.shape[0]
  loss_NP, weight_NP = loss_NHW.reshape(n, -1), weight_NHW.reshape(n, -1)
  k = max(1, int(np.ceil(top_k_fraction * loss_NP.shape[1])))
  top_loss, top_idx = jax.lax.top_k(loss_NP, k)
  top_weight = jnp.take_along_axis(weight_NP, top_idx, axis=1)
  return top_loss.sum(), top_weight.sum()


def segmentation_loss_sum(logits_lowres_NHWC: jax.Array, labels_NHW: jax.Array, *,
                          target_mode: str = "upsample_logits", ignore_label: int = 255,
                          class_weights: Optional[Sequence[float]] = None,
                          top_k_fraction: float = 1.0, align_corners: bool = False
                          ) -> Tuple[jax.Array, jax.Array]:
  """(loss sum, weight sum) of low-resolution scores against full-resolution labels."""
  if target_mode == "upsample_logits":
    logits = layers.resize_bilinear(logits_lowres_NHWC.astype(layers.at_least_float32(logits_lowres_NHWC.dtype)), labels_NHW.shape[1:3],
                                    align_corners=align_corners)
    labels = labels_NHW
  elif target_mode == "downsample_labels":
    logits = logits_lowres_NHWC
    labels = resize_labels_nearest(labels_NHW, logits_lowres_NHWC.shape[1:3])
  else:
    raise ValueError(f"unknown loss target_mode {target_mode!r}; expected one of {TARGET_MODES}")
  return cross_entropy_sum(logits, labels, ignore_label=ignore_label, class_weights=class_weights,
                           top_k_fraction=top_k_fraction)


def segmentation_loss(logits_lowres_NHWC, labels_NHW, **kwargs) -> jax.Array:
  """Mean loss over the weighted, non-ignored pixels (0 if there are none)."""
  total, count = segmentation_loss_sum(logits_lowres_NHWC, labels_NHW, **kwargs)
  return total / jnp.maximum(count, 1e-8)
