"""Segmentation metrics from a confusion matrix: mIoU, per-class IoU, pixel accuracy.

mIoU as in the PASCAL VOC devkit used by the papers (v2 §4, v3 §4): IoU_c = TP / (TP + FP + FN)
per class, averaged over the classes present in the ground truth or the predictions; pixels with
the ignore label (255) or outside the valid mask do not count. "Void" classes are classes a model
predicts that the ground truth never holds (the 'other' class 0 of the official TF DeepLab ADE20K
checkpoints, `data.other_class`): a pixel predicted void is a miss of its true class (a false
negative) and a false positive of no class; void classes are left out of the mean.
"""

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels_NHW, preds_NHW, num_classes: int, mask_NHW=None,
                     ignore_label: int = 255):
  """int32 [C, C] counts, rows = ground truth, columns = prediction. Jittable; add to accumulate."""
  labels = jnp.asarray(labels_NHW).astype(jnp.int32)
  preds = jnp.clip(jnp.asarray(preds_NHW).astype(jnp.int32), 0, num_classes - 1)
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  if mask_NHW is not None:
    valid = valid & jnp.asarray(mask_NHW).astype(bool)
  index = jnp.where(valid, labels * num_classes + preds, 0).reshape(-1)
  counts = jnp.bincount(index, weights=valid.reshape(-1).astype(jnp.int32),
                        length=num_classes * num_classes)
  return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def segmentation_metrics(confusion, class_names: Optional[Sequence[str]] = None,
                         void_classes: Sequence[int] = ()) -> dict:
  """mIoU, per-class IoU (NaN where a class is in neither gt nor prediction, and for the
  `void_classes`), accuracies."""
  cm = np.asarray(confusion, dtype=np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"confusion matrix must be square [C, C]; got shape {cm.shape}")
  void = np.asarray(void_classes, np.int64).reshape(-1)
  if void.size and (void.min() < 0 or void.max() >= cm.shape[0]):
    raise ValueError(f"void_classes {void.tolist()} outside [0, {cm.shape[0]})")
  if void.size and cm[void].sum() > 0:
    raise ValueError(f"void classes {void.tolist()} occur in the ground truth "
                     f"({int(cm[void].sum())} pixels): a void class is one the labels never hold")
  tp = np.diag(cm)
  gt = cm.sum(axis=1)
  pred = cm.sum(axis=0)
  union = gt + pred - tp
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(union > 0, tp / union, np.nan)
    iou[void] = np.nan
    class_acc = np.where(gt > 0, tp / gt, np.nan)
  total = cm.sum()
  present = ~np.isnan(iou)
  result = {
      "miou": float(np.mean(iou[present])) if present.any() else float("nan"),
      "per_class_iou": [float(v) for v in iou],
      "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
      "mean_accuracy": float(np.nanmean(class_acc)) if (gt > 0).any() else float("nan"),
      "num_pixels": int(total),
  }
  if class_names is not None:
    if len(class_names) != cm.shape[0]:
      raise ValueError(f"{len(class_names)} class names for a {cm.shape[0]}-class confusion matrix")
    result["class_names"] = list(class_names)
  return result


def format_table(metrics: dict, class_names: Optional[Sequence[str]] = None) -> str:
  """A per-class IoU table followed by the summary lines."""
  ious = metrics["per_class_iou"]
  names = list(class_names or metrics.get("class_names") or [str(i) for i in range(len(ious))])
  width = max([len("class")] + [len(n) for n in names])
  lines = [f"{'class':<{width}}  IoU", f"{'-' * width}  ------"]
  for name, iou in zip(names, ious):
    lines.append(f"{name:<{width}}  {'   n/a' if np.isnan(iou) else f'{100 * iou:6.2f}'}")
  lines.append(f"{'-' * width}  ------")
  lines.append(f"{'mIoU':<{width}}  {100 * metrics['miou']:6.2f}")
  lines.append(f"{'pixel acc.':<{width}}  {100 * metrics['pixel_accuracy']:6.2f}")
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Boundary accuracy in a "trimap" band (v2 §4.1, Fig. 10).

def boundary_band(labels_HW, width: float, mask_HW=None) -> np.ndarray:
  """bool [H, W]: pixels within `width` px (Euclidean) of a label boundary (the trimap of v2 Fig. 10).

  A boundary pixel has a 4-neighbour with another label; the ignore label counts as a label, so the
  void band VOC draws around objects makes its neighbours boundary pixels. Neighbours outside
  `mask_HW` (padding) never make a boundary. `width` 0 is the boundary pixels themselves.
  """
  from scipy import ndimage
  labels = np.asarray(labels_HW)
  if labels.ndim != 2:
    raise ValueError(f"labels must be [H, W]; got shape {labels.shape}")
  inside = np.ones(labels.shape, bool) if mask_HW is None else np.asarray(mask_HW, bool)
  boundary = np.zeros(labels.shape, bool)
  for axis in (0, 1):
    a = [slice(None)] * 2
    b = [slice(None)] * 2
    a[axis], b[axis] = slice(None, -1), slice(1, None)
    a, b = tuple(a), tuple(b)
    differs = (labels[a] != labels[b]) & inside[a] & inside[b]
    boundary[a] |= differs
    boundary[b] |= differs
  if not boundary.any():
    return boundary
  return ndimage.distance_transform_edt(~boundary) <= width


def trimap_confusion(labels_NHW, preds_NHW, num_classes: int, widths: Sequence[float],
                     mask_NHW=None, ignore_label: int = 255) -> np.ndarray:
  """int64 [len(widths), C, C]: confusion matrices restricted to each trimap band (v2 Fig. 10).

  Host-side (NumPy/SciPy); accumulate by +. Ignore-label pixels and pixels outside the mask never
  count, as in `confusion_matrix`.
  """
  labels = np.asarray(labels_NHW)
  preds = np.clip(np.asarray(preds_NHW).astype(np.int64), 0, num_classes - 1)
  if labels.shape != preds.shape or labels.ndim != 3:
    raise ValueError(f"labels and preds must both be [N, H, W]; got {labels.shape} and {preds.shape}")
  masks = np.ones(labels.shape, bool) if mask_NHW is None else np.asarray(mask_NHW, bool)
  out = np.zeros((len(widths), num_classes, num_classes), np.int64)
  for label_HW, pred_HW, mask_HW in zip(labels, preds, masks):
    valid = mask_HW & (label_HW != ignore_label) & (label_HW >= 0) & (label_HW < num_classes)
    for i, width in enumerate(widths):
      sel = valid & boundary_band(label_HW, width, mask_HW)
      index = label_HW[sel].astype(np.int64) * num_classes + pred_HW[sel]
      out[i] += np.bincount(index, minlength=num_classes * num_classes).reshape(
          num_classes, num_classes)
  return out


def trimap_metrics(trimap_confusions, widths: Sequence[float],
                   void_classes: Sequence[int] = ()) -> dict:
  """{width: {'pixel_accuracy', 'miou', 'num_pixels'}} from `trimap_confusion` sums (v2 Fig. 10)."""
  result = {}
  for width, cm in zip(widths, np.asarray(trimap_confusions)):
    m = segmentation_metrics(cm, void_classes=void_classes)
    result[float(width)] = {"pixel_accuracy": m["pixel_accuracy"], "miou": m["miou"],
                            "num_pixels": m["num_pixels"]}
  return result
