"""PASCAL-Context (Mottaghi et al. 2014) as DeepLab v2 §4.2 evaluates it: 59 classes + background.

"The proposed models are evaluated on the most frequent 59 classes along with one background
category. The training set and validation set contain 4998 and 5105 images" (v2 §4.2): the
PASCAL VOC 2010 `ImageSets/Main` train and val lists (repeated ids are read once).

Two sources are read, from data.manual_dir:
- The release (cs.stanford.edu/~roozbeh/pascal-context): trainval.tar.gz holds `trainval/<id>.mat`
  (variable `LabelMap`: the full labels, 0 = unlabeled, 1..459 = the classes of `labels.txt`,
  one "<id>: <name>" per line). The 59 classes are those of the release's `59_labels.txt`; three
  of them are spelled differently in labels.txt (diningtable = table, bedcloth = bedclothes,
  clothes = cloth). deeplax maps full label FULL_LABEL_IDS[c - 1] -> class c, and 0 (unlabeled)
  and every other full label -> 0 (background), checking labels.txt's names for those ids.
  `trainval/` and `labels.txt` may sit in data.manual_dir or in VOCdevkit/VOC2010/.
- 60-class PNGs as the common converters write them (mmsegmentation's
  tools/dataset_converters/pascal_context.py over the PASCAL in Detail API):
  `VOCdevkit/VOC2010/SegmentationClassContext/<id>.png`, values 0 = background, c = class c in
  the order below, with the lists `ImageSets/SegmentationContext/{train,val}.txt` when present
  (the Detail API's lists, which differ from VOC 2010 Main by a few images), else `ImageSets/Main`.
If both are present, the release's .mat files are read.

Class order: background, then the 59 classes by increasing full label id, which is alphabetical
(labels.txt is sorted by name): the order of the converters' PNGs. (59_labels.txt lists the same
classes VOC's 20 first; that order is not the PNGs'.)
"""

import os

from absl import logging
import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from deeplax import viz
from deeplax.data import common

# (full label id in labels.txt, name) of the 59 classes, in class order 1..59.
_CLASSES = (
    (2, "aeroplane"), (9, "bag"), (18, "bed"), (19, "bedclothes"), (22, "bench"),
    (23, "bicycle"), (25, "bird"), (31, "boat"), (33, "book"), (34, "bottle"), (44, "building"),
    (45, "bus"), (46, "cabinet"), (59, "car"), (65, "cat"), (68, "ceiling"), (72, "chair"),
    (80, "cloth"), (85, "computer"), (98, "cow"), (104, "cup"), (105, "curtain"), (113, "dog"),
    (115, "door"), (144, "fence"), (158, "floor"), (159, "flower"), (162, "food"),
    (187, "grass"), (189, "ground"), (207, "horse"), (220, "keyboard"), (232, "light"),
    (258, "motorbike"), (259, "mountain"), (260, "mouse"), (284, "person"), (295, "plate"),
    (296, "platform"), (308, "pottedplant"), (324, "road"), (326, "rock"), (347, "sheep"),
    (349, "shelves"), (354, "sidewalk"), (355, "sign"), (360, "sky"), (366, "snow"),
    (368, "sofa"), (397, "table"), (415, "track"), (416, "train"), (420, "tree"),
    (424, "truck"), (427, "tvmonitor"), (440, "wall"), (445, "water"), (454, "window"),
    (458, "wood"),
)
FULL_LABEL_IDS = tuple(i for i, _ in _CLASSES)
CLASS_NAMES = ("background",) + tuple(name for _, name in _CLASSES)
NUM_FULL_LABELS = 459  # labels.txt: 1..459; 0 = unlabeled
# full label id -> class id (everything not among the 59 -> background 0).
FULL_TO_CLASS = np.zeros(NUM_FULL_LABELS + 1, np.uint8)
FULL_TO_CLASS[list(FULL_LABEL_IDS)] = np.arange(1, len(FULL_LABEL_IDS) + 1)

VOC2010_SUBDIR = os.path.join("VOCdevkit", "VOC2010")
PNG_SUBDIR = "SegmentationClassContext"
PNG_LISTS = os.path.join("ImageSets", "SegmentationContext")
SPLITS = ("train", "val")

_INSTRUCTIONS = """\
Put in data.manual_dir:
  <manual_dir>/VOCdevkit/VOC2010/{JPEGImages,ImageSets/Main}   (VOCtrainval_03-May-2010.tar)
and either the PASCAL-Context release (trainval.tar.gz, and labels.txt if not in it):
  <manual_dir>/trainval/<id>.mat and <manual_dir>/labels.txt
      (or VOCdevkit/VOC2010/trainval/ and VOCdevkit/VOC2010/labels.txt)
or 60-class PNGs written by a converter (0 = background, 1..59):
  <manual_dir>/VOCdevkit/VOC2010/SegmentationClassContext/<id>.png
      [+ VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt]
"""


def read_labels_txt(path) -> dict:
  """{full label id: name} of a release labels.txt ("<id>: <name>" per line)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"PASCAL-Context labels.txt not found: {path}\n{_INSTRUCTIONS}")
  labels = {}
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      key, sep, name = line.partition(":")
      if not sep or not key.strip().isdigit():
        raise ValueError(f"{path}:{number}: expected '<id>: <name>'; got {line!r}")
      labels[int(key)] = name.strip()
  return labels


def check_labels_txt(path) -> None:
  """labels.txt must name the 59 classes at the ids deeplax maps (and hold no id above 459)."""
  labels = read_labels_txt(path)
  for full_id, name in _CLASSES:
    if labels.get(full_id) != name:
      raise ValueError(f"{path}: label {full_id} is {labels.get(full_id)!r}, expected {name!r}: "
                       "not the PASCAL-Context release's 459-label list")
  if max(labels) > NUM_FULL_LABELS:
    raise ValueError(f"{path}: label id {max(labels)} > {NUM_FULL_LABELS}")


def from_full_labels(label_map_HW: np.ndarray, path="LabelMap") -> np.ndarray:
  """Full labels (0..459) -> the 60 classes (0 = background; see module doc)."""
  label_map = np.asarray(label_map_HW)
  if not np.issubdtype(label_map.dtype, np.integer):
    raise ValueError(f"{path}: LabelMap has dtype {label_map.dtype}; expected integers")
  if label_map.size and (label_map.min() < 0 or label_map.max() > NUM_FULL_LABELS):
    bad = np.unique(label_map[(label_map < 0) | (label_map > NUM_FULL_LABELS)])
    raise ValueError(f"{path}: full label values {bad[:10].tolist()} outside [0, "
                     f"{NUM_FULL_LABELS}] (labels.txt's ids; 0 = unlabeled)")
  return FULL_TO_CLASS[label_map.astype(np.int64)]


def read_context_mat(path) -> np.ndarray:
  """The 60-class label of a release trainval/<id>.mat (variable LabelMap)."""
  try:
    mat = scipy.io.loadmat(path)
  except Exception as e:  # scipy raises several types for a damaged file
    raise ValueError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from e
  if "LabelMap" not in mat:
    raise ValueError(f"{path}: expected a PASCAL-Context label (variable LabelMap); found "
                     f"variables {sorted(k for k in mat if not k.startswith('_'))}")
  label_map = mat["LabelMap"]
  if label_map.ndim != 2:
    raise ValueError(f"{path}: LabelMap has shape {label_map.shape}; expected [H, W]")
  return from_full_labels(label_map, path)


def _release_dir(manual_dir, voc):
  """(trainval dir, labels.txt) of the release, or None when neither place holds trainval/."""
  for base in (manual_dir, voc):
    if os.path.isdir(os.path.join(base, "trainval")):
      return os.path.join(base, "trainval"), os.path.join(base, "labels.txt")
  return None


class DeeplaxPascalContext(tfds.core.GeneratorBasedBuilder):
  """PASCAL-Context, 59 classes + background (60), on PASCAL VOC 2010 images."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return common.segmentation_info(self, "jpeg", CLASS_NAMES, viz.voc_palette(len(CLASS_NAMES)),
                                     __doc__,
                                     homepage="https://cs.stanford.edu/~roozbeh/pascal-context/")

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    voc = os.path.join(root, VOC2010_SUBDIR)
    common.require_dir(os.path.join(voc, "JPEGImages"), "PASCAL VOC 2010 images", _INSTRUCTIONS)
    release = _release_dir(root, voc)
    lists = os.path.join(voc, "ImageSets", "Main")
    if release is not None:
      mat_dir, labels_txt = release
      check_labels_txt(labels_txt)
      read = lambda image_id: (os.path.join(mat_dir, f"{image_id}.mat"), read_context_mat)
    else:
      png_dir = os.path.join(voc, PNG_SUBDIR)
      common.require_dir(png_dir, "PASCAL-Context annotations (release trainval/ or "
                         f"{PNG_SUBDIR}/)", _INSTRUCTIONS)
      if os.path.isdir(os.path.join(voc, PNG_LISTS)):
        lists = os.path.join(voc, PNG_LISTS)
      read = lambda image_id: (os.path.join(png_dir, f"{image_id}.png"), _read_png)
    logging.info("deeplax pascal_context: labels from %s, lists from %s",
                 release[0] if release else os.path.join(voc, PNG_SUBDIR), lists)
    return {split: self._generate_examples(
        common.read_ids(os.path.join(lists, f"{split}.txt"), _INSTRUCTIONS), voc, read)
            for split in SPLITS}

  def _generate_examples(self, ids, voc, read):
    for image_id in ids:
      image_path = os.path.join(voc, "JPEGImages", f"{image_id}.jpg")
      label_path, reader = read(image_id)
      if not os.path.isfile(image_path):
        raise FileNotFoundError(f"image {image_id!r} not found: {image_path}")
      if not os.path.isfile(label_path):
        raise FileNotFoundError(f"{image_path}: its PASCAL-Context label {label_path} does not "
                                "exist")
      label = reader(label_path)
      common.check_same_size(label, image_path, label_path)
      yield image_id, common.example(image_path, label, image_id)


def _read_png(path) -> np.ndarray:
  label = common.read_label_png(path)
  common.check_label_values(label, len(CLASS_NAMES), path)
  return label
