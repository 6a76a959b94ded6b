"""Datasets (tfds builders) and tf.data input pipelines.

Datasets (`config.data.name`): 'shapes' (built-in synthetic, deeplax.data.shapes), 'voc' (PASCAL
VOC 2012 + SBD, deeplax.data.voc), 'cityscapes' (fine, 19 train ids, deeplax.data.cityscapes),
'pascal_context' (59 classes + background, deeplax.data.pascal_context), 'person_part'
(PASCAL-Person-Part, deeplax.data.person_part), 'ade20k' (SceneParsing, 150 classes,
deeplax.data.ade20k), 'folder' (your own images and masks, deeplax.data.folder). Pipelines:
deeplax.data.input_pipeline.
"""

from absl import logging
import tensorflow as tf

# TensorFlow only feeds data: it must never claim an accelerator that JAX uses.
try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError as e:  # TF's devices were initialised before deeplax.data was imported
  if tf.config.get_visible_devices("GPU"):
    logging.warning("deeplax.data: TensorFlow already initialised and sees GPUs %s (%s); import "
                    "deeplax.data before using TensorFlow", tf.config.get_visible_devices("GPU"), e)

# pylint: disable=g-import-not-at-top,g-bad-import-order
from deeplax.data.augment import denormalize
from deeplax.data.augment import normalize
from deeplax.data.input_pipeline import DatasetInfo
from deeplax.data.input_pipeline import create_eval_iterator
from deeplax.data.input_pipeline import create_train_iterator
from deeplax.data.input_pipeline import dataset_info
from deeplax.data.input_pipeline import default_data_config
from deeplax.data.input_pipeline import get_builder
from deeplax.data.input_pipeline import prepared_builder
