"""DeepLab v1 on VGG-16 (v2 §3.1, §4.1, Table 1, Fig. 7), aligned Xception-65 and DeepLabv3+.

The real configs run through jax.eval_shape / jax.make_jaxpr only (shapes, layer strides and rates,
no compute); real compute uses narrow VGG stages, 'xception_tiny' and 'resnet_tiny'. Inits use the
'rbg' PRNG (same init functions, faster to compile on CPU).
"""

import functools
import importlib.util
import pathlib
from unittest import mock

import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from deeplax import layers
from deeplax import ops
from deeplax import models
from deeplax.cli import load_config_file
from deeplax.models import param_count
from deeplax.models import aspp as aspp_lib
from deeplax.models import backbones
from deeplax.models import deeplab_v3plus
from deeplax.models import vgg
from deeplax.models import xception

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIGS = ("deeplab_v1_largefov", "deeplab_v3plus_xception65")
OUTPUT_STRIDES = (8, 16, 32)
SIZES = (65, 64)
SMALL_SIZES = {8: (33,), 16: (33, 32), 32: (32,)}  # real compute: odd and even sizes
TINY_STAGES = ((4, 4), (8, 8), (8, 8, 8), (16, 16, 16), (16, 16, 16))
TINY_V3PLUS = dict(backbone="xception_tiny", aspp_features=16, decoder_low_level_features=8,
                   decoder_features=16, num_classes=5)


def rng(seed=0):
  return jax.random.key(seed, impl="rbg")


def load_config(name):
  return load_config_file(str(CONFIG_DIR / f"{name}.py"))


def with_fields(cfg, **fields):
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.update(fields)
  return cfg


def tree_shapes(tree):
  return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)


def shape_init(model, size, batch=2):
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(rng(), x, train=False), images)


def conv_eqns(jaxpr):
  """Every conv_general_dilated in a (closed) jaxpr, sub-jaxprs included, as dicts."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      found.append(dict(lhs=tuple(eqn.invars[0].aval.shape), rhs=tuple(eqn.invars[1].aval.shape),
                        dilation=tuple(eqn.params["rhs_dilation"]),
                        strides=tuple(eqn.params["window_strides"]),
                        padding=tuple(tuple(p) for p in eqn.params["padding"]),
                        groups=eqn.params["feature_group_count"]))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
          found += conv_eqns(sub)
  return found


def traced_convs(model, variables, size):
  """The model's convolutions as traced with the canonical kernels (1x1 ones included: the XLA-CPU
  kernels lower those to a matmul)."""
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  with ops.use_kernels("canonical"):
    return conv_eqns(jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, images))


def tiny_v1(**fields):
  return models.build(vgg.model_config(backbone=backbones.config("vgg16", stage_widths=TINY_STAGES),
                                       fc_features=16, num_classes=5, **fields))


def tiny_v3plus(**fields):
  return models.build(deeplab_v3plus.model_config(**{**TINY_V3PLUS, **fields}))


@functools.lru_cache(maxsize=None)
def jit_init(model, size=33):
  return jax.jit(lambda x: model.init(rng(), x, train=False))(jnp.zeros((1, size, size, 3)))


def forward(model, variables, x, **kwargs):
  """model.apply under jit (one compile beats op-by-op dispatch of a whole network on CPU)."""
  return jax.jit(functools.partial(model.apply, **kwargs))(variables, x)


def primitive_names(jaxpr):
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  names = []
  for eqn in jaxpr.eqns:
    names.append(eqn.primitive.name)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
          names += primitive_names(sub)
  return names


def images(size, batch=1, seed=1):
  return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3), minval=-1.0, maxval=1.0)


# ---- The paper configs: shapes and variable tree at every output_stride and input size. --------

@pytest.fixture(scope="module")
def config_variables():
  """(config, output_stride) -> abstract variables of the real config (eval_shape, no compute)."""
  out = {}
  for name in CONFIGS:
    for os_ in OUTPUT_STRIDES:
      model = models.build(with_fields(load_config(name).model, output_stride=os_))
      out[name, os_] = shape_init(model, 65)
  return out


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
@pytest.mark.parametrize("size", SIZES)
def test_configs_logits_shape(name, output_stride, size, config_variables):
  cfg = load_config(name).model
  cfg.output_stride = output_stride
  model = models.build(cfg)
  variables = config_variables[name, output_stride]
  images_ = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  logits, features = jax.eval_shape(
      lambda v, x: model.apply(v, x, return_features=True), variables, images_)
  assert logits.shape == (2, size, size, 21) and logits.dtype == jnp.float32
  stride = output_stride if name == "deeplab_v1_largefov" else 4  # v3+: the decoder's stride 4
  low = -(-size // stride)
  assert features["logits_lowres"].shape == (2, low, low, 21)


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_variable_tree_independent_of_output_stride(name, config_variables):
  trees = [tree_shapes(config_variables[name, os_]) for os_ in OUTPUT_STRIDES]
  assert trees[0] == trees[1] == trees[2]
  counts = {param_count(config_variables[name, os_]) for os_ in OUTPUT_STRIDES}
  assert len(counts) == 1


def test_config_docstrings_and_fields():
  for name in CONFIGS:
    module_spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    command = f"python -m deeplax.main --config=configs/{name}.py --workdir=/tmp/{name}"
    assert command in module.__doc__
    assert "Table" in module.__doc__
  v1 = load_config("deeplab_v1_largefov").model
  assert (v1.fc6_kernel_size, tuple(v1.fc6_rates), v1.fc_features) == (3, (12,), 1024)
  assert v1.output_stride == 8
  v3p = load_config("deeplab_v3plus_xception65").model
  assert (v3p.backbone.name, v3p.output_stride, tuple(v3p.aspp_rates)) == ("xception65", 16,
                                                                        (6, 12, 18))
  assert (v3p.decoder_low_level_features, v3p.decoder_features) == (48, 256)


# ---- DeepLab v1 on VGG-16. ---------------------------------------------------------------------

def test_vgg16_conv_layers_have_standard_parameter_count(config_variables):
  params = config_variables["deeplab_v1_largefov", 8]["params"]
  assert set(params) == {"backbone", "head"}  # no batch_stats: VGG-16 has no batch norm
  assert set(config_variables["deeplab_v1_largefov", 8]) == {"params"}
  names = [conv for stage in params["backbone"].values() for conv in stage]
  assert names == [f"conv{s}_{i}" for s, n in zip(range(1, 6), (2, 2, 3, 3, 3))
                   for i in range(1, n + 1)]
  assert param_count(params["backbone"]) == 14_714_688
  assert params["backbone"]["stage5"]["conv5_3"]["kernel"].shape == (3, 3, 512, 512)
  assert params["backbone"]["stage5"]["conv5_3"]["bias"].shape == (512,)


# v2 Table 1: parameter counts in millions (21 classes).
TABLE1_MPARAMS = {"7x7_r4": 134.3, "4x4_r4": 65.1, "4x4_r8": 65.1, "largefov": 20.5}


@pytest.mark.parametrize("variant", sorted(vgg.TABLE1_FC6_VARIANTS))
def test_table1_fc6_variants(variant):
  kernel, rate, width = vgg.TABLE1_FC6_VARIANTS[variant]
  model = models.build(vgg.table1_config(variant))
  variables = shape_init(model, 65, batch=1)
  head = variables["params"]["head"]
  assert head["fc6"]["kernel"].shape == (kernel, kernel, 512, width)
  assert head["fc7"]["kernel"].shape == (1, 1, width, width)
  assert head["fc8"]["kernel"].shape == (1, 1, width, 21)
  assert round(param_count(variables) / 1e6, 1) == TABLE1_MPARAMS[variant]
  # The traced fc6 conv runs at the configured rate (output stride 8) with size-preserving padding.
  fc6 = [c for c in traced_convs(model, variables, 65) if c["rhs"] == (kernel, kernel, 512, width)]
  assert len(fc6) == 1
  k_eff = kernel + (kernel - 1) * (rate - 1)
  total = k_eff - 1
  assert fc6[0]["dilation"] == (rate, rate)
  assert fc6[0]["padding"] == ((total // 2, total - total // 2),) * 2
  assert fc6[0]["lhs"][1:3] == (9, 9)


@pytest.mark.parametrize("output_stride,pool_strides,conv5_rate,fc6_rate",
                         [(8, (2, 2, 2, 1, 1), 2, 12), (16, (2, 2, 2, 2, 1), 1, 6),
                          (32, (2, 2, 2, 2, 2), 1, 3)])
def test_vgg_output_stride_rule(output_stride, pool_strides, conv5_rate, fc6_rate,
                                config_variables):
  assert vgg.pool_strides(output_stride) == pool_strides
  model = models.build(with_fields(load_config("deeplab_v1_largefov").model,
                                   output_stride=output_stride))
  convs = traced_convs(model, config_variables["deeplab_v1_largefov", output_stride], 65)
  assert len(convs) == 13 + 3
  conv4 = convs[7:10]
  conv5 = convs[10:13]
  assert all(c["dilation"] == (1, 1) for c in conv4)
  assert all(c["dilation"] == (conv5_rate, conv5_rate) for c in conv5)
  assert all(c["strides"] == (1, 1) for c in convs)  # pools carry the strides, convs never
  assert convs[13]["dilation"] == (fc6_rate, fc6_rate)
  sizes = [65]
  for s in pool_strides:
    sizes.append(-(-sizes[-1] // s))
  assert conv5[0]["lhs"][1] == sizes[4]


def test_vgg_even_kernel_padding_at_rate_1():
  """4x4 r=4 at output stride 32 runs at rate 1: padding (1, 2), the extra pixel after."""
  model = models.build(vgg.table1_config("4x4_r4", output_stride=32))
  variables = shape_init(model, 64, batch=1)
  fc6 = [c for c in traced_convs(model, variables, 64) if c["rhs"][:2] == (4, 4)]
  assert fc6[0]["dilation"] == (1, 1) and fc6[0]["padding"] == ((1, 2), (1, 2))
  assert fc6[0]["lhs"][1:3] == (2, 2)


def test_vgg_fc6_rate_must_scale_to_integer():
  assert [aspp_lib.scale_rates((12,), os_, vgg.PAPER_OUTPUT_STRIDE)
          for os_ in OUTPUT_STRIDES] == [(12,), (6,), (3,)]
  model = models.build(vgg.model_config(fc6_rates=aspp_lib.ASPP_S_RATES, output_stride=32))
  with pytest.raises(ValueError, match="atrous rate 2 .* output_stride 32"):
    shape_init(model, 65)
  with pytest.raises(ValueError, match="3x3 fc6"):
    shape_init(models.build(vgg.model_config(fc6_rates=(4, 8), fc6_kernel_size=4)), 65)


def test_vgg_aspp_l_branches():
  """v2 Fig. 7: four fc6-fc7-fc8 branches (3x3, 1024), rates (6, 12, 18, 24), scores summed."""
  model = models.build(vgg.model_config(fc6_rates=aspp_lib.ASPP_L_RATES))
  variables = shape_init(model, 65, batch=1)
  branches = variables["params"]["aspp"]
  assert sorted(branches) == [f"branch{i}" for i in range(4)]
  for branch in branches.values():
    assert branch["fc6"]["kernel"].shape == (3, 3, 512, 1024)
    assert branch["fc8"]["kernel"].shape == (1, 1, 1024, 21)
  fc6 = [c for c in traced_convs(model, variables, 65) if c["rhs"] == (3, 3, 512, 1024)]
  assert [c["dilation"][0] for c in fc6] == list(aspp_lib.ASPP_L_RATES)


@pytest.fixture(scope="module")
def v1_tiny_variables():
  return jit_init(tiny_v1(output_stride=16))


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
def test_v1_tiny_compute_at_every_output_stride(output_stride, v1_tiny_variables):
  """Variables initialised at output stride 16 run at 8, 16 and 32 (sizes 33 and 32)."""
  model = tiny_v1(output_stride=output_stride)
  for size in SMALL_SIZES[output_stride]:
    logits, features = forward(model, v1_tiny_variables, images(size), return_features=True)
    assert logits.shape == (1, size, size, 5) and logits.dtype == jnp.float32
    assert features["logits_lowres"].shape[1] == -(-size // output_stride)
    assert np.isfinite(np.asarray(logits)).all()


def test_v1_aspp_sums_branch_scores():
  model = tiny_v1(fc6_rates=(2, 4))
  variables = jit_init(model)
  x = images(33)
  backbone = variables["params"]["backbone"]
  # Each branch through a one-rate model at its rate: the ASPP model returns the sum of the scores.
  branches = [tiny_v1(fc6_rates=(rate,)).apply(
      {"params": {"backbone": backbone, "head": variables["params"]["aspp"][f"branch{i}"]}}, x)
              for i, rate in enumerate((2, 4))]
  np.testing.assert_allclose(model.apply(variables, x), branches[0] + branches[1], rtol=1e-5,
                             atol=1e-5)


def test_v1_train_mode_dropout(v1_tiny_variables):
  model = tiny_v1(output_stride=16)
  x = images(33)
  run = lambda key: model.apply(v1_tiny_variables, x, train=True, mutable=["batch_stats"],
                                rngs={"dropout": key})
  (a, mutated), (b, _) = run(jax.random.key(1)), run(jax.random.key(2))
  assert not mutated.get("batch_stats")
  assert a.shape == (1, 33, 33, 5) and not np.allclose(a, b)
  eval_logits = model.apply(v1_tiny_variables, x)
  np.testing.assert_array_equal(eval_logits, model.apply(v1_tiny_variables, x))


# ---- Aligned Xception-65. ----------------------------------------------------------------------

def test_xception65_structure(config_variables):
  params = config_variables["deeplab_v3plus_xception65", 16]["params"]["backbone"]
  blocks = [k for k in params if "block" in k]
  assert len([b for b in blocks if b.startswith("middle_block")]) == 16
  assert blocks[:3] == ["entry_block1", "entry_block2", "entry_block3"]
  assert params["conv1_1"]["conv"]["kernel"].shape == (3, 3, 3, 32)
  assert params["conv1_2"]["conv"]["kernel"].shape == (3, 3, 32, 64)
  for name, depth, shortcut in (("entry_block1", 128, True), ("entry_block2", 256, True),
                                ("entry_block3", 728, True), ("middle_block16", 728, False),
                                ("exit_block1", 1024, True), ("exit_block2", 2048, False)):
    assert params[name]["separable_conv3"]["pointwise"]["kernel"].shape[-1] == depth
    assert ("shortcut" in params[name]) == shortcut
    assert params[name]["separable_conv1"]["depthwise"]["kernel"].shape[:3] == (3, 3, 1)
    assert "depthwise_bn" in params[name]["separable_conv1"]
  assert params["exit_block1"]["shortcut"]["kernel"].shape == (1, 1, 728, 1024)
  assert params["exit_block2"]["separable_conv2"]["pointwise"]["kernel"].shape == (1, 1, 1536, 1536)
  # timm's aligned 'xception65' lists 39.92M parameters with its 1000-class fc (2048*1000 + 1000).
  assert param_count(params) == 39_916_312 - 2_049_000


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
def test_xception_output_stride_rule(output_stride):
  """Blocks past `output_stride` run with stride 1; the rate doubles after each skipped stride."""
  model = tiny_v3plus(output_stride=output_stride)
  variables = shape_init(model, 65, batch=1)
  convs = [c for c in traced_convs(model, variables, 65) if c["groups"] > 1]
  # Backbone depthwise convs in order: entry 3x3 blocks, middle 2x3, exit 2x3; then ASPP, decoder.
  backbone = convs[:9 + 6 + 6]
  rates = [c["dilation"][0] for c in backbone]
  strides = [c["strides"][0] for c in backbone]
  entry3_stride, exit1_stride = {8: (1, 1), 16: (2, 1), 32: (2, 2)}[output_stride]
  middle_rate = {8: 2, 16: 1, 32: 1}[output_stride]
  exit2_rate = {8: 4, 16: 2, 32: 1}[output_stride]
  assert strides[:9] == [1, 1, 2, 1, 1, 2, 1, 1, entry3_stride]
  assert rates[9:15] == [middle_rate] * 6
  assert strides[15:18] == [1, 1, exit1_stride] and rates[15:18] == [middle_rate] * 3
  assert rates[18:21] == [exit2_rate] * 3
  # ASPP separable branches: (6, 12, 18) at 16, doubled at 8, halved at 32.
  aspp = [c["dilation"][0] for c in convs[21:24]]
  assert aspp == [r * 16 // output_stride for r in (6, 12, 18)]


@pytest.mark.parametrize("skip,stride,activation_in_separable,relus",
                         [("conv", 2, False, 3), ("sum", 1, False, 3), ("none", 2, True, 6)])
def test_xception_block_activation_placement(skip, stride, activation_in_separable, relus,
                                             monkeypatch):
  """Pre-activation blocks: one ReLU before each separable conv; the last exit block: after the
  depthwise and the pointwise BN. Shortcut: 1x1 conv + BN ('conv'), identity ('sum') or none."""
  calls = []
  relu = layers.relu
  monkeypatch.setattr(layers, "relu", lambda x: calls.append(x.shape) or relu(x))
  block = xception.XceptionBlock((8, 8, 8), stride=stride, skip=skip,
                                 activation_in_separable=activation_in_separable,
                                 norm=layers.norm_factory(False))
  x = jax.ShapeDtypeStruct((1, 9, 9, 8), jnp.float32)
  variables = jax.eval_shape(lambda x: block.init(rng(), x), x)
  calls.clear()
  jax.make_jaxpr(lambda v, x: block.apply(v, x))(variables, x)
  assert len(calls) == relus
  assert ("shortcut" in variables["params"]) == (skip == "conv")
  out, second = jax.eval_shape(block.apply, variables, x)
  assert out.shape == (1, -(-9 // stride), -(-9 // stride), 8)
  assert second.shape == (1, 9, 9, 8)
  if skip == "sum":
    bad = xception.XceptionBlock((8, 8, 8), stride=2, skip="sum", norm=layers.norm_factory(False))
    with pytest.raises(ValueError, match="identity .* needs stride 1"):
      jax.eval_shape(lambda x: bad.init(rng(), x), x)


def test_xception_endpoints_strides():
  model = tiny_v3plus(output_stride=8)
  variables = shape_init(model, 65, batch=1)
  _, features = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), variables,
                               jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32))
  assert features["low_level"].shape == (1, 17, 17, 24)       # entry block2, 2nd separable conv
  assert features["entry_flow"].shape == (1, 9, 9, 32)
  assert features["exit_flow"].shape == (1, 9, 9, 96)
  with pytest.raises(ValueError, match="unknown Xception backbone"):
    xception.xception("xception71")


# ---- DeepLabv3+. -------------------------------------------------------------------------------

def test_v3plus_decoder_and_separable_convs(config_variables):
  params = config_variables["deeplab_v3plus_xception65", 16]["params"]
  decoder = params["decoder"]
  assert decoder["low_level_projection"]["conv"]["kernel"].shape == (1, 1, 256, 48)
  assert decoder["decoder_conv0"]["depthwise"]["kernel"].shape == (3, 3, 1, 256 + 48)
  assert decoder["decoder_conv0"]["pointwise"]["kernel"].shape == (1, 1, 304, 256)
  assert decoder["decoder_conv1"]["depthwise"]["kernel"].shape == (3, 3, 1, 256)
  for i in (1, 2, 3):
    assert params["aspp"][f"aspp{i}"]["depthwise"]["kernel"].shape == (3, 3, 1, 2048)
    assert params["aspp"][f"aspp{i}"]["pointwise"]["kernel"].shape == (1, 1, 2048, 256)
  assert params["aspp"]["image_pooling"]["conv"]["kernel"].shape == (1, 1, 2048, 256)
  assert params["logits"]["kernel"].shape == (1, 1, 256, 21)
  # The traced depthwise convs are grouped convolutions (feature_group_count = channels).
  model = models.build(load_config("deeplab_v3plus_xception65").model)
  convs = traced_convs(model, config_variables["deeplab_v3plus_xception65", 16], 65)
  grouped = [(c["groups"], c["rhs"][-1], c["dilation"][0]) for c in convs if c["groups"] > 1]
  assert grouped[-5:] == [(2048, 2048, 6), (2048, 2048, 12), (2048, 2048, 18), (304, 304, 1),
                          (256, 256, 1)]


def test_v3plus_resnet_backbones():
  for backbone, layout, low_channels in (("resnet101", "slim", 256),
                                         ("resnet50", "torchvision", 256)):
    model = models.build(deeplab_v3plus.model_config(
        backbone=backbones.config(backbone, layout=layout)))
    variables = shape_init(model, 65, batch=1)
    assert variables["params"]["decoder"]["low_level_projection"]["conv"]["kernel"].shape == (
        1, 1, low_channels, 48)
    images_ = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
    logits = jax.eval_shape(model.apply, variables, images_)
    assert logits.shape == (1, 65, 65, 21)


@pytest.fixture(scope="module")
def v3plus_tiny_variables():
  return jit_init(tiny_v3plus(output_stride=16))


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
def test_v3plus_tiny_compute_at_every_output_stride(output_stride, v3plus_tiny_variables):
  model = tiny_v3plus(output_stride=output_stride)
  for size in SMALL_SIZES[output_stride]:
    logits, features = forward(model, v3plus_tiny_variables, images(size), return_features=True)
    assert logits.shape == (1, size, size, 5) and logits.dtype == jnp.float32
    assert features["logits_lowres"].shape[1] == -(-size // 4)
    assert features["aspp"].shape[1] == -(-size // output_stride)
    assert np.isfinite(np.asarray(logits)).all()


def test_v3plus_resnet_tiny_compute():
  """ResNet backbone, torchvision layout: low_level = block1 output (stride 4)."""
  model = tiny_v3plus(backbone=backbones.config("resnet_tiny", layout="torchvision"),
                      output_stride=8)
  variables = jit_init(model)
  logits, features = forward(model, variables, images(33), return_features=True)
  assert logits.shape == (1, 33, 33, 5)
  np.testing.assert_array_equal(features["low_level"], features["block1"])
  assert features["low_level"].shape == (1, 9, 9, 16)
  assert np.isfinite(np.asarray(logits)).all()


def test_v3plus_train_mode_updates_batch_stats(v3plus_tiny_variables):
  model = tiny_v3plus(output_stride=16)
  run = lambda m: jax.jit(lambda v, x, key: m.apply(v, x, train=True, mutable=["batch_stats"],
                                                    rngs={"dropout": key}))
  logits, mutated = run(model)(v3plus_tiny_variables, images(33, batch=2), jax.random.key(0))
  assert logits.shape == (2, 33, 33, 5)
  before, after = v3plus_tiny_variables["batch_stats"], mutated["batch_stats"]
  assert jax.tree.structure(before) == jax.tree.structure(after)
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after))
  assert all(changed)
  frozen = tiny_v3plus(output_stride=16, freeze_bn=True)
  _, mutated = run(frozen)(v3plus_tiny_variables, images(33, batch=2), jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, before, mutated["batch_stats"])


# ---- dtype, remat, bad input. ------------------------------------------------------------------

@pytest.mark.parametrize("build", [tiny_v1, tiny_v3plus], ids=["v1", "v3plus"])
def test_bfloat16_compute_float32_params(build):
  f32 = build()
  variables = jit_init(f32)
  bf16 = build(dtype="bfloat16")
  assert tree_shapes(shape_init(bf16, 33, batch=1)) == tree_shapes(variables)  # float32 params
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  x = images(33)
  logits, features = forward(bf16, variables, x, return_features=True)
  assert logits.dtype == jnp.float32 and features["logits_lowres"].dtype == jnp.float32
  inner = features["pool5"] if "pool5" in features else features["decoder"]
  assert inner.dtype == jnp.bfloat16
  reference = forward(f32, variables, x)
  scale = float(jnp.max(jnp.abs(reference)))
  assert float(jnp.max(jnp.abs(logits - reference))) < 0.05 * scale + 1e-3


@pytest.mark.parametrize("build", [tiny_v1, tiny_v3plus], ids=["v1", "v3plus"])
def test_remat_same_tree_and_outputs(build):
  plain, remat = build(), build(remat=True)
  variables = jit_init(plain)
  assert tree_shapes(shape_init(remat, 33, batch=1)) == tree_shapes(variables)
  x = images(33)
  np.testing.assert_allclose(forward(remat, variables, x), forward(plain, variables, x), rtol=1e-5,
                             atol=1e-5)
  loss = lambda m: lambda p: jnp.mean(m.apply({**variables, "params": p}, x) ** 2)
  # One checkpointed region per backbone unit (5 VGG stages; 3 + 2 + 2 Xception blocks).
  checkpoints = lambda m: sum(n in ("checkpoint", "remat", "remat2") for n in primitive_names(
      jax.make_jaxpr(jax.grad(loss(m)))(variables["params"])))
  assert checkpoints(remat) == (5 if build is tiny_v1 else 7)
  assert checkpoints(plain) == 0
  if build is tiny_v1:  # gradients agree (the cheaper model; the mechanism is the same)
    g_plain = jax.jit(jax.grad(loss(plain)))(variables["params"])
    g_remat = jax.jit(jax.grad(loss(remat)))(variables["params"])
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6), g_remat,
                 g_plain)


@pytest.mark.parametrize("build", [tiny_v1, tiny_v3plus], ids=["v1", "v3plus"])
def test_bad_input_errors(build):
  model = build()
  variables = jit_init(model)
  with pytest.raises(ValueError, match="4-D"):
    model.apply(variables, jnp.zeros((33, 33, 3)))
  with pytest.raises(ValueError, match="3 channels"):
    model.apply(variables, jnp.zeros((1, 33, 33, 4)))
  with pytest.raises(ValueError, match="unsupported output_stride 4"):
    build(output_stride=4).apply(variables, jnp.zeros((1, 33, 33, 3)))


def test_bad_config_errors():
  config = vgg.model_config()
  config.fc6_rate = 12
  with pytest.raises(ValueError, match=r"unknown key 'fc6_rate' in config.model \(deeplab_v1\); "
                     r"valid keys: .*fc6_rates"):
    models.build(config)
  with pytest.raises(ValueError, match="unknown key 'fc6_rate' in DeepLabV1 options"):
    vgg.model_config(fc6_rate=12)
  with pytest.raises(ValueError, match="unknown backbone 'xception71'"):
    deeplab_v3plus.model_config(backbone="xception71")
  config = deeplab_v3plus.model_config()
  config.decoder_width = 256
  with pytest.raises(ValueError, match="unknown key 'decoder_width' in config.model"):
    models.build(config)
  with pytest.raises(ValueError, match="config.model.dtype"):
    models.build(deeplab_v3plus.model_config(dtype="float64"))
  with pytest.raises(ValueError, match="unknown Table 1 variant"):
    vgg.table1_config("5x5_r4")
