"""End-to-end dense CRF layer: mean field unrolled as a recurrent network (CRF-as-RNN).

The joint-training direction v2 §2 cites ([59] Zheng et al., ICCV 2015; [65] Schwing & Urtasun):
the mean-field iterations of the v2 §3.3 CRF unrolled into a differentiable layer placed after
the network, with learnable kernel weights w1, w2 and label compatibility mu [C, C] (initialised
to Potts, 1 - I). Gradients flow to the logits and to those parameters; the lattices depend only
on the image and are not differentiated.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from deeplax.crf import inference


class DenseCRF(nn.Module):
  """logits [N, H, W, C] + images [N, H, W, 3] uint8 -> refined logits (log Q + const).

  Lattice overflow cannot raise inside jit: the flag is sown into the "intermediates"
  collection as `lattice_overflow` (bool [N]); check it with `mutable=["intermediates"]`.
  `capacity_factor` 6 rules out running out of points; `key_words` 2 allows key boxes beyond
  32 bits (large images with small σ).
  """
  num_classes: int
  num_iters: int = 5
  sigma_alpha: float = 67.0
  sigma_beta: float = 3.0
  sigma_gamma: float = 1.0
  init_w1: float = 4.0
  init_w2: float = 3.0
  normalization: str = "after"
  learn_compatibility: bool = True
  capacity_factor: float = 2.0
  key_words: int = 1

  @nn.compact
  def __call__(self, logits_NHWC, images_NHW3, valid_hw_N2: Optional[jax.Array] = None):
    n, h, w, c = logits_NHWC.shape
    if c != self.num_classes:
      raise ValueError(f"DenseCRF expects {self.num_classes} classes; logits have {c}")
    inference.check_image(images_NHW3, (n, h, w), batched=True)
    if self.normalization not in ("none", "before", "after", "symmetric"):
      raise ValueError(f"unknown normalization {self.normalization!r}")
    dtype = logits_NHWC.dtype
    w1 = self.param("w1", nn.initializers.constant(self.init_w1), (), dtype)
    w2 = self.param("w2", nn.initializers.constant(self.init_w2), (), dtype)
    compatibility = None
    if self.learn_compatibility:
      compatibility = self.param(
          "compatibility", lambda key, shape, dt: 1.0 - jnp.eye(shape[0], dtype=dt), (c, c),
          dtype)
    if valid_hw_N2 is None:
      valid_hw_N2 = jnp.tile(jnp.asarray([h, w], jnp.int32), (n, 1))
    unary_NHWC = -jax.nn.log_softmax(logits_NHWC, axis=-1)

    def one(unary_HWC, image_HW3, valid_hw):
      bilateral, spatial, valid_N = inference.build_kernels(
          image_HW3, self.sigma_alpha, self.sigma_beta, self.sigma_gamma, self.normalization,
          None, valid_hw, self.capacity_factor, self.key_words)
      unary = jnp.where(valid_N[:, None], unary_HWC.reshape(h * w, c), 0.0)
      logits = inference.mean_field(unary, (bilateral, spatial), (w1, w2), (h, w),
                                    self.num_iters, compatibility_CC=compatibility)
      return logits.reshape(h, w, c), bilateral.overflow | spatial.overflow

    refined, overflow = jax.vmap(one)(unary_NHWC, images_NHW3, valid_hw_N2)
    self.sow("intermediates", "lattice_overflow", overflow)
    return refined
