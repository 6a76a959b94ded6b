"""DeepLab-v2 ResNet-101 with ASPP-L on Cityscapes fine, 19 classes (v2 §4.4, Table 9).

v2 §4.4 (Cityscapes val, 500 images at the original 2048x1024): ResNet-101 better than VGG-16;
LargeFOV +2.6%, ASPP another +1.2%, data augmentation +0.6%, the dense CRF +0.4% (Table 9); the
best model, trained on the train set only, scores 70.4% on the test server. No multi-scale inputs
("due to the limited GPU memories at hand"). Images are processed at their original resolution,
and inference splits each image into overlapped regions.

Model: defaults.v2_resnet101 (ASPP-L) with 19 classes and single-scale training; training
otherwise the paper's VOC protocol (the crop size for Cityscapes is not in the paper: 513 here).
Periodic evaluation during training runs on whole images (padded to 1025x2049); the paper's
overlapped-regions evaluation, and the CRF row, after training:
    deeplax eval --checkpoint /tmp/deeplab_v2_cityscapes --tile 513 1025 --tile-overlap 0.33
    deeplax eval --checkpoint /tmp/deeplab_v2_cityscapes --tile 513 1025 --crf

    python -m deeplax.main --config=configs/deeplab_v2_cityscapes.py --workdir=/tmp/deeplab_v2_cityscapes \
        --config.data.manual_dir=/data/cityscapes

data.manual_dir holds leftImg8bit/ and gtFine/ (deeplax/data/cityscapes.py).
"""

from deeplax import defaults


def get_config():
  config = defaults.v2_resnet101(defaults.get_base_config(), num_classes=19)
  config.train_scales = (1.0,)              # v2 §4.4: no multi-scale inputs
  config.data.name = "cityscapes"
  config.data.train_split = "train"
  config.data.eval_split = "val"
  config.data.crop_size = 513
  config.data.eval_pad_size = 1025          # 16k+1 for align_corners
  config.data.eval_pad_width = 2049
  config.data.eval_batch_size = 2
  return config
