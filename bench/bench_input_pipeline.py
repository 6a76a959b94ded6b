"""Training input pipeline throughput on VOC-sized images, deeplax (tf.data) vs a PyTorch peer.

Fabricates a PASCAL VOC layout of 500x375 / 375x500 JPEG photos (shapes scenes) with palette-PNG
labels, builds the deeplax VOC dataset from it, then measures examples/s of the training pipeline
of the DeepLab papers (v3 §4.1: random scale [0.5, 2.0], pad, crop 513, flip, normalise) for
  - deeplax: create_train_iterator (tfds ArrayRecord random access + tf.data, AUTOTUNE), and
  - the peer: a torch DataLoader (num_workers = CPU count) over the same files doing the same
    augmentation with torchvision.transforms.v2.functional (the usual PyTorch DeepLab pipeline),
    run by the peer venv's python in a subprocess.

  python bench/bench_input_pipeline.py [--num_images 96] [--batch_size 8] [--seconds 20]
                                       [--peer_python /tmp/peer-torch/bin/python]

With --builders N it instead compares the dataset builders per example: the ADE20K builder
(deeplax.data.ade20k) against the VOC builder on N fabricated images each (ADE20K: 20,210 +
2,000 in the release; fabricated size 48x64), both the tfds preparation (files -> ArrayRecord)
and the training pipeline's read (decode + augment, crop 49) in examples/s:

  python bench/bench_input_pipeline.py --builders 22210 [--seconds 10]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CROP, MIN_SCALE, MAX_SCALE = 513, 0.5, 2.0
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def _measure(next_batch, batch_size, seconds, warmup=2):
  for _ in range(warmup):
    next_batch()
  start, examples = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    next_batch()
    examples += batch_size
  return examples / (time.perf_counter() - start)


def peer_worker(root, ids, batch_size, seconds):
  """The PyTorch side (runs under the peer venv's python)."""
  sys.path.insert(0, "/work/shared/peers")
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision_shim  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
  from torchvision.transforms.v2 import functional as F  # pylint: disable=g-import-not-at-top

  voc = os.path.join(root, "VOCdevkit", "VOC2012")

  class VocTrain(torch.utils.data.Dataset):

    def __len__(self):
      return len(ids)

    def __getitem__(self, i):
      g = torch.Generator().manual_seed(i)
      image = F.pil_to_tensor(Image.open(os.path.join(voc, "JPEGImages", ids[i] + ".jpg")))
      label = torch.from_numpy(np.asarray(Image.open(
          os.path.join(voc, "SegmentationClass", ids[i] + ".png")), np.uint8))[None]
      scale = MIN_SCALE + (MAX_SCALE - MIN_SCALE) * torch.rand((), generator=g).item()
      size = [max(1, round(image.shape[1] * scale)), max(1, round(image.shape[2] * scale))]
      image = F.resize(image.float(), size, F.InterpolationMode.BILINEAR, antialias=False)
      label = F.resize(label, size, F.InterpolationMode.NEAREST)
      pad_h, pad_w = max(CROP - size[0], 0), max(CROP - size[1], 0)
      image = F.normalize(image, MEAN, STD)  # pad with 0 = the mean pixel
      image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h))
      label = torch.nn.functional.pad(label, (0, pad_w, 0, pad_h), value=255)
      top = torch.randint(0, image.shape[1] - CROP + 1, (), generator=g).item()
      left = torch.randint(0, image.shape[2] - CROP + 1, (), generator=g).item()
      image = image[:, top:top + CROP, left:left + CROP]
      label = label[0, top:top + CROP, left:left + CROP]
      if torch.rand((), generator=g).item() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
      return image, label.long()

  torch.set_num_threads(1)
  loader = torch.utils.data.DataLoader(VocTrain(), batch_size=batch_size, shuffle=True,
                                       num_workers=os.cpu_count(), drop_last=True,
                                       persistent_workers=True, prefetch_factor=2)

  def batches():
    while True:
      yield from loader
  it = batches()
  rate = _measure(lambda: next(it), batch_size, seconds)
  print(json.dumps({"examples_per_s": rate, "torch": torch.__version__}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_images", type=int, default=96)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--seconds", type=float, default=20)
  parser.add_argument("--peer_python", default="/tmp/peer-torch/bin/python")
  parser.add_argument("--peer_worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--builders", type=int, default=0,
                      help="compare the ADE20K and VOC builders on this many records each")
  args = parser.parse_args()
  if args.builders:
    compare_builders(args.builders, args.batch_size, args.seconds)
    return
  if args.peer_worker:
    root, ids = json.loads(args.peer_worker)
    peer_worker(root, ids, args.batch_size, args.seconds)
    return

  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from deeplax import defaults  # pylint: disable=g-import-not-at-top
  from deeplax import viz  # pylint: disable=g-import-not-at-top
  import deeplax.data as data  # pylint: disable=g-import-not-at-top
  from deeplax.data import shapes  # pylint: disable=g-import-not-at-top

  work = tempfile.mkdtemp(prefix="bench_input_")
  root = os.path.join(work, "manual")
  voc = os.path.join(root, "VOCdevkit", "VOC2012")
  for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
    os.makedirs(os.path.join(voc, sub))
  ids = [f"2012_{i:06d}" for i in range(args.num_images)]
  t = time.perf_counter()
  for i, image_id in enumerate(ids):
    size = (375, 500) if i % 3 else (500, 375)  # VOC: mostly landscape
    image, label = shapes.render(np.random.default_rng(i), *size)
    Image.fromarray(image).save(os.path.join(voc, "JPEGImages", image_id + ".jpg"), quality=90)
    viz.save_indexed_png(os.path.join(voc, "SegmentationClass", image_id + ".png"), label,
                         viz.voc_palette())
  for split, split_ids in (("train", ids), ("val", ids[:8])):
    with open(os.path.join(voc, "ImageSets", "Segmentation", split + ".txt"), "w") as f:
      f.write("".join(i + "\n" for i in split_ids))
  print(f"fabricated {len(ids)} VOC-layout images (500x375 JPEG) in "
        f"{time.perf_counter() - t:.1f} s")

  config = defaults.get_base_config()
  config.batch_size = args.batch_size
  config.data.update(name="voc", manual_dir=root, data_dir=os.path.join(work, "tfds"),
                     train_split="train", crop_size=CROP, min_scale=MIN_SCALE,
                     max_scale=MAX_SCALE, normalization="imagenet")
  t = time.perf_counter()
  data.prepared_builder(config.data)
  print(f"deeplax: built the tfds dataset in {time.perf_counter() - t:.1f} s")
  it = data.create_train_iterator(config, process_index=0, process_count=1)
  ours = _measure(lambda: next(it), args.batch_size, args.seconds)

  peer = None
  if os.path.exists(args.peer_python):
    out = subprocess.run(
        [args.peer_python, os.path.abspath(__file__), "--peer_worker", json.dumps([root, ids]),
         "--batch_size", str(args.batch_size), "--seconds", str(args.seconds)],
        capture_output=True, text=True, check=False)
    if out.returncode == 0:
      peer = json.loads(out.stdout.strip().splitlines()[-1])
    else:
      print("peer failed:\n" + out.stderr[-3000:])
  else:
    print(f"peer python {args.peer_python} not found: deeplax only")

  shutil.rmtree(work, ignore_errors=True)
  print(f"\nInput pipeline, training (500x375 JPEG -> scale [{MIN_SCALE}, {MAX_SCALE}], crop "
        f"{CROP}, flip, normalise), batch {args.batch_size}, {os.cpu_count()} CPU cores:")
  print(f"  deeplax tf.data          {ours:7.1f} examples/s")
  if peer:
    print(f"  torch DataLoader ({os.cpu_count()} workers) {peer['examples_per_s']:7.1f} "
          f"examples/s  (torch {peer['torch']})")
  print("  load average (1, 5, 15 min) at the end: " +
        ", ".join(f"{v:.1f}" for v in os.getloadavg()))


def compare_builders(num_records, batch_size, seconds, size=(48, 64)):
  """Per-example preparation and read speed of the ADE20K builder vs the VOC builder."""
  from deeplax import defaults  # pylint: disable=g-import-not-at-top
  import deeplax.data as data  # pylint: disable=g-import-not-at-top
  from deeplax.data import fabricate  # pylint: disable=g-import-not-at-top

  work = tempfile.mkdtemp(prefix="bench_builders_")
  num_val = max(1, round(num_records * 2000 / 22210))
  num_train = num_records - num_val
  rows = {}
  for name in ("voc", "ade20k"):
    root = os.path.join(work, name)
    if name == "voc":
      ids = [f"2012_{i:06d}" for i in range(num_records)]
      fabricate.fabricate_voc(root, ids[:num_train], ids[num_train:], [], [], size=size)
    else:
      fabricate.fabricate_ade20k(root, counts={"training": num_train, "validation": num_val},
                                 size=size)
    config = defaults.get_base_config()
    config.batch_size = batch_size
    config.data.update(name=name, manual_dir=root, data_dir=os.path.join(work, "tfds_" + name),
                       train_split="train", crop_size=49, min_scale=0.5, max_scale=2.0)
    t = time.perf_counter()
    builder = data.prepared_builder(config.data)
    prepared = time.perf_counter() - t
    records = sum(s.num_examples for s in builder.info.splits.values())
    it = data.create_train_iterator(config, process_index=0, process_count=1)
    read = _measure(lambda: next(it), batch_size, seconds)
    rows[name] = (records, prepared, read)
    shutil.rmtree(root, ignore_errors=True)
  shutil.rmtree(work, ignore_errors=True)
  print(f"\nBuilders on {num_records} fabricated {size[0]}x{size[1]} images each "
        f"({num_train} train + {num_val} val), {os.cpu_count()} CPU cores:")
  print("  (VOC writes every image into several splits: train, val, trainval, train_aug)")
  print(f"  {'dataset':<8} {'records':>8} {'prepare (s)':>12} {'ms/record':>10} "
        f"{'read examples/s':>16}")
  for name, (records, prepared, read) in rows.items():
    print(f"  {name:<8} {records:8d} {prepared:12.1f} {1000 * prepared / records:10.3f} "
          f"{read:16.1f}")
  (voc_n, voc_t, voc_r), (ade_n, ade_t, ade_r) = rows["voc"], rows["ade20k"]
  print(f"  ade20k / voc: time per record x{(ade_t / ade_n) / (voc_t / voc_n):.2f}, "
        f"read speed x{ade_r / voc_r:.2f}")
  print("  load average (1, 5, 15 min) at the end: " +
        ", ".join(f"{v:.1f}" for v in os.getloadavg()))


if __name__ == "__main__":
  main()
