"""Training throughput and peak memory: deeplax vs torchvision DeepLabV3, same machine and settings.

    python bench/bench_train.py --settings=cpu            # ResNet-50, crop 321, batch 2, OS 8
    python bench/bench_train.py --settings=r101_os16,r101_os8 --steps=2

Each side runs in its own subprocess (so peak RSS is per framework): deeplax's jitted train step
(deeplax.train.make_train_step: momentum SGD, weight decay, poly lr, softmax cross-entropy with
ignore label, logits upsampled to the labels, trained BN) and torchvision's deeplabv3 model with
torch.optim.SGD (momentum 0.9, weight decay 1e-4) and CrossEntropyLoss(ignore_index=255). Same
architecture (torchvision ResNet layout, ASPP rates 12/24/36 at OS 8 and 6/12/18 at OS 16, no aux
head), same random input and labels, float32, all cores. Batch >= 2: torchvision's ASPP pooling BN
rejects a batch of one in training mode. Reports images/s after warm-up (compile
excluded) and the process's peak resident memory. Prints one JSON line per side and a table.

Both sides start with the same environment: by default GLIBC_TUNABLES=glibc.malloc.hugetlb=1,
as `python -m deeplax.main` sets for itself (deeplax/hugepages.py); `--huge_pages=0` runs both
without it.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SETTINGS = {
    "cpu": dict(backbone="resnet50", crop=321, batch=2, output_stride=8),
    "r101_os16": dict(backbone="resnet101", crop=513, batch=2, output_stride=16),
    "r101_os8": dict(backbone="resnet101", crop=513, batch=2, output_stride=8),
}
TORCH_PYTHON = "/tmp/peer-torch/bin/python"
PEERS_DIR = "/work/shared/peers"
NUM_CLASSES = 21


def _peak_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_jax(backbone, crop, batch, output_stride, steps, warmup):
  import jax
  import numpy as np
  from deeplax import defaults, models, train
  from deeplax.models import backbones, deeplab
  config = defaults.get_base_config()
  rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
  config.model = deeplab.model_config(
      backbone=backbones.config(backbone, layout="torchvision", multi_grid=None),
      num_classes=NUM_CLASSES, output_stride=output_stride,
      aspp_rates=rates,
      aspp_rates_output_stride=output_stride, aspp_dropout=0.5, bn_momentum=0.9)
  config.data = {"crop_size": crop}
  config.batch_size = batch
  config.total_steps = 1000
  config.weight_decay = 1e-4
  config = train.prepare_config(config, check_devices=False)
  model = models.build(config.model)
  state, tx = train.create_train_state(config, model, jax.random.PRNGKey(0), (batch, crop, crop, 3))
  parallel = train.JitParallel(train.make_train_step(config, model, tx), jax.devices()[:1])
  state = parallel.put_state(state)
  rng = np.random.default_rng(0)
  batch_np = {"image": rng.normal(size=(batch, crop, crop, 3)).astype(np.float32),
              "label": rng.integers(0, NUM_CLASSES, (batch, crop, crop)).astype(np.int32)}
  device_batch = parallel.put_batch(batch_np)
  t0 = time.time()
  for _ in range(warmup):
    state, metrics = parallel.step(state, device_batch)
  jax.block_until_ready(metrics)
  compile_and_warmup_s = time.time() - t0
  t0 = time.time()
  for _ in range(steps):
    state, metrics = parallel.step(state, device_batch)
  jax.block_until_ready(metrics)
  elapsed = time.time() - t0
  return dict(side="deeplax (jax.jit)", images_per_sec=steps * batch / elapsed,
              sec_per_step=elapsed / steps, warmup_s=compile_and_warmup_s,
              peak_rss_mib=_peak_rss_mib(), loss=float(metrics["loss"]))


def run_torch(backbone, crop, batch, output_stride, steps, warmup):
  sys.path.insert(0, PEERS_DIR)
  import torchvision_shim  # noqa: F401  pylint: disable=unused-import,g-import-not-at-top
  import torch
  from torchvision.models import resnet50, resnet101
  from torchvision.models._utils import IntermediateLayerGetter
  from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
  torch.manual_seed(0)
  dilation = [False, True, True] if output_stride == 8 else [False, False, True]
  net = {"resnet50": resnet50, "resnet101": resnet101}[backbone](
      weights=None, replace_stride_with_dilation=dilation)
  body = IntermediateLayerGetter(net, return_layers={"layer4": "out"})
  head = DeepLabHead(2048, NUM_CLASSES, atrous_rates=(12, 24, 36) if output_stride == 8 else (6, 12, 18))
  model = DeepLabV3(body, head, None).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.007, momentum=0.9, weight_decay=1e-4)
  loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
  g = torch.Generator().manual_seed(0)
  images = torch.randn(batch, 3, crop, crop, generator=g)
  labels = torch.randint(0, NUM_CLASSES, (batch, crop, crop), generator=g)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(images)["out"], labels)
    loss.backward()
    opt.step()
    return loss

  t0 = time.time()
  for _ in range(warmup):
    loss = step()
  warmup_s = time.time() - t0
  t0 = time.time()
  for _ in range(steps):
    loss = step()
  elapsed = time.time() - t0
  return dict(side=f"torchvision {__import__('torchvision').__version__} (torch {torch.__version__})",
              images_per_sec=steps * batch / elapsed, sec_per_step=elapsed / steps,
              warmup_s=warmup_s, peak_rss_mib=_peak_rss_mib(), loss=float(loss),
              threads=torch.get_num_threads())


def _child(args):
  setting = dict(SETTINGS[args.child_setting])
  fn = run_jax if args.child_side == "jax" else run_torch
  result = fn(steps=args.steps, warmup=args.warmup, **setting)
  result.update(setting=args.child_setting, **setting)
  print("RESULT " + json.dumps(result), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--settings", default="cpu", help=f"comma-separated of {sorted(SETTINGS)}")
  parser.add_argument("--steps", type=int, default=3, help="timed steps after warm-up")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps (jax: includes compile)")
  parser.add_argument("--sides", default="jax,torch")
  parser.add_argument("--huge_pages", type=int, default=1,
                      help="1: both sides run with glibc's transparent-huge-page malloc")
  parser.add_argument("--child_side", help=argparse.SUPPRESS)
  parser.add_argument("--child_setting", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child_side:
    return _child(args)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, repo)
  from deeplax import hugepages  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, PYTHONPATH=repo, TF_CPP_MIN_LOG_LEVEL="2")
  env = hugepages.env_with_huge_pages(env) if args.huge_pages else env
  print(f"GLIBC_TUNABLES={env.get('GLIBC_TUNABLES', '')!r} for both sides", flush=True)
  rows = []
  for setting in args.settings.split(","):
    if setting not in SETTINGS:
      raise SystemExit(f"unknown setting {setting!r}; known: {sorted(SETTINGS)}")
    for side in args.sides.split(","):
      python = sys.executable if side == "jax" else TORCH_PYTHON
      if not os.path.exists(python):
        print(f"skipping {side}: {python} not found", flush=True)
        continue
      cmd = [python, os.path.abspath(__file__), f"--child_side={side}", f"--child_setting={setting}",
             f"--steps={args.steps}", f"--warmup={args.warmup}"]
      proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
      lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
      if proc.returncode or not lines:
        print(f"{side} {setting} failed:\n{proc.stderr[-3000:]}", flush=True)
        continue
      result = json.loads(lines[-1][len("RESULT "):])
      print(json.dumps(result), flush=True)
      rows.append(result)
  print(f"\n| setting | side | images/s | s/step | peak RSS (MiB) | warm-up s |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['backbone']} crop {r['crop']} batch {r['batch']} OS {r['output_stride']} | {r['side']} "
          f"| {r['images_per_sec']:.3f} | {r['sec_per_step']:.2f} | {r['peak_rss_mib']:.0f} "
          f"| {r['warmup_s']:.0f} |")


if __name__ == "__main__":
  main()
