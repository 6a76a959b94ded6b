"""The tf.data pipelines: augmentation, determinism, exact resume, sharding, bootstrapping, eval."""

import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from deeplax import defaults
from deeplax import viz
from deeplax.data import augment
from deeplax.data import input_pipeline
import deeplax.data as data

NUM_TAGGED = 10
HARD = 2  # class of the hard images in the tagged dataset: images 2, 5, 8


@pytest.fixture(scope="module")
def shapes_config(tmp_path_factory):
  config = defaults.get_base_config()
  config.seed = 7
  config.batch_size = 4
  config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.data.shapes.update(num_train=12, num_val=5, min_size=48, max_size=64)
  config.data.crop_size = 32
  config.data.eval_pad_size = 64
  config.data.eval_batch_size = 2
  data.prepared_builder(config.data)
  return config


@pytest.fixture(scope="module")
def tagged_config(tmp_path_factory):
  """A folder dataset whose image i is the constant colour 10 i + 5: batches reveal indices.

  Image i's label: class i % 3 on its left half, background on the right.
  """
  root = str(tmp_path_factory.mktemp("tagged"))
  for split, num in (("train", NUM_TAGGED), ("val", 5)):
    os.makedirs(os.path.join(root, "images", split))
    os.makedirs(os.path.join(root, "labels", split))
    for i in range(num):
      Image.fromarray(np.full((24, 24, 3), 10 * i + 5, np.uint8)).save(
          os.path.join(root, "images", split, f"{i:02d}.png"))
      label = np.zeros((24, 24), np.uint8)
      label[:, :12] = i % 3
      viz.save_indexed_png(os.path.join(root, "labels", split, f"{i:02d}.png"), label,
                           viz.voc_palette())
  with open(os.path.join(root, "classes.txt"), "w") as f:
    f.write("background\nc1\nc2\n")
  config = defaults.get_base_config()
  config.seed = 3
  config.batch_size = 2
  config.data.name = "folder"
  config.data.manual_dir = root
  config.data.data_dir = str(tmp_path_factory.mktemp("tagged_tfds"))
  config.data.update(crop_size=24, min_scale=1.0, max_scale=1.0, random_flip=False,
                     normalization="inception", eval_pad_size=32, eval_batch_size=4)
  data.prepared_builder(config.data)
  return config


def _tags(batch, normalization="inception"):
  pixels = data.denormalize(batch["image"][:, 0, 0], normalization)
  return [(int(v) - 5) // 10 for v in pixels[:, 0]]


def _take(iterator, num):
  return [next(iterator) for _ in range(num)]


def _assert_same(batches_a, batches_b):
  for a, b in zip(batches_a, batches_b, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_train_batches_shapes_dtypes(shapes_config):
  (batch,) = _take(data.create_train_iterator(shapes_config, process_index=0,
                                              process_count=1), 1)
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (4, 32, 32) and batch["label"].dtype == np.int32
  assert set(np.unique(batch["label"])) <= {0, 1, 2, 3, 4, 255}
  assert -3 < batch["image"].min() and batch["image"].max() < 3  # ImageNet-normalised


def test_same_seed_same_batches(shapes_config):
  first = _take(data.create_train_iterator(shapes_config, process_index=0, process_count=1), 4)
  again = _take(data.create_train_iterator(shapes_config, process_index=0, process_count=1), 4)
  _assert_same(first, again)
  other = shapes_config.copy_and_resolve_references()
  other.seed = 8
  different = _take(data.create_train_iterator(other, process_index=0, process_count=1), 4)
  assert not np.array_equal(first[0]["image"], different[0]["image"])


def test_restored_iterator_continues_exactly(shapes_config):
  it = data.create_train_iterator(shapes_config, process_index=0, process_count=1)
  _take(it, 4)  # 16 examples: into the second epoch of 12
  state = json.loads(json.dumps(it.get_state()))
  assert (state["epoch"], state["position"]) == (1, 4)
  expected = _take(it, 5)
  restored = data.create_train_iterator(shapes_config, process_index=0, process_count=1)
  restored.set_state(state)
  _assert_same(expected, _take(restored, 5))
  assert restored.get_state() == it.get_state()
  with pytest.raises(ValueError, match="seed"):
    restored.set_state({**state, "seed": 99})


def test_epochs_reshuffled_and_two_processes_disjoint_covering(tagged_config):
  iterators = [data.create_train_iterator(tagged_config, process_index=p, process_count=2)
               for p in range(2)]
  epochs = []
  for _ in range(2):  # each process: 5 examples per epoch, batches of 1
    shards = [sum((_tags(b) for b in _take(it, 5)), []) for it in iterators]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(NUM_TAGGED))
    epochs.append(shards)
  assert epochs[0] != epochs[1]  # a new permutation per epoch
  assert iterators[0].get_state()["epoch"] == 2


def test_batch_size_must_divide_over_processes(tagged_config):
  with pytest.raises(ValueError, match="batch_size=2 must be a positive multiple"):
    data.create_train_iterator(tagged_config, process_index=0, process_count=4)


def test_bootstrapping_duplicates_exactly_hard_images(tagged_config):
  config = tagged_config.copy_and_resolve_references()
  config.data.update(bootstrap_classes=["c2"], bootstrap_repeats=3)
  it = data.create_train_iterator(config, process_index=0, process_count=1)
  hard = [i for i in range(NUM_TAGGED) if i % 3 == HARD]
  num_slots = NUM_TAGGED + 2 * len(hard)
  assert len(it.slots) == num_slots
  tags = sum((_tags(b) for b in _take(it, num_slots // 2)), [])  # exactly one epoch
  counts = np.bincount(tags, minlength=NUM_TAGGED)
  np.testing.assert_array_equal(counts, [3 if i in hard else 1 for i in range(NUM_TAGGED)])
  # The selection itself, on class lists: any hard class marks an image.
  slots = input_pipeline.bootstrap_slots([np.array([0, 1]), np.array([0, 9]), np.array([4, 18])],
                                         hard_class_ids=[9, 18], repeats=2)
  np.testing.assert_array_equal(np.sort(slots), [0, 1, 1, 2, 2])
  with pytest.raises(ValueError, match="unknown class 'sofa'"):
    config.data.bootstrap_classes = ["sofa"]
    data.create_train_iterator(config, process_index=0, process_count=1)


def test_eval_iterator_pads_and_shards(tagged_config):
  ids = []
  for p in range(2):
    ev = data.create_eval_iterator(tagged_config, process_index=p, process_count=2)
    batches = list(ev)
    assert len(batches) == len(ev) == 2  # 5 images, 3 per process max, 2 per batch
    for b in batches:
      assert b["image"].shape == (2, 32, 32, 3) and b["label"].shape == (2, 32, 32)
      assert b["mask"].dtype == bool and b["height"].dtype == np.int32
      real = b["id"] != ""
      np.testing.assert_array_equal(b["mask"].sum((1, 2)), np.where(real, 24 * 24, 0))
      assert (b["label"][~b["mask"]] == 255).all()
      np.testing.assert_array_equal(b["height"][real], 24)
      ids += list(b["id"][real])
  assert sorted(ids) == [f"{i:02d}" for i in range(5)]
  assert len(set(ids)) == 5
  native = tagged_config.copy_and_resolve_references()
  native.data.eval_pad_size = None
  batches = list(data.create_eval_iterator(native, process_index=0, process_count=1))
  assert len(batches) == 5 and batches[0]["image"].shape == (1, 24, 24, 3)
  assert batches[0]["mask"].all()


def test_eval_image_larger_than_pad_size_is_an_error(tagged_config):
  config = tagged_config.copy_and_resolve_references()
  config.data.eval_pad_size = 16
  config.data.eval_pad_width = 32
  with pytest.raises(tf.errors.InvalidArgumentError, match="eval_pad_size"):
    list(data.create_eval_iterator(config, process_index=0, process_count=1))


def test_pad_size_check_runs_before_every_pad():
  # Regression: the label pad did not wait for the size check, so parallel map calls sometimes
  # failed with TF's "Paddings must be non-negative" instead of naming data.eval_pad_size.
  def element(i):
    height = 24 + tf.cast(i, tf.int32) * 0  # dynamic, so the bad paddings are not caught at trace
    image, label = tf.zeros([height, 40, 3], tf.uint8), tf.zeros([height, 40], tf.uint8)
    return augment.pad_for_eval(image, label, (16, 32), (0.0, 0.0, 0.0), tf.strings.as_string(i))

  for _ in range(20):
    ds = tf.data.Dataset.range(8).map(element, num_parallel_calls=8, deterministic=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="eval_pad_size"):
      list(ds.as_numpy_iterator())


def test_dataset_info_and_bad_config(tagged_config, shapes_config):
  info = data.dataset_info(tagged_config.data)
  assert info.class_names == ("background", "c1", "c2") and info.num_classes == 3
  assert info.splits == {"train": NUM_TAGGED, "val": 5}
  assert info.palette.dtype == np.uint8 and info.palette.shape == (3, 3)
  bad = shapes_config.copy_and_resolve_references()
  bad.data.name = "coco"
  with pytest.raises(ValueError, match="data.name must be one of"):
    data.dataset_info(bad.data)
  bad.data.name = "shapes"
  bad.data.normalization = "caffe"
  with pytest.raises(ValueError, match="data.normalization"):
    data.create_train_iterator(bad, process_index=0, process_count=1)


@pytest.mark.parametrize("normalization", ["imagenet", "inception", "vgg"])
def test_normalize_round_trip(normalization):
  images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)
  x = data.normalize(images, normalization)
  assert x.dtype == np.float32
  np.testing.assert_array_equal(data.denormalize(x, normalization), images)
  np.testing.assert_allclose(data.normalize(augment.mean_pixel(normalization), normalization),
                             0, atol=1e-6)
  if normalization == "inception":
    np.testing.assert_allclose(data.normalize(np.array([[0] * 3, [255] * 3]), normalization),
                               [[-1] * 3, [1] * 3])


def _pixel_coded_example():
  """Image whose red channel is 50 x class, green 4 x column, blue 4 x row."""
  yy, xx = np.mgrid[0:64, 0:64]
  label = ((yy // 8 + xx // 8) % 5).astype(np.uint8)
  image = np.stack([label * 50, xx * 4, yy * 4], -1).astype(np.uint8)
  return image, label


def test_augmentation_keeps_image_and_label_aligned():
  image, label = _pixel_coded_example()
  pad = [127.5, 127.5, 127.5]
  scales, flips, tops, padded = [], [], [], 0
  for s in range(24):
    out_image, out_label = augment.random_scale_crop_flip(
        image, label, tf.constant([s, 1], tf.int64), crop_size=48, min_scale=0.5,
        max_scale=2.0, random_flip=True, pad_pixel=pad)
    out_image, out_label = out_image.numpy(), out_label.numpy()
    assert out_image.shape == (48, 48, 3) and out_label.shape == (48, 48)
    ignored = out_label == 255
    # Padding: label 255 exactly where the image is the pad pixel.
    np.testing.assert_array_equal(out_image[ignored], np.full((ignored.sum(), 3), 127.5))
    padded += ignored.any()
    # Alignment: inside label regions the red channel codes the same class.
    valid = ~ignored
    interior = valid.copy()
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
      interior &= np.roll(out_label, (dy, dx), (0, 1)) == out_label
    interior[[0, -1]] = interior[:, [0, -1]] = False
    agree = np.abs(out_image[..., 0] - 50 * out_label) < 1
    assert agree[interior].mean() > 0.97, s
    # Recover the draw: green's slope along x gives scale and flip, blue's minimum the top.
    green = out_image[..., 1]
    rows = valid[:, 1:] & valid[:, :-1]
    slope = np.median((green[:, 1:] - green[:, :-1])[rows])
    scales.append(4 / abs(slope))
    flips.append(slope < 0)
    tops.append(out_image[..., 2][valid].min())
  assert padded > 0 and 0 < sum(flips) < len(flips)
  assert min(scales) < 0.8 and max(scales) > 1.5
  assert all(0.45 < s < 2.1 for s in scales)
  assert len(set(np.round(tops))) > 5


def test_ignore_label_is_configurable(tagged_config):
  config = tagged_config.copy_and_resolve_references()
  config.data.update(ignore_label=99, crop_size=32)  # 24 px images: padded by 8 px
  (batch,) = _take(data.create_train_iterator(config, process_index=0, process_count=1), 1)
  assert set(np.unique(batch["label"])) <= {0, 1, 2, 99} and (batch["label"] == 99).any()
  assert (batch["label"][:, 24:, :] == 99).all() and (batch["label"][:, :, 24:] == 99).all()
  ev = next(iter(data.create_eval_iterator(config, process_index=0, process_count=1)))
  assert (ev["label"][~ev["mask"]] == 99).all()


def test_vgg_normalization_subtracts_the_slim_mean_pixel_only():
  pixels = np.array([[123.68, 116.78, 103.94], [133.68, 116.78, 103.94]], np.float32)
  np.testing.assert_allclose(data.normalize(pixels, "vgg"), [[0, 0, 0], [10, 0, 0]], atol=1e-4)
