"""torchvision and TF-slim weight import: completeness, strictness, numerics.

Without torch (CI) the numerics are checked against independent NumPy references of torchvision's
dilated bottleneck and ASPP head and of a slim bottleneck unit; with torch and torchvision importable,
random-initialised torchvision DeepLabV3 models are compared end to end as well.
"""

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplax import checkpoint
from deeplax import convert
from deeplax import layers
from deeplax.convert import ConversionError
from deeplax.convert import tf_slim
from deeplax.convert import torchvision as tv
from deeplax.models import aspp as aspp_lib
from deeplax.models import resnet

HAS_TORCH = (importlib.util.find_spec("torch") is not None
             and importlib.util.find_spec("torchvision") is not None)


def _fabricate(shapes, seed=None, only=None):
  """Arrays of the given shapes: zeros (cheap), random where the key starts with `only`."""
  rng = np.random.RandomState(seed)
  out = {}
  for k, s in shapes.items():
    if k.endswith("num_batches_tracked") or k == "global_step":
      out[k] = np.array(7, np.int64)
    elif only is not None and k.startswith(only):
      v = rng.standard_normal(s).astype(np.float32)
      if k.endswith(("running_var", "moving_variance")):
        v = np.abs(v) + 0.5
      out[k] = v
    else:
      out[k] = np.zeros(s, np.float32)
  return out


# --------------------------------------------------------------------------------------------
# torchvision: every key of every arch consumed, every shape checked.

@pytest.mark.parametrize("arch", tv.ARCHS)
def test_torchvision_state_dict_converts_completely(arch):
  shapes = tv.state_dict_shapes(arch)
  state = _fabricate(shapes)
  config, variables, report = tv.convert_state_dict(state, arch)
  accounted = set(report.consumed) | set(report.ignored) | set(report.dropped)
  assert accounted == set(shapes) and len(report.consumed) + len(report.ignored) + len(
      report.dropped) == len(shapes)
  assert all(k.endswith("num_batches_tracked") for k in report.ignored)
  target = convert.abstract_variables(config.model)
  if arch.startswith("deeplabv3_"):
    assert report.dropped == []
    assert config.model.output_stride == 8 and tuple(config.model.aspp_rates) == (12, 24, 36)
    assert config.model.head_extra_conv and config.model.aux_head
  else:
    assert report.dropped == ["fc.bias", "fc.weight"]
    target = {p: s for p, s in target.items() if p[1] == "backbone"}
  got = {p: v.shape for p, v in convert.flatten(variables).items()}
  assert got == target
  assert config.model.backbone.layout == "torchvision" and config.model.align_corners is False
  assert config.data.normalization == "imagenet"


def test_torchvision_drop_aux():
  state = _fabricate(tv.state_dict_shapes("deeplabv3_resnet50"))
  config, variables, report = tv.convert_state_dict(state, "deeplabv3_resnet50", drop_aux=True)
  assert not config.model.aux_head and "aux_conv" not in variables["params"]
  assert sorted(report.dropped) == sorted(k for k in state if k.startswith("aux_classifier.")
                                          and not k.endswith("num_batches_tracked"))


def test_torchvision_wrong_arch_missing_unknown_and_misshaped_keys_are_named():
  state = _fabricate(tv.state_dict_shapes("deeplabv3_resnet50"))
  with pytest.raises(ConversionError, match="use --arch deeplabv3_resnet50"):
    tv.convert_state_dict(state, "deeplabv3_resnet101")
  with pytest.raises(ConversionError, match="use --arch deeplabv3_resnet50"):
    tv.convert_state_dict(state, "resnet50")
  bad = dict(state)
  del bad["backbone.layer2.1.conv2.weight"]
  bad["backbone.layer2.1.extra.weight"] = np.zeros((3,), np.float32)
  bad["classifier.1.weight"] = np.zeros((256, 256, 1, 1), np.float32)
  with pytest.raises(ConversionError) as e:
    tv.convert_state_dict(bad, "deeplabv3_resnet50")
  message = str(e.value)
  assert "missing" in message and "backbone.layer2.1.conv2.weight" in message
  assert "unknown" in message and "backbone.layer2.1.extra.weight" in message
  assert "classifier.1.weight: shape (256, 256, 1, 1)" in message and "(3, 3, 256, 256)" in message


def test_torchvision_num_classes_follow_the_classifier():
  state = _fabricate(tv.state_dict_shapes("deeplabv3_resnet50", num_classes=5, aux=False))
  config, variables, _ = tv.convert_state_dict(state, "deeplabv3_resnet50")
  assert config.model.num_classes == 5 and not config.model.aux_head
  assert variables["params"]["logits"]["kernel"].shape == (1, 1, 256, 5)


def test_safetensors_round_trip_and_run_directory(tmp_path):
  from safetensors.numpy import save_file
  state = _fabricate(tv.state_dict_shapes("resnet50"), seed=0, only="layer1.0.")
  path = str(tmp_path / "resnet50.safetensors")
  save_file(state, path)
  config, variables, _ = tv.convert_file(path, "resnet50", str(tmp_path / "run"), log=lambda *_: None)
  loaded_config, loaded, _ = checkpoint.load_variables(str(tmp_path / "run"))
  assert loaded_config.model.backbone.name == "resnet50"
  np.testing.assert_array_equal(
      loaded["params"]["backbone"]["block1"]["unit_1"]["conv2"]["kernel"],
      state["layer1.0.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(loaded["batch_stats"]["backbone"]["block1"]["unit_1"]["bn1"]["var"],
                                state["layer1.0.bn1.running_var"])


@pytest.mark.skipif(HAS_TORCH, reason="torch is importable: the no-torch message cannot occur")
def test_pth_without_torch_gives_a_clear_message(tmp_path):
  path = tmp_path / "model.pth"
  path.write_bytes(b"not really a pth")
  with pytest.raises(ImportError, match="needs PyTorch.*safetensors"):
    tv.read_state_dict(str(path))


def test_unreadable_weight_files(tmp_path):
  path = tmp_path / "model.safetensors"
  path.write_bytes(b"garbage")
  with pytest.raises(ValueError, match="cannot read"):
    tv.read_state_dict(str(path))
  with pytest.raises(FileNotFoundError):
    tv.read_state_dict(str(tmp_path / "absent.pth"))
  onnx = tmp_path / "m.onnx"
  onnx.write_bytes(b"x")
  with pytest.raises(ValueError, match="extension"):
    tv.read_state_dict(str(onnx))


# --------------------------------------------------------------------------------------------
# Independent NumPy references.

def _np_conv_oihw(x_NHWC, w_OIHW, stride=1, dilation=1, padding=0):
  """Cross-correlation as torch.nn.Conv2d computes it (zero padding on both sides)."""
  x = np.pad(x_NHWC.astype(np.float64), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  o, i, kh, kw = w_OIHW.shape
  h_out = (x.shape[1] - dilation * (kh - 1) - 1) // stride + 1
  w_out = (x.shape[2] - dilation * (kw - 1) - 1) // stride + 1
  out = np.zeros((x.shape[0], h_out, w_out, o))
  for a in range(kh):
    for b in range(kw):
      patch = x[:, a * dilation: a * dilation + stride * (h_out - 1) + 1: stride,
                b * dilation: b * dilation + stride * (w_out - 1) + 1: stride, :]
      out += patch @ w_OIHW[:, :, a, b].T.astype(np.float64)
  return out


def _np_bn(x, gamma, beta, mean, var, eps=1e-5):
  return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _relu(x):
  return np.maximum(x, 0.0)


def _partial_convert(state, rule_list, prefix_path):
  """apply_rules on the rules whose target lies under `prefix_path` (same code as the full path)."""
  chosen = [r for r in rule_list if r.target[1:1 + len(prefix_path)] == prefix_path]
  shapes = {r.target: None for r in chosen}
  src = {r.source: state[r.source] for r in chosen}
  for r in chosen:
    value = src[r.source] if r.transform is None else r.transform(src[r.source])
    shapes[r.target] = value.shape
  variables, report = convert.apply_rules(src, chosen, shapes)
  strip = lambda tree: functools.reduce(lambda t, k: t[k], prefix_path, tree)
  return {"params": strip(variables["params"]), "batch_stats": strip(variables["batch_stats"])}


def test_torchvision_dilation_schedule():
  # torchvision's replace_stride_with_dilation: the first unit of layer3/layer4 keeps the previous
  # dilation (1, then 2), the other units use 2 and 4.
  schedule = resnet.unit_strides_and_rates((3, 4, 6, 3), 8, "torchvision")
  assert schedule[1][0] == (2, 1)
  assert schedule[2] == [(1, 1)] + [(1, 2)] * 5
  assert schedule[3] == [(1, 2), (1, 4), (1, 4)]


def test_torchvision_dilated_bottleneck_matches_numpy_reference():
  arch = "deeplabv3_resnet50"
  shapes = tv.state_dict_shapes(arch)
  unit = "backbone.layer3.1."
  state = {k: v for k, v in _fabricate({k: s for k, s in shapes.items() if k.startswith(unit)},
                                       seed=1, only=unit).items()}
  variables = _partial_convert(state, tv.rules(arch), ("backbone", "block3", "unit_2"))
  x = np.random.RandomState(2).standard_normal((1, 9, 11, 1024)).astype(np.float32)
  norm = layers.norm_factory(False, epsilon=1e-5)
  block = resnet.Bottleneck(256, stride=1, rate=2, norm=norm)
  got, _ = block.apply(variables, jnp.asarray(x))
  s = lambda n: state[unit + n]
  y = _relu(_np_bn(_np_conv_oihw(x, s("conv1.weight")), s("bn1.weight"), s("bn1.bias"),
                   s("bn1.running_mean"), s("bn1.running_var")))
  y = _relu(_np_bn(_np_conv_oihw(y, s("conv2.weight"), dilation=2, padding=2), s("bn2.weight"),
                   s("bn2.bias"), s("bn2.running_mean"), s("bn2.running_var")))
  y = _np_bn(_np_conv_oihw(y, s("conv3.weight")), s("bn3.weight"), s("bn3.bias"),
             s("bn3.running_mean"), s("bn3.running_var"))
  want = _relu(y + x)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_torchvision_aspp_head_matches_numpy_reference():
  arch = "deeplabv3_resnet50"
  shapes = {k: s for k, s in tv.state_dict_shapes(arch).items() if k.startswith("classifier.0.")}
  state = _fabricate(shapes, seed=3, only="classifier.0.")
  variables = _partial_convert(state, tv.rules(arch), ("aspp",))
  x = np.random.RandomState(4).standard_normal((1, 6, 27, 2048)).astype(np.float32)
  norm = layers.norm_factory(False, epsilon=1e-5)
  module = aspp_lib.ASPP((12, 24, 36), features=256, image_pooling=True, norm=norm)
  got = np.asarray(module.apply(variables, jnp.asarray(x), train=False))
  s = lambda n: state["classifier.0." + n]
  bn = lambda y, p: _relu(_np_bn(y, s(p + ".weight"), s(p + ".bias"), s(p + ".running_mean"),
                                 s(p + ".running_var")))
  branches = [bn(_np_conv_oihw(x, s("convs.0.0.weight")), "convs.0.1")]
  for i, rate in zip((1, 2, 3), (12, 24, 36)):
    branches.append(bn(_np_conv_oihw(x, s(f"convs.{i}.0.weight"), dilation=rate, padding=rate),
                       f"convs.{i}.1"))
  pooled = bn(_np_conv_oihw(x.mean(axis=(1, 2), keepdims=True), s("convs.4.1.weight")), "convs.4.2")
  branches.append(np.broadcast_to(pooled, branches[0].shape))
  want = bn(_np_conv_oihw(np.concatenate(branches, -1), s("project.0.weight")), "project.1")
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# --------------------------------------------------------------------------------------------
# TF-slim.

@pytest.fixture(scope="module")
def slim_checkpoint(tmp_path_factory):
  """A resnet_v1_50 checkpoint in slim's variable names (tf.raw_ops.SaveV2), random block1."""
  import tensorflow as tf
  shapes = tf_slim.variable_shapes("resnet_v1_50")
  arrays = _fabricate(shapes, seed=5, only="resnet_v1_50/block1/")
  prefix = str(tmp_path_factory.mktemp("slim") / "resnet_v1_50.ckpt")
  names = sorted(arrays)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(arrays[n]) for n in names])
  return prefix, arrays


def test_slim_checkpoint_converts_completely(slim_checkpoint, tmp_path):
  prefix, arrays = slim_checkpoint
  config, variables, report = tf_slim.convert_checkpoint(prefix, "resnet_v1_50",
                                                         str(tmp_path / "run"), log=lambda *_: None)
  assert set(report.consumed) | set(report.ignored) | set(report.dropped) == set(arrays)
  assert report.ignored == ["global_step"]
  assert report.dropped == ["resnet_v1_50/logits/biases", "resnet_v1_50/logits/weights"]
  target = {p: s for p, s in convert.abstract_variables(config.model).items() if p[1] == "backbone"}
  assert {p: v.shape for p, v in convert.flatten(variables).items()} == target
  assert config.model.backbone.layout == "slim"
  assert config.data.normalization == "vgg"  # slim's ImageNet ResNets: mean pixel subtracted only
  _, loaded, _ = checkpoint.load_variables(str(tmp_path / "run"))
  np.testing.assert_array_equal(
      loaded["params"]["backbone"]["block1"]["unit_3"]["conv2"]["kernel"],
      arrays["resnet_v1_50/block1/unit_3/bottleneck_v1/conv2/weights"])


def test_slim_errors_name_the_problem(slim_checkpoint, tmp_path):
  prefix, arrays = slim_checkpoint
  with pytest.raises(ConversionError, match="use --arch resnet_v1_50"):
    tf_slim.convert_variables(arrays, "resnet_v1_101")
  bad = dict(arrays)
  del bad["resnet_v1_50/block2/unit_1/bottleneck_v1/shortcut/BatchNorm/gamma"]
  bad["resnet_v1_50/block2/unit_1/bottleneck_v1/conv1/weights/Momentum"] = np.zeros(1, np.float32)
  with pytest.raises(ConversionError) as e:
    tf_slim.convert_variables(bad, "resnet_v1_50")
  assert "block2/unit_1/bottleneck_v1/shortcut/BatchNorm/gamma" in str(e.value)
  assert "conv1/weights/Momentum" in str(e.value)
  with pytest.raises(FileNotFoundError, match="no TF checkpoint"):
    tf_slim.read_checkpoint(str(tmp_path / "absent.ckpt"))


def test_slim_layout_strides_in_the_last_unit():
  schedule = resnet.unit_strides_and_rates((3, 4, 6, 3), 16, "slim")
  assert schedule[0] == [(1, 1), (1, 1), (2, 1)]
  assert schedule[2][-1] == (1, 1) and schedule[3] == [(1, 2)] * 3


@pytest.mark.parametrize("unit,stride,projection", [("unit_3", 2, False), ("unit_1", 1, True)])
def test_slim_bottleneck_matches_numpy_reference(slim_checkpoint, unit, stride, projection):
  _, arrays = slim_checkpoint
  variables = _partial_convert(arrays, tf_slim.rules("resnet_v1_50"), ("backbone", "block1", unit))
  cin = 64 if unit == "unit_1" else 256
  x = np.random.RandomState(6).standard_normal((1, 9, 10, cin)).astype(np.float32)
  block = resnet.Bottleneck(64, stride=stride, rate=1, projection=projection,
                            norm=layers.norm_factory(False, epsilon=1e-5))
  got, _ = block.apply(variables, jnp.asarray(x))
  name = f"resnet_v1_50/block1/{unit}/bottleneck_v1"
  a = lambda n: arrays[f"{name}/{n}"]
  hwio = lambda w: w.transpose(3, 2, 0, 1)  # slim HWIO -> OIHW for the reference conv

  def conv_bn(y, scope, stride=1, pad=0):
    y = _np_conv_oihw(y, hwio(a(f"{scope}/weights")), stride=stride, padding=pad)
    return _np_bn(y, a(f"{scope}/BatchNorm/gamma"), a(f"{scope}/BatchNorm/beta"),
                  a(f"{scope}/BatchNorm/moving_mean"), a(f"{scope}/BatchNorm/moving_variance"))

  # slim bottleneck: conv1 1x1, conv2 = conv2d_same 3x3 (stride 2: explicit pad 1 each side),
  # conv3 1x1; shortcut: 1x1 conv (depth change) or subsample (1x1 max pool with stride).
  y = _relu(conv_bn(x, "conv1"))
  y = _relu(conv_bn(y, "conv2", stride=stride, pad=1))
  y = conv_bn(y, "conv3")
  shortcut = conv_bn(x, "shortcut") if projection else x[:, ::stride, ::stride]
  want = _relu(y + shortcut)
  assert want.shape == ((1, 5, 5, 256) if stride == 2 else (1, 9, 10, 256))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# --------------------------------------------------------------------------------------------
# Against real torchvision (skipped where torch is not importable, e.g. CI).

def _torch_model(arch, seed=0):
  import torch
  from torchvision.models import segmentation
  torch.manual_seed(seed)
  model = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=21,
                                      aux_loss=True).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
        m.weight.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
  return model


@pytest.mark.skipif(not HAS_TORCH, reason="torch/torchvision not importable")
def test_torchvision_state_dict_key_list_matches_real_torchvision():
  from torchvision.models import resnet101, resnet50
  for arch in tv.ARCHS:
    if arch.startswith("deeplabv3_"):
      model = _torch_model(arch)
    else:
      model = {"resnet50": resnet50, "resnet101": resnet101}[arch](weights=None)
    real = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert real == tv.state_dict_shapes(arch), arch


@pytest.mark.skipif(not HAS_TORCH, reason="torch/torchvision not importable")
@pytest.mark.parametrize("arch", ["deeplabv3_resnet50", "deeplabv3_resnet101"])
def test_converted_torchvision_model_reproduces_its_logits(arch, tmp_path):
  import torch
  from PIL import Image
  from safetensors.torch import save_file
  from skimage import data as skdata
  from deeplax import models
  from deeplax import data
  model = _torch_model(arch)
  image = np.asarray(Image.fromarray(skdata.astronaut()).resize((131, 97), Image.BILINEAR))
  x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
  mean = torch.tensor(tv.IMAGENET_MEAN)[:, None, None]
  std = torch.tensor(tv.IMAGENET_STD)[:, None, None]
  with torch.no_grad():
    ref = model((x - mean) / std)
  want = ref["out"].numpy().transpose(0, 2, 3, 1)
  want_aux = ref["aux"].numpy().transpose(0, 2, 3, 1)
  torch.save(model.state_dict(), tmp_path / "m.pth")
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
  for name in ("m.pth", "m.safetensors"):
    config, variables, _ = tv.convert_file(str(tmp_path / name), arch, log=lambda *_: None)
    inputs = data.normalize(image[None], config.data.normalization)  # deeplax's own preprocessing
    logits, features = jax.jit(lambda v, im: models.build(config.model).apply(
        v, im, train=False, return_features=True))(variables, jnp.asarray(inputs))
    for got, ref_logits in ((logits, want), (features["aux_logits"], want_aux)):
      err = np.abs(np.asarray(got) - ref_logits).max() / np.abs(ref_logits).max()
      assert err <= 1e-4, (arch, name, err)
