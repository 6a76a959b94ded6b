"""Exact O(N^2) dense CRF: the brute-force reference for the lattice (small images only).

Same model and conventions as deeplax.crf.inference (v2 §3.3, Krähenbühl & Koltun 2011 §3):
kernels sum_j exp(-|f_i - f_j|^2 / 2) including j = i, Potts applied as +w K Q, normalisation
"after" / "before" / "symmetric" by k = K 1 ("none": the raw exact sums, whose scale differs
from the lattice's raw scale).
"""

import jax
import jax.numpy as jnp

from deeplax.crf.inference import pixel_features
from deeplax.crf.params import CRFParams


def gaussian_matrix(features_ND):
  """K [N, N] = exp(-|f_i - f_j|^2 / 2)."""
  sq = jnp.sum(features_ND ** 2, -1)
  dist = sq[:, None] + sq[None, :] - 2.0 * features_ND @ features_ND.T
  return jnp.exp(-0.5 * jnp.maximum(dist, 0.0))


def gaussian_filter_exact(features_ND, values_NC):
  """Brute-force Gaussian filter sum_j exp(-|f_i - f_j|^2 / 2) v_j."""
  return gaussian_matrix(features_ND) @ values_NC


def _apply(kernel_NN, q_NC, normalization):
  k = kernel_NN.sum(1)
  if normalization == "none":
    return kernel_NN @ q_NC
  if normalization == "symmetric":
    norm = 1.0 / jnp.sqrt(k)
    return norm[:, None] * (kernel_NN @ (norm[:, None] * q_NC))
  if normalization == "before":
    return kernel_NN @ (q_NC / k[:, None])
  return (kernel_NN @ q_NC) / k[:, None]


def dense_crf_exact(unary_HWC, image_HW3, params: CRFParams, num_iters: int = 10):
  """Marginals Q [H, W, C] by mean field with exact dense kernels (a few hundred pixels)."""
  h, w, c = unary_HWC.shape
  dtype = unary_HWC.dtype
  bilateral = gaussian_matrix(pixel_features(image_HW3, params.sigma_alpha,
                                             params.sigma_beta).astype(dtype))
  spatial = gaussian_matrix(pixel_features(image_HW3, params.sigma_gamma).astype(dtype))
  unary = unary_HWC.reshape(h * w, c)
  logits = -unary
  for _ in range(num_iters):
    q = jax.nn.softmax(logits, -1)
    logits = (-unary + params.w1 * _apply(bilateral, q, params.normalization)
              + params.w2 * _apply(spatial, q, params.normalization))
  return jax.nn.softmax(logits, -1).reshape(h, w, c)
