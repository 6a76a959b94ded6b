"""What the end-to-end loop tests share (not a test module): the tiny training config and a
persistent compilation cache (`from train_configs import compilation_cache_dir` in a module)."""

import jax
from jax.experimental.compilation_cache import compilation_cache
import pytest

from deeplax import data as data_lib
from deeplax import defaults
from deeplax.models import deeplab


def tiny_config(data_dir: str, total_steps: int = 96):
  """resnet_tiny DeepLabv3 on 32 'shapes' images, 49 px crops, batch 8, lr 0.1."""
  c = defaults.get_base_config()
  c.model = deeplab.model_config(backbone="resnet_tiny", num_classes=5, output_stride=8,
                                 aspp_features=16, aspp_dropout=0.0, bn_momentum=0.9,
                                 align_corners=True)  # with 16k+1 crop and eval sizes
  c.data = data_lib.default_data_config()
  c.data.data_dir = data_dir
  c.data.shapes = dict(seed=0, num_train=32, num_val=8, min_size=64, max_size=80)
  c.data.crop_size = 49
  c.data.min_scale, c.data.max_scale = 0.75, 1.25
  c.data.eval_pad_size = 81
  c.data.eval_batch_size = 8
  c.batch_size = 8
  c.total_steps = total_steps
  c.learning_rate = 0.1
  c.checkpoint_every_steps = 8
  c.eval_every_steps = 48
  c.log_every_steps = 1
  c.num_eval_images_to_save = 2
  return c


@pytest.fixture(scope="module", autouse=True)
def compilation_cache_dir(tmp_path_factory):
  """The runs of a module compile the same step: a persistent cache compiles it once."""
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation_cache.reset_cache()
  yield
  jax.config.update("jax_compilation_cache_dir", None)
  compilation_cache.reset_cache()


class EditedBatches:
  """Wraps a train iterator (state and all); `edit(count, batch)` may change batch `count`
  (1-based; the loop's first batch is a shape probe, so step s reads batch s + 1)."""

  def __init__(self, inner, edit):
    self.inner, self.edit, self.count = inner, edit, 0

  def __iter__(self):
    return self

  def __next__(self):
    self.count += 1
    return self.edit(self.count, dict(next(self.inner)))

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)
