"""What every DeepLab model shares: config from its fields, input checks and compute dtype."""

from typing import Any, List, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from deeplax.models import backbones
from deeplax.models import schema

SUPPORTED_OUTPUT_STRIDES = (8, 16, 32)


def model_config(name: str, cls, fixed: Mapping[str, Any] = None,
                 **overrides) -> ml_collections.ConfigDict:
  """config.model for registry name `name` built by Module class `cls`: {'name': name} plus every
  field of `cls` at its default (`schema.config_of`; `fixed` fields are the name's, not options),
  then `overrides`. `backbone` may be given as a name (its options at their defaults) or as a
  `backbones.config(...)`; `dtype` is stored by name ('float32', 'bfloat16', ...)."""
  c = schema.config_of(cls, exclude=tuple(fixed or ()), to_config=_TO_CONFIG, **overrides)
  c.name = name
  return c


def build(name: str, cls, cfg: ml_collections.ConfigDict, fixed: Mapping[str, Any] = None):
  """`cls(**fixed, **options)` from config.model; unknown or mistyped keys raise ValueError
  naming the key and the valid ones."""
  fixed = dict(fixed or {})
  kwargs = schema.kwargs_from(
      cls, cfg, where=f"config.model ({name})", exclude=tuple(fixed), ignore=("name",),
      convert={"dtype": compute_dtype, "backbone": backbones.from_config},
      hints={k: f"an option of the backbone: config.model.backbone.{_LEGACY_NAMES.get(k, k)}, "
                f"if backbone {_backbone_name(cfg)!r} has it"
             for k in _BACKBONE_OPTIONS})
  return cls(**fixed, **kwargs)


_BACKBONE_OPTIONS = ("layout", "resnet_layout", "multi_grid", "num_cascaded_blocks",
                     "stage_widths")
_LEGACY_NAMES = {"resnet_layout": "layout"}


def _backbone_name(cfg) -> str:
  backbone = cfg.get("backbone", None)
  return backbone.get("name", None) if hasattr(backbone, "get") else backbone


def upgrade_legacy(cfg: ml_collections.ConfigDict) -> Tuple[ml_collections.ConfigDict, List[str]]:
  """config.model written before the nested backbone config (deeplax <= 1b78b68: a backbone name
  in `backbone` and its options flat beside it) in today's form, and what was changed.

  Today's form passes through unchanged (no changes reported). The old form moves `resnet_layout`
  (as `layout`), `multi_grid`, `num_cascaded_blocks` (ResNet) and `stage_widths` (VGG) under
  `backbone`, drops the ones its backbone never read (Xception's ResNet fields), turns the v3
  `aspp` flag into `head` ('aspp' / 'conv'), drops the v2 config's unused `aspp` flag, and
  `aspp_v2_features` 0 into None (both meant "one conv per branch"). Behaviour is unchanged.
  """
  if not isinstance(cfg.get("backbone", None), str):
    return cfg, []
  old = cfg.to_dict()
  name = old.get("name")
  changes = []
  backbone = {"name": old.pop("backbone")}
  known = set(backbones.option_names(backbone["name"]))
  for old_key, new_key in (("resnet_layout", "layout"), ("multi_grid", "multi_grid"),
                           ("num_cascaded_blocks", "num_cascaded_blocks"),
                           ("stage_widths", "stage_widths")):
    if old_key not in old:
      continue
    value = old.pop(old_key)
    if new_key in known:
      backbone[new_key] = value
      changes.append(f"{old_key} -> backbone.{new_key}")
    else:
      changes.append(f"{old_key}={value!r} dropped (backbone {backbone['name']!r} has no "
                     f"{new_key!r}; it was never read)")
  changes.insert(0, f"backbone {backbone['name']!r} -> backbone.name")
  if "aspp" in old:
    aspp = old.pop("aspp")
    if name == "deeplab_v3":
      old["head"] = "aspp" if aspp else "conv"
      changes.append(f"aspp={aspp} -> head={old['head']!r}")
    else:
      changes.append(f"aspp={aspp} dropped (unused by {name})")
  if old.get("aspp_rates_output_stride", 0) is None:
    old["aspp_rates_output_stride"] = 0
    changes.append("aspp_rates_output_stride None -> 0")
  if "aspp_v2_features" in old and not old["aspp_v2_features"]:
    old["aspp_v2_features"] = None
    changes.append("aspp_v2_features 0 -> None")
  old["backbone"] = backbone
  return ml_collections.ConfigDict(old), changes


def dtype_name(dtype) -> str:
  if isinstance(dtype, str):
    return dtype
  name = jnp.dtype(dtype).name
  if name not in _DTYPES:
    raise ValueError(f"unsupported model dtype {dtype!r}; supported: {sorted(_DTYPES)}")
  return name


def _backbone_config(backbone):
  return backbones.config(backbone) if isinstance(backbone, str) else backbone


_TO_CONFIG = {"dtype": dtype_name, "backbone": _backbone_config}


def check_images(images, output_stride: int,
                 supported: Sequence[int] = SUPPORTED_OUTPUT_STRIDES) -> None:
  """Clear errors for bad input, before any XLA shape failure."""
  shape = getattr(images, "shape", None)
  if shape is None or len(shape) != 4:
    raise ValueError(f"images must be a 4-D array [N, H, W, 3]; got shape {shape}")
  if shape[-1] != 3:
    raise ValueError(f"images must have 3 channels (RGB, NHWC) in the last axis; got shape {shape}")
  if output_stride not in supported:
    raise ValueError(f"unsupported output_stride {output_stride}; supported: {tuple(supported)}")


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
           "float64": jnp.float64}


def compute_dtype(name: str):
  if not isinstance(name, str):
    name = dtype_name(name)
  if name == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("config.model.dtype='float64' needs 64-bit JAX (JAX_ENABLE_X64=1)")
  if name not in _DTYPES:
    raise ValueError(f"config.model.dtype must be one of {sorted(_DTYPES)}; got {name!r}")
  return _DTYPES[name]
