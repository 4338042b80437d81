"""preflight: catches wrong pins and a wrong device count before a run starts."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from supcon_jax import preflight

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_problems_name_each_unmet_pin(tmp_path, monkeypatch):
  requirements = tmp_path / "requirements.txt"
  requirements.write_text(
      "# comment\n"
      f"jax[tpu]=={jax.__version__}  # extras do not hide the pin\n"
      f"pytest=={pytest.__version__}\n"
      "numpy==0.0.1\n"
      "no-such-package-supcon==1.0\n"
      "-r other.txt\n")
  assert preflight.version_problems(str(requirements)) == [
      f"numpy: {np.__version__}, pinned 0.0.1 in {requirements}.",
      f"no-such-package-supcon: not installed, pinned 1.0 in {requirements}."]
  monkeypatch.setattr(preflight, "MIN_PYTHON", (sys.version_info[0] + 1, 0))
  assert "which jax 0.10.2 requires" in preflight.version_problems(str(requirements))[0]


def test_this_checkout_matches_its_pins():
  assert preflight.version_problems(preflight.REQUIREMENTS) == []


def _preflight(cpu_env, *flags):
  env = cpu_env(4)
  return subprocess.run([sys.executable, "-m", "supcon_jax.preflight", *flags], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)


def test_preflight_prints_the_job_and_fails_on_a_wrong_count(cpu_env):
  ok = _preflight(cpu_env, "--expect_platform=cpu", "--expect_devices=4")
  assert ok.returncode == 0, ok.stderr
  assert "process 0 of 1: 4 local of 4 cpu devices" in ok.stdout
  bad = _preflight(cpu_env, "--expect_platform=tpu", "--expect_devices=32")
  assert bad.returncode == 1
  assert "jax runs on cpu, expected tpu" in bad.stderr
  assert "the job sees 4 devices, expected 32" in bad.stderr
