"""Dense CRF speed: deeplax (jax.numpy, jitted) vs pydensecrf2 (Krähenbühl's C++), one run.

Seconds per 500x375 image, 21 classes, 10 mean-field iterations, lattice construction
included, for both DeepLab presets (v2 ResNet-101 VOC; v1 LargeFOV), on scikit-image photographs
with colour-cluster unaries. Compile time is reported separately; every timing ends with
block_until_ready. Also reports how many labels agree.

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
from test_crf_pydensecrf import cluster_unary, reference, voc_photo  # noqa: E402


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
        "pydensecrf2 / deeplax | deeplax compile s | labels equal (worst image) |")
  print("|---|---|---|---|---|---|---|---|")
  configs = [(p, n, "lattice") for p in ("deeplab_v2_resnet101_voc", "deeplab_v1_largefov")
             for n in ("after", "symmetric")]
  configs.append(("deeplab_v2_resnet101_voc", "after", "separable"))
  compiled = set()
  for preset, normalization, spatial in configs:
      params = crf.CRFParams(**{**crf.PRESETS[preset]().__dict__,
                                "normalization": normalization, "spatial_filter": spatial})
      start = time.perf_counter()
      jax.block_until_ready(crf.dense_crf_core(data[0][1], data[0][0], params, args.num_iters))
      first_call = time.perf_counter() - start
      # Weights, sigmas and normalisation are traced: only the spatial filter recompiles.
      fresh = spatial not in compiled
      compiled.add(spatial)
      ours, theirs, agree = [], [], []
      for _ in range(args.repeats):
        for image, unary in data:
          start = time.perf_counter()
          q, overflow = jax.block_until_ready(
              crf.dense_crf_core(unary, image, params, args.num_iters))
          ours.append(time.perf_counter() - start)
          assert not bool(overflow)
          start = time.perf_counter()
          q_ref = reference(unary, image, params, args.num_iters)
          theirs.append(time.perf_counter() - start)
          agree.append(float((np.asarray(q).argmax(-1) == q_ref.argmax(-1)).mean()))
      t_ours, t_theirs = float(np.median(ours)), float(np.median(theirs))
      compile_s = f"{first_call - t_ours:.1f}" if fresh else "(cached)"
      print(f"| {preset} | {normalization} | {spatial} | {t_ours:.3f} | {t_theirs:.3f} | "
            f"{t_theirs / t_ours:.2f}x | {compile_s} | {100 * min(agree):.3f}% |", flush=True)


if __name__ == "__main__":
  main()
