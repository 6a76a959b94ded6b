"""DeepLab-v2 ResNet-101 with ASPP-L (rates 6, 12, 18, 24) at output_stride 8.

Reproduces v2 Table 4, the ASPP row (ResNet-101 + multi-scale inputs + MS-COCO + augmentation +
ASPP: 76.35% mIOU on PASCAL VOC 2012 val before CRF, 77.69% after the dense CRF).

Head: each ASPP-L branch is a single 3x3 atrous conv straight to the class scores
(aspp_v2_features = 0), as in the released DeepLab-v2 ResNet-101 (v2 §4.1 describes LargeFOV on
ResNet as "an atrous convolutional layer on top of ResNet, with 3x3 kernel"); the VGG fc6-fc7-fc8
branches (width 1024) would add ~4x2M parameters per branch on the 2048-channel block4.
Backbone BN is frozen (running averages), as in the released Caffe model. 'torchvision' layout
(stride in the first unit of a block, on its 3x3 conv): the closest to the MSRA Caffe ResNet-101 the
paper fine-tunes (which strides the first unit's 1x1 conv) and the layout of torchvision's weights.

    python -m deeplax.main --config=configs/deeplab_v2_aspp_l.py --workdir=/tmp/deeplab_v2_aspp_l

Fields are documented in deeplax/models/deeplab.py and deeplax/models/common.py.
"""

from deeplax import defaults
from deeplax.models import common


def get_config():
  config = defaults.get_base_config()
  config.model = common.base_model_config()
  config.model.name = "deeplab_v2"
  config.model.backbone = "resnet101"
  config.model.num_classes = 21
  config.model.output_stride = 8            # "every 8 pixels" (v2 §1, §3.1)
  config.model.freeze_bn = True
  config.model.align_corners = True
  config.model.resnet_layout = "torchvision"
  config.model.multi_grid = (1, 1, 1)
  config.model.num_cascaded_blocks = 0
  config.model.aspp_rates = (6, 12, 18, 24) # ASPP-L (v2 §4.1, Table 3)
  config.model.aspp_rates_output_stride = 8 # the rates are for output_stride 8
  config.model.aspp_v2_features = 0         # 0: one 3x3 conv per branch straight to the classes
  config.model.aspp_v2_dropout = 0.5
  # Training as published (v2 §4.1, §4.2 ResNet-101 "DeepLab-ASPP-L" on PASCAL VOC 2012): trainaug,
  # 321x321 crops, random scaling 0.5-1.5 and flips (v2 §4.3 (3)), batch 10, 20K iterations of
  # "poly" (power 0.9) from lr 2.5e-4 with 10x on the ASPP classifier branches, momentum 0.9,
  # weight decay 5e-4 (kernels only), ground truth subsampled to the scores, multi-scale input
  # training on {1, 0.75, 0.5} with max fusion (v2 §3.2, "MSC"), BN frozen (Caffe ResNet-101).
  config.data.name = "voc"
  config.data.train_split = "train_aug"
  config.data.eval_split = "val"
  config.data.crop_size = 321
  config.data.min_scale = 0.5
  config.data.max_scale = 1.5
  config.data.eval_pad_size = 513
  config.batch_size = 10
  config.total_steps = 20000
  config.learning_rate = 2.5e-4
  config.lr_schedule = "poly"
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.classifier_lr_mult = 10.0
  config.classifier_pattern = r"^aspp/"
  config.loss.target_mode = "downsample_labels"
  config.train_scales = (1.0, 0.75, 0.5)
  config.model.freeze_bn = True
  config.checkpoint_every_steps = 2000
  config.eval_every_steps = 2000
  return config
