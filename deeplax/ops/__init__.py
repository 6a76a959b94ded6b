"""Which kernels a layer hands to XLA: the canonical operations, or the XLA-CPU forms.

`deeplax.layers` writes every convention once, in plain operations (`lax.conv_general_dilated`,
`lax.reduce_window`, flax-style batch norm, `jax.nn.relu`): those are what GPUs and TPUs get.
`deeplax.ops.xla_cpu` holds numerically equivalent forms that XLA's CPU backend runs faster
(BENCHMARKS.md, "XLA-CPU kernels"). `choose` picks one per layer:

- `auto` (default): `jax.lax.platform_dependent(cpu=xla_cpu form, default=canonical)`, decided
  when the computation is lowered, so a multi-platform `jax.export` carries both and each
  platform runs its own;
- `canonical` or `xla_cpu`: that form on every platform (debugging, measurement).

The choice comes from the environment variable DEEPLAX_KERNELS, or from `use_kernels(...)`
around the code that traces the model; it is read when a function is traced (a jitted function
keeps the kernels it was traced with). Both forms have the same variables and the same values
up to float rounding: checkpoints do not depend on it.
"""

import contextlib
import os
import threading
from typing import Callable, Iterator, Optional

import jax

KERNELS = ("auto", "canonical", "xla_cpu")
ENV_VAR = "DEEPLAX_KERNELS"

_override = threading.local()


def _check(name: str, source: str) -> str:
  if name not in KERNELS:
    raise ValueError(f"{source}={name!r}; expected one of {KERNELS}")
  return name


def kernels() -> str:
  """The kernel choice in force: `use_kernels`' if inside one, else $DEEPLAX_KERNELS, else 'auto'."""
  name: Optional[str] = getattr(_override, "name", None)
  if name is not None:
    return name
  return _check(os.environ.get(ENV_VAR, "auto"), ENV_VAR)


@contextlib.contextmanager
def use_kernels(name: str) -> Iterator[None]:
  """Within the block, models trace with kernels `name` ('auto' | 'canonical' | 'xla_cpu')."""
  previous = getattr(_override, "name", None)
  _override.name = _check(name, "kernels")
  try:
    yield
  finally:
    _override.name = previous


def choose(canonical: Callable, xla_cpu: Callable, *args):
  """`canonical(*args)` or `xla_cpu(*args)` as `kernels()` says (array arguments only)."""
  name = kernels()
  if name == "canonical":
    return canonical(*args)
  if name == "xla_cpu":
    return xla_cpu(*args)
  return jax.lax.platform_dependent(*args, cpu=xla_cpu, default=canonical)
