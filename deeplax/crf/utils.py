"""pydensecrf's `utils` for deeplax.crf.densecrf: unaries and pairwise features as NumPy arrays
with pydensecrf's argument names, dtypes and layouts ([C, N] float32 unaries, [D, N] float32
features, pixels in C order of the image axes).

Stricter than pydensecrf where it silently misreads: labels outside the range (pydensecrf
wraps negative ones and, with zero_unsure, label 0 - 1), probabilities that are not in [0, 1],
and `assert`s (skipped under python -O) are ValueErrors here.
"""

from numbers import Number

import numpy as np


def unary_from_labels(labels, n_labels, gt_prob, zero_unsure=True):
  """-log P float32 [n_labels, N] from a label image: P = gt_prob for the given label, the rest
  shared by the other labels; with zero_unsure, label 0 means "unknown" (uniform P) and labels
  1..n_labels are the classes (as pydensecrf)."""
  if not 0 < gt_prob < 1:
    raise ValueError(f"gt_prob must be in (0, 1); got {gt_prob!r}")
  if int(n_labels) != n_labels or n_labels < 2:
    raise ValueError(f"n_labels must be an integer >= 2; got {n_labels!r}")
  labels = np.asarray(labels).ravel()
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers; got dtype {labels.dtype}")
  labels = labels.astype(np.int64)  # uint8 label maps: label - 1 must not wrap around
  low, high = (0, n_labels) if zero_unsure else (0, n_labels - 1)
  if labels.size and (labels.min() < low or labels.max() > high):
    raise ValueError(f"labels must lie in {low}..{high} (zero_unsure={zero_unsure}); got "
                     f"{labels.min()}..{labels.max()}")
  unary = np.full((int(n_labels), labels.size), -np.log((1.0 - gt_prob) / (n_labels - 1)),
                  np.float32)
  classes = labels - 1 if zero_unsure else labels
  known = classes >= 0
  unary[classes[known], np.flatnonzero(known)] = -np.log(gt_prob)
  unary[:, ~known] = -np.log(1.0 / n_labels)
  return unary


def unary_from_softmax(sm, scale=None, clip=1e-5):
  """-log P float32 [C, N] from probabilities sm [C, ...] (e.g. a DCNN's softmax, classes
  first); `scale` mixes in the uniform distribution (scale sm + (1 - scale) / C), `clip` bounds
  P below (None: no bound)."""
  sm = np.asarray(sm)
  if sm.ndim < 2:
    raise ValueError(f"sm must be [n_labels, ...] probabilities; got shape {sm.shape}")
  if not np.isfinite(sm).all() or sm.min() < 0 or sm.max() > 1 + 1e-6:
    raise ValueError("sm must be probabilities in [0, 1] (softmax over axis 0)")
  n_labels = sm.shape[0]
  if scale is not None:
    if not 0 < scale <= 1:
      raise ValueError(f"scale must be in (0, 1]; got {scale!r}")
    sm = scale * sm + (1 - scale) * (np.ones(sm.shape) / n_labels)  # float64, as pydensecrf
  if clip is not None:
    sm = np.clip(sm, clip, 1.0)
  with np.errstate(divide="ignore"):
    return -np.log(sm).reshape(n_labels, -1).astype(np.float32)


def _positions(sdims, shape):
  if isinstance(sdims, Number):
    raise ValueError("sdims must give one standard deviation per image axis, e.g. (3, 3)")
  if len(sdims) != len(shape) or not all(float(s) > 0 for s in sdims):
    raise ValueError(f"sdims {tuple(sdims)} must be {len(shape)} numbers > 0 for shape "
                     f"{tuple(shape)}")
  grid = np.indices(tuple(int(s) for s in shape), dtype=np.float32)
  return grid / np.asarray(sdims, np.float32).reshape((-1,) + (1,) * len(shape))


def create_pairwise_gaussian(sdims, shape):
  """Position features float32 [len(shape), prod(shape)]: the index along each axis / sdims."""
  return _positions(sdims, shape).reshape(len(shape), -1)


def create_pairwise_bilateral(sdims, schan, img, chdim=-1):
  """Position and intensity features float32 [len(sdims) + channels, N] of an image; chdim is
  the channel axis of img, or -1 if it has none (e.g. grayscale or a volume); schan one number
  for all channels or one per channel."""
  img = np.asarray(img)
  channels = img[np.newaxis] if chdim == -1 else np.moveaxis(img, chdim, 0)
  channels = channels.astype(np.float32)
  scale = (np.full(len(channels), schan, np.float32) if isinstance(schan, Number)
           else np.asarray(schan, np.float32))
  if scale.shape != (len(channels),) or not (scale > 0).all():
    raise ValueError(f"schan must be one number or {len(channels)} numbers > 0; got {schan!r}")
  channels /= scale.reshape((-1,) + (1,) * (channels.ndim - 1))
  features = np.concatenate([_positions(sdims, channels.shape[1:]), channels])
  return features.reshape(len(features), -1)
