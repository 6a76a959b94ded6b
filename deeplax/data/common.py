"""What every deeplax tfds builder shares: the example features, class metadata, label checks.

Every example is {'image': uint8 [H, W, 3], 'label': uint8 [H, W] (255 = ignore), 'id': str,
'classes_present': uint8 [n] (the class ids present in the label, 255 excluded)}. The class names
and the colour palette are in `builder.info.metadata` ('class_names', 'palette').
`classes_present` lets the input pipeline find hard images for bootstrapping (v3 §4.3) without
decoding any label.
"""

import os
from typing import Optional, Sequence

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

IGNORE_LABEL = 255


def segmentation_features(image_format: str) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8,
                                   encoding_format=image_format),
      "label": tfds.features.Tensor(shape=(None, None), dtype=np.uint8,
                                    encoding=tfds.features.Encoding.ZLIB),
      "id": tfds.features.Text(),
      "classes_present": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
  })


def segmentation_info(builder, image_format: str, class_names: Sequence[str], palette,
                      description: str, homepage: Optional[str] = None) -> tfds.core.DatasetInfo:
  """The DatasetInfo every deeplax segmentation builder shares: features, supervised keys
  (image, label) and class names + palette in the metadata."""
  return tfds.core.DatasetInfo(
      builder=builder, description=description, features=segmentation_features(image_format),
      supervised_keys=("image", "label"), homepage=homepage,
      metadata=class_metadata(class_names, palette))


def class_metadata(class_names: Sequence[str], palette) -> tfds.core.MetadataDict:
  palette = np.asarray(palette, np.uint8)
  if palette.shape != (len(class_names), 3):
    raise ValueError(f"palette must be [{len(class_names)}, 3]; got {palette.shape}")
  return tfds.core.MetadataDict(class_names=list(class_names), palette=palette.tolist())


def classes_present(label_HW: np.ndarray) -> np.ndarray:
  present = np.unique(label_HW)
  return present[present != IGNORE_LABEL].astype(np.uint8)


def check_label_values(label_HW: np.ndarray, num_classes: int, path) -> None:
  """Every value must be a class id in [0, num_classes) or the ignore label 255."""
  values = np.unique(label_HW)
  bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
  if bad.size:
    raise ValueError(
        f"{path}: label values {bad.tolist()} are outside [0, {num_classes}) and not "
        f"{IGNORE_LABEL} (ignore); the dataset has {num_classes} classes")


def read_label_png(path) -> np.ndarray:
  """Class ids of a PNG mask: indexed-palette ('P') or grayscale ('L'), never RGB colours."""
  with Image.open(path) as im:
    if im.mode not in ("P", "L"):
      raise ValueError(
          f"{path}: label mask has PIL mode {im.mode!r}; it must be an indexed-palette ('P') "
          "or grayscale ('L') PNG whose pixel values are class ids (an RGB colour mask is "
          "not a class-id mask)")
    return np.asarray(im, np.uint8)


def image_size(path) -> tuple[int, int]:
  """(height, width) of an image file, read from its header only."""
  with Image.open(path) as im:
    return im.height, im.width


def check_same_size(label_HW: np.ndarray, image_path, label_path, size=None) -> None:
  """The label must have the image's (height, width) (`size`, else read from the header)."""
  size = image_size(image_path) if size is None else tuple(size)
  if label_HW.shape != size:
    raise ValueError(f"{label_path}: label size {label_HW.shape} (H, W) differs from the image "
                     f"{image_path} size {size}")


def read_ids(path, instructions: str = "") -> list:
  """Image ids of a list file, one per line, in order, each once (a repeated id is read once,
  with a warning naming the file)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"list file not found: {path}\n{instructions}")
  with open(path) as f:
    ids = [line.strip() for line in f if line.strip()]
  unique = list(dict.fromkeys(ids))
  if len(unique) != len(ids):
    logging.warning("%s: %d repeated ids (e.g. %r) read once", path, len(ids) - len(unique),
                    next(i for n, i in enumerate(ids) if i in ids[:n]))
  return unique


def example(image, label_HW: np.ndarray, example_id: str) -> dict:
  return {"image": image, "label": label_HW, "id": example_id,
          "classes_present": classes_present(label_HW)}


def require_dir(path, what: str, instructions: str) -> None:
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{what} not found: {path}\n{instructions}")
