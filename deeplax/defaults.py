"""The base ConfigDict every config in `configs/` starts from.

Each section is documented where it is consumed: `model` by `deeplax.models.build`, `data` by
`deeplax.data`, the top-level training fields by `deeplax.train`.
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Training loop (deeplax.train).
  config.seed = 0
  config.batch_size = 8  # global, over all devices and hosts
  config.total_steps = 1000
  config.parallelism = "jit"  # 'jit' (device mesh) or 'pmap'
  config.checkpoint_every_steps = 500
  config.eval_every_steps = 500
  config.log_every_steps = 10

  # Model (deeplax.models.build); each config fills it in.
  config.model = ml_collections.ConfigDict()

  # Data (deeplax.data).
  config.data = ml_collections.ConfigDict()
  return config
