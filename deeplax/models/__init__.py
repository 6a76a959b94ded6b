"""The DeepLab model family: `build(config.model)` returns a flax.linen Module.

    model = build(config.model)
    variables = model.init(rng, images_NHWC, train=False)
    logits_NHWC = model.apply(variables, images_NHWC, train=False)           # input resolution
    logits_NHWC, features = model.apply(variables, images_NHWC, train=False, return_features=True)

`features` holds the raw low-resolution scores ('logits_lowres') and intermediate feature maps.
The variable tree does not depend on `output_stride`: train at 16, then
`build(config.model with output_stride=8).apply(same_variables, ...)`.
"""

import importlib

import jax
import ml_collections
import numpy as np

# config.model.name -> module providing `from_config(model_config) -> nn.Module`.
_REGISTRY = {
    "deeplab_v1": "deeplax.models.vgg",
    "deeplab_v2": "deeplax.models.deeplab",
    "deeplab_v3": "deeplax.models.deeplab",
    "deeplab_v3plus": "deeplax.models.deeplab_v3plus",
}


def model_names():
  return sorted(_REGISTRY)


def build(model_config: ml_collections.ConfigDict):
  """Builds the model named by `model_config.name` (see `model_names()`)."""
  name = model_config.get("name", None)
  if name not in _REGISTRY:
    raise ValueError(f"unknown model name {name!r} in config.model.name; "
                     f"known names: {', '.join(model_names())}")
  return importlib.import_module(_REGISTRY[name]).from_config(model_config)


def param_count(params) -> int:
  """Number of parameters in a pytree of arrays or ShapeDtypeStructs (e.g. from jax.eval_shape)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
