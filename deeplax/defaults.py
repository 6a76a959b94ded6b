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
  config.max_to_keep = 3             # checkpoints kept in <workdir>/checkpoints
  config.init_from = ml_collections.config_dict.placeholder(str)  # workdir to load matching weights from
  config.num_eval_images_to_save = 4  # prediction PNGs per evaluation

  # Optimiser (deeplax.optim): momentum SGD, "poly" lr (v2 §4.1, v3 §4.1).
  config.learning_rate = 0.007
  config.lr_schedule = "poly"        # 'poly', 'step' (v1) or 'constant'
  config.lr_power = 0.9
  config.lr_step_size = 2000         # 'step' policy: multiply by lr_step_gamma every lr_step_size steps
  config.lr_step_gamma = 0.1
  config.warmup_steps = 0
  config.momentum = 0.9
  config.weight_decay = 1e-4         # kernels only (see deeplax.optim)
  config.classifier_lr_mult = 1.0    # v1/v2: 10
  config.classifier_pattern = "classifier"  # regex on '/'-joined param paths for classifier_lr_mult
  config.grad_clip_norm = 0.0        # 0: no clipping

  # Loss (deeplax.losses).
  config.loss = ml_collections.ConfigDict()
  config.loss.target_mode = "upsample_logits"  # v3 §4.1; 'downsample_labels' for v1/v2
  config.loss.top_k_fraction = 1.0   # < 1: hard-pixel mining
  config.loss.class_weights = ml_collections.config_dict.placeholder(tuple)
  config.loss.aux_weight = 0.4       # weight of features['aux_logits'] when the model has an aux head
  config.train_scales = (1.0,)       # v2 §3.2 multi-scale input training: (1.0, 0.75, 0.5)

  # Model (deeplax.models.build); each config fills it in.
  config.model = ml_collections.ConfigDict()

  # Data (deeplax.data): dataset, augmentation and evaluation padding; defaults: built-in shapes.
  from deeplax import data  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  config.data = data.default_data_config()
  return config
