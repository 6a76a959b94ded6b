"""Atrous Spatial Pyramid Pooling, both generations.

- `ASPPv2` (v2 §3.2, Fig. 4 and Fig. 7): parallel atrous branches over the backbone features, each
  producing class scores, summed. ASPP-S rates (2, 4, 8, 12), ASPP-L (6, 12, 18, 24), LargeFOV =
  one branch at rate 12 (v2 §4.1, Table 3).
- `ASPP` (v3 §3.3, Fig. 5): a 1x1 conv, 3x3 atrous convs at `rates`, optional image-level features,
  each 256 filters + BN + ReLU, concatenated and projected by a 1x1 conv + BN + ReLU. Returns the
  features before the logits conv (the caller, DeepLabv3 or the v3+ decoder, adds it).
"""

import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplax import layers

ModuleDef = Any

# Class-score layers of the DeepLab v1/v2 heads start from N(0, 0.01) as in the released models.
score_kernel_init = nn.initializers.normal(0.01)

ASPP_S_RATES = (2, 4, 8, 12)
ASPP_L_RATES = (6, 12, 18, 24)
LARGE_FOV_RATES = (12,)


def scale_rates(rates: Sequence[int], output_stride: int,
                rates_output_stride: Optional[int]) -> tuple:
  """ASPP rates at `output_stride` given rates configured for `rates_output_stride`.

  Each rate becomes r * rates_output_stride / output_stride rounded half up, at least 1 (v3 §3.3: "the rates
  are doubled when output_stride = 8", i.e. (6, 12, 18) at OS 16 is (12, 24, 36) at OS 8 and
  (3, 6, 9) at OS 32). `rates_output_stride` None or 0 uses the rates as given at every output_stride.
  """
  if not rates_output_stride:
    return tuple(int(r) for r in rates)
  return tuple(max(1, math.floor(r * rates_output_stride / output_stride + 0.5)) for r in rates)


class ASPPv2(nn.Module):
  """DeepLab-v2 ASPP head: `len(rates)` parallel branches, class scores summed (v2 Fig. 4, Fig. 7).

  With `features` an int, each branch is fc6 (3x3 atrous conv at rate r, `features` wide) -> ReLU ->
  dropout -> fc7 (1x1, `features`) -> ReLU -> dropout -> fc8 (1x1 to `num_classes`), as in the VGG-16
  DeepLab-ASPP (features=1024). With `features=None` each branch is a single 3x3 atrous conv straight
  to the class scores, as in the released DeepLab-v2 ResNet-101 (v2 §4.1: "adding an atrous
  convolutional layer on top of ResNet, with 3x3 kernel"). All convs have biases and no BN.
  Params: branch{i}/{fc6, fc7, fc8} or branch{i}/conv, i = 0.. (indexed, so the tree does not depend
  on the rates). Call: `ASPPv2(rates, num_classes)(x_NHWC, train) -> scores_NHWC`.
  """
  rates: Sequence[int]
  num_classes: int
  features: Optional[int] = 1024
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    scores = None
    for i, rate in enumerate(self.rates):
      y = _V2Branch(rate, self.num_classes, self.features, self.dropout_rate, self.dtype,
                    name=f"branch{i}")(x, train)
      scores = y if scores is None else scores + y
    return scores


class _V2Branch(nn.Module):
  rate: int
  num_classes: int
  features: Optional[int]
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, use_bias=True, dtype=self.dtype, param_dtype=layers.at_least_float32(self.dtype))
    pad = layers.symmetric_padding(3, self.rate)
    atrous = dict(kernel_size=(3, 3), kernel_dilation=(self.rate, self.rate), padding=(pad, pad))
    if self.features is None:
      return conv(self.num_classes, kernel_init=score_kernel_init, name="conv", **atrous)(x)
    y = layers.relu(conv(self.features, kernel_init=layers.conv_kernel_init, name="fc6", **atrous)(x))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = layers.relu(conv(self.features, (1, 1), kernel_init=layers.conv_kernel_init, name="fc7")(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    return conv(self.num_classes, (1, 1), kernel_init=score_kernel_init, name="fc8")(y)


class ASPP(nn.Module):
  """DeepLabv3 ASPP (v3 §3.3, Fig. 5); returns the projected features before the logits conv.

  Branches: aspp0 (1x1 conv), aspp1.. (3x3 atrous conv at each of `rates`, or an atrous separable
  conv when `separable`, v3+ §3.2), image_pooling (global average pool -> 1x1 conv -> bilinear
  upsampling to the feature size), each `features` wide with BN + ReLU; concatenated, then
  concat_projection (1x1 conv + BN + ReLU) and dropout `dropout_rate` in training.
  `norm` is a `layers.norm_factory(train, ...)` partial; `rates` are used as given (see `scale_rates`).
  Call: `ASPP(rates, features=256, ...)(x_NHWC, train) -> [N, h, w, features]`.
  """
  rates: Sequence[int]
  features: int = 256
  image_pooling: bool = True
  separable: bool = False
  dropout_rate: float = 0.0
  norm: ModuleDef = None
  dtype: Any = jnp.float32
  align_corners: bool = False

  @nn.compact
  def __call__(self, x_NHWC, train: bool = False):
    conv_bn = functools.partial(layers.ConvBN, self.features, norm=self.norm, dtype=self.dtype)
    branches = [conv_bn(kernel_size=1, name="aspp0")(x_NHWC)]
    for i, rate in enumerate(self.rates):
      if self.separable:
        branch = layers.SeparableConvBN(self.features, 3, rate=rate, norm=self.norm,
                                        dtype=self.dtype, name=f"aspp{i + 1}")
      else:
        branch = conv_bn(kernel_size=3, rate=rate, name=f"aspp{i + 1}")
      branches.append(branch(x_NHWC))
    if self.image_pooling:
      pooled = jnp.mean(x_NHWC, axis=(1, 2), keepdims=True)
      pooled = conv_bn(kernel_size=1, name="image_pooling")(pooled)
      branches.append(layers.resize_bilinear(pooled, x_NHWC.shape[1:3], self.align_corners))
    y = jnp.concatenate(branches, axis=-1)
    y = conv_bn(kernel_size=1, name="concat_projection")(y)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(y)
