"""The dataset configs (PASCAL-Context, Person-Part, Cityscapes, ADE20K) launched as a user does,
on data fabricated in each release's layout: the config's model built at full depth, then two
train steps and the final evaluation through `train.train_and_evaluate` at tiny sizes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from deeplax import cli
from deeplax import models
from deeplax import train
import deeplax.data as data
from deeplax.cli import load_config_file
from deeplax.data import fabricate
from train_configs import compilation_cache_dir  # noqa: F401  pylint: disable=unused-import

TRAIN = ["2008_000002", "2008_000003", "2010_000005"]
VAL = ["2008_000010", "2009_000011"]

# config -> (dataset, fabricate(root), number of model classes)
CONFIGS = {
    "deeplab_v2_pascal_context": (
        "pascal_context", lambda root: fabricate.fabricate_pascal_context(root, TRAIN, VAL), 60),
    "deeplab_v2_person_part": (
        "person_part", lambda root: fabricate.fabricate_person_part(root, TRAIN, VAL), 7),
    "deeplab_v2_cityscapes": (
        "cityscapes", lambda root: fabricate.fabricate_cityscapes(root, size=(40, 56)), 19),
    "deeplab_v3plus_ade20k": (
        "ade20k", lambda root: fabricate.fabricate_ade20k(root), 151),
    "deeplab_v3_ade20k": (
        "ade20k", lambda root: fabricate.fabricate_ade20k(root), 150),
}
# The tiny backbone of each family: the configs' heads, data, loss and optimiser run unchanged.
TINY_BACKBONES = {"resnet101": "resnet_tiny", "xception65": "xception_tiny"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_builds_and_trains_two_steps(name, tmp_path):
  dataset, make, num_classes = CONFIGS[name]
  config = load_config_file(f"configs/{name}.py")
  assert config.data.name == dataset and config.model.num_classes == num_classes
  command = f"python -m deeplax.main --config=configs/{name}.py --workdir=/tmp/{name}"
  assert command in open(f"configs/{name}.py").read()
  # The model as configured, at full depth (shapes only).
  model = models.build(config.model)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, 65, 65, 3)), train=False))
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 65, 65, 3)), train=False),
                          variables)
  logits = logits[0] if isinstance(logits, tuple) else logits
  assert logits.shape == (1, 65, 65, num_classes)
  # Two train steps and the final evaluation on the fabricated release.
  root = str(tmp_path / "manual")
  make(root)
  config.model.backbone.name = TINY_BACKBONES[config.model.backbone.name]
  config.data.manual_dir = root
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.crop_size = 33
  if config.data.min_resize_value is not None:  # the ADE20K configs: sides 16k + 1, at most 33
    config.data.min_resize_value = config.data.max_resize_value = 48
  config.data.eval_pad_size, config.data.eval_pad_width = 65, None
  config.data.eval_batch_size = jax.device_count()
  config.batch_size = jax.device_count()
  config.total_steps = 2
  config.checkpoint_every_steps = 2
  config.eval_every_steps = 2
  config.log_every_steps = 1
  config.num_eval_images_to_save = 1
  workdir = str(tmp_path / "run")
  history = train.train_and_evaluate(train.prepare_config(config), workdir)
  losses = [m["loss"] for m in history["train"]]
  assert len(losses) == 2 and all(jnp.isfinite(jnp.asarray(losses)))
  result = history["eval"][-1]
  assert 0.0 <= result["miou"] <= 1.0 and len(result["per_class_iou"]) == num_classes
  with open(os.path.join(workdir, "eval", "step_2.json")) as f:
    assert json.load(f)["step"] == 2
  if name in ("deeplab_v3plus_ade20k", "deeplab_v2_person_part"):
    _eval_and_predict_use_the_dataset_classes(config, workdir, root, tmp_path)


def _eval_and_predict_use_the_dataset_classes(config, workdir, root, tmp_path):
  """`deeplax eval` prints the dataset's class names ('other' of the 151-class ADE20K convention
  left out of the mean); `deeplax predict` draws with its palette."""
  info = data.dataset_info(config.data)
  out = str(tmp_path / "eval.json")
  assert cli.main(["eval", "--checkpoint", workdir, "--json", out, "--quiet"]) == 0
  results = json.load(open(out))
  per_class = results["metrics"]["per_class_iou"]
  assert list(per_class) == list(info.class_names)
  ious = [v for k, v in per_class.items() if v is not None and not np.isnan(v)]
  assert results["metrics"]["miou"] == pytest.approx(np.mean(ious))
  if config.data.other_class:
    assert list(per_class)[:2] == ["other", "wall"]
    assert per_class["other"] is None or np.isnan(per_class["other"])  # JSON null
  image = next(os.path.join(d, f) for d, _, files in os.walk(root) for f in sorted(files)
               if f.endswith(".jpg"))
  pred_dir = str(tmp_path / "pred")
  assert cli.main(["predict", "--checkpoint", workdir, "--output", pred_dir, "--quiet", image]) == 0
  stem = os.path.splitext(os.path.basename(image))[0]
  with Image.open(os.path.join(pred_dir, stem + ".png")) as im:
    assert im.mode == "P"
    palette = np.asarray(im.getpalette()[:3 * info.num_classes]).reshape(-1, 3)
  np.testing.assert_array_equal(palette, info.palette)
