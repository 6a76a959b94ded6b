"""Launches training: `python -m deeplax.main --config=configs/<name>.py --workdir=<dir>`.

Any config field can be overridden, e.g. `--config.total_steps=100 --config.model.dtype=bfloat16`.
An existing workdir resumes from its latest checkpoint. Multi-host: pass `--distributed` (or set
DEEPLAX_DISTRIBUTED=1) so `jax.distributed.initialize()` runs first (arguments from the cluster
environment, or --coordinator_address / --num_processes / --process_id).

The console shows the progress line (step, loss, lr, images/s, ETA), the evaluation and real
warnings; the libraries' INFO lines (orbax, TensorFlow) only with --verbosity=1.

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
import re
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


def _import_tensorflow_quietly(argv) -> None:
  """Imports TensorFlow (the input pipeline's) with its C++ INFO lines (the oneDNN notice, which
  no environment variable silences before absl::InitializeLog) dropped below --verbosity=1;
  anything else it prints on stderr is passed on."""
  if _verbosity(argv) >= 1:
    return
  import tempfile  # pylint: disable=g-import-not-at-top
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      pass
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      dropping = False
      for line in captured:
        if re.match(rb"[IWEF]\d{4} ", line) or b"absl::InitializeLog()" in line:
          dropping = line.startswith(b"I") or b"absl::InitializeLog()" in line
        if not dropping:  # INFO messages span lines: their continuation goes with them
          sys.stderr.buffer.write(line)
      sys.stderr.flush()


BAD_INPUT_EXIT = 2
LOCKED_EXIT = 3
DIVERGED_EXIT = 4
SAVE_FAILED_EXIT = 5


# TensorFlow Datasets warnings that every deeplax run triggers and no user can act on: the builder
# is configured per run (data.shapes, data.folder), and TFDS reads its own feature dtypes.
_TFDS_CHATTER = ("Using custom data configuration", "has no dataset_info.json",
                 "`FeatureConnector.dtype` is deprecated")


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _verbosity(argv) -> int:
  """absl's --verbosity (-v, --v) from the command line, before the flags are parsed."""
  value = 0
  for i, arg in enumerate(argv):
    name, eq, rest = arg.partition("=")
    if name in ("--verbosity", "-v", "--v", "-verbosity"):
      rest = rest if eq else (argv[i + 1] if i + 1 < len(argv) else "0")
      try:
        value = int(rest)
      except ValueError:
        pass
  return value


class _QuietLibraries(logging.logging.Filter):
  """Below --verbosity=1, keeps the libraries' INFO lines (orbax's per-save chatter, TensorFlow
  Datasets, absl) and TFDS's per-run warnings out of the console: deeplax's own lines and every
  other warning stay."""

  def filter(self, record):
    if logging.get_verbosity() >= 1 or record.pathname.startswith(_PACKAGE_DIR):
      return True
    if record.levelno < logging.logging.WARNING:  # the standard level; absl's WARNING is -1
      return False
    return not (f"{os.sep}tensorflow_datasets{os.sep}" in record.pathname
                and any(text in record.getMessage() for text in _TFDS_CHATTER))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_logger().addFilter(_QuietLibraries())
  logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())
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
  _import_tensorflow_quietly(sys.argv)
  app.run(main, flags_parser=_parse_flags)
