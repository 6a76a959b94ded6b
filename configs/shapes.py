"""A small DeepLabv3 (reduced ResNet + ASPP) on the built-in synthetic 'shapes' dataset.

The README's first command: 1,000 steps of batch 16 at crop 113 (resnet_small, output_stride 8),
the v3 §4.1 recipe scaled down (momentum SGD, "poly" lr, trained BN, logits upsampled to the
labels). Crops and evaluation sizes are 16k+1 with align_corners=True, so the corner pixels of
the stride-8 features sit exactly on image pixels (TF DeepLab's 513 convention); with half-pixel
upsampling on these small images the predictions came out visibly shifted (up to stride / 2).
Measured 2026-11-21 on the 2-core CPU (idle): 2 min 32 s for `python -m deeplax.main` (dataset
already generated; compile, ~110 images/s, two evaluations), validation mIoU 0.867 (pixel accuracy
0.978; background 0.975, disc 0.891, square 0.849, triangle 0.831, bar 0.789; 0.825 at step 500).

    python -m deeplax.main --config=configs/shapes.py --workdir=/tmp/deeplax_shapes
"""

from deeplax import defaults
from deeplax.models import backbones
from deeplax.models import deeplab


def get_config():
  config = defaults.get_base_config()
  config.model = deeplab.model_config(
      backbone=backbones.config("resnet_small", layout="slim", multi_grid=(1, 2, 4)),
      num_classes=5, output_stride=8,
      aspp_rates=(2, 4, 6), aspp_rates_output_stride=16, aspp_features=64, aspp_dropout=0.0,
      bn_momentum=0.99, align_corners=True)
  config.data.name = "shapes"
  config.data.crop_size = 113
  config.data.min_scale = 0.75
  config.data.max_scale = 1.25
  config.data.eval_pad_size = 145
  config.data.eval_batch_size = 20
  config.batch_size = 16
  config.total_steps = 1000
  config.learning_rate = 0.1
  config.weight_decay = 1e-4
  config.warmup_steps = 50
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.eval_every_steps = 500
  return config
