"""The XLA-CPU kernels: the forms of deeplax.layers' operations that XLA's CPU backend runs fastest.

Each function here computes what its canonical twin in `deeplax.layers` computes, with the same
variables and the same values up to float rounding; `deeplax.ops.choose` runs these on the CPU
and the canonical operations on GPUs and TPUs. Why each form is faster on XLA CPU, with the
measurements and what was tried, is in BENCHMARKS.md ("XLA-CPU kernels").
"""

import functools
from typing import Tuple

import jax
import jax.numpy as jnp

from deeplax import layers


@jax.custom_jvp
def relu(x: jax.Array) -> jax.Array:
  """max(x, 0) with jax.nn.relu's values (NaN passes) and gradient (0 at x <= 0), as a select.

  XLA CPU then keeps the output of a residual unit in memory instead of recomputing the chain of
  earlier units inside every backward fusion that reads it (a max of one large operand counts as
  unary and may be duplicated into consumers; the select has two). BENCHMARKS.md, "XLA-CPU
  kernels".
  """
  return jnp.where(x <= 0, jnp.zeros((), x.dtype), x)


relu.defjvps(lambda g, ans, x: jnp.where(x > 0, g, jnp.zeros((), g.dtype)))



def drop_padding_only_taps(size_HW, rhs, padding, rhs_dilation):
  """Along an axis where the atrous rate is >= the input size, every tap but the centre reads only
  zero padding (v3 §3.3, Fig. 4: the filter degenerates to its centre weight); keep just that tap.
  Exact in values and gradients (the dropped taps' gradients are zero anyway)."""
  padding, rhs_dilation = [tuple(p) for p in padding], list(rhs_dilation)
  for axis in (0, 1):
    k, rate = rhs.shape[axis], rhs_dilation[axis]
    centred = k % 2 == 1 and padding[axis] == (rate * (k // 2),) * 2
    if k > 1 and centred and rate >= size_HW[axis]:
      rhs = jax.lax.slice_in_dim(rhs, k // 2, k // 2 + 1, axis=axis)
      padding[axis], rhs_dilation[axis] = (0, 0), 1
  return rhs, padding, tuple(rhs_dilation)


def tap_ranges(size, k, rate, pad):
  """Per tap of a stride-1 axis: (first output, end output, input offset), or None if the tap
  reads only padding. Output i of tap a reads input i + a*rate - pad_before."""
  out_size = size + pad[0] + pad[1] - rate * (k - 1)
  ranges = []
  for a in range(k):
    shift = a * rate - pad[0]
    start, end = max(0, -shift), min(out_size, size - shift)
    ranges.append((start, end, shift) if end > start else None)
  return out_size, ranges


# Below this share of the k x k x H x W tap-pixel products that read the image (not padding),
# an atrous conv runs as one matrix product per tap over the rows and columns it reaches
# (threshold from the measurements in BENCHMARKS.md, "Per-tap atrous convolutions").
TAPS_BELOW_SHARE = 0.8


def atrous_by_taps(lhs, rhs, padding, rhs_dilation, precision):
  """A stride-1 atrous conv (NHWC, HWIO) as sum over taps of x[rows, cols] @ w[a, b], each over
  the output region where the tap reads the image, zero-padded to the output size; None when
  that does not save enough (the share of image reads is >= TAPS_BELOW_SHARE) or no tap reads
  the image."""
  (out_h, rows), (out_w, cols) = (
      tap_ranges(lhs.shape[1 + axis], rhs.shape[axis], rhs_dilation[axis], padding[axis])
      for axis in (0, 1))
  reads = sum(r[1] - r[0] for r in rows if r) * sum(c[1] - c[0] for c in cols if c)
  if not 0 < reads < TAPS_BELOW_SHARE * rhs.shape[0] * rhs.shape[1] * out_h * out_w:
    return None
  accumulate = jnp.float32 if lhs.dtype == jnp.bfloat16 else None
  out = None
  for a, row in enumerate(rows):
    for b, col in enumerate(cols):
      if row is None or col is None:
        continue
      (i0, i1, dy), (j0, j1, dx) = row, col
      tap = jax.lax.dot_general(lhs[:, i0 + dy:i1 + dy, j0 + dx:j1 + dx, :], rhs[a, b],
                                (((3,), (0,)), ((), ())), precision=precision,
                                preferred_element_type=accumulate)
      tap = jnp.pad(tap, ((0, 0), (i0, out_h - i1), (j0, out_w - j1), (0, 0)))
      out = tap if out is None else out + tap
  return out.astype(lhs.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise(x_NHWC, w_CD, precision):
  """A 1x1 convolution as x @ w; its weight gradient is x^T g over the flattened pixels."""
  return jax.lax.dot_general(x_NHWC, w_CD, (((3,), (0,)), ((), ())), precision=precision)


def _pointwise_fwd(x_NHWC, w_CD, precision):
  return pointwise(x_NHWC, w_CD, precision), (x_NHWC, w_CD)


def _pointwise_bwd(precision, residuals, g_NHWD):
  x_NHWC, w_CD = residuals
  dx = jax.lax.dot_general(g_NHWD, w_CD, (((3,), (1,)), ((), ())), precision=precision)
  # x^T g, not autodiff's (g^T x)^T: no channel-major copy of g fused into the BN backward.
  dw = jax.lax.dot_general(x_NHWC.reshape(-1, x_NHWC.shape[-1]),
                           g_NHWD.reshape(-1, g_NHWD.shape[-1]), (((0,), (0,)), ((), ())),
                           precision=precision)
  return dx.astype(x_NHWC.dtype), dw.astype(w_CD.dtype)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


# A convolution with at most this many output pixels (batch x H x W) per input channel, times
# rate^2, takes its weight gradient per tap (`conv_tap_weight_grad`; threshold from the
# measurements in BENCHMARKS.md, "Per-tap weight gradients").
TAP_WEIGHT_GRAD_PIXELS_PER_CHANNEL = 80


def uses_tap_weight_grad(out_pixels: int, in_channels: int, rhs_dilation) -> bool:
  rate = max(rhs_dilation or (1,))
  return out_pixels <= TAP_WEIGHT_GRAD_PIXELS_PER_CHANNEL * in_channels * rate * rate


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def conv_tap_weight_grad(lhs, rhs, window_strides, padding, rhs_dilation, dimension_numbers,
                          precision):
  """An explicitly padded convolution (NHWC, HWIO) whose weight gradient on CPU is one matrix
  product per tap, g^T x_tap (the input gradient, and every gradient on other platforms, stay
  XLA's).

  XLA CPU computes a convolution's weight gradient as another convolution, with the batch as its
  input features over a window the size of the image, slowly for few pixels per channel and at
  atrous rates > 1 (see TAP_WEIGHT_GRAD_PIXELS_PER_CHANNEL). g^T is copied once so that every
  product takes both operands in the layout YNNPACK's matmul reads (contracting the last axis of
  the left one); x_tap^T g would go to Eigen's slower one. ResNet-101, crop 513, batch 2 train
  step (bench/bench_train.py, two rounds each): 2.31-2.36 -> 2.23-2.25 s at output stride 16,
  7.53-7.60 -> 7.30-7.42 s at 8.
  """
  return _plain_conv(lhs, rhs, window_strides, padding, rhs_dilation, dimension_numbers, precision)


def _plain_conv(lhs, rhs, window_strides, padding, rhs_dilation, dimension_numbers, precision):
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, rhs_dilation=rhs_dilation,
                                      dimension_numbers=dimension_numbers, precision=precision)


def _conv_tap_weight_grad_fwd(lhs, rhs, window_strides, padding, rhs_dilation, dimension_numbers,
                              precision):
  out = conv_tap_weight_grad(lhs, rhs, window_strides, padding, rhs_dilation, dimension_numbers,
                              precision)
  return out, (lhs, rhs)


def _weight_grad_by_taps(lhs, g_NHWD, kernel_shape, window_strides, padding, rhs_dilation,
                         precision):
  """dL/dw[a, b] = x_tap(a, b)^T g, computed as (g^T x_tap)^T, one matrix product per tap."""
  (sy, sx), (ry, rx), (kh, kw) = window_strides, rhs_dilation, kernel_shape[:2]
  out_h, out_w = g_NHWD.shape[1:3]
  x_padded = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  # The barrier keeps XLA from folding the transpose back into each product.
  g_DP = jax.lax.optimization_barrier(g_NHWD.reshape(-1, g_NHWD.shape[-1]).T)
  accumulate = jnp.float32 if lhs.dtype == jnp.bfloat16 else None
  dw_T = jnp.stack([
      jax.lax.dot_general(
          g_DP,
          x_padded[:, a * ry:a * ry + sy * (out_h - 1) + 1:sy,
                   b * rx:b * rx + sx * (out_w - 1) + 1:sx, :].reshape(-1, lhs.shape[-1]),
          (((1,), (0,)), ((), ())), precision=precision, preferred_element_type=accumulate)
      for a in range(kh) for b in range(kw)])
  return jnp.swapaxes(dw_T, 1, 2).reshape(kernel_shape)


def _conv_tap_weight_grad_bwd(window_strides, padding, rhs_dilation, dimension_numbers, precision,
                              residuals, g_NHWD):
  lhs, rhs = residuals
  conv = lambda x, w: _plain_conv(x, w, window_strides, padding, rhs_dilation, dimension_numbers,
                                  precision)

  dx, = jax.vjp(lambda x: conv(x, rhs), lhs)[1](g_NHWD)
  dw = _weight_grad_by_taps(lhs, g_NHWD, rhs.shape, window_strides, padding, rhs_dilation,
                            precision)
  return dx, dw.astype(rhs.dtype)


conv_tap_weight_grad.defvjp(_conv_tap_weight_grad_fwd, _conv_tap_weight_grad_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, *, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None):
  """`lax.conv_general_dilated` (NHWC, HWIO) in XLA CPU's fast forms: without the taps that read
  only padding (v3 §3.3), 1x1 kernels (also atrous ones whose rate is >= the input size) as a
  matrix product with an x^T g weight gradient, large-rate atrous kernels, whose taps mostly read
  padding, as one matrix product per tap; other convolutions with few pixels per channel or at
  atrous rates > 1 take a per-tap weight gradient (`conv_tap_weight_grad`).

  Same numbers up to float rounding. On XLA CPU the matmul's gradients need no transposed copy
  of the activations, and a convolution's time grows with its atrous rate (its padding) while
  the per-tap products shrink with it (BENCHMARKS.md, "XLA-CPU kernels").
  """
  undilated_lhs = lhs_dilation is None or all(d == 1 for d in lhs_dilation)
  explicit = not isinstance(padding, str) and undilated_lhs
  stride1_explicit = explicit and tuple(window_strides) == (1, 1)
  if stride1_explicit and rhs_dilation is not None:
    rhs, padding, rhs_dilation = drop_padding_only_taps(lhs.shape[1:3], rhs, padding, rhs_dilation)
    if feature_group_count == 1 and rhs.shape[0] * rhs.shape[1] > 1:
      out = atrous_by_taps(lhs, rhs, [tuple(p) for p in padding], rhs_dilation, precision)
      if out is not None:
        return out
  is_pointwise = (rhs.shape[0] == rhs.shape[1] == 1 and feature_group_count == 1
                  and (isinstance(padding, str) or all(tuple(p) == (0, 0) for p in padding))
                  and undilated_lhs)
  # Symbolic sizes (jax.export with a polymorphic batch) keep XLA's gradient.
  if (not is_pointwise and explicit and feature_group_count == 1
      and all(isinstance(d, int) for d in lhs.shape)):
    padding, rhs_dilation = tuple(tuple(p) for p in padding), tuple(rhs_dilation or (1, 1))
    out_pixels = lhs.shape[0]
    for axis in (0, 1):
      span = layers.effective_kernel_size(rhs.shape[axis], rhs_dilation[axis])
      out_pixels *= (lhs.shape[1 + axis] + sum(padding[axis]) - span) // window_strides[axis] + 1
    if uses_tap_weight_grad(out_pixels, lhs.shape[3], rhs_dilation):
      return conv_tap_weight_grad(lhs, rhs, tuple(window_strides), padding, rhs_dilation,
                                  dimension_numbers, precision)
  if not is_pointwise:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        precision=precision)
  # NHWC x HWIO, the layout flax gives every deeplax model.
  sy, sx = window_strides
  if (sy, sx) != (1, 1):
    lhs = lhs[:, ::sy, ::sx, :]
  return pointwise(lhs, rhs[0, 0], precision)


def _max_pool_taps(x_NHWC, window, stride, padding):
  """The padded input (-inf) and, per window position in row-major order, its strided view."""
  n, h, w, c = x_NHWC.shape
  (py0, py1), (px0, px1) = padding
  out_h, out_w = (h + py0 + py1 - window) // stride + 1, (w + px0 + px1 - window) // stride + 1
  xp = jnp.pad(x_NHWC, ((0, 0), (py0, py1), (px0, px1), (0, 0)), constant_values=-jnp.inf)
  taps = [jax.lax.slice(xp, (0, a, b, 0),
                        (n, a + stride * (out_h - 1) + 1, b + stride * (out_w - 1) + 1, c),
                        (1, stride, stride, 1))
          for a in range(window) for b in range(window)]
  return xp.shape, taps


def max_pool(x_NHWC: jax.Array, window: int, stride: int,
             padding: Tuple[Tuple[int, int], Tuple[int, int]]) -> jax.Array:
  """`layers.max_pool` as strided slices with a custom gradient: the gradient goes to the first
  maximum of each window in row-major order, as XLA's select-and-scatter does. XLA CPU expands
  that select-and-scatter into index tensors and a scatter (BENCHMARKS.md, "XLA-CPU kernels")."""
  return _max_pool(x_NHWC, window, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x_NHWC, window, stride, padding):
  _, taps = _max_pool_taps(x_NHWC, window, stride, padding)
  return functools.reduce(jnp.maximum, taps)


def _max_pool_fwd(x_NHWC, window, stride, padding):
  y = _max_pool(x_NHWC, window, stride, padding)
  return y, (x_NHWC, y)


def _max_pool_bwd(window, stride, padding, residuals, g_NHWC):
  x_NHWC, y = residuals
  padded_shape, taps = _max_pool_taps(x_NHWC, window, stride, padding)
  out_h, out_w = y.shape[1:3]
  taken = jnp.zeros(y.shape, bool)
  dx = None
  for t, tap in enumerate(taps):
    a, b = divmod(t, window)
    first = (tap == y) & ~taken
    taken = taken | first
    # Back to the padded input: output (i, j) of tap (a, b) read pixel (a + s*i, b + s*j).
    routed = jax.lax.pad(jnp.where(first, g_NHWC, jnp.zeros((), g_NHWC.dtype)),
                         jnp.zeros((), g_NHWC.dtype),
                         ((0, 0, 0), (a, padded_shape[1] - a - stride * (out_h - 1) - 1, stride - 1),
                          (b, padded_shape[2] - b - stride * (out_w - 1) - 1, stride - 1),
                          (0, 0, 0)))
    dx = routed if dx is None else dx + routed
  (py0, _), (px0, _) = padding
  h, w = x_NHWC.shape[1:3]
  return (dx[:, py0:py0 + h, px0:px0 + w, :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)



@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(x_NHWC, scale, bias, epsilon, axis_name, dtype):
  """`layers.batch_norm_train` with its own gradient: XLA CPU's autodiff of the textbook form
  materialises x - mean for the backward reductions, an extra pass over every activation
  (BENCHMARKS.md, "XLA-CPU kernels"). Returns (y, mean, var)."""
  return _batch_norm_train_fwd(x_NHWC, scale, bias, epsilon, axis_name, dtype)[0]


def _batch_norm_train_fwd(x_NHWC, scale, bias, epsilon, axis_name, dtype):
  mean, var = layers.batch_moments(x_NHWC, axis_name)
  inv = jax.lax.rsqrt(var + epsilon)
  # y = x * a + b: no x - mean tensor for XLA to keep in memory for the backward pass.
  a = inv * scale
  y = (x_NHWC.astype(layers.at_least_float32(x_NHWC.dtype)) * a + (bias - mean * a)).astype(dtype)
  return (y, mean, var), (x_NHWC, scale, mean, inv)


def _batch_norm_train_bwd(epsilon, axis_name, dtype, residuals, cotangents):
  """The batch-norm gradient in two passes over the activations (one reduction, one map):
  dx = scale/sigma * (g - mean(g) - x_hat * mean(g * x_hat)), the means over the global batch;
  scale and bias get this device's sums (the train step sums parameter gradients over devices).
  sum(g * (x - mean)) is taken as sum(g * x) - mean * sum(g), and dx as per-channel
  a * g + k * x + c, so no x - mean tensor is formed. The statistics outputs only feed the
  running averages and take no gradient."""
  del epsilon, dtype
  x_NHWC, scale, mean, inv = residuals
  wide = layers.at_least_float32(x_NHWC.dtype)
  g, x = cotangents[0].astype(wide), x_NHWC.astype(wide)
  local = jnp.stack([g.sum(layers.BN_AXES), (g * x).sum(layers.BN_AXES)])
  count = x_NHWC.shape[0] * x_NHWC.shape[1] * x_NHWC.shape[2]
  total = local
  if axis_name is not None:
    total = jax.lax.psum(local, axis_name)
    count = count * jax.lax.psum(1, axis_name)
  mean_g, mean_gx = total / count
  mean_g_centred = mean_gx - mean * mean_g
  a = scale * inv
  k = -a * inv * inv * mean_g_centred
  dx = g * a + x * k + (-a * mean_g - k * mean)
  dbias = local[0]
  dscale = (local[1] - mean * local[0]) * inv
  return dx.astype(x_NHWC.dtype), dscale, dbias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)

