"""DeepLabv3 cascaded model: ResNet-101 + block5..block7 (replicas of block4), Multi-Grid (1, 2, 1).

Reproduces v3 Table 3, best entry (block7, MG (1, 2, 1): 76.66% mIOU on PASCAL VOC 2012 val at
output_stride 16; Table 4: 79.35% evaluated at output_stride 8 with multi-scale and flipped inputs).
No ASPP: the 1x1 logits conv sits directly on block7 (v3 §3.2, Fig. 3b).

    python -m deeplax.main --config=configs/deeplab_v3_block7.py --workdir=/tmp/deeplab_v3_block7

Fields are documented in deeplax/models/deeplab.py and deeplax/models/resnet.py.
"""

from deeplax import defaults
from deeplax import models
from deeplax.models import backbones


def get_config():
  config = defaults.get_base_config()
  config.model = models.default_config("deeplab_v3")
  config.model.backbone = backbones.config(
      "resnet101", layout="slim",
      multi_grid=(1, 2, 1),                 # v3 Table 3
      num_cascaded_blocks=3)                # block5, block6, block7
  config.model.num_classes = 21
  config.model.output_stride = 16           # train at 16, evaluate at 8 (v3 §4.1, Table 4)
  config.model.bn_momentum = 0.9997         # v3 §4.1
  config.model.align_corners = True
  config.model.head = "conv"
  # Training as published (v3 §4.1); the stage-2 flags are in voc_v3_training's docstring.
  defaults.voc_v3_training(config)
  return config
