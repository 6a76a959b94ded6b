"""Atrous convolution analysis: valid filter weights, field of view, feature sizes (v2 §3.1, v3 §3).

Pure NumPy: these functions describe the models, they do not run them.
"""

import math
from typing import Dict, Sequence

import numpy as np

from deeplax import layers


def effective_kernel_size(kernel_size: int, rate: int) -> int:
  """Span k + (k-1)(r-1) of a k x k filter at atrous rate r (v2 §3.1): its field of view."""
  if kernel_size < 1 or rate < 1:
    raise ValueError(f"kernel_size and rate must be >= 1; got {kernel_size}, {rate}")
  return layers.effective_kernel_size(kernel_size, rate)


def field_of_view(rates: Sequence[int], kernel_size: int = 3, output_stride: int = 1) -> np.ndarray:
  """Field of view per rate, in pixels of the layer's input times `output_stride` (input pixels).

  E.g. v2's LargeFOV fc6 (3x3, rate 12, on OS-8 features): 25 feature pixels = 200 image pixels.
  """
  return np.array([effective_kernel_size(kernel_size, r) * output_stride for r in rates])


def upsample_kernel(kernel_HWIO: np.ndarray, rate: int) -> np.ndarray:
  """The ordinary-conv kernel equal to `kernel` at atrous `rate`: r-1 zeros between taps (v3 eq. 1)."""
  kernel_HWIO = np.asarray(kernel_HWIO)
  h, w = kernel_HWIO.shape[:2]
  out = np.zeros((effective_kernel_size(h, rate), effective_kernel_size(w, rate))
                 + kernel_HWIO.shape[2:], kernel_HWIO.dtype)
  out[::rate, ::rate] = kernel_HWIO
  return out


def valid_weight_counts(rate: int, size: int = 65, kernel_size: int = 3) -> np.ndarray:
  """[size, size] number of filter taps that land inside the map, per output position.

  A k x k filter at `rate` with 'same' output size, zero padding outside the map (v3 §3.3, Fig. 4).
  """
  offsets = (np.arange(kernel_size) - (kernel_size - 1) // 2) * rate
  pos = np.arange(size)[:, None] + offsets[None, :]
  valid_1d = ((pos >= 0) & (pos < size)).sum(axis=1)
  return valid_1d[:, None] * valid_1d[None, :]


def valid_weight_fractions(rates: Sequence[int], size: int = 65,
                           kernel_size: int = 3) -> Dict[str, np.ndarray]:
  """v3 Fig. 4: per rate, the fraction of output positions where all k^2, only 1, or another
  number (e.g. 4 or 6 for a 3x3 filter) of the filter weights are valid.

  Returns {'rates', 'all' (k^2 valid), 'only_center' (1 valid), 'other'}, each [len(rates)]; the three
  fractions sum to 1. At small rates 'all' is ~1; once the rate reaches the map size only the centre
  weight is ever valid ('only_center' = 1).
  """
  full = kernel_size * kernel_size
  rows = []
  for r in rates:
    counts = valid_weight_counts(r, size, kernel_size)
    rows.append(((counts == full).mean(), (counts == 1).mean()))
  rows = np.array(rows, np.float64).reshape(-1, 2)
  return {"rates": np.asarray(rates), "all": rows[:, 0], "only_center": rows[:, 1],
          "other": 1.0 - rows[:, 0] - rows[:, 1]}


def valid_weight_histogram(rate: int, size: int = 65, kernel_size: int = 3) -> Dict[int, float]:
  """{number of valid weights: fraction of output positions} for one rate."""
  counts = valid_weight_counts(rate, size, kernel_size)
  values, freq = np.unique(counts, return_counts=True)
  return {int(v): float(f) / counts.size for v, f in zip(values, freq)}


def feature_size(input_size: int, output_stride: int) -> int:
  """Backbone output size for an input of `input_size` pixels: ceil(input_size / output_stride).

  Convention (deeplax.layers): every stride-s layer pads symmetrically (k_eff - 1) // 2 before and
  the rest after, so it maps H to ceil(H / s), and ceil(ceil(H / a) / b) = ceil(H / (a b)). Odd sizes
  of the form k * output_stride + 1 (e.g. 513 -> 33 at 16) put a feature pixel on both image corners,
  which is what align_corners=True upsampling assumes (TF DeepLab crops of 513).
  """
  if input_size < 1 or output_stride < 1:
    raise ValueError(f"input_size and output_stride must be >= 1; got {input_size}, {output_stride}")
  return math.ceil(input_size / output_stride)
