"""Aligned Xception-65 as modified for DeepLabv3+ (v3+ §3.2, Fig. 4; overview in papers/001).

Modifications from Xception (v3+ §3.2): more layers (16 middle-flow blocks instead of 8), every max
pooling replaced by a depthwise-separable convolution with stride 2 (so atrous rates can replace
strides), and extra batch norm (and ReLU) after the 3x3 depthwise convolutions (MobileNet style).

    entry flow   conv1_1 3x3/2 32 + BN + ReLU, conv1_2 3x3 64 + BN + ReLU
                 block1 [128, 128, 128] /2, block2 [256, 256, 256] /2, block3 [728, 728, 728] /2,
                 each with a 1x1 strided conv + BN shortcut ('conv' skip)
    middle flow  block1..16 [728, 728, 728], identity shortcut ('sum' skip)
    exit flow    block1 [728, 1024, 1024] /2 'conv' skip, block2 [1536, 1536, 2048] no skip

Within a block the third separable conv carries the stride. Activation placement follows the
official DeepLab Xception (tensorflow/models research/deeplab/core/xception.py,
`activation_fn_in_separable_conv`): in the blocks with a skip connection every separable conv is
ReLU -> depthwise -> BN -> pointwise -> BN (pre-activation: the block output is the un-activated
sum, the shortcut sees the block input before any ReLU); in the last exit block (no skip) every
separable conv is depthwise -> BN -> ReLU -> pointwise -> BN -> ReLU. Every depthwise and pointwise
conv has its own BN and no bias. The official code uses BN epsilon 1e-3 (the v3+ config sets it).

Endpoints: 'low_level' is the output of entry block2's second separable conv (stride 4, 256
channels), the decoder's low-level features; 'entry_flow', 'middle_flow', 'exit_flow' are the flow
outputs.

Output stride (as the ResNet backbone and TF-slim): once the running stride reaches
`output_stride`, a block that would stride runs with stride 1 at the current rate and the rate is
doubled for the blocks after it. Variables never depend on `output_stride`.
"""

import functools
from typing import Any, Dict, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplax import layers
from deeplax.models import backbones

Dtype = Any
ModuleDef = Any


class XceptionBlock(nn.Module):
  """Three separable convs (`depths`), the last with `stride`, plus a 'conv', 'sum' or 'none' skip.

  Returns (output, features_after_second_separable_conv).
  """
  depths: Sequence[int]
  stride: int = 1
  rate: int = 1
  skip: str = "conv"
  activation_in_separable: bool = False
  norm: ModuleDef = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.skip not in ("conv", "sum", "none"):
      raise ValueError(f"skip must be 'conv', 'sum' or 'none'; got {self.skip!r}")
    residual, second = x, None
    for i, depth in enumerate(self.depths):
      if not self.activation_in_separable:
        residual = layers.relu(residual)
      residual = layers.SeparableConvBN(
          depth, 3, stride=self.stride if i == len(self.depths) - 1 else 1, rate=self.rate,
          relu=self.activation_in_separable, relu_between=self.activation_in_separable,
          norm=self.norm, dtype=self.dtype,
          name=f"separable_conv{i + 1}")(residual)
      if i == 1:
        second = residual
    if self.skip == "conv":
      shortcut = layers.atrous_conv(self.depths[-1], 1, stride=self.stride, dtype=self.dtype,
                                    name="shortcut")(x)
      residual = residual + self.norm(name="shortcut_bn")(shortcut)
    elif self.skip == "sum":
      if residual.shape != x.shape:
        raise ValueError(f"an identity ('sum') skip needs stride 1 and depth {x.shape[-1]}; got "
                         f"stride {self.stride}, depths {tuple(self.depths)}")
      residual = residual + x
    return residual, second


# (name, depths, stride, skip, activation_in_separable) per block; DeepLabv3+ Fig. 4.
def xception_blocks(entry_depths, middle_depth, num_middle_blocks, exit_depths):
  blocks = [(f"entry_block{i + 1}", (d,) * 3, 2, "conv", False) for i, d in enumerate(entry_depths)]
  blocks += [(f"middle_block{i + 1}", (middle_depth,) * 3, 1, "sum", False)
             for i in range(num_middle_blocks)]
  blocks += [("exit_block1", tuple(exit_depths[0]), 2, "conv", False),
             ("exit_block2", tuple(exit_depths[1]), 1, "none", True)]
  return tuple(blocks)


XCEPTION65 = dict(stem_features=(32, 64), entry_depths=(128, 256, 728), middle_depth=728,
                  num_middle_blocks=16, exit_depths=((728, 1024, 1024), (1536, 1536, 2048)))
# For tests: same topology and strides, 2 middle blocks, narrow.
XCEPTION_TINY = dict(stem_features=(8, 16), entry_depths=(16, 24, 32), middle_depth=32,
                     num_middle_blocks=2, exit_depths=((32, 48, 48), (64, 64, 96)))
XCEPTION_SPECS = {"xception65": XCEPTION65, "xception_tiny": XCEPTION_TINY}


class Xception(nn.Module):
  """Aligned Xception backbone; `Xception(**XCEPTION65, ...)` is Xception-65.

  Returns (features_NHWC, endpoints) with 'low_level' (stride 4), 'entry_flow', 'middle_flow'
  (also 'aux'), 'exit_flow'. Registered as backbones 'xception65' and 'xception_tiny'
  (`XCEPTION_SPECS` fix every depth; no options). `norm` is a `layers.norm_factory(train, ...)` partial (build it inside the caller's
  __call__, where `train` is known).
  """
  stem_features: Sequence[int] = (32, 64)
  entry_depths: Sequence[int] = (128, 256, 728)
  middle_depth: int = 728
  num_middle_blocks: int = 16
  exit_depths: Sequence[Sequence[int]] = ((728, 1024, 1024), (1536, 1536, 2048))
  output_stride: int = 16
  norm: ModuleDef = None
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv_bn = functools.partial(layers.ConvBN, norm=self.norm, dtype=self.dtype)
    x = conv_bn(self.stem_features[0], 3, stride=2, name="conv1_1")(x)
    x = conv_bn(self.stem_features[1], 3, name="conv1_2")(x)
    current_stride, rate = 2, 1
    block_cls = nn.remat(XceptionBlock) if self.remat else XceptionBlock
    endpoints: Dict[str, Any] = {}
    for name, depths, stride, skip, act_in_sep in xception_blocks(
        self.entry_depths, self.middle_depth, self.num_middle_blocks, self.exit_depths):
      if current_stride == self.output_stride and stride > 1:
        block_stride, block_rate, rate = 1, rate, rate * stride
      else:
        block_stride, block_rate = stride, rate
        current_stride *= stride
      x, second = block_cls(depths, block_stride, block_rate, skip, act_in_sep, self.norm,
                            self.dtype, name=name)(x)
      if name == "entry_block2":
        endpoints[backbones.LOW_LEVEL] = second
      if name == f"entry_block{len(self.entry_depths)}":
        endpoints["entry_flow"] = x
      elif name == f"middle_block{self.num_middle_blocks}":
        endpoints["middle_flow"] = endpoints[backbones.AUX] = x
    if current_stride != self.output_stride:
      raise ValueError(f"output_stride {self.output_stride} is not reachable by Xception "
                       f"(reached {current_stride})")
    endpoints["exit_flow"] = x
    return x, endpoints


def xception(backbone: str, **kwargs) -> Xception:
  """Xception by name ('xception65', 'xception_tiny'); kwargs: output_stride, norm, remat, dtype."""
  if backbone not in XCEPTION_SPECS:
    raise ValueError(f"unknown Xception backbone {backbone!r}; known: {sorted(XCEPTION_SPECS)}")
  return Xception(**XCEPTION_SPECS[backbone], **kwargs)


for _name, _spec in XCEPTION_SPECS.items():
  backbones.register(_name, Xception, **_spec)
