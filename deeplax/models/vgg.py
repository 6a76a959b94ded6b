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

import functools
from typing import Any, Dict, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from deeplax import layers
from deeplax.models import aspp as aspp_lib
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
# v2 Table 3: fc6 rates of the four-branch ASPP variants (3x3, 1024 wide).
ASPP_S_RATES = (2, 4, 8, 12)
ASPP_L_RATES = (6, 12, 18, 24)

PAPER_OUTPUT_STRIDE = 8


def pool_strides(output_stride: int, num_pools: int = 5) -> Tuple[int, ...]:
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


def fc6_rate_at(rate: int, output_stride: int) -> int:
  """The fc6 rate configured at output stride 8 (v2 Table 1) scaled to `output_stride`."""
  scaled, remainder = divmod(rate * PAPER_OUTPUT_STRIDE, output_stride)
  if remainder or scaled < 1:
    raise ValueError(f"fc6 rate {rate} (given at output stride {PAPER_OUTPUT_STRIDE}) does not "
                     f"scale to an integer rate at output_stride {output_stride}: "
                     f"{rate} * 8 / {output_stride}")
  return scaled


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

  Returns (pool5_NHWC, endpoints 'pool1'..'pool5'). The layers after pool5 see an atrous rate of
  32 / output_stride: 4 at output stride 8 (v2 §4.1.1: fc6 7x7 at r=4), 2 at 16, 1 at 32.
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
    return x, endpoints


class FcHead(nn.Module):
  """fc6 (k x k at `rate`) + ReLU + dropout, fc7 (1x1) + ReLU + dropout, fc8 (1x1) to scores."""
  num_classes: int
  kernel_size: int = 3
  rate: int = 12
  features: int = 1024
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(layers.atrous_conv, use_bias=True, dtype=self.dtype)
    x = layers.relu(conv(self.features, self.kernel_size, rate=self.rate, name="fc6")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = layers.relu(conv(self.features, 1, name="fc7")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype,
                   param_dtype=layers.at_least_float32(self.dtype),
                   kernel_init=aspp_lib.score_kernel_init, name="fc8")(x)


class DeepLabV1(nn.Module):
  """DeepLab-v1 (one fc6 rate: LargeFOV and the other Table 1 variants) or DeepLab-v2 VGG-16 ASPP.

  Variables: 'params' only (no batch norm): backbone/stage{s}/conv{s}_{i}, then head/{fc6, fc7, fc8}
  (one rate) or aspp/branch{j}/{fc6, fc7, fc8} (several rates, `aspp.ASPPv2`).
  """
  num_classes: int = 21
  output_stride: int = 8
  fc6_kernel_size: int = 3
  fc6_rates: Sequence[int] = (12,)
  fc_features: int = 1024
  dropout_rate: float = 0.5
  stage_widths: Sequence[Sequence[int]] = VGG16_STAGE_WIDTHS
  align_corners: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images_NHWC, train: bool = False, return_features: bool = False):
    common.check_images(images_NHWC, self.output_stride)
    if not self.fc6_rates:
      raise ValueError("fc6_rates must hold at least one rate")
    rates = [fc6_rate_at(r, self.output_stride) for r in self.fc6_rates]
    x, endpoints = VGG16(self.output_stride, self.stage_widths, self.remat, self.dtype,
                         name="backbone")(jnp.asarray(images_NHWC, self.dtype))
    head = functools.partial(FcHead, self.num_classes, self.fc6_kernel_size,
                             features=self.fc_features, dropout_rate=self.dropout_rate,
                             dtype=self.dtype)
    if len(rates) == 1:
      logits_lowres = head(rate=rates[0], name="head")(x, train)
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
  """`common.base_model_config()` plus every deeplab_v1 field, set to DeepLab-LargeFOV (v2 Table 1).

  The batch-norm fields of the base config are accepted and unused (VGG-16 has no batch norm).
  """
  c = common.base_model_config()
  c.name = "deeplab_v1"
  c.backbone = "vgg16"                 # the only deeplab_v1 backbone
  c.output_stride = 8                  # the paper's; 16 and 32 also work
  c.fc6_kernel_size = 3                # Table 1: 7, 4, 4 or 3
  c.fc6_rates = (12,)                  # at output stride 8; one: Table 1; four: ASPP-S/L (Table 3)
  c.fc_features = 1024                 # fc6/fc7 width: 4096 (Table 1 rows 1-3); LargeFOV/ASPP 1024
  c.dropout_rate = 0.5                 # after fc6 and after fc7
  c.stage_widths = VGG16_STAGE_WIDTHS  # conv1_* .. conv5_* widths; narrower only in tests
  c.update(overrides)
  return c


_DEFAULTS = dict(model_config())


def table1_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """config.model of a v2 Table 1 row: '7x7_r4', '4x4_r4', '4x4_r8' or 'largefov'."""
  if variant not in TABLE1_FC6_VARIANTS:
    raise ValueError(f"unknown Table 1 variant {variant!r}; known: {sorted(TABLE1_FC6_VARIANTS)}")
  kernel_size, rate, width = TABLE1_FC6_VARIANTS[variant]
  return model_config(fc6_kernel_size=kernel_size, fc6_rates=(rate,), fc_features=width,
                      **overrides)


def from_config(cfg: ml_collections.ConfigDict) -> DeepLabV1:
  """Maps config.model (name 'deeplab_v1') onto DeepLabV1; rejects unknown keys."""
  unknown = sorted(set(cfg.keys()) - set(_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown config.model keys for 'deeplab_v1': {unknown}; "
                     f"known: {sorted(_DEFAULTS)}")
  get = lambda key: cfg.get(key, _DEFAULTS[key])
  if get("backbone") != "vgg16":
    raise ValueError(f"config.model.backbone for deeplab_v1 must be 'vgg16'; "
                     f"got {get('backbone')!r}")
  return DeepLabV1(
      num_classes=int(get("num_classes")),
      output_stride=int(get("output_stride")),
      fc6_kernel_size=int(get("fc6_kernel_size")),
      fc6_rates=tuple(int(r) for r in get("fc6_rates")),
      fc_features=int(get("fc_features")),
      dropout_rate=float(get("dropout_rate")),
      stage_widths=tuple(tuple(int(w) for w in ws) for ws in get("stage_widths")),
      align_corners=bool(get("align_corners")),
      remat=bool(get("remat")),
      dtype=common.compute_dtype(get("dtype")),
  )
