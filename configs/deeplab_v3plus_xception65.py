"""DeepLabv3+ with the aligned Xception-65 backbone (DeepLabv3+ §3-4, Table 5).

Encoder: Xception-65 at output stride 16 + ASPP (rates 6, 12, 18, image pooling, atrous separable
convolutions); decoder: 1x1 low-level projection to 48 channels, two 3x3 separable convs of 256
(v3+ Tables 1-2); the Xception-65 rows of v3+ Table 5 (PASCAL VOC 2012 val).

    python -m deeplax.main --config=configs/deeplab_v3plus_xception65.py --workdir=/tmp/deeplab_v3plus_xception65

Fields are documented in deeplax/models/deeplab_v3plus.py and deeplax/models/common.py.
"""

from deeplax import defaults
from deeplax.data import default_data_config
from deeplax.models import common


def get_config():
  config = defaults.get_base_config()
  config.model = common.base_model_config()
  config.model.name = "deeplab_v3plus"
  config.model.backbone = "xception65"
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
  # Training: the DeepLabv3 protocol (v3 §4.1), which DeepLabv3+ keeps: stage 1 on trainaug, crop 513, random scale 0.5-2.0 and flips,
  # batch 16 at output_stride 16 with BN trained (decay 0.9997), 30K iterations of "poly" (power
  # 0.9) from lr 0.007, momentum 0.9, weight decay 1e-4 (kernels only; the release's value, not
  # in the paper text), logits upsampled to the ground truth (v3 §4.1).
  # Stage 2 (v3 §4.1): BN frozen, output_stride 8, trainval, 30K iterations from lr 0.001, from stage 1:
  #   --config.init_from=<stage-1 workdir> --config.model.freeze_bn=True
  #   --config.model.output_stride=8 --config.data.train_split=trainval --config.learning_rate=0.001
  config.data = default_data_config()
  config.data.name = "voc"
  config.data.train_split = "train_aug"
  config.data.eval_split = "val"
  config.data.crop_size = 513
  config.data.min_scale = 0.5
  config.data.max_scale = 2.0
  config.data.eval_pad_size = 513
  config.batch_size = 16
  config.total_steps = 30000
  config.learning_rate = 0.007
  config.lr_schedule = "poly"
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.loss.target_mode = "upsample_logits"
  config.checkpoint_every_steps = 2000
  config.eval_every_steps = 5000
  return config
