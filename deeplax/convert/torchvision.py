"""torchvision weights -> deeplax: DeepLabV3-ResNet-50/101 (full model) and ImageNet ResNet-50/101.

torchvision's DeepLabV3 (`torchvision.models.segmentation.deeplabv3_resnet50/101`) is a dilated
ResNet v1.5 at output_stride 8 (`replace_stride_with_dilation=[False, True, True]`: the first unit
of layer3/layer4 keeps the previous rate, the others dilate), an ASPP head with rates 12/24/36 used as
given, image pooling and dropout 0.5 after the projection, an extra 3x3 conv + BN + ReLU, a 1x1
classifier with bias, and an FCN auxiliary head on layer3. Logits are upsampled with
align_corners=False; the input is RGB in [0, 1] normalised with the ImageNet mean and std. The
deeplax config written next to the weights reproduces all of this (`converted_config`).

State-dict key -> deeplax variable (conv weights [O, I, kh, kw] -> kernels [kh, kw, I, O];
BN weight/bias -> scale/bias, running_mean/var -> batch_stats mean/var):

    backbone.conv1 / bn1                      backbone/conv1, backbone/bn1
    backbone.layer{b}.{u}.conv{k} / bn{k}     backbone/block{b}/unit_{u+1}/conv{k}, bn{k}
    backbone.layer{b}.0.downsample.{0,1}      backbone/block{b}/unit_1/shortcut, shortcut_bn
    classifier.0.convs.0.{0,1}                aspp/aspp0/conv, bn
    classifier.0.convs.{1,2,3}.{0,1}          aspp/aspp{1,2,3}/conv, bn
    classifier.0.convs.4.{1,2}                aspp/image_pooling/conv, bn
    classifier.0.project.{0,1}                aspp/concat_projection/conv, bn
    classifier.{1,2}                          head_conv/conv, bn
    classifier.4                              logits (kernel, bias)
    aux_classifier.{0,1}, aux_classifier.4    aux_conv/conv, bn; aux_logits

ImageNet ResNets have the same backbone keys without 'backbone.'; their 'fc' classifier is dropped
(reported). '*.num_batches_tracked' is bookkeeping, ignored (reported).
"""

import os
import re
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from deeplax import convert
from deeplax.convert import ConversionError, Rule, conv_kernel_from_oihw

ARCHS = ("deeplabv3_resnet50", "deeplabv3_resnet101", "resnet50", "resnet101")

# torchvision.transforms.Normalize for every torchvision classification/segmentation model.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _spec(arch: str):
  """The ResNet depth table of `arch`'s backbone (deeplax's, `resnet.BACKBONES`)."""
  from deeplax.models import resnet  # pylint: disable=g-import-not-at-top
  return resnet.BACKBONES[backbone_name(arch)]


def backbone_name(arch: str) -> str:
  _check_arch(arch)
  return arch.replace("deeplabv3_", "")


def _check_arch(arch: str) -> None:
  if arch not in ARCHS:
    raise ValueError(f"unknown torchvision --arch {arch!r}; expected one of {', '.join(ARCHS)}")


# --------------------------------------------------------------------------------------------
# torchvision's key names and shapes (checked against torchvision 0.28's state_dict()).

def state_dict_shapes(arch: str, num_classes: int = 21, aux: bool = True
                      ) -> Dict[str, Tuple[int, ...]]:
  """Every key of torchvision's `state_dict()` for `arch` with its shape, in torchvision's order."""
  _check_arch(arch)
  segmentation = arch.startswith("deeplabv3_")
  prefix = "backbone." if segmentation else ""
  shapes: Dict[str, Tuple[int, ...]] = {}

  def conv(name, out, inp, k):
    shapes[f"{name}.weight"] = (out, inp, k, k)

  def bn(name, c):
    for p in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.{p}"] = (c,)
    shapes[f"{name}.num_batches_tracked"] = ()

  conv(f"{prefix}conv1", 64, 3, 7)
  bn(f"{prefix}bn1", 64)
  channels = 64
  for b, (units, width) in enumerate(zip(_spec(arch).block_units, _spec(arch).widths)):
    for u in range(units):
      name = f"{prefix}layer{b + 1}.{u}"
      conv(f"{name}.conv1", width, channels, 1)
      bn(f"{name}.bn1", width)
      conv(f"{name}.conv2", width, width, 3)
      bn(f"{name}.bn2", width)
      conv(f"{name}.conv3", 4 * width, width, 1)
      bn(f"{name}.bn3", 4 * width)
      if u == 0:
        conv(f"{name}.downsample.0", 4 * width, channels, 1)
        bn(f"{name}.downsample.1", 4 * width)
      channels = 4 * width
  if not segmentation:
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    return shapes
  for i in range(4):
    conv(f"classifier.0.convs.{i}.0", 256, 2048, 1 if i == 0 else 3)
    bn(f"classifier.0.convs.{i}.1", 256)
  conv("classifier.0.convs.4.1", 256, 2048, 1)
  bn("classifier.0.convs.4.2", 256)
  conv("classifier.0.project.0", 256, 1280, 1)
  bn("classifier.0.project.1", 256)
  conv("classifier.1", 256, 256, 3)
  bn("classifier.2", 256)
  conv("classifier.4", num_classes, 256, 1)
  shapes["classifier.4.bias"] = (num_classes,)
  if aux:
    conv("aux_classifier.0", 256, 1024, 3)
    bn("aux_classifier.1", 256)
    conv("aux_classifier.4", num_classes, 256, 1)
    shapes["aux_classifier.4.bias"] = (num_classes,)
  return shapes


# --------------------------------------------------------------------------------------------
# Reading files.

def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """A state dict as NumPy arrays from .safetensors (no torch needed) or .pth/.pt (torch).

  .pth files are read with `torch.load(..., weights_only=True)` (no pickled code runs). A checkpoint
  of torchvision's reference training scripts ({'model': state_dict, ...}) is unwrapped, as is a
  DataParallel 'module.' prefix.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file {path!r} not found")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    from safetensors.numpy import load_file
    try:
      state = load_file(path)
    except Exception as e:
      raise ValueError(f"cannot read {path!r} as safetensors: {e}") from e
  elif ext in (".pth", ".pt", ".bin", ".ckpt"):
    try:
      import torch
    except ImportError as e:
      raise ImportError(
          f"reading {path!r} needs PyTorch, which is not installed. Either `pip install torch`, or "
          "convert the file to .safetensors where torch is available: python -c \"import torch; "
          "from safetensors.torch import save_file; sd = torch.load('model.pth', weights_only=True); "
          "save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')\"") from e
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
      raise ValueError(f"cannot read {path!r} with torch.load(weights_only=True): {e}") from e
    for wrapper in ("model", "state_dict"):
      if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
        obj = obj[wrapper]
    if not isinstance(obj, Mapping):
      raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state dict")
    state = {}
    for k, v in obj.items():
      if not hasattr(v, "detach"):
        raise ValueError(f"{path!r}: entry {k!r} is a {type(v).__name__}, not a tensor")
      v = v.detach().cpu()
      state[k] = (v.float() if v.is_floating_point() else v).numpy()
  else:
    raise ValueError(f"unsupported weights file extension {ext!r} ({path!r}); "
                     "expected .safetensors or .pth/.pt")
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return state


def detect_arch(state: Mapping[str, np.ndarray]) -> Optional[str]:
  """The torchvision arch a state dict is, from its keys (None when unrecognisable)."""
  segmentation = any(k.startswith("backbone.") for k in state)
  prefix = "backbone." if segmentation else ""
  units = {int(m.group(1)) for k in state
           for m in [re.match(re.escape(prefix) + r"layer3\.(\d+)\.", k)] if m}
  depth = {6: "resnet50", 23: "resnet101"}.get(len(units))
  if depth is None:
    return None
  return f"deeplabv3_{depth}" if segmentation else depth


# --------------------------------------------------------------------------------------------
# Config and rules.

def data_config(num_classes: int):
  """config.data of a converted model: torchvision's preprocessing, RGB / 255 then (x - mean) / std
  with the ImageNet statistics (deeplax's 'imagenet' normalisation); 21 classes are VOC's."""
  from deeplax import data
  c = data.default_data_config()
  c.name = "voc" if num_classes == 21 else "folder"
  c.normalization = "imagenet"
  c.eval_pad_size = None  # evaluate each image at its own size, as torchvision does
  c.eval_batch_size = 1
  return c


def converted_config(arch: str, num_classes: int = 21, aux_head: bool = True):
  """The deeplax config of a converted torchvision model (see the module docstring).

  Backbone-only archs get a DeepLabv3 config at output_stride 16 with the paper's ASPP (v3 §3.3:
  rates (6, 12, 18) at OS 16) and torchvision's ResNet layout, for fine-tuning with a new head.
  """
  import ml_collections
  from deeplax import defaults
  from deeplax.models import backbones, deeplab
  _check_arch(arch)
  config = defaults.get_base_config()
  common = dict(backbone=backbones.config(backbone_name(arch), layout="torchvision",
                                          multi_grid=(1, 1, 1)),
                num_classes=int(num_classes), align_corners=False, bn_epsilon=1e-5,
                bn_momentum=0.9)  # torchvision BatchNorm2d: eps 1e-5, momentum 0.1 (= decay 0.9)
  if arch.startswith("deeplabv3_"):
    config.model = deeplab.model_config(
        output_stride=8, aspp_rates=(12, 24, 36), aspp_rates_output_stride=0, aspp_dropout=0.5,
        head_extra_conv=True, aux_head=bool(aux_head), **common)
  else:
    config.model = deeplab.model_config(output_stride=16, **common)
  config.data = data_config(num_classes)
  config.source = ml_collections.ConfigDict({"framework": "torchvision", "arch": arch})
  return config


def _bn_rules(src: str, dst: Tuple[str, ...]) -> List[Rule]:
  return [Rule(f"{src}.weight", ("params",) + dst + ("scale",)),
          Rule(f"{src}.bias", ("params",) + dst + ("bias",)),
          Rule(f"{src}.running_mean", ("batch_stats",) + dst + ("mean",)),
          Rule(f"{src}.running_var", ("batch_stats",) + dst + ("var",))]


def _conv_rule(src: str, dst: Tuple[str, ...]) -> Rule:
  return Rule(f"{src}.weight", ("params",) + dst + ("kernel",), conv_kernel_from_oihw)


def _conv_bn_rules(conv_src: str, bn_src: str, dst: Tuple[str, ...]) -> List[Rule]:
  return [_conv_rule(conv_src, dst + ("conv",))] + _bn_rules(bn_src, dst + ("bn",))


def rules(arch: str, aux: bool = True) -> List[Rule]:
  """Every (torchvision key -> deeplax variable) of `arch` (see the table in the module docstring)."""
  segmentation = arch.startswith("deeplabv3_")
  p = "backbone." if segmentation else ""
  bb = ("backbone",)
  out = [_conv_rule(f"{p}conv1", bb + ("conv1",))] + _bn_rules(f"{p}bn1", bb + ("bn1",))
  for b, units in enumerate(_spec(arch).block_units):
    for u in range(units):
      src, dst = f"{p}layer{b + 1}.{u}", bb + (f"block{b + 1}", f"unit_{u + 1}")
      for k in (1, 2, 3):
        out.append(_conv_rule(f"{src}.conv{k}", dst + (f"conv{k}",)))
        out += _bn_rules(f"{src}.bn{k}", dst + (f"bn{k}",))
      if u == 0:
        out.append(_conv_rule(f"{src}.downsample.0", dst + ("shortcut",)))
        out += _bn_rules(f"{src}.downsample.1", dst + ("shortcut_bn",))
  if not segmentation:
    return out
  for i in range(4):
    out += _conv_bn_rules(f"classifier.0.convs.{i}.0", f"classifier.0.convs.{i}.1",
                          ("aspp", f"aspp{i}"))
  out += _conv_bn_rules("classifier.0.convs.4.1", "classifier.0.convs.4.2", ("aspp", "image_pooling"))
  out += _conv_bn_rules("classifier.0.project.0", "classifier.0.project.1",
                        ("aspp", "concat_projection"))
  out += _conv_bn_rules("classifier.1", "classifier.2", ("head_conv",))
  out += [_conv_rule("classifier.4", ("logits",)), Rule("classifier.4.bias", ("params", "logits", "bias"))]
  if aux:
    out += _conv_bn_rules("aux_classifier.0", "aux_classifier.1", ("aux_conv",))
    out += [_conv_rule("aux_classifier.4", ("aux_logits",)),
            Rule("aux_classifier.4.bias", ("params", "aux_logits", "bias"))]
  return out


# --------------------------------------------------------------------------------------------
# Conversion.

def convert_state_dict(state: Mapping[str, np.ndarray], arch: str, *, drop_aux: bool = False):
  """torchvision state dict -> (deeplax config, variables {'params', 'batch_stats'}, report).

  Strict: a state dict of another architecture, unknown, missing or mis-shaped keys raise
  `ConversionError` naming them. `drop_aux` leaves torchvision's auxiliary FCN head out (its keys
  are reported as dropped).
  """
  _check_arch(arch)
  detected = detect_arch(state)
  if detected is not None and detected != arch:
    raise ConversionError(
        f"--arch {arch} does not match the weights: they are a torchvision {detected} state dict "
        f"({'has' if detected.startswith('deeplabv3_') else 'no'} 'backbone.*'/'classifier.*' keys, "
        f"{_spec(detected).block_units[2]} units in layer3); use --arch {detected}")
  segmentation = arch.startswith("deeplabv3_")
  num_classes = 21
  if segmentation:
    if "classifier.4.weight" not in state:
      raise ConversionError(f"no 'classifier.4.weight' in the state dict: not a torchvision {arch}")
    num_classes = int(np.shape(state["classifier.4.weight"])[0])
  has_aux = any(k.startswith("aux_classifier.") for k in state)
  aux = segmentation and has_aux and not drop_aux
  config = converted_config(arch, num_classes, aux_head=aux)
  target = convert.abstract_variables(config.model)
  if not segmentation:
    target = {p: s for p, s in target.items() if p[1] == "backbone"}
  ignored = [k for k in state if k.endswith(".num_batches_tracked")]
  dropped = [k for k in state if (not segmentation and k.startswith("fc."))
             or (segmentation and not aux and k.startswith("aux_classifier."))]
  variables, report = convert.apply_rules(
      state, rules(arch, aux), target, ignored=ignored,
      dropped=[k for k in dropped if k not in ignored], what=f"torchvision {arch} state dict")
  variables.setdefault("batch_stats", {})
  return config, variables, report


def convert_file(path: str, arch: str, output_dir: Optional[str] = None, *, drop_aux: bool = False,
                 log=print):
  """Reads `path`, converts it and (with `output_dir`) writes a deeplax run directory."""
  state = read_state_dict(path)
  config, variables, report = convert_state_dict(state, arch, drop_aux=drop_aux)
  config.source.file = os.path.abspath(path)
  log(f"{path}: torchvision {arch} -> deeplax {config.model.name}/{config.model.backbone.name} "
      f"({config.model.num_classes} classes, output_stride {config.model.output_stride})\n"
      + report.summary())
  if output_dir is not None:
    from deeplax import checkpoint
    where = checkpoint.save_variables(output_dir, config, variables, step=0)
    log(f"wrote {where} and {os.path.join(output_dir, checkpoint.CONFIG_FILE)}")
  return config, variables, report
