"""deeplax.ops: canonical kernels for GPUs and TPUs, the XLA-CPU kernels on the CPU, one set of
variables and numbers for both; the switch (DEEPLAX_KERNELS / ops.use_kernels)."""

import pathlib
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from deeplax import layers
from deeplax import models
from deeplax import ops
from deeplax import train
from deeplax.cli import load_config_file

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
KERNELS = ("canonical", "xla_cpu")


def _config(name):
  return load_config_file(str(CONFIG_DIR / f"{name}.py"))


def test_kernel_switch_and_its_errors(monkeypatch):
  monkeypatch.delenv(ops.ENV_VAR, raising=False)
  assert ops.kernels() == "auto"
  monkeypatch.setenv(ops.ENV_VAR, "canonical")
  assert ops.kernels() == "canonical"
  with ops.use_kernels("xla_cpu"):
    assert ops.kernels() == "xla_cpu"
  assert ops.kernels() == "canonical"
  monkeypatch.setenv(ops.ENV_VAR, "fast")
  with pytest.raises(ValueError, match="DEEPLAX_KERNELS='fast'.*canonical"):
    ops.kernels()
  with pytest.raises(ValueError, match="kernels='gpu'"):
    with ops.use_kernels("gpu"):
      pass


@pytest.fixture(scope="module")
def resnet101_training_gradient():
  """The training gradient of configs/deeplab_v3_aspp.py (DeepLabV3-ResNet-101, OS 16), traced
  once at a small crop, and the number of conv kernels and bilinear resizes it holds."""
  model = models.build(_config("deeplab_v3_aspp").model)
  size = 65
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, size, size, 3)), train=False))

  def grad_fn(variables, images):
    def loss(params):
      logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images,
                              train=True, mutable=["batch_stats"],
                              rngs={"dropout": jax.random.PRNGKey(0)})
      return jnp.sum(jnp.square(logits))
    return jax.grad(loss)(variables["params"])

  resizes = []
  original = layers.resize_bilinear

  def counting(x, size, align_corners=False):
    y = original(x, size, align_corners)
    resizes.append(y is not x)
    return y

  with mock.patch.object(layers, "resize_bilinear", counting):
    traced = jax.jit(grad_fn).trace(variables, images)
  kernels = sum(leaf.ndim == 4 for leaf in jax.tree.leaves(variables["params"]))
  return grad_fn, (variables, images), kernels, sum(resizes)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerators_get_plain_convolutions(resnet101_training_gradient, platform):
  """For GPU and TPU every conv kernel lowers to stablehlo.convolution: forward, input gradient
  and weight gradient (the first conv takes no input gradient): 3 * 111 - 1; dot_general only in
  the bilinear resizes (two per resize forward, two backward)."""
  grad_fn, args, kernels, resizes = resnet101_training_gradient
  assert kernels == 111 and resizes == 2
  text = export.export(jax.jit(grad_fn), platforms=[platform])(*args).mlir_module()
  assert text.count("stablehlo.convolution") == 3 * kernels - 1
  assert text.count("stablehlo.dot_general") == 4 * resizes
  assert "stablehlo.select_and_scatter" in text or "stablehlo.reduce_window" in text  # max pool


def test_cpu_export_keeps_the_xla_cpu_kernels(resnet101_training_gradient):
  """For the CPU the same gradient holds the XLA-CPU kernels (1x1 convs and per-tap weight
  gradients as matmuls); a two-platform export holds both."""
  grad_fn, args, kernels, resizes = resnet101_training_gradient
  cpu = export.export(jax.jit(grad_fn), platforms=["cpu"])(*args).mlir_module()
  assert cpu.count("stablehlo.convolution") < kernels
  assert cpu.count("stablehlo.dot_general") > 5 * kernels
  assert "select_and_scatter" not in cpu
  both = export.export(jax.jit(grad_fn), platforms=["cpu", "cuda"])(*args)
  assert both.platforms == ("cpu", "cuda")
  assert both.mlir_module().count("stablehlo.convolution") > 3 * kernels - 1


def _tiny_v3_config():
  from deeplax.models import deeplab  # pylint: disable=g-import-not-at-top
  from deeplax import defaults  # pylint: disable=g-import-not-at-top
  c = defaults.get_base_config()
  c.model = deeplab.model_config(backbone="resnet_tiny", num_classes=3, output_stride=8,
                                 aspp_features=8, aspp_dropout=0.0, bn_momentum=0.9,
                                 bn_epsilon=1e-3)
  c.batch_size, c.total_steps, c.learning_rate = 4, 100, 0.01
  return train.prepare_config(c, check_devices=False)


def test_both_kernels_train_a_tiny_deeplab_v3_alike():
  """Three train steps of a tiny DeepLabV3 (atrous rates past the feature size, max pool, BN,
  1x1 convs): the same losses, parameters, batch statistics and momenta with either kernels."""
  config = _tiny_v3_config()
  model = models.build(config.model)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(3):
    image = rng.normal(size=(4, 33, 33, 3)).astype(np.float32)
    batches.append({"image": image, "label": image.argmax(-1).astype(np.int32)})
  runs = {}
  for name in KERNELS:
    with ops.use_kernels(name):
      state, tx = train.create_train_state(config, model, jax.random.PRNGKey(0), (4, 33, 33, 3))
      step = jax.jit(train.make_train_step(config, model, tx))
      losses = []
      for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    runs[name] = (losses, jax.device_get(state))
  (losses_a, state_a), (losses_b, state_b) = runs["canonical"], runs["xla_cpu"]
  np.testing.assert_allclose(losses_b, losses_a, rtol=1e-5)
  assert jax.tree.structure(state_a) == jax.tree.structure(state_b)
  for key in ("params", "batch_stats", "opt_state"):
    for a, b in zip(jax.tree.leaves(state_a[key]), jax.tree.leaves(state_b[key])):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()), err_msg=key)


@pytest.mark.parametrize("name", ["deeplab_v1_largefov", "deeplab_v2_aspp_l", "deeplab_v3_aspp",
                                  "deeplab_v3_block7", "deeplab_v3plus_xception65", "shapes"])
def test_paper_configs_give_the_same_logits_with_either_kernels(name):
  model = models.build(_config(name).model)
  images = jax.random.normal(jax.random.PRNGKey(1), (1, 49, 49, 3))
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(images)
  logits = {}
  for kernels in KERNELS:
    with ops.use_kernels(kernels):
      logits[kernels] = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
          variables, images))
  scale = float(np.abs(logits["canonical"]).max())
  np.testing.assert_allclose(logits["xla_cpu"], logits["canonical"], rtol=1e-4, atol=1e-5 * scale)
