"""pydensecrf's `densecrf` API on deeplax's lattice CRF: `import deeplax.crf.densecrf as dcrf`.

The classes, methods, constants, array layouts ([C, N] float32 unaries and marginals, [D, N]
float32 features, pixel index y * W + x) and the mean-field update are those of Krähenbühl's
DenseCRF (Krähenbühl & Koltun 2011, the CRF of DeepLab v2 §3.3) as its Python binding
pydensecrf exposes them:

    d = dcrf.DenseCRF2D(width, height, n_labels)
    d.setUnaryEnergy(U)                        # float32 [n_labels, width * height], -log P
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image_HW3_uint8, compat=10)
    Q = d.inference(5)                         # float32 [n_labels, N]; d.map(5): labels [N]

compat: a number (Potts: message += w K Q), a float32 vector [C] (per label: message -= v_l
[K Q]_l) or a float32 matrix [C, C] (symmetrised (M + M^T) / 2: message -= M [K Q]); the kernel
constants only parametrise Krähenbühl's kernel learning and give the same inference.

Where pydensecrf raises (wrong dtype or shape) the messages are its own ("Buffer dtype mismatch,
expected 'float' but got 'double'", "Bad shape for unary energy ..."), as ValueError. Where it
silently accepts bad input, this module raises: kernel / normalisation codes outside the
constants, NaN or -inf unaries (+inf, P = 0, is allowed unless every label of a pixel has it),
NaN/inf features or compat, labels out of range in `utils.unary_from_labels`;
the Q given to `stepInference` / `klDivergence` is checked for its shape. Non-contiguous arrays
are accepted (pydensecrf: "ndarray is not C-contiguous"); learned unaries
(`setUnaryEnergy(unary, feature)`), `setUnary` and pydensecrf's deprecated `utils.compute_unary` /
`softmax_to_unary` are not provided; `map(n)` is a deeplax addition. Lattices hold min(2, d + 1) N points, and
an overflowing one is rebuilt at the exact bound (d + 1) N, so no result comes from an overflowed
lattice. On the CPU `inference` keeps the lattice tables of the latest size for the next call,
as `dense_crf` does (BENCHMARKS.md, "Dense CRF").
"""

import functools
from numbers import Number, Real

import jax
import jax.numpy as jnp
import numpy as np

from deeplax.crf import inference as inference_lib

CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL = 0, 1, 2
NO_NORMALIZATION, NORMALIZE_BEFORE, NORMALIZE_AFTER, NORMALIZE_SYMMETRIC = 0, 1, 2, 3
_KERNELS = {CONST_KERNEL: "CONST_KERNEL", DIAG_KERNEL: "DIAG_KERNEL", FULL_KERNEL: "FULL_KERNEL"}
_NORMALIZATIONS = {NO_NORMALIZATION: "NO_NORMALIZATION", NORMALIZE_BEFORE: "NORMALIZE_BEFORE",
                   NORMALIZE_AFTER: "NORMALIZE_AFTER", NORMALIZE_SYMMETRIC: "NORMALIZE_SYMMETRIC"}


def _compat(compat, n_labels):
  """compat -> (kind, value): ("potts", -w) or ("matrix", M float32 [C, C]) with compat(x) =
  -w x or x @ M.T on [N, C] values (Krähenbühl's LabelCompatibility::apply; message -=
  compat(K Q))."""
  if isinstance(compat, Real):
    return "potts", np.float32(-float(compat))
  if not isinstance(compat, np.ndarray):
    raise ValueError(f"compat must be a number, or a float32 numpy array [n_labels] or "
                     f"[n_labels, n_labels] as pydensecrf takes; got {type(compat).__name__}")
  if compat.dtype != np.float32:
    raise _dtype_error("float", compat, "compat arrays are float32")
  if compat.ndim > 2:
    raise ValueError("LabelCompatibility of dimension >2 not meaningful.")
  if compat.shape not in ((n_labels,), (n_labels, n_labels)):
    raise ValueError(f"compat of shape {compat.shape} for {n_labels} labels: need "
                     f"({n_labels},) or ({n_labels}, {n_labels})")
  _check_finite("compat", compat)
  if compat.ndim == 1:
    return "matrix", np.diag(compat).astype(np.float32)
  return "matrix", ((compat + compat.T) / 2).astype(np.float32)


def _apply_compat(kind, value, filtered_NC):
  return value * filtered_NC if kind == "potts" else filtered_NC @ value.T


_C_NAMES = {"float64": "double", "float32": "float", "float16": "half", "uint8": "unsigned char",
            "int8": "signed char", "int16": "short", "int32": "int", "int64": "long",
            "uint16": "unsigned short", "uint32": "unsigned int", "uint64": "unsigned long"}


def _dtype_error(expected, array, what):
  dtype = getattr(array, "dtype", None)
  got = _C_NAMES.get(str(dtype), str(dtype)) if dtype is not None else type(array).__name__
  return ValueError(f"Buffer dtype mismatch, expected '{expected}' but got '{got}' ({what})")


def _check_unary(unary_CN):
  """NaN and -inf are errors; +inf (P = 0, as unary_from_softmax(clip=None) gives) is allowed
  unless it covers every label of a pixel."""
  bad = np.isnan(unary_CN) | (unary_CN == -np.inf)
  if bad.any():
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"unary has NaN/-inf values (first at index {first})")
  impossible = np.isposinf(unary_CN).all(0)
  if impossible.any():
    raise ValueError(f"unary is +inf for every label at {int(impossible.sum())} pixels (first: "
                     f"{int(np.argmax(impossible))}): every label has probability 0 there")


def _check_finite(name, array):
  if not np.isfinite(array).all():
    first = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
    raise ValueError(f"{name} has NaN/inf values (first at index {first})")


def _check_code(name, value, names):
  if isinstance(value, bool) or int(value) != value or int(value) not in names:
    raise ValueError(f"{name} must be one of {', '.join(f'{v} ({k})' for k, v in names.items())};"
                     f" got {value!r}")
  return int(value)


def _kernels(features, normalizations, capacities, key_words):
  """One Kernel (lattice + Krähenbühl's norms) per pairwise term; with the overflow flag."""
  kernels = []
  for features_DN, code, capacity in zip(features, normalizations, capacities):
    n = features_DN.shape[1]
    kernels.append(inference_lib._make_kernel(features_DN.T, jnp.ones((n,), bool), code,
                                              capacity, (n, 1), key_words=key_words))
  return tuple(kernels), jnp.any(jnp.stack([jnp.zeros((), bool)] + [k.overflow for k in kernels]))


def _iterate(kernels, kinds, compats, unary_NC, q_NC, num_iters, workspaces=None):
  """`num_iters` updates Q <- softmax(-U - sum_k compat_k(K_k Q)) from Q -> (Q, workspaces)."""
  prepared = [inference_lib._prepared_filter(k, (unary_NC.shape[0], 1), unary_NC.shape[1])
              for k in kernels]
  if workspaces is None:
    workspaces = tuple(ws for _, ws in prepared)

  def step(carry, _):
    q, workspaces = carry
    logits, new = -unary_NC, []
    for (apply, _), workspace, kind, value in zip(prepared, workspaces, kinds, compats):
      filtered, workspace = apply(q, workspace)
      new.append(workspace)
      logits = logits - _apply_compat(kind, value, filtered)
    return (jax.nn.softmax(logits, -1), tuple(new)), None

  (q, workspaces), _ = jax.lax.scan(step, (q_NC, tuple(workspaces)), None, length=num_iters)
  return q, workspaces


_STATIC = ("kinds", "num_iters", "capacities", "key_words")


def _infer_impl(features, codes, kinds, compats, unary_NC, num_iters, capacities, key_words,
                workspaces=None):
  """Lattices built and `num_iters` updates from softmax(-U), in one call."""
  kernels, overflow = _kernels(features, codes, capacities, key_words)
  q, workspaces = _iterate(kernels, kinds, compats, unary_NC, jax.nn.softmax(-unary_NC, -1),
                           num_iters, workspaces)
  return q, overflow, workspaces


_infer = jax.jit(_infer_impl, static_argnames=_STATIC)
_infer_reusing = jax.jit(_infer_impl, static_argnames=_STATIC, donate_argnames=("workspaces",))
_build = jax.jit(_kernels, static_argnames=("capacities", "key_words"))


@functools.partial(jax.jit, static_argnames=("kinds",))
def _step(kernels, kinds, compats, unary_NC, q_NC):
  return _iterate(kernels, kinds, compats, unary_NC, q_NC, 1)[0]


@functools.partial(jax.jit, static_argnames=("kinds",))
def _kl(kernels, kinds, compats, unary_NC, q_NC):
  hw = (q_NC.shape[0], 1)
  pairwise = sum(jnp.sum(q_NC * _apply_compat(kind, value,
                                              inference_lib.apply_kernel(kernel, q_NC, hw)))
                 for kernel, kind, value in zip(kernels, kinds, compats))
  entropy = jnp.sum(q_NC * jnp.log(jnp.maximum(q_NC, 1e-20)))
  return entropy + jnp.sum(unary_NC * q_NC) + pairwise


class DenseCRF:
  """The fully-connected CRF on `n_pixels` points with arbitrary features (pydensecrf.DenseCRF)."""

  def __init__(self, n_pixels, n_labels):
    for name, value in (("n_pixels", n_pixels), ("n_labels", n_labels)):
      if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    self._n, self._c = int(n_pixels), int(n_labels)
    self._unary_NC = None
    self._terms = []  # (features [D, N], normalisation code, compat kind, compat value)
    self._kernels = None  # built by the first stepInference / klDivergence
    self._unary_device = None

  def setUnaryEnergy(self, unary, feature=None):
    """unary: float32 [n_labels, n_pixels], -log P of each label."""
    if feature is not None:
      raise ValueError("learned unaries (setUnaryEnergy(unary, feature)) are not supported: pass "
                       "the energies as a float32 [n_labels, n_pixels] array")
    if not isinstance(unary, np.ndarray) or unary.dtype != np.float32:
      raise _dtype_error("float", unary, "unary energies are float32 [n_labels, n_pixels]")
    if unary.shape != (self._c, self._n):
      raise ValueError(f"Bad shape for unary energy (Need ({self._c}, {self._n}), got "
                       f"{unary.shape})")
    _check_unary(unary)
    self._unary_NC = np.array(unary.T, np.float32)
    self._unary_device = None

  def addPairwiseEnergy(self, features, compat, kernel=DIAG_KERNEL,
                        normalization=NORMALIZE_SYMMETRIC):
    """A Gaussian kernel exp(-|f_i - f_j|^2 / 2) on features float32 [D, n_pixels] (already
    divided by their standard deviations), any D >= 1."""
    if not isinstance(features, np.ndarray) or features.dtype != np.float32:
      raise _dtype_error("float", features, "features are float32 [D, n_pixels]")
    if features.ndim != 2 or features.shape[1] != self._n or features.shape[0] < 1:
      raise ValueError(f"Bad shape for pairwise energy (Need (?, {self._n}), got "
                       f"{features.shape})")
    _check_finite("features", features)
    _check_code("kernel", kernel, _KERNELS)
    code = _check_code("normalization", normalization, _NORMALIZATIONS)
    kind, value = _compat(compat, self._c)
    self._terms.append((np.array(features, np.float32), code, kind, value))
    self._kernels = None

  def _arguments(self):
    if self._unary_NC is None:
      raise ValueError("no unary energy: call setUnaryEnergy first")
    features, codes, kinds, compats = zip(*self._terms) if self._terms else ((),) * 4
    if self._unary_device is None:
      self._unary_device = jnp.asarray(self._unary_NC)
    return (tuple(jnp.asarray(f) for f in features), tuple(jnp.int32(c) for c in codes),
            kinds, tuple(jnp.asarray(v) for v in compats), self._unary_device)

  def _capacities(self, exact):
    """min(2, d + 1) N lattice points per term, or the exact bound (d + 1) N."""
    return tuple(int(np.ceil((f.shape[0] + 1 if exact else min(2, f.shape[0] + 1)) * self._n))
                 for f, *_ in self._terms)

  def _run(self, num_iters, exact):
    features, codes, kinds, compats, unary = self._arguments()
    capacities, key_words = self._capacities(exact), 2 if exact else 1
    args = (features, codes, kinds, compats, unary, num_iters, capacities, key_words)
    if inference_lib._platform(unary) != "cpu" or not features:
      return _infer(*args)[:2]

    def tables():
      return jax.eval_shape(lambda f, c: tuple(
          inference_lib._prepared_filter(k, (self._n, 1), self._c)[1]
          for k in _kernels(f, c, capacities, key_words)[0]), features, codes)

    key = ("densecrf", tuple(f.shape for f in features), self._c, capacities, key_words)
    return inference_lib.keeping_tables(key, tables,
                                        lambda ws: _infer_reusing(*args, workspaces=ws))

  def _ready(self):
    """(kernels, kinds, compats, unary) for step-wise inference; the kernels built once (until
    a pairwise term is added), the unary the latest one set."""
    features, codes, kinds, compats, unary = self._arguments()
    if self._kernels is None:
      kernels, overflow = _build(features, codes, self._capacities(False), 1)
      if bool(overflow):
        kernels, overflow = _build(features, codes, self._capacities(True), 2)
        _raise_if(overflow)
      self._kernels = kernels
    return self._kernels, kinds, compats, unary

  def _as_q(self, Q):
    q = np.asarray(Q)
    if q.shape != (self._c, self._n):
      raise ValueError(f"Q must be [n_labels, n_pixels] = ({self._c}, {self._n}); got {q.shape}")
    return jnp.asarray(q.T, jnp.float32)

  def inference(self, n_iterations):
    """Marginals float32 [n_labels, n_pixels] after `n_iterations` mean-field updates."""
    if isinstance(n_iterations, bool) or int(n_iterations) != n_iterations or n_iterations < 0:
      raise ValueError(f"n_iterations must be an integer >= 0; got {n_iterations!r}")
    q, overflow = self._run(int(n_iterations), exact=False)
    if bool(overflow):
      q, overflow = self._run(int(n_iterations), exact=True)
      _raise_if(overflow)
    return np.array(q).T  # writable [C, N] view of an [N, C] copy (F-contiguous, as pydensecrf's)

  def map(self, n_iterations=5):
    """Most probable label per pixel, int [n_pixels], after `n_iterations` updates (a deeplax
    addition: pydensecrf2 has no `map`; np.argmax(d.inference(n), 0) there)."""
    return np.argmax(self.inference(n_iterations), axis=0)

  def startInference(self):
    """(Q, tmp1, tmp2): Q = softmax(-U) [n_labels, n_pixels]; tmp1/tmp2 are pydensecrf's
    scratch buffers, here empty."""
    unary = self._ready()[3]
    empty = np.zeros((0, 0), np.float32)
    return np.array(jax.nn.softmax(-unary, -1)).T, empty, empty.copy()

  def stepInference(self, Q, tmp1, tmp2):
    """One mean-field update of Q [n_labels, n_pixels] in place."""
    if not isinstance(Q, np.ndarray) or not Q.flags.writeable:
      raise ValueError("Q must be the writable array startInference returned (it is updated "
                       "in place)")
    Q[...] = np.asarray(_step(*self._ready(), self._as_q(Q))).T

  def klDivergence(self, Q):
    """KL(Q || P) up to log Z: sum Q log Q + sum U Q + sum_k sum Q compat_k(K_k Q)."""
    return float(_kl(*self._ready(), self._as_q(Q)))


def _raise_if(overflow):
  if bool(overflow):
    raise RuntimeError("the lattice keys do not fit in 2 x 32 bits: the features are spread "
                       "over too large a range (divide them by larger standard deviations)")


class DenseCRF2D(DenseCRF):
  """DenseCRF on a width x height image, pixel (x, y) at index y * width + x."""

  def __init__(self, width, height, n_labels):
    for name, value in (("width", width), ("height", height)):
      if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    super().__init__(int(width) * int(height), n_labels)
    self._w, self._h = int(width), int(height)

  def _positions(self, sxy):
    sx, sy = (float(sxy), float(sxy)) if isinstance(sxy, Number) else (float(s) for s in sxy)
    if not (sx > 0 and sy > 0):
      raise ValueError(f"sxy must be > 0; got {sxy!r}")
    ys, xs = np.mgrid[:self._h, :self._w].astype(np.float32)
    return [(xs / sx).ravel(), (ys / sy).ravel()]

  def addPairwiseGaussian(self, sxy, compat, kernel=DIAG_KERNEL,
                          normalization=NORMALIZE_SYMMETRIC):
    """The smoothness kernel exp(-|p_i - p_j|^2 / 2 sxy^2); sxy a number or (sx, sy)."""
    self.addPairwiseEnergy(np.stack(self._positions(sxy)), compat, kernel, normalization)

  def addPairwiseBilateral(self, sxy, srgb, rgbim, compat, kernel=DIAG_KERNEL,
                           normalization=NORMALIZE_SYMMETRIC):
    """The appearance kernel exp(-|p_i - p_j|^2 / 2 sxy^2 - |I_i - I_j|^2 / 2 srgb^2) on a
    uint8 RGB image [height, width, 3]; srgb a number or one per channel."""
    if not isinstance(rgbim, np.ndarray) or rgbim.dtype != np.uint8:
      raise _dtype_error("unsigned char", rgbim, "rgbim is a uint8 RGB image")
    if rgbim.shape[:2] != (self._h, self._w):
      raise ValueError(f"Bad shape for pairwise bilateral (Need ({self._h}, {self._w}, 3), got "
                       f"{rgbim.shape})")
    if rgbim.ndim != 3 or rgbim.shape[2] != 3:
      raise ValueError("addPairwiseBilateral only works for RGB images. For other types, use "
                       "`utils.create_pairwise_bilateral` to construct your own pairwise energy "
                       "and add it through `addPairwiseEnergy`.")
    srgb = (srgb,) * 3 if isinstance(srgb, Number) else tuple(srgb)
    if len(srgb) != 3 or not all(float(s) > 0 for s in srgb):
      raise ValueError(f"srgb must be a number or 3 numbers > 0; got {srgb!r}")
    colours = [(rgbim[..., i].astype(np.float32) / float(s)).ravel() for i, s in enumerate(srgb)]
    self.addPairwiseEnergy(np.stack(self._positions(sxy) + colours), compat, kernel,
                           normalization)
