"""The built-in synthetic dataset: textured shapes on textured backgrounds, generated from a seed.

Classes: background, disc, square, triangle, bar (a thin bar, 8-14 px wide). Colours are drawn per
instance independently of the class, from the same distribution as the background's colours, so
only shape tells the classes apart. Shapes are drawn in random order and occlude each other;
every shape keeps a minimum colour contrast to what it covers, so that it is visible. Each image
is generated from `np.random.default_rng([seed, split, index])`: deterministic, order-free, no
download.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from deeplax.data import common

CLASS_NAMES = ("background", "disc", "square", "triangle", "bar")
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200]],
                   np.uint8)
SPLIT_CODES = {"train": 0, "val": 1}
_MIN_CONTRAST = 80.0  # L2 distance in RGB between a shape's colour and what it covers


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
  """A smooth random colour field (bilinear from a coarse grid) overlaid with a texture."""
  grid = rng.uniform(0, 255, (4, 4, 3))
  gy = yy / max(height - 1, 1) * 3
  gx = xx / max(width - 1, 1) * 3
  y0 = np.minimum(gy.astype(int), 2)
  x0 = np.minimum(gx.astype(int), 2)
  fy, fx = (gy - y0)[..., None], (gx - x0)[..., None]
  field = (grid[y0, x0] * (1 - fy) * (1 - fx) + grid[y0 + 1, x0] * fy * (1 - fx)
           + grid[y0, x0 + 1] * (1 - fy) * fx + grid[y0 + 1, x0 + 1] * fy * fx)
  return 0.4 * field + 0.6 * _texture(rng, yy, xx, rng.uniform(0, 255, 3), strength=(0.15, 0.5),
                                          kinds=(1, 2, 2))


def _shape_mask(rng, cls, yy, xx, height, width):
  cy, cx = rng.uniform(0, height), rng.uniform(0, width)
  theta = rng.uniform(0, 2 * np.pi)
  u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
  v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
  name = CLASS_NAMES[cls]
  if name == "disc":
    return u ** 2 + v ** 2 <= rng.uniform(16, 38) ** 2
  if name == "square":
    half = rng.uniform(14, 32)
    return (np.abs(u) <= half) & (np.abs(v) <= half)
  if name == "triangle":  # equilateral, circumradius r: inside the three edge half-planes
    r = rng.uniform(24, 50)
    inside = np.ones_like(u, bool)
    for k in range(3):
      a = 2 * np.pi * k / 3
      inside &= u * np.cos(a) + v * np.sin(a) <= r / 2
    return inside
  if name == "bar":
    return (np.abs(u) <= rng.uniform(30, 70)) & (np.abs(v) <= rng.uniform(4, 7))
  raise ValueError(f"no shape for class {cls}")


def render(rng: np.random.Generator, height: int, width: int):
  """One image and its label: (uint8 [H, W, 3], uint8 [H, W])."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  image = _background(rng, height, width, yy, xx)
  label = np.zeros((height, width), np.uint8)
  for _ in range(rng.integers(2, 6)):
    cls = int(rng.integers(1, len(CLASS_NAMES)))
    mask = _shape_mask(rng, cls, yy, xx, height, width)
    if mask.sum() < 20:
      continue
    covered = image[mask].mean(axis=0)
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):
      if np.linalg.norm(colour - covered) >= _MIN_CONTRAST:
        break
      colour = rng.uniform(0, 255, 3)
    image[mask] = _texture(rng, yy, xx, colour, strength=(0.0, 0.3), kinds=(0, 1))[mask]
    label[mask] = cls
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
  min_size: int = 160
  max_size: int = 224


def shapes_config(seed=0, num_train=400, num_val=100, min_size=160, max_size=224) -> ShapesConfig:
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

  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.1.0": "denser scenes, smaller shapes, milder background textures",
                   "1.2.0": "2-5 larger shapes with flat or gradient fills: learnable on a CPU in "
                            "minutes, still only by shape"}
  BUILDER_CONFIGS = [shapes_config()]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=common.segmentation_features("png"),
        supervised_keys=("image", "label"),
        metadata=common.class_metadata(CLASS_NAMES, PALETTE),
    )

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
