"""The `deeplax` command: eval, predict, convert, export on a tiny run directory."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from deeplax import checkpoint
from deeplax import cli
from deeplax import data
from deeplax import defaults
from deeplax import inference
from deeplax import models
from deeplax import predict
from deeplax.convert import torchvision as tv
from deeplax.models import deeplab


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  config = defaults.get_base_config()
  config.data = data.default_data_config()
  config.data.data_dir = str(root / "tfds")
  config.data.shapes.update(num_train=2, num_val=3, min_size=33, max_size=41)
  config.data.eval_pad_size = 41
  config.data.eval_batch_size = 2
  num_classes = data.dataset_info(config.data).num_classes
  config.model = deeplab.model_config(backbone="resnet_tiny", num_classes=num_classes,
                                      aspp_features=8)
  model = models.build(config.model)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 33, 33, 3)), train=False))(
      jax.random.PRNGKey(0))
  workdir = str(root / "run")
  checkpoint.save_variables(workdir, config, variables)
  return root, workdir, config, variables


def _images(folder, sizes, seed=0):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.RandomState(seed)
  paths = []
  for i, (h, w) in enumerate(sizes):
    path = os.path.join(folder, f"img{i}.png" if i % 2 else f"img{i}.jpg")
    Image.fromarray(rng.randint(0, 255, (h, w, 3), np.uint8)).save(path)
    paths.append(path)
  return paths


def test_eval_with_strategies_trimap_and_json(run_dir, capsys):
  _, workdir, config, _ = run_dir
  out = os.path.join(workdir, "eval.json")
  code = cli.main(["eval", "--checkpoint", workdir, "--split", "val", "--output-stride", "8",
                   "--scales", "0.75", "1.0", "--flip", "--trimap", "1", "3", "--json", out,
                   "--quiet"])
  assert code == 0
  printed = capsys.readouterr().out
  assert "mIoU" in printed and "trimap" in printed and "background" in printed
  results = json.load(open(out))
  assert results["num_images"] == 3 and results["output_stride"] == 8
  assert results["strategy"]["scales"] == [0.75, 1.0] and results["strategy"]["flip"]
  assert set(results["metrics"]["per_class_iou"]) == set(data.dataset_info(config.data).class_names)
  assert 0.0 <= results["metrics"]["miou"] <= 1.0
  assert set(results["trimap"]) == {"1", "3"}
  assert results["trimap"]["1"]["num_pixels"] < results["trimap"]["3"]["num_pixels"]
  cm = np.asarray(results["confusion_matrix"])
  assert cm.sum() == results["metrics"]["num_pixels"]


def test_eval_with_crf_reports_before_and_after(run_dir, capsys):
  _, workdir, _, _ = run_dir
  out = os.path.join(workdir, "eval_crf.json")
  code = cli.main(["eval", "--checkpoint", workdir, "--crf", "--crf-iters", "2", "--max-batches",
                   "1", "--json", out, "--quiet"])
  assert code == 0
  assert "+CRF" in capsys.readouterr().out
  results = json.load(open(out))
  assert results["crf"]["num_iters"] == 2 and "miou" in results["crf"]["metrics"]
  assert results["crf"]["metrics"]["num_pixels"] == results["metrics"]["num_pixels"]


def test_predict_folder_any_size_with_a_bad_image(run_dir, tmp_path, capsys):
  _, workdir, config, variables = run_dir
  folder = str(tmp_path / "in")
  paths = _images(folder, [(37, 45), (29, 33), (37, 45)])
  with open(os.path.join(folder, "broken.png"), "wb") as f:
    f.write(b"this is not a png")
  out = str(tmp_path / "out")
  code = cli.main(["predict", "--checkpoint", workdir, "--output", out, "--save-logits",
                   "--batch-size", "2", folder])
  captured = capsys.readouterr()
  assert code == 1  # one input failed ...
  assert "broken.png" in captured.err and "cannot read image" in captured.err
  predictor = predict.Predictor(config, variables)
  num_classes = config.model.num_classes
  for path in paths:  # ... and every other one was predicted
    stem = os.path.join(out, os.path.splitext(os.path.basename(path))[0])
    image = np.asarray(Image.open(path).convert("RGB"))
    label_png = Image.open(stem + ".png")
    assert label_png.mode == "P" and label_png.size == image.shape[1::-1]
    logits = np.load(stem + "_logits.npy")
    assert logits.dtype == np.float32 and logits.shape == (*image.shape[:2], num_classes)
    np.testing.assert_allclose(logits, predictor.scores(image[None])[0], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(label_png), logits.argmax(-1))
    overlay = np.asarray(Image.open(stem + "_overlay.png"))
    assert overlay.shape == image.shape
  assert not os.path.exists(os.path.join(out, "broken.png"))


def test_predict_flip_and_crf(run_dir, tmp_path):
  _, workdir, config, variables = run_dir
  # 41 x 41: the size eval pads to, so the CRF compiled by the eval test is reused.
  path, = _images(str(tmp_path / "in"), [(41, 41)], seed=1)
  out = str(tmp_path / "out")
  code = cli.main(["predict", "--checkpoint", workdir, "--output", out, "--flip", "--crf",
                   "--crf-iters", "2", "--save-logits", "--quiet", path])
  assert code == 0
  label = np.asarray(Image.open(os.path.join(out, "img0.png")))
  assert label.shape == (41, 41) and label.max() < config.model.num_classes
  logits = np.load(os.path.join(out, "img0_logits.npy"))
  from deeplax import crf
  image = np.asarray(Image.open(path).convert("RGB"))
  log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
  q = crf.dense_crf_batch(-log_probs[None], image[None], crf.PRESETS["deeplab_v2_resnet101_voc"](),
                          num_iters=2)
  np.testing.assert_array_equal(label, np.argmax(np.asarray(q[0]), axis=-1))


def test_num_classes_mismatch_is_a_clear_error(run_dir, tmp_path, capsys):
  _, workdir, config, variables = run_dir
  other = config.copy_and_resolve_references()
  other.model.num_classes = config.model.num_classes + 2
  bad_dir = str(tmp_path / "bad")
  checkpoint.save_variables(bad_dir, other, variables)
  path, = _images(str(tmp_path / "in"), [(33, 33)])
  code = cli.main(["predict", "--checkpoint", bad_dir, "--output", str(tmp_path / "o"), path])
  err = capsys.readouterr().err
  assert code == cli.ERROR_EXIT
  assert f"has {config.model.num_classes} classes, config.model.num_classes is " \
         f"{other.model.num_classes}" in err
  # An eval config whose num_classes differs from the checkpoint's.
  config_file = tmp_path / "other.json"
  config_file.write_text(other.to_json_best_effort())
  code = cli.main(["eval", "--checkpoint", workdir, "--config", str(config_file), "--quiet"])
  assert code == cli.ERROR_EXIT and "num_classes mismatch" in capsys.readouterr().err


def test_unreadable_or_missing_inputs(run_dir, tmp_path, capsys):
  _, workdir, _, _ = run_dir
  bad = tmp_path / "x.jpg"
  bad.write_bytes(b"\xff\xd8 truncated")
  assert cli.main(["predict", "--checkpoint", workdir, "--output", str(tmp_path / "o"),
                   str(bad)]) == 1
  assert "cannot read image" in capsys.readouterr().err
  assert cli.main(["predict", "--checkpoint", workdir, "--output", str(tmp_path / "o"),
                   str(tmp_path / "absent.png")]) == cli.ERROR_EXIT
  assert "neither an image file nor a folder" in capsys.readouterr().err
  assert cli.main(["eval", "--checkpoint", str(tmp_path / "nowhere")]) == cli.ERROR_EXIT


def test_convert_with_the_wrong_arch_via_the_console_entry_point(tmp_path):
  from safetensors.numpy import save_file
  # Key names of a DeepLabV3-ResNet-101 (shapes do not matter: the arch check comes first).
  state = {k: np.zeros((1,), np.float32) for k in tv.state_dict_shapes("deeplabv3_resnet101")}
  path = str(tmp_path / "weights.safetensors")
  save_file(state, path)
  proc = subprocess.run([sys.executable, "-m", "deeplax.cli", "convert", "torchvision", path,
                         "--arch", "deeplabv3_resnet50", "--output", str(tmp_path / "run")],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == cli.ERROR_EXIT, proc.stderr
  assert "use --arch deeplabv3_resnet101" in proc.stderr
  assert not os.path.exists(tmp_path / "run")


def test_export_stablehlo_via_cli(run_dir, tmp_path):
  _, workdir, config, variables = run_dir
  out = str(tmp_path / "model.stablehlo")
  assert cli.main(["export", "--checkpoint", workdir, "--format", "stablehlo", "--output", out,
                   "--size", "33", "41", "--output-stride", "8"]) == 0
  from deeplax import export
  images = np.random.RandomState(0).uniform(0, 255, (2, 33, 41, 3)).astype(np.float32)
  expected = inference.make_predict_fn(config.model, output_stride=8)(
      variables, data.normalize(images, config.data.normalization))
  np.testing.assert_allclose(np.asarray(export.load_stablehlo(out).call(images)),
                             np.asarray(expected), atol=1e-4)
  assert cli.main(["export", "--checkpoint", workdir, "--format", "stablehlo", "--output",
                   out]) == cli.ERROR_EXIT  # never overwrites


def test_crf_search_dispatch():
  pytest.importorskip("deeplax.crf.search")
  with pytest.raises(SystemExit) as e:
    cli.main(["crf-search", "--help"])
  assert e.value.code == 0


def test_junk_or_broken_checkpoints_are_exit_2_naming_the_directory(run_dir, tmp_path, capsys):
  import shutil
  _, workdir, _, _ = run_dir
  path, = _images(str(tmp_path / "in"), [(33, 33)])
  # checkpoints/N replaced by junk: no 'state' item.
  junk = str(tmp_path / "junk")
  shutil.copytree(workdir, junk)
  step_dir = os.path.join(junk, "checkpoints", "0")
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)
  open(os.path.join(step_dir, "x"), "w").write("junk")
  code = cli.main(["predict", "--checkpoint", junk, "--output", str(tmp_path / "o"), path])
  err = capsys.readouterr().err
  assert code == cli.ERROR_EXIT, err
  assert f"checkpoint {step_dir} does not restore" in err and "Traceback" not in err
  # A deleted _METADATA and an empty one, for eval and export too; --verbose adds the traceback.
  for damage in ("delete", "empty"):
    broken = str(tmp_path / f"broken_{damage}")
    shutil.copytree(workdir, broken)
    meta = os.path.join(broken, "checkpoints", "0", "state", "_METADATA")
    os.remove(meta) if damage == "delete" else open(meta, "w").close()
    for argv in (["eval", "--checkpoint", broken, "--quiet"],
                 ["export", "--checkpoint", broken, "--format", "stablehlo", "--output",
                  str(tmp_path / f"{damage}.stablehlo")]):
      assert cli.main(argv) == cli.ERROR_EXIT
      err = capsys.readouterr().err
      assert os.path.join(broken, "checkpoints", "0") in err and "Traceback" not in err, err
  assert cli.main(["--verbose", "eval", "--checkpoint", broken, "--quiet"]) == cli.ERROR_EXIT
  assert "Traceback" in capsys.readouterr().err
  assert cli.main(["eval", "--verbose", "--checkpoint", broken, "--quiet"]) == cli.ERROR_EXIT
  assert "Traceback" in capsys.readouterr().err
  open(os.path.join(junk, "config.json"), "w").write("{junk")
  assert cli.main(["predict", "--checkpoint", junk, "--output", str(tmp_path / "o"), path]) == \
      cli.ERROR_EXIT
  assert f"{os.path.join(junk, 'config.json')} is not a readable run config" in capsys.readouterr().err


def test_predict_reads_16_bit_and_palette_images(run_dir, tmp_path):
  _, workdir, _, _ = run_dir
  gray16 = (np.arange(33 * 33).reshape(33, 33) * 60).astype(np.uint16)
  path = str(tmp_path / "gray16.png")
  Image.fromarray(gray16).save(path)
  assert Image.open(path).mode.startswith("I")
  image = predict.load_image(path)
  np.testing.assert_array_equal(image[..., 0], np.round(gray16 / 257.0).astype(np.uint8))
  assert cli.main(["predict", "--checkpoint", workdir, "--output", str(tmp_path / "o"), path,
                   "--quiet"]) == 0
  assert os.path.exists(tmp_path / "o" / "gray16.png")
