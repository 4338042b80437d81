"""The console: a short, readable default output; the libraries' INFO logs only on request."""
import json
import logging
import os
import subprocess
import sys

import pytest

from supcon_jax import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/fashion_mnist.py shrunk to seconds: a tiny ResNet on a slice of the real data.
TINY_FLAGS = (
    "--config.batch_size=16", "--config.num_train_steps=4", "--config.data.train_split=train[:64]",
    "--config.data.eval_split=test[:40]", "--config.data.image_size=16",
    "--config.model.width=0.125", "--config.model.head_dims=(16, 8)",
    "--config.train.log_every_steps=2", "--config.train.checkpoint_every_steps=2")


def _record(path: str, level: int) -> logging.LogRecord:
  return logging.LogRecord("absl", level, path, 1, "message", None, None)


def test_filter_passes_our_info_and_everyones_warnings():
  own_info = console.OwnInfoOnly()
  ours = os.path.join(REPO, "supcon_jax", "train.py")
  theirs = os.path.join(os.path.dirname(logging.__file__), "orbax", "checkpoint", "manager.py")
  assert own_info.filter(_record(ours, logging.INFO))
  assert not own_info.filter(_record(theirs, logging.INFO))
  assert own_info.filter(_record(theirs, logging.WARNING))
  read_only = logging.LogRecord("absl", logging.WARNING, theirs, 1,
                                "Given directory is read only=%s", ("/tmp/x",), None)
  assert not own_info.filter(read_only)  # orbax's note on every read-only manager


def test_duration_and_progress_line():
  assert console.duration(3725.4) == "1:02:05"
  line = console.progress_line(50, 200, {"loss": 1.23456, "probe_top1": 0.5,
                                         "learning_rate": 0.3}, steps_per_sec=2.0,
                               images_per_sec=512.0)
  assert line.startswith("step  50/200 ( 25%)")
  assert "loss 1.2346" in line and "probe top-1 0.500" in line and "lr 0.3" in line
  assert "ETA 0:01:15" in line  # 150 steps at 2 steps/s


@pytest.mark.slow
def test_default_run_prints_a_short_readable_console(fashion_mnist_dir, tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # one device, as a user's laptop
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "supcon_jax.main", "--config=configs/fashion_mnist.py",
       f"--workdir={workdir}", f"--config.data.data_dir={fashion_mnist_dir}",
       "--config.optim.base_lr=0.7", *TINY_FLAGS],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = (proc.stdout + proc.stderr).strip().splitlines()
  assert len(lines) <= 40, "\n".join(lines)
  text = "\n".join(lines)
  for chatter in ("orbax", "Finished saving", "tensorflow_datasets", "oneDNN", "[Hyperparameters]",
                  "absl::InitializeLog"):
    assert chatter not in text, text
  assert "step 2/4" in text and "step 4/4" in text and "ETA" in text
  assert lines[-1].startswith("Result: online probe top-1")
  assert str(workdir) in text
  with open(workdir / "config.json") as f:
    assert json.load(f)["optim"]["base_lr"] == 0.7  # the command-line override, in full
  assert "encoder/" in (workdir / "parameters.txt").read_text()
  steps = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
  assert steps == [2, 4]  # the interval and the end, not step 1

  # README command 1's second half: the linear evaluation ends on its figure and the
  # figures to read it against.
  proc = subprocess.run(
      [sys.executable, "-m", "supcon_jax.linear_eval", "--config=configs/fashion_mnist.py",
       f"--workdir={workdir}", f"--config.data.data_dir={fashion_mnist_dir}",
       "--config.optim.base_lr=0.7", *TINY_FLAGS, "--config.probe.epochs=2",
       "--config.probe.corruptions=('contrast',)", "--config.probe.corruption_split=test[:16]",
       "--config.probe.tsne_examples=0"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = (proc.stdout + proc.stderr).strip().splitlines()
  assert len(lines) <= 12, "\n".join(lines)
  assert "orbax" not in "\n".join(lines)
  assert lines[-2].startswith("Result: linear probe top-1 ")
  assert lines[-1].startswith("Compare: linear probe on raw pixels (this run) ")
  assert "cross-entropy encoder, same budget (README)" in lines[-1]
