"""Optimiser and learning-rate schedules (optax), as the DeepLab papers train.

- SGD with momentum 0.9 (v2 §4.1, v3 §4.1), TF's convention: `v = momentum*v + g; w -= lr*v`.
- Weight decay as an L2 term on the gradient, `g += weight_decay * w`, applied to convolution and
  dense *kernels* only: not to BN scale/offset nor to biases. This is what the official code did:
  TF DeepLab puts slim's l2_regularizer on conv weights only; DeepLab's Caffe prototxts set
  `decay_mult: 0` on biases (v1/v2: 5e-4, v2 §4.1; v3: 1e-4).
- "poly" schedule `base_lr * (1 - step/total_steps)^power`, power 0.9 (v2 §4.1 "Learning rate
  policy", v3 §4.1); v1's "step" policy `base_lr * gamma^floor(step/step_size)` (v1: x0.1 every 2000
  iterations, v2 §4.1); optional linear warmup.
- A learning-rate multiplier for the final classifier (v1/v2: 10x, v2 §4.1: "0.01 for the final
  classifier layer"), chosen by a regex on '/'-joined parameter paths.
- Optional gradient clipping by global norm.
"""

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("poly", "step", "constant")


def learning_rate_schedule(config: ml_collections.ConfigDict) -> Callable[[Any], jax.Array]:
  """step -> learning rate from config.learning_rate / lr_schedule / total_steps / warmup_steps."""
  base_lr = float(config.learning_rate)
  total = int(config.total_steps)
  warmup = int(config.get("warmup_steps", 0))
  kind = config.get("lr_schedule", "poly")
  if total <= 0:
    raise ValueError(f"config.total_steps must be positive; got {total}")
  if kind == "poly":
    power = float(config.get("lr_power", 0.9))

    def main(step):
      frac = jnp.clip(step / total, 0.0, 1.0)
      return base_lr * (1.0 - frac) ** power
  elif kind == "step":
    step_size = int(config.get("lr_step_size", 2000))
    gamma = float(config.get("lr_step_gamma", 0.1))
    if step_size <= 0:
      raise ValueError(f"config.lr_step_size must be positive for lr_schedule='step'; got {step_size}")

    def main(step):
      return base_lr * gamma ** jnp.floor(step / step_size)
  elif kind == "constant":
    def main(step):
      return jnp.asarray(base_lr, jnp.float32) + 0.0 * step
  else:
    raise ValueError(f"unknown config.lr_schedule {kind!r}; expected one of {SCHEDULES}")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    lr = main(step)
    if warmup > 0:
      lr = lr * jnp.minimum(1.0, (step + 1.0) / warmup)
    return lr

  return schedule


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def decay_mask(params) -> Any:
  """True for leaves that get weight decay: those named 'kernel' (conv and dense weights)."""
  return jax.tree_util.tree_map_with_path(lambda p, _: _path_name(p).endswith("kernel"), params)


def classifier_mask(params, pattern: str) -> Any:
  """True for leaves whose '/'-joined path matches `pattern` (re.search)."""
  regex = re.compile(pattern)
  return jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.search(_path_name(p))), params)


def create_optimizer(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
  """The chain clip -> weight decay -> momentum SGD at the scheduled lr -> classifier lr multiplier.

  `params` (or their shapes) are needed to build the decay and classifier masks.
  """
  schedule = learning_rate_schedule(config)
  chain = []
  clip = float(config.get("grad_clip_norm", 0.0) or 0.0)
  if clip > 0:
    chain.append(optax.clip_by_global_norm(clip))
  weight_decay = float(config.get("weight_decay", 0.0))
  if weight_decay > 0:
    chain.append(optax.add_decayed_weights(weight_decay, mask=decay_mask(params)))
  chain.append(optax.sgd(schedule, momentum=float(config.get("momentum", 0.9)) or None))
  mult = float(config.get("classifier_lr_mult", 1.0))
  if mult != 1.0:
    pattern = config.get("classifier_pattern", "")
    mask = classifier_mask(params, pattern)
    if not any(jax.tree.leaves(mask)):
      names = [_path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
      raise ValueError(f"config.classifier_pattern {pattern!r} matches no parameter; "
                       f"parameter names include {names[-6:]}")
    chain.append(optax.masked(optax.scale(mult), mask))
  return optax.chain(*chain)
