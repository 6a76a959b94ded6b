"""Your own data: a folder of images and a parallel folder of PNG class-id masks.

Layout (root = data.manual_dir):
  root/images/<split>/<name>.{jpg,jpeg,png}   one sub-folder per split (e.g. train, val); or
  root/images/<name>.*                        images directly in images/: a single 'train' split
  root/labels/<split>/<name>.png              the mask of every image, same name and size:
                                              indexed-palette or grayscale PNG of class ids,
                                              255 = ignore
  root/classes.txt                            optional: one class per line, "name" or
                                              "name r g b"; else data.folder.num_classes
Every image needs a mask and every mask an image; sizes must agree; every mask value must be a
class id below the number of classes, or 255. Anything else is an error naming the file (a
dataset whose masks do not hold class ids would otherwise train to all-background).
"""

import hashlib
import os
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from deeplax import images
from deeplax import viz
from deeplax.data import common

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def read_classes(path):
  """(names, palette or None) from a classes.txt: "name" or "name r g b" per line."""
  names, colours = [], []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) not in (1, 4):
        raise ValueError(f"{path}:{number}: expected 'name' or 'name r g b'; got {line!r}")
      names.append(fields[0])
      if len(fields) == 4:
        colours.append([int(v) for v in fields[1:]])
  if not names:
    raise ValueError(f"{path}: no class names")
  if colours and len(colours) != len(names):
    raise ValueError(f"{path}: give a colour for every class or for none")
  return names, (np.array(colours, np.uint8) if colours else None)


def _files(directory, extensions) -> dict:
  """stem -> file name of the files in `directory` with one of `extensions`."""
  found = {}
  for name in sorted(os.listdir(directory)):
    stem, ext = os.path.splitext(name)
    if ext.lower() in extensions and os.path.isfile(os.path.join(directory, name)):
      if stem in found:
        raise ValueError(f"{directory}: two files for {stem!r}: {found[stem]} and {name}")
      found[stem] = name
  return found


def find_pairs(root) -> dict:
  """split -> sorted [(image path, mask path)]; raises on missing, unpaired or no files."""
  image_root, label_root = os.path.join(root, "images"), os.path.join(root, "labels")
  for d in (image_root, label_root):
    common.require_dir(d, "folder dataset directory", __doc__)
  subdirs = sorted(d for d in os.listdir(image_root) if os.path.isdir(os.path.join(image_root, d)))
  if _files(image_root, IMAGE_EXTENSIONS) or not subdirs:
    split_dirs = {"train": (image_root, label_root)}
  else:
    split_dirs = {s: (os.path.join(image_root, s), os.path.join(label_root, s)) for s in subdirs}
  pairs = {}
  for split, (images_dir, labels_dir) in split_dirs.items():
    images = _files(images_dir, IMAGE_EXTENSIONS)
    if not images:
      raise FileNotFoundError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    common.require_dir(labels_dir, f"masks of split {split!r}", __doc__)
    masks = _files(labels_dir, (".png",))
    for stem, name in images.items():
      if stem not in masks:
        raise FileNotFoundError(f"{os.path.join(images_dir, name)}: no mask "
                                f"{os.path.join(labels_dir, stem + '.png')}")
    for stem, name in masks.items():
      if stem not in images:
        raise FileNotFoundError(f"{os.path.join(labels_dir, name)}: mask without an image "
                                f"{stem}.{{jpg,jpeg,png}} in {images_dir}")
    pairs[split] = [(os.path.join(images_dir, images[s]), os.path.join(labels_dir, masks[s]))
                    for s in sorted(images)]
  return pairs


def _fingerprint(root, pairs, class_names) -> str:
  """Changes whenever a file, its size or time, or the classes change (a new build)."""
  h = hashlib.sha1(os.path.abspath(root).encode())
  for split, files in sorted(pairs.items()):
    for path in (p for pair in files for p in pair):
      st = os.stat(path)
      h.update(f"{split}|{os.path.relpath(path, root)}|{st.st_size}|{st.st_mtime_ns}".encode())
  h.update("|".join(class_names).encode())
  return h.hexdigest()[:12]


class DeeplaxFolder(tfds.core.GeneratorBasedBuilder):
  """Images and PNG class-id masks from a folder (see module doc); one config per folder state."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "images of any PIL mode read by deeplax.images (16-bit scaled, not "
                            "clipped)", "1.0.0": "first release"}

  def __init__(self, *, root_dir, num_classes: Optional[int] = None, **kwargs):
    self.root_dir = os.path.abspath(os.fspath(root_dir))
    common.require_dir(self.root_dir, "folder dataset root", __doc__)
    classes_file = os.path.join(self.root_dir, "classes.txt")
    palette = None
    if os.path.isfile(classes_file):
      self.class_names, palette = read_classes(classes_file)
      if num_classes is not None and num_classes != len(self.class_names):
        raise ValueError(f"data.folder.num_classes={num_classes} but {classes_file} lists "
                         f"{len(self.class_names)} classes")
    elif num_classes:
      self.class_names = [f"class_{i}" for i in range(num_classes)]
    else:
      raise ValueError(f"{self.root_dir}: no classes.txt; add one (one class name per line) or "
                       "set data.folder.num_classes")
    self.palette = palette if palette is not None else viz.voc_palette(len(self.class_names))
    self.pairs = find_pairs(self.root_dir)
    name = os.path.basename(self.root_dir.rstrip(os.sep)) or "root"
    name = "".join(c if c.isalnum() else "_" for c in name)
    config = tfds.core.BuilderConfig(
        name=f"{name}_{_fingerprint(self.root_dir, self.pairs, self.class_names)}",
        description=f"images and masks of {self.root_dir}")
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return common.segmentation_info(self, "png", self.class_names, self.palette, __doc__)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(files) for split, files in self.pairs.items()}

  def _generate_examples(self, files):
    num_classes = len(self.class_names)
    for image_path, mask_path in files:
      image = images.read_rgb(image_path)
      label = common.read_label_png(mask_path)
      if label.shape != image.shape[:2]:
        raise ValueError(f"{mask_path}: mask size {label.shape} (H, W) differs from the image "
                         f"{image_path} size {image.shape[:2]}")
      common.check_label_values(label, num_classes, mask_path)
      key = os.path.splitext(os.path.basename(image_path))[0]
      yield key, common.example(image, label, key)
