"""DeepLab-v2 ResNet-101 on PASCAL-Person-Part: background + 6 parts (v2 §4.3, Table 7).

v2 §4.3 (PASCAL-Person-Part val, 1,817 images, mIOU over the 7 classes): ResNet-101 DeepLab alone
58.9%; multi-scale inputs with max fusion 63.1%; MS-COCO pretraining +1.3%; "we do not observe
any improvement when adopting either LargeFOV or ASPP on this dataset"; the dense CRF on top of
the final output (Table 7).

Model and training: those of the paper's VOC ResNet-101 (defaults.v2_resnet101, ASPP-L; LargeFOV:
--config.model.aspp_rates='(12,)') on Person-Part train (1,716 images); no MS-COCO pretraining
(start from ImageNet weights with --config.init_from). The part classes have no left/right, so
the random flip of the recipe keeps every label valid. After training, the CRF row:
    deeplax eval --checkpoint /tmp/deeplab_v2_person_part --crf

    python -m deeplax.main --config=configs/deeplab_v2_person_part.py --workdir=/tmp/deeplab_v2_person_part \
        --config.data.manual_dir=/data/person_part

data.manual_dir holds pascal_person_part/ and VOCdevkit/VOC2010 (deeplax/data/person_part.py).
"""

from deeplax import defaults


def get_config():
  config = defaults.v2_resnet101(defaults.get_base_config(), num_classes=7)
  config.data.name = "person_part"
  config.data.train_split = "train"
  config.data.eval_split = "val"
  return config
