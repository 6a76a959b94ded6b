"""DeepLab v1 (LargeFOV) and DeepLab-v2 ASPP on VGG-16 (v2 §3.1, §3.2, §4.1, Table 1, Fig. 7).

VGG-16 re-purposed for dense prediction (v2 §3.1): conv1_1 .. conv5_3 (3x3, ReLU, biases, no
batch norm), 3x3 max pools, the fully connected layers turned into convolutions ('fc6' k x k at
atrous rate r, 'fc7' 1x1, 'fc8' 1x1 to the classes) with dropout 0.5 after fc6 and fc7.

Output stride (v2 §3.1, "set its stride to 1 ... replace all subsequent convolutional layers with
atrous convolutional layers"): pool1..pool3 always stride 2; a pool that would take the stride past
`output_stride` runs with stride 1 and every convolution after it has its rate doubled. At output
stride 8 (the paper's) pool4 and pool5 have stride 1, conv5_* run at rate 2 and fc6 sees a rate-4
grid; at 16 pool4 strides and only pool5 does not; at 32 all five pools stride. The pools are never
dilated (3x3, pad 1, as DeepLab's Caffe models). A stride-2 pool maps H to ceil(H / 2), the
project's convention (deeplax.layers).

fc6 rate: `fc6_rates` are given at output stride 8, as in v2 Table 1 and Table 3 (7x7 r=4 is the
direct adaptation of VGG-16's fc6, "since we use no stride for the last two max-pooling layers").
At another output stride the rate applied is `rate * 8 / output_stride`, so fc6 keeps its
field-of-view in pixels; a rate that does not scale to an integer >= 1 raises ValueError (e.g.
ASPP-S's r=2 at output stride 32).

Even kernels (Table 1's 4x4): a k x k kernel at rate r spans k_e = k + (k-1)(r-1) pixels and is
padded by (k_e - 1) // 2 before and the rest after (deeplax.layers.symmetric_padding), so the
output keeps the input size: 4x4 at r=4 pads (6, 6); at r=1 (output stride 32) it pads (1, 2), the
extra pixel after (bottom/right), as TF's 'SAME'.

v2 Table 1 (fc6 kernel, rate at output stride 8, fc6/fc7 width; parameters with 21 classes):
7x7 r=4 4096 (134.3M), 4x4 r=4 4096 (65.1M), 4x4 r=8 4096 (65.1M), 3x3 r=12 1024 (20.5M,
DeepLab-LargeFOV). The counts follow from the widths: only LargeFOV thins fc6/fc7 to 1,024.
DeepLab-v2 ASPP on VGG-16 (v2 §4.1.2, Fig. 7, Table 3): several `fc6_rates` give parallel 3x3
fc6-fc7-fc8 branches (1024 wide, `aspp.ASPPv2`) whose class scores are summed; ASPP-S (2, 4, 8, 12),
ASPP-L (6, 12, 18, 24).
"""

from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from deeplax import layers
from deeplax.models import aspp as aspp_lib
from deeplax.models import backbones
from deeplax.models import common

Dtype = Any

# conv1_1 .. conv5_3 widths (Simonyan & Zisserman, configuration D).
VGG16_STAGE_WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

# v2 Table 1: (fc6 kernel size, fc6 rate at output stride 8, fc6/fc7 width).
TABLE1_FC6_VARIANTS = {
    "7x7_r4": (7, 4, 4096),
    "4x4_r4": (4, 4, 4096),
    "4x4_r8": (4, 8, 4096),
    "largefov": (3, 12, 1024),
}

PAPER_OUTPUT_STRIDE = 8  # the output stride `fc6_rates` are given at (v2 Table 1, Table 3)


def pool_strides(output_stride: int, num_pools: int = 5) -> Sequence[int]:
  """Strides of pool1..pool5: 2 until the running stride reaches `output_stride`, then 1."""
  strides, current = [], 1
  for _ in range(num_pools):
    s = 2 if current < output_stride else 1
    current *= s
    strides.append(s)
  if current != output_stride:
    raise ValueError(f"output_stride {output_stride} is not reachable with {num_pools} "
                     "stride-2 pools")
  return tuple(strides)


class VGGStage(nn.Module):
  """A VGG-16 stage: 3x3 conv + ReLU layers conv{stage}_{i} at atrous `rate`, then 3x3 max pool."""
  stage: int
  widths: Sequence[int]
  rate: int = 1
  pool_stride: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.widths):
      x = layers.atrous_conv(width, 3, rate=self.rate, use_bias=True, dtype=self.dtype,
                             name=f"conv{self.stage}_{i + 1}")(x)
      x = layers.relu(x)
    return layers.max_pool(x, 3, self.pool_stride, ((1, 1), (1, 1)))


class VGG16(nn.Module):
  """VGG-16 conv1_1..pool5 as a dense feature extractor at `output_stride` 8, 16 or 32 (v2 §3.1).

  Returns (pool5_NHWC, endpoints 'pool1'..'pool5', 'low_level' = pool2 (stride 4), 'aux' = pool4).
  The layers after pool5 see an atrous rate of 32 / output_stride: 4 at output stride 8 (v2
  §4.1.1: fc6 7x7 at r=4), 2 at 16, 1 at 32. Registered as backbone 'vgg16'; its option in
  config.model.backbone is `stage_widths` (narrower only in tests). No batch norm.
  """
  output_stride: int = 8
  stage_widths: Sequence[Sequence[int]] = VGG16_STAGE_WIDTHS
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    stage_cls = nn.remat(VGGStage) if self.remat else VGGStage
    endpoints: Dict[str, Any] = {}
    rate = 1
    strides = pool_strides(self.output_stride, len(self.stage_widths))
    for i, (widths, stride) in enumerate(zip(self.stage_widths, strides)):
      x = stage_cls(stage=i + 1, widths=tuple(widths), rate=rate, pool_stride=stride,
                    dtype=self.dtype, name=f"stage{i + 1}")(x)
      if stride == 1:
        rate *= 2
      endpoints[f"pool{i + 1}"] = x
    endpoints[backbones.LOW_LEVEL] = endpoints["pool2"]
    endpoints[backbones.AUX] = endpoints[f"pool{min(4, len(self.stage_widths))}"]
    return x, endpoints


backbones.register("vgg16", VGG16)


class DeepLabV1(nn.Module):
  """DeepLab-v1 (one fc6 rate: LargeFOV and the other Table 1 variants) or DeepLab-v2 VGG-16 ASPP.

  Variables (VGG-16: 'params' only): backbone/stage{s}/conv{s}_{i}, then head/{fc6, fc7, fc8}
  (one rate, `aspp.FcBranch`) or aspp/branch{j}/{fc6, fc7, fc8} (several rates, `aspp.ASPPv2`).
  `fc6_rates` are given at output stride 8 and scaled by `aspp.scale_rates`. Any registered
  backbone works; the batch-norm fields apply to backbones that have batch norm.
  Fields are the options of config.model for 'deeplab_v1' (`schema`).
  """
  num_classes: int = 21
  backbone: Any = "vgg16"              # a backbones name, config.model.backbone or a ModuleDef
  output_stride: int = 8               # the paper's; 16 and 32 also work
  fc6_kernel_size: int = 3             # Table 1: 7, 4, 4 or 3
  fc6_rates: Sequence[int] = (12,)     # at output stride 8; one: Table 1; four: ASPP-S/L (Table 3)
  fc_features: int = 1024              # fc6/fc7 width: 4096 (Table 1 rows 1-3); LargeFOV/ASPP 1024
  dropout_rate: float = 0.5            # after fc6 and after fc7
  align_corners: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9997
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None
  freeze_bn: bool = False

  @nn.compact
  def __call__(self, images_NHWC, train: bool = False, return_features: bool = False):
    common.check_images(images_NHWC, self.output_stride)
    if not self.fc6_rates:
      raise ValueError("fc6_rates must hold at least one rate")
    rates = aspp_lib.scale_rates(self.fc6_rates, self.output_stride, PAPER_OUTPUT_STRIDE)
    norm = layers.norm_factory(train, axis_name=self.bn_axis_name, momentum=self.bn_momentum,
                               epsilon=self.bn_epsilon, frozen=self.freeze_bn, dtype=self.dtype)
    x, endpoints = backbones.instantiate(
        self.backbone, output_stride=self.output_stride, norm=norm, dtype=self.dtype,
        remat=self.remat)(jnp.asarray(images_NHWC, self.dtype))
    if len(rates) == 1:
      logits_lowres = aspp_lib.FcBranch(self.num_classes, self.fc6_kernel_size, rates[0],
                                        self.fc_features, self.dropout_rate, self.dtype,
                                        name="head")(x, train)
    else:  # v2 Fig. 7: parallel 3x3 fc6-fc7-fc8 branches, scores summed.
      if self.fc6_kernel_size != 3:
        raise ValueError(f"DeepLab-ASPP (several fc6_rates) uses 3x3 fc6 kernels (v2 Fig. 7); "
                         f"got fc6_kernel_size {self.fc6_kernel_size}")
      logits_lowres = aspp_lib.ASPPv2(tuple(rates), self.num_classes,
                                      features=self.fc_features, dropout_rate=self.dropout_rate,
                                      dtype=self.dtype, name="aspp")(x, train)
    logits_lowres = logits_lowres.astype(layers.at_least_float32(logits_lowres.dtype))
    logits_NHWC = layers.resize_bilinear(logits_lowres, images_NHWC.shape[1:3], self.align_corners)
    if not return_features:
      return logits_NHWC
    return logits_NHWC, {**endpoints, "logits_lowres": logits_lowres}


def model_config(**overrides) -> ml_collections.ConfigDict:
  """config.model of 'deeplab_v1' at DeepLab-LargeFOV (v2 Table 1): `DeepLabV1`'s fields (see
  `common.model_config` for `overrides`)."""
  return common.model_config("deeplab_v1", DeepLabV1, **overrides)


def table1_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """config.model of a v2 Table 1 row: '7x7_r4', '4x4_r4', '4x4_r8' or 'largefov'."""
  if variant not in TABLE1_FC6_VARIANTS:
    raise ValueError(f"unknown Table 1 variant {variant!r}; known: {sorted(TABLE1_FC6_VARIANTS)}")
  kernel_size, rate, width = TABLE1_FC6_VARIANTS[variant]
  return model_config(fc6_kernel_size=kernel_size, fc6_rates=(rate,), fc_features=width,
                      **overrides)
