"""DeepLab-v2 ResNet-101 with ASPP-L (rates 6, 12, 18, 24) at output_stride 8.

Reproduces v2 Table 4, the ASPP row (ResNet-101 + multi-scale inputs + MS-COCO + augmentation +
ASPP: 76.35% mIOU on PASCAL VOC 2012 val before CRF, 77.69% after the dense CRF).

Head: each ASPP-L branch is a single 3x3 atrous conv straight to the class scores
(aspp_v2_features = None), as in the released DeepLab-v2 ResNet-101 (v2 §4.1 describes LargeFOV on
ResNet as "an atrous convolutional layer on top of ResNet, with 3x3 kernel"); the VGG fc6-fc7-fc8
branches (width 1024) would add ~4x2M parameters per branch on the 2048-channel block4.
Backbone BN is frozen (running averages), as in the released Caffe model. 'torchvision' layout
(stride in the first unit of a block, on its 3x3 conv): the closest to the MSRA Caffe ResNet-101 the
paper fine-tunes (which strides the first unit's 1x1 conv) and the layout of torchvision's weights.

    python -m deeplax.main --config=configs/deeplab_v2_aspp_l.py --workdir=/tmp/deeplab_v2_aspp_l

Fields are documented in deeplax/models/deeplab.py and deeplax/models/resnet.py; the recipe in
deeplax/defaults.py (v2_resnet101).
"""

from deeplax import defaults


def get_config():
  # Model and training as published: defaults.v2_resnet101 (v2 §4.1.2, Table 4).
  return defaults.v2_resnet101(defaults.get_base_config(), num_classes=21)
