"""The DeepLab model family: `build(config.model)` returns a flax.linen Module.

    model = build(config.model)
    variables = model.init(rng, images_NHWC, train=False)
    logits_NHWC = model.apply(variables, images_NHWC, train=False)           # input resolution
    logits_NHWC, features = model.apply(variables, images_NHWC, train=False, return_features=True)

`features` holds the raw low-resolution scores ('logits_lowres') and intermediate feature maps.
The variable tree does not depend on `output_stride`: train at 16, then
`build(config.model with output_stride=8).apply(same_variables, ...)`.

config.model = {'name': a key of the registry below, every field of the Module it names (the
Module's fields are the schema, `schema`), 'backbone': {'name': a `backbones` name, its options}}.
"""

import importlib
from typing import List, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np

from deeplax.models import common

# config.model.name -> (module, Module class, fields the name fixes).
_REGISTRY = {
    "deeplab_v1": ("deeplax.models.vgg", "DeepLabV1", {}),
    "deeplab_v2": ("deeplax.models.deeplab", "DeepLab", {"head": "aspp_v2"}),
    "deeplab_v3": ("deeplax.models.deeplab", "DeepLab", {}),
    "deeplab_v3plus": ("deeplax.models.deeplab_v3plus", "DeepLabV3Plus", {}),
}


def model_names():
  return sorted(_REGISTRY)


def _lookup(name):
  if name not in _REGISTRY:
    raise ValueError(f"unknown model name {name!r} in config.model.name; "
                     f"known names: {', '.join(model_names())}")
  module, cls_name, fixed = _REGISTRY[name]
  return getattr(importlib.import_module(module), cls_name), fixed


def upgrade_config(model_config: ml_collections.ConfigDict, source: str = "config.model",
                   report: bool = True) -> Tuple[ml_collections.ConfigDict, List[str]]:
  """`model_config` in today's schema (`common.upgrade_legacy`), and the changes; with `report`
  the changes of an old-format config are logged as a warning naming `source`."""
  upgraded, changes = common.upgrade_legacy(model_config)
  if changes and report:
    logging.warning("%s is in the format of deeplax <= 1b78b68 (flat backbone options); read as "
                    "today's: %s", source, "; ".join(changes))
  return upgraded, changes


def build(model_config: ml_collections.ConfigDict):
  """Builds the model named by `model_config.name` (see `model_names()`); unknown or mistyped keys
  raise ValueError naming the key and the valid ones. A config of the old flat format is read
  through `upgrade_config`."""
  name = model_config.get("name", None)
  cls, fixed = _lookup(name)
  model_config, _ = upgrade_config(model_config, report=False)
  return common.build(name, cls, model_config, fixed)


def default_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """config.model for model `name` with every field at its default, then `overrides`."""
  cls, fixed = _lookup(name)
  return common.model_config(name, cls, fixed, **overrides)


def param_count(params) -> int:
  """Number of parameters in a pytree of arrays or ShapeDtypeStructs (e.g. from jax.eval_shape)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
