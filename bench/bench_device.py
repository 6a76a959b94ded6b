"""The accelerator benchmark: deeplax against torchvision on one GPU, all in one command.

    python bench/bench_device.py --out=bench_device.json          # one H200: aim < 8 minutes
    python bench/bench_device.py --smoke --out=/tmp/smoke.json    # tiny sizes, any CPU (the test)

Parts (each variant in its own subprocess, so peak device memory is per variant):
1. train: the DeepLabV3-ResNet-101 train step (deeplax.train.make_train_step: momentum SGD, poly
   lr, weight decay, trained BN, logits upsampled to the labels; batch-sharded `jax.jit` over the
   devices), crop 513, batch 16, output stride 16 and 8, bfloat16 compute with float32 params,
   with the canonical kernels and with the XLA-CPU kernels (`deeplax.ops`) on the same device.
   images/s, model FLOP/s utilisation (FLOPs from XLA's cost analysis of the compiled step over
   the measured time, against the dense bf16 peak in PEAK_BF16_FLOPS: NVIDIA's H200 SXM
   datasheet, 989 TFLOP/s dense), peak device memory.
2. torch_train: torchvision's deeplabv3_resnet101 (same crop, batch, output stride, ASPP rates,
   no aux head), SGD momentum 0.9 / wd 1e-4, `torch.autocast(dtype=torch.bfloat16)`,
   channels_last, and `torch.compile` unless --torch_compile=0 (falls back to eager, reported,
   if compilation fails).
3. inference / torch_inference: 513x513, OS 8, batch 16; and one 2048x1024 image by sliding
   769x769 windows (overlap 1/3), OS 8, 19 classes; bfloat16 compute.
4. crf: deeplax's dense CRF (`dense_crf_core`, jit + vmap) on 16 VOC-sized (500x375) images, 21
   classes, 10 mean-field iterations, DeepLab-v2's VOC parameters: images/s.

Needs only jax, flax, optax, orbax-checkpoint and ml_collections (a pure-Python wheel to carry
where missing; it needs absl-py and PyYAML), plus torch and torchvision for the peer parts: no
TensorFlow, tensorflow-datasets or dataset. Prints a table and writes one JSON (--out) with every
row, the device and the versions. The figures go to BENCHMARKS.md ("Device benchmark").
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PEAK_BF16_FLOPS = {"NVIDIA H200": 989e12, "NVIDIA H100 80GB HBM3": 989e12}

FULL = dict(backbone="resnet101", crop=513, batch=16, output_strides=(16, 8), kernels=("canonical", "xla_cpu"),
            infer_crop=513, infer_batch=16, window_image=(1024, 2048), window_tile=769,
            crf_batch=16, crf_hw=(375, 500), crf_classes=21, crf_iters=10, steps=10, warmup=2)
SMOKE = dict(backbone="resnet_small", crop=65, batch=2, output_strides=(16,), kernels=("canonical", "xla_cpu"),
             infer_crop=65, infer_batch=2, window_image=(97, 161), window_tile=65,
             crf_batch=2, crf_hw=(30, 40), crf_classes=4, crf_iters=2, steps=1, warmup=1)


def _model_config(backbone, num_classes, output_stride, dtype="bfloat16"):
  from deeplax.models import backbones, deeplab
  rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
  # torchvision's layout and head, so both sides build the same network.
  return deeplab.model_config(
      backbone=backbones.config(backbone, layout="torchvision", multi_grid=None),
      num_classes=num_classes, output_stride=output_stride,
      aspp_rates=rates,
      aspp_rates_output_stride=output_stride, aspp_dropout=0.1, bn_momentum=0.9, dtype=dtype)


def _device_memory(device):
  stats = device.memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**30


def _flops(*stages):
  """FLOPs of the step from XLA's cost analysis: the lowered (pre-optimisation) module first,
  which counts the model's operations the same way for either kernel set; the compiled one
  if that has none. None where neither reports a positive count (GPU backends can say -1)."""
  for stage in stages:
    try:
      cost = stage.cost_analysis()
    except Exception:  # pylint: disable=broad-except
      continue
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    flops = float((cost or {}).get("flops", 0.0) or 0.0)
    if flops > 0:
      return flops
  return None


def _utilisation(flops, seconds, device_kind):
  peak = PEAK_BF16_FLOPS.get(device_kind)
  if not flops or not peak:
    return None
  return flops / seconds / peak


def jax_train(s, output_stride, kernels):
  import jax
  import numpy as np
  from deeplax import defaults, models, ops, train
  config = defaults.get_base_config()
  config.model = _model_config(s["backbone"], 21, output_stride)
  config.data.crop_size = s["crop"]
  config.batch_size = s["batch"]
  config.total_steps = 30000
  config.learning_rate = 0.007
  config = train.prepare_config(config, check_devices=False)
  model = models.build(config.model)
  batch = s["batch"]
  shape = (batch, s["crop"], s["crop"], 3)
  with ops.use_kernels(kernels):
    state, tx = train.create_train_state(config, model, jax.random.PRNGKey(0), shape)
    devices = jax.devices()
    if batch % len(devices):
      devices = devices[:1]
    parallel = train.JitParallel(train.make_train_step(config, model, tx), devices)
    state = parallel.put_state(state)
    rng = np.random.default_rng(0)
    batch_np = {"image": rng.normal(size=shape).astype(np.float32),
                "label": rng.integers(0, 21, shape[:3]).astype(np.int32)}
    device_batch = parallel.put_batch(batch_np)
    t0 = time.time()
    lowered = parallel.step.lower(state, device_batch)
    compiled = lowered.compile()
    compile_s = time.time() - t0
  flops = _flops(lowered, compiled)
  for _ in range(s["warmup"]):
    state, metrics = compiled(state, device_batch)
  jax.block_until_ready(metrics)
  t0 = time.time()
  for _ in range(s["steps"]):
    state, metrics = compiled(state, device_batch)
  jax.block_until_ready(metrics)
  dt = (time.time() - t0) / s["steps"]
  kind = devices[0].device_kind
  return dict(images_per_sec=batch / dt, sec_per_step=dt, compile_s=compile_s,
              flops_per_step=flops, mfu=_utilisation(flops, dt, kind),
              peak_memory_gib=_device_memory(devices[0]), loss=float(metrics["loss"]),
              finite=bool(metrics["finite"]))


def jax_inference(s, mode):
  import jax
  import numpy as np
  from deeplax import inference, models
  num_classes = 21 if mode == "crop" else 19
  config = _model_config(s["backbone"], num_classes, 8)
  variables = models.build(config).init(
      jax.random.PRNGKey(0), np.zeros((1, s["infer_crop"], s["infer_crop"], 3), np.float32))
  if mode == "crop":
    shape = (s["infer_batch"], s["infer_crop"], s["infer_crop"], 3)
    strategy = inference.strategy_for(config)
  else:
    shape = (1,) + tuple(s["window_image"]) + (3,)
    strategy = inference.strategy_for(config, tile_size=(s["window_tile"],) * 2)
  predict = inference.make_predict_fn(config, strategy)
  images = jax.device_put(np.random.default_rng(0).normal(size=shape).astype(np.float32))
  t0 = time.time()
  compiled = predict.lower(variables, images).compile()
  compile_s = time.time() - t0
  out = compiled(variables, images)
  jax.block_until_ready(out)
  t0 = time.time()
  for _ in range(s["steps"]):
    out = compiled(variables, images)
  jax.block_until_ready(out)
  dt = (time.time() - t0) / s["steps"]
  return dict(images_per_sec=shape[0] / dt, sec_per_call=dt, compile_s=compile_s,
              peak_memory_gib=_device_memory(jax.devices()[0]), shape=list(shape[1:3]))


def jax_crf(s):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from deeplax import crf
  h, w = s["crf_hw"]
  n, c = s["crf_batch"], s["crf_classes"]
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(c), size=(n, h, w)).astype(np.float32)
  unary = jax.device_put(-np.log(probs))
  # Photograph-like colours (smooth regions, sensor noise): uniform noise would fill the
  # bilateral lattice far beyond any photograph's.
  coarse = rng.uniform(0, 255, (n, h // 25 + 2, w // 25 + 2, 3))
  iy, ix = np.linspace(0, coarse.shape[1] - 1.001, h), np.linspace(0, coarse.shape[2] - 1.001, w)
  y0, x0 = iy.astype(int), ix.astype(int)
  fy, fx = (iy - y0)[None, :, None, None], (ix - x0)[None, None, :, None]
  smooth = ((1 - fy) * (1 - fx) * coarse[:, y0][:, :, x0] + (1 - fy) * fx * coarse[:, y0][:, :, x0 + 1]
            + fy * (1 - fx) * coarse[:, y0 + 1][:, :, x0] + fy * fx * coarse[:, y0 + 1][:, :, x0 + 1])
  images = np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8)
  images = jax.device_put(images)
  params = crf.CRFParams()
  # As dense_crf does: the default lattice capacity, and the exact bound if a lattice overflows.
  for capacity_factor in (2.0, 6.0):
    run = jax.jit(jax.vmap(lambda u, im: crf.dense_crf_core(
        u, im, params, s["crf_iters"], capacity_factor=capacity_factor)))
    t0 = time.time()
    compiled = run.lower(unary, images).compile()
    compile_s = time.time() - t0
    q, overflow = compiled(unary, images)
    if not bool(jnp.any(overflow)):
      break
  else:
    raise RuntimeError("lattice overflow even at the exact capacity bound")
  t0 = time.time()
  for _ in range(s["steps"]):
    q, overflow = compiled(unary, images)
  jax.block_until_ready(q)
  dt = (time.time() - t0) / s["steps"]
  return dict(images_per_sec=n / dt, sec_per_call=dt, compile_s=compile_s,
              peak_memory_gib=_device_memory(jax.devices()[0]), image_hw=[h, w], classes=c,
              capacity_factor=capacity_factor)


def _torch_model(backbone, num_classes, output_stride):
  import torch
  from torchvision.models import resnet101, resnet50
  from torchvision.models._utils import IntermediateLayerGetter
  from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
  torch.manual_seed(0)
  dilation = [False, True, True] if output_stride == 8 else [False, False, True]
  net = {"resnet50": resnet50, "resnet101": resnet101}.get(backbone, resnet50)(
      weights=None, replace_stride_with_dilation=dilation)
  body = IntermediateLayerGetter(net, return_layers={"layer4": "out"})
  rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
  return DeepLabV3(body, DeepLabHead(2048, num_classes, atrous_rates=rates), None)


def _torch_device():
  import torch
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _maybe_compile(model, want):
  import torch
  if not want:
    return model, "eager"
  try:
    return torch.compile(model), "torch.compile"  # compiles lazily: see the first-call fallback
  except Exception as e:  # pylint: disable=broad-except
    return model, f"eager (torch.compile failed: {type(e).__name__})"


def _torch_sync():
  import torch
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def _torch_peak():
  import torch
  return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def torch_train(s, output_stride, compile_model):
  import torch
  dev = _torch_device()
  model = _torch_model(s["backbone"], 21, output_stride).to(dev).to(
      memory_format=torch.channels_last).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.007, momentum=0.9, weight_decay=1e-4)
  loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
  g = torch.Generator().manual_seed(0)
  b, crop = s["batch"], s["crop"]
  images = torch.randn(b, 3, crop, crop, generator=g).to(dev).to(memory_format=torch.channels_last)
  labels = torch.randint(0, 21, (b, crop, crop), generator=g).to(dev)
  fwd, how = _maybe_compile(model, compile_model)

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
      loss = loss_fn(fwd(images)["out"].float(), labels)
    loss.backward()
    opt.step()
    return loss

  t0 = time.time()
  try:
    for _ in range(s["warmup"]):
      loss = step()
    _torch_sync()
  except Exception as e:  # pylint: disable=broad-except  (torch.compile fails at first call)
    if fwd is model:
      raise
    fwd, how = model, f"eager (torch.compile failed: {type(e).__name__})"
    for _ in range(s["warmup"]):
      loss = step()
    _torch_sync()
  warmup_s = time.time() - t0
  t0 = time.time()
  for _ in range(s["steps"]):
    loss = step()
  _torch_sync()
  dt = (time.time() - t0) / s["steps"]
  return dict(images_per_sec=b / dt, sec_per_step=dt, compile_s=warmup_s, torch_mode=how,
              peak_memory_gib=_torch_peak(), loss=float(loss))


def torch_inference(s, mode, compile_model):
  import torch
  from deeplax.inference import tile_starts
  dev = _torch_device()
  num_classes = 21 if mode == "crop" else 19
  model = _torch_model(s["backbone"], num_classes, 8).to(dev).to(
      memory_format=torch.channels_last).eval()
  fwd, how = _maybe_compile(model, compile_model)
  g = torch.Generator().manual_seed(0)
  if mode == "crop":
    images = torch.randn(s["infer_batch"], 3, s["infer_crop"], s["infer_crop"], generator=g)
  else:
    images = torch.randn(1, 3, *s["window_image"], generator=g)
  images = images.to(dev).to(memory_format=torch.channels_last)
  tile = s["window_tile"]

  @torch.no_grad()
  def run():
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
      if mode == "crop":
        return fwd(images)["out"].float().softmax(1)
      h, w = images.shape[2:]
      out = torch.zeros(1, num_classes, h, w, device=dev)
      count = torch.zeros(1, 1, h, w, device=dev)
      for y in tile_starts(h, tile, 1 / 3):
        for x in tile_starts(w, tile, 1 / 3):
          crop = images[:, :, y:y + tile, x:x + tile]
          out[:, :, y:y + tile, x:x + tile] += fwd(crop)["out"].float().softmax(1)
          count[:, :, y:y + tile, x:x + tile] += 1
      return out / count

  t0 = time.time()
  try:
    run()
    _torch_sync()
  except Exception as e:  # pylint: disable=broad-except  (torch.compile fails at first call)
    if fwd is model:
      raise
    fwd, how = model, f"eager (torch.compile failed: {type(e).__name__})"
    run()
    _torch_sync()
  warmup_s = time.time() - t0
  t0 = time.time()
  for _ in range(s["steps"]):
    run()
  _torch_sync()
  dt = (time.time() - t0) / s["steps"]
  return dict(images_per_sec=images.shape[0] / dt, sec_per_call=dt, compile_s=warmup_s, torch_mode=how,
              peak_memory_gib=_torch_peak(), shape=list(images.shape[2:]))


def variants(s, torch_compile):
  """(part, label, child-args) in the order they run."""
  rows = []
  for os_ in s["output_strides"]:
    for k in s["kernels"]:
      rows.append(("train", f"deeplax OS {os_} kernels={k}", dict(fn="jax_train", output_stride=os_, kernels=k)))
    rows.append(("train", f"torchvision OS {os_}", dict(fn="torch_train", output_stride=os_,
                                                         compile_model=torch_compile)))
  for mode in ("crop", "window"):
    rows.append(("inference", f"deeplax {mode}", dict(fn="jax_inference", mode=mode)))
    rows.append(("inference", f"torchvision {mode}", dict(fn="torch_inference", mode=mode,
                                                          compile_model=torch_compile)))
  rows.append(("crf", "deeplax dense CRF", dict(fn="jax_crf")))
  return rows


def _child(spec):
  sys.path.insert(0, REPO)
  s = SMOKE if spec.pop("smoke") else FULL
  fn = globals()[spec.pop("fn")]
  result = fn(s, **spec)
  import jax  # pylint: disable=g-import-not-at-top
  result["jax_device"] = jax.devices()[0].device_kind
  print("RESULT " + json.dumps(result), flush=True)


def _torch_available():
  try:
    import torch  # noqa: F401  pylint: disable=unused-import,g-import-not-at-top
    import torchvision  # noqa: F401  pylint: disable=unused-import,g-import-not-at-top
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def _versions():
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "torch", "torchvision"):
    try:
      out[name] = __import__(name).__version__
    except Exception:  # pylint: disable=broad-except
      out[name] = None
  return out


def _fmt(x, spec):
  return "-" if x is None else format(x, spec)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes (the test suite, any CPU)")
  parser.add_argument("--out", default="bench_device.json", help="JSON with every row")
  parser.add_argument("--parts", default="train,inference,crf")
  parser.add_argument("--torch_compile", type=int, default=1, help="0: eager torch (--smoke: always)")
  parser.add_argument("--timeout", type=int, default=420, help="seconds per variant")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return _child(json.loads(args.child))
  s = SMOKE if args.smoke else FULL
  has_torch = _torch_available()
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             TF_CPP_MIN_LOG_LEVEL="2")
  rows, t_start = [], time.time()
  parts = args.parts.split(",")
  torch_compile = bool(args.torch_compile) and not args.smoke  # smoke: eager, quick
  for part, label, spec in variants(s, torch_compile):
    if part not in parts:
      continue
    row = dict(part=part, variant=label, **{k: v for k, v in spec.items() if k != "fn"})
    if spec["fn"].startswith("torch") and not has_torch:
      row["skipped"] = "torch/torchvision not importable"
      rows.append(row)
      print(f"{label}: skipped ({row['skipped']})", flush=True)
      continue
    child = json.dumps(dict(spec, smoke=args.smoke))
    try:
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", child],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
      lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
      if proc.returncode or not lines:
        row["error"] = proc.stderr[-2000:]
      else:
        row.update(json.loads(lines[-1][len("RESULT "):]))
    except subprocess.TimeoutExpired:
      row["error"] = f"timed out after {args.timeout} s"
    rows.append(row)
    status = "error" if "error" in row else f"{row['images_per_sec']:.2f} img/s"
    print(f"{label}: {status} ({time.time() - t_start:.0f} s so far)", flush=True)
  report = dict(date=time.strftime("%Y-%m-%d"), smoke=args.smoke, settings=s,
                host=platform.node(), versions=_versions(), rows=rows,
                peak_bf16_flops=PEAK_BF16_FLOPS, wall_s=time.time() - t_start)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print("\n| part | variant | images/s | MFU | peak memory GiB | compile s |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    if "images_per_sec" not in r:
      print(f"| {r['part']} | {r['variant']} | {r.get('skipped') or 'error'} | | | |")
      continue
    label = r["variant"] + (f" ({r['torch_mode']})" if r.get("torch_mode") else "")
    print(f"| {r['part']} | {label} | {r['images_per_sec']:.2f} | "
          f"{_fmt(r.get('mfu'), '.1%')} | {_fmt(r.get('peak_memory_gib'), '.1f')} | "
          f"{r['compile_s']:.0f} |")
  failed = [r["variant"] for r in rows if "error" in r]
  if failed:
    for r in rows:
      if "error" in r:
        print(f"\n{r['variant']} failed:\n{r['error']}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()
