"""deeplax.images: every PIL mode to RGB uint8, scaled (never clipped) or rejected by name."""

import numpy as np
from PIL import Image
import pytest

from deeplax import images

RNG = np.random.RandomState(0)
RGB = RNG.randint(0, 256, (5, 7, 3)).astype(np.uint8)


def _saved(tmp_path, img, name):
  path = str(tmp_path / name)
  img.save(path)
  return path


def test_rgb_grayscale_palette_and_bilevel(tmp_path):
  np.testing.assert_array_equal(images.read_rgb(_saved(tmp_path, Image.fromarray(RGB), "a.png")), RGB)
  gray = RGB[..., 0]
  out = images.read_rgb(_saved(tmp_path, Image.fromarray(gray), "g.png"))
  np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))
  palette_img = Image.fromarray(RGB).quantize(colors=16)
  assert palette_img.mode == "P"
  expected = np.asarray(palette_img.convert("RGB"))
  out = images.read_rgb(_saved(tmp_path, palette_img, "p.png"))
  np.testing.assert_array_equal(out, expected)
  assert len(np.unique(out.reshape(-1, 3), axis=0)) > 1  # palette colours, not indices
  bilevel = Image.fromarray(gray > 127)
  out = images.read_rgb(_saved(tmp_path, bilevel, "b.png"))
  np.testing.assert_array_equal(out[..., 0], np.where(gray > 127, 255, 0))


def test_alpha_is_dropped_not_composited(tmp_path):
  alpha = RNG.randint(0, 256, (5, 7, 1)).astype(np.uint8)
  out = images.read_rgb(_saved(tmp_path, Image.fromarray(np.concatenate([RGB, alpha], -1)), "a.png"))
  np.testing.assert_array_equal(out, RGB)
  la = Image.fromarray(np.concatenate([RGB[..., :1], alpha], -1), "LA")
  out = images.read_rgb(_saved(tmp_path, la, "la.png"))
  np.testing.assert_array_equal(out, np.repeat(RGB[..., :1], 3, -1))


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
  gray16 = np.array([[0, 257, 1000, 30000, 65535]], np.uint16)
  path = _saved(tmp_path, Image.fromarray(gray16), "g16.png")
  assert Image.open(path).mode in ("I;16", "I")  # what PIL makes of a 16-bit PNG
  assert np.asarray(Image.open(path).convert("RGB"))[0, 2, 0] == 255  # PIL's own convert clips
  out = images.read_rgb(path)
  np.testing.assert_array_equal(out[..., 0], [[0, 1, 4, 117, 255]])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  # The same values as mode I (how older PIL opens 16-bit PNGs) from a PNG.
  as_i = Image.open(path).convert("I")
  as_i.format = "PNG"
  np.testing.assert_array_equal(images.to_rgb_uint8(as_i), out)


def test_undefined_ranges_are_rejected_naming_the_file(tmp_path):
  path = _saved(tmp_path, Image.fromarray(RNG.rand(4, 4).astype(np.float32)), "f.tiff")
  with pytest.raises(images.ImageModeError, match=rf"{path}: PIL image mode 'F' is not supported"):
    images.read_rgb(path)
  path = _saved(tmp_path, Image.fromarray(np.full((4, 4), 70000, np.int32)), "i.tiff")
  with pytest.raises(ValueError, match=r"mode 'I' is not supported"):
    images.read_rgb(path)
  junk = tmp_path / "junk.png"
  junk.write_bytes(b"\x89PNG not really")
  with pytest.raises(ValueError, match=rf"cannot read image '{junk}'"):
    images.read_rgb(str(junk))
