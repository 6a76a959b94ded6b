"""`deeplax predict`: segment image files with a checkpoint.

For each image writes `<stem>.png` (indexed PNG, the dataset palette), `<stem>_overlay.png` (colours
over the photo) and, with `save_logits`, `<stem>_logits.npy` (float32 [H, W, num_classes] at the
image's resolution). Images of any size: same-size images are batched on the device, each at its own
resolution (no padding or resizing, so the logits are the model's on exactly that image). A file that
cannot be read is reported and skipped; the others are still predicted.
"""

import dataclasses
import os
import sys
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np

from deeplax import images
from deeplax import inference
from deeplax import viz

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class Progress:
  """A one-line progress bar on stderr: done/total, images/s, ETA."""

  def __init__(self, total: int, label: str = "predict", enabled: bool = True, stream=None):
    self.total, self.label, self.enabled = total, label, enabled
    self.stream = stream or sys.stderr
    self.start = time.perf_counter()
    self.done = 0

  def update(self, n: int = 1) -> None:
    self.done += n
    if not self.enabled:
      return
    elapsed = time.perf_counter() - self.start
    rate = self.done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - self.done) / rate if rate > 0 else float("nan")
    width = 30
    filled = int(width * self.done / max(self.total, 1))
    self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                      f"{self.done}/{self.total}  {rate:.2f} img/s  ETA {eta:.0f}s ")
    if self.done >= self.total:
      self.stream.write("\n")
    self.stream.flush()


def collect_images(inputs: Sequence[str]) -> List[str]:
  """Image files named directly or found (sorted, non-recursive) in the given folders."""
  paths = []
  for item in inputs:
    if os.path.isdir(item):
      found = sorted(os.path.join(item, f) for f in os.listdir(item)
                     if f.lower().endswith(IMAGE_EXTENSIONS)
                     and os.path.isfile(os.path.join(item, f)))
      if not found:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {item!r}")
      paths.extend(found)
    elif os.path.isfile(item):
      paths.append(item)
    else:
      raise FileNotFoundError(f"input {item!r} is neither an image file nor a folder")
  stems: Dict[str, str] = {}
  for p in paths:
    stem = os.path.splitext(os.path.basename(p))[0]
    if stem in stems:
      raise ValueError(f"two inputs would write the same outputs '{stem}.png': {stems[stem]!r} and "
                       f"{p!r}; predict them into different --output folders")
    stems[stem] = p
  return paths


def load_image(path: str) -> np.ndarray:
  """uint8 RGB [H, W, 3] whatever the file's mode (deeplax.images); an error naming the file."""
  return images.read_rgb(path)


def dataset_palette(config: ml_collections.ConfigDict) -> np.ndarray:
  """The dataset's palette (deeplax.data.dataset_info), the VOC colour map when unavailable."""
  try:
    from deeplax import data
    info = data.dataset_info(config.data, prepare=False)  # metadata only: never builds data
    palette = info["palette"] if isinstance(info, Mapping) else getattr(info, "palette")
    if palette is not None:
      return np.asarray(palette, np.uint8)
  except (ImportError, AttributeError, KeyError, ValueError):
    pass
  return viz.voc_palette(256)


def normalize(config: ml_collections.ConfigDict, images_uint8: np.ndarray) -> np.ndarray:
  """The model's input preprocessing (config.data.normalization) of uint8 RGB images."""
  from deeplax import data
  return np.asarray(data.normalize(images_uint8, config.data.get("normalization", None)),
                    np.float32)


@dataclasses.dataclass
class CRFOptions:
  params: Any
  num_iters: int = 10


class Predictor:
  """Scores and labels for uint8 images with one config + variables + strategy (jitted, cached)."""

  def __init__(self, config: ml_collections.ConfigDict, variables: Mapping[str, Any],
               strategy: Optional[inference.InferenceStrategy] = None,
               output_stride: Optional[int] = None, crf: Optional[CRFOptions] = None):
    self.config = config
    self.strategy = strategy or inference.strategy_for(config.model)
    self.predict_fn = inference.make_predict_fn(config.model, self.strategy, output_stride)
    self.variables = jax.device_put({k: variables[k] for k in ("params", "batch_stats")
                                     if k in variables})
    self.crf = crf

  def scores(self, images_uint8_NHW3: np.ndarray) -> np.ndarray:
    """float32 [N, H, W, C] fused scores (logits) at the images' resolution."""
    x = normalize(self.config, np.asarray(images_uint8_NHW3))
    return np.asarray(self.predict_fn(self.variables, x), np.float32)

  def labels(self, scores_HWC: np.ndarray, image_uint8_HW3: np.ndarray) -> np.ndarray:
    """argmax labels [H, W]; with CRF options, refined by the dense CRF (v2 §3.2) first."""
    if self.crf is None:
      return np.argmax(scores_HWC, axis=-1).astype(np.uint8)
    from deeplax import crf
    scores = scores_HWC - scores_HWC.max(axis=-1, keepdims=True)
    log_probs = scores - np.log(np.exp(scores).sum(axis=-1, keepdims=True))
    q = crf.dense_crf_batch(-log_probs[None], np.asarray(image_uint8_HW3)[None], self.crf.params,
                            num_iters=self.crf.num_iters)
    return np.argmax(np.asarray(q[0]), axis=-1).astype(np.uint8)


def _size_batches(items: List[Tuple[str, np.ndarray]], batch_size: int):
  by_size: Dict[Tuple[int, int], List[Tuple[str, np.ndarray]]] = {}
  for path, image in items:
    by_size.setdefault(image.shape[:2], []).append((path, image))
  for group in by_size.values():
    for i in range(0, len(group), batch_size):
      yield group[i:i + batch_size]


def predict_files(predictor: Predictor, paths: Sequence[str], output_dir: str, *,
                  save_logits: bool = False, batch_size: int = 4, chunk_size: int = 64,
                  progress: bool = True, log=print) -> Dict[str, Any]:
  """Predicts every file of `paths` into `output_dir`. Returns {'predicted': [...], 'failed': {}}.

  Files are read `chunk_size` at a time (bounded memory), grouped by size into device batches of up
  to `batch_size`. Unreadable files are listed in 'failed' with the reason and reported via `log`.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}")
  os.makedirs(output_dir, exist_ok=True)
  palette = dataset_palette(predictor.config)
  bar = Progress(len(paths), enabled=progress and len(paths) > 1)
  predicted, failed = [], {}
  for c in range(0, len(paths), chunk_size):
    items = []
    for path in paths[c:c + chunk_size]:
      try:
        items.append((path, load_image(path)))
      except ValueError as e:
        failed[path] = str(e)
        log(f"\nskipped: {e}")
        bar.update()
    for batch in _size_batches(items, batch_size):
      scores = predictor.scores(np.stack([image for _, image in batch]))
      for (path, image), scores_HWC in zip(batch, scores):
        stem = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
        label = predictor.labels(scores_HWC, image)
        viz.save_indexed_png(stem + ".png", label, palette)
        viz.save_png(stem + "_overlay.png", viz.overlay(image, label, palette))
        if save_logits:
          np.save(stem + "_logits.npy", scores_HWC.astype(np.float32))
        predicted.append(path)
      bar.update(len(batch))
  return {"predicted": predicted, "failed": failed}
