"""`deeplax eval`: mIoU, per-class IoU, pixel accuracy and trimap accuracy of a checkpoint on a split.

As the papers evaluate (v2 §4, v3 §4.2): a confusion matrix over all pixels of the split (ignore label
and padding excluded), IoU per class, their mean; the boundary accuracy inside a band around label
boundaries (v2 Fig. 10, `trimap_widths`); any inference strategy of `deeplax.inference` (output
stride, multi-scale + flip, sliding window); optionally the dense CRF (v2 §3.2), reported before and
after.
"""

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from deeplax import inference
from deeplax import metrics


def _classes(config: ml_collections.ConfigDict):
  """(class names, void classes) of the dataset as the model sees it (numbers if unknown); the
  void classes follow data.other_class even when the names are unknown."""
  from deeplax import data
  num_classes = int(config.model.num_classes)
  void_classes = (0,) if data.input_pipeline.other_class(config.data) else ()
  try:
    info = data.dataset_info(config.data)
    if len(info.class_names) == num_classes:
      return list(info.class_names), void_classes
  except (ImportError, AttributeError, KeyError, ValueError):
    pass
  return [str(i) for i in range(num_classes)], void_classes


def _denormalize(config: ml_collections.ConfigDict, images_NHWC: np.ndarray) -> np.ndarray:
  """uint8 RGB images back from the model's normalised input (for the CRF's bilateral kernel)."""
  from deeplax import data
  return np.asarray(data.denormalize(images_NHWC, config.data.get("normalization", None)), np.uint8)


MESH_AXIS = "data"


def evaluate(config: ml_collections.ConfigDict, variables: Mapping[str, Any], *,
             split: Optional[str] = None,
             strategy: Optional[inference.InferenceStrategy] = None,
             output_stride: Optional[int] = None,
             trimap_widths: Sequence[float] = (),
             crf: Optional[Any] = None,
             max_batches: Optional[int] = None,
             mesh: Optional[Mesh] = None,
             eval_iter: Optional[Iterable] = None,
             num_panels: int = 0,
             progress: bool = True, log=print) -> Dict[str, Any]:
  """Evaluates `variables` on `split` of config.data; returns a JSON-able results dict.

  The one evaluation of deeplax: `deeplax eval` and training's periodic evaluation both call it.
  Sharded and jitted: variables replicated and each batch sharded on the 'data' axis of `mesh`
  (default: every device); every process feeds its shard of the split (multi-host), local batches
  padded to a multiple of the local devices (padding masked); the model runs with `strategy`
  (output stride, scales, flip, tiles; `deeplax.inference`) and the confusion matrix of each batch
  is computed on device. Trimap accuracy and the CRF run on each process's predictions; counts are
  summed over processes.
  crf: a `deeplax.predict.CRFOptions`; the CRF runs on every image (cropped to its true size) and the
  results carry both 'metrics' (before) and 'crf' (after).
  num_panels: process 0 returns that many prediction panels (image | ground truth | prediction,
  `viz.prediction_panel`) as uint8 arrays in results['panels'] ([(image id, panel)]; not written
  by `write_json`).
  """
  from deeplax import data
  num_classes = int(config.model.num_classes)
  ignore = int(config.data.get("ignore_label", 255))
  class_names, void_classes = _classes(config)
  strategy = strategy or inference.strategy_for(config.model)
  if mesh is None:
    native = not config.data.get("eval_pad_size", None)
    if native and jax.process_count() > 1:
      raise ValueError("multi-host evaluation needs batches of one shape: set data.eval_pad_size "
                       "(images are evaluated at their own size without it)")
    # Native sizes come one image per batch: one device, rather than padding it to every device.
    devices = jax.local_devices()[:1] if native else jax.devices()
    mesh = Mesh(np.asarray(devices), (MESH_AXIS,))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
  local_devices = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])
  keep_scores = crf is not None
  step = _eval_step(config.model.to_json(), strategy, output_stride, mesh, ignore, keep_scores)
  variables = jax.device_put({k: variables[k] for k in ("params", "batch_stats") if k in variables},
                             replicated)
  widths = tuple(float(w) for w in trimap_widths)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  trimap = np.zeros((len(widths), num_classes, num_classes), np.int64)
  crf_confusion = np.zeros_like(confusion)
  crf_trimap = np.zeros_like(trimap)
  panels = []
  palette = _palette(config) if num_panels else None
  num_images, start = 0, time.perf_counter()
  batches = eval_iter if eval_iter is not None else data.create_eval_iterator(config, split=split)
  for i, batch in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      break
    local = _pad_batch(batch, local_devices, ignore)
    arrays = [jax.make_array_from_process_local_data(batch_sharding, local[k])
              for k in ("image", "label", "mask")]
    batch_confusion, preds, scores = step(variables, *arrays)
    confusion += np.asarray(jax.device_get(batch_confusion), np.int64)
    n = int(np.asarray(batch["image"]).shape[0])
    num_images += int(local["mask"][:n].reshape(n, -1).any(axis=1).sum())
    want_panels = jax.process_index() == 0 and len(panels) < num_panels
    if widths or crf is not None or want_panels:
      labels, mask = local["label"][:n], local["mask"][:n]
      local_preds = _local(preds)[:n]
      if widths:
        trimap += metrics.trimap_confusion(labels, local_preds, num_classes, widths, mask, ignore)
      if crf is not None:
        crf_preds = _crf_batch(config, crf, _local(scores)[:n], local["image"][:n], local)
        crf_confusion += np.asarray(metrics.confusion_matrix(
            labels, crf_preds, num_classes, mask, ignore_label=ignore), np.int64)
        if widths:
          crf_trimap += metrics.trimap_confusion(labels, crf_preds, num_classes, widths, mask,
                                                 ignore)
      if want_panels:
        panels += _panels(config, local, local_preds, palette, num_panels - len(panels))
    if progress:
      elapsed = time.perf_counter() - start
      m = metrics.segmentation_metrics(confusion, void_classes=void_classes)
      log(f"eval batch {i + 1}: {num_images} images, {num_images / elapsed:.2f} img/s, "
          f"running mIoU {100 * m['miou']:.2f}")
  num_images, trimap, crf_confusion, crf_trimap = _sum_over_processes(
      num_images, trimap, crf_confusion, crf_trimap)
  if num_images == 0 or confusion.sum() == 0:
    raise ValueError(f"split {split or config.data.get('eval_split')!r} of dataset "
                     f"{config.data.get('name')!r} produced no images with valid pixels (empty "
                     "split or everything ignored)")
  results: Dict[str, Any] = {
      "dataset": config.data.get("name", None),
      "split": split or config.data.get("eval_split", None), "num_images": num_images,
      "output_stride": int(output_stride or config.model.output_stride),
      "strategy": dataclasses.asdict(strategy),
      "metrics": _summary(confusion, class_names, void_classes),
      "confusion_matrix": confusion.tolist(),
  }
  if widths:
    results["trimap"] = _trimap_summary(trimap, widths, void_classes)
  if crf is not None:
    results["crf"] = {"params": _jsonable(getattr(crf, "params", None)),
                      "num_iters": int(crf.num_iters),
                      "metrics": _summary(crf_confusion, class_names, void_classes)}
    if widths:
      results["crf"]["trimap"] = _trimap_summary(crf_trimap, widths, void_classes)
  if num_panels:
    results["panels"] = panels
  return results


@functools.lru_cache(maxsize=8)
def _eval_step(model_json: str, strategy, output_stride, mesh: Mesh, ignore: int,
               keep_scores: bool):
  """The jitted, sharded `(variables, image, label, mask) -> (confusion, preds, scores)`, one per
  model, strategy and mesh, so training's periodic evaluations compile it once."""
  model_config = ml_collections.ConfigDict(json.loads(model_json))
  predict_fn = inference.make_predict_fn(model_config, strategy, output_stride)
  num_classes = int(model_config.num_classes)

  def step(variables, image, label, mask):
    scores = predict_fn(variables, image)
    preds = jnp.argmax(scores, axis=-1)
    confusion = metrics.confusion_matrix(label, preds, num_classes, mask, ignore_label=ignore)
    return confusion, preds, (scores if keep_scores else None)

  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P(mesh.axis_names[0]))
  return jax.jit(step, in_shardings=(replicated,) + (batch_sharding,) * 3,
                 out_shardings=(replicated, batch_sharding, batch_sharding if keep_scores else None))


def _pad_batch(batch, multiple: int, ignore: int) -> Dict[str, np.ndarray]:
  """The batch as NumPy, padded to a multiple of the local devices (padding: label `ignore`,
  mask False, size 0)."""
  image = np.asarray(batch["image"], np.float32)
  n, h, w = image.shape[:3]
  arrays = {"image": image,
            "label": np.asarray(batch["label"], np.int32),
            "mask": np.asarray(batch.get("mask", np.ones((n, h, w), bool))).astype(bool),
            "height": np.asarray(batch.get("height", np.full(n, h)), np.int32),
            "width": np.asarray(batch.get("width", np.full(n, w)), np.int32)}
  pad = -arrays["image"].shape[0] % multiple
  if pad:
    fill = {"image": 0, "label": ignore, "mask": False, "height": 0, "width": 0}
    arrays = {k: np.concatenate([v, np.full((pad,) + v.shape[1:], fill[k], v.dtype)])
              for k, v in arrays.items()}
  arrays["id"] = list(np.asarray(batch.get("id", [""] * n))) + [""] * pad
  return arrays


def _local(global_array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  shards = sorted(global_array.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])


def _sum_over_processes(*values):
  if jax.process_count() == 1:
    return values
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def total(v):
    # int64 counts as two 31-bit int32 halves: JAX without x64 would truncate int64.
    v = np.asarray(v, np.int64)
    halves = np.stack([v >> 31, v & (2**31 - 1)]).astype(np.int32)
    gathered = np.asarray(multihost_utils.process_allgather(halves), np.int64).sum(0)
    out = (gathered[0] << 31) + gathered[1]
    return int(out) if out.ndim == 0 else out

  return tuple(total(v) for v in values)


def _palette(config):
  from deeplax import data
  try:
    return data.dataset_info(config.data).palette
  except (ImportError, AttributeError, KeyError, ValueError):
    return None


def _panels(config, local, preds, palette, limit):
  from deeplax import viz
  images = _denormalize(config, local["image"][:preds.shape[0]])
  out = []
  for j in range(preds.shape[0]):
    h, w = int(local["height"][j]), int(local["width"][j])
    if len(out) >= limit or h == 0:
      continue
    image_id = local["id"][j]
    image_id = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
    out.append((image_id, viz.prediction_panel(images[j, :h, :w], local["label"][j, :h, :w],
                                               preds[j, :h, :w], palette)))
  return out


def _crf_batch(config, crf, scores_NHWC, images_NHWC, batch) -> np.ndarray:
  """CRF-refined labels [N, Hp, Wp] (255 in the padding) from fused scores (one batched CRF call)."""
  from deeplax import crf as dense_crf
  out = np.full(scores_NHWC.shape[:3], 255, np.int32)
  hw = np.stack([np.asarray(batch["height"]), np.asarray(batch["width"])], axis=1).astype(np.int32)
  real = np.flatnonzero((hw > 0).all(axis=1))  # padding elements of the last batch have size 0
  if real.size == 0:
    return out
  log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(scores_NHWC[real]), axis=-1))
  images = _denormalize(config, images_NHWC[real])
  for i, n in enumerate(real):
    # One image per call at the padded size: a single compilation serves the whole split.
    q = dense_crf.dense_crf_batch(-log_probs[i:i + 1], images[i:i + 1], crf.params,
                                  valid_hw_N2=hw[n][None], num_iters=crf.num_iters)
    h, w = hw[n]
    out[n, :h, :w] = np.argmax(np.asarray(q[0, :h, :w]), axis=-1)
  return out


def _summary(confusion, class_names, void_classes=()) -> Dict[str, Any]:
  m = metrics.segmentation_metrics(confusion, void_classes=void_classes)
  return {"miou": m["miou"], "pixel_accuracy": m["pixel_accuracy"],
          "mean_accuracy": m["mean_accuracy"], "num_pixels": m["num_pixels"],
          "per_class_iou": dict(zip(class_names, m["per_class_iou"]))}


def _trimap_summary(trimap, widths, void_classes=()) -> Dict[str, Any]:
  return {f"{w:g}": v
          for w, v in zip(widths, metrics.trimap_metrics(trimap, widths, void_classes).values())}


def _jsonable(x):
  if x is None:
    return None
  if dataclasses.is_dataclass(x):
    return _jsonable(dataclasses.asdict(x))
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.generic, np.ndarray)):
    return _jsonable(x.tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, (int, float, str, bool)):
    return x
  return str(x)


def write_json(results, path: str) -> None:
  """Results (or any JSON-able value) as JSON, atomically (NaN, e.g. the IoU of a class absent
  from gt and prediction, becomes null; a results dict's 'panels' are left out)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    if isinstance(results, Mapping):
      results = {k: v for k, v in results.items() if k != "panels"}
    json.dump(_jsonable(results), f, indent=2)
  os.replace(tmp, path)


def format_results(results: Mapping[str, Any]) -> str:
  """The per-class IoU table (before / after CRF), accuracies and the trimap table."""
  names = list(results["metrics"]["per_class_iou"])

  def as_metrics(summary):
    return {"miou": summary["miou"], "pixel_accuracy": summary["pixel_accuracy"],
            "per_class_iou": [summary["per_class_iou"][n] for n in names]}

  lines = [f"{results.get('dataset')} / {results.get('split')}: {results['num_images']} images, "
           f"output_stride {results['output_stride']}, scales {results['strategy']['scales']}, "
           f"flip {results['strategy']['flip']}, tile {results['strategy']['tile_size']}"]
  table = metrics.format_table(as_metrics(results["metrics"]), names)
  if "crf" in results:
    crf_table = metrics.format_table(as_metrics(results["crf"]["metrics"]), names).splitlines()
    rows = table.splitlines()
    width = max(len(r) for r in rows)
    rows[0] = rows[0].ljust(width) + "  +CRF"
    table = "\n".join(r.ljust(width) + "  " + c.split()[-1] if i else r
                      for i, (r, c) in enumerate(zip(rows, crf_table)))
  lines.append(table)
  lines.append(f"mean acc.   {100 * results['metrics']['mean_accuracy']:6.2f}")
  if "trimap" in results:
    lines.append("trimap (v2 Fig. 10): band width px | pixel acc. | mIoU"
                 + (" | +CRF pixel acc. | +CRF mIoU" if "crf" in results else ""))
    for w, v in results["trimap"].items():
      row = f"  {w:>6} | {100 * v['pixel_accuracy']:6.2f} | {100 * v['miou']:6.2f}"
      if "crf" in results:
        c = results["crf"]["trimap"][w]
        row += f" | {100 * c['pixel_accuracy']:6.2f} | {100 * c['miou']:6.2f}"
      lines.append(row)
  return "\n".join(lines)
