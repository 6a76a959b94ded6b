"""Two processes (jax.distributed on the CPU, gloo collectives) train in lock step.

The test starts this file twice as worker processes (2 CPU devices each, a 4-device global mesh,
batches assembled with jax.make_array_from_process_local_data) and checks that both end with the
same losses and parameters as one process computing the same global batches, and that a
multi-process orbax checkpoint is written.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

STEPS = 3
GLOBAL_BATCH = 4
CROP = 33


def _config():
  from deeplax import defaults
  from deeplax.models import deeplab
  c = defaults.get_base_config()
  c.model = deeplab.model_config(backbone="resnet_tiny", num_classes=3, output_stride=16,
                                 aspp_features=8, aspp_dropout=0.0, bn_momentum=0.9,
                                 bn_epsilon=1e-3)
  c.batch_size = GLOBAL_BATCH
  c.learning_rate = 0.01
  return c


def _global_batches():
  rng = np.random.default_rng(0)
  out = []
  for _ in range(STEPS):
    image = rng.normal(size=(GLOBAL_BATCH, CROP, CROP, 3)).astype(np.float32)
    out.append({"image": image, "label": image.argmax(-1).astype(np.int32)})
  return out


def _train(process_index, process_count, devices, workdir=None):
  import jax
  from deeplax import checkpoint as ckpt_lib
  from deeplax import models
  from deeplax import train
  config = train.prepare_config(_config(), check_devices=False)
  model = models.build(config.model)
  state, tx = train.create_train_state(config, model, jax.random.PRNGKey(0),
                                       (GLOBAL_BATCH, CROP, CROP, 3))
  parallel = train.JitParallel(train.make_train_step(config, model, tx), devices)
  state = parallel.put_state(state)
  local = GLOBAL_BATCH // process_count
  losses = []
  for batch in _global_batches():
    mine = {k: v[process_index * local:(process_index + 1) * local] for k, v in batch.items()}
    state, metrics = parallel.step(state, parallel.put_batch(mine))
    losses.append(float(metrics["loss"]))
  if workdir:
    manager = ckpt_lib.checkpoint_manager(workdir)
    ckpt_lib.save_train_state(manager, STEPS, state, {"position": STEPS})
    manager.wait_until_finished()
    manager.close()
  params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state["params"])
  return np.asarray(losses), np.concatenate([p.ravel() for p in jax.tree.leaves(params)])


def _worker(process_index, port, out_path, workdir):
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                             process_id=process_index)
  assert jax.process_count() == 2 and jax.device_count() == 4
  losses, params = _train(jax.process_index(), 2, jax.devices(), workdir)
  np.savez(out_path, losses=losses, params=params)
  jax.distributed.shutdown()


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_in_lock_step(tmp_path):
  import jax
  if "jax_cpu_collectives_implementation" not in jax.config.values:
    pytest.skip("this JAX has no CPU collectives option (jax_cpu_collectives_implementation)")
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = str(tmp_path / "run")
  procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(i), str(port),
                             str(tmp_path / f"out{i}.npz"), workdir],
                            env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  outputs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=420)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("multi-process workers timed out")
    outputs.append(out.decode(errors="replace"))
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  results = [np.load(tmp_path / f"out{i}.npz") for i in range(2)]
  np.testing.assert_array_equal(results[0]["losses"], results[1]["losses"])
  np.testing.assert_array_equal(results[0]["params"], results[1]["params"])
  # The same global batches on one device of this process.
  losses, params = _train(0, 1, jax.devices()[:1])
  np.testing.assert_allclose(results[0]["losses"], losses, rtol=1e-5)
  np.testing.assert_allclose(results[0]["params"], params, rtol=1e-4, atol=1e-5)
  from deeplax import checkpoint as ckpt_lib
  assert ckpt_lib.latest_step(workdir) == STEPS


if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
