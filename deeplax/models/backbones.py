"""Backbones by name: every head (v1 fc6-8, v2 ASPP, v3 cascade + ASPP, v3+ decoder) takes any.

A backbone is a flax Module class registered under a name with the fields that name fixes:

    backbones.register("resnet101", resnet.ResNet, spec=resnet.BACKBONES["resnet101"])

Its remaining fields are the options of `config.model.backbone` (e.g. ResNet's `layout`,
`multi_grid`, `num_cascaded_blocks`), except the wiring the model passes in when it builds it:
`output_stride`, `norm` (a `layers.norm_factory` partial), `dtype` and `remat`, each only if the
class has that field. Called on images it returns `(features_NHWC, endpoints)`; endpoints hold at
least the standard names below, so the heads never look for a backbone-specific layer.

    config.model.backbone = backbones.config("resnet101", layout="slim", multi_grid=(1, 2, 4))
    backbone_def = backbones.from_config(config.model.backbone)   # a partial of the class
    features_NHWC, endpoints = backbone_def(output_stride=16, norm=norm, name="backbone")(images)

Adding a backbone = its module (which calls `register`), its test and its converter rules. A
backbone defined outside deeplax registers the same way before `models.build`.
"""

import functools
import importlib
from typing import Any, Dict, NamedTuple

import ml_collections

from deeplax.models import schema

# Standard endpoint names.
LOW_LEVEL = "low_level"   # stride-4 features, the v3+ decoder's input (v3+ §3.1)
AUX = "aux"               # the features an auxiliary head reads (torchvision: ResNet block3)

# What the model passes in; never config options.
WIRING = ("output_stride", "norm", "dtype", "remat")

# Modules whose import registers deeplax's own backbones.
_BUILTIN_MODULES = ("deeplax.models.resnet", "deeplax.models.xception", "deeplax.models.vgg")


class Registered(NamedTuple):
  cls: type
  fixed: Dict[str, Any]


_REGISTRY: Dict[str, Registered] = {}


def register(name: str, cls: type, **fixed) -> None:
  """Registers Module class `cls` as backbone `name`, with the fields `fixed` set."""
  unknown = sorted(set(fixed) - set(schema.option_fields(cls)))
  if unknown:
    raise ValueError(f"register({name!r}, {cls.__name__}): {unknown} are not fields of "
                     f"{cls.__name__}")
  if name in _REGISTRY and _REGISTRY[name].cls is not cls:
    raise ValueError(f"backbone {name!r} is already registered to {_REGISTRY[name].cls.__name__}")
  _REGISTRY[name] = Registered(cls, dict(fixed))


def _load_builtin():
  for module in _BUILTIN_MODULES:
    importlib.import_module(module)


def names():
  _load_builtin()
  return sorted(_REGISTRY)


def get(name: str) -> Registered:
  _load_builtin()
  if not isinstance(name, str) or name not in _REGISTRY:
    raise ValueError(f"unknown backbone {name!r} in config.model.backbone.name; known: "
                     f"{', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]


def _exclude(entry: Registered):
  return tuple(WIRING) + tuple(entry.fixed)


def option_names(name: str):
  """The config options of backbone `name` (without 'name')."""
  return sorted(schema.option_fields(get(name).cls, _exclude(get(name))))


def config(name: str, **overrides) -> ml_collections.ConfigDict:
  """`config.model.backbone` for backbone `name`: {'name': name, every option at its default}."""
  entry = get(name)
  c = schema.config_of(entry.cls, exclude=_exclude(entry), **overrides)
  c.name = name
  return c


def from_config(cfg) -> functools.partial:
  """A ModuleDef (partial of the registered class with its fixed fields and options) from
  `config.model.backbone`; unknown or mistyped options raise, naming the key and valid ones."""
  if isinstance(cfg, str):
    cfg = {"name": cfg}
  if not hasattr(cfg, "keys") or "name" not in cfg:
    raise ValueError(f"config.model.backbone must be a ConfigDict with a 'name' "
                     f"(see backbones.config); got {cfg!r}")
  entry = get(cfg["name"])
  hint = (f"an option of another backbone: options stay when only backbone.name changes; set "
          f"config.model.backbone = backbones.config({cfg['name']!r}, ...) in the config file")
  others = {k for n in _REGISTRY if n != cfg["name"] for k in option_names(n)}
  options = schema.kwargs_from(entry.cls, cfg, where=f"config.model.backbone ({cfg['name']})",
                               exclude=_exclude(entry), ignore=("name",),
                               hints={k: hint for k in others})
  return functools.partial(entry.cls, **entry.fixed, **options)


def resolve(backbone) -> Any:
  """A ModuleDef from a Module field that holds a backbone name, a config or a ModuleDef."""
  if isinstance(backbone, str) or hasattr(backbone, "keys"):
    return from_config(backbone)
  return backbone


def instantiate(backbone, *, name: str = "backbone", **wiring):
  """`backbone` (name, config or ModuleDef) built with the wiring its class has fields for."""
  module_def = resolve(backbone)
  cls = module_def.func if isinstance(module_def, functools.partial) else module_def
  fields = schema.option_fields(cls) if isinstance(cls, type) else {}
  unknown = sorted(set(wiring) - set(WIRING))
  if unknown:
    raise ValueError(f"instantiate: {unknown} are not backbone wiring {WIRING}")
  return module_def(name=name, **{k: v for k, v in wiring.items() if k in fields})
