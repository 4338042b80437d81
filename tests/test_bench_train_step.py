"""bench.train_step prints its figures, consistent with each other, and nothing of TF's start-up."""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prints_consistent_figures_on_a_quiet_console(cpu_env, fashion_mnist_dir):
  proc = subprocess.run(
      [sys.executable, "-m", "bench.train_step", "--config=configs/fashion_mnist.py",
       f"--config.data.data_dir={fashion_mnist_dir}", "--config.batch_size=8",
       "--config.data.image_size=16", "--steps=2"],
      cwd=REPO, env=cpu_env(2), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for chatter in ("oneDNN", "absl::InitializeLog"):
    assert chatter not in proc.stdout + proc.stderr, proc.stderr
  out = proc.stdout
  assert "supcon resnet18 fashion_mnist batch 8 x 2 views, 16x16x1" in out, out
  assert "devices: 2 x " in out, out
  ms, images, per_device = map(float, re.search(
      r"step time: ([\d.]+) ms\s+images/s: ([\d.]+)\s+images/s/device: ([\d.]+)", out).groups())
  assert abs(images - 8 / (ms / 1e3)) <= 0.01 * images + 0.1
  assert abs(per_device - images / 2) <= 0.1
  flops, achieved = map(float, re.search(
      r"FLOPs/step/device \(XLA cost analysis\): ([\d.e+]+)\s+achieved: ([\d.]+) TFLOP/s",
      out).groups())
  assert flops > 0
  assert abs(achieved - flops / (ms / 1e3) / 1e12) <= 0.01 * achieved + 0.01
  assert "MFU: peak of" in out and "unknown" in out  # a CPU has no known peak
