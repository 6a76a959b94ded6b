"""PASCAL-Person-Part (Chen et al. 2014, "Detect what you can") as DeepLab v2 §4.3 uses it.

"We merge the annotations to be Head, Torso, Upper/Lower Arms and Upper/Lower Legs, resulting in
six person part classes and one background class. We only use those images containing persons
for training (1716 images) and validation (1817 images)" (v2 §4.3).

Read from the release distributed with DeepLab (liangchiehchen.com/data/pascal_person_part.zip)
and the PASCAL VOC 2010 images it annotates, in data.manual_dir:
  pascal_person_part/pascal_person_part_gt/<id>.png   part labels, 0 = background, 1..6 as
                                                      CLASS_NAMES (palette or grayscale PNG)
  pascal_person_part/pascal_person_part_trainval_list/{train,val}_id.txt   one id per line
      (or {train,val}.txt: "<image path> <label path>" per line, the id is the image's stem)
  VOCdevkit/VOC2010/JPEGImages/<id>.jpg               (VOCtrainval_03-May-2010.tar), or
  pascal_person_part/JPEGImages/<id>.jpg
Splits: train (1,716) and val (1,817). 255 in a label is ignored.
"""

import os

import tensorflow_datasets as tfds

from deeplax import viz
from deeplax.data import common

CLASS_NAMES = ("background", "head", "torso", "upper arms", "lower arms", "upper legs",
               "lower legs")
SUBDIR = "pascal_person_part"
LABEL_SUBDIR = "pascal_person_part_gt"
LIST_SUBDIR = "pascal_person_part_trainval_list"
VOC2010_IMAGES = os.path.join("VOCdevkit", "VOC2010", "JPEGImages")
SPLITS = ("train", "val")

_INSTRUCTIONS = """\
Put in data.manual_dir:
  <manual_dir>/pascal_person_part/{pascal_person_part_gt,pascal_person_part_trainval_list}
      (pascal_person_part.zip)
  <manual_dir>/VOCdevkit/VOC2010/JPEGImages   (VOCtrainval_03-May-2010.tar)
"""


def read_split_ids(list_dir, split) -> list:
  """Ids of a split: <split>_id.txt, else the image stems of <split>.txt's "<image> <label>"."""
  id_file = os.path.join(list_dir, f"{split}_id.txt")
  if os.path.isfile(id_file):
    return common.read_ids(id_file, _INSTRUCTIONS)
  pairs_file = os.path.join(list_dir, f"{split}.txt")
  if not os.path.isfile(pairs_file):
    raise FileNotFoundError(f"no list of split {split!r}: neither {id_file} nor {pairs_file}\n"
                            f"{_INSTRUCTIONS}")
  ids = []
  with open(pairs_file) as f:
    for number, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 2:
        raise ValueError(f"{pairs_file}:{number}: expected '<image path> <label path>'; got "
                         f"{line!r}")
      ids.append(os.path.splitext(os.path.basename(fields[0]))[0])
  return list(dict.fromkeys(ids))


class DeeplaxPersonPart(tfds.core.GeneratorBasedBuilder):
  """PASCAL-Person-Part: background + 6 person parts, on PASCAL VOC 2010 images."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return common.segmentation_info(self, "jpeg", CLASS_NAMES, viz.voc_palette(len(CLASS_NAMES)),
                                     __doc__,
                                     homepage="http://liangchiehchen.com/projects/DeepLab.html")

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    base = os.path.join(root, SUBDIR)
    common.require_dir(os.path.join(base, LABEL_SUBDIR), "PASCAL-Person-Part labels",
                       _INSTRUCTIONS)
    image_dirs = [os.path.join(base, "JPEGImages"), os.path.join(root, VOC2010_IMAGES)]
    image_dirs = [d for d in image_dirs if os.path.isdir(d)]
    if not image_dirs:
      raise FileNotFoundError("PASCAL VOC 2010 images not found: "
                              f"{os.path.join(root, VOC2010_IMAGES)}\n{_INSTRUCTIONS}")
    return {split: self._generate_examples(
        read_split_ids(os.path.join(base, LIST_SUBDIR), split), image_dirs[0],
        os.path.join(base, LABEL_SUBDIR)) for split in SPLITS}

  def _generate_examples(self, ids, image_dir, label_dir):
    for image_id in ids:
      image_path = os.path.join(image_dir, f"{image_id}.jpg")
      label_path = os.path.join(label_dir, f"{image_id}.png")
      if not os.path.isfile(image_path):
        raise FileNotFoundError(f"image {image_id!r} not found: {image_path}")
      if not os.path.isfile(label_path):
        raise FileNotFoundError(f"{image_path}: its part label {label_path} does not exist")
      label = common.read_label_png(label_path)
      common.check_label_values(label, len(CLASS_NAMES), label_path)
      common.check_same_size(label, image_path, label_path)
      yield image_id, common.example(image_path, label, image_id)
