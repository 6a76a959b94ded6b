"""Dense CRF speed: deeplax (jax.numpy, jitted) vs pydensecrf2 (Krähenbühl's C++), one run.

Seconds per 500x375 image (median; also the ratio of the fastest calls), 21 classes, 10
mean-field iterations, lattice construction included, for both DeepLab presets (v2 ResNet-101
VOC; v1 LargeFOV), on scikit-image photographs with colour-cluster unaries; both sides
interleaved image by image. deeplax is timed three ways: `dense_crf_core` (unchecked), the public
checked `dense_crf`, and the pydensecrf-compatible `deeplax.crf.densecrf` called exactly as the
pydensecrf side is (DenseCRF2D, [C, N] unary, inference). Compile time is reported separately;
every timing ends with block_until_ready. Also reports how many labels agree.

  python bench/bench_crf.py [--repeats 3] [--images astronaut,coffee,chelsea]
"""

import argparse
import os
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from deeplax import crf  # noqa: E402
import deeplax.crf.densecrf as deeplax_dcrf  # noqa: E402
from test_crf_pydensecrf import cluster_unary, reference, voc_photo  # noqa: E402


def compat_api(unary, image, params, num_iters):
  """`reference` with deeplax.crf.densecrf in place of pydensecrf.densecrf (same calls)."""
  h, w, c = unary.shape
  norm = {"symmetric": deeplax_dcrf.NORMALIZE_SYMMETRIC, "after": deeplax_dcrf.NORMALIZE_AFTER,
          "before": deeplax_dcrf.NORMALIZE_BEFORE,
          "none": deeplax_dcrf.NO_NORMALIZATION}[params.normalization]
  d = deeplax_dcrf.DenseCRF2D(w, h, c)
  d.setUnaryEnergy(np.ascontiguousarray(unary.reshape(-1, c).T))
  d.addPairwiseGaussian(sxy=params.sigma_gamma, compat=params.w2, normalization=norm)
  d.addPairwiseBilateral(sxy=params.sigma_alpha, srgb=params.sigma_beta,
                         rgbim=np.ascontiguousarray(image), compat=params.w1, normalization=norm)
  return np.asarray(d.inference(num_iters)).T.reshape(h, w, c)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--images", default="astronaut,coffee,chelsea")
  parser.add_argument("--num-iters", type=int, default=10)
  args = parser.parse_args(argv)
  names = args.images.split(",")
  data = [(voc_photo(n), cluster_unary(voc_photo(n), seed=i)) for i, n in enumerate(names)]
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; {len(names)} images x "
        f"{args.repeats} repeats, 375x500, 21 classes, {args.num_iters} iterations")
  print("| preset | normalisation | spatial kernel | deeplax s/image | pydensecrf2 s/image | "
        "pydensecrf2 / deeplax | same, fastest calls | deeplax compile s | "
        "labels equal (worst image) | public dense_crf s | pydensecrf2 / dense_crf | "
        "densecrf API s | pydensecrf2 / densecrf API |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  configs = [(p, n, "lattice") for p in ("deeplab_v2_resnet101_voc", "deeplab_v1_largefov")
             for n in ("after", "symmetric")]
  separable = [("deeplab_v2_resnet101_voc", "after", "separable")]
  # The lattice presets share one compiled function (weights, sigmas and normalisation are
  # traced), so they are measured round-robin: a burst of load from other jobs spreads over all
  # of them instead of spoiling one row. The separable spatial filter compiles separately.
  for group in (configs, separable):
    params = {c: crf.CRFParams(**{**crf.PRESETS[c[0]]().__dict__, "normalization": c[1],
                                  "spatial_filter": c[2]}) for c in group}
    compile_s = {}
    for c in group:
      start = time.perf_counter()
      jax.block_until_ready(crf.dense_crf_core(data[0][1], data[0][0], params[c], args.num_iters))
      compile_s[c] = time.perf_counter() - start
    lattice_rows = group is configs
    if lattice_rows:  # compile the public paths too
      jax.block_until_ready(crf.dense_crf(data[0][1], data[0][0], params[group[0]],
                                          args.num_iters))
      compat_api(data[0][1], data[0][0], params[group[0]], args.num_iters)
    ours = {c: [] for c in group}
    theirs = {c: [] for c in group}
    public = {c: [] for c in group}
    compat = {c: [] for c in group}
    agree = {c: [] for c in group}
    for _ in range(args.repeats):
      for c in group:
        for image, unary in data:
          start = time.perf_counter()
          q, overflow = jax.block_until_ready(
              crf.dense_crf_core(unary, image, params[c], args.num_iters))
          ours[c].append(time.perf_counter() - start)
          assert not bool(overflow)
          start = time.perf_counter()
          q_ref = reference(unary, image, params[c], args.num_iters)
          theirs[c].append(time.perf_counter() - start)
          agree[c].append(float((np.asarray(q).argmax(-1) == q_ref.argmax(-1)).mean()))
          if lattice_rows:
            start = time.perf_counter()
            jax.block_until_ready(crf.dense_crf(unary, image, params[c], args.num_iters))
            public[c].append(time.perf_counter() - start)
            start = time.perf_counter()
            q_api = compat_api(unary, image, params[c], args.num_iters)
            compat[c].append(time.perf_counter() - start)
            agree[c].append(float((q_api.argmax(-1) == q_ref.argmax(-1)).mean()))
    for i, c in enumerate(group):
      t_ours, t_theirs = float(np.median(ours[c])), float(np.median(theirs[c]))
      best = min(theirs[c]) / min(ours[c])
      compiled = f"{compile_s[c] - t_ours:.1f}" if i == 0 else "(cached)"
      extra = "| - | - | - | - |"
      if public[c]:
        t_public, t_compat = float(np.median(public[c])), float(np.median(compat[c]))
        extra = (f"| {t_public:.3f} | {t_theirs / t_public:.2f}x | {t_compat:.3f} | "
                 f"{t_theirs / t_compat:.2f}x |")
      print(f"| {c[0]} | {c[1]} | {c[2]} | {t_ours:.3f} | {t_theirs:.3f} | "
            f"{t_theirs / t_ours:.2f}x | {best:.2f}x | {compiled} | {100 * min(agree[c]):.3f}% "
            + extra, flush=True)


if __name__ == "__main__":
  main()
