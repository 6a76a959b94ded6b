"""Inference latency/throughput: deeplax DeepLabV3-ResNet-101 vs torchvision's deeplabv3_resnet101.

Both sides run the same architecture (torchvision's DeepLabV3 head: ASPP 12/24/36 as given, extra
3x3 conv, aux head off) on the same machine in one run; the torchvision side runs in the peer venv
(`--torch-python`, default /tmp/peer-torch/bin/python) as a subprocess of this script.

Cases: 513x513 at output_stride 16 and 8, batch 1 and batch 4; a 2048x1024 image by sliding window
(769x769 tiles, overlap 1/3: 8 tiles) at output_stride 16. torchvision's model is built at OS 8 by
`deeplabv3_resnet101`; its OS 16 twin uses `replace_stride_with_dilation=[False, False, True]`.
The torch side tiles with the same positions and averages overlaps like deeplax.inference.

    python bench/bench_inference.py [--iters 2] [--quick]
"""

import argparse
import json
import os
import subprocess
import sys
import time

CASES = [  # name, output_stride, batch, height, width, tile
    ("513x513 OS16 b1", 16, 1, 513, 513, None),
    ("513x513 OS8 b1", 8, 1, 513, 513, None),
    ("513x513 OS16 b4", 16, 4, 513, 513, None),
    ("513x513 OS8 b4", 8, 4, 513, 513, None),
    ("2048x1024 sliding 769 OS16 b1", 16, 1, 1024, 2048, 769),
]
QUICK = {"513x513 OS16 b1", "513x513 OS8 b1", "513x513 OS16 b4", "2048x1024 sliding 769 OS16 b1"}


def tile_starts(length, tile, overlap=1 / 3):
  import math
  if tile >= length:
    return (0,)
  stride = max(1, int(math.ceil(tile * (1 - overlap))))
  count = int(math.ceil((length - tile) / stride)) + 1
  return tuple(sorted({min(i * stride, length - tile) for i in range(count)}))


def bench_torch(cases, iters):
  sys.path.insert(0, "/work/shared/peers")
  import torchvision_shim  # noqa: F401
  import torch
  from torchvision.models import resnet101
  from torchvision.models.segmentation import deeplabv3_resnet101
  from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
  from torchvision.models._utils import IntermediateLayerGetter
  torch.set_grad_enabled(False)
  models = {8: deeplabv3_resnet101(weights=None, weights_backbone=None, aux_loss=False).eval()}
  backbone = IntermediateLayerGetter(
      resnet101(weights=None, replace_stride_with_dilation=[False, False, True]),
      return_layers={"layer4": "out"})
  models[16] = DeepLabV3(backbone, DeepLabHead(2048, 21), None).eval()
  results = {}
  for name, os_, batch, h, w, tile in cases:
    model = models[os_]
    x = torch.randn(batch, 3, h, w)

    def run():
      if tile is None:
        return model(x)["out"]
      out = torch.zeros(batch, 21, h, w)
      count = torch.zeros(1, 1, h, w)
      for y0 in tile_starts(h, tile):
        for x0 in tile_starts(w, tile):
          out[:, :, y0:y0 + tile, x0:x0 + tile] += model(x[:, :, y0:y0 + tile, x0:x0 + tile])["out"]
          count[:, :, y0:y0 + tile, x0:x0 + tile] += 1
      return out / count

    t = time.perf_counter()
    run()
    first = time.perf_counter() - t
    times = []
    for _ in range(iters):
      t = time.perf_counter()
      run()
      times.append(time.perf_counter() - t)
    results[name] = {"first_s": first, "latency_s": min(times), "images_per_s": batch / min(times)}
    print(f"torchvision {name}: {min(times):.2f} s", file=sys.stderr, flush=True)
  return results


def bench_jax(cases, iters):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from deeplax import inference, models
  from deeplax.convert import torchvision as tv
  config = tv.converted_config("deeplabv3_resnet101", aux_head=False)
  model = models.build(config.model)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 65, 65, 3)), train=False))(
      jax.random.PRNGKey(0))
  results = {}
  for name, os_, batch, h, w, tile in cases:
    strategy = inference.strategy_for(config.model, tile_size=tile)
    fn = inference.make_predict_fn(config.model, strategy, output_stride=os_)
    x = jnp.asarray(np.random.RandomState(0).standard_normal((batch, h, w, 3)).astype(np.float32))
    t = time.perf_counter()
    fn(variables, x).block_until_ready()
    first = time.perf_counter() - t
    times = []
    for _ in range(iters):
      t = time.perf_counter()
      fn(variables, x).block_until_ready()
      times.append(time.perf_counter() - t)
    results[name] = {"first_s": first, "latency_s": min(times), "images_per_s": batch / min(times)}
    print(f"deeplax {name}: {min(times):.2f} s (first call incl. compile {first:.1f} s)",
          file=sys.stderr, flush=True)
  return results


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--iters", type=int, default=2, help="timed runs per case (after one warm-up)")
  parser.add_argument("--quick", action="store_true", help="skip the OS8 batch-4 case")
  parser.add_argument("--torch-python", default="/tmp/peer-torch/bin/python")
  parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  cases = [c for c in CASES if not args.quick or c[0] in QUICK]
  if args.torch_only:
    print(json.dumps(bench_torch(cases, args.iters)))
    return
  torch_results = None
  if os.path.exists(args.torch_python):
    cmd = [args.torch_python, os.path.abspath(__file__), "--torch-only", "--iters", str(args.iters)]
    proc = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True, text=True)
    if proc.returncode == 0:
      torch_results = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
      print(f"torchvision side failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
  jax_results = bench_jax(cases, args.iters)
  import jax
  print(f"\nmachine: {os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.devices()[0].platform}")
  print("| case | deeplax latency (s) | deeplax img/s | torchvision latency (s) | torchvision img/s "
        "| speed-up |")
  print("|---|---|---|---|---|---|")
  for name, *_ in cases:
    j = jax_results[name]
    t = (torch_results or {}).get(name)
    tv_cols = (f"{t['latency_s']:.2f} | {t['images_per_s']:.2f} | {t['latency_s'] / j['latency_s']:.2f}x"
               if t else "n/a | n/a | n/a")
    print(f"| {name} | {j['latency_s']:.2f} | {j['images_per_s']:.2f} | {tv_cols} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"deeplax": jax_results, "torchvision": torch_results}, f, indent=2)


if __name__ == "__main__":
  main()
