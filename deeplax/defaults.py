"""The base ConfigDict every config in `configs/` starts from.

Each section is documented where it is consumed: `model` by `deeplax.models.build`, `data` by
`deeplax.data`, the top-level training fields by `deeplax.train`.
"""

import os

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
  config.max_to_keep = 3             # healthy checkpoints kept in <workdir>/checkpoints
  # Divergence (deeplax.divergence): stop when the loss or the parameter norm exceeds factor x
  # its running median over `window` steps (0: only the finite test); a checkpoint counts as
  # healthy once `confirm_steps` healthy steps follow it.
  config.divergence = ml_collections.ConfigDict(dict(factor=10.0, window=100, confirm_steps=5))
  # Resuming with a model config other than the workdir's config.json is refused unless True
  # (the change is then recorded in <workdir>/config_changes.json).
  config.allow_config_change = False
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
  config.data = data_config()
  return config


def data_config() -> ml_collections.ConfigDict:
  """`config.data`: which dataset and how to feed it (read by `deeplax.data`). Defaults suit the
  built-in shapes data. Here, not in `deeplax.data`, so configs load without TensorFlow."""
  c = ml_collections.ConfigDict()
  # 'shapes' | 'voc' | 'cityscapes' | 'pascal_context' | 'person_part' | 'ade20k' | 'folder'
  c.name = "shapes"
  # tfds data directory the builders write to and read from ($TFDS_DATA_DIR if set).
  c.data_dir = os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
  # Source files, as the releases extract (each builder's module doc lists the layout): VOC
  # (VOCdevkit/, benchmark_RELEASE/), Cityscapes (leftImg8bit/, gtFine/), PASCAL-Context
  # (VOCdevkit/VOC2010/ + trainval/ or SegmentationClassContext/), PASCAL-Person-Part
  # (VOCdevkit/VOC2010/ or pascal_person_part/), ADE20K (ADEChallengeData2016/), folder (images/,
  # labels/; see deeplax.data.folder). Unused by shapes.
  c.manual_dir = ml_collections.config_dict.placeholder(str)
  c.train_split = "train"  # VOC: 'train_aug' in the papers (v2 §4.1, v3 §4); 'trainval'
  c.eval_split = "val"
  # Training augmentation. The papers' VOC settings (their configs set them): v2 §4.1 scale
  # [0.5, 1.5], crop 321; v3 §4.1 scale [0.5, 2.0], crop 513, flip. Defaults suit shapes.
  # Sizes of 16k+1 (113, 145, 513) put the corner pixels of output-stride-16/8 features exactly
  # on image pixels, as the models' align_corners=True upsampling assumes (TF DeepLab's 513).
  c.crop_size = 113
  c.min_scale = 0.75
  c.max_scale = 1.25
  c.random_flip = True
  # Resize every image and label (training and evaluation) before anything else, as the official
  # TF DeepLab flags of these names do (deeplax.data.augment.resize_to_range_size): the shorter
  # side to min_resize_value unless the longer would exceed max_resize_value, sides then made
  # resize_factor * k + 1. The official ADE20K settings: 513, 513, 16 (g3doc/ade20k.md), so
  # mIoU is measured on resized labels, as the official evaluation does. None: native sizes
  # (the papers' VOC protocol).
  c.min_resize_value = ml_collections.config_dict.placeholder(int)
  c.max_resize_value = ml_collections.config_dict.placeholder(int)
  c.resize_factor = ml_collections.config_dict.placeholder(int)
  c.normalization = "imagenet"  # 'imagenet' (torchvision mean/std) | 'inception' ([-1, 1])
  # Evaluation: pad every image (bottom/right) to eval_pad_size x eval_pad_width for static
  # shapes (VOC: 513; Cityscapes: 1024 x 2048); width None = square. eval_pad_size None = batch
  # size 1 at native size.
  c.eval_pad_size = 145
  c.eval_pad_width = ml_collections.config_dict.placeholder(int)
  c.eval_batch_size = 8  # global, over all processes; divided by the process count
  c.ignore_label = 255  # the label value of ignored pixels in the batches
  # True: the model has one more class, 0 = 'other', for the pixels the dataset ignores, and the
  # dataset's class c is the model's class c + 1. The official TF DeepLab ADE20K checkpoints are
  # built so (151 classes, label 0 ignored). 'other' never occurs in the ground truth; a pixel
  # predicted 'other' is a miss of its true class, and mIoU averages the dataset's classes only
  # (deeplax.metrics void classes), so it is the 150-class mIoU of ADE20K.
  c.other_class = False
  # Hard-image bootstrapping (v3 §4.3): training images containing any of these classes (names
  # or ids; paper: bicycle, chair, diningtable, pottedplant, sofa) appear bootstrap_repeats
  # times per epoch instead of once.
  c.bootstrap_classes = []
  c.bootstrap_repeats = 1
  # 0: no shuffling (split order, for debugging). Any other value: a full, exact per-epoch
  # permutation (random access needs no buffer; the field is kept for familiar configs).
  c.shuffle_buffer = -1
  c.prefetch = 2  # batches prefetched by tf.data
  c.num_parallel_calls = -1  # parallel decode/augment calls; -1 = tf.data.AUTOTUNE
  # The built-in synthetic dataset (deeplax.data.shapes).
  c.shapes = ml_collections.ConfigDict(
      dict(seed=0, num_train=400, num_val=100, min_size=112, max_size=144))
  # A folder dataset's classes when its root has no classes.txt (deeplax.data.folder).
  c.folder = ml_collections.ConfigDict()
  c.folder.num_classes = ml_collections.config_dict.placeholder(int)
  return c


def voc_v3_training(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The DeepLabv3 training recipe on PASCAL VOC 2012 (v3 §4.1), which DeepLabv3+ keeps.

  Stage 1 on trainaug, crop 513, random scale 0.5-2.0 and flips,
  batch 16 at output_stride 16 with BN trained (decay 0.9997), 30K iterations of "poly" (power
  0.9) from lr 0.007, momentum 0.9, weight decay 1e-4 (kernels only; the release's value, not
  in the paper text), logits upsampled to the ground truth (v3 §4.1).
  Stage 2 (v3 §4.1): BN frozen, output_stride 8, trainval, 30K iterations from lr 0.001, from stage 1:
    --config.init_from=<stage-1 workdir> --config.model.freeze_bn=True
    --config.model.output_stride=8 --config.data.train_split=trainval --config.learning_rate=0.001
  """
  config.data = data_config()
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


def v2_resnet101(config: ml_collections.ConfigDict, num_classes: int,
                 aspp_rates=(6, 12, 18, 24)) -> ml_collections.ConfigDict:
  """DeepLab-v2 on ResNet-101 and its training recipe (v2 §4.1.2, §4.2), on PASCAL VOC 2012.

  Model: output_stride 8, ASPP-L (6, 12, 18, 24) or LargeFOV (12,) as one 3x3 atrous conv per
  branch straight to the class scores, backbone BN frozen (the released Caffe ResNet-101),
  'torchvision' layout (the closest to the MSRA ResNet-101; see configs/deeplab_v2_aspp_l.py).
  Training: trainaug, 321x321 crops, random scaling 0.5-1.5 and flips (v2 §4.3 (3)), batch 10,
  20K iterations of "poly" (power 0.9) from lr 2.5e-4 with 10x on the ASPP classifier branches,
  momentum 0.9, weight decay 5e-4 (kernels only), ground truth subsampled to the scores,
  multi-scale input training on {1, 0.75, 0.5} with max fusion (v2 §3.2, "MSC").
  Other datasets' configs change config.data after this.
  """
  from deeplax import models  # pylint: disable=g-import-not-at-top
  from deeplax.models import backbones  # pylint: disable=g-import-not-at-top
  config.model = models.default_config("deeplab_v2")
  m = config.model
  m.backbone = backbones.config("resnet101", layout="torchvision", multi_grid=(1, 1, 1),
                                num_cascaded_blocks=0)
  m.num_classes = num_classes
  m.output_stride = 8            # "every 8 pixels" (v2 §1, §3.1)
  m.freeze_bn = True
  m.align_corners = True
  m.aspp_rates = tuple(aspp_rates)  # ASPP-L (v2 §4.1, Table 3); (12,) = LargeFOV
  m.aspp_rates_output_stride = 8 # the rates are for output_stride 8
  m.aspp_v2_features = None      # None: one 3x3 conv per branch straight to the classes
  m.aspp_v2_dropout = 0.5
  config.data = data_config()
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
  config.checkpoint_every_steps = 2000
  config.eval_every_steps = 2000
  return config
