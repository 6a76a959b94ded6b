"""Hand-computed checks of the confusion matrix, mIoU and the picture helpers."""

import numpy as np
import pytest
from PIL import Image

from deeplax import metrics, viz


def test_confusion_matrix_and_miou_by_hand():
  labels = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
  preds = np.array([[0, 1, 1, 1], [2, 0, 2, 2]])
  mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)  # the last pixel is padding
  cm = np.asarray(metrics.confusion_matrix(labels[None], preds[None], 3, mask[None]))
  # gt 0: pred 0, 1 | gt 1: pred 1, 1 | gt 2: pred 2, 0 | 255 and padding excluded.
  np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
  m = metrics.segmentation_metrics(cm)
  # IoU_0 = 1 / (2 + 2 - 1), IoU_1 = 2 / (2 + 3 - 2), IoU_2 = 1 / (2 + 1 - 1)
  np.testing.assert_allclose(m["per_class_iou"], [1 / 3, 2 / 3, 1 / 2])
  assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
  assert m["pixel_accuracy"] == pytest.approx(4 / 6)
  assert m["num_pixels"] == 6


def test_absent_class_is_nan_and_excluded():
  cm = np.array([[5, 0, 0], [0, 3, 0], [0, 0, 0]])
  m = metrics.segmentation_metrics(cm)
  assert np.isnan(m["per_class_iou"][2])
  assert m["miou"] == 1.0
  assert "n/a" in metrics.format_table(m, ["bg", "a", "b"])


def test_confusion_matrix_accumulates_and_jits():
  import jax
  f = jax.jit(metrics.confusion_matrix, static_argnums=2)
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, 4, (2, 8, 8))
  total = f(a[None], b[None], 4) + f(b[None], a[None], 4)
  assert int(total.sum()) == 128


def test_indexed_png_round_trip_and_overlay(tmp_path):
  label = np.array([[0, 1], [2, 255]], np.uint8)
  palette = viz.voc_palette(21)
  np.testing.assert_array_equal(palette[1], [128, 0, 0])
  path = tmp_path / "x.png"
  viz.save_indexed_png(path, label, palette)
  img = Image.open(path)
  assert img.mode == "P"
  np.testing.assert_array_equal(np.asarray(img), label)
  photo = np.full((2, 2, 3), 100, np.uint8)
  out = viz.overlay(photo, label, palette, alpha=0.5)
  np.testing.assert_array_equal(out[1, 1], photo[1, 1])  # ignore pixel untouched
  np.testing.assert_array_equal(out[0, 1], [114, 50, 50])
  assert viz.prediction_panel(photo, label, label, palette).shape == (2, 6, 3)
  with pytest.raises(ValueError, match="sizes differ"):
    viz.overlay(photo, label[:1], palette)
