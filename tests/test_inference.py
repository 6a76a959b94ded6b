"""Inference strategies (output stride, multi-scale + flip, sliding window) and the eval metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplax import defaults
from deeplax import evaluate
from deeplax import inference
from deeplax import layers
from deeplax import metrics
from deeplax import models
from deeplax.models import deeplab

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def tiny():
  config = defaults.get_base_config()
  config.model = deeplab.model_config(backbone="resnet_tiny", num_classes=NUM_CLASSES,
                                      aspp_features=8, output_stride=16)
  model = models.build(config.model)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 33, 33, 3)), train=False))(
      jax.random.PRNGKey(0))
  # Non-trivial BN statistics, so output-stride and scale changes visibly change the logits.
  rng = np.random.RandomState(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda p, v: (v + 0.3 * rng.standard_normal(v.shape).astype(np.float32)
                    if "mean" in jax.tree_util.keystr(p) else v), variables)
  images = jnp.asarray(rng.standard_normal((2, 41, 53, 3)).astype(np.float32))
  return config, model, variables, images


def _apply(model):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


# --------------------------------------------------------------------------------------------
# Tiles.

@pytest.mark.parametrize("length,tile,overlap", [(10, 4, 0.5), (2048, 769, 1 / 3), (1024, 769, 0.25),
                                                 (7, 7, 0.5), (5, 9, 0.3), (100, 33, 0.0)])
def test_tiles_cover_every_pixel_without_running_past_the_border(length, tile, overlap):
  starts = inference.tile_starts(length, tile, overlap)
  t = min(tile, length)
  assert starts[0] == 0 and starts[-1] + t == length
  covered = np.zeros(length, int)
  for s in starts:
    covered[s:s + t] += 1
  assert covered.min() >= 1
  if overlap > 0 and len(starts) > 1:
    assert covered.max() >= 2


def test_cityscapes_tiling_of_2048x1024_in_769_tiles():
  count = inference.coverage(1024, 2048, (769, 769), 1 / 3)
  assert count.shape == (1024, 2048) and count.min() >= 1
  assert len(inference.tile_starts(2048, 769, 1 / 3)) * len(inference.tile_starts(1024, 769, 1 / 3)) == 8


def test_sliding_window_on_an_image_smaller_than_a_tile_equals_whole_image(tiny):
  _, model, variables, images = tiny
  apply_fn = lambda x: _apply(model)(variables, x)
  whole = apply_fn(images)
  tiled = inference.sliding_window_logits(apply_fn, images, (65, 65), 0.5)
  np.testing.assert_array_equal(np.asarray(tiled), np.asarray(whole))
  # Larger than the tile in one dimension only: tiled along that one, full-size output.
  tiled = inference.sliding_window_logits(apply_fn, images, (65, 33), 0.5)
  assert tiled.shape == (2, 41, 53, NUM_CLASSES) and np.isfinite(np.asarray(tiled)).all()


def test_overlapping_tiles_are_blended_not_overwritten():
  # apply_fn outputs each tile's own mean everywhere: a value that depends on the tile.
  apply_fn = lambda x: jnp.broadcast_to(jnp.mean(x, axis=(1, 2), keepdims=True), x.shape)
  image = jnp.asarray(np.arange(1 * 1 * 10 * 1, dtype=np.float32).reshape(1, 1, 10, 1))
  out = np.asarray(inference.sliding_window_logits(apply_fn, image, (1, 6), overlap=0.5))[0, 0, :, 0]
  # Tiles [0, 6) (mean 2.5) and [3, 9) (mean 5.5) and [4, 10) (mean 6.5); starts 0, 3, 4.
  assert inference.tile_starts(10, 6, 0.5) == (0, 3, 4)
  expected = [2.5] * 3 + [(2.5 + 5.5) / 2] + [(2.5 + 5.5 + 6.5) / 3] * 2 + [(5.5 + 6.5) / 2] * 3 + [6.5]
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  # Tent window: still a convex combination of the covering tiles, weighted towards tile centres.
  tent = np.asarray(inference.sliding_window_logits(apply_fn, image, (1, 6), 0.5, "tent"))[0, 0, :, 0]
  assert tent[0] == 2.5 and tent[-1] == 6.5
  assert 2.5 < tent[3] < 5.5 and np.all(np.diff(tent) >= 0)


@pytest.mark.parametrize("window", ["uniform", "tent"])
def test_sliding_window_of_a_pointwise_model_equals_whole_image(window):
  w = jnp.asarray(np.random.RandomState(1).standard_normal((3, 4)).astype(np.float32))
  apply_fn = lambda x: x @ w
  images = jnp.asarray(np.random.RandomState(2).standard_normal((2, 37, 50, 3)).astype(np.float32))
  tiled = inference.sliding_window_logits(apply_fn, images, (16, 20), 0.25, window)
  np.testing.assert_allclose(np.asarray(tiled), np.asarray(apply_fn(images)), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Multi-scale, flip, output stride.

def test_single_scale_is_the_model_itself(tiny):
  config, model, variables, images = tiny
  fn = inference.make_predict_fn(config.model)
  np.testing.assert_allclose(np.asarray(fn(variables, images)),
                             np.asarray(_apply(model)(variables, images)), atol=1e-6)


def test_multi_scale_flip_fusion_matches_manual_passes(tiny):
  config, model, variables, images = tiny
  scales = (0.5, 1.0, 1.25)
  passes = []
  for s in scales:
    x = layers.resize_bilinear(images, inference.scaled_size((41, 53), s))
    for flip in (False, True):
      y = _apply(model)(variables, x[:, :, ::-1] if flip else x)
      y = y[:, :, ::-1] if flip else y
      passes.append(np.asarray(layers.resize_bilinear(y, (41, 53))))
  passes = np.stack(passes)
  for fusion in ("max", "mean"):
    strategy = inference.strategy_for(config.model, scales=scales, flip=True, fusion=fusion)
    fused = np.asarray(inference.make_predict_fn(config.model, strategy)(variables, images))
    assert fused.shape == (2, 41, 53, NUM_CLASSES)
    if fusion == "max":  # v2 §4.1: max response across scales
      np.testing.assert_allclose(fused, passes.max(axis=0), atol=1e-5)
    else:  # v3 §4.2: average of the probabilities
      probs = np.exp(passes - passes.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      np.testing.assert_allclose(np.exp(fused), probs.mean(axis=0), atol=1e-5)
    assert not np.allclose(fused, passes[2]), "fusion must differ from the scale-1.0 pass alone"


def test_scaled_size_follows_the_official_deeplab_formula():
  assert inference.scaled_size((513, 513), 0.5) == (257, 257)
  assert inference.scaled_size((513, 400), 1.75) == (897, 699)
  assert inference.scaled_size((41, 53), 1.0) == (41, 53)


def test_output_stride_switch_uses_the_same_variables(tiny):
  config, _, variables, images = tiny
  os16 = np.asarray(inference.make_predict_fn(config.model)(variables, images))
  os8 = np.asarray(inference.make_predict_fn(config.model, output_stride=8)(variables, images))
  assert os8.shape == os16.shape == (2, 41, 53, NUM_CLASSES)
  direct = _apply(models.build(inference.with_output_stride(config.model, 8)))(variables, images)
  np.testing.assert_allclose(os8, np.asarray(direct), atol=1e-6)
  assert not np.allclose(os8, os16, atol=1e-3)
  assert config.model.output_stride == 16  # the caller's config is not modified


def test_multi_scale_with_sliding_window_and_os8_full_size(tiny):
  config, _, variables, images = tiny
  strategy = inference.strategy_for(config.model, scales=(0.75, 1.5), flip=True,
                                    tile_size=(33, 33), tile_overlap=0.5)
  out = np.asarray(inference.make_predict_fn(config.model, strategy, output_stride=8)(variables, images))
  assert out.shape == (2, 41, 53, NUM_CLASSES) and np.isfinite(out).all()


def test_bad_strategies_are_rejected():
  with pytest.raises(ValueError, match="fusion"):
    inference.InferenceStrategy(fusion="median")
  with pytest.raises(ValueError, match="scales"):
    inference.InferenceStrategy(scales=(1.0, -0.5))
  with pytest.raises(ValueError, match="tile_overlap"):
    inference.InferenceStrategy(tile_size=64, tile_overlap=1.0)
  with pytest.raises(ValueError, match="tile_size"):
    inference.InferenceStrategy(tile_size=(0, 4))


def test_check_variables_reports_a_num_classes_mismatch(tiny):
  config, _, variables, _ = tiny
  other = config.model.copy_and_resolve_references()
  other.num_classes = 5
  with pytest.raises(ValueError, match="3 classes, config.model.num_classes is 5"):
    inference.check_variables(other, variables)
  inference.check_variables(config.model, variables)


# --------------------------------------------------------------------------------------------
# Metrics on hand-computed fixtures.

def _fixture():
  #   gt           pred
  #   0 0 1 1      0 1 1 1
  #   0 0 1 1      0 0 1 1
  #   2 2 255 1    2 0 1 1
  labels = np.array([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 1]]])
  preds = np.array([[[0, 1, 1, 1], [0, 0, 1, 1], [2, 0, 1, 1]]])
  return labels, preds


def test_miou_and_per_class_iou_by_hand():
  labels, preds = _fixture()
  cm = np.asarray(metrics.confusion_matrix(labels, preds, 3))
  m = evaluate._summary(cm, ["a", "b", "c"])  # pylint: disable=protected-access
  # class 0: TP 3, FP 1 (pred 0 at gt 2), FN 1 (gt 0 predicted 1) -> 3/5
  # class 1: TP 5, FP 1, FN 0 -> 5/6;  class 2: TP 1, FP 0, FN 1 -> 1/2
  assert m["per_class_iou"] == pytest.approx({"a": 3 / 5, "b": 5 / 6, "c": 1 / 2})
  assert m["miou"] == pytest.approx((3 / 5 + 5 / 6 + 1 / 2) / 3)
  assert m["pixel_accuracy"] == pytest.approx(9 / 11)
  assert m["num_pixels"] == 11


def test_trimap_band_and_accuracy_by_hand():
  labels = np.zeros((1, 6, 8), np.int64)
  labels[0, :, 4:] = 1                      # vertical boundary between columns 3 and 4
  band0 = metrics.boundary_band(labels[0], 0)
  np.testing.assert_array_equal(np.flatnonzero(band0.any(axis=0)), [3, 4])
  band2 = metrics.boundary_band(labels[0], 2)
  np.testing.assert_array_equal(np.flatnonzero(band2.all(axis=0)), [1, 2, 3, 4, 5, 6])
  preds = labels.copy()
  preds[0, :, 3] = 1                        # wrong on column 3 only
  preds[0, :, 0] = 1                        # and on column 0, outside every band up to width 2
  cms = metrics.trimap_confusion(labels, preds, 2, widths=(0, 2))
  result = metrics.trimap_metrics(cms, (0, 2))
  # width 0: columns 3, 4 (12 px), 6 wrong -> 0.5; width 2: columns 1..6 (36 px), 6 wrong.
  assert result[0.0]["pixel_accuracy"] == pytest.approx(6 / 12)
  assert result[2.0]["pixel_accuracy"] == pytest.approx(30 / 36)
  # mIoU in the width-0 band: class 0: TP 0 / (0 + 6 FN) = 0; class 1: 6 / 12.
  assert result[0.0]["miou"] == pytest.approx((0 + 0.5) / 2)
  assert result[2.0]["num_pixels"] == 36


def test_trimap_ignores_padding_and_void():
  labels = np.full((1, 5, 6), 255)
  labels[0, :, :3] = 0                      # real pixels: columns 0-2; padding: 3-5 (mask False)
  mask = np.zeros((1, 5, 6), bool)
  mask[0, :, :3] = True
  assert not metrics.boundary_band(labels[0], 3, mask[0]).any()  # padding makes no boundary
  labels[0, :, 2] = 255                     # a void band inside the image
  band = metrics.boundary_band(labels[0], 0, mask[0])
  np.testing.assert_array_equal(np.flatnonzero(band.any(axis=0)), [1, 2])
  cms = metrics.trimap_confusion(labels, np.zeros_like(labels), 2, (0,), mask)
  assert cms.sum() == 5                     # column 1 only: void and padding never count


def test_results_table_and_json(tmp_path):
  labels, preds = _fixture()
  cm = np.asarray(metrics.confusion_matrix(labels, preds, 3))
  names = ["a", "b", "c"]
  results = {"dataset": "fixture", "split": "val", "num_images": 1, "output_stride": 8,
             "strategy": {"scales": (1.0,), "flip": False, "tile_size": None},
             "metrics": evaluate._summary(cm, names),  # pylint: disable=protected-access
             "trimap": evaluate._trimap_summary(  # pylint: disable=protected-access
                 metrics.trimap_confusion(labels, preds, 3, (1,)), (1,))}
  results["crf"] = {"metrics": results["metrics"], "trimap": results["trimap"], "num_iters": 10}
  text = evaluate.format_results(results)
  assert "mIoU" in text and "+CRF" in text and "trimap" in text and " 64.44" in text
  evaluate.write_json(results, str(tmp_path / "r.json"))
  import json
  loaded = json.loads((tmp_path / "r.json").read_text())
  assert loaded["metrics"]["miou"] == pytest.approx(results["metrics"]["miou"])
  assert loaded["trimap"]["1"]["num_pixels"] > 0
