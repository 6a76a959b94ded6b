"""DeepLabv3+ Xception-65 on ADE20K as the official TF DeepLab model zoo trains it: 151 classes.

The zoo's `xception65_ade20k_train` (g3doc/model_zoo.md, the ADE20K table): Xception-65,
ASPP (6, 12, 18) at output stride 16, decoder at output stride 4, 513x513 inputs; evaluated at
output stride 8 with scales 0.5:0.25:1.75 and left-right flips: 45.65% mIOU and 82.52% pixel
accuracy on ADE20K val (2,000 images). Its training flags (g3doc/ade20k.md): train_crop_size
513x513, min_resize_value = max_resize_value = 513 and resize_factor 16 (every image resized,
in training and evaluation, so its longer side is at most 497 and its sides are 16k + 1: the
data fields of the same names).

Classes: as the official code, 151 outputs with the release's label 0 ('other') ignored
(data.other_class; deeplax.data.ade20k). mIoU is over the 150 classes. Input in [-1, 1]
('inception' normalisation), align_corners, the official Xception BN epsilon 1e-3. The optimiser
and schedule are the v3 VOC recipe's (defaults.voc_v3_training): the zoo does not publish its
ADE20K schedule. The zoo's evaluation, after training:
    deeplax eval --checkpoint /tmp/deeplab_v3plus_ade20k --output-stride 8 \
        --scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip

    python -m deeplax.main --config=configs/deeplab_v3plus_ade20k.py --workdir=/tmp/deeplab_v3plus_ade20k \
        --config.data.manual_dir=/data/ade20k

data.manual_dir holds ADEChallengeData2016/ (deeplax/data/ade20k.py). Not a paper table: the
v3+ paper reports no ADE20K result; the figures above are the model zoo's ("Table" of
model_zoo.md).
"""

import importlib.util
import os


def get_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deeplab_v3plus_xception65.py")
  spec = importlib.util.spec_from_file_location("deeplab_v3plus_xception65", path)
  v3plus = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(v3plus)
  config = v3plus.get_config()             # the model and the v3 training recipe
  config.model.num_classes = 151            # 150 + 'other' (data.other_class)
  config.data.name = "ade20k"
  config.data.train_split = "train"
  config.data.eval_split = "val"
  config.data.other_class = True
  config.data.min_resize_value = 513       # g3doc/ade20k.md
  config.data.max_resize_value = 513
  config.data.resize_factor = 16
  config.data.normalization = "inception"   # the zoo's [-1, 1] input
  return config
