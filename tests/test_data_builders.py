"""The tfds builders on tiny directories fabricated in the real on-disk layouts."""

import os

import numpy as np
from PIL import Image
import pytest

from deeplax import viz
from deeplax.data import cityscapes
from deeplax.data import common
from deeplax.data import fabricate
from deeplax.data import folder
from deeplax.data import shapes
from deeplax.data import voc
import deeplax.data as data
import tfds_builds

VOC_TRAIN = ["2007_000001", "2007_000002", "2007_000003"]
VOC_VAL = ["2007_000010", "2007_000011"]
SBD_TRAIN = ["2007_000002", "2008_000020", "2008_000021", "2007_000010"]  # overlaps VOC val
SBD_VAL = ["2008_000030", "2007_000003"]


_prepare = tfds_builds.prepare
_examples = tfds_builds.examples


@pytest.fixture(scope="module")
def voc_build(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("voc_manual"))
  masks = fabricate.fabricate_voc(root, VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL,
                                  sbd_only_in_sbd_img=("2008_000030",))
  builder = voc.DeeplaxVoc(data_dir=str(tmp_path_factory.mktemp("voc_tfds")),
                           file_format="array_record")
  return _prepare(builder, root), masks, root


def test_voc_train_aug_set_logic():
  splits = voc.split_ids(VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL)
  assert splits["train_aug"] == sorted(
      {"2007_000001", "2007_000002", "2007_000003", "2008_000020", "2008_000021",
       "2008_000030"})
  assert not set(splits["train_aug"]) & set(VOC_VAL)
  assert splits["trainval"] == sorted(VOC_TRAIN + VOC_VAL)
  assert "train_aug" not in voc.split_ids(VOC_TRAIN, VOC_VAL)


def test_voc_builder_splits_dtypes_and_labels(voc_build):
  builder, masks, _ = voc_build
  sizes = {name: s.num_examples for name, s in builder.info.splits.items()}
  assert sizes == {"train": 3, "val": 2, "trainval": 5, "train_aug": 6}
  assert builder.info.metadata["class_names"][0] == "background"
  assert len(builder.info.metadata["palette"]) == 21
  for split in ("train", "train_aug", "val"):
    for image_id, ex in _examples(builder, split).items():
      assert ex["image"].dtype == np.uint8 and ex["image"].shape[-1] == 3
      assert ex["label"].dtype == np.uint8 and ex["label"].shape == ex["image"].shape[:2]
      np.testing.assert_array_equal(ex["label"], masks[image_id])
      present = set(np.unique(masks[image_id]).tolist()) - {255}
      assert set(ex["classes_present"].tolist()) == present
  # VOC-only ids keep the PNG's 255 borders; SBD-only ids come from .mat files.
  assert 255 in _examples(builder, "train")["2007_000001"]["label"]
  assert 255 not in _examples(builder, "train_aug")["2008_000030"]["label"]


def test_sbd_mat_decodes_like_png(voc_build, tmp_path):
  _, masks, root = voc_build
  label = masks["2008_000020"]
  viz.save_indexed_png(tmp_path / "same.png", label, viz.voc_palette())
  from_mat = voc.read_sbd_mat(os.path.join(root, voc.SBD_SUBDIR, "cls", "2008_000020.mat"))
  np.testing.assert_array_equal(from_mat, common.read_label_png(tmp_path / "same.png"))
  assert from_mat.dtype == np.uint8


def test_voc_missing_label_names_file(tmp_path):
  root = str(tmp_path / "manual")
  fabricate.fabricate_voc(root, VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL)
  os.remove(os.path.join(root, voc.VOC_SUBDIR, "SegmentationClass", "2007_000011.png"))
  builder = voc.DeeplaxVoc(data_dir=str(tmp_path / "tfds"), file_format="array_record")
  with pytest.raises(FileNotFoundError, match="2007_000011"):
    _prepare(builder, root)


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
  root = str(tmp_path / "manual")
  masks = fabricate.fabricate_cityscapes(root)
  builder = _prepare(cityscapes.DeeplaxCityscapes(data_dir=str(tmp_path / "tfds"),
                                                  file_format="array_record"), root)
  assert {n: s.num_examples for n, s in builder.info.splits.items()} == {"train": 3, "val": 2}
  assert len(builder.info.metadata["class_names"]) == 19
  for ex in _examples(builder, "train").values():
    expected = cityscapes.LABEL_TO_TRAIN_ID[masks[ex["id"].decode()]]
    np.testing.assert_array_equal(ex["label"], expected)
    assert set(np.unique(ex["label"])) <= set(range(19)) | {255}
  # The mapping itself: road 7 -> 0, bicycle 33 -> 18, unlabeled 0 and license plate -> 255.
  np.testing.assert_array_equal(cityscapes.to_train_ids(np.array([7, 33, 0, 6, 26])),
                                [0, 18, 255, 255, 13])


def test_cityscapes_missing_label_names_file(tmp_path):
  root = str(tmp_path / "manual")
  masks = fabricate.fabricate_cityscapes(root)
  stem = sorted(masks)[0]
  city = stem.split("_")[0]
  split = "val" if city == "frankfurt" else "train"
  os.remove(os.path.join(root, "gtFine", split, city, f"{stem}_gtFine_labelIds.png"))
  with pytest.raises(FileNotFoundError, match=f"{stem}_gtFine_labelIds.png"):
    _prepare(cityscapes.DeeplaxCityscapes(data_dir=str(tmp_path / "tfds"),
                                          file_format="array_record"), root)


def test_dataset_info_without_data(tmp_path):
  config = data.default_data_config()
  config.update(name="voc", manual_dir=str(tmp_path / "nothing"), data_dir=str(tmp_path / "t"))
  info = data.dataset_info(config, prepare=False)
  assert info.num_classes == 21 and info.class_names[15] == "person" and info.splits == {}
  np.testing.assert_array_equal(info.palette[1], [128, 0, 0])
  with pytest.raises(AssertionError, match="(?s)nothing does not exist.*VOCdevkit/VOC2012"):
    data.dataset_info(config)  # tfds' own check of the manual dir, with our instructions
  config.manual_dir = None
  with pytest.raises(ValueError, match="data.manual_dir"):
    data.dataset_info(config)


def test_folder_builder(tmp_path):
  root = str(tmp_path / "mydata")
  masks = fabricate.fabricate_folder(root)
  builder = _prepare(folder.DeeplaxFolder(root_dir=root, data_dir=str(tmp_path / "tfds"),
                                          file_format="array_record"))
  assert {n: s.num_examples for n, s in builder.info.splits.items()} == {"train": 6, "val": 3}
  assert builder.info.metadata["class_names"] == ["background", "cat", "dog"]
  for name, ex in _examples(builder, "val").items():
    np.testing.assert_array_equal(ex["label"], masks[name])
    assert ex["image"].shape == (40, 56, 3)


def test_folder_grayscale_masks_and_num_classes(tmp_path):
  root = str(tmp_path / "gray")
  masks = fabricate.fabricate_folder(root, counts={"train": 2}, write_classes=False,
                                     image_ext=".png")
  for name, label in masks.items():  # rewrite the masks as grayscale PNGs
    Image.fromarray(label, mode="L").save(os.path.join(root, "labels", "train", name + ".png"))
  with pytest.raises(ValueError, match="classes.txt"):
    folder.DeeplaxFolder(root_dir=root, data_dir=str(tmp_path / "tfds"))
  builder = _prepare(folder.DeeplaxFolder(root_dir=root, num_classes=3,
                                          data_dir=str(tmp_path / "tfds"),
                                          file_format="array_record"))
  for name, ex in _examples(builder, "train").items():
    np.testing.assert_array_equal(ex["label"], masks[name])


@pytest.mark.parametrize("break_it, match", [
    ("missing_mask", r"train_001\.jpg: no mask"),
    ("extra_mask", r"val_009\.png: mask without an image"),
    ("size_mismatch", r"train_002\.png: mask size"),
    ("out_of_range", r"train_000\.png: label values \[7\]"),
    ("rgb_mask", r"train_000\.png: label mask has PIL mode 'RGB'"),
    ("empty", r"images/train: no images"),
])
def test_folder_bad_inputs_name_the_file(tmp_path, break_it, match):
  root = str(tmp_path / "bad")
  masks = fabricate.fabricate_folder(root, counts={"train": 3, "val": 1})
  labels = os.path.join(root, "labels")
  if break_it == "missing_mask":
    os.remove(os.path.join(labels, "train", "train_001.png"))
  elif break_it == "extra_mask":
    viz.save_indexed_png(os.path.join(labels, "val", "val_009.png"), masks["val_000"],
                         viz.voc_palette())
  elif break_it == "size_mismatch":
    viz.save_indexed_png(os.path.join(labels, "train", "train_002.png"),
                         masks["train_002"][:-3], viz.voc_palette())
  elif break_it == "out_of_range":  # 3 classes; 7 is neither a class nor 255
    label = masks["train_000"].copy()
    label[0, 0] = 7
    viz.save_indexed_png(os.path.join(labels, "train", "train_000.png"), label,
                         viz.voc_palette())
  elif break_it == "rgb_mask":
    Image.fromarray(viz.colorize(masks["train_000"], viz.voc_palette())).save(
        os.path.join(labels, "train", "train_000.png"))
  elif break_it == "empty":
    for name in os.listdir(os.path.join(root, "images", "train")):
      os.remove(os.path.join(root, "images", "train", name))
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    _prepare(folder.DeeplaxFolder(root_dir=root, data_dir=str(tmp_path / "tfds"),
                                  file_format="array_record"))


def test_shapes_deterministic_with_all_classes(tmp_path):
  a = shapes.generate(3, "train", 5, 64, 96)
  b = shapes.generate(3, "train", 5, 64, 96)
  c = shapes.generate(4, "train", 5, 64, 96)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert a[0].shape[:2] != c[0].shape[:2] or not np.array_equal(a[0], c[0])
  config = data.default_data_config()
  config.data_dir = str(tmp_path / "tfds")
  config.shapes.update(num_train=12, num_val=4, min_size=64, max_size=96)
  builder = data.prepared_builder(config)
  info = data.dataset_info(config)
  assert info.splits == {"train": 12, "val": 4}
  assert info.class_names == shapes.CLASS_NAMES and info.palette.shape == (5, 3)
  examples = _examples(builder, "train")
  seen = set()
  for example_id, ex in examples.items():
    index = int(example_id.split("_")[1])
    image, label = shapes.generate(0, "train", index, 64, 96)
    np.testing.assert_array_equal(ex["image"], image)  # PNG: lossless
    np.testing.assert_array_equal(ex["label"], label)
    assert 64 <= label.shape[0] <= 96 and 64 <= label.shape[1] <= 96
    seen |= set(np.unique(label).tolist())
  assert seen == set(range(len(shapes.CLASS_NAMES)))


def _hue(rgb):
  import colorsys
  return colorsys.rgb_to_hsv(*(np.asarray(rgb, float) / 255))[0]


def test_shapes_colour_families_and_background_of_every_hue():
  """Each shape class keeps its hue band; the background covers every band, so colour alone does
  not separate a shape from background (edges and shape must)."""
  instance_hues = {c: [] for c in range(1, 5)}
  background_hues = []
  for i in range(60):
    image, label = shapes.generate(0, "train", i, 96, 96)
    for c in instance_hues:
      if (label == c).sum() > 30:
        instance_hues[c].append(_hue(np.median(image[label == c], 0)))
    bg = image[label == 0]
    background_hues += [_hue(p) for p in bg[:: max(1, len(bg) // 50)]]
  background_hues = np.array(background_hues)
  for c, hues in instance_hues.items():
    assert len(hues) >= 5, c
    centre = shapes.CLASS_HUES[c]
    dist = np.abs((np.array(hues) - centre + 0.5) % 1.0 - 0.5)
    assert np.median(dist) < 0.08, (shapes.CLASS_NAMES[c], np.median(dist))
    # A sizeable share of background pixels lies in this class's hue band too.
    bg_dist = np.abs((background_hues - centre + 0.5) % 1.0 - 0.5)
    assert np.mean(bg_dist < 0.08) > 0.03, (shapes.CLASS_NAMES[c], np.mean(bg_dist < 0.08))


def test_shapes_are_whole_and_apart():
  """Shapes do not overlap or touch: each connected label region holds one class."""
  for i in range(20):
    image, label = shapes.generate(0, "val", i, 128, 128)
    fg = label > 0
    # 4-neighbours of different shape classes never meet (shapes are >= 3 px apart).
    for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
      assert not np.any((a > 0) & (b > 0) & (a != b)), i
    assert fg.any()
    # Whole: no shape is cut by the image border.
    assert not (label[0].any() or label[-1].any() or label[:, 0].any() or label[:, -1].any()), i