"""Training loop: one pure train step, data-parallel by jit over a device mesh or by pmap.

    history = train_and_evaluate(config, workdir)

The train state is a dict {'params', 'batch_stats', 'opt_state', 'step', 'rng'} (the checkpoint's
'state' item, see deeplax.checkpoint). The step `(state, batch) -> (state, metrics)` is written once
and compiled in one of two forms (config.parallelism):

- 'jit': `jax.jit` over a `Mesh(devices, ('data',))`, the batch sharded on 'data', the state
  replicated. Batch-norm means are plain means over the global batch; XLA inserts the all-reduces.
  Multi-host runs call `jax.distributed.initialize()` first (deeplax.main) and assemble the global
  batch with `jax.make_array_from_process_local_data`.
- 'pmap': `jax.pmap` with axis AXIS_NAME; `config.model.bn_axis_name` is set to it so BN averages
  its statistics over the axis; the loss is normalised by the psum of the pixel count and the
  gradients are psum-ed. Both forms compute the same numbers as one device on the global batch.

Batch-norm stages (v3 §4.1): train BN (config.model.freeze_bn=False) or freeze it for fine-tuning
(True: running averages used and kept unchanged); the stage-2 run starts from stage 1 with
config.init_from. Multi-scale input training (v2 §3.2): config.train_scales.
"""

import contextlib
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from deeplax import checkpoint as ckpt_lib
from deeplax import defaults
from deeplax import layers
from deeplax import losses
from deeplax import metrics as metrics_lib
from deeplax import models
from deeplax import optim
from deeplax import workdir_lock

AXIS_NAME = "batch"   # pmap axis (config.model.bn_axis_name under pmap)
MESH_AXIS = "data"    # mesh axis the batch is sharded on under jit
PARALLELISMS = ("jit", "pmap")


def ignore_label(config) -> int:
  """The label value that counts nowhere (loss, confusion matrix): config.data.ignore_label."""
  return int(config.data.get("ignore_label", 255)) if "data" in config else 255


# --------------------------------------------------------------------------------------------
# Config.

def prepare_config(config: ml_collections.ConfigDict,
                   check_devices: bool = True) -> ml_collections.ConfigDict:
  """A validated copy; sets config.model.bn_axis_name for the chosen parallelism.

  `check_devices`: also require batch_size to divide over this machine's devices.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  data_config = defaults.data_config()
  unknown = sorted(set(config.data.keys()) - set(data_config.keys()))
  if unknown:
    raise ValueError(f"unknown config.data keys {unknown}; known: {sorted(data_config.keys())}")
  data_config.update(config.data.to_dict())
  with config.unlocked():
    config.data = data_config  # fields a config leaves out take deeplax.data's defaults
  if config.parallelism not in PARALLELISMS:
    raise ValueError(f"config.parallelism must be one of {PARALLELISMS}; got {config.parallelism!r}")
  for key in ("batch_size", "total_steps", "checkpoint_every_steps", "eval_every_steps",
              "log_every_steps"):
    if int(config[key]) <= 0:
      raise ValueError(f"config.{key} must be positive; got {config[key]}")
  with config.unlocked():
    config.model.bn_axis_name = AXIS_NAME if config.parallelism == "pmap" else None
  num_devices = jax.device_count()
  if check_devices and config.batch_size % num_devices:
    raise ValueError(f"config.batch_size={config.batch_size} (global) must be divisible by the "
                     f"number of devices ({num_devices})")
  if any(float(s) <= 0 for s in config.train_scales):
    raise ValueError(f"config.train_scales must be positive; got {config.train_scales}")
  if config.loss.target_mode not in losses.TARGET_MODES:
    raise ValueError(f"unknown config.loss.target_mode {config.loss.target_mode!r}; "
                     f"expected one of {losses.TARGET_MODES}")
  _warn_misaligned(config)
  return config


def _warn_misaligned(config) -> None:
  """align_corners=True upsampling is exact only for sizes 16k+1 (TF DeepLab's 513): otherwise
  the logits are stretched against the labels and boundaries shift (by up to stride / 2)."""
  if not config.model.get("align_corners", False):
    return
  sizes = {"data.crop_size": config.data.crop_size, "data.eval_pad_size": config.data.eval_pad_size,
           "data.eval_pad_width": config.data.eval_pad_width}
  for key, size in sizes.items():
    if size is not None and (int(size) - 1) % 16:
      logging.warning("config.model.align_corners=True but config.%s=%d is not 16k+1: "
                      "predictions will be misaligned with the labels", key, int(size))


# --------------------------------------------------------------------------------------------
# State.

def create_train_state(config, model, rng, image_shape: Sequence[int]):
  """Initial state and the optimiser for `model` on images of `image_shape` ([N, H, W, 3])."""
  init_rng, train_rng = jax.random.split(rng)
  dummy = jnp.zeros((1,) + tuple(image_shape[1:]), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(init_rng, dummy)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  tx = optim.create_optimizer(config, params)
  state = {"params": params, "batch_stats": batch_stats, "opt_state": tx.init(params),
           "step": jnp.zeros((), jnp.int32), "rng": train_rng}
  return state, tx


def scaled_size(size: int, scale: float) -> int:
  """DeepLab v2's input scaling: 321 -> 241 (0.75), 161 (0.5), i.e. (H-1)*s + 1."""
  return size if scale == 1.0 else int((size - 1) * scale) + 1


# --------------------------------------------------------------------------------------------
# The train step.

def make_train_step(config, model, tx, axis_name: Optional[str] = None) -> Callable:
  """The pure step `(state, batch) -> (state, metrics)`; `axis_name` only under pmap."""
  lr_fn = optim.learning_rate_schedule(config)
  scales = tuple(float(s) for s in config.train_scales)
  loss_cfg = config.loss
  class_weights = loss_cfg.get("class_weights", None)
  class_weights = tuple(class_weights) if class_weights is not None else None
  loss_kwargs = dict(target_mode=loss_cfg.target_mode, ignore_label=ignore_label(config),
                     class_weights=class_weights,
                     top_k_fraction=float(loss_cfg.get("top_k_fraction", 1.0)),
                     align_corners=bool(config.model.get("align_corners", False)))
  aux_weight = float(loss_cfg.get("aux_weight", 0.0))
  freeze_bn = bool(config.model.get("freeze_bn", False))

  def global_sum(x):
    return jax.lax.psum(x, axis_name) if axis_name else x

  def term(logits_lowres, labels):
    """This device's share of a mean over the global batch: local sum / global count."""
    total, count = losses.segmentation_loss_sum(logits_lowres, labels, **loss_kwargs)
    return total / jnp.maximum(global_sum(jax.lax.stop_gradient(count)), 1e-8)

  def step(state, batch):
    images, labels = batch["image"], batch["label"]
    rng = jax.random.fold_in(state["rng"], state["step"])
    if axis_name:
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def loss_fn(params):
      variables = {"params": params, "batch_stats": state["batch_stats"]}
      loss, new_batch_stats, scale_logits = 0.0, state["batch_stats"], []
      for i, scale in enumerate(scales):
        size = (scaled_size(images.shape[1], scale), scaled_size(images.shape[2], scale))
        x = layers.resize_bilinear(images, size, align_corners=True)
        (_, features), updates = model.apply(
            variables, x, train=True, return_features=True, mutable=["batch_stats"],
            rngs={"dropout": jax.random.fold_in(rng, i)})
        # Running averages follow the full-resolution pass (the one evaluation sees).
        if scale == 1.0 and not freeze_bn and "batch_stats" in updates:
          new_batch_stats = updates["batch_stats"]
        logits_lowres = features["logits_lowres"]
        loss = loss + term(logits_lowres, labels)
        if aux_weight > 0 and "aux_logits" in features:
          loss = loss + aux_weight * term(features["aux_logits"], labels)
        scale_logits.append(logits_lowres)
      if len(scales) > 1:
        # v2 §3.2: fuse the scales by the max score at each position, and train the fusion too.
        if loss_kwargs["target_mode"] == "upsample_logits":
          size = labels.shape[1:3]
        else:
          size = scale_logits[scales.index(max(scales))].shape[1:3]
        fused = functools.reduce(jnp.maximum, [
            layers.resize_bilinear(l.astype(layers.at_least_float32(l.dtype)), size, loss_kwargs["align_corners"])
            for l in scale_logits])
        loss = loss + term(fused, labels)
      return loss, new_batch_stats

    (loss, new_batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    if axis_name:
      loss = jax.lax.psum(loss, axis_name)
      grads = jax.lax.psum(grads, axis_name)
    updates, new_opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.tree.norm(grads)
    param_norm = optax.tree.norm(new_params)
    ok = (jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(new_params)
          & _all_finite(new_opt_state) & _all_finite(new_batch_stats))
    # A non-finite step (loss, gradient, or the state it would write) leaves the state as it was;
    # the host stops the run (see train_and_evaluate).
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = {"params": keep(new_params, state["params"]),
                 "batch_stats": keep(new_batch_stats, state["batch_stats"]),
                 "opt_state": keep(new_opt_state, state["opt_state"]),
                 "step": state["step"] + 1, "rng": state["rng"]}
    metrics = {"loss": loss, "grad_norm": grad_norm, "param_norm": param_norm,
               "learning_rate": lr_fn(state["step"]), "finite": ok}
    return new_state, metrics

  return step


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return functools.reduce(jnp.logical_and, leaves, jnp.asarray(True))


def make_eval_step(model, num_classes: int, ignore_label: int = 255) -> Callable:
  """`(variables, batch) -> int32 [C, C]` confusion matrix of the batch (padding masked)."""

  def eval_step(variables, batch):
    logits_NHWC = model.apply(variables, batch["image"], train=False)
    preds_NHW = jnp.argmax(logits_NHWC, axis=-1)
    confusion = metrics_lib.confusion_matrix(batch["label"], preds_NHW, num_classes,
                                             mask_NHW=batch["mask"], ignore_label=ignore_label)
    return confusion, preds_NHW

  return eval_step


# --------------------------------------------------------------------------------------------
# Parallel forms.

class JitParallel:
  """The step under jax.jit over a 1-D device mesh; state replicated, batch sharded on 'data'."""

  name = "jit"

  def __init__(self, step_fn, devices=None):
    self.mesh = Mesh(np.asarray(devices if devices is not None else jax.devices()), (MESH_AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P(MESH_AXIS))
    self.step = jax.jit(step_fn, in_shardings=(self.replicated, self.batch_sharding),
                        out_shardings=(self.replicated, self.replicated), donate_argnums=0)

  def put_state(self, state):
    return jax.device_put(state, self.replicated)

  def get_state(self, state):
    return state

  def abstract_state(self, state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=self.replicated),
                        state)

  def put_batch(self, batch):
    """Process-local NumPy batch -> global arrays sharded on 'data'."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(batch[k]))
            for k in ("image", "label")}

  def get_metrics(self, metrics):
    return jax.device_get(metrics)


class PmapParallel:
  """The step under jax.pmap over the local devices; state replicated along a leading axis."""

  name = "pmap"

  def __init__(self, step_fn, devices=None):
    self.devices = list(devices if devices is not None else jax.local_devices())
    self.step = jax.pmap(step_fn, axis_name=AXIS_NAME, devices=self.devices, donate_argnums=0)

  def put_state(self, state):
    n = len(self.devices)
    stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), state)
    return jax.pmap(lambda x: x, devices=self.devices)(stacked)

  def get_state(self, state):
    return jax.tree.map(lambda x: np.asarray(x[0]), jax.device_get(state))

  def abstract_state(self, state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), state)

  def put_batch(self, batch):
    n = len(self.devices)

    def split(x):
      x = np.asarray(x)
      if x.shape[0] % n:
        raise ValueError(f"local batch of {x.shape[0]} is not divisible by {n} local devices")
      return x.reshape((n, x.shape[0] // n) + x.shape[1:])

    return {k: split(batch[k]) for k in ("image", "label")}

  def get_metrics(self, metrics):
    return jax.tree.map(lambda x: np.asarray(x[0]), jax.device_get(metrics))


def make_parallel(config, step_fn, devices=None):
  if config.parallelism == "pmap":
    return PmapParallel(step_fn, devices)
  return JitParallel(step_fn, devices)


# --------------------------------------------------------------------------------------------
# Evaluation.

def evaluate(config, model, variables, *, mesh: Optional[Mesh] = None, split: Optional[str] = None,
             save_dir: Optional[str] = None, num_images_to_save: int = 0,
             eval_iter: Optional[Iterable] = None) -> Dict[str, Any]:
  """mIoU, per-class IoU and pixel accuracy over the eval split (confusion summed on device).

  Each process feeds its shard of the split (deeplax.data.create_eval_iterator); local batches are
  padded to a multiple of the local device count (padding masked out) and sharded on 'data'.
  With `save_dir`, process 0 writes `num_images_to_save` prediction panels
  (image | ground truth | prediction, deeplax.viz.prediction_panel) as PNGs.
  """
  from deeplax import data as data_lib  # the data pipeline imports TensorFlow
  from deeplax import viz
  mesh = mesh if mesh is not None else Mesh(np.asarray(jax.devices()), (MESH_AXIS,))
  info = data_lib.dataset_info(config.data)
  num_classes = int(config.model.num_classes)
  if info.num_classes != num_classes:
    raise ValueError(f"config.model.num_classes={num_classes} but dataset {info.name!r} has "
                     f"{info.num_classes} classes")
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(MESH_AXIS))
  eval_fn = jax.jit(make_eval_step(model, num_classes, ignore_label(config)),
                    in_shardings=(replicated, batch_sharding),
                    out_shardings=(replicated, batch_sharding))
  variables = jax.device_put({"params": variables["params"],
                              "batch_stats": variables.get("batch_stats", {})}, replicated)
  eval_iter = eval_iter if eval_iter is not None else data_lib.create_eval_iterator(config, split=split)
  local_shards = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])
  confusion = jnp.zeros((num_classes, num_classes), jnp.int32)
  saved, num_pixels = 0, 0
  for batch in eval_iter:
    arrays = {"image": np.asarray(batch["image"], np.float32),
              "label": np.asarray(batch["label"], np.int32),
              "mask": np.asarray(batch["mask"], bool)}
    n = arrays["image"].shape[0]
    pad = -n % local_shards
    if pad:
      fill = {"image": 0, "label": ignore_label(config), "mask": False}
      arrays = {k: np.concatenate([v, np.full((pad,) + v.shape[1:], fill[k], v.dtype)])
                for k, v in arrays.items()}
    global_batch = {k: jax.make_array_from_process_local_data(batch_sharding, v)
                    for k, v in arrays.items()}
    batch_confusion, preds = eval_fn(variables, global_batch)
    confusion = confusion + batch_confusion
    num_pixels += int(arrays["mask"].sum())
    if save_dir and saved < num_images_to_save and jax.process_index() == 0:
      local_preds = np.concatenate([np.asarray(s.data) for s in sorted(
          preds.addressable_shards, key=lambda s: s.index[0].start or 0)])
      images = data_lib.denormalize(arrays["image"], config.data.normalization)
      os.makedirs(save_dir, exist_ok=True)
      for j in range(n):
        h, w = int(batch["height"][j]), int(batch["width"][j])
        if saved >= num_images_to_save or h == 0:
          continue
        panel = viz.prediction_panel(images[j, :h, :w], arrays["label"][j, :h, :w],
                                     local_preds[j, :h, :w], info.palette)
        image_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(batch["id"][j]))
        viz.save_png(os.path.join(save_dir, f"{saved:02d}_{image_id}.png"), panel)
        saved += 1
  confusion = np.asarray(jax.device_get(confusion))
  if confusion.sum() == 0:
    raise ValueError("evaluation saw no valid pixels (empty split or everything ignored)")
  result = dict(metrics_lib.segmentation_metrics(confusion, class_names=info.class_names))
  result["confusion"] = confusion.tolist()
  return result


# --------------------------------------------------------------------------------------------
# The loop.

class _SigtermFlag:
  """Sets `.requested` on SIGTERM (preemption) while installed; restores the old handler after."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _format_seconds(s: float) -> str:
  s = int(max(s, 0))
  return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _json_safe(x):
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return None if math.isnan(float(x)) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


def load_init_variables(init_from: str, variables: Dict[str, Any]) -> tuple:
  """Loads matching params/batch_stats from the run at `init_from`; returns (variables, report)."""
  _, loaded, loaded_step = ckpt_lib.load_variables(init_from)
  merged, report = {}, {"init_from": init_from, "step": loaded_step}
  for collection in ("params", "batch_stats"):
    merged[collection], rep = ckpt_lib.merge_matching(variables.get(collection, {}),
                                                      loaded.get(collection, {}))
    report[collection] = rep
  return merged, report


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: Optional[int] = None,
                       step_callback: Optional[Callable[[int, Dict[str, Any]], None]] = None
                       ) -> Dict[str, Any]:
  """Trains (resuming from `<workdir>/checkpoints` if present), evaluates and checkpoints.

  `stop_at_step` ends this invocation early (checkpoint saved) as a preemption would; the
  schedule still follows config.total_steps. `step_callback(step, metrics)` runs after each step.
  Returns a history dict: 'train' (per logged step), 'eval' (metrics per evaluation), 'step'
  (last step), 'preempted', 'init_report'. Holds `<workdir>/lock` while it runs (process 0);
  raises `workdir_lock.WorkdirLockedError`, naming the holder, if another live process has it.
  """
  config = prepare_config(config)
  workdir = os.path.abspath(workdir)
  with _hold_workdir(workdir):
    return _train_and_evaluate(config, workdir, stop_at_step, step_callback)


@contextlib.contextmanager
def _hold_workdir(workdir: str):
  """Only process 0 writes to the workdir, so only it holds the lock (deeplax.workdir_lock); the
  other processes learn whether it got it, so a refused multi-host launch stops everywhere."""
  lock, refused = None, None
  if jax.process_index() == 0:
    try:
      lock = workdir_lock.WorkdirLock(workdir).acquire()
    except workdir_lock.WorkdirLockedError as e:
      refused = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    got = multihost_utils.broadcast_one_to_all(np.int32(refused is None and lock is not None))
    if not int(got) and refused is None:
      refused = workdir_lock.WorkdirLockedError(
          f"workdir {workdir} is in use by another run (process 0 could not lock it)")
  if refused is not None:
    raise refused
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


def _train_and_evaluate(config, workdir, stop_at_step, step_callback):
  from deeplax import data as data_lib  # the data pipeline imports TensorFlow
  is_main = jax.process_index() == 0
  config_path = os.path.join(workdir, ckpt_lib.CONFIG_FILE)
  if os.path.exists(config_path):
    with open(config_path) as f:
      if json.load(f) != json.loads(config.to_json_best_effort()):
        logging.warning("%s differs from this run's config; keeping the existing file", config_path)
  else:
    ckpt_lib.write_config(workdir, config)

  model = models.build(config.model)
  manager = ckpt_lib.checkpoint_manager(workdir, max_to_keep=int(config.max_to_keep))
  train_iter = data_lib.create_train_iterator(config, process_index=jax.process_index(),
                                              process_count=jax.process_count())
  start_data_state = train_iter.get_state()
  image_shape = np.shape(next(train_iter)["image"])  # rewound or restored below
  state, tx = create_train_state(config, model, jax.random.PRNGKey(int(config.seed)), image_shape)
  step_fn = make_train_step(config, model, tx,
                            axis_name=AXIS_NAME if config.parallelism == "pmap" else None)
  parallel = make_parallel(config, step_fn)

  init_report = None
  latest = manager.latest_step()
  if latest is not None:
    abstract = parallel.abstract_state(state) if parallel.name == "jit" else \
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), state)
    state, data_state, step = ckpt_lib.restore_train_state(manager, abstract, latest)
    if data_state is None:
      raise ValueError(f"checkpoint {latest} in {workdir} has no input-iterator state ('data')")
    train_iter.set_state(data_state)
    logging.info("resumed from %s at step %d", manager.directory, step)
  else:
    train_iter.set_state(start_data_state)
    if config.init_from:
      merged, init_report = load_init_variables(config.init_from, state)
      state["params"], state["batch_stats"] = merged["params"], merged["batch_stats"]
      state["opt_state"] = tx.init(state["params"])
      for collection in ("params", "batch_stats"):
        rep = init_report[collection]
        logging.info("init_from %s [%s]: loaded %d, kept fresh (missing in checkpoint) %d: %s; "
                     "shape mismatch %d: %s; unused %d: %s", config.init_from, collection,
                     len(rep["loaded"]), len(rep["missing"]), rep["missing"],
                     len(rep["mismatched"]), rep["mismatched"], len(rep["unused"]), rep["unused"])
      if is_main:
        with open(os.path.join(workdir, "init_report.json"), "w") as f:
          json.dump(init_report, f, indent=2)
  state = parallel.put_state(state)
  step = int(np.asarray(jax.device_get(parallel.get_state(state)["step"])))

  writer = None
  if is_main:
    from flax.metrics import tensorboard
    writer = tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))
  eval_model = models.build(config.model)
  mesh = parallel.mesh if parallel.name == "jit" else Mesh(np.asarray(jax.devices()), (MESH_AXIS,))
  history = {"train": [], "eval": [], "preempted": False, "init_report": init_report}
  total = int(config.total_steps)
  last_step_saved = latest

  def save(step_, force=False):
    nonlocal last_step_saved
    host_state = parallel.get_state(state)
    ckpt_lib.save_train_state(manager, step_, host_state, train_iter.get_state(), force=force)
    last_step_saved = step_

  def run_eval(step_):
    host_vars = parallel.get_state(state)
    result = evaluate(config, eval_model, host_vars, mesh=mesh,
                      save_dir=os.path.join(workdir, "eval", f"step_{step_}_predictions"),
                      num_images_to_save=int(config.num_eval_images_to_save))
    result["step"] = step_
    history["eval"].append(result)
    if is_main:
      os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
      with open(os.path.join(workdir, "eval", f"step_{step_}.json"), "w") as f:
        json.dump(_json_safe(result), f, indent=1)
      writer.scalar("eval/miou", result["miou"], step_)
      writer.scalar("eval/pixel_accuracy", result["pixel_accuracy"], step_)
      for name, iou in zip(data_lib.dataset_info(config.data).class_names, result["per_class_iou"]):
        if not math.isnan(iou):
          writer.scalar(f"eval/iou/{name}", iou, step_)
      pred_dir = os.path.join(workdir, "eval", f"step_{step_}_predictions")
      if os.path.isdir(pred_dir):
        from PIL import Image
        for i, name in enumerate(sorted(os.listdir(pred_dir))):
          panel = np.asarray(Image.open(os.path.join(pred_dir, name)).convert("RGB"))
          writer.image(f"eval/prediction_{i}", panel, step_)
      writer.flush()
    logging.info("eval step %d: mIoU %.4f pixel accuracy %.4f", step_, result["miou"],
                 result["pixel_accuracy"])
    return result

  t_last, step_last = time.time(), step
  with _SigtermFlag() as sigterm:
    try:
      while step < total:
        batch = next(train_iter)
        state, metrics = parallel.step(state, parallel.put_batch(batch))
        step += 1
        metrics = parallel.get_metrics(metrics)
        if not bool(metrics["finite"]):
          manager.wait_until_finished()
          good = manager.latest_step()
          raise FloatingPointError(
              f"non-finite loss ({float(metrics['loss'])}), gradient norm "
              f"({float(metrics['grad_norm'])}) or updated state (parameter norm "
              f"{float(metrics['param_norm'])}) at step {step}, not applied; training stopped. The last good "
              f"checkpoint is step {good} in {manager.directory} (none if None). Lower "
              f"config.learning_rate, set config.grad_clip_norm or check the input data.")
        if step_callback is not None:
          step_callback(step, metrics)
        if step % int(config.log_every_steps) == 0 or step == total:
          now = time.time()
          rate = (step - step_last) * config.batch_size / max(now - t_last, 1e-9)
          eta = (total - step) * config.batch_size / max(rate, 1e-9)
          t_last, step_last = now, step
          entry = {"step": step, "loss": float(metrics["loss"]),
                   "learning_rate": float(metrics["learning_rate"]),
                   "grad_norm": float(metrics["grad_norm"]), "images_per_sec": rate}
          history["train"].append(entry)
          logging.info("step %d/%d  loss %.4f  lr %.3g  %.1f img/s  ETA %s", step, total,
                       entry["loss"], entry["learning_rate"], rate, _format_seconds(eta))
          if writer is not None:
            for k in ("loss", "learning_rate", "grad_norm", "images_per_sec"):
              writer.scalar(f"train/{k}", entry[k], step)
        if step % int(config.checkpoint_every_steps) == 0 or step == total:
          save(step)
        if step % int(config.eval_every_steps) == 0 or step == total:
          run_eval(step)
        stop = sigterm.requested or (stop_at_step is not None and step >= stop_at_step)
        if not stop and jax.process_count() > 1:
          stop = manager.reached_preemption(step)
        if stop and step < total:
          if last_step_saved != step:
            save(step, force=True)
          history["preempted"] = sigterm.requested
          logging.info("stopping at step %d (%s); checkpoint saved", step,
                       "SIGTERM" if sigterm.requested else "stop_at_step")
          break
    finally:
      manager.wait_until_finished()
      manager.close()
      if writer is not None:
        writer.close()
  history["step"] = step
  return history
