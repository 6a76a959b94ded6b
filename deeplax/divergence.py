"""Divergence: which steps and checkpoints of a run are healthy.

A step is *diverged* when its loss, gradient norm or updated state is not finite (the train step
then leaves the state unchanged, deeplax.train.make_train_step), or when its loss or its updated
parameter norm exceeds `config.divergence.factor` times the running median of the last
`config.divergence.window` healthy steps. Defaults: factor 10, window 100: a healthy run's loss
wanders well within a factor of 10 of its recent median, while a diverging one (learning rate too
high: loss or, under batch norm, the parameter scale running away) crosses it within a few steps.
The loss test starts once `MIN_HISTORY` healthy losses are known; the parameter-norm test starts
at once, from the norm of the initial state. The history is saved with each checkpoint (in its
'data' item, key DATA_KEY), so a resumed run keeps testing against the medians it had. factor 0 turns both tests off (the
finite test stays).

A checkpoint at step k is *confirmed* once steps k+1 .. k+`confirm_steps` (default 5) were
healthy: the loss computed with its parameters is known to be sane. Rotation (`max_to_keep`)
deletes only confirmed checkpoints, so diverged ones never push the last healthy one out; when
the run diverges, the unconfirmed checkpoints are moved to `<workdir>/diverged_checkpoints/`
(kept for inspection, out of the resume path), and the newest confirmed one is the run's "last
good" checkpoint. Each checkpoint stores which steps were still unconfirmed when it was written
(in its 'data' item), so a preempted or crashed run resumes with them unconfirmed; other
checkpoints already on disk count as confirmed, and reaching total_steps confirms all. So up to
max_to_keep + ceil(confirm_steps / checkpoint_every_steps) checkpoints are on disk at once.
"""

import collections
import dataclasses
from typing import Optional

import numpy as np

MIN_HISTORY = 10
DATA_KEY = "divergence"


@dataclasses.dataclass
class Verdict:
  healthy: bool
  reason: str = ""


class DivergenceTest:
  """The running-median test on the loss and the parameter norm (see the module docstring)."""

  def __init__(self, factor: float = 10.0, window: int = 100,
               initial_param_norm: Optional[float] = None):
    if factor < 0 or (0 < factor <= 1):
      raise ValueError(f"config.divergence.factor must be 0 (off) or > 1; got {factor}")
    if window < 1:
      raise ValueError(f"config.divergence.window must be positive; got {window}")
    self.factor = float(factor)
    self.losses = collections.deque(maxlen=int(window))
    self.param_norms = collections.deque(maxlen=int(window))
    if initial_param_norm is not None and np.isfinite(initial_param_norm):
      self.param_norms.append(float(initial_param_norm))

  def state(self) -> dict:
    """The running history, saved with each checkpoint so a resumed run keeps its medians."""
    return {"losses": list(self.losses), "param_norms": list(self.param_norms)}

  def load_state(self, state: dict) -> None:
    self.losses.clear()
    self.losses.extend(float(x) for x in state.get("losses", []))
    norms = [float(x) for x in state.get("param_norms", [])]
    if norms:
      self.param_norms.clear()
      self.param_norms.extend(norms)

  def check(self, step: int, loss: float, param_norm: float, finite: bool = True) -> Verdict:
    """The verdict on one step; a healthy step joins the running history."""
    if not finite or not np.isfinite(loss) or not np.isfinite(param_norm):
      return Verdict(False, f"non-finite loss ({loss}), gradient norm or updated state "
                            f"(parameter norm {param_norm}) at step {step}, not applied")
    if self.factor:
      if len(self.losses) >= MIN_HISTORY:
        median = float(np.median(self.losses))
        if loss > self.factor * median:
          return Verdict(False, f"loss {loss:.4g} at step {step} is above {self.factor:g} x the "
                                f"median {median:.4g} of the last {len(self.losses)} steps "
                                "(config.divergence.factor)")
      if self.param_norms:
        median = float(np.median(self.param_norms))
        if param_norm > self.factor * median:
          return Verdict(False, f"parameter norm {param_norm:.4g} after step {step} is above "
                                f"{self.factor:g} x the median {median:.4g} of the last "
                                f"{len(self.param_norms)} steps (config.divergence.factor)")
    self.losses.append(float(loss))
    self.param_norms.append(float(param_norm))
    return Verdict(True)


class CheckpointHealth:
  """Which saved steps are confirmed (see the module docstring); decides what rotation deletes."""

  def __init__(self, existing_steps, confirm_steps: int = 5, max_to_keep: Optional[int] = 3):
    if confirm_steps < 0:
      raise ValueError(f"config.divergence.confirm_steps must be >= 0; got {confirm_steps}")
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"config.max_to_keep must be positive (or None: keep all); got {max_to_keep}")
    self.confirm_steps = int(confirm_steps)
    self.max_to_keep = max_to_keep
    self.confirmed = sorted(int(s) for s in existing_steps)
    self.pending = []

  def saved(self, step: int) -> None:
    self.pending.append(int(step))
    self.healthy_through(step)

  def healthy_through(self, step: int) -> None:
    """Steps up to `step` were healthy: confirms the checkpoints that waited for them."""
    done = [s for s in self.pending if s + self.confirm_steps <= step]
    self.pending = [s for s in self.pending if s not in done]
    self.confirmed = sorted(set(self.confirmed) | set(done))

  def pending_after_saving(self, step: int) -> list:
    """The unconfirmed steps once `step` is saved (stored in that checkpoint, see `resume`)."""
    return sorted(s for s in set(self.pending) | {int(step)} if s + self.confirm_steps > step)

  def resume(self, pending) -> None:
    """Checkpoints the resumed one listed as unconfirmed stay unconfirmed (a stop or crash does
    not make them healthy); the others on disk count as confirmed."""
    pending = {int(s) for s in pending} & set(self.confirmed)
    self.confirmed = [s for s in self.confirmed if s not in pending]
    self.pending = sorted(pending)

  def confirm_all(self) -> None:
    """The run reached config.total_steps without divergence: its last checkpoints are its result."""
    self.confirmed = sorted(set(self.confirmed) | set(self.pending))
    self.pending = []

  def to_delete(self):
    """Confirmed steps beyond the newest `max_to_keep` confirmed ones."""
    if self.max_to_keep is None or len(self.confirmed) <= self.max_to_keep:
      return []
    old = self.confirmed[:-self.max_to_keep]
    self.confirmed = self.confirmed[-self.max_to_keep:]
    return old

  @property
  def last_good(self) -> Optional[int]:
    return self.confirmed[-1] if self.confirmed else None
