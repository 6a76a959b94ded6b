"""Launches training: `python -m deeplax.main --config=configs/<name>.py --workdir=<dir>`.

Any config field can be overridden, e.g. `--config.total_steps=100 --config.model.dtype=bfloat16`.
An existing workdir resumes from its latest checkpoint. Multi-host: pass `--distributed` (or set
DEEPLAX_DISTRIBUTED=1) so `jax.distributed.initialize()` runs first (arguments from the cluster
environment, or --coordinator_address / --num_processes / --process_id).

The launch re-executes itself once with glibc's transparent-huge-page malloc (deeplax.hugepages;
DEEPLAX_HUGE_PAGES=0 turns it off).

Exit status (one message on stderr; the traceback too with --verbose):
  0  done, or preempted with a checkpoint saved;
  2  bad input: flags, config (validated before anything is written), data (labels outside the
     classes), checkpoints that do not restore, a resume whose model config differs from the
     workdir's (deeplax.train.reconcile_config);
  3  the workdir is in use by another run (its lock file names the holder: deeplax.workdir_lock);
  4  the run diverged (deeplax.divergence); the message names the last healthy checkpoint;
  5  a checkpoint save failed (disk full, permissions); the previous checkpoint is intact;
  1  anything else (with its traceback).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (config.json, checkpoints, eval).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", os.environ.get("DEEPLAX_DISTRIBUTED") == "1",
                                 "Call jax.distributed.initialize() (multi-host training).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Print tracebacks of the errors reported.")
flags.mark_flags_as_required(["config", "workdir"])

BAD_INPUT_EXIT = 2
LOCKED_EXIT = 3
DIVERGED_EXIT = 4
SAVE_FAILED_EXIT = 5


class _QuietOrbax(logging.logging.Filter):
  """Keeps orbax's per-save INFO chatter out of the progress log (warnings still show)."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_logger().addFilter(_QuietOrbax())
  logging.get_absl_handler().python_handler.addFilter(_QuietOrbax())
  import jax  # pylint: disable=g-import-not-at-top
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  from deeplax import train  # pylint: disable=g-import-not-at-top
  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  from deeplax import workdir_lock  # pylint: disable=g-import-not-at-top
  try:
    config = _CONFIG.value
    config.to_dict()  # the config file is loaded on first use
  except Exception as e:  # pylint: disable=broad-except
    _fail(e, BAD_INPUT_EXIT)
  try:
    history = train.train_and_evaluate(config, _WORKDIR.value)
  except workdir_lock.WorkdirLockedError as e:
    _fail(e, LOCKED_EXIT)
  except train.TrainingDivergedError as e:
    _fail(e, DIVERGED_EXIT)
  except train.CheckpointSaveError as e:
    _fail(e, SAVE_FAILED_EXIT)
  except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as e:
    _fail(e, BAD_INPUT_EXIT)
  if history["eval"]:
    last = history["eval"][-1]
    logging.info("final step %d: mIoU %.4f, pixel accuracy %.4f", last["step"], last["miou"],
                 last["pixel_accuracy"])


def _fail(error: BaseException, code: int):
  if _VERBOSE.value:
    logging.exception("%s", error)
  else:
    logging.error("%s (--verbose prints the traceback)", error)
  sys.exit(code)


def _parse_flags(argv):
  """absl's parser, with flag and config-file errors as one message and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"{os.path.basename(argv[0])}: error: {e}\nPass --helpfull for the flags.", file=sys.stderr)
    sys.exit(BAD_INPUT_EXIT)


if __name__ == "__main__":
  from deeplax import hugepages  # pylint: disable=g-import-not-at-top
  hugepages.reexec_with_huge_pages()
  app.run(main, flags_parser=_parse_flags)
