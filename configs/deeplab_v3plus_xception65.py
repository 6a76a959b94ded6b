"""DeepLabv3+ with the aligned Xception-65 backbone (DeepLabv3+ §3-4, Table 5).

Encoder: Xception-65 at output stride 16 + ASPP (rates 6, 12, 18, image pooling, atrous separable
convolutions); decoder: 1x1 low-level projection to 48 channels, two 3x3 separable convs of 256
(v3+ Tables 1-2); the Xception-65 rows of v3+ Table 5 (PASCAL VOC 2012 val).

    python -m deeplax.main --config=configs/deeplab_v3plus_xception65.py --workdir=/tmp/deeplab_v3plus_xception65

Fields are documented in deeplax/models/deeplab_v3plus.py and deeplax/models/xception.py.
"""

from deeplax import defaults
from deeplax import models


def get_config():
  config = defaults.get_base_config()
  config.model = models.default_config("deeplab_v3plus")
  config.model.backbone.name = "xception65"
  config.model.num_classes = 21
  config.model.output_stride = 16           # train at 16, evaluate at 8 (rates then doubled)
  config.model.bn_momentum = 0.9997
  config.model.bn_epsilon = 1e-3            # the official Xception arg scope's value
  config.model.align_corners = True         # the official TF implementation's interpolation
  config.model.aspp_rates = (6, 12, 18)     # at output stride 16
  config.model.aspp_rates_output_stride = 16
  config.model.aspp_features = 256
  config.model.aspp_image_pooling = True
  config.model.aspp_separable = True
  config.model.aspp_dropout = 0.1           # not in the paper; the official release's value
  config.model.decoder_low_level_features = 48   # v3+ Table 1
  config.model.decoder_features = 256            # v3+ Table 2: [3x3, 256] x 2
  config.model.decoder_separable = True
  # Training as published (v3 §4.1); the stage-2 flags are in voc_v3_training's docstring.
  defaults.voc_v3_training(config)
  return config
