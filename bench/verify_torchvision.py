"""Converted torchvision DeepLabV3 vs torchvision itself, across two Python environments.

The main Python (jax, no torch) writes a real photograph (skimage astronaut, resized to an odd size),
then runs this script under the torch venv (`--torch-python`) which builds a random-initialised
torchvision model with non-trivial BN statistics, saves its state dict as .pth and .safetensors, reads
the .pth back with deeplax's own reader (`torch.load(weights_only=True)`) into an .npz, and saves the
logits. The main Python converts both files and compares the logits (relative error = max |diff| /
max |torchvision|).

    python bench/verify_torchvision.py [--archs deeplabv3_resnet50 deeplabv3_resnet101] [--size 97 131]
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def torch_side(out_dir, arch, image_path):
  sys.path.insert(0, "/work/shared/peers")
  sys.path.insert(0, os.path.dirname(HERE))
  import torchvision_shim  # noqa: F401
  import torch
  from safetensors.torch import save_file
  from torchvision.models import segmentation
  from deeplax.convert.torchvision import IMAGENET_MEAN, IMAGENET_STD, read_state_dict
  torch.manual_seed(0)
  model = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=21,
                                      aux_loss=True).eval()
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
        m.weight.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
      if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
  image = np.load(image_path)
  x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0       # ToTensor
  x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
  with torch.no_grad():
    result = model(x)
  state = model.state_dict()
  torch.save(state, os.path.join(out_dir, f"{arch}.pth"))
  save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out_dir, f"{arch}.safetensors"))
  np.savez(os.path.join(out_dir, f"{arch}_pth.npz"), **read_state_dict(os.path.join(out_dir, f"{arch}.pth")))
  np.savez(os.path.join(out_dir, f"{arch}_ref.npz"), out=result["out"].numpy(), aux=result["aux"].numpy())


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--archs", nargs="+", default=["deeplabv3_resnet50", "deeplabv3_resnet101"])
  parser.add_argument("--size", type=int, nargs=2, default=[97, 131], metavar=("HEIGHT", "WIDTH"))
  parser.add_argument("--torch-python", default="/tmp/peer-torch/bin/python")
  parser.add_argument("--torch-side", nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.torch_side:
    torch_side(*args.torch_side)
    return
  import jax
  import jax.numpy as jnp
  from PIL import Image
  from skimage import data as skdata
  from deeplax import data, models
  from deeplax.convert import torchvision as tv
  work = tempfile.mkdtemp(prefix="verify_torchvision_")
  h, w = args.size
  image = np.asarray(Image.fromarray(skdata.astronaut()).resize((w, h), Image.BILINEAR))
  np.save(os.path.join(work, "image.npy"), image)
  worst = 0.0
  for arch in args.archs:
    subprocess.run([args.torch_python, os.path.abspath(__file__), "--torch-side", work, arch,
                    os.path.join(work, "image.npy")], check=True)
    ref = np.load(os.path.join(work, f"{arch}_ref.npz"))
    sources = {"safetensors": os.path.join(work, f"{arch}.safetensors"),
               "pth (read by torch)": dict(np.load(os.path.join(work, f"{arch}_pth.npz")))}
    for name, source in sources.items():
      if isinstance(source, str):
        config, variables, _ = tv.convert_file(source, arch, log=lambda *_: None)
      else:
        config, variables, _ = tv.convert_state_dict(source, arch)
      x = jnp.asarray(data.normalize(image[None], config.data.normalization))
      logits, feats = jax.jit(lambda v, x: models.build(config.model).apply(
          v, x, train=False, return_features=True))(variables, x)
      for head, got in (("out", logits), ("aux", feats["aux_logits"])):
        want = ref[head].transpose(0, 2, 3, 1)
        err = float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())
        worst = max(worst, err)
        print(f"{arch} from {name}, {head} logits {tuple(want.shape)}: relative error {err:.2e}")
  print(f"worst relative error {worst:.2e} ({'OK' if worst <= 1e-4 else 'FAIL'}: limit 1e-4)")
  sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
  main()
