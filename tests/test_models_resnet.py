"""DeepLab v2/v3 on ResNet: backbones, output_stride, Multi-Grid, cascaded blocks, ASPP, configs.

Real ResNet-101 configs run through jax.eval_shape only (shapes, no compute); real compute uses the
same configs with backbone='resnet_tiny'. Inits use the 'rbg' PRNG: same init functions, several
times faster to compile on CPU than threefry.
"""

import functools
import pathlib

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from deeplax import atrous
from deeplax import models
from deeplax.cli import load_config_file
from deeplax.models import param_count
from deeplax.models import aspp as aspp_lib
from deeplax.models import backbones
from deeplax.models import deeplab
from deeplax.models import resnet

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIGS = ("deeplab_v2_aspp_l", "deeplab_v3_block7", "deeplab_v3_aspp")
SIZES = (64, 65)
OUTPUT_STRIDES = (8, 16, 32)


def rng(seed=0):
  return jax.random.key(seed, impl="rbg")


def load_config(name):
  return load_config_file(str(CONFIG_DIR / f"{name}.py"))


def tree_shapes(tree):
  return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)


@functools.lru_cache(maxsize=None)
def jit_init(model, size=33):
  return jax.jit(lambda x: model.init(rng(), x, train=False))(jnp.zeros((1, size, size, 3)))


def tiny_model(layout="slim", num_cascaded_blocks=0, multi_grid=None, **overrides):
  backbone = backbones.config("resnet_tiny", layout=layout, multi_grid=multi_grid,
                              num_cascaded_blocks=num_cascaded_blocks)
  return models.build(deeplab.model_config(backbone=backbone, **overrides))


@pytest.fixture(scope="module")
def tiny_variables():
  """Variables of every config with backbone='resnet_tiny', initialised once."""
  out = {}
  for name in CONFIGS:
    cfg = load_config(name).model
    cfg.backbone.name = "resnet_tiny"
    out[name] = jit_init(models.build(cfg))
  return out


# ---- Every paper config: shapes at each output_stride and input size. -------------------------

def output_strides(model_cfg):
  """The output strides the config's ASPP rates scale to exactly (`aspp.scale_rates`): v2's
  ASPP-L (6, 12, 18, 24) at OS 8 has no OS 32 form (r=6 would be 1.5), which must raise."""
  if model_cfg.name != "deeplab_v2":
    return OUTPUT_STRIDES
  cfg = ml_collections.ConfigDict(model_cfg.to_dict())
  cfg.output_stride = 32
  with pytest.raises(ValueError, match="does not scale to an integer rate at output_stride 32"):
    models.build(cfg).init(rng(), jnp.zeros((1, 33, 33, 3)))
  return (8, 16)


@pytest.mark.parametrize("name", CONFIGS)
def test_resnet101_configs_shapes_and_tree_independent_of_output_stride(name):
  cfg = load_config(name)
  assert cfg.model.backbone.name == "resnet101"
  trees, counts = {}, {}
  for os in output_strides(cfg.model):
    cfg.model.output_stride = os
    model = models.build(cfg.model)
    variables = jax.eval_shape(lambda: model.init(rng(), jnp.zeros((1, 65, 65, 3))))
    trees[os] = tree_shapes(variables)
    counts[os] = param_count(variables["params"])
    for size in SIZES:
      x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
      logits, features = jax.eval_shape(
          functools.partial(model.apply, return_features=True), variables, x)
      assert logits.shape == (2, size, size, 21) and logits.dtype == jnp.float32
      f = atrous.feature_size(size, os)
      assert features["logits_lowres"].shape == (2, f, f, 21)
      assert features["block4"].shape == (2, f, f, 2048)
  assert all(tree == trees[8] for tree in trees.values())
  assert all(count == counts[8] for count in counts.values()) and counts[8] > 42_500_160


@pytest.mark.parametrize("name", CONFIGS)
def test_tiny_configs_compute(name, tiny_variables):
  cfg = load_config(name).model
  cfg.backbone.name = "resnet_tiny"
  variables = tiny_variables[name]
  for os in output_strides(cfg):
    cfg.output_stride = os
    model = models.build(cfg)
    assert tree_shapes(jax.eval_shape(lambda: model.init(rng(), jnp.zeros((1, 33, 33, 3))))) \
        == tree_shapes(variables)
    apply = jax.jit(functools.partial(model.apply, return_features=True))
    for size in SIZES:
      x = jax.random.normal(jax.random.key(size), (1, size, size, 3))
      logits, features = apply(variables, x)
      assert logits.shape == (1, size, size, 21) and logits.dtype == jnp.float32
      assert np.all(np.isfinite(np.asarray(logits)))
      f = atrous.feature_size(size, os)
      assert features["logits_lowres"].shape == (1, f, f, 21)
      last = "block7" if cfg.backbone.num_cascaded_blocks == 3 else "block4"
      assert features[last].shape[1:3] == (f, f)
      s4 = atrous.feature_size(size, 4)
      assert features["stem"].shape[1:3] == features["low_level"].shape[1:3] == (s4, s4)


def test_tiny_configs_differ_by_head(tiny_variables):
  v2, block7, v3 = (tiny_variables[n]["params"] for n in CONFIGS)
  assert sorted(v2["aspp"]) == ["branch0", "branch1", "branch2", "branch3"]
  assert sorted(v2["aspp"]["branch0"]) == ["conv"]  # single 3x3 conv per branch (released v2)
  assert v2["aspp"]["branch0"]["conv"]["kernel"].shape == (3, 3, 128, 21)
  assert "aspp" not in block7 and {"block5", "block6", "block7"} <= set(block7["backbone"])
  assert sorted(v3["aspp"]) == ["aspp0", "aspp1", "aspp2", "aspp3", "concat_projection",
                                "image_pooling"]
  assert v3["logits"]["kernel"].shape == (1, 1, 256, 21)


# ---- Backbone structure. ----------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [("resnet50", 23_508_032), ("resnet101", 42_500_160),
                                            ("resnet152", 58_143_808)])
def test_imagenet_parameter_counts(name, expected):
  """torchvision / TF-slim ImageNet ResNet v1 counts without the classifier, BN scale+bias incl."""
  from deeplax import layers
  for layout in resnet.LAYOUTS:
    model = resnet.ResNet(resnet.get_spec(name), layout=layout, norm=layers.norm_factory(False))
    variables = jax.eval_shape(lambda: model.init(rng(), jnp.zeros((1, 64, 64, 3))))
    assert param_count(variables["params"]) == expected


def test_resnet101_tree_names_match_reference_layout():
  from deeplax import layers
  model = resnet.ResNet(resnet.get_spec("resnet101"), norm=layers.norm_factory(False))
  params = jax.eval_shape(lambda: model.init(rng(), jnp.zeros((1, 64, 64, 3))))["params"]
  assert sorted(params) == ["block1", "block2", "block3", "block4", "bn1", "conv1"]
  assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)
  assert [len(params[f"block{b}"]) for b in range(1, 5)] == [3, 4, 23, 3]
  unit1 = params["block2"]["unit_1"]
  assert sorted(unit1) == ["bn1", "bn2", "bn3", "conv1", "conv2", "conv3", "shortcut",
                           "shortcut_bn"]
  assert unit1["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert unit1["shortcut"]["kernel"].shape == (1, 1, 256, 512)
  assert sorted(params["block2"]["unit_2"]) == ["bn1", "bn2", "bn3", "conv1", "conv2", "conv3"]
  paths = flax.traverse_util.flatten_dict(params)
  assert all(p[-2].startswith(("bn", "shortcut_bn")) for p in paths if p[-1] == "bias")  # no conv bias


def test_layouts_same_tree_different_stride_positions():
  """Same variables for both layouts; the stride sits on the first (torchvision) or last (slim)
  unit of a block, so block1 ends at stride 4 (torchvision) or 8 (slim)."""
  shapes = {}
  for layout in resnet.LAYOUTS:
    model = tiny_model(layout=layout, num_cascaded_blocks=2, head="conv")
    v = jax.eval_shape(lambda: model.init(rng(), jnp.zeros((1, 64, 64, 3))))
    shapes[layout] = tree_shapes(v)
    _, f = jax.eval_shape(functools.partial(model.apply, return_features=True), v,
                          jnp.zeros((1, 64, 64, 3)))
    shapes[layout + "_features"] = {k: a.shape[1] for k, a in f.items()}
  assert shapes["torchvision"] == shapes["slim"]
  assert shapes["torchvision_features"]["block1"] == 16 and shapes["slim_features"]["block1"] == 8
  assert shapes["torchvision_features"]["block2"] == 8 and shapes["slim_features"]["block2"] == 4
  assert shapes["slim_features"]["low_level"] == 16 == shapes["torchvision_features"]["low_level"]
  tv = resnet.unit_strides_and_rates((3, 4, 6, 3), 32, "torchvision")
  slim = resnet.unit_strides_and_rates((3, 4, 6, 3), 32, "slim")
  assert [[s for s, _ in block] for block in tv] == [[1, 1, 1], [2, 1, 1, 1], [2] + [1] * 5,
                                                     [2, 1, 1]]
  assert [[s for s, _ in block] for block in slim] == [[1, 1, 2], [1, 1, 1, 2], [1] * 5 + [2],
                                                       [1, 1, 1]]


def test_max_pool_padding_conventions():
  assert resnet.max_pool_padding(32, "torchvision") == resnet.max_pool_padding(33, "torchvision") \
      == (1, 1)
  assert resnet.max_pool_padding(32, "slim") == (0, 1)   # TF 'SAME', even size
  assert resnet.max_pool_padding(33, "slim") == (1, 1)
  import tensorflow as tf
  for size in (16, 17):
    x = np.random.default_rng(size).normal(size=(1, size, size, 2)).astype(np.float32)
    pad = resnet.max_pool_padding(size, "slim")
    ours = flax.linen.max_pool(jnp.asarray(x), (3, 3), strides=(2, 2), padding=(pad, pad))
    want = tf.nn.max_pool2d(x, 3, 2, padding="SAME").numpy()
    np.testing.assert_array_equal(np.asarray(ours), want)


# ---- output_stride, Multi-Grid and cascaded blocks (v3 §3.1-3.2). ------------------------------

def rates(schedule):
  return [[r for _, r in block] for block in schedule]


def test_output_stride_torchvision_rule():
  """torchvision replace_stride_with_dilation: the unit that would stride runs at the previous
  dilation, the units after it at the multiplied one."""
  s8 = resnet.unit_strides_and_rates((3, 4, 23, 3), 8, "torchvision")
  assert rates(s8)[2] == [1] + [2] * 22 and rates(s8)[3] == [2, 4, 4]
  assert all(s == 1 for block in s8[2:] for s, _ in block)
  s16 = resnet.unit_strides_and_rates((3, 4, 23, 3), 16, "torchvision")
  assert rates(s16)[2] == [1] * 23 and s16[2][0][0] == 2 and rates(s16)[3] == [1, 2, 2]
  s32 = resnet.unit_strides_and_rates((3, 4, 23, 3), 32, "torchvision")
  assert all(r == 1 for block in rates(s32) for r in block)


def test_output_stride_slim_rule():
  """TF-slim stack_blocks_dense: same rule, with the stride on the last unit of a block."""
  s8 = resnet.unit_strides_and_rates((3, 4, 23, 3), 8, "slim")
  assert rates(s8) == [[1, 1, 1], [1, 1, 1, 1], [2] * 23, [4, 4, 4]]
  assert s8[0][2][0] == 2 and all(s == 1 for block in s8[1:] for s, _ in block)
  s16 = resnet.unit_strides_and_rates((3, 4, 23, 3), 16, "slim")
  assert rates(s16)[2] == [1] * 23 and rates(s16)[3] == [2, 2, 2]


def test_multi_grid_rates_v3():
  """v3 §3.2.1: OS 16, Multi_Grid (1, 2, 4) -> block4 rates 2 * (1, 2, 4) = (2, 4, 8)."""
  s = resnet.unit_strides_and_rates((3, 4, 23, 3), 16, "slim", multi_grid=(1, 2, 4))
  assert rates(s)[3] == [2, 4, 8]
  assert rates(s)[2] == [1] * 23  # Multi-Grid only touches block4 and the cascaded blocks
  s8 = resnet.unit_strides_and_rates((3, 4, 23, 3), 8, "slim", multi_grid=(1, 2, 4))
  assert rates(s8)[3] == [4, 8, 16]
  # torchvision layout: block4's unit_1 is the unit that would stride, so it keeps rate 1.
  tv = resnet.unit_strides_and_rates((3, 4, 23, 3), 16, "torchvision", multi_grid=(1, 2, 4))
  assert rates(tv)[3] == [1, 4, 8]


def test_cascaded_block_rates_v3_fig3():
  """v3 Fig. 3b: at OS 16 block4..block7 use rates 2, 4, 8, 16; Multi-Grid applies to each."""
  s = resnet.unit_strides_and_rates((3, 4, 23, 3), 16, "slim", num_cascaded_blocks=3)
  assert rates(s)[3:] == [[2] * 3, [4] * 3, [8] * 3, [16] * 3]
  s = resnet.unit_strides_and_rates((3, 4, 23, 3), 16, "slim", multi_grid=(1, 2, 1),
                                    num_cascaded_blocks=3)
  assert rates(s)[3:] == [[2, 4, 2], [4, 8, 4], [8, 16, 8], [16, 32, 16]]
  s = resnet.unit_strides_and_rates((3, 4, 23, 3), 8, "slim", num_cascaded_blocks=1)
  assert rates(s)[3:] == [[4] * 3, [8] * 3]
  # Without atrous convolution block7 would reach output_stride 256 (v3 §3.2).
  assert np.prod([s for block in resnet.unit_strides_and_rates(
      (3, 4, 23, 3), 256, "slim", num_cascaded_blocks=3) for s, _ in block]) * 4 == 256


def test_schedule_errors():
  with pytest.raises(ValueError, match="multi_grid"):
    resnet.unit_strides_and_rates((3, 4, 6, 3), 16, multi_grid=(1, 2))
  with pytest.raises(ValueError, match="num_cascaded_blocks"):
    resnet.unit_strides_and_rates((3, 4, 6, 3), 16, num_cascaded_blocks=4)
  with pytest.raises(ValueError, match="not reachable"):
    resnet.unit_strides_and_rates((3, 4, 6, 3), 64)
  with pytest.raises(ValueError, match="layout"):
    resnet.unit_strides_and_rates((3, 4, 6, 3), 16, "caffe")


# ---- ASPP. ------------------------------------------------------------------------------------

def test_scale_rates():
  assert aspp_lib.scale_rates((6, 12, 18), 16, 16) == (6, 12, 18)
  assert aspp_lib.scale_rates((6, 12, 18), 8, 16) == (12, 24, 36)   # v3 §3.3: doubled at OS 8
  assert aspp_lib.scale_rates((6, 12, 18), 32, 16) == (3, 6, 9)
  assert aspp_lib.scale_rates((12, 24, 36), 16, 0) == (12, 24, 36)  # torchvision: as given
  assert aspp_lib.scale_rates((6, 12, 18, 24), 16, 8) == (3, 6, 9, 12)
  assert aspp_lib.scale_rates((12,), 32, 8) == (3,)                  # v1 fc6 r=12 at OS 32
  # The one rule is exact: a rate that would need rounding (another field of view) raises.
  with pytest.raises(ValueError, match=r"atrous rate 6 \(given at output stride 8\) does not "
                     r"scale to an integer rate at output_stride 32"):
    aspp_lib.scale_rates((6, 12, 18, 24), 32, 8)
  with pytest.raises(ValueError, match="atrous rate 2"):
    aspp_lib.scale_rates((2,), 32, 8)


def test_aspp_v3_module():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 16))
  from deeplax import layers
  for separable in (False, True):
    norm = layers.norm_factory(False)
    module = aspp_lib.ASPP((1, 2, 3), features=8, separable=separable, norm=norm)
    v = module.init(rng(), x)
    y = module.apply(v, x)
    assert y.shape == (2, 9, 9, 8)
    p = v["params"]
    assert p["concat_projection"]["conv"]["kernel"].shape == (1, 1, 5 * 8, 8)
    assert sorted(p["aspp1"]) == (["depthwise", "depthwise_bn", "pointwise", "pointwise_bn"]
                                  if separable else ["bn", "conv"])
  no_pool = aspp_lib.ASPP((1, 2, 3), features=8, image_pooling=False, norm=layers.norm_factory(False))
  assert "image_pooling" not in no_pool.init(rng(), x)["params"]


def test_aspp_v2_vgg_style_branches_sum():
  x = jax.random.normal(jax.random.key(0), (1, 9, 9, 16))
  module = aspp_lib.ASPPv2(aspp_lib.ASPP_S_RATES, num_classes=5, features=32)
  v = module.init(rng(), x)
  assert sorted(v["params"]["branch3"]) == ["fc6", "fc7", "fc8"]
  assert v["params"]["branch3"]["fc6"]["kernel"].shape == (3, 3, 16, 32)
  assert v["params"]["branch3"]["fc8"]["bias"].shape == (5,)
  y = module.apply(v, x)
  branch_sum = sum(
      aspp_lib.ASPPv2((r,), 5, features=32).apply({"params": {"branch0": v["params"][f"branch{i}"]}},
                                                  x)
      for i, r in enumerate(aspp_lib.ASPP_S_RATES))
  np.testing.assert_allclose(np.asarray(y), np.asarray(branch_sum), rtol=1e-5, atol=1e-5)
  train_out = module.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(np.asarray(train_out), np.asarray(y))  # dropout 0.5 active in training


def test_torchvision_head_and_aux_head():
  model = tiny_model(layout="torchvision", aspp_rates=(12, 24, 36),
                     aspp_rates_output_stride=0, aspp_dropout=0.5, head_extra_conv=True,
                     aux_head=True, output_stride=8, align_corners=False)
  x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
  v = jax.eval_shape(lambda: model.init(rng(), jnp.zeros(x.shape)))
  p = v["params"]
  assert p["head_conv"]["conv"]["kernel"].shape == (3, 3, 256, 256)
  assert p["aux_conv"]["conv"]["kernel"].shape == (3, 3, 64, 16)  # block3 channels // 4
  assert p["aux_logits"]["bias"].shape == (21,) and p["logits"]["bias"].shape == (21,)
  (logits, f), state = jax.eval_shape(functools.partial(
      model.apply, train=True, return_features=True, mutable=["batch_stats"]),
      v, x, rngs={"dropout": jax.random.key(2)})
  assert logits.shape == f["aux_logits"].shape == (1, 33, 33, 21)
  assert f["block1"].shape[1] == f["low_level"].shape[1] == 9  # torchvision: block1 at stride 4
  assert set(state) == {"batch_stats"}


# ---- Errors, BN, dtype, remat. ----------------------------------------------------------------

def test_bad_inputs():
  model = tiny_model()
  with pytest.raises(ValueError, match="4-D"):
    model.init(rng(), jnp.zeros((33, 33, 3)))
  for channels in (1, 4):
    with pytest.raises(ValueError, match="3 channels"):
      model.init(rng(), jnp.zeros((1, 33, 33, channels)))
  with pytest.raises(ValueError, match="output_stride"):
    tiny_model(output_stride=4).init(rng(), jnp.zeros((1, 33, 33, 3)))
  cfg = deeplab.model_config()
  cfg.name = "deeplab_v9"
  with pytest.raises(ValueError, match="unknown model name 'deeplab_v9'"):
    models.build(cfg)
  with pytest.raises(ValueError, match="unknown backbone 'resnet18' in config.model.backbone.name"):
    models.build(deeplab.model_config(backbone="resnet18"))
  cfg = deeplab.model_config()
  cfg.aspp_ratez = (1, 2)
  with pytest.raises(ValueError, match="aspp_ratez"):
    models.build(cfg)
  with pytest.raises(ValueError, match="config.model.dtype"):
    models.build(deeplab.model_config(dtype="float64"))


@pytest.fixture(scope="module")
def small_variables():
  return jit_init(tiny_model(output_stride=32, aspp_dropout=0.0))


def test_freeze_bn(small_variables):
  x = jax.random.normal(jax.random.key(0), (2, 33, 33, 3))
  for freeze in (True, False):
    model = tiny_model(output_stride=32, aspp_dropout=0.0, freeze_bn=freeze)
    _, state = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        small_variables, x)
    same = jax.tree.map(np.array_equal, state["batch_stats"], small_variables["batch_stats"])
    assert all(jax.tree.leaves(same)) == freeze


def test_pmap_batch_norm_uses_global_batch(small_variables):
  """bn_axis_name under pmap: statistics over all devices' images = one device on the whole batch."""
  x = jax.random.normal(jax.random.key(0), (4, 33, 33, 3)) * jnp.arange(1, 5)[:, None, None, None]
  common = dict(output_stride=32, aspp_dropout=0.0, bn_momentum=0.0)

  def train_apply(model, v, images):
    return model.apply(v, images, train=True, mutable=["batch_stats"])

  single = tiny_model(**common)
  ref_logits, ref_state = jax.jit(functools.partial(train_apply, single))(small_variables, x)
  pmodel = tiny_model(bn_axis_name="batch", **common)
  devices = jax.devices()[:2]
  replicated = jax.tree.map(lambda a: jnp.stack([a] * len(devices)), small_variables)
  logits, state = jax.pmap(functools.partial(train_apply, pmodel), axis_name="batch",
                           devices=devices)(replicated, x.reshape(2, 2, 33, 33, 3))
  np.testing.assert_allclose(np.asarray(logits).reshape(ref_logits.shape), np.asarray(ref_logits),
                             rtol=1e-3, atol=1e-4)
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
    # Equal on both devices although their images have different scales: global statistics.
    np.testing.assert_allclose(np.asarray(got)[0], np.asarray(got)[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got)[0], np.asarray(want), rtol=1e-3, atol=1e-5)


def test_bfloat16_compute_float32_params_and_logits(small_variables):
  model = tiny_model(output_stride=32, aspp_dropout=0.0, dtype="bfloat16")
  v = jax.eval_shape(lambda: model.init(rng(), jnp.zeros((1, 33, 33, 3))))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v))
  assert tree_shapes(v) == tree_shapes(small_variables)
  x = jax.random.normal(jax.random.key(0), (1, 33, 33, 3))
  logits, f = jax.jit(functools.partial(model.apply, return_features=True))(small_variables, x)
  assert logits.dtype == jnp.float32 and f["block4"].dtype == jnp.bfloat16
  ref = jax.jit(tiny_model(output_stride=32, aspp_dropout=0.0).apply)(small_variables, x)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), rtol=0.1, atol=0.1)


def test_remat_same_tree_and_gradients(small_variables):
  """remat (jax.checkpoint around each unit) changes memory, not the variables or the maths."""
  model = tiny_model(output_stride=32, aspp_dropout=0.0, remat=True)
  x = jax.random.normal(jax.random.key(0), (1, 33, 33, 3))
  assert tree_shapes(jax.eval_shape(lambda: model.init(rng(), x))) == tree_shapes(small_variables)
  from deeplax import layers
  y = jax.random.normal(jax.random.key(1), (2, 9, 9, 16))
  grads = []
  for remat in (False, True):
    block = resnet.ResNetBlock(4, ((1, 1), (2, 2)), (True, False), remat=remat,
                               norm=layers.norm_factory(True, momentum=0.9))
    v = jit_init_block(block, y)
    loss = lambda p: jnp.mean(block.apply({**v, "params": p}, y, mutable=["batch_stats"])[0][0] ** 2)
    grads.append(jax.jit(jax.grad(loss))(v["params"]))
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def jit_init_block(block, x):
  return jax.jit(lambda x: block.init(rng(), x))(x)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_command_line_overrides(name):
  """The launch command's --config.model.* overrides reach the fields, nested ones included."""
  from absl import flags
  from ml_collections import config_flags
  argv = ["main", f"--config={CONFIG_DIR / name}.py", "--config.model.backbone.multi_grid=(1,2,1)",
          "--config.model.output_stride=8", "--config.model.backbone.name=resnet_tiny",
          "--config.model.num_classes=5"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  cfg = flag_values.config
  assert (cfg.model.backbone.multi_grid, cfg.model.output_stride, cfg.model.backbone.name,
          cfg.model.num_classes) == ((1, 2, 1), 8, "resnet_tiny", 5)
  model = models.build(cfg.model)
  assert (model.backbone.keywords["multi_grid"], model.backbone.keywords["spec"],
          model.output_stride, model.num_classes) == (
              (1, 2, 1), resnet.BACKBONES["resnet_tiny"], 8, 5)
