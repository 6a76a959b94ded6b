"""Fabricated source directories in the exact on-disk layouts of the real datasets.

For tests, benchmarks and notebooks: small PASCAL VOC + SBD, Cityscapes and folder datasets
with random-rectangle masks, written in the original formats (JPEG, palette PNG, SBD .mat).
"""

import os

import numpy as np
from PIL import Image
import scipy.io

from deeplax import viz


def random_mask(rng, height, width, num_classes, num_objects=3, border=False) -> np.ndarray:
  """uint8 [H, W]: background 0 with rectangles of random classes in [1, num_classes);
  `border`: a 2-px ignore (255) outline around every rectangle, as in VOC's PNGs."""
  label = np.zeros((height, width), np.uint8)
  for _ in range(num_objects):
    y0, x0 = rng.integers(0, height - 4), rng.integers(0, width - 4)
    y1, x1 = rng.integers(y0 + 4, height + 1), rng.integers(x0 + 4, width + 1)
    if border:
      label[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] = 255
    label[y0:y1, x0:x1] = rng.integers(1, num_classes)
  return label


def image_for(rng, label, palette) -> np.ndarray:
  """A noisy RGB image whose colours follow `label` (class colour + noise)."""
  colours = np.asarray(palette, np.float32)
  image = colours[np.minimum(label, len(colours) - 1)] * 0.7 + 40
  image += rng.normal(0, 10, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def save_sbd_mat(path, label) -> None:
  """An SBD cls/<id>.mat: struct GTcls with fields Segmentation, Boundaries, CategoriesPresent."""
  present = np.unique(label)
  present = present[(present != 0) & (present != 255)].astype(np.uint8)
  boundaries = np.empty((20, 1), dtype=object)
  for i in range(20):
    boundaries[i, 0] = np.zeros((0, 0))
  scipy.io.savemat(path, {"GTcls": {"Segmentation": label.astype(np.uint8),
                                    "Boundaries": boundaries,
                                    "CategoriesPresent": present}})


def _write_ids(path, ids):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("".join(f"{i}\n" for i in ids))


def fabricate_voc(root, voc_train, voc_val, sbd_train, sbd_val, size=(48, 64), seed=0,
                  sbd_only_in_sbd_img=()) -> dict:
  """A VOCdevkit/VOC2012 + benchmark_RELEASE/dataset tree; returns id -> mask written.

  VOC ids (train, val) get JPEGImages/<id>.jpg and SegmentationClass/<id>.png (palette, 255
  borders); SBD ids get cls/<id>.mat and img/<id>.jpg, and also JPEGImages/<id>.jpg unless listed
  in `sbd_only_in_sbd_img`. Ids in both VOC and SBD get the same mask in both formats.
  """
  rng = np.random.default_rng(seed)
  voc = os.path.join(root, "VOCdevkit", "VOC2012")
  sbd = os.path.join(root, "benchmark_RELEASE", "dataset")
  for d in (os.path.join(voc, "JPEGImages"), os.path.join(voc, "SegmentationClass"),
            os.path.join(sbd, "img"), os.path.join(sbd, "cls")):
    os.makedirs(d, exist_ok=True)
  palette = viz.voc_palette(256)
  masks = {}
  voc_ids = set(voc_train) | set(voc_val)
  for image_id in sorted(voc_ids | set(sbd_train) | set(sbd_val)):
    h, w = size if rng.random() < 0.5 else size[::-1]
    in_sbd = image_id in set(sbd_train) | set(sbd_val)
    label = random_mask(rng, h, w, 21, border=image_id in voc_ids and not in_sbd)
    masks[image_id] = label
    image = Image.fromarray(image_for(rng, label, palette))
    if image_id in voc_ids:
      viz.save_indexed_png(os.path.join(voc, "SegmentationClass", f"{image_id}.png"), label,
                           palette)
    if in_sbd:
      save_sbd_mat(os.path.join(sbd, "cls", f"{image_id}.mat"), label)
      image.save(os.path.join(sbd, "img", f"{image_id}.jpg"), quality=95)
    if image_id not in sbd_only_in_sbd_img:
      image.save(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), quality=95)
  lists = os.path.join(voc, "ImageSets", "Segmentation")
  _write_ids(os.path.join(lists, "train.txt"), voc_train)
  _write_ids(os.path.join(lists, "val.txt"), voc_val)
  _write_ids(os.path.join(sbd, "train.txt"), sbd_train)
  _write_ids(os.path.join(sbd, "val.txt"), sbd_val)
  return masks


def fabricate_cityscapes(root, counts=None, size=(32, 64), seed=0) -> dict:
  """leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/..._gtFine_labelIds.png (label ids
  0..33); returns stem -> label-id mask."""
  counts = counts or {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}}
  rng = np.random.default_rng(seed)
  masks = {}
  for split, cities in counts.items():
    for city, num in cities.items():
      for sub in ("leftImg8bit", "gtFine"):
        os.makedirs(os.path.join(root, sub, split, city), exist_ok=True)
      for i in range(num):
        stem = f"{city}_{i:06d}_000019"
        label = random_mask(rng, *size, 34, num_objects=4)
        masks[stem] = label
        image = image_for(rng, label, viz.voc_palette(256))
        Image.fromarray(image).save(
            os.path.join(root, "leftImg8bit", split, city, f"{stem}_leftImg8bit.png"))
        Image.fromarray(label, mode="L").save(
            os.path.join(root, "gtFine", split, city, f"{stem}_gtFine_labelIds.png"))
  return masks


def fabricate_folder(root, class_names=("background", "cat", "dog"), counts=None,
                     size=(40, 56), seed=0, write_classes=True, image_ext=".jpg") -> dict:
  """root/images/<split>/*.jpg + root/labels/<split>/*.png (palette); returns name -> mask."""
  counts = counts or {"train": 6, "val": 3}
  rng = np.random.default_rng(seed)
  palette = viz.voc_palette(256)
  masks = {}
  for split, num in counts.items():
    os.makedirs(os.path.join(root, "images", split), exist_ok=True)
    os.makedirs(os.path.join(root, "labels", split), exist_ok=True)
    for i in range(num):
      name = f"{split}_{i:03d}"
      label = random_mask(rng, *size, len(class_names))
      masks[name] = label
      Image.fromarray(image_for(rng, label, palette)).save(
          os.path.join(root, "images", split, name + image_ext))
      viz.save_indexed_png(os.path.join(root, "labels", split, name + ".png"), label, palette)
  if write_classes:
    with open(os.path.join(root, "classes.txt"), "w") as f:
      f.write("".join(f"{n}\n" for n in class_names))
  return masks
