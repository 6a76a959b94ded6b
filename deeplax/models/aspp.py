"""Atrous Spatial Pyramid Pooling, both generations.

- `ASPPv2` (v2 §3.2, Fig. 4 and Fig. 7): parallel atrous branches over the backbone features, each
  producing class scores, summed. ASPP-S rates (2, 4, 8, 12), ASPP-L (6, 12, 18, 24), LargeFOV =
  one branch at rate 12 (v2 §4.1, Table 3).
- `ASPP` (v3 §3.3, Fig. 5): a 1x1 conv, 3x3 atrous convs at `rates`, optional image-level features,
  each 256 filters + BN + ReLU, concatenated and projected by a 1x1 conv + BN + ReLU. Returns the
  features before the logits conv (the caller, DeepLabv3 or the v3+ decoder, adds it).
"""

import functools
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
  """Atrous rates at `output_stride` given rates configured for `rates_output_stride`.

  The one rate-scaling rule of deeplax (ASPP of v2/v3/v3+, the v1 fc6): each rate becomes
  r * rates_output_stride / output_stride, which must be an integer >= 1, so the field of view in
  input pixels is exactly the configured one (v3 §3.3: "the rates are doubled when
  output_stride = 8", (6, 12, 18) at OS 16 is (12, 24, 36) at 8 and (3, 6, 9) at 32; v2 §4.1:
  fc6 r=12 at OS 8 is r=6 at 16). A rate that does not scale exactly raises ValueError rather
  than being rounded to another field of view. `rates_output_stride` None or 0 uses the rates as
  given at every output_stride (torchvision's convention).
  """
  if not rates_output_stride:
    return tuple(int(r) for r in rates)
  scaled = []
  for r in rates:
    rate, remainder = divmod(int(r) * int(rates_output_stride), int(output_stride))
    if remainder or rate < 1:
      raise ValueError(
          f"atrous rate {r} (given at output stride {rates_output_stride}) does not scale to an "
          f"integer rate at output_stride {output_stride}: {r} * {rates_output_stride} / "
          f"{output_stride}; give rates that do, or rates_output_stride=0 to use them as given")
    scaled.append(rate)
  return tuple(scaled)


class FcBranch(nn.Module):
  """One fc6-fc7-fc8 branch (v2 §3.1, §3.2): fc6 k x k at atrous `rate` (`features` wide) -> ReLU
  -> dropout -> fc7 1x1 -> ReLU -> dropout -> fc8 1x1 to the class scores, with biases and no BN.

  DeepLab-v1's head (one branch, any Table 1 kernel) and each branch of `ASPPv2`. With
  `features=None` the branch is a single k x k atrous conv 'conv' straight to the scores (the
  released DeepLab-v2 ResNet-101, v2 §4.1: "adding an atrous convolutional layer on top of ResNet,
  with 3x3 kernel"). The class-score layer starts from N(0, 0.01) as the released models.
  """
  num_classes: int
  kernel_size: int = 3
  rate: int = 12
  features: Optional[int] = 1024
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(layers.atrous_conv, use_bias=True, dtype=self.dtype)
    scores = functools.partial(conv, self.num_classes, kernel_init=score_kernel_init)
    if not self.features:  # None (or 0, the configs of deeplax <= 1b78b68)
      return scores(self.kernel_size, rate=self.rate, name="conv")(x)
    x = layers.relu(conv(self.features, self.kernel_size, rate=self.rate, name="fc6")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = layers.relu(conv(self.features, 1, name="fc7")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return scores(1, name="fc8")(x)


class ASPPv2(nn.Module):
  """DeepLab-v2 ASPP head: `len(rates)` parallel 3x3 `FcBranch`es, class scores summed (v2 Fig. 4,
  Fig. 7). `features` 1024: fc6-fc7-fc8 branches (VGG-16 DeepLab-ASPP); None: one conv each (the
  released ResNet-101 model). Params: branch{i}/{fc6, fc7, fc8} or branch{i}/conv, i = 0..
  (indexed, so the tree does not depend on the rates).
  Call: `ASPPv2(rates, num_classes)(x_NHWC, train) -> scores_NHWC`.
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
      y = FcBranch(self.num_classes, 3, rate, self.features, self.dropout_rate, self.dtype,
                   name=f"branch{i}")(x, train)
      scores = y if scores is None else scores + y
    return scores


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
