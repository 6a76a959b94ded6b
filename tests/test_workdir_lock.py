"""deeplax.workdir_lock: one run per workdir; a second launch exits at once naming the holder;
a lock left by a dead process is taken over."""

import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

from deeplax import checkpoint as ckpt_lib
from deeplax import workdir_lock

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_second_lock_names_the_holder_and_release_frees_it(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path / "run")) as held:
    assert os.path.exists(held.path)
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"in use by PID {os.getpid()} on host"):
      workdir_lock.WorkdirLock(str(tmp_path / "run")).acquire()
  assert not os.path.exists(held.path)
  workdir_lock.WorkdirLock(str(tmp_path / "run")).acquire().release()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
  workdir = tmp_path / "run"
  script = textwrap.dedent(f"""
      import os
      from deeplax import workdir_lock
      workdir_lock.WorkdirLock({str(workdir)!r}).acquire()
      os._exit(0)  # dies holding it, as after kill -9: no release
  """)
  subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True)
  assert (workdir / workdir_lock.LOCK_FILE).exists()
  lock = workdir_lock.WorkdirLock(str(workdir)).acquire()
  assert f'"pid": {os.getpid()}' in (workdir / workdir_lock.LOCK_FILE).read_text()
  lock.release()


def test_two_launches_on_one_workdir_only_one_trains(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "deeplax.main", "--config=configs/shapes.py", f"--workdir={workdir}",
         "--config.total_steps=3", "--config.batch_size=8", "--config.eval_every_steps=3",
         "--config.checkpoint_every_steps=3", "--config.num_eval_images_to_save=0"]
  env = dict(os.environ, DEEPLAX_HUGE_PAGES="0")
  log = open(tmp_path / "first.log", "w+")
  first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
  lock_file = workdir / workdir_lock.LOCK_FILE
  deadline = time.time() + 300
  while not lock_file.exists() and first.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert lock_file.exists(), (tmp_path / "first.log").read_text()[-3000:]
  t0 = time.time()
  second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  second_s = time.time() - t0
  assert first.poll() is None, "the first run ended before the second was refused"
  first.wait(timeout=900)
  assert first.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
  assert second.returncode == 3, second.stderr[-3000:]
  assert f"is in use by PID {first.pid} on host" in second.stderr
  assert "Traceback" not in second.stderr
  assert second_s < 120  # at once: no dataset, no compilation
  _, variables, step = ckpt_lib.load_variables(str(workdir))
  assert step == 3 and variables["params"]
  assert not lock_file.exists()
