"""Building blocks shared by every DeepLab model: atrous conv, conv+BN, separable conv, resizing.

Conventions (one place, so every backbone and every weight converter agrees):
- Atrous convolution (v3 §3.1 eq. 1, v2 §3.1): `y[i] = sum_k x[i + r*k] w[k]`, a k x k kernel at rate r
  covers k + (k-1)(r-1) pixels.
- Padding is explicit and symmetric, `(k_eff - 1) // 2` before and the rest after, as torchvision and
  TF-slim's `conv2d_same` pad: a stride-s layer maps a size-H input to `ceil(H / s)`.
- Batch norm `momentum` is the decay of the running averages (TF's `decay`, v3 §4.1 uses 0.9997;
  torchvision's momentum=0.1 is decay 0.9).
"""

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
ModuleDef = Any

# He-normal over fan-out, as torchvision's ResNet initialises convolutions. A depthwise kernel
# [k, k, 1, C] has fan-out k*k*C but sees only k*k inputs, so it is scaled by fan-in instead.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
depthwise_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


@jax.custom_jvp
def relu(x: jax.Array) -> jax.Array:
  """max(x, 0) with jax.nn.relu's values (NaN passes) and gradient (0 at x <= 0).

  Written as a select, not a max: XLA CPU then keeps the output of a residual unit in memory
  instead of recomputing the whole chain of earlier units inside every backward fusion that
  reads it (a max of one large operand counts as unary and may be duplicated into consumers;
  the select has two). ResNet-101, crop 513: ~10% of the train step.
  """
  return jnp.where(x <= 0, jnp.zeros((), x.dtype), x)


relu.defjvps(lambda g, ans, x: jnp.where(x > 0, g, jnp.zeros((), g.dtype)))


def effective_kernel_size(kernel_size: int, rate: int) -> int:
  """Span of a k x k kernel at atrous rate r: k + (k-1)(r-1) (v2 §3.1)."""
  return kernel_size + (kernel_size - 1) * (rate - 1)


def symmetric_padding(kernel_size: int, rate: int = 1) -> Tuple[int, int]:
  total = effective_kernel_size(kernel_size, rate) - 1
  return (total // 2, total - total // 2)


def _drop_padding_only_taps(size_HW, rhs, padding, rhs_dilation):
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


def _tap_ranges(size, k, rate, pad):
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
# an atrous conv runs as one matrix product per tap over the rows and columns it reaches.
# Measured on XLA CPU, 3x3 convs, forward and forward + backward: rate 12/24/36 at 41x41
# (share 0.65/0.40/0.19): 1.8/3.8/9x faster; 65x65 at rate 12 (0.77): 1.25-1.4x; 33x33 at
# rate 6 (0.77): equal; 65x65 at rate 8 (0.84) and 41x41 at rate 4 (0.87): 10-25% slower.
_TAPS_BELOW_SHARE = 0.8


def _atrous_by_taps(lhs, rhs, padding, rhs_dilation, precision):
  """A stride-1 atrous conv (NHWC, HWIO) as sum over taps of x[rows, cols] @ w[a, b], each over
  the output region where the tap reads the image, zero-padded to the output size; None when
  that does not save enough (the share of image reads is >= _TAPS_BELOW_SHARE) or no tap reads
  the image."""
  (out_h, rows), (out_w, cols) = (
      _tap_ranges(lhs.shape[1 + axis], rhs.shape[axis], rhs_dilation[axis], padding[axis])
      for axis in (0, 1))
  reads = sum(r[1] - r[0] for r in rows if r) * sum(c[1] - c[0] for c in cols if c)
  if not 0 < reads < _TAPS_BELOW_SHARE * rhs.shape[0] * rhs.shape[1] * out_h * out_w:
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
def _pointwise(x_NHWC, w_CD, precision):
  """A 1x1 convolution as x @ w; its weight gradient is x^T g over the flattened pixels."""
  return jax.lax.dot_general(x_NHWC, w_CD, (((3,), (0,)), ((), ())), precision=precision)


def _pointwise_fwd(x_NHWC, w_CD, precision):
  return _pointwise(x_NHWC, w_CD, precision), (x_NHWC, w_CD)


def _pointwise_bwd(precision, residuals, g_NHWD):
  x_NHWC, w_CD = residuals
  dx = jax.lax.dot_general(g_NHWD, w_CD, (((3,), (1,)), ((), ())), precision=precision)
  # Written as x^T g (not autodiff's (g^T x)^T): XLA CPU then feeds the matmul directly instead
  # of first copying g channel-major in a fusion with the batch-norm backward, a slow
  # transposition (~100 ms per 2048-channel block-4 gradient at 41x41, batch 2).
  dw = jax.lax.dot_general(x_NHWC.reshape(-1, x_NHWC.shape[-1]),
                           g_NHWD.reshape(-1, g_NHWD.shape[-1]), (((0,), (0,)), ((), ())),
                           precision=precision)
  return dx.astype(x_NHWC.dtype), dw.astype(w_CD.dtype)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


# On CPU a convolution with at most this many output pixels (batch x H x W) per input channel,
# times rate^2, takes its weight gradient per tap (`_conv_tap_weight_grad`). XLA's gradient ->
# per tap, 3x3 kernels, batch 2, in the ResNet-101 train step (crop 513): 33x33 256 -> 256
# channels (9 pixels per channel) 14.7 -> 7.7 ms; 65x65 128 -> 128 (66) 22 -> 10 ms. Alone:
# 33x33 rate 2, 512 -> 512 35 -> 28 ms; batch 8, 65x65 rate 2, 256 -> 256 217 -> 144 ms
# (132 / 2^2); but 129x129 64 -> 64 (520) 17 -> 28 ms and at rate 2 18 -> 27 ms (520 / 2^2).
_TAP_WEIGHT_GRAD_PIXELS_PER_CHANNEL = 80


def _uses_tap_weight_grad(out_pixels: int, in_channels: int, rhs_dilation) -> bool:
  rate = max(rhs_dilation or (1,))
  return out_pixels <= _TAP_WEIGHT_GRAD_PIXELS_PER_CHANNEL * in_channels * rate * rate


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv_tap_weight_grad(lhs, rhs, window_strides, padding, rhs_dilation, dimension_numbers,
                          precision):
  """An explicitly padded convolution (NHWC, HWIO) whose weight gradient on CPU is one matrix
  product per tap, g^T x_tap (the input gradient, and every gradient on other platforms, stay
  XLA's).

  XLA CPU computes a convolution's weight gradient as another convolution, with the batch as its
  input features over a window the size of the image, slowly for few pixels per channel and at
  atrous rates > 1 (see _TAP_WEIGHT_GRAD_PIXELS_PER_CHANNEL). g^T is copied once so that every
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
  out = _conv_tap_weight_grad(lhs, rhs, window_strides, padding, rhs_dilation, dimension_numbers,
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

  def xla_grads(lhs, rhs, g_NHWD):
    return jax.vjp(conv, lhs, rhs)[1](g_NHWD)

  def tap_grads(lhs, rhs, g_NHWD):
    dx, = jax.vjp(lambda x: conv(x, rhs), lhs)[1](g_NHWD)
    dw = _weight_grad_by_taps(lhs, g_NHWD, rhs.shape, window_strides, padding, rhs_dilation,
                              precision)
    return dx, dw.astype(rhs.dtype)

  return tuple(jax.lax.platform_dependent(lhs, rhs, g_NHWD, cpu=tap_grads, default=xla_grads))


_conv_tap_weight_grad.defvjp(_conv_tap_weight_grad_fwd, _conv_tap_weight_grad_bwd)


def _conv_or_matmul(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                    dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` (NHWC, HWIO), without the taps that read only padding, with
  1x1 kernels (also atrous ones whose rate is >= the input size) as a matrix product, and
  large-rate atrous kernels, whose taps mostly read padding, as one matrix product per tap;
  other convolutions with few pixels per channel or at atrous rates > 1 take a per-tap weight
  gradient on CPU (`_conv_tap_weight_grad`).

  Same numbers up to float rounding. On XLA CPU the matmul's gradients need no transposed copy
  of the activations (the convolution's weight gradient does, and XLA fuses the residual stream
  into those copies), and a convolution's time grows with its atrous rate (its padding) while
  the per-tap products shrink with it.
  """
  undilated_lhs = lhs_dilation is None or all(d == 1 for d in lhs_dilation)
  explicit = not isinstance(padding, str) and undilated_lhs
  stride1_explicit = explicit and tuple(window_strides) == (1, 1)
  if stride1_explicit and rhs_dilation is not None:
    rhs, padding, rhs_dilation = _drop_padding_only_taps(lhs.shape[1:3], rhs, padding, rhs_dilation)
    if feature_group_count == 1 and rhs.shape[0] * rhs.shape[1] > 1:
      out = _atrous_by_taps(lhs, rhs, [tuple(p) for p in padding], rhs_dilation, precision)
      if out is not None:
        return out
  pointwise = (rhs.shape[0] == rhs.shape[1] == 1 and feature_group_count == 1
               and (isinstance(padding, str) or all(tuple(p) == (0, 0) for p in padding))
               and undilated_lhs)
  # Symbolic sizes (jax.export with a polymorphic batch) keep XLA's gradient.
  if (not pointwise and explicit and feature_group_count == 1
      and all(isinstance(d, int) for d in lhs.shape)):
    padding, rhs_dilation = tuple(tuple(p) for p in padding), tuple(rhs_dilation or (1, 1))
    out_pixels = lhs.shape[0]
    for axis in (0, 1):
      span = effective_kernel_size(rhs.shape[axis], rhs_dilation[axis])
      out_pixels *= (lhs.shape[1 + axis] + sum(padding[axis]) - span) // window_strides[axis] + 1
    if _uses_tap_weight_grad(out_pixels, lhs.shape[3], rhs_dilation):
      return _conv_tap_weight_grad(lhs, rhs, tuple(window_strides), padding, rhs_dilation,
                                   dimension_numbers, precision)
  if not pointwise:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        precision=precision)
  # NHWC x HWIO, the layout flax gives every deeplax model.
  sy, sx = window_strides
  if (sy, sx) != (1, 1):
    lhs = lhs[:, ::sy, ::sx, :]
  return _pointwise(lhs, rhs[0, 0], precision)


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
             padding: Sequence[Sequence[int]]) -> jax.Array:
  """k x k max pooling with explicit (-inf) padding ((top, bottom), (left, right)), as
  `nn.max_pool` (and torch's MaxPool2d).

  The gradient goes to the first maximum of each window in row-major order, as XLA's
  select-and-scatter and torch do. Written as strided slices with a custom gradient: XLA CPU
  expands the select-and-scatter of `nn.max_pool`'s gradient into index tensors and a scatter,
  147 ms forward + backward for the ResNet stem at crop 513, batch 2; this takes 35 ms.
  """
  return _max_pool(x_NHWC, int(window), int(stride), tuple(tuple(int(p) for p in pad)
                                                           for pad in padding))


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


def atrous_conv(features: int, kernel_size: int = 3, *, stride: int = 1, rate: int = 1,
                use_bias: bool = False, feature_group_count: int = 1, dtype: Dtype = jnp.float32,
                name: Optional[str] = None) -> nn.Conv:
  """A k x k convolution at atrous `rate` with symmetric explicit padding (output ceil(H/stride))."""
  pad = symmetric_padding(kernel_size, rate)
  return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                 kernel_dilation=(rate, rate), padding=(pad, pad), use_bias=use_bias,
                 feature_group_count=feature_group_count, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=conv_kernel_init if feature_group_count == 1 else depthwise_kernel_init,
                 conv_general_dilated=_conv_or_matmul, name=name)


_BN_AXES = (0, 1, 2)


def _batch_moments(x_NHWC, axis_name):
  """Per-channel mean and biased variance over N, H, W (and the pmap axis) in float32, as flax's
  fast variance: E[x^2] - E[x]^2 in one pass, clipped at 0."""
  x = x_NHWC.astype(jnp.float32)
  moments = jnp.stack([x.mean(_BN_AXES), (x * x).mean(_BN_AXES)])
  if axis_name is not None:
    moments = jax.lax.pmean(moments, axis_name)
  mean, mean_sq = moments
  return mean, jnp.maximum(0.0, mean_sq - mean * mean)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm_train(x_NHWC, scale, bias, epsilon, axis_name, dtype):
  """(y, mean, var): x normalised by its batch statistics, scaled and shifted."""
  return _batch_norm_train_fwd(x_NHWC, scale, bias, epsilon, axis_name, dtype)[0]


def _batch_norm_train_fwd(x_NHWC, scale, bias, epsilon, axis_name, dtype):
  mean, var = _batch_moments(x_NHWC, axis_name)
  inv = jax.lax.rsqrt(var + epsilon)
  # y = x * a + b: no x - mean tensor for XLA to keep in memory for the backward pass.
  a = inv * scale
  y = (x_NHWC.astype(jnp.float32) * a + (bias - mean * a)).astype(dtype)
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
  g, x = cotangents[0].astype(jnp.float32), x_NHWC.astype(jnp.float32)
  local = jnp.stack([g.sum(_BN_AXES), (g * x).sum(_BN_AXES)])
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


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.Module):
  """Batch norm over N, H, W of NHWC inputs, with flax.linen.BatchNorm's variables
  (params scale, bias; batch_stats mean, var), numbers and running-average rule.

  In training it uses its own gradient (`_batch_norm_train`): XLA CPU's autodiff of the
  textbook form materialises x - mean for the backward reductions, an extra pass over every
  activation. `axis_name` takes statistics over a pmap axis as well. Running averages are not
  updated while initialising (as flax).
  """
  use_running_average: bool = False
  momentum: float = 0.9997
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x_NHWC):
    channels = x_NHWC.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
    scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    if self.use_running_average:
      inv = jax.lax.rsqrt(ra_var.value + self.epsilon)
      y = (x_NHWC.astype(jnp.float32) - ra_mean.value) * (inv * scale) + bias
      return y.astype(self.dtype)
    initializing = self.is_initializing()
    y, mean, var = _batch_norm_train(x_NHWC, scale, bias, self.epsilon,
                                     None if initializing else self.axis_name, self.dtype)
    if not initializing:
      mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def batch_norm(train: bool, *, axis_name: Optional[str] = None, momentum: float = 0.9997,
               epsilon: float = 1e-5, frozen: bool = False, dtype: Dtype = jnp.float32,
               scale_init: Callable = nn.initializers.ones,
               name: Optional[str] = None) -> BatchNorm:
  """Batch norm; `axis_name` averages statistics over a pmap axis, `frozen` uses running averages.

  Under `jax.jit` with the batch sharded over a mesh, statistics are already over the global batch
  and `axis_name` stays None. A frozen norm never updates its statistics (v3 §4.1 fine-tune stage);
  its scale and offset remain parameters.
  """
  use_running_average = (not train) or frozen
  return BatchNorm(use_running_average=use_running_average, momentum=momentum, epsilon=epsilon,
                   axis_name=None if use_running_average else axis_name, dtype=dtype,
                   scale_init=scale_init, name=name)


def norm_factory(train: bool, *, axis_name: Optional[str] = None, momentum: float = 0.9997,
                 epsilon: float = 1e-5, frozen: bool = False,
                 dtype: Dtype = jnp.float32) -> Callable[..., BatchNorm]:
  """`functools.partial` of `batch_norm` to inject into blocks (`norm(name='bn1')`)."""
  return functools.partial(batch_norm, train, axis_name=axis_name, momentum=momentum,
                           epsilon=epsilon, frozen=frozen, dtype=dtype)


class ConvBN(nn.Module):
  """Atrous conv -> batch norm -> optional ReLU. Params: {'conv': {kernel}, 'bn': {scale, bias}}."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  rate: int = 1
  relu: bool = True
  norm: ModuleDef = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = atrous_conv(self.features, self.kernel_size, stride=self.stride, rate=self.rate,
                    dtype=self.dtype, name="conv")(x)
    x = self.norm(name="bn")(x)
    return relu(x) if self.relu else x


class SeparableConvBN(nn.Module):
  """Atrous depthwise-separable conv (v3+): depthwise k x k at `rate` + BN, pointwise 1x1 + BN.

  `relu_between` puts a ReLU after the depthwise BN, as DeepLabv3+'s decoder, ASPP and Xception do.
  Params: {'depthwise': {kernel}, 'depthwise_bn', 'pointwise': {kernel}, 'pointwise_bn'}.
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  rate: int = 1
  relu: bool = True
  relu_between: bool = True
  norm: ModuleDef = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    x = atrous_conv(channels, self.kernel_size, stride=self.stride, rate=self.rate,
                    feature_group_count=channels, dtype=self.dtype, name="depthwise")(x)
    x = self.norm(name="depthwise_bn")(x)
    if self.relu_between:
      x = relu(x)
    x = atrous_conv(self.features, 1, dtype=self.dtype, name="pointwise")(x)
    x = self.norm(name="pointwise_bn")(x)
    return relu(x) if self.relu else x


def _interpolation_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
  """[out_size, in_size] linear-interpolation weights (PyTorch/TF semantics, no antialiasing)."""
  out_idx = np.arange(out_size, dtype=np.float64)
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = out_idx * scale
  else:
    src = (out_idx + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(m, (np.arange(out_size), hi), frac)
  return m.astype(np.float32)


def resize_bilinear(x_NHWC: jax.Array, size: Sequence[int], align_corners: bool = False) -> jax.Array:
  """Bilinear resize of [N, H, W, C] to `size` = (H', W').

  `align_corners=False` is PyTorch's `F.interpolate(..., align_corners=False)` (half-pixel centres);
  `True` is TF1's `resize_bilinear(align_corners=True)` used by the official DeepLab code.
  Separable matrix products: exact, no antialiasing, cheap at segmentation sizes.
  """
  n, h, w, c = x_NHWC.shape
  out_h, out_w = int(size[0]), int(size[1])
  if (out_h, out_w) == (h, w):
    return x_NHWC
  mh = jnp.asarray(_interpolation_matrix(h, out_h, align_corners), dtype=x_NHWC.dtype)
  mw = jnp.asarray(_interpolation_matrix(w, out_w, align_corners), dtype=x_NHWC.dtype)
  y = jnp.einsum("oh,nhwc->nowc", mh, x_NHWC)
  return jnp.einsum("pw,nowc->nopc", mw, y)
