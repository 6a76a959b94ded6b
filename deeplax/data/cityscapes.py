"""Cityscapes fine annotations, mapped to the 19 evaluation classes ("train ids"; v2 §4.4).

tfds' own `cityscapes` builder keeps the raw label ids (34 values), so this builder maps them:
each label id of the 19 evaluated classes -> its train id, every other id -> 255 (ignore).
Splits: train (2,975) and val (500) from the extracted manual-download layout.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from deeplax.data import common

# (label id, name, colour) of the 19 evaluated classes, in train-id order (cityscapesScripts).
_CLASSES = (
    (7, "road", (128, 64, 128)), (8, "sidewalk", (244, 35, 232)),
    (11, "building", (70, 70, 70)), (12, "wall", (102, 102, 156)),
    (13, "fence", (190, 153, 153)), (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)), (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)), (22, "terrain", (152, 251, 152)),
    (23, "sky", (70, 130, 180)), (24, "person", (220, 20, 60)), (25, "rider", (255, 0, 0)),
    (26, "car", (0, 0, 142)), (27, "truck", (0, 0, 70)), (28, "bus", (0, 60, 100)),
    (31, "train", (0, 80, 100)), (32, "motorcycle", (0, 0, 230)),
    (33, "bicycle", (119, 11, 32)),
)
CLASS_NAMES = tuple(name for _, name, _ in _CLASSES)
PALETTE = np.array([colour for _, _, colour in _CLASSES], np.uint8)
# label id -> train id lookup table.
LABEL_TO_TRAIN_ID = np.full(256, common.IGNORE_LABEL, np.uint8)
for _train_id, (_label_id, _, _) in enumerate(_CLASSES):
  LABEL_TO_TRAIN_ID[_label_id] = _train_id

NUM_LABEL_IDS = 34  # label ids 0..33 (cityscapesScripts labels.py)
SPLITS = ("train", "val")
_INSTRUCTIONS = """\
Put the extracted archives in data.manual_dir:
  <manual_dir>/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
      (leftImg8bit_trainvaltest.zip)
  <manual_dir>/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png
      (gtFine_trainvaltest.zip)
"""


def to_train_ids(label_ids_HW: np.ndarray) -> np.ndarray:
  return LABEL_TO_TRAIN_ID[label_ids_HW]


class DeeplaxCityscapes(tfds.core.GeneratorBasedBuilder):
  """Cityscapes fine, 19 classes (train ids), 255 = ignore."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return common.segmentation_info(self, "png", CLASS_NAMES, PALETTE, __doc__,
                                     homepage="https://www.cityscapes-dataset.com")

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    for sub in ("leftImg8bit", "gtFine"):
      common.require_dir(os.path.join(root, sub), f"Cityscapes {sub} directory", _INSTRUCTIONS)
    return {split: self._generate_examples(root, split) for split in SPLITS}

  def _generate_examples(self, root, split):
    image_root = os.path.join(root, "leftImg8bit", split)
    common.require_dir(image_root, f"Cityscapes {split} images", _INSTRUCTIONS)
    found = 0
    for city in sorted(os.listdir(image_root)):
      for name in sorted(os.listdir(os.path.join(image_root, city))):
        if not name.endswith("_leftImg8bit.png"):
          continue
        stem = name[:-len("_leftImg8bit.png")]
        image_path = os.path.join(image_root, city, name)
        label_path = os.path.join(root, "gtFine", split, city, f"{stem}_gtFine_labelIds.png")
        if not os.path.isfile(label_path):
          raise FileNotFoundError(f"{image_path}: its label {label_path} does not exist")
        label = common.read_label_png(label_path)
        common.check_label_values(label, NUM_LABEL_IDS, label_path)
        common.check_same_size(label, image_path, label_path)
        found += 1
        yield stem, common.example(image_path, to_train_ids(label), stem)
    if not found:
      raise FileNotFoundError(f"no *_leftImg8bit.png images under {image_root}")
