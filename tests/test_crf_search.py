"""CRF parameter search (v2 §4.1): the command on a directory of logits, images and labels."""

import json
import os

import numpy as np
import pytest
import skimage.data
import skimage.transform
from PIL import Image

from deeplax.crf import search

H, W, C = 36, 48, 3


def _sample(name, seed):
  image = getattr(skimage.data, name)()
  image = (skimage.transform.resize(image, (H, W), anti_aliasing=True) * 255).astype(np.uint8)
  # Ground truth: brightness terciles; logits: that label blurred at 1/6 resolution plus noise,
  # so boundaries are coarse as a DCNN's and the CRF can sharpen them.
  grey = image.mean(-1)
  label = np.digitize(grey, np.quantile(grey, [1 / 3, 2 / 3])).astype(np.uint8)
  label[:2, :2] = 255  # an ignored corner
  rng = np.random.default_rng(seed)
  onehot = np.eye(C)[np.minimum(label, C - 1)] * 4.0
  coarse = skimage.transform.resize(onehot, (H // 6, W // 6), anti_aliasing=True)
  logits = skimage.transform.resize(coarse, (H, W), order=1)
  logits += rng.normal(size=logits.shape) * 0.5
  return image, label, logits.astype(np.float32)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("crf_search")
  for d in ("logits", "images", "labels"):
    os.makedirs(root / d)
  for i, name in enumerate(["astronaut", "coffee"]):
    image, label, logits = _sample(name, i)
    np.save(root / "logits" / f"img{i}_logits.npy", logits)
    Image.fromarray(image).save(root / "images" / f"img{i}.jpg", quality=95)
    Image.fromarray(label).save(root / "labels" / f"img{i}.png")
  return root


def test_matlab_range():
  assert search.matlab_range("30:10:100") == [30, 40, 50, 60, 70, 80, 90, 100]
  assert search.matlab_range("3:6") == [3, 4, 5, 6]
  assert search.matlab_range("3,5") == [3, 5]
  with pytest.raises(ValueError):
    search.matlab_range("6:3")


def test_search_command_reports_every_point_and_the_best(data_dir, capsys):
  out_json = data_dir / "results.json"
  out = search.main([
      "--logits-dir", str(data_dir / "logits"), "--image-dir", str(data_dir / "images"),
      "--label-dir", str(data_dir / "labels"), "--w1", "3:3:6", "--sigma-alpha", "5:10:15",
      "--sigma-beta", "5,20", "--sigma-gamma", "1", "--fine-steps", "1,5,5",
      "--num-iters", "5", "--output", str(out_json)])
  printed = capsys.readouterr().out
  coarse = [r for r in out["results"] if r["round"] == 1]
  fine = [r for r in out["results"] if r["round"] == 2]
  assert len(coarse) == 2 * 2 * 2 and len(fine) >= 1
  assert printed.count("[round 1 ") == 8 and printed.count("[round 2 ") == len(fine)
  best = out["best"]
  assert best["miou"] == max(r["miou"] for r in out["results"])
  assert f"best: w1={best['w1']:g}" in printed
  # The CRF sharpens the coarse scores on these images.
  assert best["miou"] > out["no_crf_miou"]
  assert json.loads(out_json.read_text())["best"] == best


def test_search_missing_files_raise(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="_logits.npy"):
    search.load_samples(str(tmp_path), str(data_dir / "images"), str(data_dir / "labels"))
  with pytest.raises(FileNotFoundError, match="no label"):
    search.load_samples(str(data_dir / "logits"), str(data_dir / "images"), str(tmp_path))
