"""Mean-field inference of the fully-connected CRF (v2 §3.3; Krähenbühl & Koltun 2011, §3-4).

Q_i(l) ∝ exp(-U_i(l) - sum_m w_m sum_l' mu(l, l') [K_m Q](i, l')), iterated from Q = softmax(-U).
Message passing is Gaussian filtering of all C channels at once: the bilateral kernel on a 5-d
permutohedral lattice (deeplax.crf.lattice), the spatial kernel on a 2-d one (or an exact
separable convolution). As in Krähenbühl's code (and pydensecrf) the filter includes the pixel's
own message (j = i), the Potts term is applied as +w [K Q](i, l) (equal to the Potts penalty of
v2 §3.3 up to a per-pixel constant, which the softmax removes), and the lattice is built once
per image and reused by every iteration.

`mean_field` / `dense_crf_core` are jittable and check only the image's shape and dtype; `dense_crf` (also jittable) and
`dense_crf_batch` check their inputs first and never return an overflowed lattice's result. The iterations filter in
reused lattice tables (a workspace carried through the loop); called eagerly, `dense_crf_core`
also keeps the tables of the latest image size for the next call (`release_workspaces` frees
them): XLA CPU maps its temporary memory afresh on every call, and each new page costs a fault.
"""

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from deeplax.crf import lattice as lattice_lib
from deeplax.crf.params import CRFParams, NORMALIZATIONS


class Kernel(NamedTuple):
  """One Gaussian kernel ready for filtering: a lattice (or None: separable) and its norms."""
  lattice: Optional[lattice_lib.Lattice]
  pre_N: jax.Array           # float32 [N]: factor before filtering
  post_N: jax.Array          # float32 [N]: factor after filtering
  sigma: Optional[float]     # only for the separable spatial filter
  overflow: jax.Array


def normalization_code(normalization):
  """Index of a normalisation name in NORMALIZATIONS (traced inside jit: no recompilation)."""
  if isinstance(normalization, str):
    return NORMALIZATIONS.index(normalization)
  return normalization


def pixel_features(image_HW3, sigma_xy, sigma_rgb=None):
  """float32 [H*W, 2 or 5]: (x / σ, y / σ[, r / σ', g / σ', b / σ']) as Krähenbühl's DenseCRF2D."""
  h, w = image_HW3.shape[:2]
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  feats = [xs / sigma_xy, ys / sigma_xy]
  if sigma_rgb is not None:
    rgb = image_HW3.astype(jnp.float32) / sigma_rgb
    feats += [rgb[..., 0], rgb[..., 1], rgb[..., 2]]
  return jnp.stack(feats, -1).reshape(h * w, -1)


def _separable_gaussian(values_HWC, sigma: float):
  """Exact Gaussian filter sum_j exp(-|p_i - p_j|^2 / 2σ^2) v_j, zero outside, cut at 5σ."""
  radius = max(1, int(np.ceil(5.0 * sigma)))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)

  def along(x, axis):
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    xp = jnp.pad(x, pad)
    out = 0.0
    for t, g in enumerate(taps):
      out = out + g * jax.lax.slice_in_dim(xp, t, t + n, axis=axis)
    return out

  return along(along(values_HWC, 0), 1)


def _raw_filter(kernel: Kernel, values_NC, hw):
  if kernel.lattice is None:
    h, w = hw
    return _separable_gaussian(values_NC.reshape(h, w, -1), kernel.sigma).reshape(h * w, -1)
  return lattice_lib.lattice_filter(kernel.lattice, values_NC)


def _make_kernel(features_ND, valid_N, normalization, capacity, hw, sigma=None,
                 key_words=1) -> Kernel:
  """Builds the filter and the norms of Krähenbühl's DenseKernel::initLattice (k = K 1)."""
  n = valid_N.shape[0]
  if features_ND is None:
    lattice, overflow = None, jnp.zeros((), bool)
  else:
    lattice = lattice_lib.build_lattice(features_ND, capacity, valid_N, key_words)
    overflow = lattice.overflow
  ones = jnp.ones((n,), jnp.float32)
  kernel = Kernel(lattice, ones, ones, sigma, overflow)
  k = _raw_filter(kernel, valid_N.astype(jnp.float32)[:, None], hw)[:, 0]
  code = normalization_code(normalization)
  norm = jnp.where(code == 3, 1.0 / jnp.sqrt(k + 1e-20), 1.0 / (k + 1e-20))
  norm = jnp.where(valid_N, norm, 0.0)
  # none: K Q; before: K(Q / k); after: K(Q) / k; symmetric: K(Q / sqrt k) / sqrt k.
  pre = jnp.where((code == 1) | (code == 3), norm, ones)
  post = jnp.where((code == 2) | (code == 3), norm, ones)
  return kernel._replace(pre_N=pre, post_N=post)


def apply_kernel(kernel: Kernel, values_NC, hw):
  """Normalised filter as Krähenbühl's DenseKernel::filter (forward direction)."""
  out = _raw_filter(kernel, values_NC * kernel.pre_N[:, None], hw)
  return out * kernel.post_N[:, None]


def _prepared_filter(kernel: Kernel, hw, channels: int, dtype=jnp.float32):
  """apply_kernel as (values, workspace) -> (filtered, workspace), with the lattice's per-pixel
  norms folded into its splat and slice weights once (instead of scaling [N, C] values every
  iteration), and the lattice tables reused from call to call (the workspace); also returns
  the initial workspace."""
  if kernel.lattice is None:
    return (lambda values_NC, workspace: (apply_kernel(kernel, values_NC, hw), workspace)), ()
  lattice = kernel.lattice
  splat_lattice = lattice._replace(weight_NR=lattice.weight_NR * kernel.pre_N[:, None])
  slice_lattice = lattice._replace(weight_NR=lattice.weight_NR * kernel.post_N[:, None])
  apply = functools.partial(lattice_lib.weighted_filter, splat_lattice, slice_lattice)
  return apply, lattice_lib.filter_workspace(lattice, channels, dtype)


def build_kernels(image_HW3, sigma_alpha, sigma_beta, sigma_gamma, normalization,
                  separable_sigma=None, valid_hw=None, capacity_factor: float = 2.0,
                  key_words: int = 1):
  """Bilateral and spatial kernels of one image (lattices and norms), built once per image.

  normalization: a name of NORMALIZATIONS or its (traced) index. The spatial kernel is
  filtered separably (exactly) when `separable_sigma` (static) is given.
  """
  h, w = image_HW3.shape[:2]
  n = h * w
  if valid_hw is None:
    valid_N = jnp.ones((n,), bool)
  else:
    rows = jnp.arange(h)[:, None] < valid_hw[0]
    cols = jnp.arange(w)[None, :] < valid_hw[1]
    valid_N = (rows & cols).reshape(n)
  bilateral = _make_kernel(pixel_features(image_HW3, sigma_alpha, sigma_beta), valid_N,
                           normalization, int(np.ceil(min(capacity_factor, 6.0) * n)), (h, w),
                           key_words=key_words)
  if separable_sigma is not None:
    spatial = _make_kernel(None, valid_N, normalization, 0, (h, w), separable_sigma)
  else:
    spatial = _make_kernel(pixel_features(image_HW3, sigma_gamma), valid_N, normalization,
                           int(np.ceil(min(capacity_factor, 3.0) * n)), (h, w),
                           key_words=key_words)
  return bilateral, spatial, valid_N


def mean_field(unary_NC, kernels, weights, hw, num_iters: int,
               compatibility_CC=None, return_all: bool = False, workspaces=None,
               return_workspaces: bool = False):
  """`num_iters` mean-field updates; returns the final logits (log Q up to a constant).

  weights: one scalar per kernel; compatibility_CC: None for Potts, else mu [C, C] with the
  penalty convention of v2 §3.3 (message -= w mu K Q). With return_all, logits of every iterate
  [num_iters + 1, N, C] (iterate 0 is -U). workspaces: the lattice tables the iterations reuse
  (default: fresh zeros; see `initial_workspaces`); with return_workspaces, (logits, workspaces).
  """
  hw = tuple(hw)
  prepared = [_prepared_filter(kernel, hw, unary_NC.shape[1], unary_NC.dtype)
              for kernel in kernels]

  def step(carry, _):
    logits, workspaces = carry
    q = jax.nn.softmax(logits, axis=-1)
    message = -unary_NC
    new_workspaces = []
    for (apply, _), workspace, weight in zip(prepared, workspaces, weights):
      filtered, workspace = apply(q, workspace)
      new_workspaces.append(workspace)
      if compatibility_CC is None:
        message = message + weight * filtered
      else:
        message = message - weight * filtered @ compatibility_CC.T
    return (message, tuple(new_workspaces)), (message if return_all else None)

  if workspaces is None:
    workspaces = tuple(workspace for _, workspace in prepared)
  (logits, workspaces), history = jax.lax.scan(step, (-unary_NC, tuple(workspaces)), None,
                                               length=num_iters)
  if return_all:
    logits = jnp.concatenate([-unary_NC[None], history], 0)
  return (logits, workspaces) if return_workspaces else logits


def _numeric(params: CRFParams):
  """The traced part of the parameters (changing them does not recompile)."""
  return jnp.asarray([params.w1, params.sigma_alpha, params.sigma_beta, params.w2,
                      params.sigma_gamma, normalization_code(params.normalization)],
                     jnp.float32)


def _static(params: CRFParams):
  return params.sigma_gamma if params.spatial_filter == "separable" else None


def _core_impl(unary_HWC, image_HW3, numeric, static, num_iters, valid_hw, capacity_factor,
               return_all, key_words=1, workspaces=None):
  separable_sigma = static
  w1, sigma_alpha, sigma_beta, w2, sigma_gamma = (numeric[i] for i in range(5))
  normalization = numeric[5].astype(jnp.int32)
  h, w, c = unary_HWC.shape
  bilateral, spatial, valid_N = build_kernels(image_HW3, sigma_alpha, sigma_beta, sigma_gamma,
                                              normalization, separable_sigma, valid_hw,
                                              capacity_factor, key_words)
  unary = jnp.where(valid_N[:, None], unary_HWC.reshape(h * w, c).astype(jnp.float32), 0.0)
  logits, workspaces = mean_field(unary, (bilateral, spatial), (w1, w2), (h, w), num_iters,
                                  return_all=return_all, workspaces=workspaces,
                                  return_workspaces=True)
  q = jax.nn.softmax(logits, axis=-1) * valid_N[:, None]
  shape = (num_iters + 1, h, w, c) if return_all else (h, w, c)
  return q.reshape(shape), bilateral.overflow | spatial.overflow, workspaces


_STATIC = ("static", "num_iters", "capacity_factor", "return_all", "key_words")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _core(unary_HWC, image_HW3, numeric, static, num_iters, valid_hw, capacity_factor,
          return_all, key_words=1):
  return _core_impl(unary_HWC, image_HW3, numeric, static, num_iters, valid_hw,
                    capacity_factor, return_all, key_words)[:2]


# The same with the lattice tables passed in and returned (donated): calls on images of one size
# reuse them instead of allocating, zeroing and page-faulting ~200 MB each time (VOC size).
_core_reusing = jax.jit(_core_impl, static_argnames=_STATIC, donate_argnames=("workspaces",))
_WORKSPACE_CACHE = {}  # the latest call's tables: {their shapes: workspaces}
_WORKSPACE_CACHE_MAX_BYTES = 1 << 30  # larger sets (e.g. 2048x1024 images) are not kept


def _platform(x) -> str:
  return next(iter(x.devices())).platform


def release_workspaces():
  """Frees the lattice tables `dense_crf_core` / `dense_crf` keep for the next call."""
  _WORKSPACE_CACHE.clear()


def workspace_shapes(unary_HWC, image_HW3, static, capacity_factor, key_words):
  """Shapes and dtypes of the lattice tables `_core_reusing` takes for inputs of these shapes."""
  def init(unary, image):
    h, w, c = unary.shape
    kernels = build_kernels(image, 1.0, 1.0, 1.0, 0, static, None, capacity_factor,
                            key_words)[:2]
    return tuple(_prepared_filter(kernel, (h, w), c)[1] for kernel in kernels)
  return jax.eval_shape(init, unary_HWC, image_HW3)


def initial_workspaces(unary_HWC, image_HW3, static, capacity_factor, key_words):
  """Zero lattice tables for `_core_reusing` on inputs of these shapes."""
  shapes = workspace_shapes(unary_HWC, image_HW3, static, capacity_factor, key_words)
  return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)


_TABLE_SHAPES = {}  # call signature -> the shapes of its tables (small; computed once)


def keeping_tables(key, table_shapes, run_reusing):
  """run_reusing(workspaces) -> (*outputs, workspaces), with the tables of the latest call kept
  for the next call that needs tables of the same shapes (one set, none above 1 GiB; any
  caller: `dense_crf_core`, `densecrf.DenseCRF`), zero tables otherwise; returns the outputs.
  `table_shapes()`: the tables' jax.ShapeDtypeStructs, asked once per `key`.

  For eager calls on the CPU only: XLA CPU maps its temporary memory afresh on every call and
  each new page costs a fault (BENCHMARKS.md, "Dense CRF"). Reused tables give the results of
  fresh ones: the filter reads only rows it has written (tests/test_crf.py)."""
  shapes = _TABLE_SHAPES.get(key)
  if shapes is None:
    if len(_TABLE_SHAPES) > 64:
      _TABLE_SHAPES.clear()
    shapes = _TABLE_SHAPES[key] = table_shapes()
  signature = (jax.tree.structure(shapes),
               tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(shapes)))
  workspaces = _WORKSPACE_CACHE.pop(signature, None)
  if workspaces is None:
    _WORKSPACE_CACHE.clear()  # keep one set of tables only
    workspaces = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
  *outputs, workspaces = run_reusing(workspaces)
  if sum(x.nbytes for x in jax.tree.leaves(workspaces)) <= _WORKSPACE_CACHE_MAX_BYTES:
    _WORKSPACE_CACHE[signature] = workspaces
  return tuple(outputs)


def is_traced(*xs) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in xs)


def dense_crf_core(unary_HWC, image_HW3, params: CRFParams, num_iters: int = 10,
                   valid_hw=None, capacity_factor: float = 2.0, return_all: bool = False,
                   key_words: int = 1):
  """Jittable CRF of one image -> (Q [H, W, C] (or all iterates), overflow flag); checks only
  the image's shape and dtype (`check_image`), not the unary's values.

  valid_hw: optional int [2], the real size of a bottom/right-padded image; padded pixels get
  Q = 0 and do not influence the others. Weights, sigmas and the normalisation are traced (no
  recompilation when they change); spatial_filter is static. The flag is set when a lattice
  needs more than capacity_factor x H W points or its keys do not fit `key_words` uint32 words
  (rerun with capacity_factor=6, key_words=2). Called eagerly on the CPU, it keeps the lattice
  tables of the latest image size for the next call (one set, ~190 MB at VOC size, none above
  1 GiB; `release_workspaces()` frees them): fresh tables cost the CPU page faults each call
  (BENCHMARKS.md, "Dense CRF"). On accelerators nothing is kept.
  """
  check_image(image_HW3, _as_checkable(unary_HWC).shape[:2])
  if valid_hw is not None:
    valid_hw = jnp.asarray(valid_hw, jnp.int32)
  args = (_numeric(params), _static(params), int(num_iters), valid_hw, float(capacity_factor),
          bool(return_all), int(key_words))
  if is_traced(unary_HWC, image_HW3, valid_hw):
    return _core(unary_HWC, image_HW3, *args)
  unary_HWC, image_HW3 = jnp.asarray(unary_HWC), jnp.asarray(image_HW3)
  if _platform(unary_HWC) != "cpu":
    return _core(unary_HWC, image_HW3, *args)
  key = (unary_HWC.shape, image_HW3.shape, args[1], args[4], args[6])
  return keeping_tables(
      key, lambda: workspace_shapes(unary_HWC, image_HW3, args[1], args[4], args[6]),
      lambda ws: _core_reusing(unary_HWC, image_HW3, *args, workspaces=ws))


def check_finite(name: str, array, index_names: str):
  """Raises ValueError naming the first NaN/inf of a concrete array (tracers: nothing to do)."""
  if is_traced(array):
    return
  if isinstance(array, jax.Array):  # counted where it lives; copied to the host only to report
    with jax.ensure_compile_time_eval():  # also a concrete array closed over inside a jit
      if bool(jnp.isfinite(array).all()):
        return
    array = np.asarray(array)
  bad = ~np.isfinite(array)
  if bad.any():
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{name} has {int(bad.sum())} NaN/inf values (first at {index_names} = "
                     f"{first}); pass -log(softmax) of finite scores")


def _as_checkable(x):
  return x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)


def check_image(image, size_hw, batched: bool = False) -> None:
  """The image argument of every CRF form: uint8 RGB [(N,) H, W, 3] of the unary's size.
  Metadata only, so also while tracing; a float image (e.g. normalised) would silently give
  other bilateral affinities, since σβ is in 0..255 intensity units."""
  image = _as_checkable(image)
  layout = "[N, H, W, 3]" if batched else "[H, W, 3]"
  if image.ndim != (4 if batched else 3) or image.shape[-1] != 3:
    raise ValueError(f"image must be {layout} RGB; got shape {tuple(image.shape)}")
  if image.dtype != np.uint8:
    raise ValueError(f"image must be uint8 RGB (0..255, σβ is in these units); got dtype "
                     f"{image.dtype}")
  if tuple(image.shape[:-1]) != tuple(size_hw):
    raise ValueError(f"image size {tuple(image.shape[:-1])} differs from unary size "
                     f"{tuple(size_hw)}; resize the scores to the image first (v2 §3: "
                     "bilinear upsampling)")


def check_inputs(unary_HWC, image_HW3, params: CRFParams, num_iters: int, valid_hw=None):
  """Checks with clear messages: shapes, dtypes, sigmas and iterations always (also while
  tracing under jit / vmap / grad), NaN/inf unaries only on concrete arrays."""
  params.validate()
  unary, image = _as_checkable(unary_HWC), _as_checkable(image_HW3)
  if unary.ndim != 3:
    raise ValueError(f"unary must be [H, W, C] negative log-probabilities; got shape {unary.shape}")
  if not jnp.issubdtype(unary.dtype, jnp.floating):
    raise ValueError(f"unary must be a float array (-log P); got dtype {unary.dtype}")
  if unary.shape[-1] < 2:
    raise ValueError(f"unary needs at least 2 classes (channels); got {unary.shape[-1]}")
  check_image(image, unary.shape[:2])
  if int(num_iters) < 0 or int(num_iters) != num_iters:
    raise ValueError(f"num_iters must be an integer >= 0; got {num_iters}")
  region = unary
  if valid_hw is not None:
    vh, vw = (int(v) for v in valid_hw)
    if not (0 < vh <= unary.shape[0] and 0 < vw <= unary.shape[1]):
      raise ValueError(f"valid size {(vh, vw)} outside the padded size {tuple(unary.shape[:2])}")
    region = unary[:vh, :vw]
  check_finite("unary", region, "[y, x, c]")


def dense_crf(unary_HWC, image_HW3, params: Optional[CRFParams] = None, num_iters: int = 10,
              capacity_factor: float = 2.0):
  """Marginals Q float32 [H, W, C] of the dense CRF (v2 §3.3) for one image, checked.

  unary_HWC: float negative log-probabilities -log P (v2 §3.3); image_HW3: uint8 RGB.
  Jittable, vmappable and differentiable in the unary: `jax.jit(lambda u, im: dense_crf(u, im,
  params))`, or `jax.jit(dense_crf, static_argnames=("params", "num_iters"))`. Shapes, dtypes
  and parameters are checked when traced, NaN/inf unaries when the unary is concrete.
  The lattices hold `capacity_factor` x H W points with keys packed in one uint32; if one
  overflows (more points, or keys beyond 32 bits: large images with small σ, e.g. 1024x2048
  at σβ=3), the CRF is rerun with the exact bound ((d+1) H W points) and two-word keys, so the
  result is never silently wrong: eagerly by a second call, traced by a `lax.cond` (under
  `vmap` both branches run: `dense_crf_batch` is the faster batched path). Raises ValueError on
  bad input and RuntimeError if the keys do not fit even 2 x 32 bits (absurdly small σ); traced,
  that case returns NaN marginals instead.
  """
  params = CRFParams.deeplab_v2_resnet101_voc() if params is None else params
  check_inputs(unary_HWC, image_HW3, params, num_iters)
  run = lambda f, k: dense_crf_core(unary_HWC, image_HW3, params, num_iters, capacity_factor=f,
                                    key_words=k)
  if is_traced(unary_HWC, image_HW3):
    return _rerun_on_overflow(run, capacity_factor)
  return _run_checked(run, capacity_factor, params)


def _rerun_on_overflow(run, capacity_factor):
  q, overflow = run(capacity_factor, 1)

  def exact(_):
    q_exact, overflow_exact = run(6.0, 2)
    return jnp.where(overflow_exact, jnp.nan, q_exact)

  return jax.lax.cond(jnp.any(overflow), exact, lambda _: q, None)


def _run_checked(run, capacity_factor, params):
  q, overflow = run(capacity_factor, 1)
  if bool(np.any(overflow)):  # too many points or keys beyond 32 bits: use the exact bounds
    q, overflow = run(6.0, 2)
  if bool(np.any(overflow)):
    raise RuntimeError(
        "dense CRF lattice overflow: the lattice keys do not fit 2 x 32 bits for "
        f"sigma_alpha={params.sigma_alpha}, sigma_beta={params.sigma_beta}, "
        f"sigma_gamma={params.sigma_gamma} at this image size; use larger sigmas or smaller images")
  return q


@functools.partial(jax.jit, static_argnames=("static", "num_iters", "capacity_factor",
                                             "key_words"))
def _batch_core(unary_NHWC, images_NHW3, valid_hw_N2, numeric, static, num_iters,
                capacity_factor, key_words=1):
  run = lambda u, im, hw: _core(u, im, numeric, static, num_iters, hw, capacity_factor, False,
                                key_words)
  return jax.vmap(run)(unary_NHWC, images_NHW3, valid_hw_N2)


def dense_crf_batch_core(unary_NHWC, images_NHW3, valid_hw_N2, params: CRFParams,
                         num_iters: int = 10, capacity_factor: float = 2.0, key_words: int = 1):
  """Batched CRF (image shape and dtype checked): dense_crf_core over images with per-image valid sizes [N, 2]."""
  check_image(images_NHW3, _as_checkable(unary_NHWC).shape[:3], batched=True)
  return _batch_core(unary_NHWC, images_NHW3, jnp.asarray(valid_hw_N2, jnp.int32),
                     _numeric(params), _static(params), int(num_iters), float(capacity_factor),
                     int(key_words))


def dense_crf_batch(unary_NHWC, images_NHW3, params: Optional[CRFParams] = None,
                    valid_hw_N2=None, num_iters: int = 10, capacity_factor: float = 2.0):
  """Checked batched CRF of padded images -> Q [N, H, W, C] (0 outside each valid region).

  valid_hw_N2: int [N, 2] real (height, width) of each bottom/right-padded image (default: the
  full size). Each image's result equals dense_crf on its unpadded crop.
  """
  params = CRFParams.deeplab_v2_resnet101_voc() if params is None else params
  unary = np.asarray(unary_NHWC)
  images = np.asarray(images_NHW3)
  if unary.ndim != 4 or images.ndim != 4 or unary.shape[0] != images.shape[0]:
    raise ValueError(f"expected unary [N, H, W, C] and images [N, H, W, 3]; got {unary.shape} "
                     f"and {images.shape}")
  n = unary.shape[0]
  if valid_hw_N2 is None:
    valid_hw_N2 = np.tile(np.asarray(unary.shape[1:3], np.int32), (n, 1))
  valid_hw_N2 = np.asarray(valid_hw_N2, np.int32)
  if valid_hw_N2.shape != (n, 2):
    raise ValueError(f"valid_hw_N2 must be [N, 2] = [{n}, 2]; got {valid_hw_N2.shape}")
  for i in range(n):
    try:
      check_inputs(unary[i], images[i], params, num_iters, valid_hw_N2[i])
    except ValueError as e:
      raise ValueError(f"batch element {i}: {e}") from None
  return _run_checked(lambda f, k: dense_crf_batch_core(unary, images, valid_hw_N2, params,
                                                        num_iters, f, k), capacity_factor, params)
