"""Image files to the RGB uint8 arrays every model input starts from (TF-free, PIL only).

`to_rgb_uint8` handles each PIL mode explicitly, since PIL's own `convert("RGB")` clips 16-bit
grayscale to 0/255:
- 8-bit modes (RGB, L, P palette, 1, CMYK, YCbCr, LAB, HSV): PIL's conversion to RGB;
- with alpha (RGBA, LA, PA, RGBa): the colour channels, alpha dropped (as cv2.imread and
  tf.io.decode_image(channels=3) do), not composited onto a background;
- 16-bit grayscale (I;16, I;16L, I;16B, I;16N; and mode I of a PNG, which is how PIL may open a
  16-bit PNG): scaled by 255 / 65535 and rounded, replicated to three channels. 16-bit RGB(A)
  PNGs PIL already opens as 8-bit RGB(A), scaled by its own decoder (high byte);
- anything else (32-bit integer I of other formats, float F): rejected, naming the mode: their
  range is not defined by the file.
"""

import numpy as np
from PIL import Image

class ImageModeError(ValueError):
  """An image whose mode has no defined conversion to RGB uint8 (names the file)."""


_EIGHT_BIT = ("RGB", "L", "P", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")
_WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb_uint8(img: Image.Image, name: str = "image") -> np.ndarray:
  """uint8 RGB [H, W, 3] of a PIL image of any supported mode (see the module docstring)."""
  mode = img.mode
  if mode == "RGB":
    return np.asarray(img, np.uint8)
  if mode in _EIGHT_BIT or mode in _WITH_ALPHA:
    return np.asarray(img.convert("RGB"), np.uint8)
  if mode in _SIXTEEN_BIT or (mode == "I" and img.format == "PNG"):
    values = np.asarray(img).astype(np.int64)
    if values.min() < 0 or values.max() > 65535:
      raise ImageModeError(f"{name}: 16-bit image (PIL mode {mode!r}) has values outside [0, 65535]")
    gray = np.round(values * (255.0 / 65535.0)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  raise ImageModeError(f"{name}: PIL image mode {mode!r} is not supported (its value range is not "
                   "defined by the file); save it as 8- or 16-bit RGB, grayscale or palette PNG/JPEG")


def read_rgb(path) -> np.ndarray:
  """uint8 RGB [H, W, 3] of an image file; a ValueError naming the file when it cannot be read."""
  try:
    with Image.open(path) as img:
      img.load()
      return to_rgb_uint8(img, str(path))
  except ImageModeError:
    raise
  except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, ...)
    raise ValueError(f"cannot read image {str(path)!r}: {type(e).__name__}: {e}") from e
