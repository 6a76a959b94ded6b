"""A run written before the model-config schema (issue #13; fixture from commit 1b78b68, see
tests/fixtures/make_legacy_run.py) still restores, predicts the same logits and resumes."""

import json
import os
import shutil

import numpy as np
import pytest

from deeplax import checkpoint as ckpt_lib
from deeplax import inference, train
import train_configs
from train_configs import compilation_cache_dir  # noqa: F401  pylint: disable=unused-import

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "legacy_run_1b78b68")


def fixed_image():
  y, x = np.mgrid[0:33, 0:41].astype(np.float32)
  return np.stack([np.sin(x / 5), np.cos(y / 7), (x - y) / 40], -1)[None]


@pytest.fixture
def legacy_run(tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(FIXTURE, workdir)
  return str(workdir)


def test_fixture_is_the_flat_legacy_format():
  with open(os.path.join(FIXTURE, "config.json")) as f:
    model = json.load(f)["model"]
  assert model["backbone"] == "resnet_tiny" and model["multi_grid"] == [1, 2, 4]
  assert "resnet_layout" in model


def test_legacy_run_restores_and_predicts_the_same_logits(legacy_run):
  config, variables = inference.load_model(legacy_run)
  logits = inference.make_predict_fn(config.model)(variables, fixed_image())
  expected = np.load(os.path.join(FIXTURE, "logits_fixed_image.npy"))
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)


def _resume_config(tmp_path, total_steps, checkpoint_every):
  """The fixture's run config as today's schema writes it, to `total_steps`."""
  config = train_configs.tiny_config(str(tmp_path / "data"), total_steps=total_steps)
  config.model.backbone.multi_grid = (1, 2, 4)
  config.checkpoint_every_steps = checkpoint_every
  config.eval_every_steps = 100
  config.num_eval_images_to_save = 0
  return config


def test_legacy_run_resumes_training(legacy_run, tmp_path):
  history = train.train_and_evaluate(_resume_config(tmp_path, 8, 4), legacy_run)
  assert history["step"] == 8
  assert history["train"][0]["step"] == 5     # resumed after the fixture's step 4
  assert ckpt_lib.latest_step(legacy_run) == 8


def test_resume_rewrites_the_legacy_config_and_records_it(legacy_run, tmp_path):
  train.train_and_evaluate(_resume_config(tmp_path, 5, 5), legacy_run)
  with open(os.path.join(legacy_run, "config.json")) as f:
    model = json.load(f)["model"]
  assert model["backbone"] == {"name": "resnet_tiny", "layout": "slim", "multi_grid": [1, 2, 4],
                               "num_cascaded_blocks": 0}
  assert "resnet_layout" not in model and model["head"] == "aspp"
  with open(os.path.join(legacy_run, train.CONFIG_CHANGES_FILE)) as f:
    record, = json.load(f)
  assert record["step"] == 4
  assert record["format_upgrade"][:2] == ["backbone 'resnet_tiny' -> backbone.name",
                                          "resnet_layout -> backbone.layout"]
  assert "aspp=True -> head='aspp'" in record["format_upgrade"]
