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

Fields are the options of config.model for 'deeplab_v3plus' (`schema`; `model_config()` lists
them at their defaults):
  backbone                  a `backbones` name or config.model.backbone: 'xception65' (v3+ §3.2),
                            'xception_tiny' (tests) or any other registered backbone, e.g. a ResNet
                            (layout 'slim': low_level = block1/unit_2 conv3, TF DeepLab;
                            'torchvision': block1 output); its 'low_level' endpoint feeds the decoder
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

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from deeplax import layers
from deeplax.models import aspp as aspp_lib
from deeplax.models import backbones
from deeplax.models import common

ModuleDef = Any


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
  """DeepLabv3+ on any registered backbone; see the module docstring for the fields."""
  num_classes: int = 21
  backbone: Any = "xception65"
  output_stride: int = 16
  aspp_rates: Sequence[int] = (6, 12, 18)
  aspp_rates_output_stride: Optional[int] = 16
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

  @nn.compact
  def __call__(self, images_NHWC, train: bool = False, return_features: bool = False):
    common.check_images(images_NHWC, self.output_stride)
    norm = layers.norm_factory(train, axis_name=self.bn_axis_name, momentum=self.bn_momentum,
                               epsilon=self.bn_epsilon, frozen=self.freeze_bn, dtype=self.dtype)
    x, features = backbones.instantiate(
        self.backbone, output_stride=self.output_stride, norm=norm, dtype=self.dtype,
        remat=self.remat)(images_NHWC.astype(self.dtype))
    features = dict(features)
    rates = aspp_lib.scale_rates(self.aspp_rates, self.output_stride, self.aspp_rates_output_stride)
    x = aspp_lib.ASPP(rates, features=self.aspp_features, image_pooling=self.aspp_image_pooling,
                      separable=self.aspp_separable, dropout_rate=self.aspp_dropout, norm=norm,
                      dtype=self.dtype, align_corners=self.align_corners, name="aspp")(x, train)
    features["aspp"] = x
    x = Decoder(self.decoder_low_level_features, self.decoder_features, self.decoder_separable,
                norm=norm, dtype=self.dtype, align_corners=self.align_corners,
                name="decoder")(x, features[backbones.LOW_LEVEL])
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
  """config.model for 'deeplab_v3plus': `DeepLabV3Plus`'s fields at their defaults (Xception-65),
  then `overrides` (`common.model_config`)."""
  return common.model_config("deeplab_v3plus", DeepLabV3Plus, **overrides)
