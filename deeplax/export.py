"""`deeplax export`: the inference function as StableHLO (jax.export) or a TensorFlow SavedModel.

The exported function maps RGB pixel values (float32 in [0, 255], [batch, H, W, 3]) to scores
[batch, H, W, num_classes] at the input resolution: the config's input normalisation, the model at the
chosen output_stride and the inference strategy (scales, flips, tiles) are all inside. The batch
dimension is symbolic; H and W are fixed at export time (`image_size`).

- 'stablehlo': `jax.export.export(...).serialize()` with the weights embedded; reload with
  `load_stablehlo(path)` (= `jax.export.deserialize`) and `.call(images)`, from JAX only.
- 'saved_model': `jax.experimental.jax2tf.convert` (native serialisation: the same StableHLO inside
  an XlaCallModule op; jax2tf's graph-op mode is gone) wrapped in a `tf.function` whose weights are
  `tf.Variable`s, saved with `tf.saved_model.save`. Signature 'serving_default': 'images' ->
  'output_0'; loadable by TF Serving and `tf.lite.TFLiteConverter.from_saved_model` (with
  `target_spec.supported_ops` including SELECT_TF_OPS for the XlaCallModule op).
Next to either, `<path>.json` (stablehlo) or `<path>/deeplax_export.json` records the config, input
size, normalisation and strategy.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deeplax import inference

FORMATS = ("stablehlo", "saved_model")


def make_inference_fn(config: ml_collections.ConfigDict,
                      strategy: Optional[inference.InferenceStrategy] = None,
                      output_stride: Optional[int] = None) -> Callable[[Any, jax.Array], jax.Array]:
  """fn(variables, images_rgb_0_255_NHWC) -> scores_NHWC (not jitted; for export)."""
  from deeplax import data
  from deeplax import models
  strategy = strategy or inference.strategy_for(config.model)
  model = models.build(inference.with_output_stride(config.model, output_stride))
  mean, std = data.augment.normalization_stats(config.data.normalization)

  def fn(variables, images_NHWC):
    x = (images_NHWC.astype(jnp.float32) - jnp.asarray(mean)) / jnp.asarray(std)
    apply_fn = lambda im: inference._apply_eval(model, variables, im)  # pylint: disable=protected-access
    return inference.multi_scale_logits(apply_fn, x, strategy)

  return fn


def _metadata(config, image_size, strategy, output_stride, fmt) -> dict:
  return {"format": fmt, "input": {"shape": ["batch", int(image_size[0]), int(image_size[1]), 3],
                                   "dtype": "float32", "range": "RGB in [0, 255]"},
          "output": {"shape": ["batch", int(image_size[0]), int(image_size[1]),
                               int(config.model.num_classes)], "dtype": "float32"},
          "normalization": config.data.normalization,
          "output_stride": int(output_stride or config.model.output_stride),
          "strategy": dataclasses.asdict(strategy), "config": json.loads(config.to_json_best_effort())}


def export_stablehlo(config, variables, path: str, image_size: Tuple[int, int], *,
                     strategy: Optional[inference.InferenceStrategy] = None,
                     output_stride: Optional[int] = None) -> jax.export.Exported:
  """Serialises the inference function (weights embedded, symbolic batch) to `path`."""
  strategy = strategy or inference.strategy_for(config.model)
  fn = make_inference_fn(config, strategy, output_stride)
  params = jax.tree.map(jnp.asarray, {k: variables[k] for k in ("params", "batch_stats")})
  batch, = jax.export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((batch, int(image_size[0]), int(image_size[1]), 3), jnp.float32)
  exported = jax.export.export(jax.jit(lambda x: fn(params, x)))(spec)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(exported.serialize())
  with open(path + ".json", "w") as f:
    json.dump(_metadata(config, image_size, strategy, output_stride, "stablehlo"), f, indent=2)
  return exported


def load_stablehlo(path: str) -> jax.export.Exported:
  """The exported function; call it with `.call(images_NHWC)`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no exported StableHLO file at {path!r}")
  with open(path, "rb") as f:
    return jax.export.deserialize(bytearray(f.read()))


def export_saved_model(config, variables, path: str, image_size: Tuple[int, int], *,
                       strategy: Optional[inference.InferenceStrategy] = None,
                       output_stride: Optional[int] = None) -> None:
  """A TensorFlow SavedModel (jax2tf, native serialisation, symbolic batch) at directory `path`."""
  import tensorflow as tf
  from jax.experimental import jax2tf
  strategy = strategy or inference.strategy_for(config.model)
  fn = make_inference_fn(config, strategy, output_stride)
  h, w = int(image_size[0]), int(image_size[1])
  params = {k: variables[k] for k in ("params", "batch_stats")}
  tf_fn = jax2tf.convert(fn, polymorphic_shapes=[None, f"(b, {h}, {w}, 3)"], with_gradient=False)
  module = tf.Module()
  module.variables_ = tf.nest.map_structure(
      lambda a: tf.Variable(np.asarray(a), trainable=False), params)

  @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name="images")],
               autograph=False)
  def serve(images):
    return tf_fn(module.variables_, images)

  module.serve = serve
  tf.saved_model.save(module, path, signatures={"serving_default": serve.get_concrete_function()})
  with open(os.path.join(path, "deeplax_export.json"), "w") as f:
    json.dump(_metadata(config, image_size, strategy, output_stride, "saved_model"), f, indent=2)


def load_saved_model(path: str) -> Callable[[np.ndarray], np.ndarray]:
  """images [b, H, W, 3] float32 RGB in [0, 255] -> scores, through the SavedModel's signature."""
  import tensorflow as tf
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no SavedModel directory at {path!r}")
  loaded = tf.saved_model.load(path)
  serve = loaded.signatures["serving_default"]

  def call(images):
    out = serve(images=tf.constant(np.asarray(images, np.float32)))
    return np.asarray(next(iter(out.values())))

  call.loaded = loaded  # keep the module alive
  return call


def export(config, variables, fmt: str, path: str, image_size: Sequence[int], **kwargs) -> None:
  if fmt not in FORMATS:
    raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
  if len(image_size) != 2 or min(int(s) for s in image_size) < 1:
    raise ValueError(f"image size must be (height, width) > 0; got {tuple(image_size)}")
  if fmt == "stablehlo":
    export_stablehlo(config, variables, path, tuple(image_size), **kwargs)
  else:
    export_saved_model(config, variables, path, tuple(image_size), **kwargs)
