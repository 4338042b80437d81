"""Launch scripts: they parse, pass shellcheck, and --dry-run prints the expected commands."""
import glob
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "**", "*.sh"), recursive=True)
                 + glob.glob(os.path.join(REPO, "launch", "**", "*.sbatch"), recursive=True))


def test_there_are_scripts():
  names = {os.path.relpath(s, REPO) for s in SCRIPTS}
  assert {"launch/tpu.sh", "launch/local_multiprocess.sh", "launch/slurm/train.sbatch"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: os.path.relpath(s, REPO))
def test_script_parses_and_passes_shellcheck(script):
  subprocess.run(["bash", "-n", script], check=True)
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (apt-get install shellcheck; .ci/run does)")
  proc = subprocess.run(["shellcheck", "-x", script], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def tpu(*args, **env):
  proc = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu.sh"), "--dry-run", *args],
                        capture_output=True, text=True, env={**os.environ, **env}, cwd="/")
  assert proc.returncode == 0, proc.stderr
  # %q-quoted output: undo the escapes that matter for matching.
  return proc.stdout.replace("\\ ", " ").replace("\\&", "&").replace("\\>", ">")


def test_dry_run_create_on_demand_and_spot():
  out = tpu("--project=p", "--zone=us-central2-b", "--name=t", "--accelerator=v4-32", "create")
  assert ("gcloud compute tpus tpu-vm create t --project=p --zone=us-central2-b "
          "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base") in out
  out = tpu("--name=t", "--spot", "create", ACCELERATOR="v5p-64")
  assert "gcloud compute tpus queued-resources create t" in out
  assert "--accelerator-type=v5p-64" in out and "--spot" in out


def test_dry_run_setup_train_eval_logs_delete():
  out = tpu("--name=t", "--repo=https://example.com/supcon_jax.git", "--ref=abc", "setup")
  assert "--worker=all" in out and "git clone https://example.com/supcon_jax.git" in out
  assert "jax\\[tpu\\]==0.10.2" in out  # %q-escaped brackets
  out = tpu("--name=t", "--bucket=bk", "train", "--", "--config.batch_size=4096")
  assert "--worker=all" in out
  assert ("python -m supcon_jax.main --config=configs/imagenet_r50.py "
          "--workdir=gs://bk/runs/imagenet_r50") in out
  assert "--config.data.data_dir=gs://bk/tensorflow_datasets" in out
  assert "--config.batch_size=4096" in out
  out = tpu("--name=t", "--bucket=bk", "--config=configs/imagenet_r200.py", "eval")
  assert ("python -m supcon_jax.linear_eval --config=configs/imagenet_r200.py "
          "--workdir=gs://bk/runs/imagenet_r200") in out
  assert "--worker=0" in tpu("--name=t", "logs")
  assert "gcloud compute tpus tpu-vm delete t" in tpu("--name=t", "delete")
  assert "gcloud compute tpus queued-resources delete t" in tpu("--name=t", "--spot", "delete")


def test_train_without_a_bucket_and_unknown_flags_fail_clearly():
  proc = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu.sh"), "--dry-run", "train"],
                        capture_output=True, text=True)
  assert proc.returncode == 2 and "--bucket" in proc.stderr
  proc = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu.sh"), "--zone", "x"],
                        capture_output=True, text=True)
  assert proc.returncode == 2 and "unknown flag --zone" in proc.stderr
