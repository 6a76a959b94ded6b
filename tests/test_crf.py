"""Dense CRF (v2 §3.3): lattice vs brute force, mean field vs exact, batching, errors, gradients."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import skimage.data
import skimage.transform

from deeplax import crf
from deeplax.crf import lattice as lattice_lib
from deeplax.crf.exact import dense_crf_exact, gaussian_filter_exact
from deeplax.crf.inference import pixel_features
from deeplax.crf.layer import DenseCRF


_BUILD = jax.jit(lattice_lib.build_lattice, static_argnums=1)
_FILTER = jax.jit(lattice_lib.lattice_filter)


def _photo(h, w, crop=(slice(0, 300), slice(100, 400))):
  image = skimage.data.astronaut()[crop]
  return (skimage.transform.resize(image, (h, w), anti_aliasing=True) * 255).astype(np.uint8)


def _smooth_unary(h, w, c, seed=0, scale=2.0):
  rng = np.random.default_rng(seed)
  low = rng.normal(size=(max(2, h // 5), max(2, w // 5), c)) * scale
  logits = skimage.transform.resize(low, (h, w), order=1).astype(np.float32)
  return np.asarray(-jax.nn.log_softmax(jnp.asarray(logits), -1))


@pytest.fixture(scope="module")
def small():
  image = _photo(18, 24)
  return image, _smooth_unary(18, 24, 4)


@pytest.mark.parametrize("sigma_xy,sigma_rgb", [(5.0, 10.0), (10.0, 30.0), (1.0, None),
                                                (2.0, None)])
def test_lattice_filter_approximates_exact_gaussian(sigma_xy, sigma_rgb):
  """Normalised lattice filter vs brute force: mean |err| < 0.02, max < 0.25 (values in [0, 1])."""
  image = _photo(20, 24)
  n = 20 * 24
  feats = pixel_features(jnp.asarray(image), sigma_xy, sigma_rgb)
  values = jnp.asarray(np.random.default_rng(1).random((n, 4)), jnp.float32)
  lat = _BUILD(feats, 6 * n)
  assert not bool(lat.overflow)
  approx = _FILTER(lat, values) / _FILTER(lat, jnp.ones((n, 1)))
  exact = gaussian_filter_exact(feats, values) / gaussian_filter_exact(feats, jnp.ones((n, 1)))
  err = np.abs(np.asarray(approx - exact))
  assert err.mean() < 0.02, err.mean()
  assert err.max() < 0.25, err.max()


def test_lattice_filter_padded_channels_blocks_and_transpose():
  """21 channels (tables padded to 32 columns), 5600 pixels (a partial splat block): equal to
  filtering each channel alone, and the VJP is the transpose (<A v, u> = <v, A^T u>)."""
  image = _photo(70, 80)
  n = 70 * 80
  lat = _BUILD(pixel_features(jnp.asarray(image), 5.0, 10.0), 2 * n)
  assert not bool(lat.overflow)
  rng = np.random.default_rng(2)
  values = jnp.asarray(rng.random((n, 21)), jnp.float32)
  together = np.asarray(_FILTER(lat, values))
  alone = np.concatenate([np.asarray(_FILTER(lat, values[:, i:i + 1])) for i in (0, 7, 20)], 1)
  np.testing.assert_allclose(together[:, [0, 7, 20]], alone, rtol=1e-5, atol=1e-4)
  u = jnp.asarray(rng.random((n, 21)), jnp.float32)
  out, vjp = jax.vjp(lambda v: lattice_lib.lattice_filter(lat, v, reverse=True), values)
  (transposed,) = jax.jit(vjp)(u)
  forward = _FILTER(lat, u)  # A^T is the blur in the opposite order: the forward filter
  np.testing.assert_allclose(np.asarray(transposed), np.asarray(forward), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(float(jnp.vdot(out, u)), float(jnp.vdot(values, transposed)),
                             rtol=1e-4)


@pytest.mark.parametrize("sigma_rgb", [10.0, None])  # 6 and 3 blur directions
def test_filter_in_reused_tables_ignores_what_they_held(sigma_rgb):
  """Mean-field iterations filter in reused lattice tables (the workspace) and zero only the
  rows they read: tables full of NaN give the fresh-table result, value and gradient."""
  image = _photo(40, 50)
  n = 40 * 50
  lat = _BUILD(pixel_features(jnp.asarray(image), 4.0, sigma_rgb), 6 * n)  # > one chunk
  assert not bool(lat.overflow) and int(lat.num_points) < lat.blur_n1_JM.shape[1] - 1
  values = jnp.asarray(np.random.default_rng(3).random((n, 21)), jnp.float32)
  garbage = jax.tree.map(lambda t: jnp.full_like(t, jnp.nan),
                         lattice_lib.filter_workspace(lat, 21))
  reused = jax.jit(lattice_lib.weighted_filter)
  out, workspace = reused(lat, lat, values, garbage)
  np.testing.assert_allclose(np.asarray(out), np.asarray(_FILTER(lat, values)), rtol=1e-6,
                             atol=1e-6)
  again, _ = reused(lat, lat, 0.5 * values, workspace)  # tables of the previous call
  np.testing.assert_allclose(np.asarray(again), 0.5 * np.asarray(out), rtol=1e-5, atol=1e-6)
  u = jnp.asarray(np.random.default_rng(4).random((n, 21)), jnp.float32)
  grad = jax.grad(lambda v: jnp.vdot(reused(lat, lat, v, garbage)[0], u))(values)
  grad_fresh = jax.grad(lambda v: jnp.vdot(lattice_lib.lattice_filter(lat, v), u))(values)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_fresh), rtol=1e-5, atol=1e-5)


def test_dense_crf_core_reuses_tables_of_the_last_size(small):
  """dense_crf_core keeps one set of lattice tables for the next call on the same size: after a
  noisy image (many lattice points) a smooth one gets the fresh-table result; a new size
  replaces the set; release_workspaces frees it."""
  from deeplax.crf import inference
  params = crf.CRFParams(w1=4.0, sigma_alpha=6.0, sigma_beta=5.0, w2=3.0, sigma_gamma=1.0)
  image, unary = small
  noise = np.random.default_rng(5).integers(0, 256, image.shape, dtype=np.uint8)
  crf.release_workspaces()
  jax.block_until_ready(crf.dense_crf_core(unary, noise, params))
  assert len(inference._WORKSPACE_CACHE) == 1
  q_reused, _ = crf.dense_crf_core(unary, image, params)
  q_fresh, _ = inference._core(unary, image, inference._numeric(params), None, 10, None, 2.0,
                               False, 1)
  np.testing.assert_allclose(np.asarray(q_reused), np.asarray(q_fresh), atol=1e-6)
  q_traced, _ = jax.jit(lambda u, i: crf.dense_crf_core(u, i, params))(unary, image)
  np.testing.assert_allclose(np.asarray(q_traced), np.asarray(q_fresh), atol=1e-4)  # jittable
  (before,) = inference._WORKSPACE_CACHE.values()
  other = _photo(12, 16)
  crf.dense_crf_core(_smooth_unary(12, 16, 4), other, params)
  (after,) = inference._WORKSPACE_CACHE.values()
  assert jax.tree.leaves(after)[0].shape[0] < jax.tree.leaves(before)[0].shape[0]
  crf.release_workspaces()
  assert not inference._WORKSPACE_CACHE


def test_lattice_tables_are_kept_only_on_the_cpu(small, monkeypatch):
  """The kept tables serve the CPU's page faults; arrays on an accelerator keep nothing."""
  from deeplax.crf import inference
  params = crf.CRFParams()
  image, unary = small
  crf.release_workspaces()
  q_cpu, _ = crf.dense_crf_core(unary, image, params)
  assert len(inference._WORKSPACE_CACHE) == 1
  crf.release_workspaces()
  monkeypatch.setattr(inference, "_platform", lambda x: "gpu")
  q_gpu, _ = crf.dense_crf_core(unary, image, params)
  assert not inference._WORKSPACE_CACHE
  np.testing.assert_allclose(np.asarray(q_gpu), np.asarray(q_cpu), atol=1e-6)


@pytest.mark.parametrize("normalization", ["none", "before", "after", "symmetric"])
def test_mean_field_exact_with_separable_spatial_kernel(small, normalization):
  """The mean-field machinery is exact where the filter is: separable spatial vs O(N^2)."""
  image, unary = small
  params = crf.CRFParams(w1=0.0, w2=3.0, sigma_gamma=1.5, normalization=normalization,
                         spatial_filter="separable")
  q = crf.dense_crf(unary, image, params, num_iters=10)
  q_exact = dense_crf_exact(jnp.asarray(unary), jnp.asarray(image), params, num_iters=10)
  np.testing.assert_allclose(q, q_exact, atol=2e-3 if normalization == "none" else 5e-4)


@pytest.mark.parametrize("normalization", ["after", "symmetric"])
def test_lattice_crf_close_to_exact_dense_crf(small, normalization):
  """Full CRF (both kernels on lattices) vs exact dense: the lattice's approximation error only."""
  image, unary = small
  for sa, sb, sg in [(5.0, 10.0, 1.0), (10.0, 20.0, 3.0), (20.0, 13.0, 2.0)]:
    params = crf.CRFParams(w1=4.0, sigma_alpha=sa, sigma_beta=sb, w2=3.0, sigma_gamma=sg,
                           normalization=normalization)
    q = np.asarray(crf.dense_crf(unary, image, params, num_iters=10))
    q_exact = np.asarray(dense_crf_exact(jnp.asarray(unary), jnp.asarray(image), params, 10))
    assert np.abs(q - q_exact).mean() < 0.04
    assert (q.argmax(-1) == q_exact.argmax(-1)).mean() >= 0.92
    np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-5)


def test_batched_equals_single_and_padding_is_invisible():
  params = crf.CRFParams(w1=4.0, sigma_alpha=8.0, sigma_beta=13.0, w2=3.0, sigma_gamma=1.0)
  sizes = [(21, 26), (16, 19)]
  hp, wp = 24, 30
  images = np.zeros((2, hp, wp, 3), np.uint8)
  unary = np.full((2, hp, wp, 3), np.nan, np.float32)  # padding may hold anything
  singles = []
  for i, (h, w) in enumerate(sizes):
    image = _photo(h, w, crop=(slice(50 * i, 300), slice(100, 400)))
    u = _smooth_unary(h, w, 3, seed=i)
    images[i, :h, :w] = image
    unary[i, :h, :w] = u
    singles.append(np.asarray(crf.dense_crf(u, image, params)))
  q = np.asarray(crf.dense_crf_batch(unary, images, params, valid_hw_N2=sizes))
  for i, (h, w) in enumerate(sizes):
    np.testing.assert_allclose(q[i, :h, :w], singles[i], atol=2e-5)
    assert np.all(q[i, h:] == 0) and np.all(q[i, :, w:] == 0)


def test_presets_cite_deeplab_settings():
  v2 = crf.CRFParams.deeplab_v2_resnet101_voc()
  assert (v2.w1, v2.sigma_alpha, v2.sigma_beta, v2.w2, v2.sigma_gamma) == (4, 67, 3, 3, 1)
  v1 = crf.CRFParams.deeplab_v1_largefov()
  assert (v1.w1, v1.sigma_alpha, v1.sigma_beta, v1.w2, v1.sigma_gamma) == (4, 121, 5, 3, 3)
  assert "v2 §4.1" in crf.CRFParams.deeplab_v2_resnet101_voc.__doc__


def test_bad_inputs_raise_clear_errors(small):
  image, unary = small
  params = crf.CRFParams()
  with pytest.raises(ValueError, match="differs from unary size"):
    crf.dense_crf(unary[:-1], image, params)
  bad = unary.copy()
  bad[3, 4, 1] = np.nan
  with pytest.raises(ValueError, match=r"NaN/inf.*\[y, x, c\] = \(3, 4, 1\)"):
    crf.dense_crf(bad, image, params)
  bad[3, 4, 1] = np.inf
  with pytest.raises(ValueError, match="NaN/inf"):
    crf.dense_crf(bad, image, params)
  with pytest.raises(ValueError, match="sigma_beta must be > 0"):
    crf.dense_crf(unary, image, crf.CRFParams(sigma_beta=0.0))
  with pytest.raises(ValueError, match="sigma_alpha must be > 0"):
    crf.dense_crf(unary, image, crf.CRFParams(sigma_alpha=-1.0))
  with pytest.raises(ValueError, match="at least 2 classes"):
    crf.dense_crf(unary[..., :1], image, params)
  with pytest.raises(ValueError, match="uint8"):
    crf.dense_crf(unary, image.astype(np.float32), params)
  with pytest.raises(ValueError, match="normalization"):
    crf.dense_crf(unary, image, crf.CRFParams(normalization="sym"))
  with pytest.raises(ValueError, match="batch element 1"):
    crf.dense_crf_batch(np.stack([unary, bad]), np.stack([image, image]), params)


def test_lattice_overflow_is_reported(small):
  image, unary = small
  params = crf.CRFParams(w1=4.0, sigma_alpha=5.0, sigma_beta=10.0, w2=3.0, sigma_gamma=1.0)
  q_small, overflow = crf.dense_crf_core(unary, image, params, capacity_factor=0.05)
  assert bool(overflow)
  q_ok, overflow = crf.dense_crf_core(unary, image, params, capacity_factor=6.0)
  assert not bool(overflow)
  # The checked wrapper reruns with the exact bound instead of returning a wrong answer.
  np.testing.assert_allclose(crf.dense_crf(unary, image, params, capacity_factor=0.05), q_ok,
                             atol=1e-6)
  # Keys beyond one uint32 (small sigmas; large images) are flagged; the wrapper falls back to
  # two-word keys, which give the same lattice.
  noise = np.random.default_rng(0).integers(0, 256, (18, 24, 3)).astype(np.uint8)
  fine = crf.CRFParams(sigma_alpha=1.0, sigma_beta=0.5)
  _, overflow = crf.dense_crf_core(unary, noise, fine, capacity_factor=6.0)
  assert bool(overflow)
  q_two, overflow = crf.dense_crf_core(unary, noise, fine, capacity_factor=6.0, key_words=2)
  assert not bool(overflow)
  np.testing.assert_allclose(crf.dense_crf(unary, noise, fine), q_two, atol=1e-6)
  q_one, _ = crf.dense_crf_core(unary, image, params, capacity_factor=6.0, key_words=2)
  np.testing.assert_allclose(q_one, q_ok, atol=1e-6)
  # Under jit the exact-bound rerun is a lax.cond; keys beyond even two words give NaN there.
  q = jax.jit(lambda u, im: crf.dense_crf(u, im, params, capacity_factor=0.05))(unary, image)
  np.testing.assert_allclose(np.asarray(q), np.asarray(q_ok), atol=1e-6)
  absurd = crf.CRFParams(sigma_alpha=1e-4, sigma_beta=1e-4)
  q = jax.jit(lambda u, im: crf.dense_crf(u, im, absurd))(unary, noise)
  assert np.isnan(np.asarray(q)).all()
  # Keys that cannot fit even two words (absurdly small sigma) raise.
  with pytest.raises(RuntimeError, match="lattice overflow"):
    crf.dense_crf(unary, noise, crf.CRFParams(sigma_alpha=1e-4, sigma_beta=1e-4))


def test_gradients_match_finite_differences():
  """CRF-as-RNN layer: d(loss)/d(logits, w1, w2, mu) through 10 iterations, float64."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    image = jnp.asarray(_photo(6, 7))[None]
    logits = jnp.asarray(rng.normal(size=(1, 6, 7, 3)))
    layer = DenseCRF(num_classes=3, num_iters=10, sigma_alpha=3.0, sigma_beta=20.0,
                     sigma_gamma=1.0, capacity_factor=6.0)
    variables = layer.init(jax.random.key(0), logits, image)
    variables = jax.tree.map(lambda a: a + 0.1 * jnp.asarray(rng.normal(size=a.shape)),
                             variables)
    target = jnp.asarray(rng.normal(size=(1, 6, 7, 3)))

    @jax.jit
    def loss(v, x):
      return jnp.sum(jax.nn.softmax(layer.apply(v, x, image)) * target)

    g_vars, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, logits)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves((g_vars, g_x)))
    eps = 1e-6
    for idx in [(0, 2, 3, 1), (0, 5, 6, 0)]:
      e = jnp.zeros_like(logits).at[idx].set(eps)
      fd = (loss(variables, logits + e) - loss(variables, logits - e)) / (2 * eps)
      np.testing.assert_allclose(g_x[idx], fd, rtol=1e-5, atol=1e-8)
    for name, idx in [("w1", ()), ("w2", ()), ("compatibility", (0, 2))]:
      def shifted(delta):
        p = dict(variables["params"])
        p[name] = p[name].at[idx].add(delta)
        return loss({"params": p}, logits)
      fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
      np.testing.assert_allclose(g_vars["params"][name][idx], fd, rtol=1e-5, atol=1e-8)


def test_public_dense_crf_under_jit_vmap_and_grad(small):
  """dense_crf as a user calls it: jit (closure or static params), vmap, grad of the unary,
  each equal to the eager result; shape and dtype errors also while tracing."""
  image, unary = small
  params = crf.CRFParams(w1=4.0, sigma_alpha=6.0, sigma_beta=5.0, w2=3.0, sigma_gamma=1.0,
                         normalization="symmetric")
  eager = np.asarray(crf.dense_crf(unary, image, params))
  jitted = jax.jit(lambda u, im: crf.dense_crf(u, im, params))(unary, image)
  np.testing.assert_allclose(np.asarray(jitted), eager, atol=1e-4)
  static = jax.jit(crf.dense_crf, static_argnames=("params", "num_iters"))
  np.testing.assert_allclose(np.asarray(static(unary, image, params=params, num_iters=10)), eager,
                             atol=1e-4)
  unary_2, image_2 = _smooth_unary(18, 24, 4, seed=9), image[::-1].copy()
  batched = jax.vmap(lambda u, im: crf.dense_crf(u, im, params))(np.stack([unary, unary_2]),
                                                                  np.stack([image, image_2]))
  np.testing.assert_allclose(np.asarray(batched[0]), eager, atol=1e-4)
  np.testing.assert_allclose(np.asarray(batched[1]),
                             np.asarray(crf.dense_crf(unary_2, image_2, params)), atol=1e-4)
  target = jnp.asarray(np.random.default_rng(1).normal(size=unary.shape), jnp.float32)
  # 3 iterations: with w1=4, w2=3 ten iterations on this 18x24 image are too ill-conditioned for
  # float32 central differences (they swing with eps).
  loss = lambda u: jnp.sum(crf.dense_crf(u, image, params, num_iters=3) * target)
  grad = jax.grad(loss)(jnp.asarray(unary))
  np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(unary))),
                             np.asarray(grad), rtol=1e-3, atol=1e-4)
  assert float(jnp.abs(grad).max()) > 0
  # Directional derivative against central differences (float32: loose).
  direction = jnp.asarray(np.random.default_rng(2).normal(size=unary.shape), jnp.float32)
  eps = 3e-3
  numeric = (loss(unary + eps * direction) - loss(unary - eps * direction)) / (2 * eps)
  np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(numeric), rtol=2e-2)
  np.testing.assert_allclose(np.asarray(jax.jit(crf.dense_crf)(unary, image)),
                             np.asarray(crf.dense_crf(unary, image)), atol=1e-4)  # the preset
  closed_over = jnp.asarray(unary)  # a concrete jax array inside the trace
  np.testing.assert_allclose(np.asarray(jax.jit(lambda im: crf.dense_crf(closed_over, im, params))(
      image)), eager, atol=1e-4)
  with pytest.raises(ValueError, match="differs from unary size"):
    jax.jit(lambda u, im: crf.dense_crf(u, im, params))(unary[:-1], image)
  with pytest.raises(ValueError, match="uint8"):
    jax.jit(lambda u, im: crf.dense_crf(u, im, params))(unary, image.astype(np.float32))


def test_eager_checks_of_device_arrays(small):
  image, unary = small
  bad = unary.copy()
  bad[2, 5, 3] = np.inf
  with pytest.raises(ValueError, match=r"NaN/inf.*\[y, x, c\] = \(2, 5, 3\)"):
    crf.dense_crf(jnp.asarray(bad), jnp.asarray(image))
  with pytest.raises(ValueError, match="float array"):
    crf.dense_crf(unary.astype(np.int32), image)


def test_core_batch_and_layer_check_the_image_as_dense_crf_does():
  """A float (e.g. normalised) image would silently change the bilateral affinities."""
  unary = _smooth_unary(6, 7, 3)
  image = _photo(6, 7)
  params = crf.CRFParams.deeplab_v2_resnet101_voc()
  bad_images = [(image.astype(np.float32), r"image must be uint8 RGB"),
                (image[..., :2], r"image must be \[H, W, 3\] RGB"),
                (image[:5], r"image size \(5, 7\) differs from unary size \(6, 7\)")]
  for bad, message in bad_images:
    with pytest.raises(ValueError, match=message):
      crf.dense_crf(unary, bad, params)
    with pytest.raises(ValueError, match=message):
      crf.dense_crf_core(unary, bad, params)
    with pytest.raises(ValueError, match=message):  # also while tracing
      jax.jit(lambda u, im: crf.dense_crf_core(u, im, params))(unary, bad)
    with pytest.raises(ValueError, match=message.replace(r"\[H, W, 3\]", r"\[N, H, W, 3\]")
                       .replace(r"\(5, 7\)", r"\(1, 5, 7\)").replace(r"\(6, 7\)", r"\(1, 6, 7\)")):
      crf.dense_crf_batch_core(unary[None], bad[None], np.array([[6, 7]]), params)
    layer = DenseCRF(num_classes=3, num_iters=1)
    with pytest.raises(ValueError, match=message.replace(r"\[H, W, 3\]", r"\[N, H, W, 3\]")
                       .replace(r"\(5, 7\)", r"\(1, 5, 7\)").replace(r"\(6, 7\)", r"\(1, 6, 7\)")):
      layer.init(jax.random.key(0), jnp.asarray(-unary[None]), jnp.asarray(bad[None]))
