"""DeepLab v2 and v3 on a dilated ResNet (v2 §3-4, v3 §3).

`DeepLab` = ResNet backbone (`resnet.ResNet`, atrous at `output_stride`, Multi-Grid, cascaded
block5..7) + one head:
- 'aspp_v2' (DeepLab-v2, v2 §3.2): parallel atrous branches whose class scores are summed;
- 'aspp' (DeepLabv3, v3 §3.3): ASPP with BN and image pooling, then the 1x1 logits conv;
- 'conv' (DeepLabv3 cascaded model, v3 §3.2): the 1x1 logits conv straight on the backbone.
Logits are upsampled to the input size with bilinear interpolation and returned in float32.

config.model fields (on top of `common.base_model_config()`), mapped by `from_config`:
  resnet_layout           'torchvision' | 'slim': where strides sit, see `resnet` (slim = the papers)
  multi_grid              unit rates (r1, r2, r3) of block4 and the cascaded blocks (v3 §3.2.1)
  num_cascaded_blocks     0..3 extra replicas of block4: block5, block6, block7 (v3 §3.2)
  aspp                    deeplab_v3 only: True = ASPP head, False = 1x1 conv on the backbone
  aspp_rates              atrous rates of the ASPP branches
  aspp_rates_output_stride  the output_stride `aspp_rates` are given for; they are rescaled by
                          aspp_rates_output_stride / output_stride (v3: (6, 12, 18) at 16 doubles at
                          8); 0 uses them as given at every output_stride
  aspp_features           v3 ASPP width (256)
  aspp_image_pooling      v3 image-level features branch (v3 §3.3, Table 5)
  aspp_dropout            dropout after the v3 ASPP projection (training only)
  head_extra_conv         torchvision head: 3x3 conv 256 + BN + ReLU between ASPP and the logits conv
  aux_head                torchvision FCN auxiliary head on block3 (3x3 conv (C/4 = 256) + BN + ReLU,
                          dropout 0.1, 1x1 conv with bias); upsampled logits in features['aux_logits']
  aspp_v2_features        deeplab_v2 branch width: 0 = a single 3x3 conv straight to the classes per
                          branch (released ResNet-101 model), N = fc6/fc7 of width N + fc8 (VGG, 1024)
  aspp_v2_dropout         dropout after fc6 and fc7 of each v2 branch (0.5)
"""

import functools
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from deeplax import layers
from deeplax.models import aspp as aspp_lib
from deeplax.models import common
from deeplax.models import resnet

HEADS = ("aspp_v2", "aspp", "conv")


class DeepLab(nn.Module):
  """DeepLab v2/v3 with a ResNet backbone; see the module docstring for the fields.

  Images are consumed as given (float [N, H, W, 3]); mean/std normalisation is the input
  pipeline's job. The variable tree does not depend on `output_stride`.
  """
  num_classes: int = 21
  backbone: str = "resnet101"
  output_stride: int = 16
  resnet_layout: str = "slim"
  multi_grid: Optional[Tuple[int, ...]] = None
  num_cascaded_blocks: int = 0
  head: str = "aspp"
  aspp_rates: Tuple[int, ...] = (6, 12, 18)
  aspp_rates_output_stride: int = 16
  aspp_features: int = 256
  aspp_image_pooling: bool = True
  aspp_dropout: float = 0.1
  head_extra_conv: bool = False
  aux_head: bool = False
  aspp_v2_features: Optional[int] = None
  aspp_v2_dropout: float = 0.5
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
    if self.head not in HEADS:
      raise ValueError(f"unknown DeepLab head {self.head!r}; expected one of {HEADS}")
    norm = layers.norm_factory(train, axis_name=self.bn_axis_name, momentum=self.bn_momentum,
                               epsilon=self.bn_epsilon, frozen=self.freeze_bn, dtype=self.dtype)
    features_NHWC, features = resnet.ResNet(
        resnet.get_spec(self.backbone), output_stride=self.output_stride,
        layout=self.resnet_layout, multi_grid=self.multi_grid,
        num_cascaded_blocks=self.num_cascaded_blocks, norm=norm, dtype=self.dtype,
        remat=self.remat, name="backbone")(images_NHWC.astype(self.dtype))
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
      # torchvision's FCNHead on block3: C -> C/4 (256 for ResNet-50/101/152) -> classes.
      aux = features["block3"]
      aux = layers.ConvBN(aux.shape[-1] // 4, 3, norm=norm, dtype=self.dtype, name="aux_conv")(aux)
      aux = nn.Dropout(0.1, deterministic=not train)(aux)
      aux = logits_conv(name="aux_logits")(aux)
      aux = aux.astype(layers.at_least_float32(aux.dtype))
      features["aux_logits"] = layers.resize_bilinear(aux, size, self.align_corners)
    if return_features:
      return logits_NHWC, features
    return logits_NHWC


def model_config(**overrides) -> ml_collections.ConfigDict:
  """`common.base_model_config()` plus every DeepLab v2/v3 field at its default (v3 ASPP model)."""
  c = common.base_model_config()
  c.name = "deeplab_v3"
  c.backbone = "resnet101"
  c.resnet_layout = "slim"
  c.multi_grid = (1, 1, 1)
  c.num_cascaded_blocks = 0
  c.aspp = True
  c.aspp_rates = (6, 12, 18)
  c.aspp_rates_output_stride = 16
  c.aspp_features = 256
  c.aspp_image_pooling = True
  c.aspp_dropout = 0.1
  c.head_extra_conv = False
  c.aux_head = False
  c.aspp_v2_features = 0
  c.aspp_v2_dropout = 0.5
  c.update(overrides)
  return c


_FIELDS = frozenset(model_config().keys())


def from_config(cfg: ml_collections.ConfigDict) -> DeepLab:
  """Maps config.model ('deeplab_v2' or 'deeplab_v3') onto `DeepLab`; rejects unknown keys."""
  unknown = sorted(set(cfg.keys()) - _FIELDS)
  if unknown:
    raise ValueError(f"unknown config.model keys for {cfg.name!r}: {unknown}; "
                     f"known: {sorted(_FIELDS)}")
  get = lambda key: cfg.get(key, _DEFAULTS[key])
  if cfg.name == "deeplab_v2":
    head = "aspp_v2"
  elif cfg.name == "deeplab_v3":
    head = "aspp" if get("aspp") else "conv"
  else:
    raise ValueError(f"deeplax.models.deeplab builds 'deeplab_v2' and 'deeplab_v3', not {cfg.name!r}")
  resnet.get_spec(get("backbone"))  # clear error for an unknown backbone at build time
  multi_grid = get("multi_grid")
  return DeepLab(
      num_classes=int(get("num_classes")), backbone=get("backbone"),
      output_stride=int(get("output_stride")), resnet_layout=get("resnet_layout"),
      multi_grid=tuple(multi_grid) if multi_grid else None,
      num_cascaded_blocks=int(get("num_cascaded_blocks")), head=head,
      aspp_rates=tuple(get("aspp_rates")),
      aspp_rates_output_stride=int(get("aspp_rates_output_stride") or 0),
      aspp_features=int(get("aspp_features")), aspp_image_pooling=bool(get("aspp_image_pooling")),
      aspp_dropout=float(get("aspp_dropout")), head_extra_conv=bool(get("head_extra_conv")),
      aux_head=bool(get("aux_head")),
      aspp_v2_features=int(get("aspp_v2_features")) or None,
      aspp_v2_dropout=float(get("aspp_v2_dropout")),
      dtype=common.compute_dtype(get("dtype")), bn_momentum=float(get("bn_momentum")),
      bn_epsilon=float(get("bn_epsilon")), bn_axis_name=get("bn_axis_name"),
      freeze_bn=bool(get("freeze_bn")), remat=bool(get("remat")),
      align_corners=bool(get("align_corners")))


_DEFAULTS = dict(model_config())
