"""A small DeepLabv3 (reduced ResNet + ASPP) on the built-in synthetic 'shapes' dataset.

The README's first command; trains on a 2-core CPU in about 5 minutes to mIoU >= 0.85 on the
validation split:

    python -m deeplax.main --config=configs/shapes.py --workdir=/tmp/deeplax_shapes

Same recipe as v3 §4.1 (momentum SGD, "poly" lr, trained BN, upsampled logits), scaled down.
"""

from deeplax import defaults
from deeplax.data import default_data_config
from deeplax.models import deeplab


def get_config():
  config = defaults.get_base_config()
  config.model = deeplab.model_config(
      backbone="resnet_tiny", num_classes=5, output_stride=8, multi_grid=(1, 2, 4),
      aspp_rates=(6, 12, 18), aspp_rates_output_stride=16, aspp_features=64, aspp_dropout=0.0,
      bn_momentum=0.99)
  config.data = default_data_config()
  config.data.name = "shapes"
  config.data.crop_size = 65
  config.data.min_scale = 0.5
  config.data.max_scale = 1.5
  config.data.eval_pad_size = 224
  config.data.eval_batch_size = 20
  config.batch_size = 16
  config.total_steps = 2000
  config.learning_rate = 0.1
  config.weight_decay = 1e-4
  config.warmup_steps = 50
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.eval_every_steps = 500
  return config
