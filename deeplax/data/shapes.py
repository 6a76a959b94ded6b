"""The built-in synthetic dataset: whole shapes on smooth random-colour backgrounds, from a seed.

Classes: background, disc, square, triangle, bar. Each image holds 1-4 whole, non-overlapping
shapes of random size and orientation. Like real categories (sky, grass), each shape class has
a colour family, a hue band with random saturation and brightness, while the background spans
every hue: colour hints at the class, but only edges and shape separate a shape from background
of its own colour (every shape keeps a minimum contrast to what it covers). Each image is
generated from `np.random.default_rng([seed, split, index])`: deterministic, order-free, no
download.
"""

import colorsys
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from deeplax.data import common

CLASS_NAMES = ("background", "disc", "square", "triangle", "bar")
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200]],
                   np.uint8)
# Centre of each shape class's hue band (HSV hue in [0, 1)): red, green, yellow, blue.
CLASS_HUES = {1: 0.0, 2: 1 / 3, 3: 1 / 6, 4: 0.6}
HUE_JITTER = 0.04
SPLIT_CODES = {"train": 0, "val": 1}
_MIN_CONTRAST = 80.0  # L2 distance in RGB between a shape's colour and what it covers
# Size ranges in pixels: disc radius, square half-side, triangle circumradius, bar half-length
# and half-width.
_SIZES = dict(disc=(12, 26), square=(11, 22), triangle=(16, 32), bar_length=(22, 45),
              bar_width=(4, 7))


def _texture(rng, yy, xx, colour, strength=(0.15, 0.45), kinds=(0, 1, 2)):
  """Flat, gradient or grating blend of `colour` with a second random colour: [H, W, 3]."""
  other = rng.uniform(0, 255, 3)
  kind = rng.choice(kinds)
  theta = rng.uniform(0, np.pi)
  along = yy * np.cos(theta) + xx * np.sin(theta)
  if kind == 0:
    t = np.zeros_like(along)
  elif kind == 1:
    t = (along - along.min()) / max(np.ptp(along), 1.0)
  else:
    t = 0.5 + 0.5 * np.sin(2 * np.pi * along / rng.uniform(6, 20) + rng.uniform(0, 2 * np.pi))
  t = rng.uniform(*strength) * t
  return colour * (1 - t[..., None]) + other * t[..., None]


def _background(rng, height, width, yy, xx):
  """A smooth random colour field (bilinear from a 3x3 grid) blended with a mild texture."""
  grid = rng.uniform(0, 255, (3, 3, 3))
  gy = yy / max(height - 1, 1) * 2
  gx = xx / max(width - 1, 1) * 2
  y0 = np.minimum(gy.astype(int), 1)
  x0 = np.minimum(gx.astype(int), 1)
  fy, fx = (gy - y0)[..., None], (gx - x0)[..., None]
  field = (grid[y0, x0] * (1 - fy) * (1 - fx) + grid[y0 + 1, x0] * fy * (1 - fx)
           + grid[y0, x0 + 1] * (1 - fy) * fx + grid[y0 + 1, x0 + 1] * fy * fx)
  return 0.6 * field + 0.4 * _texture(rng, yy, xx, rng.uniform(0, 255, 3), strength=(0.1, 0.4))


def class_colour(rng, cls):
  """A random RGB colour (float [3], 0-255) from the hue band of shape class `cls`."""
  hue = (CLASS_HUES[cls] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
  return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))) * 255


def _shape_mask(rng, cls, yy, xx, height, width):
  """A whole shape of class `cls` at a random place and orientation: bool [H, W]."""
  name = CLASS_NAMES[cls]
  theta = rng.uniform(0, 2 * np.pi)
  if name == "disc":
    size = rng.uniform(*_SIZES["disc"])
    reach = size
  elif name == "square":
    size = rng.uniform(*_SIZES["square"])
    reach = size * np.sqrt(2)
  elif name == "triangle":
    size = rng.uniform(*_SIZES["triangle"])
    reach = size
  elif name == "bar":
    size = (rng.uniform(*_SIZES["bar_length"]), rng.uniform(*_SIZES["bar_width"]))
    reach = size[0]
  else:
    raise ValueError(f"no shape for class {cls}")
  reach = min(reach, min(height, width) / 2 - 1)  # tiny images: the shape may be cut
  cy, cx = rng.uniform(reach, height - reach), rng.uniform(reach, width - reach)
  u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
  v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
  if name == "disc":
    return u ** 2 + v ** 2 <= size ** 2
  if name == "square":
    return (np.abs(u) <= size) & (np.abs(v) <= size)
  if name == "triangle":  # equilateral, circumradius `size`: inside the three edge half-planes
    inside = np.ones_like(u, bool)
    for k in range(3):
      a = 2 * np.pi * k / 3
      inside &= u * np.cos(a) + v * np.sin(a) <= size / 2
    return inside
  return (np.abs(u) <= size[0]) & (np.abs(v) <= size[1])


def _grow(mask, k=3):
  """Binary dilation by a (2k+1)^2 square (separable)."""
  out = mask.copy()
  for axis in (0, 1):
    grown = out.copy()
    for shift in range(1, k + 1):
      grown[tuple(slice(shift, None) if a == axis else slice(None) for a in range(2))] |= \
          out[tuple(slice(None, -shift) if a == axis else slice(None) for a in range(2))]
      grown[tuple(slice(None, -shift) if a == axis else slice(None) for a in range(2))] |= \
          out[tuple(slice(shift, None) if a == axis else slice(None) for a in range(2))]
    out = grown
  return out


def render(rng: np.random.Generator, height: int, width: int):
  """One image and its label: (uint8 [H, W, 3], uint8 [H, W])."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  image = _background(rng, height, width, yy, xx)
  label = np.zeros((height, width), np.uint8)
  occupied = np.zeros((height, width), bool)  # the shapes so far, grown by 3 px
  wanted, placed = int(rng.integers(1, 5)), 0
  for _ in range(40):  # placement attempts
    if placed == wanted:
      break
    cls = int(rng.integers(1, len(CLASS_NAMES)))
    mask = _shape_mask(rng, cls, yy, xx, height, width)
    if mask.sum() < 20 or (mask & occupied).any():
      continue
    covered = image[mask].mean(axis=0)
    colour = class_colour(rng, cls)
    for _ in range(20):
      if np.linalg.norm(colour - covered) >= _MIN_CONTRAST:
        break
      colour = class_colour(rng, cls)
    image[mask] = _texture(rng, yy, xx, colour, strength=(0.0, 0.3), kinds=(0, 1))[mask]
    label[mask] = cls
    occupied |= _grow(mask)
    placed += 1
  image += rng.normal(0, 6, image.shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def generate(seed: int, split: str, index: int, min_size: int, max_size: int):
  """Example `index` of `split`, independent of every other example."""
  rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
  height, width = (int(s) for s in rng.integers(min_size, max_size + 1, 2))
  return render(rng, height, width)


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  seed: int = 0
  num_train: int = 400
  num_val: int = 100
  min_size: int = 112
  max_size: int = 144


def shapes_config(seed=0, num_train=400, num_val=100, min_size=112, max_size=144) -> ShapesConfig:
  """A builder config named after its parameters (each gets its own directory in data_dir)."""
  if not 0 < min_size <= max_size:
    raise ValueError(f"shapes: need 0 < min_size <= max_size; got {min_size}, {max_size}")
  if num_train < 1 or num_val < 1:
    raise ValueError(f"shapes: need num_train, num_val >= 1; got {num_train}, {num_val}")
  name = f"seed{seed}_train{num_train}_val{num_val}_size{min_size}-{max_size}"
  return ShapesConfig(name=name, seed=seed, num_train=num_train, num_val=num_val,
                      min_size=min_size, max_size=max_size,
                      description=f"{num_train} train / {num_val} val images, seed {seed}")


class DeeplaxShapes(tfds.core.GeneratorBasedBuilder):
  """Synthetic shapes segmentation: 4 shape classes + background, no download."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.1.0": "denser scenes, smaller shapes, milder background textures",
                   "1.2.0": "2-5 larger shapes with flat or gradient fills: learnable on a CPU in "
                            "minutes, still only by shape",
                   "2.0.0": "1-4 whole, non-overlapping shapes with a colour family per class on "
                            "smooth backgrounds of every hue"}
  BUILDER_CONFIGS = [shapes_config()]

  def _info(self) -> tfds.core.DatasetInfo:
    return common.segmentation_info(self, "png", CLASS_NAMES, PALETTE, __doc__)

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train),
            "val": self._generate_examples("val", c.num_val)}

  def _generate_examples(self, split, num):
    c = self.builder_config
    for index in range(num):
      image, label = generate(c.seed, split, index, c.min_size, c.max_size)
      key = f"{split}_{index:05d}"
      yield key, common.example(image, label, key)
