"""ADE20K as the MIT Scene Parsing benchmark releases it (ADEChallengeData2016), 150 classes.

The release (ADEChallengeData2016.zip, sceneparsing.csail.mit.edu):
  ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
  ADEChallengeData2016/annotations/{training,validation}/<same stem>.png
  ADEChallengeData2016/objectInfo150.txt  (Idx, Ratio, Train, Val, Name; tab-separated)

Splits: train (20,210 images, images/training) and val (2,000, images/validation).

Labels: grayscale PNGs whose value k in 1..150 is class k of objectInfo150.txt and 0 is "other"
(unlabeled, or an object outside the 150), which the benchmark ignores. deeplax stores class
k - 1 (0..149) and 0 -> 255 (ignore), so `model.num_classes` is 150.
The official TF DeepLab code instead keeps the values (151 classes, ignore_label 0; research/
deeplab/datasets/data_generator.py), and its model zoo's ADE20K checkpoints predict 151 classes:
set `data.other_class=True` to train or evaluate such a model (class c + 1 of the model is class
c here; class 0 'other' never counts in mIoU, which is then the 150-class mIoU; deeplax.metrics).
Images that are not RGB (a grayscale or CMYK JPEG) are stored as RGB.
"""

import os

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from deeplax import images
from deeplax import viz
from deeplax.data import common

# Class k + 1 of objectInfo150.txt by its first name (90: "television receiver", its second).
CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
NUM_CLASSES = 150
RELEASE_OTHER = 0  # the release's label value of "other" (ignored)
SUBDIR = "ADEChallengeData2016"
SPLITS = {"train": "training", "val": "validation"}

_INSTRUCTIONS = f"""\
Put the extracted ADEChallengeData2016.zip in data.manual_dir:
  <manual_dir>/{SUBDIR}/images/{{training,validation}}/*.jpg
  <manual_dir>/{SUBDIR}/annotations/{{training,validation}}/*.png
(data.manual_dir may also be the ADEChallengeData2016 folder itself.)
"""


def from_release(label_HW: np.ndarray) -> np.ndarray:
  """Release values (0 = other, 1..150) -> deeplax class ids (0..149, 255 = ignore)."""
  return (np.asarray(label_HW, np.uint8) - np.uint8(1)).astype(np.uint8)  # 0 wraps to 255


def release_root(manual_dir) -> str:
  """The ADEChallengeData2016 folder: <manual_dir>/ADEChallengeData2016 or manual_dir itself."""
  root = os.path.join(manual_dir, SUBDIR)
  if not os.path.isdir(root) and os.path.isdir(os.path.join(manual_dir, "images")):
    root = manual_dir
  common.require_dir(os.path.join(root, "images"), "ADE20K images directory", _INSTRUCTIONS)
  common.require_dir(os.path.join(root, "annotations"), "ADE20K annotations directory",
                     _INSTRUCTIONS)
  return root


def read_object_info(path) -> list:
  """The names of each class of an objectInfo150.txt (comma-separated synonyms), in Idx order.

  Tab-separated 'Idx Ratio Train Val Name' rows after a header; the released file has trailing
  spaces after some indices and names, which are stripped.
  """
  with open(path) as f:
    lines = [line.rstrip("\n") for line in f if line.strip()]
  if not lines or lines[0].split("\t")[0].strip() != "Idx":
    raise ValueError(f"{path}: expected the header 'Idx\\tRatio\\tTrain\\tVal\\tName'")
  names = {}
  for number, line in enumerate(lines[1:], 2):
    fields = line.split("\t")
    if len(fields) != 5 or not fields[0].strip().isdigit():
      raise ValueError(f"{path}:{number}: expected 'Idx Ratio Train Val Name' (tab-separated); "
                       f"got {line!r}")
    names[int(fields[0])] = [n.strip() for n in fields[4].split(",")]
  if sorted(names) != list(range(1, NUM_CLASSES + 1)):
    raise ValueError(f"{path}: expected classes 1..{NUM_CLASSES}; got {len(names)} entries")
  return [names[i] for i in range(1, NUM_CLASSES + 1)]


def check_object_info(path) -> None:
  """The classes of objectInfo150.txt must be deeplax's (each name among its row's synonyms)."""
  for idx, (name, synonyms) in enumerate(zip(CLASS_NAMES, read_object_info(path)), 1):
    if name not in synonyms:
      raise ValueError(f"{path}: class {idx} is {', '.join(synonyms)!r}, not {name!r}: not the "
                       "ADE20K SceneParsing class list")


def _stems(directory, ext) -> list:
  return sorted(n[:-len(ext)] for n in os.listdir(directory) if n.endswith(ext))


def split_pairs(root, split_dir) -> list:
  """[(image path, annotation path)] of one split; raises on an unpaired file or none."""
  image_dir = os.path.join(root, "images", split_dir)
  label_dir = os.path.join(root, "annotations", split_dir)
  common.require_dir(image_dir, "ADE20K images directory", _INSTRUCTIONS)
  common.require_dir(label_dir, "ADE20K annotations directory", _INSTRUCTIONS)
  image_stems, label_stems = _stems(image_dir, ".jpg"), set(_stems(label_dir, ".png"))
  if not image_stems:
    raise FileNotFoundError(f"{image_dir}: no .jpg images")
  for stem in image_stems:
    if stem not in label_stems:
      raise FileNotFoundError(f"{os.path.join(image_dir, stem + '.jpg')}: its annotation "
                              f"{os.path.join(label_dir, stem + '.png')} does not exist")
  extra = sorted(label_stems - set(image_stems))
  if extra:
    raise FileNotFoundError(f"{os.path.join(label_dir, extra[0] + '.png')}: annotation without "
                            f"an image ({len(extra)} such)")
  return [(os.path.join(image_dir, s + ".jpg"), os.path.join(label_dir, s + ".png"))
          for s in image_stems]


def read_annotation(path) -> np.ndarray:
  """deeplax class ids of a release annotation PNG (values 0..150), checked."""
  label = common.read_label_png(path)
  common.check_label_values(label, NUM_CLASSES + 1, path)
  if (label == common.IGNORE_LABEL).any():
    raise ValueError(f"{path}: value 255 in an ADE20K annotation (its values are 0..150)")
  return from_release(label)


class DeeplaxAde20k(tfds.core.GeneratorBasedBuilder):
  """ADE20K (SceneParsing ADEChallengeData2016), 150 classes, release value 0 ignored."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return common.segmentation_info(self, "jpeg", CLASS_NAMES, viz.voc_palette(NUM_CLASSES),
                                     __doc__, homepage="http://sceneparsing.csail.mit.edu")

  def _split_generators(self, dl_manager):
    root = release_root(os.fspath(dl_manager.manual_dir))
    info_file = os.path.join(root, "objectInfo150.txt")
    if os.path.isfile(info_file):
      check_object_info(info_file)
    return {split: self._generate_examples(split_pairs(root, d)) for split, d in SPLITS.items()}

  def _generate_examples(self, pairs):
    for image_path, label_path in pairs:
      label = read_annotation(label_path)
      with Image.open(image_path) as im:  # the header only
        mode, size = im.mode, (im.height, im.width)
      common.check_same_size(label, image_path, label_path, size)
      stem = os.path.splitext(os.path.basename(image_path))[0]
      image = image_path if mode == "RGB" else images.read_rgb(image_path)
      yield stem, common.example(image, label, stem)
