"""DeepLabv3+: DeepLabv3 encoder + a simple decoder (v3+ §3.1-3.2, Fig. 2; overview in papers/001).

Encoder: a backbone at `output_stride` (aligned Xception, `xception.py`, or a dilated ResNet,
`resnet.py`) followed by the v3 ASPP (`aspp.ASPP`: 1x1 conv, three 3x3 atrous convs at rates
(6, 12, 18) at output stride 16, doubled at 8, image pooling; all 256 wide with BN + ReLU, atrous
*separable* convolutions by default, v3+ §3.2).

Decoder (v3+ §3.1, Fig. 2): the backbone's stride-4 low-level features are projected by a 1x1 conv
to 48 channels + BN + ReLU (fewer channels, so they do not outweigh the encoder features), the
encoder output is bilinearly upsampled to the low-level size and concatenated with them, two 3x3
convs of 256 (separable by default) + BN + ReLU refine the result, a 1x1 conv gives the class
scores, which are bilinearly upsampled to the input size.

Variables: backbone/..., aspp/{aspp0, aspp1..3, image_pooling, concat_projection},
decoder/{low_level_projection, decoder_conv0, decoder_conv1}, logits; none depends on
`output_stride`.

config.model fields (on top of `common.base_model_config()`), mapped by `from_config`:
  backbone                  'xception65' | 'xception_tiny' (tests) | a ResNet of resnet.BACKBONES
                            ('resnet50', 'resnet101', 'resnet_tiny', ...)
  resnet_layout             ResNet only: 'slim' (TF DeepLab; low_level = block1/unit_2 conv3) or
                            'torchvision' (low_level = block1 output), see resnet.py
  multi_grid                ResNet only: unit rates of block4 (v3 §3.2.1); None = (1, 1, 1)
  aspp_rates                ASPP atrous rates (6, 12, 18) given at `aspp_rates_output_stride`
  aspp_rates_output_stride  16: rates scaled by 16 / output_stride (12, 24, 36 at 8); 0 = as given
  aspp_features             ASPP width (256)
  aspp_image_pooling        image-level features branch
  aspp_separable            atrous separable convs in ASPP (v3+ §3.2)
  aspp_dropout              dropout after the ASPP projection, training only (0.1, official release)
  decoder_low_level_features  width of the 1x1 low-level projection (48, v3+ §4.1 Table 1)
  decoder_features          width of the two 3x3 decoder convs (256, v3+ §4.1 Table 2)
  decoder_separable         separable 3x3 decoder convs (v3+ §3.2)
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from deeplax import layers
from deeplax.models import aspp as aspp_lib
from deeplax.models import common
from deeplax.models import resnet
from deeplax.models import xception

ModuleDef = Any


def backbone_names():
  return sorted(xception.XCEPTION_SPECS) + sorted(resnet.BACKBONES)


class Decoder(nn.Module):
  """v3+ decoder: 1x1 projection of the low-level features, concatenated with the upsampled encoder
  output, two 3x3 (separable) convs + BN + ReLU. Returns features at the low-level resolution."""
  low_level_features: int = 48
  features: int = 256
  separable: bool = True
  norm: ModuleDef = None
  dtype: Any = jnp.float32
  align_corners: bool = False

  @nn.compact
  def __call__(self, encoder_NHWC, low_level_NHWC):
    low = layers.ConvBN(self.low_level_features, 1, norm=self.norm, dtype=self.dtype,
                        name="low_level_projection")(low_level_NHWC)
    x = layers.resize_bilinear(encoder_NHWC, low.shape[1:3], self.align_corners)
    x = jnp.concatenate([x, low.astype(x.dtype)], axis=-1)
    conv = layers.SeparableConvBN if self.separable else layers.ConvBN
    for i in range(2):
      x = conv(self.features, 3, norm=self.norm, dtype=self.dtype, name=f"decoder_conv{i}")(x)
    return x


class DeepLabV3Plus(nn.Module):
  """DeepLabv3+ with an Xception or ResNet backbone; see the module docstring for the fields."""
  num_classes: int = 21
  backbone: str = "xception65"
  output_stride: int = 16
  resnet_layout: str = "slim"
  multi_grid: Optional[Tuple[int, ...]] = None
  aspp_rates: Tuple[int, ...] = (6, 12, 18)
  aspp_rates_output_stride: int = 16
  aspp_features: int = 256
  aspp_image_pooling: bool = True
  aspp_separable: bool = True
  aspp_dropout: float = 0.1
  decoder_low_level_features: int = 48
  decoder_features: int = 256
  decoder_separable: bool = True
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9997
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None
  freeze_bn: bool = False
  remat: bool = False
  align_corners: bool = False

  def _backbone(self, norm):
    if self.backbone in xception.XCEPTION_SPECS:
      return xception.xception(self.backbone, output_stride=self.output_stride, norm=norm,
                               remat=self.remat, dtype=self.dtype, name="backbone")
    return resnet.ResNet(resnet.get_spec(self.backbone), output_stride=self.output_stride,
                         layout=self.resnet_layout, multi_grid=self.multi_grid, norm=norm,
                         dtype=self.dtype, remat=self.remat, name="backbone")

  @nn.compact
  def __call__(self, images_NHWC, train: bool = False, return_features: bool = False):
    common.check_images(images_NHWC, self.output_stride)
    norm = layers.norm_factory(train, axis_name=self.bn_axis_name, momentum=self.bn_momentum,
                               epsilon=self.bn_epsilon, frozen=self.freeze_bn, dtype=self.dtype)
    x, features = self._backbone(norm)(images_NHWC.astype(self.dtype))
    rates = aspp_lib.scale_rates(self.aspp_rates, self.output_stride, self.aspp_rates_output_stride)
    x = aspp_lib.ASPP(rates, features=self.aspp_features, image_pooling=self.aspp_image_pooling,
                      separable=self.aspp_separable, dropout_rate=self.aspp_dropout, norm=norm,
                      dtype=self.dtype, align_corners=self.align_corners, name="aspp")(x, train)
    features["aspp"] = x
    x = Decoder(self.decoder_low_level_features, self.decoder_features, self.decoder_separable,
                norm=norm, dtype=self.dtype, align_corners=self.align_corners,
                name="decoder")(x, features["low_level"])
    features["decoder"] = x
    logits = nn.Conv(self.num_classes, (1, 1), use_bias=True, dtype=self.dtype,
                     param_dtype=layers.at_least_float32(self.dtype), name="logits")(x)
    features["logits_lowres"] = logits.astype(layers.at_least_float32(logits.dtype))
    logits_NHWC = layers.resize_bilinear(features["logits_lowres"], images_NHWC.shape[1:3],
                                         self.align_corners)
    if return_features:
      return logits_NHWC, features
    return logits_NHWC


def model_config(**overrides) -> ml_collections.ConfigDict:
  """`common.base_model_config()` plus every DeepLabv3+ field at its default (Xception-65)."""
  c = common.base_model_config()
  c.name = "deeplab_v3plus"
  c.backbone = "xception65"
  c.resnet_layout = "slim"
  c.multi_grid = None
  c.aspp_rates = (6, 12, 18)
  c.aspp_rates_output_stride = 16
  c.aspp_features = 256
  c.aspp_image_pooling = True
  c.aspp_separable = True
  c.aspp_dropout = 0.1
  c.decoder_low_level_features = 48
  c.decoder_features = 256
  c.decoder_separable = True
  c.update(overrides)
  return c


_DEFAULTS = dict(model_config())


def from_config(cfg: ml_collections.ConfigDict) -> DeepLabV3Plus:
  """Maps config.model (name 'deeplab_v3plus') onto `DeepLabV3Plus`; rejects unknown keys."""
  unknown = sorted(set(cfg.keys()) - set(_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown config.model keys for 'deeplab_v3plus': {unknown}; "
                     f"known: {sorted(_DEFAULTS)}")
  get = lambda key: cfg.get(key, _DEFAULTS[key])
  if get("backbone") not in backbone_names():
    raise ValueError(f"unknown config.model.backbone {get('backbone')!r} for deeplab_v3plus; "
                     f"known: {', '.join(backbone_names())}")
  multi_grid = get("multi_grid")
  return DeepLabV3Plus(
      num_classes=int(get("num_classes")), backbone=get("backbone"),
      output_stride=int(get("output_stride")), resnet_layout=get("resnet_layout"),
      multi_grid=tuple(multi_grid) if multi_grid else None,
      aspp_rates=tuple(get("aspp_rates")),
      aspp_rates_output_stride=int(get("aspp_rates_output_stride") or 0),
      aspp_features=int(get("aspp_features")), aspp_image_pooling=bool(get("aspp_image_pooling")),
      aspp_separable=bool(get("aspp_separable")), aspp_dropout=float(get("aspp_dropout")),
      decoder_low_level_features=int(get("decoder_low_level_features")),
      decoder_features=int(get("decoder_features")),
      decoder_separable=bool(get("decoder_separable")),
      dtype=common.compute_dtype(get("dtype")), bn_momentum=float(get("bn_momentum")),
      bn_epsilon=float(get("bn_epsilon")), bn_axis_name=get("bn_axis_name"),
      freeze_bn=bool(get("freeze_bn")), remat=bool(get("remat")),
      align_corners=bool(get("align_corners")))
