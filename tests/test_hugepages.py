"""deeplax.hugepages: the launch re-executes itself once with glibc's huge-page malloc."""

import os
import subprocess
import sys

from deeplax import hugepages

_SCRIPT = ("import os, sys; print('run', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:], flush=True);"
           "from deeplax import hugepages; hugepages.reexec_with_huge_pages()")


def test_env_with_huge_pages_keeps_other_tunables():
  assert hugepages.env_with_huge_pages({})["GLIBC_TUNABLES"] == hugepages.TUNABLE
  env = hugepages.env_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b"})
  assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:" + hugepages.TUNABLE, "A": "b"}
  kept = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
  assert hugepages.env_with_huge_pages(kept) == kept  # an explicit choice is respected


def test_should_reexec_only_once_and_only_on_linux():
  assert hugepages.should_reexec({}, platform="linux")
  assert not hugepages.should_reexec({"GLIBC_TUNABLES": hugepages.TUNABLE}, platform="linux")
  assert not hugepages.should_reexec({hugepages.OPT_OUT: "0"}, platform="linux")
  assert not hugepages.should_reexec({}, platform="darwin")


def test_huge_pages_only_where_jax_runs_on_the_cpu():
  """GPU and TPU hosts (an accelerator plugin installed, or JAX_PLATFORMS naming one) keep
  their process as started."""
  none = lambda name: None
  cuda = lambda name: object() if name == "jax_cuda12_plugin" else None
  assert hugepages.should_reexec({}, platform="linux", find_spec=none)
  assert not hugepages.should_reexec({}, platform="linux", find_spec=cuda)
  assert hugepages.should_reexec({"JAX_PLATFORMS": "cpu"}, platform="linux", find_spec=cuda)
  assert not hugepages.should_reexec({"JAX_PLATFORMS": "cuda,cpu"}, platform="linux",
                                     find_spec=none)
  assert not hugepages.should_reexec({"JAX_PLATFORMS": "tpu"}, platform="linux", find_spec=none)


def _run(env):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", _SCRIPT, "--flag=1"], capture_output=True, text=True,
                       env=dict(env, PYTHONPATH=repo), check=True, timeout=120).stdout
  return [line for line in out.splitlines() if line.startswith("run")]


def test_reexec_restarts_the_same_command_with_the_tunable():
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.OPT_OUT)}
  if sys.platform == "linux":
    assert _run(base) == ["run None ['--flag=1']", f"run {hugepages.TUNABLE} ['--flag=1']"]
  assert _run(dict(base, **{hugepages.OPT_OUT: "0"})) == ["run None ['--flag=1']"]


def test_main_launch_restarts_itself_with_the_tunable(tmp_path):
  """`python -m deeplax.main` starts twice: first as launched, then with the tunable (a
  sitecustomize prints GLIBC_TUNABLES at every interpreter start; --helpshort exits early)."""
  (tmp_path / "sitecustomize.py").write_text(
      "import os, sys\nprint('start', os.environ.get('GLIBC_TUNABLES'), file=sys.stderr)\n")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.OPT_OUT)}
  err = subprocess.run([sys.executable, "-m", "deeplax.main", "--helpshort"], capture_output=True,
                       text=True, timeout=300, env=dict(base, PYTHONPATH=f"{tmp_path}:{repo}")).stderr
  starts = [line for line in err.splitlines() if line.startswith("start")]
  expected = ["start None"] + ([f"start {hugepages.TUNABLE}"] if sys.platform == "linux" else [])
  assert starts == expected
