"""Two processes on localhost (jax.distributed + gloo, 4 CPU devices each) train like one with 8."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import test_train
from supcon_jax import input_pipeline, train

REPO = test_train.REPO
STEPS = 3
# Reductions compiled for 2x4 devices and run over gloo are ordered differently from 8 devices
# in one process: single gradient elements then differ by ~1e-4 relative after one step. A
# small learning rate keeps that from growing over the steps.
OVERRIDES = {"num_train_steps": STEPS, "optim.base_lr": 0.05}


def synthetic_batches(config, mesh, *, start_step=0):
  """The same global batches whatever the process count; each process feeds its rows.

  (The real pipeline gives each process its own part of the split, so its global batches
  depend on the process count by design; this isolates the trainer's distributed path.)
  """
  b, v, s = config.batch_size, config.data.num_views, config.data.image_size
  rows = b // jax.process_count()
  lo = jax.process_index() * rows
  for step in range(start_step, 1 << 30):
    rng = np.random.default_rng(step)
    images = rng.normal(size=(b, v, s, s, 1)).astype(np.float32)
    labels = rng.integers(0, 4, size=b).astype(np.int32)
    yield input_pipeline.to_global_arrays(
        {"images": images[lo:lo + rows], "labels": labels[lo:lo + rows]}, mesh)


_WORKER = """
import sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from supcon_jax import distributed
distributed.initialize("localhost:{port}", 2, {pid})
from supcon_jax import input_pipeline, train
import test_multihost, test_train
input_pipeline.create_train_iterator = test_multihost.synthetic_batches
train.train_and_evaluate(test_train.tiny_config({data_dir!r}, **test_multihost.OVERRIDES), {workdir!r})
import jax
print("topology", jax.process_index(), jax.process_count(), jax.local_device_count(),
      jax.device_count())
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_8_devices(fashion_mnist_dir, tmp_path,
                                                         monkeypatch, cpu_env):
  multi = str(tmp_path / "two_processes")
  env = cpu_env(4)
  port = _free_port()
  workers = [subprocess.Popen(
      [sys.executable, "-c", _WORKER.format(repo=REPO, tests=os.path.join(REPO, "tests"),
                                            port=port, pid=pid, data_dir=fashion_mnist_dir,
                                            workdir=multi)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for pid in range(2)]
  logs = [w.communicate(timeout=900)[0] for w in workers]
  for pid, (worker, log) in enumerate(zip(workers, logs)):
    assert worker.returncode == 0, f"process {pid} failed:\n{log[-4000:]}"
  assert "topology 1 2 4 8" in logs[1]

  single = str(tmp_path / "one_process")
  monkeypatch.setattr(input_pipeline, "create_train_iterator", synthetic_batches)
  train.train_and_evaluate(test_train.tiny_config(fashion_mnist_dir, **OVERRIDES),
                           single)
  expected = test_train.saved_state(single, STEPS)
  test_train.assert_trees_close(test_train.saved_state(multi, STEPS, like=expected), expected,
                                rtol=1e-3, atol=1e-4)
