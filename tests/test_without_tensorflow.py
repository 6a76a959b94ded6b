"""Models, train step, inference and CRF run where only JAX is installed: TensorFlow and
tensorflow-datasets are for the input pipeline and the SavedModel export alone."""

import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import importlib.abc, sys

    class NoTensorFlow(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
          raise ImportError(f"{name} is made unimportable by this test")

    sys.meta_path.insert(0, NoTensorFlow())
    import jax, numpy as np
    import deeplax.models, deeplax.train, deeplax.inference, deeplax.crf
    from deeplax import models, train, inference, crf
    from deeplax.cli import load_config_file
    import glob
    for path in sorted(glob.glob("configs/*.py")):
      load_config_file(path)  # every config loads without TensorFlow
    config = load_config_file("configs/shapes.py")
    config.batch_size = 2
    config = train.prepare_config(config)
    model = models.build(config.model)
    state, tx = train.create_train_state(config, model, jax.random.PRNGKey(0), (2, 33, 33, 3))
    step = jax.jit(train.make_train_step(config, model, tx))
    rng = np.random.RandomState(0)
    batch = {"image": rng.normal(size=(2, 33, 33, 3)).astype(np.float32),
             "label": rng.randint(0, 5, size=(2, 33, 33)).astype(np.int32)}
    state, metrics = step(state, batch)
    assert bool(metrics["finite"]) and int(state["step"]) == 1, metrics
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    predict = inference.make_predict_fn(config.model, inference.strategy_for(config.model, flip=True))
    scores = np.asarray(predict(variables, batch["image"]))
    assert scores.shape == (2, 33, 33, 5) and np.isfinite(scores).all()
    unary = -np.asarray(jax.nn.log_softmax(scores[0], -1))
    image = (rng.rand(33, 33, 3) * 255).astype(np.uint8)
    q = np.asarray(crf.dense_crf(unary, image, crf.CRFParams(), num_iters=2))
    assert q.shape == (33, 33, 5) and np.allclose(q.sum(-1), 1, atol=1e-4)
    assert not any(m.split(".")[0] in ("tensorflow", "tensorflow_datasets") for m in sys.modules)
    print("OK", float(metrics["loss"]))
""")


def test_models_train_step_inference_and_crf_run_without_tensorflow():
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stdout.startswith("OK"), result.stdout
