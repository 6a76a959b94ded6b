"""Pictures of segmentations: palettes, colourised labels, overlays, indexed PNGs, panels."""

from typing import Optional

import numpy as np
from PIL import Image

IGNORE_COLOR = (224, 224, 192)  # the colour PASCAL VOC gives to the ignore label 255


def voc_palette(num: int = 256) -> np.ndarray:
  """The PASCAL VOC colour map (bits of the class index spread over R, G, B), uint8 [num, 3]."""
  palette = np.zeros((num, 3), np.uint8)
  for index in range(num):
    c, r, g, b = index, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= (c & 1) << shift
      g |= ((c >> 1) & 1) << shift
      b |= ((c >> 2) & 1) << shift
      c >>= 3
    palette[index] = (r, g, b)
  return palette


def _full_palette(palette) -> np.ndarray:
  """A 256-entry palette: the given colours, the VOC map after them, 255 = ignore colour."""
  palette = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
  full = voc_palette(256)
  full[:len(palette)] = palette
  full[255] = IGNORE_COLOR
  return full


def colorize(label_HW, palette) -> np.ndarray:
  """uint8 [H, W, 3] colours of a label map (255 = ignore)."""
  label = np.asarray(label_HW)
  if label.ndim != 2:
    raise ValueError(f"label must be 2-D [H, W]; got shape {label.shape}")
  return _full_palette(palette)[label.astype(np.int64) & 0xFF]


def overlay(image_HW3, label_HW, palette, alpha: float = 0.5) -> np.ndarray:
  """Label colours blended over a uint8 photo; ignore pixels show the photo unchanged."""
  image = np.asarray(image_HW3)
  label = np.asarray(label_HW)
  if image.shape[:2] != label.shape:
    raise ValueError(f"image {image.shape} and label {label.shape} sizes differ")
  colors = colorize(label, palette).astype(np.float32)
  blend = (1 - alpha) * image.astype(np.float32) + alpha * colors
  blend = np.where((label == 255)[..., None], image.astype(np.float32), blend)
  return np.clip(np.round(blend), 0, 255).astype(np.uint8)


def save_indexed_png(path, label_HW, palette) -> None:
  """A palette-mode PNG whose pixel values are the class indices (VOC's SegmentationClass format)."""
  label = np.asarray(label_HW)
  if label.ndim != 2 or label.min(initial=0) < 0 or label.max(initial=0) > 255:
    raise ValueError(f"label must be 2-D with values in [0, 255]; got shape {label.shape}")
  img = Image.fromarray(label.astype(np.uint8), mode="P")
  img.putpalette(_full_palette(palette).reshape(-1).tolist())
  img.save(path)


def save_png(path, array) -> None:
  Image.fromarray(np.asarray(array)).save(path)


def prediction_panel(image_HW3, label_HW: Optional[np.ndarray], pred_HW, palette) -> np.ndarray:
  """[image | ground truth | prediction] side by side, uint8 [H, 3W, 3] (2W without a label)."""
  image = np.asarray(image_HW3, np.uint8)
  tiles = [image]
  if label_HW is not None:
    tiles.append(colorize(label_HW, palette))
  tiles.append(colorize(pred_HW, palette))
  return np.concatenate(tiles, axis=1)
