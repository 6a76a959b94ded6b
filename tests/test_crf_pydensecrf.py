"""deeplax's dense CRF vs Krähenbühl's C++ code (pydensecrf2) on real photographs at VOC size."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import skimage.data
import skimage.transform

from deeplax import crf

dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 (pip install pydensecrf2)")

H, W, C = 375, 500, 21


def voc_photo(name):
  image = getattr(skimage.data, name)()
  return (skimage.transform.resize(image, (H, W), anti_aliasing=True) * 255).astype(np.uint8)


def cluster_unary(image, seed):
  """-log P of colour-cluster scores at 1/8 resolution + smooth noise, upsampled (like a DCNN)."""
  rng = np.random.default_rng(seed)
  small = skimage.transform.resize(image, (H // 8 + 1, W // 8 + 1), anti_aliasing=True) * 255
  centres = small.reshape(-1, 3)[rng.choice(small.shape[0] * small.shape[1], C, replace=False)]
  dist = ((small[:, :, None, :] - centres[None, None]) ** 2).sum(-1)
  scores = -dist / (2 * 40.0 ** 2) + rng.normal(size=dist.shape) * 0.7
  scores = skimage.transform.resize(scores, (H, W), order=1)
  return np.asarray(-jax.nn.log_softmax(jnp.asarray(scores, jnp.float32), -1))


def reference(unary, image, params, num_iters):
  norm = {"symmetric": dcrf.NORMALIZE_SYMMETRIC, "after": dcrf.NORMALIZE_AFTER,
          "before": dcrf.NORMALIZE_BEFORE, "none": dcrf.NO_NORMALIZATION}[params.normalization]
  d = dcrf.DenseCRF2D(W, H, C)
  d.setUnaryEnergy(np.ascontiguousarray(unary.reshape(-1, C).T))
  d.addPairwiseGaussian(sxy=params.sigma_gamma, compat=params.w2, normalization=norm)
  d.addPairwiseBilateral(sxy=params.sigma_alpha, srgb=params.sigma_beta,
                         rgbim=np.ascontiguousarray(image), compat=params.w1,
                         normalization=norm)
  return np.asarray(d.inference(num_iters)).T.reshape(H, W, C)


@pytest.mark.parametrize("name,preset,normalization", [
    ("astronaut", "deeplab_v2_resnet101_voc", "symmetric"),
    ("coffee", "deeplab_v2_resnet101_voc", "after"),
    ("chelsea", "deeplab_v1_largefov", "after"),
    ("rocket", "deeplab_v1_largefov", "symmetric"),
])
def test_matches_pydensecrf_at_voc_size(name, preset, normalization):
  image = voc_photo(name)
  unary = cluster_unary(image, seed=len(name))
  params = crf.PRESETS[preset]()
  params = crf.CRFParams(**{**params.__dict__, "normalization": normalization})
  q = np.asarray(crf.dense_crf(unary, image, params, num_iters=10))
  q_ref = reference(unary, image, params, 10)
  labels, labels_ref = q.argmax(-1), q_ref.argmax(-1)
  # The CRF has work to do: it changes many of the unary's labels.
  assert (labels_ref != unary.argmin(-1)).mean() > 0.02
  assert (labels == labels_ref).mean() >= 0.995
  # Same lattice, same conventions: marginals agree to float32 rounding (measured ~5e-8 mean).
  assert np.abs(q - q_ref).mean() < 1e-5
  assert np.abs(q - q_ref).max() < 1e-2
