"""Transparent huge pages for the large buffers XLA CPU allocates on every step.

XLA CPU allocates a step's temporaries (2.8 GB for DeepLabv3-ResNet-101 at crop 513) with
malloc, which maps them fresh on every call; every first touch of a 4 KiB page is then a page
fault: ~800k faults and ~0.6 s of kernel time per ResNet-101 step. glibc >= 2.35 asks the kernel
for transparent huge pages on its mapped chunks when started with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (kernel THP mode 'madvise' or 'always'): ~5k faults, and
the step is 2.58 -> 2.35 s (BENCHMARKS.md). Resident memory grows in 2 MiB steps instead.

The tunable is read when the process starts, so `deeplax.main` re-executes itself once with it
set. DEEPLAX_HUGE_PAGES=0 turns this off. Elsewhere it is harmless: other C libraries ignore the
variable, and without THP support the kernel ignores the request.
"""

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


def should_reexec(env: Mapping[str, str], platform: str = sys.platform) -> bool:
  """True on Linux when the tunable is not set yet and DEEPLAX_HUGE_PAGES is not '0'."""
  if platform != "linux" or env.get(OPT_OUT, "1") == "0":
    return False
  return "glibc.malloc.hugetlb=" not in env.get("GLIBC_TUNABLES", "")


def reexec_with_huge_pages(argv: Optional[list] = None) -> None:
  """Replaces this process by itself started with the tunable (same interpreter and arguments);
  returns without doing anything when `should_reexec` is False. Call it before importing jax."""
  if not should_reexec(os.environ):
    return
  argv = list(argv if argv is not None else sys.orig_argv)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, env_with_huge_pages(os.environ))
