"""Fabricated source directories in the exact on-disk layouts of the real datasets.

For tests, benchmarks and notebooks: small PASCAL VOC + SBD, Cityscapes, PASCAL-Context,
PASCAL-Person-Part, ADE20K and folder datasets with random-rectangle masks, written in the
original formats (JPEG, palette or grayscale PNG, SBD and PASCAL-Context .mat).
"""

import os

import numpy as np
from PIL import Image
import scipy.io

from deeplax import viz


def random_mask(rng, height, width, num_classes, num_objects=3, border=False, values=None,
                dtype=np.uint8) -> np.ndarray:
  """[H, W] of 0 with rectangles of random classes in [1, num_classes) (or drawn from `values`);
  `border`: a 2-px ignore (255) outline around every rectangle, as in VOC's PNGs."""
  label = np.zeros((height, width), dtype)
  for _ in range(num_objects):
    y0, x0 = rng.integers(0, height - 4), rng.integers(0, width - 4)
    y1, x1 = rng.integers(y0 + 4, height + 1), rng.integers(x0 + 4, width + 1)
    if border:
      label[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] = 255
    label[y0:y1, x0:x1] = rng.integers(1, num_classes) if values is None else rng.choice(values)
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


def fabricate_ade20k(root, counts=None, size=(40, 56), seed=0, grayscale=()) -> dict:
  """ADEChallengeData2016/{images,annotations}/{training,validation}/ + objectInfo150.txt, as
  released: grayscale annotation PNGs with values 0 (other) .. 150; returns stem -> release
  values. Stems in `grayscale` get a grayscale JPEG (as a few real training images are)."""
  from deeplax.data import ade20k  # pylint: disable=g-import-not-at-top
  counts = counts or {"training": 3, "validation": 2}
  rng = np.random.default_rng(seed)
  base = os.path.join(root, ade20k.SUBDIR)
  palette = viz.voc_palette(256)
  masks = {}
  for split_dir, num in counts.items():
    prefix = "train" if split_dir == "training" else "val"
    for sub in ("images", "annotations"):
      os.makedirs(os.path.join(base, sub, split_dir), exist_ok=True)
    for i in range(num):
      stem = f"ADE_{prefix}_{i + 1:08d}"
      h, w = size if rng.random() < 0.5 else size[::-1]
      label = random_mask(rng, h, w, ade20k.NUM_CLASSES + 1, num_objects=4)
      label[0, 0] = ade20k.NUM_CLASSES  # every class id range end occurs
      masks[stem] = label
      image = Image.fromarray(image_for(rng, label, palette))
      if stem in grayscale:
        image = image.convert("L")
      image.save(os.path.join(base, "images", split_dir, stem + ".jpg"), quality=95)
      Image.fromarray(label, mode="L").save(os.path.join(base, "annotations", split_dir,
                                                         stem + ".png"))
  with open(os.path.join(base, "objectInfo150.txt"), "w") as f:
    f.write("Idx\tRatio\tTrain\tVal\tName\n")
    for i, name in enumerate(ade20k.CLASS_NAMES, 1):
      idx = f"{i} " if i in (22, 24) else str(i)  # the release's trailing spaces
      f.write(f"{idx}\t{0.1 / i:.4f}\t{1000 // i}\t{100 // i}\t{name}, {name}s \n")
  return masks


def _voc2010_images(root, ids, masks, rng, palette, colour_of=lambda m: m):
  images_dir = os.path.join(root, "VOCdevkit", "VOC2010", "JPEGImages")
  os.makedirs(images_dir, exist_ok=True)
  for image_id in ids:
    Image.fromarray(image_for(rng, colour_of(masks[image_id]), palette)).save(
        os.path.join(images_dir, f"{image_id}.jpg"), quality=95)


# Full labels the fabricated PASCAL-Context maps use beyond the 59: 0 unlabeled, 1 accordion,
# 3 air conditioner, 459 wool (all background).
CONTEXT_OTHER_FULL_IDS = (0, 1, 3, 459)


def fabricate_pascal_context(root, train_ids, val_ids, size=(40, 56), seed=0,
                             release=True) -> dict:
  """VOCdevkit/VOC2010/{JPEGImages,ImageSets/Main} and PASCAL-Context labels; returns id -> the
  label as written (full labels 0..459 with `release`, else the 60-class PNG values).

  release=True: the release's trainval/<id>.mat (uint16 LabelMap) and labels.txt ("<id>:
  <name>": the 59 classes and 0, 1, 3, 459 at their real ids, "label_<id>" for the others) in
  `root`; the first train id is listed twice (a repeated id is read once). release=False:
  a converter's VOC2010/SegmentationClassContext/<id>.png (palette, 0..59) and
  ImageSets/SegmentationContext lists.
  """
  from deeplax.data import pascal_context  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  voc = os.path.join(root, "VOCdevkit", "VOC2010")
  palette = viz.voc_palette(256)
  masks = {}
  full_ids = np.array(pascal_context.FULL_LABEL_IDS + CONTEXT_OTHER_FULL_IDS)
  for image_id in list(train_ids) + list(val_ids):
    h, w = size if rng.random() < 0.5 else size[::-1]
    if release:
      masks[image_id] = random_mask(rng, h, w, 0, num_objects=6, values=full_ids,
                                    dtype=np.uint16)
      masks[image_id].reshape(-1)[:len(full_ids)] = full_ids  # every mapped value occurs
    else:
      masks[image_id] = random_mask(rng, h, w, 60, num_objects=6)
  colour_of = pascal_context.FULL_TO_CLASS.__getitem__ if release else (lambda m: m)
  _voc2010_images(root, masks, masks, rng, palette, colour_of)
  _write_ids(os.path.join(voc, "ImageSets", "Main", "train.txt"),
             [train_ids[0]] + list(train_ids))
  _write_ids(os.path.join(voc, "ImageSets", "Main", "val.txt"), val_ids)
  if release:
    os.makedirs(os.path.join(root, "trainval"), exist_ok=True)
    for image_id, label in masks.items():
      scipy.io.savemat(os.path.join(root, "trainval", f"{image_id}.mat"), {"LabelMap": label})
    names = dict(zip(pascal_context.FULL_LABEL_IDS, pascal_context.CLASS_NAMES[1:]))
    names.update({1: "accordion", 3: "air conditioner", 459: "wool"})
    with open(os.path.join(root, "labels.txt"), "w") as f:
      f.write("".join(f"{i}: {names.get(i, f'label_{i}')}\n" for i in range(1, 460)))
  else:
    png_dir = os.path.join(voc, "SegmentationClassContext")
    os.makedirs(png_dir, exist_ok=True)
    for image_id, label in masks.items():
      viz.save_indexed_png(os.path.join(png_dir, f"{image_id}.png"), label, palette)
    _write_ids(os.path.join(voc, "ImageSets", "SegmentationContext", "train.txt"), train_ids)
    _write_ids(os.path.join(voc, "ImageSets", "SegmentationContext", "val.txt"), val_ids)
  return masks


def fabricate_person_part(root, train_ids, val_ids, size=(40, 56), seed=0,
                          id_lists=True) -> dict:
  """pascal_person_part/{pascal_person_part_gt,pascal_person_part_trainval_list} + VOC 2010
  JPEGImages; returns id -> part label (palette PNG, 0..6). id_lists: {train,val}_id.txt; else
  {train,val}.txt of "/JPEGImages/<id>.jpg /SegmentationPart/<id>.png" lines."""
  rng = np.random.default_rng(seed)
  base = os.path.join(root, "pascal_person_part")
  gt = os.path.join(base, "pascal_person_part_gt")
  lists = os.path.join(base, "pascal_person_part_trainval_list")
  os.makedirs(gt, exist_ok=True)
  palette = viz.voc_palette(256)
  masks = {}
  for image_id in list(train_ids) + list(val_ids):
    h, w = size if rng.random() < 0.5 else size[::-1]
    masks[image_id] = random_mask(rng, h, w, 7, num_objects=5)
    viz.save_indexed_png(os.path.join(gt, f"{image_id}.png"), masks[image_id], palette)
  _voc2010_images(root, masks, masks, rng, palette)
  for split, ids in (("train", train_ids), ("val", val_ids)):
    if id_lists:
      _write_ids(os.path.join(lists, f"{split}_id.txt"), ids)
    else:
      _write_ids(os.path.join(lists, f"{split}.txt"),
                 [f"/JPEGImages/{i}.jpg /SegmentationPart/{i}.png" for i in ids])
  return masks
