"""PASCAL-Context, PASCAL-Person-Part and ADE20K builders on directories fabricated in the layouts
of the releases (deeplax.data.fabricate), their label conventions, and their bad-input errors."""

import os

import numpy as np
from PIL import Image
import pytest
import scipy.io

from deeplax import metrics
from deeplax import viz
from deeplax.data import ade20k
from deeplax.data import fabricate
from deeplax.data import pascal_context
from deeplax.data import person_part
import deeplax.data as data
import tfds_builds

TRAIN = ["2008_000002", "2008_000003", "2010_000005"]
VAL = ["2008_000010", "2009_000011"]


_prepare = tfds_builds.prepare
_examples = tfds_builds.examples


def _splits(builder):
  return {name: split.num_examples for name, split in builder.info.splits.items()}


def _builder(cls, tmp_path):
  return cls(data_dir=str(tmp_path / "tfds"), file_format="array_record")


def _check_examples(builder, expected_labels):
  """Every split's images are RGB of the label's size and labels are the expected ones."""
  seen = set()
  for split in builder.info.splits:
    for image_id, ex in _examples(builder, split).items():
      assert ex["image"].dtype == np.uint8 and ex["image"].shape == ex["label"].shape + (3,)
      np.testing.assert_array_equal(ex["label"], expected_labels[image_id])
      assert set(ex["classes_present"].tolist()) == set(np.unique(ex["label"]).tolist()) - {255}
      seen.add(image_id)
  assert seen == set(expected_labels)


# ---- PASCAL-Context. -----------------------------------------------------------------------

def _context_by_name(labels_txt):
  """full id -> class id through the names (independent of pascal_context.FULL_TO_CLASS)."""
  names = pascal_context.read_labels_txt(labels_txt)
  return {i: pascal_context.CLASS_NAMES.index(n) if n in pascal_context.CLASS_NAMES[1:] else 0
          for i, n in names.items()} | {0: 0}


def test_pascal_context_release_mat_files(tmp_path):
  root = str(tmp_path / "manual")
  full = fabricate.fabricate_pascal_context(root, TRAIN, VAL)
  builder = _prepare(_builder(pascal_context.DeeplaxPascalContext, tmp_path), root)
  assert _splits(builder) == {"train": 3, "val": 2}  # the repeated train id is read once
  names = builder.info.metadata["class_names"]
  assert len(names) == 60 and names[0] == "background" and names[1] == "aeroplane"
  assert names[-1] == "wood" and len(builder.info.metadata["palette"]) == 60
  by_name = _context_by_name(os.path.join(root, "labels.txt"))
  expected = {i: np.vectorize(by_name.get)(m).astype(np.uint8) for i, m in full.items()}
  _check_examples(builder, expected)
  assert all(len(np.unique(e)) == 60 for e in expected.values())  # all 60 classes occur


# The 59 classes' ids in the release's labels.txt (the sorted ids the common converters map to
# 1..59, e.g. mmsegmentation's tools/dataset_converters/pascal_context.py), written out here so
# that a wrong entry in deeplax's table fails.
CONTEXT_59_FULL_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113,
    115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324,
    326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458)


def test_pascal_context_mapping_is_exact():
  """Full label -> class: an off-by-one anywhere moves one of these."""
  assert pascal_context.FULL_LABEL_IDS == CONTEXT_59_FULL_IDS
  lut = pascal_context.from_full_labels(np.arange(460)[None])[0]
  np.testing.assert_array_equal(lut[list(CONTEXT_59_FULL_IDS)], np.arange(1, 60))
  assert (np.delete(lut, CONTEXT_59_FULL_IDS) == 0).all()
  full = np.array([[0, 1, 2, 3, 9, 18, 19], [284, 427, 440, 458, 459, 8, 10]])
  np.testing.assert_array_equal(pascal_context.from_full_labels(full),
                                [[0, 0, 1, 0, 2, 3, 4], [37, 55, 56, 59, 0, 0, 0]])
  assert pascal_context.CLASS_NAMES[37] == "person" and pascal_context.CLASS_NAMES[2] == "bag"
  with pytest.raises(ValueError, match=r"x.mat: full label values \[460\]"):
    pascal_context.from_full_labels(np.array([[460]]), "x.mat")


def test_pascal_context_labels_txt_must_match(tmp_path):
  root = str(tmp_path / "manual")
  fabricate.fabricate_pascal_context(root, TRAIN[:1], VAL[:1])
  labels_txt = os.path.join(root, "labels.txt")
  lines = open(labels_txt).read().replace("2: aeroplane\n", "2: airplane\n")
  open(labels_txt, "w").write(lines)
  with pytest.raises(ValueError, match="labels.txt: label 2 is 'airplane', expected 'aeroplane'"):
    _prepare(_builder(pascal_context.DeeplaxPascalContext, tmp_path), root)


def test_pascal_context_converter_pngs(tmp_path):
  root = str(tmp_path / "manual")
  masks = fabricate.fabricate_pascal_context(root, TRAIN, VAL, release=False)
  builder = _prepare(_builder(pascal_context.DeeplaxPascalContext, tmp_path), root)
  assert _splits(builder) == {"train": 3, "val": 2}
  _check_examples(builder, masks)


# ---- PASCAL-Person-Part. -------------------------------------------------------------------

@pytest.mark.parametrize("id_lists", [True, False], ids=["id_lists", "pair_lists"])
def test_person_part(tmp_path, id_lists):
  root = str(tmp_path / "manual")
  masks = fabricate.fabricate_person_part(root, TRAIN, VAL, id_lists=id_lists)
  masks[VAL[0]][:3, :5] = 255  # an ignored region stays ignored
  viz.save_indexed_png(os.path.join(root, "pascal_person_part", "pascal_person_part_gt",
                                    f"{VAL[0]}.png"), masks[VAL[0]], viz.voc_palette())
  builder = _prepare(_builder(person_part.DeeplaxPersonPart, tmp_path), root)
  assert _splits(builder) == {"train": 3, "val": 2}
  assert builder.info.metadata["class_names"] == [
      "background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs"]
  _check_examples(builder, masks)


# ---- ADE20K. -------------------------------------------------------------------------------

def test_ade20k_release(tmp_path):
  root = str(tmp_path / "manual")
  raw = fabricate.fabricate_ade20k(root, grayscale=("ADE_train_00000002",))
  builder = _prepare(_builder(ade20k.DeeplaxAde20k, tmp_path), root)
  assert _splits(builder) == {"train": 3, "val": 2}
  names = builder.info.metadata["class_names"]
  assert len(names) == 150 and (names[0], names[12], names[149]) == ("wall", "person", "flag")
  # Release value k -> class k - 1; 0 ("other") -> 255 (ignore), written out by hand.
  expected = {i: np.where(r == 0, 255, r.astype(np.int64) - 1).astype(np.uint8)
              for i, r in raw.items()}
  _check_examples(builder, expected)
  assert all((e == 255).any() and (e == 149).any() for e in expected.values())


def test_ade20k_release_values_and_object_info(tmp_path):
  np.testing.assert_array_equal(ade20k.from_release(np.array([0, 1, 2, 13, 150], np.uint8)),
                                [255, 0, 1, 12, 149])
  root = str(tmp_path / "manual")
  fabricate.fabricate_ade20k(root, counts={"training": 1, "validation": 1})
  info = os.path.join(root, ade20k.SUBDIR, "objectInfo150.txt")
  assert [s[0] for s in ade20k.read_object_info(info)] == list(ade20k.CLASS_NAMES)
  text = open(info).read().replace("\twall, walls", "\tpartition, walls")
  open(info, "w").write(text)
  with pytest.raises(ValueError, match="objectInfo150.txt: class 1 is 'partition, walls', not"):
    ade20k.check_object_info(info)
  annotation = str(tmp_path / "with_255.png")
  Image.fromarray(np.array([[0, 150], [255, 3]], np.uint8), mode="L").save(annotation)
  with pytest.raises(ValueError, match="with_255.png: value 255 in an ADE20K annotation"):
    ade20k.read_annotation(annotation)


def test_ade20k_zoo_convention_151_classes(tmp_path):
  """data.other_class: 151 model classes, label c + 1, and mIoU over the 150 classes only."""
  root = str(tmp_path / "manual")
  raw = fabricate.fabricate_ade20k(root, counts={"training": 2, "validation": 3})
  config = data.default_data_config()
  config.update(name="ade20k", manual_dir=root, data_dir=str(tmp_path / "tfds"),
                eval_pad_size=64, eval_batch_size=3)
  info150 = data.dataset_info(config)
  config.other_class = True
  info151 = data.dataset_info(config)
  assert (info150.num_classes, info151.num_classes) == (150, 151)
  assert info151.class_names[0] == "other" and info151.class_names[1:] == info150.class_names
  assert (info150.void_classes, info151.void_classes) == ((), (0,))
  batches = {}
  for other in (False, True):
    config.other_class = other
    cfg = _eval_config(config)
    batches[other] = next(iter(data.create_eval_iterator(cfg, split="val")))
  for j, image_id in enumerate(batches[True]["id"]):
    r = raw[image_id.decode() if isinstance(image_id, bytes) else str(image_id)]
    h, w = r.shape
    # The zoo's labels are the release's values, 0 ignored.
    np.testing.assert_array_equal(batches[True]["label"][j, :h, :w], np.where(r == 0, 255, r))
    np.testing.assert_array_equal(batches[False]["label"][j, :h, :w],
                                  np.where(r == 0, 255, r.astype(np.int64) - 1))
  # Predictions of a 151-class model: right on some pixels, 'other' on some, wrong on others.
  labels151, mask = batches[True]["label"], batches[True]["mask"]
  rng = np.random.default_rng(0)
  preds151 = np.where(rng.random(labels151.shape) < 0.6, labels151,
                      rng.integers(0, 151, labels151.shape))
  preds151[rng.random(labels151.shape) < 0.1] = 0
  preds151 = np.where(labels151 == 255, rng.integers(0, 151, labels151.shape), preds151)
  m151 = metrics.segmentation_metrics(
      metrics.confusion_matrix(labels151, preds151, 151, mask), void_classes=(0,))
  # By hand over the 150 classes: a pixel predicted 'other' is a miss of its class.
  valid = mask & (labels151 != 255)
  ious = []
  for k in range(1, 151):
    tp = np.sum(valid & (labels151 == k) & (preds151 == k))
    union = np.sum(valid & ((labels151 == k) | (preds151 == k)))
    if union:
      ious.append(tp / union)
  assert m151["miou"] == pytest.approx(np.mean(ious), abs=1e-12)
  assert np.isnan(m151["per_class_iou"][0])
  # A model that never predicts 'other' scores exactly what its 150-class twin does.
  preds_no_other = np.where(preds151 == 0, 1, preds151)
  m_zoo = metrics.segmentation_metrics(
      metrics.confusion_matrix(labels151, preds_no_other, 151, mask), void_classes=(0,))
  m_150 = metrics.segmentation_metrics(metrics.confusion_matrix(
      batches[False]["label"], preds_no_other - 1, 150, batches[False]["mask"]))
  assert m_zoo["miou"] == pytest.approx(m_150["miou"], abs=1e-12)
  np.testing.assert_allclose(m_zoo["per_class_iou"][1:], m_150["per_class_iou"])
  with pytest.raises(ValueError, match="void classes \\[0\\] occur in the ground truth"):
    metrics.segmentation_metrics(np.eye(3, dtype=int), void_classes=(0,))


def _eval_config(data_config):
  from deeplax import defaults
  c = defaults.get_base_config()
  c.data = data_config
  return c


# ---- Bad input: an error naming the file, nothing kept, a rerun after the fix succeeds. ----

def _context_png(root, image_id):
  return os.path.join(root, "VOCdevkit", "VOC2010", "SegmentationClassContext", f"{image_id}.png")


def _rewrite_png(path, change):
  with Image.open(path) as im:
    mode, label = im.mode, np.asarray(im).copy()
  new = change(label)
  if mode == "P":
    viz.save_indexed_png(path, new, viz.voc_palette())
  else:
    Image.fromarray(new, mode="L").save(path)


def _rewrite_mat(path, change):
  label = scipy.io.loadmat(path)["LabelMap"]
  scipy.io.savemat(path, {"LabelMap": change(label)})


def _value(v):
  def change(label):
    label = label.copy()
    label[1, 1] = v
    return label
  return change


def _crop(label):
  return np.ascontiguousarray(label[:-2])


def _voc2010_image(root):
  return os.path.join(root, "VOCdevkit", "VOC2010", "JPEGImages", f"{VAL[1]}.jpg")


# (dataset, fabricate(root), label file of one val image, rewrite function, out-of-range value,
#  that image's file)
DATASETS = {
    "pascal_context_release": (
        pascal_context.DeeplaxPascalContext,
        lambda root: fabricate.fabricate_pascal_context(root, TRAIN, VAL),
        lambda root: os.path.join(root, "trainval", f"{VAL[1]}.mat"), _rewrite_mat, 460,
        _voc2010_image),
    "pascal_context_png": (
        pascal_context.DeeplaxPascalContext,
        lambda root: fabricate.fabricate_pascal_context(root, TRAIN, VAL, release=False),
        lambda root: _context_png(root, VAL[1]), _rewrite_png, 60, _voc2010_image),
    "person_part": (
        person_part.DeeplaxPersonPart,
        lambda root: fabricate.fabricate_person_part(root, TRAIN, VAL),
        lambda root: os.path.join(root, "pascal_person_part", "pascal_person_part_gt",
                                  f"{VAL[1]}.png"), _rewrite_png, 7, _voc2010_image),
    "ade20k": (
        ade20k.DeeplaxAde20k,
        lambda root: fabricate.fabricate_ade20k(root),
        lambda root: os.path.join(root, ade20k.SUBDIR, "annotations", "validation",
                                  "ADE_val_00000002.png"), _rewrite_png, 151,
        lambda root: os.path.join(root, ade20k.SUBDIR, "images", "validation",
                                  "ADE_val_00000002.jpg")),
}


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("fault", ["missing", "missing_image", "value", "size"])
def test_bad_input_names_the_file_and_keeps_nothing(tmp_path, name, fault):
  cls, make, label_file, rewrite, bad_value, image_file = DATASETS[name]
  root = str(tmp_path / "manual")
  make(root)
  path = image_file(root) if fault == "missing_image" else label_file(root)
  backup = open(path, "rb").read()
  if fault == "missing_image":
    os.remove(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    error, match = FileNotFoundError, f"{stem}.*(not found|without an image)"
  elif fault == "missing":
    os.remove(path)
    error, match = FileNotFoundError, f"{os.path.basename(path)}.*does not exist"
  elif fault == "value":
    rewrite(path, _value(bad_value))
    error, match = ValueError, f"{os.path.basename(path)}: .*values \\[{bad_value}\\]"
  else:
    rewrite(path, _crop)
    error, match = ValueError, f"{os.path.basename(path)}: label size .* differs from the image"
  with pytest.raises(error, match=match):
    _prepare(_builder(cls, tmp_path), root)
  builder = _builder(cls, tmp_path)
  assert not builder.is_prepared()
  kept = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "tfds") for f in files]
  assert not kept, kept
  with open(path, "wb") as f:
    f.write(backup)
  assert _splits(_prepare(_builder(cls, tmp_path), root)) == {"train": 3, "val": 2}


def test_unpaired_ade20k_annotation_is_named(tmp_path):
  root = str(tmp_path / "manual")
  fabricate.fabricate_ade20k(root)
  os.remove(os.path.join(root, ade20k.SUBDIR, "images", "training", "ADE_train_00000003.jpg"))
  with pytest.raises(FileNotFoundError, match="ADE_train_00000003.png: annotation without an"):
    _prepare(_builder(ade20k.DeeplaxAde20k, tmp_path), root)


@pytest.mark.parametrize("name,classes", [("pascal_context", 60), ("person_part", 7),
                                          ("ade20k", 150)])
def test_dataset_info_without_data(tmp_path, name, classes):
  config = data.default_data_config()
  config.update(name=name, manual_dir=str(tmp_path / "nothing"), data_dir=str(tmp_path / "t"))
  info = data.dataset_info(config, prepare=False)
  assert info.num_classes == classes and info.palette.shape == (classes, 3)
  config.manual_dir = None
  with pytest.raises(ValueError, match="data.manual_dir"):
    data.dataset_info(config)


def test_resize_to_range(tmp_path):
  """data.min_resize_value / max_resize_value / resize_factor: the official resize_to_range sizes
  (worked by hand), TF1's align_corners bilinear / nearest resizes, every eval image resized."""
  import tensorflow as tf
  from deeplax.data import augment
  size = lambda *a: tuple(augment.resize_to_range_size(*a).numpy().tolist())
  assert size(375, 500, 513, 513, 16) == (385, 497)  # max 513 -> 497; 373 -> 385 (16k + 1)
  assert size(500, 375, 513, 513, None) == (513, 385)  # longer side 513: 375 * 1.026 = 384.75
  assert size(375, 500, 513, None, None) == (513, 684)  # shorter side 513, no cap
  assert size(300, 400, 320, 1000, 8) == (321, 433)  # shorter side 320 fits: 427 -> 433
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (5, 7, 3)).astype(np.uint8)
  label = np.arange(35, dtype=np.int32).reshape(5, 7)
  resized, resized_label = augment.resize_to_range(tf.constant(image), tf.constant(label), 9, 13)
  assert resized.shape == (9, 13, 3)
  np.testing.assert_allclose(resized, tf.compat.v1.image.resize_bilinear(
      image[None].astype(np.float32), [9, 13], align_corners=True)[0], atol=1e-4)
  np.testing.assert_array_equal(resized_label, tf.compat.v1.image.resize_nearest_neighbor(
      label[None, ..., None], [9, 13], align_corners=True)[0, ..., 0])
  root = str(tmp_path / "manual")
  raw = fabricate.fabricate_ade20k(root, counts={"training": 1, "validation": 3})
  config = _eval_config(data.default_data_config())
  config.data.update(name="ade20k", manual_dir=root, data_dir=str(tmp_path / "tfds"),
                     eval_pad_size=33, eval_batch_size=3, min_resize_value=40,
                     max_resize_value=40, resize_factor=8)
  batch = next(iter(data.create_eval_iterator(config, split="val")))
  for j in range(3):
    h, w = int(batch["height"][j]), int(batch["width"][j])
    assert sorted((h, w)) == [25, 33]  # 40x56: max 40 -> 33; 56 -> 33, 40 -> 23.6 -> 24 -> 25
    image_id = batch["id"][j]
    original = raw[image_id.decode() if isinstance(image_id, bytes) else str(image_id)]
    values = set(np.unique(ade20k.from_release(original)).tolist())
    assert set(np.unique(batch["label"][j, :h, :w]).tolist()) <= values
  config.data.min_resize_value = None
  with pytest.raises(ValueError, match="need data.min_resize_value"):
    data.create_eval_iterator(config, split="val")
  config.data.min_resize_value = 0
  with pytest.raises(ValueError, match="data.min_resize_value must be None or a positive int"):
    data.create_eval_iterator(config, split="val")


def test_bootstrap_class_ids_with_other_class():
  from deeplax.data import input_pipeline
  names = ade20k.CLASS_NAMES
  assert input_pipeline._class_ids([1, "sky", 150], names, other_class=True) == [0, 2, 149]
  assert input_pipeline._class_ids([0, "sky"], names) == [0, 2]
  with pytest.raises(ValueError, match="0 is 'other'"):
    input_pipeline._class_ids([0], names, other_class=True)


def test_resuming_with_another_other_class_is_refused(tmp_path):
  """data.other_class changes what the class ids mean: a resume that flips it is a model change
  (a config.json written before the key existed counts as False)."""
  import json
  from deeplax import checkpoint
  from deeplax import defaults
  from deeplax import train
  from deeplax.models import deeplab
  config = defaults.get_base_config()
  config.model = deeplab.model_config(backbone="resnet_tiny", num_classes=151)
  old = json.loads(config.to_json_best_effort())
  del old["data"]["other_class"]
  os.makedirs(tmp_path / "run")
  with open(tmp_path / "run" / checkpoint.CONFIG_FILE, "w") as f:
    json.dump(old, f)
  assert train.reconcile_config(config, str(tmp_path / "run"), 10, write=False) == {}
  config.data.other_class = True
  with pytest.raises(train.ConfigChangeError, match="data.other_class: False in the workdir"):
    train.reconcile_config(config, str(tmp_path / "run"), 10, write=False)
