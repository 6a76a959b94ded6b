"""DeepLabv3 ResNet-101 on ADE20K, 150 classes: the v3 recipe (v3 §4.1, Table 5 model) on ADE20K.

Model: configs/deeplab_v3_aspp.py's (ResNet-101, Multi-Grid (1, 2, 4), ASPP (6, 12, 18) + image
pooling at output stride 16), with ADE20K's 150 classes (release label 0 'other' ignored, the
benchmark's convention; deeplax.data.ade20k). Training: the v3 recipe (defaults.voc_v3_training:
crop 513, random scale 0.5-2.0, flips, batch 16, poly from 0.007, BN trained) on ADE20K train
(20,210 images) for 150K iterations (not a paper figure; the VOC recipe's 30K would be ~24
epochs of ADE20K). Images are resized as the official ADE20K pipeline does
(data.min_resize_value = max_resize_value = 513, resize_factor 16), so evaluation pads to 513. No paper table: DeepLabv3 reports no ADE20K
result; the model zoo's Xception-65 DeepLabv3+ (configs/deeplab_v3plus_ade20k.py) scores 45.65%.
Evaluate at output stride 8 with multi-scale inputs as v3 Table 6 does:
    deeplax eval --checkpoint /tmp/deeplab_v3_ade20k --output-stride 8 \
        --scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip

    python -m deeplax.main --config=configs/deeplab_v3_ade20k.py --workdir=/tmp/deeplab_v3_ade20k \
        --config.data.manual_dir=/data/ade20k
"""

import importlib.util
import os


def get_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deeplab_v3_aspp.py")
  spec = importlib.util.spec_from_file_location("deeplab_v3_aspp", path)
  v3 = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(v3)
  config = v3.get_config()
  config.model.num_classes = 150
  config.data.name = "ade20k"
  config.data.train_split = "train"
  config.data.eval_split = "val"
  config.data.min_resize_value = 513       # g3doc/ade20k.md
  config.data.max_resize_value = 513
  config.data.resize_factor = 16
  config.total_steps = 150000
  config.eval_every_steps = 10000
  return config
