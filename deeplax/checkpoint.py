"""Run directories and checkpoints (orbax).

A deeplax run directory (`workdir`) is

    <workdir>/config.json        config.to_json_best_effort() of the run
    <workdir>/checkpoints/<step>/{state, data}   an orbax CheckpointManager

'state' is a PyTree saved with `ocp.args.StandardSave`: a training checkpoint holds
{'params', 'batch_stats', 'opt_state', 'step', 'rng'}; a weights-only checkpoint (written by
`save_variables`, e.g. by the weight converters) holds {'params', 'batch_stats', 'step'}.
'data' (training checkpoints only) is the input iterator's JSON state (`ocp.args.JsonSave`).
Orbax writes each step into a temporary directory and renames it when complete, so a checkpoint
is either whole or absent; a run killed mid-save keeps its previous checkpoints.

`load_variables` reads {'params', 'batch_stats'} from either kind without the optimiser structure.
"""

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from deeplax.convert import flatten, unflatten  # nested-dict <-> path-tuple helpers

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
ITEM_NAMES = ("state", "data")
VARIABLE_COLLECTIONS = ("params", "batch_stats")


# --------------------------------------------------------------------------------------------
# Config file.

def write_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Writes `<workdir>/config.json` (only on process 0) and returns its path."""
  path = os.path.join(workdir, CONFIG_FILE)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)  # atomic: never a half-written config.json
  return path


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """`<workdir>/config.json`; a config.model of deeplax <= 1b78b68 is read in today's schema
  (`models.upgrade_config`, logged as a warning)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"missing {CONFIG_FILE} in run directory {workdir!r} ({path} not found); "
                            "is this a deeplax workdir?")
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is not a readable run config ({cause(e)})") from e
  if "model" in config:
    from deeplax import models  # pylint: disable=g-import-not-at-top
    config.model, _ = models.upgrade_config(config.model, source=path)
  return config


def resolve_workdir(path: str) -> str:
  """Accepts a workdir or its `checkpoints/` directory; returns the workdir."""
  path = os.path.abspath(os.fspath(path).rstrip("/"))
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
  if os.path.basename(path) == CHECKPOINT_DIR and not os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
    return os.path.dirname(path)
  return path


# --------------------------------------------------------------------------------------------
# Training checkpoints.

def checkpoint_manager(workdir: str, *, max_to_keep: Optional[int] = 3,
                       enable_async: bool = True) -> ocp.CheckpointManager:
  """The CheckpointManager of `<workdir>/checkpoints` (keep-N, asynchronous saves)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=enable_async)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                               options=options, item_names=ITEM_NAMES)


def save_train_state(manager: ocp.CheckpointManager, step: int, state: Mapping[str, Any],
                     data_state: Optional[Mapping[str, Any]] = None, *, force: bool = False) -> bool:
  """Saves 'state' (params, batch_stats, opt_state, step, rng) and the iterator state 'data'.

  Asynchronous: returns once the arrays are copied off the device; call
  `manager.wait_until_finished()` before exiting.
  """
  missing = {"params", "batch_stats", "opt_state", "step", "rng"} - set(state)
  if missing:
    raise ValueError(f"training state is missing {sorted(missing)}")
  items = {"state": ocp.args.StandardSave(dict(state))}
  if data_state is not None:
    items["data"] = ocp.args.JsonSave(dict(data_state))
  return manager.save(int(step), args=ocp.args.Composite(**items), force=force)


class CheckpointError(ValueError):
  """A checkpoint that does not restore (names its directory and the cause)."""


def cause(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def restore_train_state(manager: ocp.CheckpointManager, abstract_state: Mapping[str, Any],
                        step: Optional[int] = None) -> Tuple[Dict[str, Any], Optional[dict], int]:
  """Restores a training checkpoint into the structure (and shardings) of `abstract_state`.

  `abstract_state` is a tree of arrays or `jax.ShapeDtypeStruct`s (with `sharding` to place the
  arrays). Returns (state, data_state or None, step). A checkpoint that fails to restore raises
  CheckpointError naming its directory and the cause.
  """
  step = manager.latest_step() if step is None else int(step)
  if step is None:
    raise FileNotFoundError(f"no checkpoint found in {manager.directory}")
  step_dir = os.path.join(os.fspath(manager.directory), str(step))
  items = {"state": ocp.args.StandardRestore(dict(abstract_state))}
  has_data = os.path.isdir(os.path.join(step_dir, "data"))
  if has_data:
    items["data"] = ocp.args.JsonRestore()
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # orbax/tensorstore raise many types for damaged files
    raise CheckpointError(f"checkpoint {step_dir} does not restore ({cause(e)})") from e
  return dict(restored["state"]), (restored["data"] if has_data else None), step


def move_aside(step_dir: str, dest_dir: str) -> str:
  """Moves a step directory into `dest_dir` (never over an existing one); returns the new path."""
  os.makedirs(dest_dir, exist_ok=True)
  dest = os.path.join(dest_dir, os.path.basename(step_dir))
  n = 1
  while os.path.exists(dest):
    dest = os.path.join(dest_dir, f"{os.path.basename(step_dir)}.{n}")
    n += 1
  os.replace(step_dir, dest)
  return dest


def sync_processes(tag: str) -> None:
  """A barrier over the processes of a multi-host run (after process 0 moved directories)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(tag)


def restore_newest_intact(manager: ocp.CheckpointManager, abstract_state: Mapping[str, Any],
                          workdir: str, *, move_broken: bool = True
                          ) -> Tuple[Dict[str, Any], Optional[dict], int, list]:
  """`restore_train_state` from the newest checkpoint that restores, newest first.

  Each checkpoint that fails is logged with its path and cause; once one restores, the newer
  broken ones are (on process 0, with `move_broken`) moved to `<workdir>/broken_checkpoints/<step>`,
  out of the resume path and out of the way of the step being saved again; nothing is deleted. Returns (state, data_state, step,
  skipped), skipped = [(step, message)]. Raises CheckpointError listing every failure when none
  restores.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  skipped = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state, data_state, step = restore_train_state(manager, abstract_state, step)
      if data_state is None:
        raise CheckpointError(f"checkpoint {os.path.join(os.fspath(manager.directory), str(step))} "
                              "has no input-iterator state ('data')")
    except CheckpointError as e:
      skipped.append((step, str(e)))
      logging.warning("%s; trying the previous checkpoint", e)
      continue
    if skipped:
      if move_broken and jax.process_index() == 0:
        for bad, _ in skipped:
          dest = move_aside(os.path.join(os.fspath(manager.directory), str(bad)),
                            os.path.join(workdir, "broken_checkpoints"))
          logging.warning("moved the broken checkpoint %d to %s", bad, dest)
      sync_processes("deeplax_broken_checkpoints_moved")
      manager.reload()
    return state, data_state, step, skipped
  if skipped:
    raise CheckpointError("no checkpoint in " + os.fspath(manager.directory) + " restores (nothing "
                          "was moved or deleted):\n  " + "\n  ".join(m for _, m in skipped))
  raise FileNotFoundError(f"no checkpoint found in {manager.directory}")


# --------------------------------------------------------------------------------------------
# Weights only (converters, inference, init_from).

def save_variables(workdir: str, config: ml_collections.ConfigDict, variables: Mapping[str, Any],
                   step: int = 0) -> str:
  """Writes a weights-only run directory: config.json + checkpoints/<step>/state.

  `variables` needs 'params' ('batch_stats' may be empty). Returns the checkpoint directory.
  Refuses to overwrite an existing checkpoint at `step` (nothing already written is lost).
  """
  if "params" not in variables:
    raise ValueError(f"variables must contain 'params'; got keys {sorted(variables)}")
  write_config(workdir, config)
  manager = checkpoint_manager(workdir, max_to_keep=None, enable_async=False)
  if step in manager.all_steps():
    manager.close()
    raise FileExistsError(f"checkpoint for step {step} already exists in {manager.directory}")
  state = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {}),
           "step": np.int64(step)}
  manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  manager.close()
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR, str(step))


def _to_abstract(metadata_tree):
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), metadata_tree)


def _restore_variables(manager, step):
  metadata = manager.item_metadata(step)["state"]
  tree = getattr(metadata, "tree", metadata)
  if tree is None or "params" not in tree:
    raise KeyError("no 'params' in its 'state' item")
  abstract = {k: _to_abstract(tree[k]) for k in VARIABLE_COLLECTIONS if k in tree}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
  return manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=abstract, restore_args=restore_args, partial_restore=True)))


def load_variables(path: str, step: Optional[int] = None,
                   expected_config: Optional[ml_collections.ConfigDict] = None
                   ) -> Tuple[ml_collections.ConfigDict, Dict[str, Any], int]:
  """Loads {'params', 'batch_stats'} (NumPy arrays) from a workdir of either kind.

  `path` is a workdir or its `checkpoints/` directory; `step` defaults to the latest. Only the
  params/batch_stats subtrees are read, so no optimiser structure is needed. With
  `expected_config`, a different `model.num_classes` is an error. Without `step`, a checkpoint
  that fails to restore is reported (logged) and the previous one is tried; with it, or when none
  restores, CheckpointError names each directory and cause.
  Returns (config of the run, variables, step).
  """
  workdir = resolve_workdir(path)
  config = read_config(workdir)
  ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"no checkpoint found in {path!r} ({ckpt_dir} does not exist)")
  if expected_config is not None:
    got = config.get("model", {}).get("num_classes", None)
    want = expected_config.model.num_classes
    if got != want:
      raise ValueError(f"num_classes mismatch: checkpoint {workdir!r} has model.num_classes={got}, "
                       f"expected {want}")
  manager = ocp.CheckpointManager(
      ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                     "data": ocp.JsonCheckpointHandler()})
  try:
    steps = manager.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint found in {path!r} ({ckpt_dir} has no saved steps)")
    if step is not None and int(step) not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} in {ckpt_dir}; available: {sorted(steps)}")
    candidates = [int(step)] if step is not None else sorted(steps, reverse=True)
    failures = []
    for step in candidates:
      try:
        restored = _restore_variables(manager, step)
        break
      except Exception as e:  # orbax/tensorstore raise many types for damaged files
        failures.append(f"checkpoint {ckpt_dir}/{step} does not restore ({cause(e)})")
        if len(candidates) > 1:
          from absl import logging  # pylint: disable=g-import-not-at-top
          logging.warning("%s; trying the previous checkpoint", failures[-1])
    else:
      hint = "" if len(candidates) > 1 else "; pass another step"
      raise CheckpointError("; ".join(failures) + hint)
  finally:
    manager.close()
  state = restored["state"]
  if "params" not in state:
    raise CheckpointError(f"checkpoint {ckpt_dir}/{step} has no 'params' in its 'state' item")
  variables = {"params": state["params"], "batch_stats": state.get("batch_stats", {}) or {}}
  return config, variables, step


def latest_step(workdir: str) -> Optional[int]:
  """The latest complete checkpoint step in `<workdir>/checkpoints`, or None."""
  ckpt_dir = os.path.join(resolve_workdir(workdir), CHECKPOINT_DIR)
  if not os.path.isdir(ckpt_dir):
    return None
  steps = ocp.utils.checkpoint_steps(ckpt_dir)
  return max(steps) if steps else None


# --------------------------------------------------------------------------------------------
# Partial initialisation (config.init_from).

def merge_matching(target: Mapping[str, Any], source: Mapping[str, Any]
                   ) -> Tuple[Dict[str, Any], Dict[str, list]]:
  """Copies every `source` leaf whose name and shape match a `target` leaf.

  For initialising from a checkpoint with another head or a backbone only: matching entries are
  loaded, the rest of `target` (freshly initialised) is kept. Returns (merged, report) with report
  keys 'loaded', 'missing' (in target, not in source: kept fresh), 'mismatched' (same name, other
  shape or dtype: kept fresh), 'unused' (in source, not in target); names are '/'-joined paths.
  """
  flat_t, flat_s = flatten(target), flatten(source)
  merged, report = {}, {"loaded": [], "missing": [], "mismatched": [], "unused": []}
  for path, t in flat_t.items():
    name = "/".join(path)
    s = flat_s.get(path)
    if s is None:
      report["missing"].append(name)
      merged[path] = t
    elif tuple(np.shape(s)) != tuple(np.shape(t)):
      report["mismatched"].append(f"{name}: checkpoint {tuple(np.shape(s))} vs model {tuple(np.shape(t))}")
      merged[path] = t
    else:
      report["loaded"].append(name)
      merged[path] = np.asarray(s).astype(np.asarray(t).dtype if not hasattr(t, "dtype") else t.dtype)
  report["unused"] = ["/".join(p) for p in flat_s if p not in flat_t]
  return unflatten(merged), report
