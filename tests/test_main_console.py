"""The README's main job is quiet: progress lines, the evaluation and real warnings; the
libraries' INFO lines (orbax, TensorFlow) only with --verbosity=1."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENV = dict(os.environ, DEEPLAX_HUGE_PAGES="0", XLA_FLAGS="", JAX_PLATFORMS="cpu")
ENV.pop("TF_CPP_MIN_LOG_LEVEL", None)
DEEPLAX_FILES = {p.name for p in (ROOT / "deeplax").rglob("*.py")}
INFO_LINE = re.compile(r"^I\d{4} [\d:.]+\s+\d+ (?P<file>[^:\]]+):\d+\] ")


def _run(tmp_path, name, *extra):
  cmd = [sys.executable, "-m", "deeplax.main", "--config=configs/shapes.py",
         f"--workdir={tmp_path / name}", "--config.model.backbone.name=resnet_tiny",
         "--config.model.aspp_features=16", "--config.data.crop_size=49",
         "--config.data.shapes.num_train=32", "--config.data.shapes.num_val=8",
         "--config.data.shapes.min_size=64", "--config.data.shapes.max_size=80",
         "--config.data.eval_pad_size=81", "--config.data.eval_batch_size=8",
         "--config.batch_size=8", "--config.total_steps=20", "--config.log_every_steps=5",
         "--config.checkpoint_every_steps=5", "--config.eval_every_steps=20",
         "--config.num_eval_images_to_save=1", f"--config.data.data_dir={tmp_path / 'data'}",
         *extra]
  proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return (proc.stdout + proc.stderr).splitlines()


@pytest.fixture(scope="module")
def prepared_data(tmp_path_factory):
  """The dataset generated once (its first build prints TFDS's own progress)."""
  tmp = tmp_path_factory.mktemp("console")
  _run(tmp, "warmup", "--config.total_steps=1", "--config.eval_every_steps=1000")
  return tmp


def test_a_20_step_run_has_no_library_info_lines(prepared_data):
  lines = _run(prepared_data, "quiet")
  info_files = [m["file"] for m in map(INFO_LINE.match, lines) if m]
  assert info_files and set(info_files) <= DEEPLAX_FILES, sorted(set(info_files) - DEEPLAX_FILES)
  assert not [l for l in lines if "orbax" in l.lower() or "oneDNN" in l or
              l.startswith("I0000")], lines
  progress = [l for l in lines if re.search(r"step +\d+/20", l)]
  assert len(progress) >= 4, lines     # steps 5, 10, 15, 20
  assert any("mIoU" in l for l in lines)
  assert len(lines) < 40, "\n".join(lines)


def test_verbosity_1_shows_the_library_lines(prepared_data):
  lines = _run(prepared_data, "verbose", "--verbosity=1")
  info_files = {m["file"] for m in map(INFO_LINE.match, lines) if m}
  assert info_files - DEEPLAX_FILES, "no library INFO line with --verbosity=1"
