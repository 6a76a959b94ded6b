"""The backbone registry, the config schema of every model and the upgrade of old configs."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from deeplax import layers, models, train
from deeplax.cli import load_config_file
from deeplax.models import backbones, deeplab, deeplab_v3plus, vgg
import train_configs
from train_configs import compilation_cache_dir  # noqa: F401  pylint: disable=unused-import

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_CONFIGS = os.path.join(ROOT, "tests", "fixtures", "legacy_model_configs_1b78b68.json")


class ToyBackbone(nn.Module):
  """A backbone defined only here: two strided convs to stride 4, then stride 2 or atrous 2."""
  width: int = 8
  output_stride: int = 8
  norm: layers.ModuleDef = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = layers.ConvBN(self.width, 3, stride=2, norm=self.norm, dtype=self.dtype, name="conv1")(x)
    low = layers.ConvBN(self.width, 3, stride=2, norm=self.norm, dtype=self.dtype,
                        name="conv2")(x)
    stride, rate = (2, 1) if self.output_stride == 8 else (1, 2)
    x = layers.ConvBN(2 * self.width, 3, stride=stride, rate=rate, norm=self.norm,
                      dtype=self.dtype, name="conv3")(low)
    return x, {backbones.LOW_LEVEL: low, backbones.AUX: x}


backbones.register("toy_test_backbone", ToyBackbone)


@pytest.mark.parametrize("model_name", ["deeplab_v3", "deeplab_v3plus"])
def test_a_backbone_defined_in_a_test_trains_with_aspp_and_decoder(model_name, tmp_path):
  config = train_configs.tiny_config(str(tmp_path / "data"), total_steps=3)
  config.model = models.default_config(
      model_name, backbone=backbones.config("toy_test_backbone", width=6), num_classes=5,
      output_stride=8, aspp_features=8, aspp_dropout=0.0, align_corners=True,
      **({"decoder_low_level_features": 4, "decoder_features": 8}
         if model_name == "deeplab_v3plus" else {}))
  config.checkpoint_every_steps = 3
  config.eval_every_steps = 3
  config.num_eval_images_to_save = 0
  history = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert history["step"] == 3
  assert all(np.isfinite(r["loss"]) for r in history["train"])
  assert 0.0 <= history["eval"][-1]["miou"] <= 1.0
  from deeplax import inference  # pylint: disable=g-import-not-at-top
  run_config, variables = inference.load_model(str(tmp_path / "run"))
  assert run_config.model.backbone.to_dict() == {"name": "toy_test_backbone", "width": 6}
  assert variables["params"]["backbone"]["conv3"]["conv"]["kernel"].shape == (3, 3, 6, 12)
  if model_name == "deeplab_v3plus":
    assert variables["params"]["decoder"]["low_level_projection"]["conv"]["kernel"].shape == (
        1, 1, 6, 4)
  else:
    assert "aspp" in variables["params"]


def test_backbone_config_lists_its_options():
  assert backbones.config("resnet101").to_dict() == {
      "name": "resnet101", "layout": "slim", "multi_grid": None, "num_cascaded_blocks": 0}
  assert backbones.config("xception65").to_dict() == {"name": "xception65"}
  assert set(backbones.config("vgg16")) == {"name", "stage_widths"}
  assert {"resnet50", "resnet101", "xception65", "vgg16"} <= set(backbones.names())
  with pytest.raises(ValueError, match="already registered to ToyBackbone"):
    backbones.register("toy_test_backbone", vgg.VGG16)
  with pytest.raises(ValueError, match=r"\['depth'\] are not fields of ToyBackbone"):
    backbones.register("toy_2", ToyBackbone, depth=3)


def _build_error(config):
  with pytest.raises(ValueError) as e:
    models.build(config)
  return str(e.value)


def test_unknown_and_mistyped_keys_name_the_key_and_the_valid_ones():
  config = deeplab.model_config(backbone="resnet_tiny")
  config.aspp_ratez = (6, 12, 18)
  message = _build_error(config)
  assert "unknown key 'aspp_ratez' in config.model (deeplab_v3)" in message
  assert "valid keys: align_corners, aspp_dropout, aspp_features" in message and "head" in message

  config = deeplab.model_config(backbone="resnet_tiny")
  config.multi_grid = (1, 2, 4)          # a backbone option at the top
  message = _build_error(config)
  assert "unknown key 'multi_grid' in config.model (deeplab_v3)" in message
  assert "an option of the backbone: config.model.backbone.multi_grid" in message

  config = deeplab.model_config(backbone="resnet_tiny")
  config.backbone.multigrid = (1, 2, 4)
  message = _build_error(config)
  assert ("unknown key 'multigrid' in config.model.backbone (resnet_tiny); valid keys: layout, "
          "multi_grid, num_cascaded_blocks") in message

  config = deeplab_v3plus.model_config(backbone="xception_tiny")
  config.backbone.layout = "slim"        # a ResNet option on an Xception
  message = _build_error(config)
  assert "unknown key 'layout' in config.model.backbone (xception_tiny); valid keys: (none)" in message
  assert "set config.model.backbone = backbones.config('xception_tiny', ...)" in message
  config = deeplab.model_config(backbone="resnet_tiny")
  config.resnet_layout = "torchvision"
  assert "config.model.backbone.layout, if backbone 'resnet_tiny' has it" in _build_error(config)

  for key, value, expected in (("aspp_features", "256", "int"), ("aspp_image_pooling", 1, "bool"),
                               ("aspp_rates", (6, 12.5, 18), "Sequence[int]"),
                               ("bn_momentum", "0.9", "float")):
    config = ml_collections.ConfigDict(    # as read from JSON or a dict: no ConfigDict type check
        {**deeplab.model_config(backbone="resnet_tiny").to_dict(), key: value})
    assert (f"config.model (deeplab_v3).{key} = {value!r} ({type(value).__name__}) does not fit "
            f"its type {expected}") in _build_error(config)
  config = ml_collections.ConfigDict(deeplab.model_config(backbone="resnet_tiny").to_dict(),
                                    type_safe=False)
  config.backbone.num_cascaded_blocks = 1.0
  assert "config.model.backbone (resnet_tiny).num_cascaded_blocks = 1.0" in _build_error(config)


def test_built_fields_are_the_config_values():
  config = deeplab.model_config(backbone=backbones.config("resnet_tiny", multi_grid=[1, 2, 4]),
                                aspp_rates=[3, 6], bn_momentum=1)
  model = models.build(config)
  assert model.aspp_rates == (3, 6) and model.bn_momentum == 1.0
  assert isinstance(model.bn_momentum, float)
  assert model.backbone.keywords["multi_grid"] == (1, 2, 4)


def _filled(model_config):
  """A config.model with every default filled in, as plain JSON."""
  full = models.default_config(model_config["name"]).to_dict()
  backbone = dict(model_config.get("backbone", {}))
  full.update({k: v for k, v in model_config.items() if k != "backbone"})
  full["backbone"] = {**backbones.config(backbone["name"]).to_dict(), **backbone}
  return json.loads(json.dumps(full))


def test_every_legacy_paper_config_upgrades_to_todays():
  """config.model of every paper config as commit 1b78b68 wrote it (flat backbone options) reads
  as today's config of the same file, defaults filled in, with the changes reported."""
  with open(LEGACY_CONFIGS) as f:
    legacy = json.load(f)
  assert sorted(legacy) == sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                                 if f.endswith(".py"))
  for filename, old in legacy.items():
    upgraded, changes = models.upgrade_config(ml_collections.ConfigDict(old), report=False)
    assert changes and changes[0].endswith("-> backbone.name"), filename
    today = load_config_file(os.path.join(ROOT, "configs", filename)).model
    assert _filled(upgraded.to_dict()) == _filled(today.to_dict()), filename
    again, no_changes = models.upgrade_config(upgraded, report=False)
    assert no_changes == [] and again is upgraded


def test_upgrade_reports_what_it_did():
  with open(LEGACY_CONFIGS) as f:
    old = json.load(f)["deeplab_v3_block7.py"]
  upgraded, changes = models.upgrade_config(ml_collections.ConfigDict(old), report=False)
  assert changes == ["backbone 'resnet101' -> backbone.name", "resnet_layout -> backbone.layout",
                     "multi_grid -> backbone.multi_grid",
                     "num_cascaded_blocks -> backbone.num_cascaded_blocks",
                     "aspp=False -> head='conv'"]
  assert upgraded.head == "conv" and upgraded.backbone.num_cascaded_blocks == 3


def test_legacy_config_builds_the_same_model_as_todays():
  """Same variables and the same logits from the old and the new form of a tiny config."""
  today = deeplab.model_config(backbone=backbones.config("resnet_tiny", multi_grid=(1, 2, 4)),
                               num_classes=3, aspp_features=8, head_extra_conv=True)
  old = {k: v for k, v in today.to_dict().items() if k not in ("backbone", "head")}
  old.update(backbone="resnet_tiny", resnet_layout="slim", multi_grid=(1, 2, 4),
             num_cascaded_blocks=0, aspp=True, aspp_v2_features=0)
  x = jax.random.normal(jax.random.key(1), (1, 33, 33, 3))
  new_model, old_model = models.build(today), models.build(ml_collections.ConfigDict(old))
  variables = new_model.init(jax.random.key(0), x)
  assert jax.tree.structure(variables) == jax.tree.structure(old_model.init(jax.random.key(0), x))
  np.testing.assert_array_equal(new_model.apply(variables, x), old_model.apply(variables, x))


VARIABLE_TREES = os.path.join(ROOT, "tests", "fixtures", "variable_trees_1b78b68.json")


def test_every_paper_config_builds_the_variable_tree_of_before():
  """Per paper config, the variables (paths and shapes, 65x65 input) that commit 1b78b68 built:
  leaf count, parameter count and a SHA-256 of the sorted 'path shape' lines."""
  import hashlib  # pylint: disable=g-import-not-at-top
  with open(VARIABLE_TREES) as f:
    expected = json.load(f)
  assert len(expected) == 11
  for filename, want in expected.items():
    model = models.build(load_config_file(os.path.join(ROOT, "configs", filename)).model)
    variables = jax.eval_shape(
        lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 65, 65, 3)), train=False))
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): tuple(x.shape)
            for path, x in jax.tree_util.tree_leaves_with_path(variables)}
    lines = "\n".join(f"{p} {s}" for p, s in sorted(flat.items()))
    got = {"leaves": len(flat), "params": models.param_count(variables["params"]),
           "sha256": hashlib.sha256(lines.encode()).hexdigest()}
    assert got == want, filename


def test_v2_branch_width_none_or_zero_is_one_conv_per_branch():
  """aspp_v2_features None (today) or 0 (configs of deeplax <= 1b78b68): one 3x3 conv per branch."""
  x = jnp.zeros((1, 33, 33, 3))
  for width in (None, 0):
    model = models.build(deeplab.model_config("deeplab_v2", backbone="resnet_tiny",
                                              aspp_v2_features=width, num_classes=3))
    params = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), x))["params"]
    assert sorted(params["aspp"]["branch0"]) == ["conv"]
  with pytest.raises(ValueError, match="unknown key 'head' in DeepLab options"):
    deeplab.model_config("deeplab_v2", head="aspp")     # deeplab_v2 fixes its head
