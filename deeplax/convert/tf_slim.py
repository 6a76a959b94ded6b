"""TF-slim ResNet v1 ImageNet checkpoints -> deeplax backbone (what the official DeepLab initialises from).

Slim's resnet_v1 (tensorflow/models research/slim/nets/resnet_v1.py) differs from torchvision's
ResNet: the stride sits in the LAST unit of block1..block3 (3x3 conv2 via `conv2d_same`, explicit
symmetric padding), a strided unit's shortcut is a 1x1 subsampling (no parameters), and the stem max
pool pads 'SAME'. The deeplax backbone reproduces that with config.model.backbone.layout = 'slim', so
the weights compute what they computed in slim. Kernels are already HWIO; BN has gamma (scale),
beta, moving_mean, moving_variance, epsilon 1e-5 (resnet_arg_scope).

    {scope}/conv1/weights, conv1/BatchNorm/*                         backbone/conv1, bn1
    {scope}/block{b}/unit_{u}/bottleneck_v1/conv{k}/weights, BatchNorm  .../conv{k}, bn{k}
    {scope}/block{b}/unit_{u}/bottleneck_v1/shortcut/weights, BatchNorm .../shortcut, shortcut_bn
    {scope}/logits/{weights, biases}                                  dropped (ImageNet classifier)
    global_step                                                       ignored

scope = resnet_v1_50 | resnet_v1_101.
"""

import os
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from deeplax import convert
from deeplax.convert import ConversionError, Rule

ARCHS = {"resnet_v1_50": "resnet50", "resnet_v1_101": "resnet101"}
BN_SUFFIXES = {"gamma": ("params", "scale"), "beta": ("params", "bias"),
               "moving_mean": ("batch_stats", "mean"), "moving_variance": ("batch_stats", "var")}
# slim's vgg_preprocessing (used to train the slim ResNet v1 checkpoints): RGB in [0, 255] minus
# the ImageNet channel means (123.68, 116.78, 103.94), no scaling.
# deeplax.data's name for that preprocessing (the official DeepLab code feeds resnet_v1_* the same).
SLIM_NORMALIZATION = "vgg"


def _spec(arch: str):
  """The ResNet depth table of `arch` (deeplax's, `resnet.BACKBONES`)."""
  from deeplax.models import resnet  # pylint: disable=g-import-not-at-top
  return resnet.BACKBONES[ARCHS[arch]]


def _check_arch(arch: str) -> None:
  if arch not in ARCHS:
    raise ValueError(f"unknown TF-slim --arch {arch!r}; expected one of {', '.join(ARCHS)}")


def variable_shapes(arch: str, num_classes: int = 1000) -> Dict[str, Tuple[int, ...]]:
  """Every variable of slim's resnet_v1 ImageNet checkpoint with its shape (plus global_step)."""
  _check_arch(arch)
  shapes: Dict[str, Tuple[int, ...]] = {}

  def conv_bn(name, k, cin, cout):
    shapes[f"{name}/weights"] = (k, k, cin, cout)
    for s in BN_SUFFIXES:
      shapes[f"{name}/BatchNorm/{s}"] = (cout,)

  conv_bn(f"{arch}/conv1", 7, 3, 64)
  channels = 64
  for b, (units, width) in enumerate(zip(_spec(arch).block_units, _spec(arch).widths)):
    for u in range(units):
      name = f"{arch}/block{b + 1}/unit_{u + 1}/bottleneck_v1"
      if u == 0:
        conv_bn(f"{name}/shortcut", 1, channels, 4 * width)
      conv_bn(f"{name}/conv1", 1, channels, width)
      conv_bn(f"{name}/conv2", 3, width, width)
      conv_bn(f"{name}/conv3", 1, width, 4 * width)
      channels = 4 * width
  shapes[f"{arch}/logits/weights"] = (1, 1, 2048, num_classes)
  shapes[f"{arch}/logits/biases"] = (num_classes,)
  shapes["global_step"] = ()
  return shapes


def _conv_bn_rules(src: str, conv_dst: Tuple[str, ...], bn_dst: Tuple[str, ...]) -> List[Rule]:
  out = [Rule(f"{src}/weights", ("params",) + conv_dst + ("kernel",))]
  for suffix, (collection, leaf) in BN_SUFFIXES.items():
    out.append(Rule(f"{src}/BatchNorm/{suffix}", (collection,) + bn_dst + (leaf,)))
  return out


def rules(arch: str) -> List[Rule]:
  _check_arch(arch)
  bb = ("backbone",)
  out = _conv_bn_rules(f"{arch}/conv1", bb + ("conv1",), bb + ("bn1",))
  for b, units in enumerate(_spec(arch).block_units):
    for u in range(units):
      src = f"{arch}/block{b + 1}/unit_{u + 1}/bottleneck_v1"
      dst = bb + (f"block{b + 1}", f"unit_{u + 1}")
      if u == 0:
        out += _conv_bn_rules(f"{src}/shortcut", dst + ("shortcut",), dst + ("shortcut_bn",))
      for k in (1, 2, 3):
        out += _conv_bn_rules(f"{src}/conv{k}", dst + (f"conv{k}",), dst + (f"bn{k}",))
  return out


def read_checkpoint(prefix: str) -> Dict[str, np.ndarray]:
  """All variables of a TF checkpoint (`tf.train.load_checkpoint`) as NumPy arrays."""
  import tensorflow as tf
  if not (os.path.exists(prefix + ".index") or os.path.isdir(prefix)):
    raise FileNotFoundError(f"no TF checkpoint at {prefix!r} (expected {prefix}.index and "
                            f"{prefix}.data-*; pass the checkpoint prefix, e.g. .../resnet_v1_50.ckpt)")
  try:
    reader = tf.train.load_checkpoint(prefix)
  except Exception as e:
    raise ValueError(f"cannot read TF checkpoint {prefix!r}: {e}") from e
  return {name: np.asarray(reader.get_tensor(name))
          for name in reader.get_variable_to_shape_map()}


def converted_config(arch: str):
  """DeepLabv3 (v3 §4.3: OS 16, Multi-Grid (1, 2, 4), ASPP (6, 12, 18)) on the slim backbone."""
  import ml_collections
  from deeplax import defaults
  from deeplax.models import backbones, deeplab
  _check_arch(arch)
  config = defaults.get_base_config()
  config.model = deeplab.model_config(backbone=backbones.config(ARCHS[arch], layout="slim",
                                                                multi_grid=(1, 2, 4)),
                                      output_stride=16, bn_epsilon=1e-5,
                                      align_corners=True)
  from deeplax import data
  c = data.default_data_config()
  c.name = "voc"
  c.normalization = SLIM_NORMALIZATION
  config.data = c
  config.source = ml_collections.ConfigDict({"framework": "tf_slim", "arch": arch})
  return config


def _detect_scope(variables: Mapping[str, np.ndarray]) -> Optional[str]:
  scopes = {name.split("/", 1)[0] for name in variables if "/" in name}
  found = sorted(s for s in scopes if s.startswith("resnet_v1"))
  return found[0] if len(found) == 1 else None


def convert_variables(variables: Mapping[str, np.ndarray], arch: str):
  """slim variables -> (deeplax config, {'params', 'batch_stats'} of the backbone, report)."""
  _check_arch(arch)
  scope = _detect_scope(variables)
  if scope is not None and scope != arch:
    raise ConversionError(f"--arch {arch} does not match the checkpoint: its variables are under "
                          f"'{scope}/'" + (f"; use --arch {scope}" if scope in ARCHS else ""))
  units3 = {n.split("/")[2] for n in variables if n.startswith(f"{arch}/block3/")}
  if units3 and len(units3) != _spec(arch).block_units[2]:
    depth = {6: "resnet_v1_50", 23: "resnet_v1_101"}.get(len(units3), "an unknown depth")
    raise ConversionError(f"--arch {arch} does not match the checkpoint: block3 has {len(units3)} "
                          f"units ({depth}), {arch} has {_spec(arch).block_units[2]}")
  config = converted_config(arch)
  target = {p: s for p, s in convert.abstract_variables(config.model).items() if p[1] == "backbone"}
  ignored = [n for n in variables if n == "global_step"]
  dropped = [n for n in variables if n.startswith(f"{arch}/logits/")]
  out, report = convert.apply_rules(variables, rules(arch), target, ignored=ignored,
                                    dropped=dropped, what=f"TF-slim {arch} checkpoint")
  return config, out, report


def convert_checkpoint(prefix: str, arch: str, output_dir: Optional[str] = None, *, log=print):
  """Reads a slim checkpoint, converts it and (with `output_dir`) writes a deeplax run directory."""
  config, variables, report = convert_variables(read_checkpoint(prefix), arch)
  config.source.file = os.path.abspath(prefix)
  log(f"{prefix}: TF-slim {arch} -> deeplax backbone {config.model.backbone.name} (layout 'slim')\n"
      + report.summary())
  if output_dir is not None:
    from deeplax import checkpoint
    where = checkpoint.save_variables(output_dir, config, variables, step=0)
    log(f"wrote {where} and {os.path.join(output_dir, checkpoint.CONFIG_FILE)}")
  return config, variables, report
