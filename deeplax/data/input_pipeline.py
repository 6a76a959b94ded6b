"""tf.data input pipelines: endless, resumable training batches and padded evaluation batches.

Design (index-based, exact resume, multi-host):
- Datasets are tfds builders written as ArrayRecord files, read by random access
  (`builder.as_data_source`): the pipeline decides which record comes next, tf.data only decodes
  and augments.
- Training order: the split's records, plus the bootstrapped duplicates (v3 §4.3), form a list of
  M "slots". Epoch e visits the slots in a permutation drawn statelessly from (seed, e); process
  p of P takes positions p, p+P, ... of it (disjoint shards covering the epoch). The augmentation
  of an element is drawn from (seed, epoch, slot).
- Iterator state = (epoch, position in this process's shard of that epoch): JSON, a few ints.
  Restoring rebuilds the pipeline and skips *indices*, never decoded or augmented elements.
"""

import dataclasses
import importlib
import math
import os
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from deeplax import defaults
from deeplax.data import augment
from deeplax.data import shapes

# data.name -> (module, builder class) of the datasets read from data.manual_dir.
_MANUAL_BUILDERS = {
    "voc": ("voc", "DeeplaxVoc"),
    "cityscapes": ("cityscapes", "DeeplaxCityscapes"),
    "pascal_context": ("pascal_context", "DeeplaxPascalContext"),
    "person_part": ("person_part", "DeeplaxPersonPart"),
    "ade20k": ("ade20k", "DeeplaxAde20k"),
}
DATASETS = ("shapes", *_MANUAL_BUILDERS, "folder")
OTHER_CLASS_NAME = "other"

# The functions tf.data traces are plain TF ops (no Python control flow on tensors): no AutoGraph.
_graph_fn = tf.autograph.experimental.do_not_convert


default_data_config = defaults.data_config


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What models, metrics and pictures need to know about a dataset."""
  name: str
  num_classes: int
  class_names: tuple
  palette: np.ndarray  # uint8 [num_classes, 3]
  splits: dict  # split name -> number of examples ({} when not prepared)
  ignore_label: int = 255
  # Classes the model predicts that no label holds (data.other_class: class 0), left out of mIoU.
  void_classes: tuple = ()


def get_builder(data_config) -> tfds.core.DatasetBuilder:
  """The tfds builder of `data_config.name` (ArrayRecord files, not yet prepared)."""
  name = data_config.name
  kwargs = dict(data_dir=os.path.expanduser(data_config.data_dir), file_format="array_record")
  if name == "shapes":
    config = shapes.shapes_config(**data_config.shapes)
    if config.name in shapes.DeeplaxShapes.builder_configs:  # tfds wants registered ones by name
      config = config.name
    return shapes.DeeplaxShapes(config=config, **kwargs)
  if name in _MANUAL_BUILDERS:
    module, cls = _MANUAL_BUILDERS[name]
    module = importlib.import_module(f"deeplax.data.{module}")
    return getattr(module, cls)(**kwargs)
  if name == "folder":
    from deeplax.data import folder  # pylint: disable=g-import-not-at-top
    if not data_config.manual_dir:
      raise ValueError("data.name='folder' needs data.manual_dir: the folder with images/ and "
                       "labels/ (see deeplax.data.folder)")
    return folder.DeeplaxFolder(root_dir=os.path.expanduser(data_config.manual_dir),
                                num_classes=data_config.folder.num_classes, **kwargs)
  raise ValueError(f"data.name must be one of {DATASETS}; got {name!r}")


def prepared_builder(data_config) -> tfds.core.DatasetBuilder:
  """The builder, built on first use (shapes: generated; others: from data.manual_dir)."""
  builder = get_builder(data_config)
  if not builder.is_prepared():
    manual_dir = data_config.manual_dir
    if data_config.name in _MANUAL_BUILDERS and not manual_dir:
      raise ValueError(f"dataset {data_config.name!r} is not built in {data_config.data_dir}; "
                       "set data.manual_dir to its source files:\n"
                       f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(manual_dir) if manual_dir else None,
        compute_stats=tfds.download.ComputeStatsMode.SKIP)
    builder.download_and_prepare(download_config=download_config, file_format="array_record")
  return builder


def dataset_info(data_config, prepare: bool = True) -> DatasetInfo:
  """Classes, palette and split sizes as the model sees them; `prepare=False` never builds
  (splits {} if unbuilt). With `data.other_class`, class 0 is 'other' (a void class) and the
  dataset's class c is class c + 1."""
  builder = prepared_builder(data_config) if prepare else get_builder(data_config)
  meta = builder.info.metadata
  splits = {}
  if builder.is_prepared():
    splits = {name: split.num_examples for name, split in builder.info.splits.items()}
  class_names = tuple(meta["class_names"])
  palette = np.asarray(meta["palette"], np.uint8)
  void_classes = ()
  if other_class(data_config):
    class_names = (OTHER_CLASS_NAME,) + class_names
    palette = np.concatenate([np.zeros((1, 3), np.uint8), palette])
    void_classes = (0,)
  return DatasetInfo(name=data_config.name, num_classes=len(class_names),
                     class_names=class_names, palette=palette, splits=splits,
                     ignore_label=data_config.ignore_label, void_classes=void_classes)


def resize_to_range_args(data_config):
  """(min_size, max_size, factor) of data.min_resize_value, max_resize_value, resize_factor, or
  None when images keep their size."""
  values = {k: data_config.get(k) for k in ("min_resize_value", "max_resize_value",
                                            "resize_factor")}
  for key, value in values.items():
    if value is not None and (not isinstance(value, int) or value < 1):
      raise ValueError(f"data.{key} must be None or a positive int; got {value!r}")
  if values["min_resize_value"] is None:
    if any(v is not None for v in values.values()):
      raise ValueError("data.max_resize_value / data.resize_factor need data.min_resize_value "
                       f"(the official flags' convention); got {values}")
    return None
  if values["max_resize_value"] is not None and (
      values["max_resize_value"] < values["min_resize_value"]):
    raise ValueError(f"data.max_resize_value {values['max_resize_value']} < "
                     f"data.min_resize_value {values['min_resize_value']}")
  return values["min_resize_value"], values["max_resize_value"], values["resize_factor"]


def other_class(data_config) -> bool:
  """`data.other_class`: the model has a class 0 for the pixels the dataset ignores."""
  value = data_config.get("other_class", False)
  if not isinstance(value, bool):
    raise ValueError(f"data.other_class must be True or False; got {value!r}")
  return value


def shard_indices(num: int, process_index: int, process_count: int) -> np.ndarray:
  """Positions p, p + P, ...: disjoint over processes, covering range(num)."""
  return np.arange(process_index, num, process_count)


def _process(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
  return process_index, process_count


def _local_batch_size(global_size: int, process_count: int, key: str) -> int:
  if global_size < 1 or global_size % process_count:
    raise ValueError(f"{key}={global_size} must be a positive multiple of the process count "
                     f"({process_count})")
  return global_size // process_count


class _Source:
  """Random access to one split's serialized examples, and their decoding inside tf.data."""

  def __init__(self, data_config, split: str):
    self.builder = prepared_builder(data_config)
    if split not in self.builder.info.splits:
      raise ValueError(f"dataset {data_config.name!r} has no split {split!r}; splits: "
                       f"{sorted(self.builder.info.splits)}")
    self.split = split
    self.records = self.builder.as_data_source(split).data_source  # bytes by index
    self.num_examples = len(self.records)
    if self.num_examples == 0:
      raise ValueError(f"split {split!r} of dataset {data_config.name!r} is empty")
    meta = self.builder.info.metadata
    self.class_names = tuple(meta["class_names"])
    self.ignore_label = data_config.ignore_label
    self.other_class = other_class(data_config)
    self.resize = resize_to_range_args(data_config)

  def _read(self, index):
    return self.records[int(index)]

  def decode(self, index, skip=("classes_present",)):
    """Record `index` (int64 scalar tensor) -> decoded example dict, label int32 with ignore."""
    serialized = tf.numpy_function(self._read, [index], tf.string, stateful=False)
    serialized = tf.ensure_shape(serialized, [])
    decoders = {k: tfds.decode.SkipDecoding() for k in skip}
    example = self.builder.info.features.deserialize_example(serialized, decoders=decoders)
    if "label" not in skip:
      label = tf.cast(example["label"], tf.int32)
      if self.other_class:
        label = tf.where(label == 255, 255, label + 1)
      if self.ignore_label != 255:
        label = tf.where(label == 255, self.ignore_label, label)
      example["label"] = label
      if self.resize is not None and "image" not in skip:
        example["image"], example["label"] = augment.resize_to_range(
            example["image"], label, *self.resize)
    return example

  def classes_present(self) -> list:
    """Class ids present in each record (read without decoding images or labels)."""
    ds = tf.data.Dataset.range(self.num_examples).map(
        _graph_fn(lambda i: self.decode(i, skip=("image", "label"))["classes_present"]),
        num_parallel_calls=tf.data.AUTOTUNE)
    return [np.asarray(c) for c in ds.as_numpy_iterator()]


def _class_ids(classes, class_names, other_class: bool = False) -> list:
  """Dataset class ids of names or ids; ids are the model's (with data.other_class, id c + 1 is
  dataset class c and 'other' (0) occurs in no label)."""
  offset = 1 if other_class else 0
  ids = []
  for c in classes:
    if isinstance(c, str):
      if c not in class_names:
        raise ValueError(f"data.bootstrap_classes: unknown class {c!r}; classes: {class_names}")
      ids.append(class_names.index(c))
    elif offset <= int(c) < len(class_names) + offset:
      ids.append(int(c) - offset)
    else:
      raise ValueError(f"data.bootstrap_classes: class id {c} not in [{offset}, "
                       f"{len(class_names) + offset})" +
                       (" (0 is 'other', which no label holds)" if offset else ""))
  return ids


def bootstrap_slots(classes_present: list, hard_class_ids, repeats: int) -> np.ndarray:
  """Record index of every training slot: all records once, hard ones `repeats` times (v3 §4.3).

  A record is hard when it contains any of `hard_class_ids`.
  """
  if repeats < 1:
    raise ValueError(f"data.bootstrap_repeats must be >= 1; got {repeats}")
  num = len(classes_present)
  hard = [i for i, present in enumerate(classes_present)
          if np.isin(present, list(hard_class_ids)).any()]
  extra = np.repeat(np.asarray(hard, np.int64), repeats - 1)
  return np.concatenate([np.arange(num, dtype=np.int64), extra])


def _parallel(data_config) -> int:
  n = data_config.num_parallel_calls
  return tf.data.AUTOTUNE if n < 0 else n


def _check_data_config(d):
  if not isinstance(d.crop_size, int) or d.crop_size < 1:
    raise ValueError(f"data.crop_size must be a positive int; got {d.crop_size!r}")
  if not 0 < d.min_scale <= d.max_scale:
    raise ValueError(f"data needs 0 < min_scale <= max_scale; got {d.min_scale}, {d.max_scale}")
  augment.normalization_stats(d.normalization)


class TrainIterator:
  """Endless training batches {'image': float32 [B, c, c, 3], 'label': int32 [B, c, c]}.

  `get_state()` / `set_state()` save and restore the position exactly (see module doc).
  """

  def __init__(self, config, process_index: int, process_count: int):
    d = config.data
    _check_data_config(d)
    self._data = d
    self._seed = int(config.seed)
    self._process_index, self._process_count = process_index, process_count
    self._batch_size = _local_batch_size(config.batch_size, process_count, "batch_size")
    self._source = _Source(d, d.train_split)
    repeats = int(d.bootstrap_repeats)
    if d.bootstrap_classes and repeats > 1:
      hard_ids = _class_ids(d.bootstrap_classes, self._source.class_names,
                            self._source.other_class)
      self.slots = bootstrap_slots(self._source.classes_present(), hard_ids, repeats)
    else:
      self.slots = np.arange(self._source.num_examples, dtype=np.int64)
    self.shard_size = len(shard_indices(len(self.slots), process_index, process_count))
    if self.shard_size == 0:
      raise ValueError(f"split {d.train_split!r} has {len(self.slots)} examples, fewer than "
                       f"the {process_count} processes")
    self._start = 0  # examples of this shard consumed before the current tf.data iterator
    self._batches = 0  # batches handed out by the current tf.data iterator
    self._iterator = None

  def _positions(self, epoch):
    """Positions in `self.slots` visited by this process in `epoch`, in order."""
    num = len(self.slots)
    positions = tf.range(num, dtype=tf.int64)
    if self._data.shuffle_buffer != 0:
      keys = tf.random.stateless_uniform(
          [num], seed=tf.stack([tf.constant(self._seed, tf.int64), epoch]),
          minval=None, maxval=None, dtype=tf.int64)
      positions = tf.argsort(keys, stable=True)
    return tf.cast(positions[self._process_index::self._process_count], tf.int64)

  def _element(self, epoch, position):
    d = self._data
    record = tf.gather(tf.constant(self.slots), position)
    example = self._source.decode(record)
    seed = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(
            tf.constant([self._seed, 0], tf.int64), epoch), position)
    image, label = augment.random_scale_crop_flip(
        example["image"], example["label"], seed, crop_size=d.crop_size,
        min_scale=d.min_scale, max_scale=d.max_scale, random_flip=d.random_flip,
        pad_pixel=augment.mean_pixel(d.normalization), ignore_label=d.ignore_label)
    return {"image": augment.normalize(image, d.normalization), "label": label}

  def dataset(self, start: int) -> tf.data.Dataset:
    """Batches from this shard's element number `start` (epochs concatenated) onward."""
    first_epoch, offset = divmod(start, self.shard_size)
    ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(_graph_fn(
        lambda epoch: tf.data.Dataset.from_tensor_slices(self._positions(epoch)).map(
            _graph_fn(lambda position: (epoch, position)))))
    ds = ds.skip(offset)  # indices only
    ds = ds.map(_graph_fn(self._element), num_parallel_calls=_parallel(self._data),
                deterministic=True)
    ds = ds.batch(self._batch_size, drop_remainder=True)
    return ds.prefetch(self._data.prefetch)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._iterator is None:
      self._iterator = self.dataset(self._start).as_numpy_iterator()
    batch = next(self._iterator)
    self._batches += 1
    return batch

  def get_state(self) -> dict:
    """JSON-serialisable position: the next batch starts at shard `position` of `epoch`."""
    consumed = self._start + self._batches * self._batch_size
    epoch, position = divmod(consumed, self.shard_size)
    return {"epoch": int(epoch), "position": int(position), "seed": self._seed,
            "process_index": self._process_index, "process_count": self._process_count,
            "num_slots": int(len(self.slots))}

  def set_state(self, state: dict) -> None:
    expected = {"seed": self._seed, "process_index": self._process_index,
                "process_count": self._process_count, "num_slots": int(len(self.slots))}
    for key, value in expected.items():
      if key not in state:
        raise KeyError(f"train iterator state has no {key!r}; got keys {sorted(state)}")
      if int(state[key]) != value:
        raise ValueError(f"train iterator state was saved with {key}={state[key]}, but this "
                         f"iterator has {key}={value}; cannot resume the same order")
    if not 0 <= int(state["position"]) < self.shard_size:
      raise ValueError(f"train iterator state position {state['position']} not in "
                       f"[0, {self.shard_size})")
    self._start = int(state["epoch"]) * self.shard_size + int(state["position"])
    self._batches = 0
    self._iterator = None


def create_train_iterator(config, *, process_index: Optional[int] = None,
                          process_count: Optional[int] = None) -> TrainIterator:
  """This process's endless, prefetched, resumable training batches (see TrainIterator)."""
  process_index, process_count = _process(process_index, process_count)
  return TrainIterator(config, process_index, process_count)


def _pad_size(data_config):
  """(Hp, Wp) from data.eval_pad_size and data.eval_pad_width, or None (native size)."""
  size, width = data_config.eval_pad_size, data_config.get("eval_pad_width")
  if size is None:
    return None
  if isinstance(size, int):
    size = (size, size if width is None else width)
  size = tuple(int(s) for s in size)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f"data.eval_pad_size / eval_pad_width must give a positive size; got "
                     f"{data_config.eval_pad_size!r} / {width!r}")
  return size


class EvalIterable:
  """This process's shard of a split in batches; iterate it as often as needed.

  Every process yields `len(self)` batches (the last ones padded with examples whose mask is all
  False, label 255, height = width = 0 and id ''), so that processes stay in step.
  """

  def __init__(self, config, split: str, process_index: int, process_count: int):
    d = config.data
    augment.normalization_stats(d.normalization)
    self._data = d
    self.pad_size = _pad_size(d)
    if self.pad_size is None:
      self.batch_size = 1
    else:
      self.batch_size = _local_batch_size(d.eval_batch_size, process_count, "data.eval_batch_size")
    self._source = _Source(d, split)
    self.indices = shard_indices(self._source.num_examples, process_index, process_count)
    per_process = math.ceil(self._source.num_examples / process_count)
    self.num_batches = math.ceil(per_process / self.batch_size)
    self.num_padding = self.num_batches * self.batch_size - len(self.indices)

  def __len__(self) -> int:
    return self.num_batches

  def _element(self, index):
    d = self._data
    example = self._source.decode(index)
    pad_pixel = augment.mean_pixel(d.normalization)
    image, label, mask = augment.pad_for_eval(example["image"], example["label"], self.pad_size,
                                              pad_pixel, example["id"], d.ignore_label)
    shape = tf.shape(example["label"])
    return {"image": augment.normalize(image, d.normalization), "label": label, "mask": mask,
            "height": shape[0], "width": shape[1], "id": example["id"]}

  def _padding_element(self):
    d = self._data
    h, w = self.pad_size or (1, 1)
    image = tf.fill([h, w, 3], 0.0) + augment.mean_pixel(d.normalization)
    return {"image": augment.normalize(image, d.normalization),
            "label": tf.fill([h, w], tf.constant(d.ignore_label, tf.int32)),
            "mask": tf.zeros([h, w], tf.bool), "height": tf.constant(0, tf.int32),
            "width": tf.constant(0, tf.int32), "id": tf.constant("")}

  def dataset(self) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(self.indices.astype(np.int64)).map(
        _graph_fn(self._element), num_parallel_calls=_parallel(self._data), deterministic=True)
    if self.num_padding:
      ds = ds.concatenate(
          tf.data.Dataset.from_tensors(self._padding_element()).repeat(self.num_padding))
    return ds.batch(self.batch_size).prefetch(self._data.prefetch)

  def __iter__(self):
    for batch in self.dataset().as_numpy_iterator():
      batch["id"] = np.array([s.decode("utf-8") for s in batch["id"]])
      yield batch


def create_eval_iterator(config, split: Optional[str] = None, *,
                         process_index: Optional[int] = None,
                         process_count: Optional[int] = None) -> EvalIterable:
  """Batches {'image', 'label', 'mask', 'height', 'width', 'id'} over `split` (default
  data.eval_split); see EvalIterable."""
  process_index, process_count = _process(process_index, process_count)
  return EvalIterable(config, split or config.data.eval_split, process_index, process_count)
