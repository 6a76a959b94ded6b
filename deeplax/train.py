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
import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import numpy as np
import optax

from deeplax import checkpoint as ckpt_lib
from deeplax import defaults
from deeplax import convert as convert_lib
from deeplax import divergence
from deeplax import evaluate as evaluate_lib
from deeplax import inference
from deeplax import layers
from deeplax import losses
from deeplax import metrics as metrics_lib
from deeplax import models
from deeplax.models import backbones
from deeplax import optim
from deeplax import parallel as parallel_lib
from deeplax import workdir_lock

AXIS_NAME = parallel_lib.AXIS_NAME
MESH_AXIS = parallel_lib.MESH_AXIS
JitParallel = parallel_lib.JitParallel
PmapParallel = parallel_lib.PmapParallel
make_parallel = parallel_lib.make_parallel
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
  if "model" in config:  # a config.model of deeplax <= 1b78b68 runs (and is written) as today's
    config.model, _ = models.upgrade_config(config.model, source="the run's config.model")
  data_config = defaults.data_config()
  unknown = sorted(set(config.data.keys()) - set(data_config.keys()))
  if unknown:
    raise ValueError(f"unknown config.data keys {unknown}; known: {sorted(data_config.keys())}")
  data_config.update(config.data.to_dict())
  with config.unlocked():
    config.data = data_config  # fields a config leaves out take deeplax.data's defaults
    base = defaults.get_base_config()
    for key in ("divergence", "allow_config_change", "max_to_keep"):
      if key not in config:
        config[key] = base[key]
    unknown = sorted(set(config.divergence.keys()) - set(base.divergence.keys()))
    if unknown:
      raise ValueError(f"unknown config.divergence keys {unknown}; known: {sorted(base.divergence.keys())}")
    for key in base.divergence.keys():
      if key not in config.divergence:
        config.divergence[key] = base.divergence[key]
  divergence.DivergenceTest(float(config.divergence.factor), int(config.divergence.window))
  divergence.CheckpointHealth((), int(config.divergence.confirm_steps),
                              None if config.max_to_keep is None else int(config.max_to_keep))
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


def validate_run(config: ml_collections.ConfigDict) -> None:
  """Checks a prepared config completely before a run writes anything: the model builds and
  initialises (`jax.eval_shape`, so no memory or compute) on a training crop, and the dataset's
  class count equals config.model.num_classes (labels beyond it are caught per batch by the step)."""
  from deeplax import data as data_lib  # the data pipeline imports TensorFlow
  model = models.build(config.model)
  crop = int(config.data.crop_size)
  try:
    jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                   jax.ShapeDtypeStruct((1, crop, crop, 3), jnp.float32))
  except (ValueError, TypeError) as e:
    raise ValueError(f"config.model does not build: {e} (initialised on one {crop}x{crop} "
                     "crop, config.data.crop_size)") from e
  info = data_lib.dataset_info(config.data, prepare=False)
  if info.num_classes != int(config.model.num_classes):
    raise ValueError(f"config.model.num_classes={config.model.num_classes} but dataset "
                     f"{info.name!r} (config.data.name) has {info.num_classes} classes")


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
  num_classes = int(config.model.num_classes)

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
        size = inference.scaled_size(images.shape[1:3], scale)  # 321 -> 241, 161 (v2 §3.2)
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
    out_of_range = (labels != loss_kwargs["ignore_label"]) & ((labels < 0) | (labels >= num_classes))
    bad_labels = global_sum(jnp.sum(out_of_range.astype(jnp.int32)))
    label_max = jnp.max(jnp.where(out_of_range, labels, -1))
    if axis_name:
      label_max = jax.lax.pmax(label_max, axis_name)
    ok = (jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(new_params)
          & _all_finite(new_opt_state) & _all_finite(new_batch_stats) & (bad_labels == 0))
    # A non-finite step (loss, gradient, or the state it would write) or a batch with labels
    # outside [0, num_classes) leaves the state as it was; the host stops the run.
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = {"params": keep(new_params, state["params"]),
                 "batch_stats": keep(new_batch_stats, state["batch_stats"]),
                 "opt_state": keep(new_opt_state, state["opt_state"]),
                 "step": state["step"] + 1, "rng": state["rng"]}
    metrics = {"loss": loss, "grad_norm": grad_norm, "param_norm": param_norm,
               "learning_rate": lr_fn(state["step"]), "finite": ok,
               "bad_labels": bad_labels, "bad_label_max": label_max}
    return new_state, metrics

  return step


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return functools.reduce(jnp.logical_and, leaves, jnp.asarray(True))


# --------------------------------------------------------------------------------------------
# Evaluation.

def evaluate(config, variables, *, mesh: Optional[Mesh] = None, split: Optional[str] = None,
             num_panels: int = 0, eval_iter: Optional[Iterable] = None) -> Dict[str, Any]:
  """Training's periodic evaluation: `deeplax.evaluate.evaluate` (the function `deeplax eval`
  runs), single-scale at config.model.output_stride, over `mesh`, quiet.

  Returns `metrics.segmentation_metrics` (mIoU, per-class IoU list, pixel accuracy, ...) plus
  'confusion' and 'panels' (`num_panels` prediction panels of process 0, uint8 arrays).
  """
  from deeplax import data as data_lib  # the data pipeline imports TensorFlow
  info = data_lib.dataset_info(config.data)
  num_classes = int(config.model.num_classes)
  if info.num_classes != num_classes:
    raise ValueError(f"config.model.num_classes={num_classes} but dataset {info.name!r} has "
                     f"{info.num_classes} classes")
  results = evaluate_lib.evaluate(config, variables, split=split, mesh=mesh, eval_iter=eval_iter,
                                  num_panels=num_panels, progress=False)
  confusion = np.asarray(results["confusion_matrix"])
  result = dict(metrics_lib.segmentation_metrics(confusion, class_names=info.class_names,
                                                 void_classes=info.void_classes))
  result["confusion"] = confusion.tolist()
  result["panels"] = results.get("panels", [])
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


def write_eval_outputs(workdir: str, step: int, result: Mapping[str, Any],
                       panels: Sequence[Tuple[str, np.ndarray]], class_names, writer) -> None:
  """<workdir>/eval/step_<step>.json, the prediction panels as PNGs in
  eval/step_<step>_predictions/, and the same scalars and images (from the arrays) in TensorBoard."""
  from deeplax import viz
  eval_dir = os.path.join(workdir, "eval")
  evaluate_lib.write_json(result, os.path.join(eval_dir, f"step_{step}.json"))
  writer.scalar("eval/miou", result["miou"], step)
  writer.scalar("eval/pixel_accuracy", result["pixel_accuracy"], step)
  for name, iou in zip(class_names, result["per_class_iou"]):
    if not math.isnan(iou):
      writer.scalar(f"eval/iou/{name}", iou, step)
  if panels:
    os.makedirs(os.path.join(eval_dir, f"step_{step}_predictions"), exist_ok=True)
  for i, (image_id, panel) in enumerate(panels):
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in image_id)
    viz.save_png(os.path.join(eval_dir, f"step_{step}_predictions", f"{i:02d}_{safe_id}.png"),
                 panel)
    writer.image(f"eval/prediction_{i}", panel, step)
  writer.flush()


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

  Before anything is written the config is validated (`prepare_config`, `validate_run`). On a
  resume, a model config other than the one in `<workdir>/config.json` raises ConfigChangeError
  naming each key unless config.allow_config_change (see `reconcile_config`). A diverged step
  raises TrainingDivergedError naming the last healthy checkpoint (deeplax.divergence); a failed
  checkpoint save raises CheckpointSaveError at the next step.
  """
  config = prepare_config(config)
  validate_run(config)
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


class ConfigChangeError(ValueError):
  """A resume whose model config differs from the workdir's config.json."""


class TrainingDivergedError(FloatingPointError):
  """A diverged step (deeplax.divergence); the message names the last healthy checkpoint."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint save that failed; the message names the directory."""


# Keys whose change alters what the checkpoints mean (model keys except MODEL_TRAINING_KEYS).
DATA_MODEL_KEYS = ("data.name", "data.normalization", "data.ignore_label", "data.other_class")
# Model fields that change how a model trains or runs, not what its weights mean.
MODEL_TRAINING_KEYS = tuple(f"model.{k}" for k in (
    "remat", "freeze_bn", "bn_momentum", "aspp_dropout", "aspp_v2_dropout", "dropout_rate",
    "dtype", "bn_axis_name"))
UNCOMPARED_KEYS = ("allow_config_change",)
CONFIG_CHANGES_FILE = "config_changes.json"
_MISSING = "<missing>"


def _flat(tree, prefix=""):
  """{'a.b.c': leaf} of a config dict (empty sections kept as {})."""
  return {prefix + ".".join(path): v
          for path, v in convert_lib.flatten(tree, keep_empty=True).items()}


def _jsonable(x):
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  return x if isinstance(x, (str, int, float, bool, type(None), dict)) else repr(x)


def _model_view(model_dict: dict) -> Dict[str, Any]:
  """{'model.<field>': value} of the built module, so a key a config leaves out compares as the
  module's default; the config's own keys if it does not build."""
  try:
    model_config, _ = models.upgrade_config(ml_collections.ConfigDict(model_dict), report=False)
    module = models.build(model_config)
    backbone = dict(model_config.backbone.to_dict())
    backbone = {**backbones.config(backbone["name"]).to_dict(), **backbone}
  except Exception:  # pylint: disable=broad-except
    return _flat(model_dict, "model.")
  view = {f"model.{f.name}": _jsonable(getattr(module, f.name))
          for f in dataclasses.fields(module) if f.name not in ("parent", "name", "backbone")}
  view.update({f"model.backbone.{k}": _jsonable(v) for k, v in backbone.items()})
  view["model.name"] = model_dict.get("name")
  return view


def config_differences(old: dict, new: dict) -> Dict[str, tuple]:
  """{dotted key: (old, new)} between a workdir's config.json and a prepared config: model keys
  through the built module (defaults filled in), the rest with the base config's defaults for
  keys the older file lacks."""
  base = json.loads(defaults.get_base_config().to_json_best_effort())
  rest = lambda c: {k: v for k, v in c.items() if k != "model"}
  a = {**_flat(rest(base)), **_flat(rest(old)), **_model_view(old.get("model", {}))}
  b = {**_flat(rest(new)), **_model_view(new.get("model", {}))}
  return {k: (a.get(k, _MISSING), b.get(k, _MISSING)) for k in sorted(set(a) | set(b))
          if _jsonable(a.get(k, _MISSING)) != _jsonable(b.get(k, _MISSING))
          and k not in UNCOMPARED_KEYS}


def reconcile_config(config: ml_collections.ConfigDict, workdir: str, resumed_step, *,
                     write: bool = True) -> Dict[str, tuple]:
  """Checks and (with `write`, process 0) writes `<workdir>/config.json`; returns the changes.

  A workdir without checkpoints gets this config (a launch that failed before its first save
  leaves nothing to keep). With checkpoints, a different model config (model keys other than
  MODEL_TRAINING_KEYS, and DATA_MODEL_KEYS) raises ConfigChangeError listing each key, old and
  new value, unless config.allow_config_change; training-only changes (total_steps, learning
  rate, cadence, remat, ...) are accepted. Accepted changes are appended to
  `<workdir>/config_changes.json` (time, step resumed, key: [old, new]) and config.json is
  rewritten to describe the checkpoints written from now on. A config.json in the format of
  deeplax <= 1b78b68 (flat backbone options, `models.upgrade_config`) is rewritten in today's
  schema, the changes recorded under 'format_upgrade'. The loop checks before restoring
  and writes only once a checkpoint restored.
  """
  path = os.path.join(workdir, ckpt_lib.CONFIG_FILE)
  new = json.loads(config.to_json_best_effort())
  if resumed_step is None or not os.path.exists(path):
    if write:
      ckpt_lib.write_config(workdir, config)
    return {}
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} of the run being resumed is unreadable ({e}); restore it or start "
                     "a new workdir") from e
  changes = config_differences(old, new)
  _, format_upgrade = models.upgrade_config(ml_collections.ConfigDict(old.get("model", {})),
                                            report=False)
  model_changes = {k: v for k, v in changes.items()
                   if (k.startswith("model.") and k not in MODEL_TRAINING_KEYS)
                   or k in DATA_MODEL_KEYS}
  if model_changes and not config.allow_config_change:
    lines = "\n".join(f"  {k}: {o!r} in the workdir, {n!r} now" for k, (o, n) in model_changes.items())
    raise ConfigChangeError(
        f"the model config differs from {path}, which describes the checkpoints being resumed "
        f"(step {resumed_step}):\n{lines}\nUse a new workdir (with config.init_from={workdir!r} "
        "to start from these weights), or pass --config.allow_config_change=True to resume with "
        f"the change (recorded in {CONFIG_CHANGES_FILE}).")
  if (changes or format_upgrade) and write and jax.process_index() == 0:
    record_path = os.path.join(workdir, CONFIG_CHANGES_FILE)
    records = []
    if os.path.exists(record_path):
      try:
        with open(record_path) as f:
          records = json.load(f)
      except (OSError, ValueError) as e:
        raise ValueError(f"{record_path} is unreadable ({e}); move it away to resume") from e
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": int(resumed_step),
              "changes": {k: [_jsonable(o), _jsonable(n)] for k, (o, n) in changes.items()}}
    if format_upgrade:  # config.json of deeplax <= 1b78b68, rewritten in today's schema
      record["format_upgrade"] = format_upgrade
      logging.warning("%s was in the format of deeplax <= 1b78b68; rewritten in today's "
                      "(recorded in %s): %s", path, CONFIG_CHANGES_FILE, "; ".join(format_upgrade))
    records.append(record)
    evaluate_lib.write_json(records, record_path)
    ckpt_lib.write_config(workdir, config)
    if changes:
      logging.info("config changes at step %d recorded in %s: %s", resumed_step, record_path,
                   ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in changes.items()))
  return changes


def _train_and_evaluate(config, workdir, stop_at_step, step_callback):
  manager = ckpt_lib.checkpoint_manager(workdir, max_to_keep=None)  # rotation: `health` below
  try:
    return _run(config, workdir, manager, stop_at_step, step_callback)
  finally:
    try:
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      logging.error("finishing the checkpoint saves of %s: %s", manager.directory,
                    ckpt_lib.cause(e))  # reported as CheckpointSaveError where it matters
    try:
      manager.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.error("closing the checkpoint manager of %s: %s", manager.directory,
                    ckpt_lib.cause(e))


def _run(config, workdir, manager, stop_at_step, step_callback):
  from deeplax import data as data_lib  # the data pipeline imports TensorFlow
  is_main = jax.process_index() == 0
  model = models.build(config.model)
  reconcile_config(config, workdir, manager.latest_step(), write=False)  # refuses before restoring
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
    state, data_state, step, skipped = ckpt_lib.restore_newest_intact(manager, abstract, workdir)
    data_state = dict(data_state)
    divergence_state = data_state.pop(divergence.DATA_KEY, None)
    train_iter.set_state(data_state)
    if skipped:
      logging.warning("resumed from step %d, skipping the checkpoints %s that do not restore "
                      "(moved to %s)", step, [s for s, _ in skipped],
                      os.path.join(workdir, "broken_checkpoints"))
    logging.info("resumed from %s at step %d", manager.directory, step)
    reconcile_config(config, workdir, step)
  else:
    reconcile_config(config, workdir, None)
    divergence_state = None
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
  mesh = parallel.mesh if parallel.name == "jit" else Mesh(np.asarray(jax.devices()), (MESH_AXIS,))
  history = {"train": [], "eval": [], "preempted": False, "init_report": init_report}
  total = int(config.total_steps)
  last_step_saved = manager.latest_step()
  test = divergence.DivergenceTest(
      float(config.divergence.factor), int(config.divergence.window),
      initial_param_norm=float(optax.tree.norm(jax.device_get(parallel.get_state(state)["params"]))))
  health = divergence.CheckpointHealth(manager.all_steps(), int(config.divergence.confirm_steps),
                                       None if config.max_to_keep is None else int(config.max_to_keep))
  if divergence_state is not None:
    test.load_state(divergence_state)
    health.resume(divergence_state.get("pending", []))

  def check_saves(step_, wait=False, collective=False):
    """Raises CheckpointSaveError if a background save failed (checked every step). With
    `collective` (at points every process reaches: before each scheduled save, at the end) the
    processes of a multi-host run agree, so none enters the next save's barrier alone (there
    only the collective checks run: one process stopping alone would leave the others waiting)."""
    if jax.process_count() > 1 and not collective:
      return
    error = None
    try:
      if wait:
        manager.wait_until_finished()
      manager.check_for_errors()
    except Exception as e:  # the save thread's exception, whatever its type
      error = e
    if collective and jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None))).ravel()
      if error is None and failed.any():
        error = RuntimeError(f"a save failed on process(es) {np.nonzero(failed)[0].tolist()}")
    if error is not None:
      e = error
      raise CheckpointSaveError(
          f"saving a checkpoint to {manager.directory} failed ({ckpt_lib.cause(e)}); training "
          f"stopped at step {step_}. The last complete checkpoint is step "
          f"{ckpt_lib.latest_step(workdir)}; free space or fix the directory, then relaunch to "
          "resume from it.") from e

  def save(step_, force=False):
    nonlocal last_step_saved
    try:
      divergence_state = dict(test.state(), pending=health.pending_after_saving(step_))
      data_state = dict(train_iter.get_state(), **{divergence.DATA_KEY: divergence_state})
      saved = ckpt_lib.save_train_state(manager, step_, parallel.get_state(state), data_state,
                                        force=force)
    except Exception as e:
      raise CheckpointSaveError(
          f"saving checkpoint {step_} to {manager.directory} failed ({ckpt_lib.cause(e)}); "
          f"training stopped. The last complete checkpoint is step {ckpt_lib.latest_step(workdir)}; "
          "free space or fix the directory, then relaunch to resume from it.") from e
    if not saved:
      logging.warning("orbax did not save step %d in %s (a checkpoint of that step exists?)",
                      step_, manager.directory)
      return
    last_step_saved = step_
    health.saved(step_)
    rotate()

  def rotate():
    for old_step in health.to_delete():
      try:
        manager.delete(old_step)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("could not delete the old checkpoint %d in %s: %s", old_step,
                        manager.directory, ckpt_lib.cause(e))

  def stop_diverged(reason, step_):
    try:
      manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass  # a failed save is one more unconfirmed checkpoint: it is absent anyway
    moved_dir = os.path.join(workdir, "diverged_checkpoints")
    moved = [s_ for s_ in health.pending if os.path.isdir(os.path.join(manager.directory, str(s_)))]
    failed = []
    if moved and is_main:
      for s_ in moved:
        try:
          ckpt_lib.move_aside(os.path.join(manager.directory, str(s_)), moved_dir)
        except OSError as e:
          failed.append(f"{s_} ({e})")
    ckpt_lib.sync_processes("deeplax_diverged_checkpoints_moved")
    health.pending = []
    manager.reload()
    good = health.last_good
    if good is not None:
      where = (f"The last good checkpoint is step {good} in {manager.directory}; lower "
               "config.learning_rate or check the input data, then relaunch to resume from it "
               "(a config.grad_clip_norm, momentum or weight_decay switched on or off changes the "
               "optimizer state: start such a run in a new workdir with config.init_from)")
    else:
      where = ("No checkpoint of this run is known to be healthy; lower config.learning_rate "
               "or check the input data and relaunch (it starts from the beginning)")
    moved_text = (f" The checkpoints {moved}, not yet followed by {health.confirm_steps} healthy "
                  f"steps, were moved to {moved_dir}." if moved else "")
    if failed:
      moved_text += f" Moving these failed: {', '.join(failed)}."
    raise TrainingDivergedError(f"{reason}; training stopped.{moved_text} {where}.")

  def run_eval(step_):
    result = evaluate(config, parallel.get_state(state), mesh=mesh,
                      num_panels=int(config.num_eval_images_to_save))
    panels = result.pop("panels")
    result["step"] = step_
    history["eval"].append(result)
    class_names = data_lib.dataset_info(config.data).class_names
    if is_main:
      write_eval_outputs(workdir, step_, result, panels, class_names, writer)
    per_class = "  ".join(f"{name} {iou:.3f}" for name, iou in zip(class_names,
                                                                result["per_class_iou"]))
    logging.info("eval step %d: mIoU %.4f  pixel accuracy %.4f\n  IoU: %s", step_, result["miou"],
                 result["pixel_accuracy"], per_class)
    return result

  t_last, step_last = time.time(), step
  with _SigtermFlag() as sigterm:
    try:
      while step < total:
        batch = next(train_iter)
        state, metrics = parallel.step(state, parallel.put_batch(batch))
        step += 1
        metrics = parallel.get_metrics(metrics)
        check_saves(step)
        if int(metrics["bad_labels"]):
          raise ValueError(
              f"the batch of step {step} has {int(metrics['bad_labels'])} label pixels outside "
              f"[0, config.model.num_classes={config.model.num_classes}) that are not "
              f"config.data.ignore_label={ignore_label(config)} (largest: "
              f"{int(metrics['bad_label_max'])}); the step was not applied. Set num_classes to the "
              "dataset's class count or fix the labels.")
        verdict = test.check(step, float(metrics["loss"]), float(metrics["param_norm"]),
                             bool(metrics["finite"]))
        if not verdict.healthy:
          stop_diverged(verdict.reason, step)
        health.healthy_through(step)
        rotate()
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
          check_saves(step, collective=True)
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
      if step >= total:
        health.confirm_all()  # reached total_steps healthy: its last checkpoints are its result
      check_saves(step, wait=True, collective=True)
      rotate()
    finally:
      if writer is not None:
        try:
          writer.close()
        except Exception as e:  # pylint: disable=broad-except
          logging.error("closing the TensorBoard writer of %s: %s", workdir, ckpt_lib.cause(e))
  history["step"] = step
  return history
