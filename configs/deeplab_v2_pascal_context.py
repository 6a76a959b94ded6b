"""DeepLab-v2 ResNet-101 with ASPP-L on PASCAL-Context: 59 classes + background (v2 §4.2, Table 6).

v2 §4.2 (PASCAL-Context val, 5,105 images, mIOU over the 60 classes): VGG-16 LargeFOV 37.6%
before and 39.6% after CRF; ResNet-101 about 2% above VGG-16 LargeFOV; multi-scale inputs with
max fusion 41.4%; MS-COCO pretraining +1.5%; ASPP better than LargeFOV; with the dense CRF the
final model (ResNet-101, MSC, COCO, ASPP, CRF) reaches 45.7% (Table 6).

Model and training: those of the paper's VOC ResNet-101 (defaults.v2_resnet101; the paper gives
no other schedule for PASCAL-Context) on PASCAL-Context train (4,998 images); no MS-COCO
pretraining (start from ImageNet weights with --config.init_from). Evaluation as the paper's,
full images padded to 513 (VOC 2010 images are at most 500x500); after training, the CRF row:
    deeplax eval --checkpoint /tmp/deeplab_v2_pascal_context --crf

    python -m deeplax.main --config=configs/deeplab_v2_pascal_context.py --workdir=/tmp/deeplab_v2_pascal_context \
        --config.data.manual_dir=/data/pascal_context

data.manual_dir holds VOCdevkit/VOC2010 and the PASCAL-Context release
(deeplax/data/pascal_context.py).
"""

from deeplax import defaults


def get_config():
  config = defaults.v2_resnet101(defaults.get_base_config(), num_classes=60)
  config.data.name = "pascal_context"
  config.data.train_split = "train"
  config.data.eval_split = "val"
  return config
