"""Building blocks shared by every DeepLab model: atrous conv, batch norm, ReLU, max pool, conv+BN,
separable conv, resizing, written as the plain operations GPUs and TPUs get (`deeplax.ops` swaps
in the XLA-CPU forms of `deeplax.ops.xla_cpu` on the CPU, with the same variables and values).

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

from deeplax import ops
from deeplax.ops import xla_cpu

Dtype = Any
ModuleDef = Any

# He-normal over fan-out, as torchvision's ResNet initialises convolutions. A depthwise kernel
# [k, k, 1, C] has fan-out k*k*C but sees only k*k inputs, so it is scaled by fan-in instead.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
depthwise_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def relu(x: jax.Array) -> jax.Array:
  """max(x, 0), as `jax.nn.relu` (values, NaN passing, gradient 0 at x <= 0)."""
  return ops.choose(jax.nn.relu, xla_cpu.relu, x)


def effective_kernel_size(kernel_size: int, rate: int) -> int:
  """Span of a k x k kernel at atrous rate r: k + (k-1)(r-1) (v2 §3.1)."""
  return kernel_size + (kernel_size - 1) * (rate - 1)


def symmetric_padding(kernel_size: int, rate: int = 1) -> Tuple[int, int]:
  total = effective_kernel_size(kernel_size, rate) - 1
  return (total // 2, total - total // 2)


def conv_general_dilated(lhs, rhs, window_strides, padding, *, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None):
  """`lax.conv_general_dilated`, the convolution of every deeplax conv layer (flax's
  `conv_general_dilated` hook); on the CPU its XLA-CPU form (`deeplax.ops`)."""
  kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                precision=precision)
  return ops.choose(
      lambda x, w: jax.lax.conv_general_dilated(x, w, window_strides, padding, **kwargs),
      lambda x, w: xla_cpu.conv_general_dilated(x, w, window_strides, padding, **kwargs),
      lhs, rhs)


def max_pool(x_NHWC: jax.Array, window: int, stride: int,
             padding: Sequence[Sequence[int]]) -> jax.Array:
  """k x k max pooling with explicit (-inf) padding ((top, bottom), (left, right)), as
  `nn.max_pool` and torch's MaxPool2d; the gradient goes to the first maximum of each window in
  row-major order."""
  window, stride = int(window), int(stride)
  padding = tuple(tuple(int(p) for p in pad) for pad in padding)

  def canonical(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                                 (1, stride, stride, 1), ((0, 0),) + padding + ((0, 0),))

  return ops.choose(canonical, lambda x: xla_cpu.max_pool(x, window, stride, padding), x_NHWC)


def atrous_conv(features: int, kernel_size: int = 3, *, stride: int = 1, rate: int = 1,
                use_bias: bool = False, feature_group_count: int = 1, dtype: Dtype = jnp.float32,
                kernel_init=None, name: Optional[str] = None) -> nn.Conv:
  """A k x k convolution at atrous `rate` with symmetric explicit padding (output ceil(H/stride))."""
  pad = symmetric_padding(kernel_size, rate)
  if kernel_init is None:
    kernel_init = conv_kernel_init if feature_group_count == 1 else depthwise_kernel_init
  return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                 kernel_dilation=(rate, rate), padding=(pad, pad), use_bias=use_bias,
                 feature_group_count=feature_group_count, dtype=dtype,
                 param_dtype=at_least_float32(dtype),
                 kernel_init=kernel_init, conv_general_dilated=conv_general_dilated, name=name)


BN_AXES = (0, 1, 2)


def at_least_float32(dtype):
  """The dtype of parameters, statistics and losses: float32 (also under bfloat16 / float16
  computation), or float64 for float64 runs."""
  return jnp.promote_types(dtype, jnp.float32)


def batch_moments(x_NHWC, axis_name):
  """Per-channel mean and biased variance over N, H, W (and the pmap axis) in float32, as flax's
  fast variance: E[x^2] - E[x]^2 in one pass, clipped at 0."""
  x = x_NHWC.astype(at_least_float32(x_NHWC.dtype))
  moments = jnp.stack([x.mean(BN_AXES), (x * x).mean(BN_AXES)])
  if axis_name is not None:
    moments = jax.lax.pmean(moments, axis_name)
  mean, mean_sq = moments
  return mean, jnp.maximum(0.0, mean_sq - mean * mean)


def batch_norm_train(x_NHWC, scale, bias, epsilon: float, axis_name: Optional[str], dtype):
  """(y, mean, var): x normalised by its batch statistics, scaled and shifted (flax's numbers);
  on the CPU its XLA-CPU form (`deeplax.ops`)."""

  def canonical(x, scale, bias):
    mean, var = batch_moments(x, axis_name)
    y = (x.astype(at_least_float32(x.dtype)) - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias
    return y.astype(dtype), mean, var

  return ops.choose(
      canonical, lambda x, s, b: xla_cpu.batch_norm_train(x, s, b, epsilon, axis_name, dtype),
      x_NHWC, scale, bias)

class BatchNorm(nn.Module):
  """Batch norm over N, H, W of NHWC inputs, with flax.linen.BatchNorm's variables
  (params scale, bias; batch_stats mean, var), numbers and running-average rule.

  `axis_name` takes statistics over a pmap axis as well. Running averages are not updated while
  initialising (as flax).
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
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), at_least_float32(self.dtype))
    ra_var = self.variable("batch_stats", "var", jnp.ones, (channels,), at_least_float32(self.dtype))
    scale = self.param("scale", self.scale_init, (channels,), at_least_float32(self.dtype))
    bias = self.param("bias", nn.initializers.zeros, (channels,), at_least_float32(self.dtype))
    if self.use_running_average:
      inv = jax.lax.rsqrt(ra_var.value + self.epsilon)
      y = (x_NHWC.astype(at_least_float32(x_NHWC.dtype)) - ra_mean.value) * (inv * scale) + bias
      return y.astype(self.dtype)
    initializing = self.is_initializing()
    y, mean, var = batch_norm_train(x_NHWC, scale, bias, self.epsilon,
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
