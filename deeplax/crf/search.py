"""Cross-validation of the CRF parameters w1, σα, σβ on held-out images (v2 §4.1, "CRF").

v2 §4.1: w2 = 3 and σγ = 3 fixed; w1 ∈ [3:6], σα ∈ [30:10:100], σβ ∈ [3:6] (MATLAB notation)
searched on 100 val images, then finer steps around the first round's best. Every grid point is
scored by mIoU (deeplax.metrics) over all images.

Directory layout for the command (one stem per image):
  --logits-dir  <stem>_logits.npy   float32 [H, W, C] scores at image resolution
                                    (as `deeplax predict --save-logits` writes)
  --image-dir   <stem>.jpg / .jpeg / .png   RGB image
  --label-dir   <stem>.png          ground-truth label PNG (palette indices; 255 = ignore)

  python -m deeplax.crf.search --logits-dir L --image-dir I --label-dir G --num-images 100
"""

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from deeplax import images
from deeplax import metrics
from deeplax.crf import inference
from deeplax.crf.params import CRFParams

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def matlab_range(spec: str) -> List[float]:
  """'30:10:100' -> [30, 40, ..., 100]; '3:6' -> [3, 4, 5, 6]; '4' -> [4]; '3,5' -> [3, 5]."""
  if "," in spec:
    return [float(v) for v in spec.split(",")]
  parts = [float(v) for v in spec.split(":")]
  if len(parts) == 1:
    return parts
  if len(parts) == 2:
    start, step, stop = parts[0], 1.0, parts[1]
  elif len(parts) == 3:
    start, step, stop = parts
  else:
    raise ValueError(f"bad range {spec!r}; use start:stop or start:step:stop")
  if step <= 0 or stop < start:
    raise ValueError(f"bad range {spec!r}: need step > 0 and stop >= start")
  count = int(np.floor((stop - start) / step + 1e-9)) + 1
  return [round(start + i * step, 6) for i in range(count)]


def _miou(samples, params: CRFParams, num_classes: int, num_iters: int,
          ignore_label: int) -> float:
  confusion = np.zeros((num_classes, num_classes), np.int64)
  for unary, image, label in samples:
    q = inference.dense_crf(unary, image, params, num_iters)
    pred = np.asarray(jnp.argmax(q, -1))
    confusion += np.asarray(metrics.confusion_matrix(label[None], pred[None], num_classes,
                                                     ignore_label=ignore_label))
  return metrics.segmentation_metrics(confusion)["miou"]


def search_crf_params(samples: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                      num_classes: int,
                      w1_values: Iterable[float] = (3, 4, 5, 6),
                      sigma_alpha_values: Iterable[float] = tuple(range(30, 101, 10)),
                      sigma_beta_values: Iterable[float] = (3, 4, 5, 6),
                      base: Optional[CRFParams] = None,
                      num_iters: int = 10, refine: bool = True,
                      fine_steps: Tuple[float, float, float] = (0.5, 5.0, 0.5),
                      ignore_label: int = 255,
                      log: Callable[[str], None] = print) -> dict:
  """Coarse-to-fine grid search of (w1, σα, σβ) by mIoU (v2 §4.1).

  samples: (unary [H, W, C] = -log P, image [H, W, 3] uint8, label [H, W] int) triples.
  base: the other parameters (default: w2 = 3, σγ = 3, normalisation after, as v2 §4.1).
  Returns {"results": [{"w1", "sigma_alpha", "sigma_beta", "miou", "round"}...],
  "best": {...}, "no_crf_miou": float}.
  """
  base = CRFParams(w2=3.0, sigma_gamma=3.0) if base is None else base
  samples = list(samples)
  if not samples:
    raise ValueError("search_crf_params needs at least one (unary, image, label) sample")
  for i, (unary, image, label) in enumerate(samples):
    if label.shape != unary.shape[:2]:
      raise ValueError(f"sample {i}: label {label.shape} does not match unary {unary.shape[:2]}")
    if unary.shape[-1] != num_classes:
      raise ValueError(f"sample {i}: unary has {unary.shape[-1]} classes, expected {num_classes}")
  confusion = np.zeros((num_classes, num_classes), np.int64)
  for unary, _, label in samples:
    confusion += np.asarray(metrics.confusion_matrix(label[None], np.argmin(unary, -1)[None],
                                                     num_classes, ignore_label=ignore_label))
  no_crf = metrics.segmentation_metrics(confusion)["miou"]
  log(f"no CRF: mIoU {100 * no_crf:.2f} on {len(samples)} images")
  results, tried = [], set()

  def run_grid(grid, round_index):
    grid = [g for g in grid if g not in tried]
    start = time.time()
    for i, (w1, sa, sb) in enumerate(grid):
      tried.add((w1, sa, sb))
      params = dataclasses.replace(base, w1=float(w1), sigma_alpha=float(sa),
                                   sigma_beta=float(sb))
      miou = _miou(samples, params, num_classes, num_iters, ignore_label)
      results.append(dict(w1=float(w1), sigma_alpha=float(sa), sigma_beta=float(sb),
                          miou=float(miou), round=round_index))
      elapsed = time.time() - start
      eta = elapsed / (i + 1) * (len(grid) - i - 1)
      best = max(results, key=lambda r: r["miou"])
      log(f"[round {round_index} {i + 1}/{len(grid)}] w1={w1:g} sigma_alpha={sa:g} "
          f"sigma_beta={sb:g}: mIoU {100 * miou:.2f} (best {100 * best['miou']:.2f}; "
          f"ETA {eta:.0f}s)")

  run_grid(list(itertools.product(w1_values, sigma_alpha_values, sigma_beta_values)), 1)
  if refine:
    best = max(results, key=lambda r: r["miou"])
    dw, da, db = fine_steps
    fine = itertools.product(
        [best["w1"] + k * dw for k in (-1, 0, 1) if best["w1"] + k * dw > 0],
        [best["sigma_alpha"] + k * da for k in (-1, 0, 1) if best["sigma_alpha"] + k * da > 0],
        [best["sigma_beta"] + k * db for k in (-1, 0, 1) if best["sigma_beta"] + k * db > 0])
    run_grid([tuple(round(v, 6) for v in g) for g in fine], 2)
  best = max(results, key=lambda r: r["miou"])
  log(f"best: w1={best['w1']:g} sigma_alpha={best['sigma_alpha']:g} "
      f"sigma_beta={best['sigma_beta']:g} mIoU {100 * best['miou']:.2f} "
      f"(no CRF {100 * no_crf:.2f})")
  return dict(results=results, best=best, no_crf_miou=float(no_crf))


def load_samples(logits_dir: str, image_dir: str, label_dir: str,
                 num_images: Optional[int] = None):
  """(unary, image, label) triples from the directory layout in the module docstring."""
  stems = sorted(f[:-len("_logits.npy")] for f in os.listdir(logits_dir)
                 if f.endswith("_logits.npy"))
  if not stems:
    raise FileNotFoundError(f"no <stem>_logits.npy files in {logits_dir}")
  if num_images:
    stems = stems[:num_images]
  samples = []
  for stem in stems:
    logits = np.load(os.path.join(logits_dir, f"{stem}_logits.npy")).astype(np.float32)
    image_path = next((os.path.join(image_dir, stem + ext) for ext in _IMAGE_EXTENSIONS
                       if os.path.exists(os.path.join(image_dir, stem + ext))), None)
    if image_path is None:
      raise FileNotFoundError(f"no image {stem}{{.jpg,.jpeg,.png}} in {image_dir}")
    label_path = os.path.join(label_dir, stem + ".png")
    if not os.path.exists(label_path):
      raise FileNotFoundError(f"no label {label_path}")
    image = images.read_rgb(image_path)
    label = np.asarray(Image.open(label_path))
    if logits.ndim != 3 or logits.shape[:2] != image.shape[:2] or label.shape != image.shape[:2]:
      raise ValueError(f"{stem}: logits {logits.shape}, image {image.shape} and label "
                       f"{label.shape} must share [H, W] (logits at image resolution)")
    unary = np.asarray(-jax.nn.log_softmax(jnp.asarray(logits), -1))
    samples.append((unary, image, label))
  return samples


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--logits-dir", required=True)
  parser.add_argument("--image-dir", required=True)
  parser.add_argument("--label-dir", required=True)
  parser.add_argument("--num-images", type=int, default=100, help="v2 §4.1 used 100 val images")
  parser.add_argument("--w1", default="3:6")
  parser.add_argument("--sigma-alpha", default="30:10:100")
  parser.add_argument("--sigma-beta", default="3:6")
  parser.add_argument("--w2", type=float, default=3.0)
  parser.add_argument("--sigma-gamma", type=float, default=3.0)
  parser.add_argument("--normalization", default="after")
  parser.add_argument("--num-iters", type=int, default=10)
  parser.add_argument("--fine-steps", default="0.5,5,0.5",
                      help="refinement steps for w1, sigma_alpha, sigma_beta")
  parser.add_argument("--no-refine", action="store_true")
  parser.add_argument("--ignore-label", type=int, default=255)
  parser.add_argument("--output", default=None, help="write all results as JSON here")
  args = parser.parse_args(argv)
  samples = load_samples(args.logits_dir, args.image_dir, args.label_dir, args.num_images)
  num_classes = samples[0][0].shape[-1]
  base = CRFParams(w2=args.w2, sigma_gamma=args.sigma_gamma,
                   normalization=args.normalization).validate()
  fine = tuple(float(v) for v in args.fine_steps.split(","))
  if len(fine) != 3:
    raise ValueError(f"--fine-steps needs 3 values; got {args.fine_steps!r}")
  out = search_crf_params(samples, num_classes, matlab_range(args.w1),
                          matlab_range(args.sigma_alpha), matlab_range(args.sigma_beta),
                          base, args.num_iters, not args.no_refine, fine, args.ignore_label,
                          log=lambda s: print(s, flush=True))
  if args.output:
    with open(args.output, "w") as f:
      json.dump(out, f, indent=1)
  return out


if __name__ == "__main__":
  main(sys.argv[1:])
