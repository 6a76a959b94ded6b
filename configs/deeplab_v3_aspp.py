"""DeepLabv3 with ASPP: ResNet-101, Multi-Grid (1, 2, 4), ASPP (6, 12, 18) + image pooling.

Reproduces v3 Table 5, last row (77.21% mIOU on PASCAL VOC 2012 val at output_stride 16; Table 6:
79.77% evaluated at output_stride 8 with multi-scale and flipped inputs). TF-slim layout and
align_corners, as the paper's own implementation.

    python -m deeplax.main --config=configs/deeplab_v3_aspp.py --workdir=/tmp/deeplab_v3_aspp

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
      multi_grid=(1, 2, 4),                 # v3 Table 5
      num_cascaded_blocks=0)
  config.model.num_classes = 21
  config.model.output_stride = 16           # train at 16, evaluate at 8 (v3 §4.1, Table 6)
  config.model.bn_momentum = 0.9997         # v3 §4.1
  config.model.align_corners = True
  config.model.head = "aspp"
  config.model.aspp_rates = (6, 12, 18)     # at output_stride 16; doubled at 8 (v3 §3.3)
  config.model.aspp_rates_output_stride = 16
  config.model.aspp_features = 256
  config.model.aspp_image_pooling = True
  config.model.aspp_dropout = 0.1           # not in the paper; the official release's value
  config.model.head_extra_conv = False
  config.model.aux_head = False
  # Training as published (v3 §4.1); the stage-2 flags are in voc_v3_training's docstring.
  defaults.voc_v3_training(config)
  return config
