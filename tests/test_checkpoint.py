"""deeplax.checkpoint: run-directory layout, weights-only and training checkpoints, partial init."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from deeplax import checkpoint as ckpt_lib


def _config(num_classes=3):
  return ml_collections.ConfigDict({"model": {"name": "deeplab_v3", "num_classes": num_classes}})


def _variables(num_classes=3, seed=0):
  rng = np.random.default_rng(seed)
  return {"params": {"backbone": {"conv": {"kernel": rng.normal(size=(3, 3, 3, 4)).astype(np.float32)}},
                     "logits": {"kernel": rng.normal(size=(1, 1, 4, num_classes)).astype(np.float32),
                                "bias": np.zeros((num_classes,), np.float32)}},
          "batch_stats": {"backbone": {"bn": {"mean": rng.normal(size=(4,)).astype(np.float32),
                                              "var": np.ones((4,), np.float32)}}}}


def test_save_and_load_variables(tmp_path):
  workdir = str(tmp_path / "run")
  variables = _variables()
  ckpt_lib.save_variables(workdir, _config(), variables, step=7)
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["num_classes"] == 3
  for path in (workdir, os.path.join(workdir, "checkpoints")):
    config, loaded, step = ckpt_lib.load_variables(path)
    assert step == 7 and config.model.num_classes == 3
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  # No temporary directories are left behind (orbax writes to a temp dir, then renames).
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["7"]
  # Nothing already written is overwritten.
  with pytest.raises(FileExistsError, match="already exists"):
    ckpt_lib.save_variables(workdir, _config(), _variables(seed=1), step=7)
  _, loaded, _ = ckpt_lib.load_variables(workdir)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_load_variables_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ckpt_lib.load_variables(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="missing config.json"):
    ckpt_lib.load_variables(str(tmp_path / "empty"))
  ckpt_lib.write_config(str(tmp_path / "empty"), _config())
  with pytest.raises(FileNotFoundError, match="no checkpoint found"):
    ckpt_lib.load_variables(str(tmp_path / "empty"))
  workdir = str(tmp_path / "run")
  ckpt_lib.save_variables(workdir, _config(3), _variables())
  with pytest.raises(ValueError, match="num_classes mismatch"):
    ckpt_lib.load_variables(workdir, expected_config=_config(21))
  with pytest.raises(FileNotFoundError, match="no checkpoint for step 5"):
    ckpt_lib.load_variables(workdir, step=5)


def test_training_checkpoint_roundtrip_and_load_variables(tmp_path):
  workdir = str(tmp_path / "train")
  ckpt_lib.write_config(workdir, _config())
  variables = jax.tree.map(jnp.asarray, _variables())
  state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
           "opt_state": ({"trace": jax.tree.map(jnp.ones_like, variables["params"])},),
           "step": jnp.int32(10), "rng": jax.random.PRNGKey(3)}
  manager = ckpt_lib.checkpoint_manager(workdir, max_to_keep=2)
  for step in (10, 20, 30):
    state["step"] = jnp.int32(step)
    ckpt_lib.save_train_state(manager, step, state, {"epoch": 0, "position": step})
  manager.wait_until_finished()
  assert manager.all_steps() == [20, 30]  # keep-N
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  restored, data_state, step = ckpt_lib.restore_train_state(manager, abstract)
  manager.close()
  assert step == 30 and data_state == {"epoch": 0, "position": 30}
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  # Weights are readable without the optimiser structure.
  _, loaded, step = ckpt_lib.load_variables(workdir)
  assert step == 30 and set(loaded) == {"params", "batch_stats"}
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  assert ckpt_lib.latest_step(workdir) == 30


def test_merge_matching_reports_every_skipped_name():
  target = _variables(num_classes=5, seed=1)["params"]
  source = _variables(num_classes=3, seed=2)["params"]
  source["extra"] = {"kernel": np.zeros((2,), np.float32)}
  merged, report = ckpt_lib.merge_matching(target, source)
  np.testing.assert_array_equal(merged["backbone"]["conv"]["kernel"], source["backbone"]["conv"]["kernel"])
  np.testing.assert_array_equal(merged["logits"]["kernel"], target["logits"]["kernel"])
  assert report["loaded"] == ["backbone/conv/kernel"]
  assert sorted(m.split(":")[0] for m in report["mismatched"]) == ["logits/bias", "logits/kernel"]
  assert report["unused"] == ["extra/kernel"] and report["missing"] == []
