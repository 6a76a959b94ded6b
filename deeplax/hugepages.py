"""Transparent huge pages for the large buffers XLA CPU allocates on every step.

XLA CPU allocates a step's temporaries with malloc, which maps them fresh on every call, so every
first touch of a 4 KiB page is a page fault. glibc >= 2.35 asks the kernel for transparent huge
pages on its mapped chunks when started with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (kernel THP
mode 'madvise' or 'always'); figures in BENCHMARKS.md ("XLA-CPU kernels").

The tunable is read when the process starts, so `deeplax.main` re-executes itself once with it
set, only where JAX will run on the CPU: JAX_PLATFORMS names cpu first, or no accelerator plugin
(CUDA, ROCm, TPU) is installed. DEEPLAX_HUGE_PAGES=0 turns this off.
"""

import importlib.util
import os
import sys
from typing import Mapping, Optional

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "DEEPLAX_HUGE_PAGES"


def env_with_huge_pages(env: Mapping[str, str]) -> dict:
  """A copy of `env` whose GLIBC_TUNABLES also holds the hugetlb tunable (others are kept)."""
  env = dict(env)
  tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
  if not any(t.startswith("glibc.malloc.hugetlb=") for t in tunables):
    tunables.append(TUNABLE)
  env["GLIBC_TUNABLES"] = ":".join(tunables)
  return env


ACCELERATOR_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "libtpu", "jax_plugins")


def backend_is_cpu(env: Mapping[str, str], find_spec=importlib.util.find_spec) -> bool:
  """True when JAX will run on the CPU, decided without importing jax: JAX_PLATFORMS (or
  JAX_PLATFORM_NAME) names cpu first, or neither is set and no accelerator plugin is installed."""
  platforms = env.get("JAX_PLATFORMS") or env.get("JAX_PLATFORM_NAME") or ""
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  return not any(find_spec(name) is not None for name in ACCELERATOR_MODULES)


def should_reexec(env: Mapping[str, str], platform: str = sys.platform,
                  find_spec=importlib.util.find_spec) -> bool:
  """True on Linux with a CPU backend when the tunable is not set yet and DEEPLAX_HUGE_PAGES is
  not '0'."""
  if platform != "linux" or env.get(OPT_OUT, "1") == "0":
    return False
  if "glibc.malloc.hugetlb=" in env.get("GLIBC_TUNABLES", ""):
    return False
  return backend_is_cpu(env, find_spec)


def reexec_with_huge_pages(argv: Optional[list] = None) -> None:
  """Replaces this process by itself started with the tunable (same interpreter and arguments);
  returns without doing anything when `should_reexec` is False. Call it before importing jax."""
  if not should_reexec(os.environ):
    return
  argv = list(argv if argv is not None else sys.orig_argv)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, env_with_huge_pages(os.environ))
