"""Launches training: `python -m deeplax.main --config=configs/<name>.py --workdir=<dir>`.

Any config field can be overridden, e.g. `--config.total_steps=100 --config.model.dtype=bfloat16`.
An existing workdir resumes from its latest checkpoint. Multi-host: pass `--distributed` (or set
DEEPLAX_DISTRIBUTED=1) so `jax.distributed.initialize()` runs first (arguments from the cluster
environment, or --coordinator_address / --num_processes / --process_id).

The launch re-executes itself once with glibc's transparent-huge-page malloc (deeplax.hugepages;
DEEPLAX_HUGE_PAGES=0 turns it off).

Exit status: 0 done (or preempted with a checkpoint saved), 3 the workdir is in use by another
run (its lock file names the holder: deeplax.workdir_lock), 1 any other failure.
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
flags.mark_flags_as_required(["config", "workdir"])

LOCKED_EXIT = 3


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
    history = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except workdir_lock.WorkdirLockedError as e:
    logging.error("%s", e)
    sys.exit(LOCKED_EXIT)
  if history["eval"]:
    last = history["eval"][-1]
    logging.info("final step %d: mIoU %.4f, pixel accuracy %.4f", last["step"], last["miou"],
                 last["pixel_accuracy"])


if __name__ == "__main__":
  from deeplax import hugepages  # pylint: disable=g-import-not-at-top
  hugepages.reexec_with_huge_pages()
  app.run(main)
