"""The two parallel forms of the train step (train.py's module docstring says when to use which).

- `JitParallel`: `jax.jit` over a 1-D device mesh (axis MESH_AXIS); state replicated, the global
  batch sharded on 'data', so batch norm's moments are global-batch moments (v3 §4.1) with no
  collective of its own; multi-host: every process feeds its local rows.
- `PmapParallel`: `jax.pmap` over the local devices with axis AXIS_NAME; the models' batch norm
  averages its moments over that axis (config.model.bn_axis_name).

Both expose put_state / get_state / abstract_state / put_batch / get_metrics and `step`.
"""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

AXIS_NAME = "batch"   # pmap axis (config.model.bn_axis_name under pmap)
MESH_AXIS = "data"    # mesh axis the batch is sharded on under jit


class JitParallel:
  """The step under jax.jit over a 1-D device mesh; state replicated, batch sharded on 'data'."""

  name = "jit"

  def __init__(self, step_fn, devices=None):
    self.mesh = Mesh(np.asarray(devices if devices is not None else jax.devices()), (MESH_AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P(MESH_AXIS))
    self.step = jax.jit(step_fn, in_shardings=(self.replicated, self.batch_sharding),
                        out_shardings=(self.replicated, self.replicated), donate_argnums=0)

  def put_state(self, state):
    return jax.device_put(state, self.replicated)

  def get_state(self, state):
    return state

  def abstract_state(self, state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=self.replicated),
                        state)

  def put_batch(self, batch):
    """Process-local NumPy batch -> global arrays sharded on 'data'."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(batch[k]))
            for k in ("image", "label")}

  def get_metrics(self, metrics):
    return jax.device_get(metrics)


class PmapParallel:
  """The step under jax.pmap over the local devices; state replicated along a leading axis."""

  name = "pmap"

  def __init__(self, step_fn, devices=None):
    self.devices = list(devices if devices is not None else jax.local_devices())
    self.step = jax.pmap(step_fn, axis_name=AXIS_NAME, devices=self.devices, donate_argnums=0)

  def put_state(self, state):
    n = len(self.devices)
    stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), state)
    return jax.pmap(lambda x: x, devices=self.devices)(stacked)

  def get_state(self, state):
    return jax.tree.map(lambda x: np.asarray(x[0]), jax.device_get(state))

  def abstract_state(self, state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), state)

  def put_batch(self, batch):
    n = len(self.devices)

    def split(x):
      x = np.asarray(x)
      if x.shape[0] % n:
        raise ValueError(f"local batch of {x.shape[0]} is not divisible by {n} local devices")
      return x.reshape((n, x.shape[0] // n) + x.shape[1:])

    return {k: split(batch[k]) for k in ("image", "label")}

  def get_metrics(self, metrics):
    return jax.tree.map(lambda x: np.asarray(x[0]), jax.device_get(metrics))


def make_parallel(config, step_fn, devices=None):
  if config.parallelism == "pmap":
    return PmapParallel(step_fn, devices)
  return JitParallel(step_fn, devices)
