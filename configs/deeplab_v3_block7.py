"""DeepLabv3 cascaded model: ResNet-101 + block5..block7 (replicas of block4), Multi-Grid (1, 2, 1).

Reproduces v3 Table 3, best entry (block7, MG (1, 2, 1): 76.66% mIOU on PASCAL VOC 2012 val at
output_stride 16; Table 4: 79.35% evaluated at output_stride 8 with multi-scale and flipped inputs).
No ASPP: the 1x1 logits conv sits directly on block7 (v3 §3.2, Fig. 3b).

    python -m deeplax.main --config=configs/deeplab_v3_block7.py --workdir=/tmp/deeplab_v3_block7

Fields are documented in deeplax/models/deeplab.py and deeplax/models/common.py.
"""

from deeplax import defaults
from deeplax.data import default_data_config
from deeplax.models import common


def get_config():
  config = defaults.get_base_config()
  config.model = common.base_model_config()
  config.model.name = "deeplab_v3"
  config.model.backbone = "resnet101"
  config.model.num_classes = 21
  config.model.output_stride = 16           # train at 16, evaluate at 8 (v3 §4.1, Table 4)
  config.model.bn_momentum = 0.9997         # v3 §4.1
  config.model.align_corners = True
  config.model.resnet_layout = "slim"
  config.model.multi_grid = (1, 2, 1)       # v3 Table 3
  config.model.num_cascaded_blocks = 3      # block5, block6, block7
  config.model.aspp = False
  # Training as published (v3 §4.1): stage 1 on trainaug, crop 513, random scale 0.5-2.0 and flips,
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
