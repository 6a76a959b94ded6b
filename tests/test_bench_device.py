"""bench/bench_device.py --smoke: every part runs (tiny sizes, both kernel sets, the torchvision
peer where importable) and the JSON holds a row per variant, so the device benchmark cannot rot."""

import importlib.util
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_device_benchmark_smoke(tmp_path):
  out = tmp_path / "bench_device.json"
  proc = subprocess.run([sys.executable, "bench/bench_device.py", "--smoke", f"--out={out}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  assert "| part | variant | images/s |" in proc.stdout
  report = json.loads(out.read_text())
  rows = {r["variant"]: r for r in report["rows"]}
  has_torch = all(importlib.util.find_spec(m) for m in ("torch", "torchvision"))
  for kernels in ("canonical", "xla_cpu"):
    row = rows[f"deeplax OS 16 kernels={kernels}"]
    assert row["images_per_sec"] > 0 and row["finite"] and row["flops_per_step"] > 0
  for name in ("deeplax crop", "deeplax window", "deeplax dense CRF"):
    assert rows[name]["images_per_sec"] > 0, rows[name]
  assert rows["deeplax window"]["shape"] == list(report["settings"]["window_image"])
  for name in ("torchvision OS 16", "torchvision crop", "torchvision window"):
    row = rows[name]
    assert "error" not in row and ("images_per_sec" in row or "skipped" in row), row
    if not has_torch:
      assert "skipped" in row, row
  assert report["versions"]["jax"]
