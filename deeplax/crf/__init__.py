"""Fully-connected CRF of DeepLab v1/v2 (v2 §3.3) in jax.numpy: mean field on permutohedral lattices.

dense_crf / dense_crf_batch: checked marginals; dense_crf_core / dense_crf_batch_core: jittable,
only the image's shape and dtype checked; DenseCRF: end-to-end (CRF-as-RNN) flax layer; python -m deeplax.crf.search: v2 §4.1
cross-validation of w1, σα, σβ; dense_crf_exact: the O(N^2) reference; deeplax.crf.densecrf and
deeplax.crf.utils: pydensecrf's API (change the two imports).
"""

from deeplax.crf.params import CRFParams, NORMALIZATIONS, PRESETS
from deeplax.crf.inference import (check_inputs, dense_crf, dense_crf_batch,
                                   dense_crf_batch_core, dense_crf_core, mean_field,
                                   release_workspaces)
from deeplax.crf.exact import dense_crf_exact
from deeplax.crf.layer import DenseCRF
