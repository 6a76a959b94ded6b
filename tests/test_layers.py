"""The shared conventions of deeplax.layers: padding/output size, resizing, batch-norm modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplax import layers
from deeplax import ops
from deeplax.ops import xla_cpu


@pytest.mark.parametrize("size", [64, 65])
@pytest.mark.parametrize("stride,rate,kernel", [(1, 1, 3), (2, 1, 3), (2, 1, 7), (1, 4, 3), (2, 2, 3)])
def test_atrous_conv_output_is_ceil_of_size_over_stride(size, stride, rate, kernel):
  conv = layers.atrous_conv(4, kernel, stride=stride, rate=rate)
  x = jnp.zeros((1, size, size, 2))
  out = jax.eval_shape(lambda: conv.init_with_output(jax.random.PRNGKey(0), x)[0])
  assert out.shape == (1, -(-size // stride), -(-size // stride), 4)


def test_resize_bilinear_matches_half_pixel_upsampling():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 7, 3))
  ours = layers.resize_bilinear(x, (33, 25), align_corners=False)
  ref = jax.image.resize(x, (2, 33, 25, 3), "bilinear")  # half-pixel centres, same as torch here
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_resize_bilinear_align_corners_keeps_corner_samples():
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 5, 4, 2))
  up = layers.resize_bilinear(x, (9, 7), align_corners=True)
  np.testing.assert_allclose(up[:, ::2, ::2], x, atol=1e-6)
  np.testing.assert_allclose(up[:, 1, 0], (x[:, 0, 0] + x[:, 1, 0]) / 2, atol=1e-6)


def test_batch_norm_frozen_uses_running_averages_in_training():
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 5, 5, 3)) * 3 + 1
  bn = layers.batch_norm(True, frozen=True)
  variables = bn.init(jax.random.PRNGKey(0), x)
  y, updates = bn.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5), rtol=1e-5)  # mean 0, var 1 running stats
  jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])
  y_train, upd = layers.batch_norm(True, momentum=0.9).apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(y_train.mean(axis=(0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-5)


def test_depthwise_kernels_keep_the_signal_scale():
  conv = layers.atrous_conv(64, 3, feature_group_count=64)
  kernel = conv.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 64)))["params"]["kernel"]
  assert kernel.shape == (3, 3, 1, 64)
  np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / 9), rtol=0.15)


def _xla_cpu(fn):
  """fn traced with the XLA-CPU kernels."""
  def traced(*args):
    with ops.use_kernels("xla_cpu"):
      return fn(*args)
  return traced


def _assert_same_values_and_gradients(ours, reference, x, kernel, tol=1e-5, grad_rtol=1e-4,
                                      grad_atol=1e-5):
  """ours(x, kernel) equals reference(x, kernel), and so do the gradients of a smooth loss."""
  np.testing.assert_allclose(ours(x, kernel), reference(x, kernel), rtol=tol, atol=tol)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  for a, b in zip(jax.grad(loss(ours), (0, 1))(x, kernel),
                  jax.grad(loss(reference), (0, 1))(x, kernel)):
    np.testing.assert_allclose(a, b, rtol=grad_rtol, atol=grad_atol)


def _atrous_conv_and_reference(features, kernel_size, channels, seed, stride=1, rate=1):
  """An atrous_conv on a [2, 9, 7, channels] input, its traced jaxpr (text), a function of
  (x, kernel) applying it, and lax.conv_general_dilated with the same padding as reference."""
  x = jnp.asarray(np.random.default_rng(seed).normal(size=(2, 9, 7, channels)), jnp.float32)
  conv = layers.atrous_conv(features, kernel_size, stride=stride, rate=rate)
  variables = conv.init(jax.random.PRNGKey(0), x)
  pad = layers.symmetric_padding(kernel_size, rate)

  def reference(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [pad, pad],
                                        rhs_dilation=(rate, rate),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  with ops.use_kernels("xla_cpu"):
    jaxpr = str(jax.make_jaxpr(lambda x: conv.apply(variables, x))(x))
  ours = lambda x, k: _xla_cpu(conv.apply)({"params": {"kernel": k}}, x)
  return x, variables["params"]["kernel"], jaxpr, ours, reference


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_conv_as_matmul_matches_convolution(stride):
  """1x1 convolutions run as a matrix product (xla_cpu.conv_general_dilated): same values and
  gradients as lax.conv_general_dilated, strided included (odd size: ceil(H / stride))."""
  x, kernel, jaxpr, ours, reference = _atrous_conv_and_reference(6, 1, 5, seed=0, stride=stride)
  assert "dot_general" in jaxpr and "conv_general_dilated" not in jaxpr
  assert ours(x, kernel).shape == (2, -(-9 // stride), -(-7 // stride), 6)
  _assert_same_values_and_gradients(ours, reference, x, kernel)


@pytest.mark.parametrize("rate,expect", [(1, "conv"), (3, "9 taps"), (8, "3 taps"),
                                         (10, "matmul")])
def test_atrous_conv_implementations_are_exact(rate, expect):
  """On a 9x7 input: rate 1 stays a convolution (most taps read the image); at rate 3 most
  tap-pixel products read padding, so the conv runs as 9 per-tap matmuls over the regions each
  tap reaches; at rate 8 the off-centre columns read only padding (v3 §3.3, Fig. 4) and are
  dropped, leaving 3 taps; rate 10 is a 1x1 conv (one matmul). Values and gradients equal the
  full atrous convolution."""
  x, kernel, jaxpr, ours, reference = _atrous_conv_and_reference(5, 3, 4, seed=1, rate=rate)
  if expect == "conv":
    assert "conv_general_dilated" in jaxpr and "dot_general" not in jaxpr
  else:
    assert "conv_general_dilated" not in jaxpr
    assert jaxpr.count("dot_general") == (1 if expect == "matmul" else int(expect.split()[0]))
  _assert_same_values_and_gradients(ours, reference, x, kernel)


@pytest.mark.parametrize("padding,rate,dtype", [((5, 13), 9, jnp.float32),
                                                ((6, 6), 3, jnp.float32),
                                                ((24, 24), 24, jnp.bfloat16)])
def test_per_tap_matmuls_match_convolution(padding, rate, dtype):
  """_conv_or_matmul's per-tap path with asymmetric padding (a tap may reach only part of the
  output, or nothing), a 5x5 kernel, and bfloat16 inputs (accumulated in float32)."""
  rng = np.random.default_rng(2)
  k = 5 if rate == 3 else 3
  x = jnp.asarray(rng.normal(size=(2, 15, 41, 6)), dtype)
  w = jnp.asarray(rng.normal(size=(k, k, 6, 3)) / 6, dtype)
  pads = [padding, padding]
  args = dict(rhs_dilation=(rate, rate), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert xla_cpu.atrous_by_taps(x, w, pads, (rate, rate), None) is not None
  ref = lambda x, w: jax.lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32),
                                                  (1, 1), pads, **args)
  ours = lambda x, w: xla_cpu.conv_general_dilated(x, w, (1, 1), pads, **args)
  assert ours(x, w).dtype == dtype and ours(x, w).shape == ref(x, w).shape
  if dtype == jnp.float32:
    _assert_same_values_and_gradients(ours, ref, x, w, grad_atol=1e-4)
  else:
    np.testing.assert_allclose(np.asarray(ours(x, w), np.float32), ref(x, w), rtol=3e-2,
                               atol=3e-2)


@pytest.mark.parametrize("kernels", ["canonical", "xla_cpu"])
def test_relu_matches_jax_nn_relu(kernels):
  """layers.relu (a select, see its docstring) has jax.nn.relu's values, NaN included, and its
  derivative (0 at x <= 0)."""
  with ops.use_kernels(kernels):
    x = jnp.array([-2.0, -0.0, 0.0, 1e-30, 1.5, jnp.nan, -jnp.inf, jnp.inf])
    np.testing.assert_array_equal(layers.relu(x), jax.nn.relu(x))
    for f in (jax.grad(lambda x: layers.relu(x).sum()), lambda x: jax.jvp(layers.relu, (x,), (jnp.ones_like(x),))[1]):
      np.testing.assert_array_equal(f(x), [0, 0, 0, 1, 1, 0, 0, 1])


def _max_fusion_operands(fn, *args):
  """The largest operand count of a fusion in fn's compiled (optimised) HLO."""
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  return max(line.split(" fusion(", 1)[1].split("), kind=")[0].count("%")
             for line in hlo.splitlines() if " fusion(" in line)


def test_residual_stream_is_not_recomputed_in_backward_fusions():
  """With a max-based ReLU, XLA CPU recomputes every earlier residual unit inside each backward
  fusion that reads a unit's output (fusions with ~5 more operands per unit: 120+ for
  ResNet-101's block 3, ~10% of the step). layers.relu keeps the units' outputs in memory."""
  def stream(relu):
    def loss(ws, x):
      for w in ws:
        y = xla_cpu.pointwise(relu(x), w, None)
        x = relu(layers.batch_norm(True).apply({"params": {"scale": jnp.ones(8), "bias": jnp.zeros(8)},
                                               "batch_stats": {"mean": jnp.zeros(8), "var": jnp.ones(8)}},
                                              y, mutable=["batch_stats"])[0] + x)
      return jnp.sum(x * x)
    return jax.grad(loss)
  ws = [jnp.eye(8) * 0.5] * 12
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 8))
  assert _max_fusion_operands(stream(xla_cpu.relu), ws, x) <= 16
  assert _max_fusion_operands(stream(jax.nn.relu), ws, x) > 30  # the failure this guards against


@pytest.mark.parametrize("kernels", ["canonical", "xla_cpu"])
@pytest.mark.parametrize("shape,window,stride,padding", [
    ((2, 9, 11, 3), 3, 2, ((1, 1), (1, 1))), ((1, 10, 7, 2), 3, 2, ((0, 1), (1, 1))),
    ((1, 8, 8, 2), 3, 1, ((1, 1), (1, 1))), ((1, 9, 9, 1), 2, 2, ((0, 0), (0, 1)))])
def test_max_pool_matches_flax_with_ties(shape, window, stride, padding, kernels):
  """layers.max_pool: nn.max_pool's values, and its gradient (to the first maximum of each
  window in row-major order) on inputs with many ties (values on a 0.5 grid, zeros)."""
  with ops.use_kernels(kernels):
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    x = jax.nn.relu(jnp.round(jax.random.normal(jax.random.PRNGKey(2), shape) * 2) / 2)
    ref = lambda x: nn.max_pool(x, (window, window), strides=(stride, stride), padding=padding)
    ours = lambda x: layers.max_pool(x, window, stride, [list(p) for p in padding])  # lists work too
    y_ref, vjp_ref = jax.vjp(ref, x)
    y, vjp = jax.vjp(ours, x)
    np.testing.assert_array_equal(y, y_ref)
    g = jax.random.normal(jax.random.PRNGKey(3), y.shape)
    np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], atol=1e-6)


@pytest.mark.parametrize("kernels", ["canonical", "xla_cpu"])
@pytest.mark.parametrize("offset,dtype", [(1.0, jnp.float32), (30.0, jnp.float32),
                                          (1.0, jnp.bfloat16)])
def test_batch_norm_matches_flax_in_training(offset, dtype, kernels):
  """layers.BatchNorm (own gradient, no x - mean tensor) against flax.linen.BatchNorm: same
  variables, outputs, running averages and gradients for x, scale and bias; also for activations
  whose mean is 15 standard deviations from 0. Initialising does not move the averages."""
  with ops.use_kernels(kernels):
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 4, 6)) * 2 + offset
    g = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=dtype,
                       param_dtype=jnp.float32)
    ours = layers.batch_norm(True, momentum=0.9, dtype=dtype)
    init_ref, init_ours = ref.init(jax.random.PRNGKey(0), x), ours.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, init_ours) == jax.tree.map(jnp.shape, init_ref)
    np.testing.assert_array_equal(init_ours["batch_stats"]["var"], np.ones(6))
    params = {"scale": jnp.linspace(0.5, 2, 6), "bias": jnp.linspace(-1, 1, 6)}
    stats = {"mean": jnp.full(6, 0.5), "var": jnp.full(6, 2.0)}

    def run(module):
      def loss(params, x):
        y, upd = module.apply({"params": params, "batch_stats": stats}, x.astype(dtype),
                              mutable=["batch_stats"])
        return jnp.sum(y.astype(jnp.float32) * g), (y, upd["batch_stats"])
      (_, (y, new_stats)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, x)
      return y, new_stats, grads

    (y_ref, stats_ref, grads_ref), (y, new_stats, grads) = run(ref), run(ours)
    assert y.dtype == dtype
    tol = 2e-2 if dtype == jnp.bfloat16 else 2e-5 * offset
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32), atol=tol)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), new_stats,
                 stats_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=max(tol, 1e-5)),
                 grads, grads_ref)


@pytest.mark.parametrize("shape,padding,rate,stride,dtype,taps", [
    ((2, 17, 19, 6), (2, 2), 2, 1, jnp.float32, True),
    ((2, 17, 19, 6), (1, 3), 2, 1, jnp.float32, True),
    ((2, 17, 19, 8), (1, 1), 1, 2, jnp.float32, True),
    ((1, 9, 11, 8), (1, 1), 1, 1, jnp.float32, True),
    ((2, 33, 35, 6), (4, 4), 4, 1, jnp.bfloat16, True),
    ((2, 17, 19, 6), (1, 1), 1, 1, jnp.float32, False)])  # 107 pixels per channel: XLA's
def test_conv_weight_gradient_per_tap(shape, padding, rate, stride, dtype, taps):
  """Convolutions with few pixels per input channel (times rate^2) take their weight gradient on
  CPU as one g^T x_tap product per tap (xla_cpu.conv_tap_weight_grad), XLA's elsewhere: values
  and both gradients equal XLA's convolution, with asymmetric padding, stride 2 and bfloat16
  (accumulated in float32)."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=shape), dtype)
  w = jnp.asarray(rng.normal(size=(3, 3, shape[3], 5)) / 6, dtype)
  pads = [padding, padding]
  args = dict(rhs_dilation=(rate, rate), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert xla_cpu.atrous_by_taps(x, w, pads, (rate, rate), None) is None  # mostly reads the image
  ref = lambda x, w: jax.lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32),
                                                  (stride, stride), pads, **args)
  ours = lambda x, w: xla_cpu.conv_general_dilated(x, w, (stride, stride), pads, **args)
  weight_grad = jax.jit(jax.grad(lambda w: ours(x, w).astype(jnp.float32).sum())).trace(w)
  text = weight_grad.lower().as_text()
  assert text.count("stablehlo.dot_general") == (9 if taps else 0)
  assert text.count("stablehlo.convolution") == (0 if taps else 1)
  if dtype == jnp.float32:
    _assert_same_values_and_gradients(ours, ref, x, w, grad_atol=1e-4)
  else:
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w).astype(jnp.float32)))
    for a, b in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
      assert a.dtype == dtype
      # bfloat16 cotangents: a few percent of the largest entry.
      np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=0.03 * float(jnp.abs(b).max()))
