"""Training augmentation and evaluation padding (tf.data ops), and input normalisation.

Training (v2 §4.1 "randomly scaling the input images (from 0.5 to 1.5)", v3 §4.1 "randomly scaling
(from 0.5 to 2.0) and randomly left-right flipping", crop 513): scale, pad to the crop size (image
with the mean pixel, label with 255), random crop, random flip. Image and label share every random
draw (one function transforms both from a single seed). The randomness is stateless, from a
per-element seed, so the order of parallel map calls does not matter.
"""

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

IGNORE_LABEL = 255

# Per-channel mean and std of RGB pixels in [0, 255].
_NORMALIZATIONS = {
    # torchvision's ImageNet statistics.
    "imagenet": (np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255),
    # TF-slim / Xception: x / 127.5 - 1, i.e. [-1, 1].
    "inception": (np.full(3, 127.5), np.full(3, 127.5)),
    # TF-slim's ImageNet ResNet v1 / VGG: the ImageNet mean pixel subtracted, no scaling.
    "vgg": (np.array([123.68, 116.78, 103.94]), np.ones(3)),
}


def normalization_stats(normalization: str):
  """(mean, std) float32 [3] on RGB in [0, 255]."""
  if normalization not in _NORMALIZATIONS:
    raise ValueError(f"data.normalization must be one of {sorted(_NORMALIZATIONS)}; "
                     f"got {normalization!r}")
  mean, std = _NORMALIZATIONS[normalization]
  return mean.astype(np.float32), std.astype(np.float32)


def mean_pixel(normalization: str) -> np.ndarray:
  """The pixel that normalises to 0: the value images are padded with."""
  return normalization_stats(normalization)[0]


def _as_float(images):
  if isinstance(images, (tf.Tensor, tf.Variable)):
    return tf.cast(images, tf.float32)
  if hasattr(images, "astype"):  # numpy and jax arrays
    return images.astype(np.float32)
  return np.asarray(images, np.float32)


def normalize(images_uint8, normalization: str):
  """RGB in [0, 255] (any leading dims, channels last) -> float32 normalised input."""
  mean, std = normalization_stats(normalization)
  return (_as_float(images_uint8) - mean) / std


def denormalize(images, normalization: str, as_uint8: bool = True):
  """Inverse of `normalize`; rounded and clipped to uint8 unless `as_uint8=False`."""
  mean, std = normalization_stats(normalization)
  images = _as_float(images) * std + mean
  if not as_uint8:
    return images
  if isinstance(images, tf.Tensor):
    return tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
  return np.clip(np.round(np.asarray(images)), 0, 255).astype(np.uint8)


def resize_to_range_size(height, width, min_size: int, max_size=None, factor=None):
  """(new height, new width), int32, of the official TF DeepLab `resize_to_range`
  (core/preprocess_utils.py; flags min_resize_value, max_resize_value, resize_factor):

  the shorter side becomes `min_size` (sides rounded up) unless the longer would exceed
  `max_size`, in which case the longer side becomes `max_size`. With `factor`, `max_size` is
  first lowered to max_size + (factor - (max_size - 1) % factor) % factor - factor (497 for 513
  and 16), and both sides are then rounded up to factor * k + 1. E.g. 375x500 with (513, 513,
  16) -> 385x497.
  """
  height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  min_size = float(min_size)
  large = tf.cast(tf.math.ceil(tf.stack([height, width]) * (min_size / tf.minimum(height, width))),
                  tf.int32)
  new_size = large
  if max_size is not None:
    max_size = float(max_size)
    if factor is not None:
      max_size = max_size + (factor - (max_size - 1) % factor) % factor - factor
    small = tf.cast(tf.math.ceil(tf.stack([height, width]) * (max_size / tf.maximum(height, width))),
                    tf.int32)
    new_size = tf.where(tf.cast(tf.reduce_max(large), tf.float32) > max_size, small, large)
  if factor is not None:
    new_size += (factor - (new_size - 1) % factor) % factor
  return new_size


def resize_to_range(image_HW3, label_HW, min_size: int, max_size=None, factor=None):
  """Image (bilinear) and label (nearest neighbour) resized to `resize_to_range_size`, both with
  align_corners as the official pipeline (TF1 `resize_bilinear` / `resize_nearest_neighbor`,
  align_corners=True), before augmentation or evaluation."""
  shape = tf.shape(label_HW)
  size = resize_to_range_size(shape[0], shape[1], min_size, max_size, factor)
  box = tf.constant([[0.0, 0.0, 1.0, 1.0]])  # corner pixels map to corner pixels
  image = tf.image.crop_and_resize(tf.cast(image_HW3, tf.float32)[None], box, [0], size)[0]
  label = tf.image.crop_and_resize(tf.cast(label_HW, tf.float32)[None, ..., None], box, [0],
                                   size, method="nearest")[0, ..., 0]
  return image, tf.cast(label, tf.int32)


def random_scale_crop_flip(image_HW3, label_HW, seed, *, crop_size: int, min_scale: float,
                           max_scale: float, random_flip: bool, pad_pixel: Sequence[float],
                           ignore_label: int = IGNORE_LABEL):
  """One random draw applied to image and label: (float32 [c, c, 3] in [0, 255], int32 [c, c]).

  `seed`: int [2], the element's stateless seed. Equivalent to: resize the image by a random
  factor (bilinear, corner-aligned as in TF DeepLab; label: nearest neighbour), pad bottom/right
  to at least `crop_size` (image with `pad_pixel`, label with `ignore_label`), take a random
  `crop_size` window, flip it with probability 1/2. Only the window is resampled
  (`tf.image.crop_and_resize`), so the cost does not grow with the scale.
  """
  seeds = tf.random.experimental.stateless_split(seed, 4)
  size = tf.shape(label_HW)[:2]
  scale = tf.random.stateless_uniform([], seeds[0], min_scale, max_scale)
  new_size = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)
  padded = tf.maximum(new_size, crop_size)
  top = tf.random.stateless_uniform([], seeds[1], 0, padded[0] - crop_size + 1, tf.int32)
  left = tf.random.stateless_uniform([], seeds[2], 0, padded[1] - crop_size + 1, tf.int32)
  start = tf.stack([top, left])
  # The window's part inside the scaled image, as a box on the original's pixel grid.
  valid = tf.minimum(crop_size, new_size - start)
  step = tf.cast(size - 1, tf.float32) / tf.cast(tf.maximum(new_size - 1, 1), tf.float32)
  first = tf.cast(start, tf.float32) * step
  last = tf.cast(start + valid - 1, tf.float32) * step
  box = tf.concat([first, last], 0) / tf.cast(tf.tile(tf.maximum(size - 1, 1), [2]), tf.float32)
  box = tf.gather(box, [0, 1, 2, 3])[None]
  image = tf.image.crop_and_resize(tf.cast(image_HW3, tf.float32)[None], box, [0], valid)[0]
  label = tf.image.crop_and_resize(tf.cast(label_HW, tf.float32)[None, ..., None], box, [0],
                                   valid, method="nearest")[0, ..., 0]
  pad_pixel = tf.constant(pad_pixel, tf.float32)
  paddings = [[0, crop_size - valid[0]], [0, crop_size - valid[1]]]
  image = tf.pad(image - pad_pixel, paddings + [[0, 0]]) + pad_pixel
  label = tf.pad(tf.cast(tf.round(label), tf.int32), paddings, constant_values=ignore_label)
  if random_flip:
    flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
  return (tf.ensure_shape(image, [crop_size, crop_size, 3]),
          tf.ensure_shape(label, [crop_size, crop_size]))


def pad_for_eval(image_HW3, label_HW, pad_size: Optional[Sequence[int]],
                 pad_pixel: Sequence[float], example_id, ignore_label: int = IGNORE_LABEL):
  """The full image padded at bottom/right to `pad_size` (no resizing).

  Returns (image float32 [Hp, Wp, 3] in [0, 255], label int32 [Hp, Wp] (255 on padding),
  mask bool [Hp, Wp]); with `pad_size` None the native size is kept.
  """
  image = tf.cast(image_HW3, tf.float32)
  label = tf.cast(label_HW, tf.int32)
  height, width = tf.shape(label)[0], tf.shape(label)[1]
  mask = tf.ones([height, width], tf.bool)
  if pad_size is None:
    return image, label, mask
  ph, pw = pad_size
  fits = tf.debugging.Assert(
      tf.logical_and(height <= ph, width <= pw),
      ["eval image", example_id, "of size", height, width,
       f"is larger than data.eval_pad_size [{ph}, {pw}]"])
  # Every pad reads the checked sizes, so none can run (and fail unclearly) before the check.
  with tf.control_dependencies([fits]):
    height, width = tf.identity(height), tf.identity(width)
  pad_pixel = tf.constant(pad_pixel, tf.float32)
  paddings = [[0, ph - height], [0, pw - width]]
  image = tf.pad(image - pad_pixel, paddings + [[0, 0]]) + pad_pixel
  label = tf.pad(label, paddings, constant_values=ignore_label)
  mask = tf.pad(mask, paddings, constant_values=False)
  return (tf.ensure_shape(image, [ph, pw, 3]), tf.ensure_shape(label, [ph, pw]),
          tf.ensure_shape(mask, [ph, pw]))
