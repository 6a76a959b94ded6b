"""The papers' inference strategies, as pure functions of an `apply_fn(images_NHWC) -> logits_NHWC`.

- Output stride switch (v3 §4.2, Tab. 4 and 6): train at output_stride 16, evaluate at 8 with the same
  variables; `make_predict_fn(..., output_stride=8)` rebuilds the model, the variable tree is shared.
- Multi-scale inputs with left-right flips (v3 §4.2: scales {0.5, 0.75, 1.0, 1.25, 1.5, 1.75}, the
  *average of the probabilities*; v2 §4.1: scales {0.5, 0.75, 1}, the *maximum response across scales*
  at each position): `multi_scale_logits`.
- Sliding-window (tiled) inference for images larger than the crop the model was trained on (e.g.
  Cityscapes 2048x1024 in tiles of 769, v2 §4.4): `sliding_window_logits`. Tiles cover every pixel;
  where tiles overlap their logits are averaged (optionally weighted by a window), never overwritten.

Everything here is jittable: tile positions and scaled sizes are static Python ints.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deeplax import layers

ApplyFn = Callable[[jax.Array], jax.Array]

FUSIONS = ("mean", "max")
WINDOWS = ("uniform", "tent")


@dataclasses.dataclass(frozen=True)
class InferenceStrategy:
  """How to turn a batch of images into scores.

  scales: input scales (v3 §4.2); 1.0 alone is plain single-scale inference.
  flip: also run on left-right flipped inputs (v3 Tab. 4 "Flip").
  fusion: 'mean' averages softmax probabilities over scales/flips (v3 §4.2) and returns their log;
    'max' takes the maximum logit over scales/flips at each position (v2 §4.1).
  tile_size: (height, width) of sliding-window tiles, or None for whole-image inference. A tile
    never exceeds the (scaled) image: smaller images are processed whole.
  tile_overlap: fraction of a tile shared with its neighbour (0 <= overlap < 1).
  window: 'uniform' (plain average over overlapping tiles) or 'tent' (weights fall linearly towards
    a tile's border, so each pixel is dominated by the tile that sees the most context around it).
  align_corners: bilinear convention used to rescale inputs and logits (the model's).
  """
  scales: Tuple[float, ...] = (1.0,)
  flip: bool = False
  fusion: str = "mean"
  tile_size: Optional[Tuple[int, int]] = None
  tile_overlap: float = 1.0 / 3.0
  window: str = "uniform"
  align_corners: bool = False

  def __post_init__(self):
    scales = tuple(float(s) for s in self.scales)
    if not scales or any(not s > 0 for s in scales):
      raise ValueError(f"scales must be a non-empty list of positive numbers; got {self.scales}")
    object.__setattr__(self, "scales", scales)
    if self.fusion not in FUSIONS:
      raise ValueError(f"fusion must be one of {FUSIONS}; got {self.fusion!r}")
    if self.window not in WINDOWS:
      raise ValueError(f"window must be one of {WINDOWS}; got {self.window!r}")
    if self.tile_size is not None:
      size = self.tile_size
      size = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(s) for s in size)
      if len(size) != 2 or min(size) < 1:
        raise ValueError(f"tile_size must be a positive int or (height, width); got {self.tile_size}")
      object.__setattr__(self, "tile_size", size)
    if not 0.0 <= self.tile_overlap < 1.0:
      raise ValueError(f"tile_overlap must be in [0, 1); got {self.tile_overlap}")

  @property
  def num_passes(self) -> int:
    return len(self.scales) * (2 if self.flip else 1)


def scaled_size(size: Sequence[int], scale: float) -> Tuple[int, int]:
  """(H, W) of an input rescaled by `scale`, as the official DeepLab eval: int((d - 1) * s + 1)."""
  return tuple(max(1, int((int(d) - 1) * scale + 1)) for d in size)


def tile_starts(length: int, tile: int, overlap: float) -> Tuple[int, ...]:
  """Start offsets of tiles of size `tile` (<= length) covering [0, length) with `overlap`.

  The stride is ceil(tile * (1 - overlap)); the last tile is aligned to the end, so every pixel is
  covered and no tile runs past the border (no padding).
  """
  if tile >= length:
    return (0,)
  stride = max(1, int(math.ceil(tile * (1.0 - overlap))))
  count = int(math.ceil((length - tile) / stride)) + 1
  starts = [min(i * stride, length - tile) for i in range(count)]
  return tuple(sorted(set(starts)))


def _window_1d(length: int, kind: str) -> np.ndarray:
  if kind == "uniform":
    return np.ones((length,), np.float32)
  # Tent: 1, 2, ... up to the middle and back; strictly positive so borders stay covered.
  idx = np.arange(length, dtype=np.float32)
  return np.minimum(idx + 1.0, length - idx) / ((length + 1) // 2)


def coverage(height: int, width: int, tile_size: Tuple[int, int], overlap: float) -> np.ndarray:
  """How many tiles cover each pixel: int32 [H, W] (>= 1 everywhere)."""
  th, tw = min(tile_size[0], height), min(tile_size[1], width)
  count = np.zeros((height, width), np.int32)
  for y in tile_starts(height, th, overlap):
    for x in tile_starts(width, tw, overlap):
      count[y:y + th, x:x + tw] += 1
  return count


def sliding_window_logits(apply_fn: ApplyFn, images_NHWC: jax.Array, tile_size: Tuple[int, int],
                          overlap: float = 1.0 / 3.0, window: str = "uniform") -> jax.Array:
  """Tiled inference: logits [N, H, W, C] blended over overlapping tiles of `tile_size`.

  Tiles are run one position at a time (`lax.map`, bounded memory; the batch goes through together).
  An image no larger than a tile is a single tile: exactly `apply_fn(images_NHWC)`.
  """
  n, h, w, _ = images_NHWC.shape
  th, tw = min(int(tile_size[0]), h), min(int(tile_size[1]), w)
  ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
  if len(ys) == 1 and len(xs) == 1:
    return apply_fn(images_NHWC)
  positions = [(y, x) for y in ys for x in xs]
  tiles = jnp.stack([images_NHWC[:, y:y + th, x:x + tw] for y, x in positions])
  tile_logits = jax.lax.map(apply_fn, tiles)                       # [T, N, th, tw, C]
  weight_HW = np.outer(_window_1d(th, window), _window_1d(tw, window)).astype(np.float32)
  num_classes = tile_logits.shape[-1]
  total = jnp.zeros((n, h, w, num_classes), jnp.float32)
  norm_HW = np.zeros((h, w), np.float32)
  for i, (y, x) in enumerate(positions):
    total = total.at[:, y:y + th, x:x + tw].add(
        tile_logits[i].astype(jnp.float32) * weight_HW[None, :, :, None])
    norm_HW[y:y + th, x:x + tw] += weight_HW
  return total / norm_HW[None, :, :, None]


def _single_pass(apply_fn: ApplyFn, images_NHWC: jax.Array, strategy: InferenceStrategy) -> jax.Array:
  if strategy.tile_size is None:
    return apply_fn(images_NHWC)
  return sliding_window_logits(apply_fn, images_NHWC, strategy.tile_size, strategy.tile_overlap,
                               strategy.window)


def multi_scale_logits(apply_fn: ApplyFn, images_NHWC: jax.Array,
                       strategy: InferenceStrategy = InferenceStrategy()) -> jax.Array:
  """Scores [N, H, W, C] at the input resolution, fused over scales and flips (v3 §4.2, v2 §4.1).

  Each pass rescales the input bilinearly, optionally flips it left-right, runs `apply_fn` (tiled if
  `strategy.tile_size`), undoes the flip and resizes the logits back to (H, W). With a single pass
  the model's logits are returned unchanged; otherwise 'mean' returns log(mean softmax) and 'max'
  the maximum logit over passes. Either way `argmax` gives the fused prediction.
  """
  _, h, w, _ = images_NHWC.shape
  passes = []
  for scale in strategy.scales:
    size = scaled_size((h, w), scale)
    scaled = layers.resize_bilinear(images_NHWC, size, strategy.align_corners)
    for flip in ((False, True) if strategy.flip else (False,)):
      x = scaled[:, :, ::-1] if flip else scaled
      logits = _single_pass(apply_fn, x, strategy).astype(jnp.float32)
      if flip:
        logits = logits[:, :, ::-1]
      passes.append(layers.resize_bilinear(logits, (h, w), strategy.align_corners))
  if len(passes) == 1:
    return passes[0]
  stacked = jnp.stack(passes)
  if strategy.fusion == "max":
    return jnp.max(stacked, axis=0)
  log_probs = jax.nn.log_softmax(stacked, axis=-1)
  return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(float(len(passes)))


def with_output_stride(model_config: ml_collections.ConfigDict,
                       output_stride: Optional[int]) -> ml_collections.ConfigDict:
  """A copy of `model_config` at another output_stride (v3 §4.2: train at 16, evaluate at 8)."""
  config = ml_collections.ConfigDict(model_config.to_dict())
  if output_stride is not None:
    config.output_stride = int(output_stride)
  return config


def strategy_for(model_config: ml_collections.ConfigDict, **kwargs) -> InferenceStrategy:
  """An InferenceStrategy using the model's upsampling convention (config.model.align_corners)."""
  kwargs.setdefault("align_corners", bool(model_config.get("align_corners", False)))
  return InferenceStrategy(**kwargs)


def make_predict_fn(model_config: ml_collections.ConfigDict,
                    strategy: InferenceStrategy = InferenceStrategy(),
                    output_stride: Optional[int] = None) -> Callable[[Any, jax.Array], jax.Array]:
  """A jitted `predict(variables, images_NHWC) -> scores_NHWC` (float32, input resolution).

  Variables are an argument (not baked-in constants), so one compiled function serves every
  checkpoint of the same architecture; one compilation per input shape.
  """
  from deeplax import models  # local: models import layers, not inference
  model = models.build(with_output_stride(model_config, output_stride))

  @jax.jit
  def predict(variables, images_NHWC):
    apply_fn = functools.partial(_apply_eval, model, variables)
    return multi_scale_logits(apply_fn, images_NHWC, strategy)

  return predict


def _apply_eval(model, variables: Mapping[str, Any], images_NHWC: jax.Array) -> jax.Array:
  out = model.apply(variables, images_NHWC, train=False)
  return out[0] if isinstance(out, tuple) else out


# --------------------------------------------------------------------------------------------
# Checkpoints for inference.

def check_variables(model_config: ml_collections.ConfigDict, variables: Mapping[str, Any],
                    source: str = "checkpoint") -> None:
  """Clear error when `variables` do not fit the model `model_config` builds (names and shapes).

  A classifier whose last dimension differs is reported as a num_classes mismatch.
  """
  from deeplax import convert
  expected = convert.abstract_variables(model_config)
  got = {p: tuple(np.shape(v)) for p, v in convert.flatten(
      {k: variables.get(k, {}) for k in ("params", "batch_stats")}).items()}
  problems = []
  for path, shape in sorted(expected.items()):
    name = "/".join(path)
    if path not in got:
      problems.append(f"{name} missing from the {source}")
    elif got[path] != shape:
      hint = ""
      if len(shape) and got[path][:-1] == shape[:-1] and shape[-1] == model_config.num_classes:
        hint = (f" (the {source} has {got[path][-1]} classes, config.model.num_classes is "
                f"{model_config.num_classes})")
      problems.append(f"{name}: {source} shape {got[path]}, model expects {shape}{hint}")
  extra = sorted("/".join(p) for p in got if p not in expected)
  if extra:
    problems.append(f"{len(extra)} {source} variables the model does not have: "
                    + ", ".join(extra[:8]) + (" ..." if len(extra) > 8 else ""))
  if problems:
    raise ValueError(f"{source} variables do not match config.model "
                     f"(name={model_config.get('name')}, backbone={_backbone_name(model_config)}, "
                     f"num_classes={model_config.get('num_classes')}):\n  - " + "\n  - ".join(problems))


def load_model(checkpoint: str, step: Optional[int] = None,
               config: Optional[ml_collections.ConfigDict] = None):
  """(config, variables) from a run directory, checked against the model the config builds.

  `config` (e.g. an eval config) overrides the run's config.json; its num_classes must match.
  """
  from deeplax import checkpoint as ckpt
  run_config, variables, step = ckpt.load_variables(checkpoint, step=step, expected_config=config)
  config = run_config if config is None else config
  check_variables(config.model, variables, source=f"checkpoint {checkpoint!r} (step {step})")
  return config, variables


def _backbone_name(model_config) -> str:
  backbone = model_config.get("backbone", None)
  return backbone.get("name", None) if hasattr(backbone, "get") else backbone
