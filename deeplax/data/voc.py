"""PASCAL VOC 2012 segmentation + the SBD extra annotations (v2 §4.1, v3 §4), from manual files.

Splits: train (1,464), val (1,449), trainval (2,913; v3 §4.3 fine-tunes on it) and train_aug
(10,582 = VOC train + SBD train + SBD val - VOC val, "trainaug" in v2 §4.1 / v3 §4). The sizes
are facts of the real data; the builder computes every split from the list files.

Labels: VOC's palette PNGs (SegmentationClass, 255 on object borders and "difficult" regions)
where VOC has one, otherwise SBD's cls/<id>.mat (MATLAB struct GTcls, field Segmentation; no
ignore borders). Images: VOC JPEGImages, or SBD img/ for ids VOC lacks.
"""

import os

from absl import logging
import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from deeplax import viz
from deeplax.data import common

CLASS_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")
# v3 §4.3: the hard classes whose images are duplicated when bootstrapping.
HARD_CLASSES = ("bicycle", "chair", "diningtable", "pottedplant", "sofa")

VOC_SUBDIR = os.path.join("VOCdevkit", "VOC2012")
SBD_SUBDIR = os.path.join("benchmark_RELEASE", "dataset")

_INSTRUCTIONS = """\
Put the extracted archives in data.manual_dir:
  <manual_dir>/VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}
      (VOCtrainval_11-May-2012.tar)
  <manual_dir>/benchmark_RELEASE/dataset/{img,cls,train.txt,val.txt}
      (SBD, benchmark.tgz; needed for the train_aug split only)
"""


def read_ids(path) -> list:
  """Image ids of a list file, one per line."""
  return common.read_ids(path, _INSTRUCTIONS)


def split_ids(voc_train, voc_val, sbd_train=None, sbd_val=None) -> dict:
  """Ids of every split; train_aug = (VOC train | SBD train | SBD val) - VOC val (sorted)."""
  splits = {"train": list(voc_train), "val": list(voc_val),
            "trainval": sorted(set(voc_train) | set(voc_val))}
  if sbd_train is not None and sbd_val is not None:
    splits["train_aug"] = sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))
  return splits


def read_sbd_mat(path) -> np.ndarray:
  """Class ids of an SBD cls/<id>.mat (struct GTcls, field Segmentation) as uint8 [H, W]."""
  mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
  if "GTcls" not in mat or not hasattr(mat["GTcls"], "Segmentation"):
    raise ValueError(f"{path}: expected an SBD class label (struct GTcls with field "
                     f"Segmentation); found variables {sorted(k for k in mat if k[0] != '_')}")
  return np.asarray(mat["GTcls"].Segmentation, np.uint8)


class DeeplaxVoc(tfds.core.GeneratorBasedBuilder):
  """PASCAL VOC 2012 segmentation + SBD (train_aug), 21 classes."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return common.segmentation_info(self, "jpeg", CLASS_NAMES, viz.voc_palette(len(CLASS_NAMES)),
                                     __doc__,
                                     homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/")

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    voc = os.path.join(root, VOC_SUBDIR)
    sbd = os.path.join(root, SBD_SUBDIR)
    common.require_dir(voc, "PASCAL VOC 2012 directory", _INSTRUCTIONS)
    lists = os.path.join(voc, "ImageSets", "Segmentation")
    voc_train = read_ids(os.path.join(lists, "train.txt"))
    voc_val = read_ids(os.path.join(lists, "val.txt"))
    sbd_train = sbd_val = None
    if os.path.isdir(sbd):
      sbd_train = read_ids(os.path.join(sbd, "train.txt"))
      sbd_val = read_ids(os.path.join(sbd, "val.txt"))
    else:
      logging.warning("deeplax voc: no SBD at %s: building train/val/trainval without train_aug",
                      sbd)
    return {name: self._generate_examples(ids, voc, sbd)
            for name, ids in split_ids(voc_train, voc_val, sbd_train, sbd_val).items()}

  def _generate_examples(self, ids, voc, sbd):
    for image_id in ids:
      image_path = os.path.join(voc, "JPEGImages", f"{image_id}.jpg")
      if not os.path.isfile(image_path):
        image_path = os.path.join(sbd, "img", f"{image_id}.jpg")
      if not os.path.isfile(image_path):
        raise FileNotFoundError(f"image {image_id!r} not found: neither "
                                f"{os.path.join(voc, 'JPEGImages', image_id + '.jpg')} nor "
                                f"{image_path}")
      png = os.path.join(voc, "SegmentationClass", f"{image_id}.png")
      mat = os.path.join(sbd, "cls", f"{image_id}.mat")
      if os.path.isfile(png):
        label_path, label = png, common.read_label_png(png)
      elif os.path.isfile(mat):
        label_path, label = mat, read_sbd_mat(mat)
      else:
        raise FileNotFoundError(f"label of {image_id!r} not found: neither {png} nor {mat}")
      common.check_same_size(label, image_path, label_path)
      common.check_label_values(label, len(CLASS_NAMES), label_path)
      yield image_id, common.example(image_path, label, image_id)
