"""deeplax.crf.densecrf / deeplax.crf.utils: as pydensecrf's users call them, against pydensecrf2
where it is installed (the API's own checks run without it)."""

import jax
import numpy as np
import pytest

import deeplax.crf.densecrf as dcrf
import deeplax.crf.utils as utils

try:
  import pydensecrf.densecrf as pdcrf
  import pydensecrf.utils as putils
except ImportError:
  pdcrf = putils = None
needs_pydensecrf = pytest.mark.skipif(pdcrf is None,
                                      reason="pydensecrf2 (pip install pydensecrf2)")

H, W, C = 375, 500, 21


@pytest.fixture(scope="module")
def photo():
  from test_crf_pydensecrf import cluster_unary, voc_photo  # skips without pydensecrf
  image = voc_photo("astronaut")
  probs = np.ascontiguousarray(np.exp(-cluster_unary(image, seed=3)).transpose(2, 0, 1))
  return image, probs


def _post_process(mod, ut, image, probs, steps=5):
  """The README snippet of pydensecrf: DeepLab post-processing of a softmax."""
  d = mod.DenseCRF2D(W, H, C)
  d.setUnaryEnergy(ut.unary_from_softmax(probs))
  d.addPairwiseGaussian(sxy=3, compat=3)
  d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
  return np.asarray(d.inference(steps)), d


@needs_pydensecrf
def test_deeplab_post_processing_matches_pydensecrf(photo):
  image, probs = photo
  q, d = _post_process(dcrf, utils, image, probs)
  q_ref, _ = _post_process(pdcrf, putils, image, probs)
  assert q.shape == (C, H * W) and q.dtype == np.float32 and q.flags.f_contiguous
  assert q.flags.writeable
  agree = (q.argmax(0) == q_ref.argmax(0)).mean()
  assert agree >= 0.995, agree
  assert (q.argmax(0) != probs.reshape(C, -1).argmax(0)).mean() > 0.02  # the CRF did work
  np.testing.assert_allclose(q, q_ref, atol=2e-3)
  np.testing.assert_array_equal(d.map(5), q.argmax(0))


@needs_pydensecrf
def test_labels_tutorial_general_crf_and_steps_match_pydensecrf(photo):
  """unary_from_labels, DenseCRF with a 3-D grayscale bilateral and a vector and a matrix compat,
  step-wise inference with klDivergence, as pydensecrf's inference notebook does."""
  image, probs = photo
  labels = probs.argmax(0).reshape(H, W).astype(np.int32) % 4 + 1
  labels[:40] = 0  # unsure
  gray = image.mean(-1).astype(np.uint8)
  rng = np.random.default_rng(0)
  matrix = rng.uniform(0, 3, (4, 4)).astype(np.float32)
  runs = []
  for mod, ut in ((dcrf, utils), (pdcrf, putils)):
    unary = ut.unary_from_labels(labels, 4, gt_prob=0.7)
    d = mod.DenseCRF(H * W, 4)
    d.setUnaryEnergy(unary)
    d.addPairwiseEnergy(ut.create_pairwise_gaussian((3, 3), (H, W)), compat=3)
    d.addPairwiseEnergy(ut.create_pairwise_bilateral((50, 50), (10,), gray),
                        compat=np.full(4, 5, np.float32), normalization=mod.NORMALIZE_AFTER)
    d.addPairwiseEnergy(ut.create_pairwise_gaussian((20, 20), (H, W)), compat=matrix,
                        kernel=mod.FULL_KERNEL, normalization=mod.NORMALIZE_BEFORE)
    q, tmp1, tmp2 = d.startInference()
    kl = []
    for _ in range(4):
      d.stepInference(q, tmp1, tmp2)
      kl.append(d.klDivergence(q))
    runs.append((unary, np.asarray(q).copy(), kl))
  (u, q, kl), (u_ref, q_ref, kl_ref) = runs
  np.testing.assert_array_equal(u, u_ref)
  assert (q.argmax(0) == q_ref.argmax(0)).mean() >= 0.995
  np.testing.assert_allclose(kl, kl_ref, rtol=3e-3)
  assert kl[-1] < kl[0]


@needs_pydensecrf
def test_utils_equal_pydensecrf_utils(photo):
  image, probs = photo
  for args in (((3, 4), (H, W)), ((1, 2, 3), (4, 5, 6))):
    np.testing.assert_array_equal(utils.create_pairwise_gaussian(*args),
                                  putils.create_pairwise_gaussian(*args))
  for args, kw in ((((3, 4), (1, 2, 3), image), {"chdim": 2}),
                   (((3, 4), 7, image[..., 0]), {}), (((2, 2, 2), 5, image[:8]), {})):
    a, b = utils.create_pairwise_bilateral(*args, **kw), putils.create_pairwise_bilateral(*args, **kw)
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(a, b)
  for kw in ({}, {"scale": 0.8}, {"clip": None}):
    np.testing.assert_array_equal(utils.unary_from_softmax(probs, **kw),
                                  putils.unary_from_softmax(probs, **kw))
  labels = np.arange(12).reshape(3, 4) % 5
  for zero_unsure in (True, False):
    np.testing.assert_array_equal(utils.unary_from_labels(labels, 5, 0.6, zero_unsure),
                                  putils.unary_from_labels(labels, 5, 0.6, zero_unsure))
  # uint8 label PNGs (label 0 = unsure): pydensecrf's labels - 1 wraps to 255 there.
  np.testing.assert_array_equal(utils.unary_from_labels(labels.astype(np.uint8), 4, 0.6),
                                putils.unary_from_labels(labels, 4, 0.6))


def test_constants_and_errors():
  """pydensecrf's values of the constants (KernelType, NormalizationType) and its messages."""
  assert (dcrf.CONST_KERNEL, dcrf.DIAG_KERNEL, dcrf.FULL_KERNEL) == (0, 1, 2)
  assert (dcrf.NO_NORMALIZATION, dcrf.NORMALIZE_BEFORE, dcrf.NORMALIZE_AFTER,
          dcrf.NORMALIZE_SYMMETRIC) == (0, 1, 2, 3)
  if pdcrf is not None:
    assert [int(getattr(pdcrf, n)) for n in ("CONST_KERNEL", "DIAG_KERNEL", "FULL_KERNEL",
                                             "NO_NORMALIZATION", "NORMALIZE_BEFORE",
                                             "NORMALIZE_AFTER", "NORMALIZE_SYMMETRIC")] == [
        0, 1, 2, 0, 1, 2, 3]
  d = dcrf.DenseCRF2D(4, 3, 2)
  with pytest.raises(ValueError, match="expected 'float' but got 'double'"):
    d.setUnaryEnergy(np.zeros((2, 12)))
  with pytest.raises(ValueError, match=r"Bad shape for unary energy \(Need \(2, 12\)"):
    d.setUnaryEnergy(np.zeros((12, 2), np.float32))
  bad = np.zeros((2, 12), np.float32)
  bad[1, 5] = np.nan
  with pytest.raises(ValueError, match=r"unary has NaN/-inf values \(first at index \(1, 5\)\)"):
    d.setUnaryEnergy(bad)
  bad[1, 5] = np.inf  # P = 0 for one label: allowed
  d.setUnaryEnergy(bad)
  bad[0, 5] = np.inf
  with pytest.raises(ValueError, match="every label has probability 0"):
    d.setUnaryEnergy(bad)
  d = dcrf.DenseCRF2D(4, 3, 2)
  with pytest.raises(ValueError, match="no unary energy"):
    d.inference(1)
  with pytest.raises(ValueError, match="Bad shape for pairwise bilateral"):
    d.addPairwiseBilateral(3, 3, np.zeros((4, 3, 3), np.uint8), 1)
  with pytest.raises(ValueError, match="only works for RGB"):
    d.addPairwiseBilateral(3, 3, np.zeros((3, 4), np.uint8), 1)
  with pytest.raises(ValueError, match="expected 'unsigned char'"):
    d.addPairwiseBilateral(3, 3, np.zeros((3, 4, 3), np.float32), 1)
  with pytest.raises(ValueError, match=r"Bad shape for pairwise energy \(Need \(\?, 12\)"):
    d.addPairwiseEnergy(np.zeros((2, 11), np.float32), 1)
  with pytest.raises(ValueError, match="dimension >2 not meaningful"):
    d.addPairwiseGaussian(3, np.zeros((2, 2, 2), np.float32))
  with pytest.raises(ValueError, match="normalization must be one of"):
    d.addPairwiseGaussian(3, 1, normalization=7)
  with pytest.raises(ValueError, match="kernel must be one of"):
    d.addPairwiseGaussian(3, 1, kernel=-1)
  with pytest.raises(ValueError, match="labels must lie in 0..3"):
    utils.unary_from_labels(np.array([0, 4]), 3, 0.5)
  with pytest.raises(ValueError, match="gt_prob"):
    utils.unary_from_labels(np.array([0, 1]), 3, 1.0)
  d.setUnaryEnergy(np.zeros((2, 12), np.float32))
  d.addPairwiseGaussian((1, 2), 1)
  q, t1, t2 = d.startInference()
  with pytest.raises(ValueError, match=r"Q must be \[n_labels, n_pixels\]"):
    d.klDivergence(q[:, :5])
  d.stepInference(q, t1, t2)
  np.testing.assert_allclose(q, 0.5, atol=1e-6)  # equal unaries, Potts: stays uniform


@needs_pydensecrf
def test_overflowing_lattice_is_rerun_and_no_pairwise_term_is_the_unary():
  """A noise image at σ = 1 needs more lattice points than the first capacity (2 N): the result
  is pydensecrf's all the same (one call and step-wise); with no pairwise term Q = softmax(-U)."""
  h, w, c = 30, 40, 3
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
  probs = rng.dirichlet(np.ones(c), h * w).T.astype(np.float32)
  results = []
  for mod, ut in ((dcrf, utils), (pdcrf, putils)):
    d = mod.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(ut.unary_from_softmax(probs)))
    d.addPairwiseBilateral(sxy=1, srgb=1, rgbim=noise, compat=2)
    q, t1, t2 = d.startInference()
    d.stepInference(q, t1, t2)
    results.append((np.asarray(d.inference(3)), np.asarray(q).copy()))
  (q, q_step), (q_ref, q_step_ref) = results
  features = np.concatenate([putils.create_pairwise_gaussian((1, 1), (h, w)),
                             noise.reshape(-1, 3).T.astype(np.float32)])
  assert bool(dcrf._build((features,), (np.int32(3),), (2 * h * w,), 1)[1])  # it overflows
  np.testing.assert_allclose(q, q_ref, atol=1e-4)
  np.testing.assert_allclose(q_step, q_step_ref, atol=1e-4)
  d = dcrf.DenseCRF(h * w, c)
  d.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(probs)))
  np.testing.assert_allclose(d.inference(4), probs / probs.sum(0), rtol=1e-4)


def test_dense_crf_and_densecrf_share_the_kept_tables():
  """Alternating the two APIs on one image size reuses one set of tables (each call donates the
  previous caller's set), and results after a noise image (many lattice points, tables larger
  than one chunk) are those of fresh tables."""
  from deeplax import crf
  from deeplax.crf import inference
  h, w, c = 72, 96, 4  # 2 N = 13824 rows: more than one 8192-point chunk
  rng = np.random.default_rng(1)
  # ~8400 bilateral lattice points (more than one chunk, fewer than 2 N: no rerun)
  noise = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
  image = np.repeat(np.repeat(rng.integers(0, 256, (6, 8, 3)), 12, 0), 12, 1).astype(np.uint8)
  probs = rng.dirichlet(np.ones(c), h * w).T.astype(np.float32)
  unary = utils.unary_from_softmax(probs)
  params = crf.CRFParams(w1=10.0, sigma_alpha=20.0, sigma_beta=13.0, w2=3.0, sigma_gamma=3.0,
                         normalization="symmetric", spatial_filter="lattice")

  def api(rgb):
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(unary)
    d.addPairwiseBilateral(sxy=20, srgb=13, rgbim=rgb, compat=10)
    d.addPairwiseGaussian(sxy=3, compat=3)
    return d.inference(5)

  crf.release_workspaces()
  fresh = api(image)
  crf.release_workspaces()
  api(noise)
  (kept_api,) = inference._WORKSPACE_CACHE.values()
  q = np.asarray(crf.dense_crf(unary.T.reshape(h, w, c), image, params, num_iters=5))
  assert all(x.is_deleted() for x in jax.tree.leaves(kept_api))  # donated: the same set
  (kept,) = inference._WORKSPACE_CACHE.values()
  again = api(image)
  assert all(x.is_deleted() for x in jax.tree.leaves(kept))
  assert len(inference._WORKSPACE_CACHE) == 1
  np.testing.assert_allclose(again, fresh, atol=1e-6)
  np.testing.assert_allclose(fresh.T.reshape(h, w, c), q, atol=1e-4)
  crf.release_workspaces()


@needs_pydensecrf
def test_anisotropic_kernels_other_codes_and_a_new_unary_match_pydensecrf():
  """sxy = (sx, sy) on a non-square image, CONST_KERNEL and NO_NORMALIZATION, step-wise inference
  after setUnaryEnergy replaced the unary, and stepInference on inference's own result."""
  h, w, c = 40, 64, 3
  rng = np.random.default_rng(4)
  image = np.repeat(np.repeat(rng.integers(0, 256, (5, 8, 3)), 8, 0), 8, 1).astype(np.uint8)
  first = np.ascontiguousarray(putils.unary_from_softmax(rng.dirichlet(np.ones(c), h * w).T))
  second = np.ascontiguousarray(putils.unary_from_softmax(rng.dirichlet(np.ones(c), h * w).T))
  runs = []
  for mod in (dcrf, pdcrf):
    d = mod.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(first)
    d.addPairwiseGaussian(sxy=(2, 9), compat=2, kernel=mod.CONST_KERNEL,
                          normalization=mod.NO_NORMALIZATION)
    d.addPairwiseBilateral(sxy=(15, 4), srgb=(10, 20, 30), rgbim=image, compat=4)
    q_first = np.asarray(d.inference(3)).copy()
    q, t1, t2 = d.startInference()
    d.stepInference(q, t1, t2)
    d.setUnaryEnergy(second)
    d.stepInference(q, t1, t2)
    q_inf = d.inference(2)
    d.stepInference(q_inf, t1, t2)
    runs.append((q_first, np.asarray(q).copy(), np.asarray(q_inf).copy()))
  for ours, ref in zip(*runs):
    np.testing.assert_allclose(ours, ref, atol=1e-3)
  swapped = dcrf.DenseCRF2D(w, h, c)
  swapped.setUnaryEnergy(first)
  swapped.addPairwiseGaussian(sxy=(9, 2), compat=2, normalization=dcrf.NO_NORMALIZATION)
  swapped.addPairwiseBilateral(sxy=(4, 15), srgb=(10, 20, 30), rgbim=image, compat=4)
  assert np.abs(swapped.inference(3) - runs[1][0]).max() > 1e-2  # the test sees sx vs sy
