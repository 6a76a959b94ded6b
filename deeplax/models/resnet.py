"""ResNet v1 backbones with atrous convolution and output_stride control (v2 §3.1, v3 §3.1-3.2).

Parameter tree (identical for both layouts and every output_stride, so converters map torchvision
and TF-slim ImageNet weights 1:1):

    conv1 {kernel}, bn1 {scale, bias}                       # stem: 7x7/2 conv, BN, ReLU, 3x3/2 max pool
    block1 .. block4 [, block5 .. block7 (v3 §3.2 cascade)]
      unit_1 .. unit_n
        conv1/bn1 (1x1), conv2/bn2 (3x3, atrous), conv3/bn3 (1x1, x4 expansion)
        shortcut/shortcut_bn (1x1 projection, strided with the unit, where the depth changes: unit_1)

No convolution has a bias. Layouts (`layout`):
- 'torchvision': the stride sits on the 3x3 conv of the FIRST unit of block2..block4 (ResNet v1.5);
  its shortcut is a strided 1x1 conv; the stem max pool pads symmetrically by 1 with -inf.
- 'slim' (TF-slim resnet_v1, the DeepLab papers' own code): the stride sits on the 3x3 conv of the
  LAST unit of block1..block3 (conv2d_same: explicit symmetric padding); a strided unit whose depth does
  not change uses a 1x1 stride-s subsampling shortcut (no parameters); the stem max pool uses TF 'SAME'
  padding (extra padding after).

output_stride (v3 §3.1): once the running stride reaches `output_stride`, a unit that would stride
runs with stride 1 at the current atrous rate, and the rate is multiplied by the skipped stride for
all units after it (torchvision's replace_stride_with_dilation and TF-slim's stack_blocks_dense agree).
Multi-Grid (v3 §3.2.1) multiplies the rates of the units of block4 and of every cascaded block.
Because the unit that would stride keeps the current rate, the layouts differ where the stride sits:
at OS 16 with Multi-Grid (1, 2, 4), 'slim' gives block4 rates 2*(1, 2, 4) = (2, 4, 8) as v3 states,
'torchvision' gives (1*1, 2*2, 2*4) = (1, 4, 8) (its block4 unit_1 is the would-stride unit).
Cascaded blocks (block5..7, v3 §3.2) replicate block4 and stride like it, except the last block.
"""

import dataclasses
import functools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from deeplax import layers
from deeplax.models import backbones

ModuleDef = Any

LAYOUTS = ("torchvision", "slim")
ROOT_STRIDE = 4  # stem conv (stride 2) + max pool (stride 2)


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
  """Depth of a ResNet v1: units per block (block1..4), bottleneck widths, stem width."""
  block_units: Tuple[int, ...]
  widths: Tuple[int, ...] = (64, 128, 256, 512)
  stem_features: int = 64
  expansion: int = 4


# He et al. 2016, Table 1; 'resnet_tiny' is a test-size net with the same structure (block4 keeps the
# three units Multi-Grid refers to, block1 keeps two so the two layouts differ).
BACKBONES: Dict[str, ResNetSpec] = {
    "resnet50": ResNetSpec((3, 4, 6, 3)),
    "resnet101": ResNetSpec((3, 4, 23, 3)),
    "resnet152": ResNetSpec((3, 8, 36, 3)),
    "resnet_tiny": ResNetSpec((2, 1, 1, 3), widths=(4, 8, 16, 32), stem_features=8),
    # The reduced ResNet of the CPU-sized main job (configs/shapes.py).
    "resnet_small": ResNetSpec((2, 2, 2, 3), widths=(16, 32, 64, 96), stem_features=32),
}


def get_spec(name: str) -> ResNetSpec:
  if name not in BACKBONES:
    raise ValueError(f"unknown ResNet backbone {name!r} (config.model.backbone.name); "
                     f"known: {', '.join(sorted(BACKBONES))}")
  return BACKBONES[name]


def nominal_block_strides(num_blocks: int, layout: str) -> List[Tuple[int, int]]:
  """(stride, index of the strided unit: 0 first, -1 last) per block, without atrous convolution.

  'torchvision': block1 stride 1, then every block strides in its first unit; 'slim': every block
  strides in its last unit. In both, the final block (block4, or the last cascaded block) does not
  stride (v3 §3.2: "the last convolution contains stride 2 except the one in last block").
  """
  if layout not in LAYOUTS:
    raise ValueError(f"unknown ResNet layout {layout!r} (config.model.backbone.layout); "
                     f"expected one of {LAYOUTS}")
  if layout == "torchvision":
    strides = [(1, 0)] + [(2, 0)] * (num_blocks - 1)
    if num_blocks > 4:  # cascaded blocks replicate block4; the last block does not stride
      strides[-1] = (1, 0)
    return strides
  return [(2, -1)] * (num_blocks - 1) + [(1, -1)]


def unit_strides_and_rates(block_units: Sequence[int], output_stride: int,
                           layout: str = "torchvision",
                           multi_grid: Optional[Sequence[int]] = None,
                           num_cascaded_blocks: int = 0) -> List[List[Tuple[int, int]]]:
  """(stride, atrous rate) of the 3x3 conv of every unit, per block (block1.., cascaded blocks after).

  Pure function of the architecture: the model builds its units from it and tests check v3's rates
  (e.g. OS 16, Multi-Grid (1, 2, 4), slim layout: block4 rates (2, 4, 8); v3 Fig. 3b: block4..7 at
  rates 2, 4, 8, 16 before Multi-Grid).
  """
  if not 0 <= num_cascaded_blocks <= 3:
    raise ValueError(f"num_cascaded_blocks must be 0..3 (block4..block7); got {num_cascaded_blocks}")
  units = list(block_units) + [block_units[3]] * num_cascaded_blocks
  if multi_grid is None:
    multi_grid = (1,) * block_units[3]
  multi_grid = tuple(int(r) for r in multi_grid)
  if len(multi_grid) != block_units[3] or min(multi_grid) < 1:
    raise ValueError(f"multi_grid {multi_grid} must hold one positive unit rate per unit of block4 "
                     f"({block_units[3]} units)")
  if output_stride < ROOT_STRIDE:
    raise ValueError(f"output_stride {output_stride} is below the stem's stride {ROOT_STRIDE}")
  current_stride, rate = ROOT_STRIDE, 1
  schedule = []
  for b, (n, (block_stride, strided_unit)) in enumerate(
      zip(units, nominal_block_strides(len(units), layout))):
    strided_unit = strided_unit % n
    block = []
    for u in range(n):
      stride = block_stride if u == strided_unit else 1
      unit_rate = multi_grid[u] if b >= 3 else 1
      if stride > 1 and current_stride * stride > output_stride:
        block.append((1, rate * unit_rate))  # would stride: run at the current rate ...
        rate *= stride                        # ... and dilate every later unit instead
      else:
        block.append((stride, rate * unit_rate))
        current_stride *= stride
    schedule.append(block)
  if current_stride != output_stride:
    raise ValueError(f"output_stride {output_stride} not reachable: the backbone's nominal stride "
                     f"is {current_stride}")
  return schedule


class Bottleneck(nn.Module):
  """ResNet v1 bottleneck unit: 1x1, 3x3 (stride, atrous rate), 1x1 (x expansion), residual, ReLU.

  Returns (output, residual branch after bn3) -- the latter is TF-slim's '.../conv3' end point.
  """
  width: int
  stride: int = 1
  rate: int = 1
  expansion: int = 4
  projection: bool = False   # 1x1 conv + BN shortcut (else identity or stride subsampling)
  norm: ModuleDef = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(layers.atrous_conv, dtype=self.dtype)
    y = layers.relu(self.norm(name="bn1")(conv(self.width, 1, name="conv1")(x)))
    y = conv(self.width, 3, stride=self.stride, rate=self.rate, name="conv2")(y)
    y = layers.relu(self.norm(name="bn2")(y))
    y = conv(self.width * self.expansion, 1, name="conv3")(y)
    residual = self.norm(name="bn3")(y)
    if self.projection:
      shortcut = self.norm(name="shortcut_bn")(
          conv(self.width * self.expansion, 1, stride=self.stride, name="shortcut")(x))
    elif self.stride > 1:  # TF-slim's subsample: a 1x1 max pool with stride s
      shortcut = x[:, ::self.stride, ::self.stride, :]
    else:
      shortcut = x
    return layers.relu(residual + shortcut.astype(residual.dtype)), residual


class ResNetBlock(nn.Module):
  """A sequence of bottleneck units unit_1.. with per-unit (stride, rate); returns (x, residuals)."""
  width: int
  strides_and_rates: Tuple[Tuple[int, int], ...]
  projections: Tuple[bool, ...]
  expansion: int = 4
  norm: ModuleDef = None
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x):
    unit_cls = nn.remat(Bottleneck) if self.remat else Bottleneck
    residuals = []
    for u, ((stride, rate), projection) in enumerate(zip(self.strides_and_rates, self.projections)):
      x, residual = unit_cls(self.width, stride=stride, rate=rate, expansion=self.expansion,
                             projection=projection, norm=self.norm, dtype=self.dtype,
                             name=f"unit_{u + 1}")(x)
      residuals.append(residual)
    return x, residuals


def max_pool_padding(size: int, layout: str) -> Tuple[int, int]:
  """Padding of the stem's 3x3/2 max pool: torchvision pads (1, 1); TF 'SAME' pads the rest after."""
  if layout == "torchvision":
    return (1, 1)
  out = -(-size // 2)
  total = max((out - 1) * 2 + 3 - size, 0)
  return (total // 2, total - total // 2)


class ResNet(nn.Module):
  """Dilated ResNet v1 backbone; returns (features_NHWC, endpoints).

  endpoints: 'stem' (stride 4), 'block1'.. (and 'block5'.. when cascaded), 'aux' (block3, the
  input of torchvision's auxiliary FCN head) and 'low_level', the stride-4 features a v3+ decoder
  uses: block1's output for 'torchvision'; for 'slim' the conv3+BN output of block1's penultimate
  unit (DeepLab's 'block1/unit_2/bottleneck_v1/conv3' end point).
  Registered as backbones 'resnet50', 'resnet101', ... (`BACKBONES`); its options in
  config.model.backbone are `layout`, `multi_grid` and `num_cascaded_blocks`.
  """
  spec: ResNetSpec = BACKBONES["resnet101"]
  output_stride: int = 16
  layout: str = "slim"
  multi_grid: Optional[Tuple[int, ...]] = None
  num_cascaded_blocks: int = 0
  norm: ModuleDef = None
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x_NHWC):
    spec = self.spec
    schedule = unit_strides_and_rates(spec.block_units, self.output_stride, self.layout,
                                      self.multi_grid, self.num_cascaded_blocks)
    endpoints = {}

    x = layers.atrous_conv(spec.stem_features, 7, stride=2, dtype=self.dtype, name="conv1")(x_NHWC)
    x = layers.relu(self.norm(name="bn1")(x))
    pads = (max_pool_padding(x.shape[1], self.layout), max_pool_padding(x.shape[2], self.layout))
    x = layers.max_pool(x, 3, 2, pads)
    endpoints["stem"] = x

    channels = spec.stem_features
    for b, block in enumerate(schedule):
      width = spec.widths[min(b, 3)]
      # A projection wherever the depth changes (unit_1); the tree never depends on output_stride
      # or the layout. A strided unit of unchanged depth (slim blocks 1-3, cascaded blocks) subsamples.
      projections = [channels != width * spec.expansion] + [False] * (len(block) - 1)
      channels = width * spec.expansion
      x, residuals = ResNetBlock(width, tuple(block), tuple(projections), expansion=spec.expansion,
                                 norm=self.norm, dtype=self.dtype, remat=self.remat,
                                 name=f"block{b + 1}")(x)
      endpoints[f"block{b + 1}"] = x
      if b == 2:
        endpoints[backbones.AUX] = x
      if b == 0:
        if self.layout == "torchvision":
          endpoints[backbones.LOW_LEVEL] = x
        else:
          endpoints[backbones.LOW_LEVEL] = residuals[-2] if len(block) > 1 else endpoints["stem"]
    return x, endpoints


for _name, _spec in BACKBONES.items():
  backbones.register(_name, ResNet, spec=_spec)

