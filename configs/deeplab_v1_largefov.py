"""DeepLab-LargeFOV on VGG-16 (DeepLab v1; v2 §4.1.1, Table 1 last row, Table 3 baseline).

fc6: 3x3 kernel at atrous rate 12 (at output stride 8), fc6/fc7 thinned to 1,024 filters: 20.5M
parameters; after CRF it matches the 7x7 r=4 direct adaptation (67.64% mIOU on PASCAL VOC 2012 val,
v2 §4.1.1, Table 1); 65.76% before CRF with the 'poly' schedule (v2 §4.1.2). Other Table 1 rows: `vgg.table1_config(variant)`;
DeepLab-ASPP-S/L on VGG-16 (Table 3): fc6_rates = (2, 4, 8, 12) / (6, 12, 18, 24).

    python -m deeplax.main --config=configs/deeplab_v1_largefov.py --workdir=/tmp/deeplab_v1_largefov

Fields are documented in deeplax/models/vgg.py (DeepLabV1, VGG16).
"""

from deeplax import defaults
from deeplax import models


def get_config():
  config = defaults.get_base_config()
  config.model = models.default_config("deeplab_v1")
  config.model.backbone.name = "vgg16"
  config.model.num_classes = 21
  config.model.output_stride = 8            # v2 §3.1: pool4 and pool5 without stride
  config.model.fc6_kernel_size = 3          # v2 Table 1, DeepLab-LargeFOV
  config.model.fc6_rates = (12,)            # at output stride 8; one rate = no ASPP
  config.model.fc_features = 1024           # fc6 and fc7 width
  config.model.dropout_rate = 0.5           # after fc6 and fc7
  config.model.align_corners = True         # the papers' own (Caffe/TF) interpolation
  # Training as published for DeepLab-LargeFOV with the "poly" policy (v2 §4.1.2, Table 2):
  # PASCAL VOC 2012 trainaug (10,582 images, v2 §4.1), 321x321 crops (random crop + flip, no
  # rescaling in v1), batch 10, 20K iterations, base lr 1e-3 and 10x for the classifier fc8,
  # momentum 0.9, weight decay 5e-4 (kernels only, as the Caffe prototxt: decay_mult 0 on biases),
  # ground truth subsampled by 8 to the scores (v3 §4.1 "Upsampling logits" describes v1/v2).
  # v1's original "step" policy: --config.lr_schedule=step --config.lr_step_size=2000
  # --config.batch_size=20 --config.total_steps=6000 (v2 §4.1).
  config.data.name = "voc"
  config.data.train_split = "train_aug"
  config.data.eval_split = "val"
  config.data.crop_size = 321
  config.data.min_scale = 1.0
  config.data.max_scale = 1.0
  config.data.eval_pad_size = 513
  config.batch_size = 10
  config.total_steps = 20000
  config.learning_rate = 1e-3
  config.lr_schedule = "poly"
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.classifier_lr_mult = 10.0
  config.classifier_pattern = r"fc8"
  config.loss.target_mode = "downsample_labels"
  config.checkpoint_every_steps = 2000
  config.eval_every_steps = 2000
  return config
