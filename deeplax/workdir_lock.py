"""An exclusive lock on a run directory, so two launches never train into one workdir.

`<workdir>/lock` holds the holder's host, PID and start time; the lock itself is a `fcntl.flock`
on that file, which the kernel drops when the holder exits or dies, so a lock left by a dead
process is stale by construction and the next launch takes it over (and says so). Multi-host
runs: only process 0 writes to the workdir (checkpoints, config, eval), so only process 0 takes
the lock; on a workdir shared between hosts (NFS, GCS fuse) `flock` is then honoured only where
the file system supports it, and the lock file still names the holder for a person to see.
"""

import errno
import fcntl
import json
import os
import socket
import time
from typing import Optional

from absl import logging

LOCK_FILE = "lock"


class WorkdirLockedError(RuntimeError):
  """Another live process holds the workdir."""


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds `<workdir>/lock` for the block (or `acquire`/`release`)."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._fd: Optional[int] = None

  def acquire(self) -> "WorkdirLock":
    os.makedirs(self.workdir, exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        holder = _read(fd)
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        raise WorkdirLockedError(
            f"workdir {self.workdir} is in use by {_describe(holder)} (lock file {self.path}); "
            f"wait for that run to end or stop it, or use another --workdir") from None
      # The file may have been released and unlinked between open and flock: lock the one there.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    previous = _read(fd)
    if previous:
      logging.warning("taking over a stale lock of %s (that process no longer holds it)",
                      _describe(previous))
    try:
      os.ftruncate(fd, 0)
      os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
      os.fsync(fd)
    except OSError:
      os.close(fd)  # e.g. a full disk: drop the lock rather than hold it unreported
      raise
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _read(fd: int) -> dict:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 4096)
    return json.loads(data) if data else {}
  except (OSError, ValueError):
    return {}


def _describe(holder: dict) -> str:
  if not holder:
    return "another process"
  return (f"PID {holder.get('pid')} on host {holder.get('host')} "
          f"(started {holder.get('started')})")
