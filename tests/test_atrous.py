"""deeplax.atrous and the atrous conv of deeplax.layers (v2 §3.1, v3 §3.1 eq. 1, v3 Fig. 4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplax import atrous
from deeplax import layers


@pytest.mark.parametrize("rate", [1, 2, 3, 6])
def test_atrous_conv_equals_conv_with_upsampled_kernel(rate):
  """v3 eq. 1: y[i] = sum_k x[i + r k] w[k] is an ordinary conv with r-1 zeros between taps."""
  x = jax.random.normal(jax.random.key(0), (2, 19, 17, 3))
  conv = layers.atrous_conv(4, 3, rate=rate)
  params = conv.init(jax.random.key(1), x)
  y = conv.apply(params, x)
  kernel = atrous.upsample_kernel(np.asarray(params["params"]["kernel"]), rate)
  assert kernel.shape == (2 * rate + 1, 2 * rate + 1, 3, 4)
  ref = jax.lax.conv_general_dilated(x, jnp.asarray(kernel), (1, 1), [(rate, rate), (rate, rate)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert y.shape == x.shape[:3] + (4,)
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)
  # And the definition itself, at one output position away from the border.
  i, j = 9, 8
  w = np.asarray(params["params"]["kernel"])
  direct = sum(np.asarray(x)[0, i + rate * (a - 1), j + rate * (b - 1)] @ w[a, b]
               for a in range(3) for b in range(3))
  np.testing.assert_allclose(np.asarray(y)[0, i, j], direct, rtol=1e-5, atol=1e-5)


def test_effective_kernel_size_and_field_of_view():
  assert [atrous.effective_kernel_size(3, r) for r in (1, 2, 6, 12, 24)] == [3, 5, 13, 25, 49]
  assert atrous.effective_kernel_size(7, 1) == 7
  np.testing.assert_array_equal(atrous.field_of_view([1, 12], 3, output_stride=8), [24, 200])
  with pytest.raises(ValueError, match="rate"):
    atrous.effective_kernel_size(3, 0)


def test_valid_weight_counts_fig4():
  """v3 Fig. 4: a 3x3 filter on a 65x65 map; 9 weights valid almost everywhere at small rates,
  only the centre once the rate reaches the map size."""
  counts = atrous.valid_weight_counts(1, 65)
  assert counts.shape == (65, 65)
  assert counts[32, 32] == 9 and counts[0, 0] == 4 and counts[0, 32] == 6
  rates = [1, 2, 6, 12, 24, 32, 33, 48, 64, 65, 100]
  f = atrous.valid_weight_fractions(rates, size=65)
  np.testing.assert_allclose(f["all"] + f["only_center"] + f["other"], 1.0)
  np.testing.assert_allclose(f["all"][0], (63 / 65) ** 2)
  assert f["all"][0] > 0.9 and f["only_center"][0] == 0
  assert np.all(np.diff(f["all"]) <= 0)  # fewer full filters as the rate grows
  # rate 32: only the centre row/column position (32, 32) sees all 9 taps.
  assert f["all"][rates.index(32)] == pytest.approx(1 / 65 ** 2)
  assert f["all"][rates.index(33)] == 0
  # Once the rate reaches the map size, the 3x3 filter is a 1x1 filter.
  for r in (65, 100):
    assert f["only_center"][rates.index(r)] == 1.0
  hist = atrous.valid_weight_histogram(40, 65)
  assert set(hist) <= {1, 2, 4} and sum(hist.values()) == pytest.approx(1.0)
  # rate 40: a tap is valid iff the position is within 65-40 = 25 of the opposite side.
  assert hist[4] == pytest.approx((2 * 25 / 65) ** 2)


@pytest.mark.parametrize("size, expected", [(64, {8: 8, 16: 4, 32: 2}), (65, {8: 9, 16: 5, 32: 3}),
                                            (513, {8: 65, 16: 33, 32: 17})])
def test_feature_size(size, expected):
  assert {os: atrous.feature_size(size, os) for os in expected} == expected


def test_feature_size_matches_strided_conv_chain():
  """ceil(H / os) is what a chain of stride-2 symmetric-padding convs produces."""
  conv = layers.atrous_conv(1, 3, stride=2)
  for size in (64, 65, 33):
    x = jnp.zeros((1, size, size, 1))
    params = conv.init(jax.random.key(0), x)
    for os in (2, 4, 8):
      x = conv.apply(params, x)
      assert x.shape[1] == atrous.feature_size(size, os)
