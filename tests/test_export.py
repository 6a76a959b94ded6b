"""Export round trips: StableHLO (jax.export, symbolic batch) and a TF SavedModel (jax2tf)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplax import data
from deeplax import defaults
from deeplax import export
from deeplax import inference
from deeplax import models
from deeplax.models import deeplab

SIZE = (37, 45)


@pytest.fixture(scope="module")
def setup():
  config = defaults.get_base_config()
  config.model = deeplab.model_config(backbone="resnet_tiny", num_classes=4, aspp_features=8)
  config.data = data.default_data_config()
  model = models.build(config.model)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 33, 33, 3)), train=False))(
      jax.random.PRNGKey(0))
  images = np.random.RandomState(0).uniform(0, 255, (3, *SIZE, 3)).astype(np.float32)
  strategy = inference.strategy_for(config.model, scales=(1.0,), flip=True)
  expected = np.asarray(inference.make_predict_fn(config.model, strategy, output_stride=8)(
      variables, data.normalize(images, config.data.normalization)))
  return config, variables, images, strategy, expected


def test_stablehlo_round_trip_with_symbolic_batch(setup, tmp_path):
  config, variables, images, strategy, expected = setup
  path = str(tmp_path / "model.stablehlo")
  export.export(config, variables, "stablehlo", path, SIZE, strategy=strategy, output_stride=8)
  exported = export.load_stablehlo(path)
  assert "batch" in str(exported.in_avals[0].shape[0])
  np.testing.assert_allclose(np.asarray(exported.call(images)), expected, atol=1e-4)
  np.testing.assert_allclose(np.asarray(exported.call(images[:1])), expected[:1], atol=1e-4)
  import json
  meta = json.load(open(path + ".json"))
  assert meta["output_stride"] == 8 and meta["input"]["shape"] == ["batch", *SIZE, 3]


def test_saved_model_round_trip(setup, tmp_path):
  config, variables, images, strategy, expected = setup
  path = str(tmp_path / "saved_model")
  export.export(config, variables, "saved_model", path, SIZE, strategy=strategy, output_stride=8)
  call = export.load_saved_model(path)
  np.testing.assert_allclose(call(images), expected, atol=1e-4)
  np.testing.assert_allclose(call(images[:2]), expected[:2], atol=1e-4)


def test_export_rejects_bad_arguments(setup, tmp_path):
  config, variables, *_ = setup
  with pytest.raises(ValueError, match="format"):
    export.export(config, variables, "onnx", str(tmp_path / "x"), SIZE)
  with pytest.raises(ValueError, match="image size"):
    export.export(config, variables, "stablehlo", str(tmp_path / "x"), (0, 4))
  with pytest.raises(FileNotFoundError):
    export.load_stablehlo(str(tmp_path / "absent"))
