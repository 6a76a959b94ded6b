"""DeepLab v2 and v3 (v2 §3-4, v3 §3) on any registered backbone (`backbones`).

`DeepLab` = backbone (the papers': a dilated ResNet, `resnet.ResNet`, atrous at `output_stride`,
Multi-Grid, cascaded block5..7) + one head:
- 'aspp_v2' (DeepLab-v2, v2 §3.2): parallel atrous branches whose class scores are summed;
- 'aspp' (DeepLabv3, v3 §3.3): ASPP with BN and image pooling, then the 1x1 logits conv;
- 'conv' (DeepLabv3 cascaded model, v3 §3.2): the 1x1 logits conv straight on the backbone.
Logits are upsampled to the input size with bilinear interpolation and returned in float32.

Fields are the options of config.model (`schema`: building from a config checks every key and
type; `model_config()` lists them at their defaults); 'deeplab_v2' fixes head='aspp_v2':
  backbone                a `backbones` name or config.model.backbone (name + its own options, e.g.
                          ResNet's layout, multi_grid (v3 §3.2.1), num_cascaded_blocks (v3 §3.2))
  head                    'aspp' (v3 ASPP), 'conv' (v3 cascaded model) or 'aspp_v2'
  aspp_rates              atrous rates of the ASPP branches
  aspp_rates_output_stride  the output_stride `aspp_rates` are given for; they are rescaled by
                          aspp_rates_output_stride / output_stride (`aspp.scale_rates`: (6, 12, 18)
                          at 16 doubles at 8); 0 uses them as given at every output_stride
  aspp_features           v3 ASPP width (256)
  aspp_image_pooling      v3 image-level features branch (v3 §3.3, Table 5)
  aspp_dropout            dropout after the v3 ASPP projection (training only)
  head_extra_conv         torchvision head: 3x3 conv 256 + BN + ReLU between ASPP and the logits conv
  aux_head                torchvision FCN auxiliary head on the backbone's 'aux' endpoint (ResNet
                          block3; 3x3 conv (C/4 = 256) + BN + ReLU, dropout 0.1, 1x1 conv with bias);
                          upsampled logits in features['aux_logits']
  aspp_v2_features        deeplab_v2 branch width: None = a single 3x3 conv straight to the classes
                          per branch (released ResNet-101 model), N = fc6/fc7 of width N + fc8 (VGG,
                          1024)
  aspp_v2_dropout         dropout after fc6 and fc7 of each v2 branch (0.5)
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from deeplax import layers
from deeplax.models import aspp as aspp_lib
from deeplax.models import backbones
from deeplax.models import common

HEADS = ("aspp_v2", "aspp", "conv")


class DeepLab(nn.Module):
  """DeepLab v2/v3 on any registered backbone; see the module docstring for the fields.

  Images are consumed as given (float [N, H, W, 3]); mean/std normalisation is the input
  pipeline's job. The variable tree does not depend on `output_stride`.
  """
  num_classes: int = 21
  backbone: Any = "resnet101"
  output_stride: int = 16
  head: str = "aspp"
  aspp_rates: Sequence[int] = (6, 12, 18)
  aspp_rates_output_stride: Optional[int] = 16
  aspp_features: int = 256
  aspp_image_pooling: bool = True
  aspp_dropout: float = 0.1
  head_extra_conv: bool = False
  aux_head: bool = False
  aspp_v2_features: Optional[int] = None
  aspp_v2_dropout: float = 0.5
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9997            # decay of the running averages (v3 §4.1)
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None     # pmap axis BN statistics average over (None under jit)
  freeze_bn: bool = False                # running averages while training (v3 §4.1 fine-tuning)
  remat: bool = False                    # jax.checkpoint around backbone units
  align_corners: bool = False            # logit upsampling (False: torchvision, True: TF DeepLab)

  @nn.compact
  def __call__(self, images_NHWC, train: bool = False, return_features: bool = False):
    common.check_images(images_NHWC, self.output_stride)
    if self.head not in HEADS:
      raise ValueError(f"unknown DeepLab head {self.head!r}; expected one of {HEADS}")
    norm = layers.norm_factory(train, axis_name=self.bn_axis_name, momentum=self.bn_momentum,
                               epsilon=self.bn_epsilon, frozen=self.freeze_bn, dtype=self.dtype)
    features_NHWC, features = backbones.instantiate(
        self.backbone, output_stride=self.output_stride, norm=norm, dtype=self.dtype,
        remat=self.remat)(images_NHWC.astype(self.dtype))
    features = dict(features)
    rates = aspp_lib.scale_rates(self.aspp_rates, self.output_stride, self.aspp_rates_output_stride)
    logits_conv = functools.partial(nn.Conv, self.num_classes, (1, 1), use_bias=True,
                                    dtype=self.dtype, param_dtype=layers.at_least_float32(self.dtype))

    if self.head == "aspp_v2":
      logits = aspp_lib.ASPPv2(rates, self.num_classes, features=self.aspp_v2_features,
                               dropout_rate=self.aspp_v2_dropout, dtype=self.dtype,
                               name="aspp")(features_NHWC, train)
    else:
      y = features_NHWC
      if self.head == "aspp":
        y = aspp_lib.ASPP(rates, features=self.aspp_features, image_pooling=self.aspp_image_pooling,
                          dropout_rate=self.aspp_dropout, norm=norm, dtype=self.dtype,
                          align_corners=self.align_corners, name="aspp")(y, train)
        features["aspp"] = y
      if self.head_extra_conv:
        y = layers.ConvBN(256, 3, norm=norm, dtype=self.dtype, name="head_conv")(y)
      logits = logits_conv(name="logits")(y)

    size = images_NHWC.shape[1:3]
    features["logits_lowres"] = logits.astype(layers.at_least_float32(logits.dtype))
    logits_NHWC = layers.resize_bilinear(features["logits_lowres"], size, self.align_corners)
    if self.aux_head:
      # torchvision's FCNHead: C -> C/4 (256 on ResNet-50/101/152 block3) -> classes.
      aux = features[backbones.AUX]
      aux = layers.ConvBN(aux.shape[-1] // 4, 3, norm=norm, dtype=self.dtype, name="aux_conv")(aux)
      aux = nn.Dropout(0.1, deterministic=not train)(aux)
      aux = logits_conv(name="aux_logits")(aux)
      aux = aux.astype(layers.at_least_float32(aux.dtype))
      features["aux_logits"] = layers.resize_bilinear(aux, size, self.align_corners)
    if return_features:
      return logits_NHWC, features
    return logits_NHWC


V2_FIXED = {"head": "aspp_v2"}


def model_config(name: str = "deeplab_v3", **overrides) -> ml_collections.ConfigDict:
  """config.model for `name` ('deeplab_v3': the v3 ASPP model; 'deeplab_v2': head 'aspp_v2'):
  `DeepLab`'s fields at their defaults, then `overrides` (`common.model_config`)."""
  if name not in ("deeplab_v2", "deeplab_v3"):
    raise ValueError(f"deeplax.models.deeplab builds 'deeplab_v2' and 'deeplab_v3', not {name!r}")
  return common.model_config(name, DeepLab, V2_FIXED if name == "deeplab_v2" else None,
                             **overrides)
