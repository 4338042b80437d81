"""Launch scripts: shellcheck, --dry-run output, and tpu.sh's whole job against a fake gcloud.

tests/fake_gcloud.py plays a queued resource (WAITING_FOR_RESOURCES -> ACTIVE -> SUSPENDED ->
deleted) and runs each `tpu-vm ssh` command with bash in a per-worker home, where stub `python3`,
`uv` and venv `python` programs stand in for the TPU image and the trainer. The commands the
launcher sends therefore really run: quoting, nohup, pid/exit files, stopping.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_SH = os.path.join(REPO, "launch", "tpu.sh")
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "**", "*.sh"), recursive=True)
                 + glob.glob(os.path.join(REPO, "launch", "**", "*.sbatch"), recursive=True))

# The TPU image's Python 3.10: only `python3 -m pip install --user uv==V` is expected of it.
SYSTEM_PYTHON = """#!/bin/bash
echo "$FAKE_WORKER python3 $*" >> "$FAKE_GCLOUD_DIR/setup.log"
[ "$1 $2 $3 $4" = "-m pip install --quiet" ] || exit 1
mkdir -p ~/.local/bin && cp "$FAKE_GCLOUD_DIR/stubs/uv" ~/.local/bin/uv
"""
UV = """#!/bin/bash
echo "$FAKE_WORKER uv $*" >> "$FAKE_GCLOUD_DIR/setup.log"
if [ "$1" = venv ]; then mkdir -p .venv/bin && cp "$FAKE_GCLOUD_DIR/stubs/python" .venv/bin/python; fi
"""
# The venv's python: logs its command line, then acts out the next line of ~/.fake_<job>:
# ok, fail, maintenance (saved on SIGTERM: exit 75), hang (until SIGTERM, then save: 75),
# vanish (killed with its wrapper, no exit status: a host restart), or preempt (the queued
# resource goes SUSPENDED, then hang).
TRAINER = """#!/bin/bash
log="$FAKE_GCLOUD_DIR/python.log"
printf '%s %s %s\\n' "$FAKE_WORKER" "${SUPCON_TPU_SLICE:-unset}" "$(printf '%q ' "$@")" >> "$log"
case "$2" in
  supcon_jax.main) job=train ;;
  supcon_jax.linear_eval) job=eval ;;
  *) exit 0 ;;
esac
plan=~/.fake_$job
behaviour="$(head -n 1 "$plan")"
[ "$(wc -l < "$plan")" -le 1 ] || sed -i 1d "$plan"
hang() {
  trap 'echo "$FAKE_WORKER $job SIGTERM" >> "$log"; exit 75' TERM
  while :; do sleep 0.05; done
}
case "$behaviour" in
  ok) exit 0 ;;
  fail) echo "worker $FAKE_WORKER: boom" >&2; exit 1 ;;
  maintenance) exit 75 ;;
  vanish) kill -KILL "$PPID" "$$" ;;
  preempt) echo SUSPENDED > "$FAKE_GCLOUD_DIR/forced_state"; hang ;;
  hang) hang ;;
esac
"""
WAIT = ["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"]


class FakeCloud:
  """A fake gcloud on PATH, a git repository for the workers to clone, and what happened."""

  def __init__(self, tmp_path):
    self.dir = str(tmp_path / "cloud")
    for sub in ("bin", "stubs", "path"):
      os.makedirs(os.path.join(self.dir, sub))
    for where, name, text in [("bin", "python3", SYSTEM_PYTHON), ("stubs", "uv", UV),
                              ("stubs", "python", TRAINER),
                              ("path", "gcloud", f'#!/bin/sh\nexec "{sys.executable}" '
                               f'"{REPO}/tests/fake_gcloud.py" "$@"\n')]:
      path = os.path.join(self.dir, where, name)
      with open(path, "w") as f:
        f.write(text)
      os.chmod(path, 0o755)
    self.source = str(tmp_path / "source")
    os.makedirs(self.source)
    with open(os.path.join(self.source, "requirements.txt"), "w") as f:
      f.write("jax==0.10.2\njaxlib==0.10.2\nflax==0.12.8\n")
    git = ["git", "-C", self.source, "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", self.source], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "init"], check=True)
    self.commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True,
                                 text=True).stdout.strip()

  def env(self, **extra):
    return {**os.environ, "PATH": f"{self.dir}/path:{os.environ['PATH']}",
            "FAKE_GCLOUD_DIR": self.dir, "POLL_SECONDS": "0.05", **extra}

  def tpu(self, *args, scenario=None, timeout=120):
    """Runs tpu.sh with this checkout's source and a bucket; returns the CompletedProcess."""
    if scenario is not None:
      with open(os.path.join(self.dir, "scenario.json"), "w") as f:
        json.dump(scenario, f)
    return subprocess.run(
        ["bash", TPU_SH, "--name=t", "--bucket=bk", f"--repo=file://{self.source}",
         f"--ref={self.commit}", *args], capture_output=True, text=True, env=self.env(),
        timeout=timeout)

  def calls(self):
    """gcloud calls as (kind verb, argv), ssh commands shortened to the worker function."""
    path = os.path.join(self.dir, "calls.log")
    if not os.path.exists(path):
      return []
    out = []
    with open(path) as f:
      for line in f:
        argv = json.loads(line)
        args = argv[1:] if argv[0] == "alpha" else argv
        name = f"{args[2]} {args[3]}"
        if args[3] == "ssh":
          command = next(a for a in args if a.startswith("--command="))
          match = re.search(r"; (worker_start \w+|worker_\w+)", command)
          name += " " + (match.group(1) if match else command.split()[-1])
        out.append((name, argv))
    return out

  def names(self, skip_polls=True):
    polls = ("queued-resources describe", "tpu-vm describe", "tpu-vm ssh worker_status")
    return [n for n, _ in self.calls() if not (skip_polls and n.startswith(polls))]

  def log(self, name):
    path = os.path.join(self.dir, name)
    return open(path).read().splitlines() if os.path.exists(path) else []


@pytest.fixture
def cloud(tmp_path):
  return FakeCloud(tmp_path)


def scenario(states, train, evaluation=(("ok",),), workers=2):
  return dict(workers=workers, states=[list(s) for s in states],
              train=[list(t) if isinstance(t[0], str) else [list(w) for w in t] for t in train],
              eval=[list(e) for e in evaluation])


def test_there_are_scripts():
  names = {os.path.relpath(s, REPO) for s in SCRIPTS}
  assert {"launch/tpu.sh", "launch/local_multiprocess.sh", "launch/prepare_imagenet.sh",
          "launch/slurm/train.sbatch"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: os.path.relpath(s, REPO))
def test_script_parses_and_passes_shellcheck(script):
  subprocess.run(["bash", "-n", script], check=True)
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (apt-get install shellcheck; .ci/run does)")
  proc = subprocess.run(["shellcheck", "-x", script], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: os.path.relpath(s, REPO))
def test_arrays_that_may_be_empty_are_expanded_the_bash_3_2_way(script):
  """bash < 4.4 (macOS: 3.2) calls an empty "${a[@]}" unbound under set -u; ${a[@]+...} is safe."""
  with open(script) as f:
    text = f.read()
  for name in re.findall(r"\b(\w+)=\(\)", text):
    assert not re.findall(r'(?<!\+)"\$\{%s\[@\]\}"' % name, text), name


def dry(*args, **env):
  proc = subprocess.run(["bash", TPU_SH, "--dry-run", *args], capture_output=True, text=True,
                        env={**os.environ, **env}, cwd="/")
  assert proc.returncode == 0, proc.stderr
  # %q-quoted output: undo the escapes that matter for matching.
  return proc.stdout.replace("\\ ", " ").replace("\\&", "&").replace("\\>", ">")


# From https://cloud.google.com/tpu/docs/runtimes, .../regions-zones, .../autocheckpoint.
@pytest.mark.parametrize("accelerator,runtime,zone,autocheckpoint", [
    ("v4-32", "tpu-ubuntu2204-base", "us-central2-b", True),
    ("v5litepod-16", "v2-alpha-tpuv5-lite", "us-west4-a", True),
    ("v5p-64", "v2-alpha-tpuv5", "us-east5-a", False),
    ("v6e-16", "v2-alpha-tpuv6e", "us-east5-b", False),
])
def test_accelerator_picks_runtime_zone_and_autocheckpoint(accelerator, runtime, zone,
                                                           autocheckpoint):
  out = dry("--project=p", "--name=t", f"--accelerator={accelerator}", "create")
  gcloud = "gcloud alpha compute" if autocheckpoint else "gcloud compute"
  assert (f"{gcloud} tpus queued-resources create t --project=p --zone={zone} --node-id=t "
          f"--accelerator-type={accelerator} --runtime-version={runtime}") in out
  assert ("--autocheckpoint-enabled" in out) == autocheckpoint
  assert "--spot" not in out
  assert "--spot" in dry("--name=t", "--spot", "create", ACCELERATOR=accelerator)


@pytest.mark.parametrize("flags,message", [
    (["--accelerator=v3-8"], "unknown accelerator 'v3-8'"),
    (["--accelerator=v5p"], "unknown accelerator 'v5p'"),
    (["--accelerator=v5p-x8"], "must end in a number"),
    (["--accelerator=v5p-64", "--version=tpu-ubuntu2204-base"],
     "runtime version 'tpu-ubuntu2204-base' does not match v5p-64"),
    (["--accelerator=v4-32", "--zone=us-east5-a"], "v4-32 is not offered in zone 'us-east5-a'"),
    (["--accelerator=v6e-8", "--max-attempts=0"], "--max-attempts"),
])
def test_bad_combinations_are_refused_before_any_gcloud_call(cloud, flags, message):
  proc = cloud.tpu(*flags, "job", scenario=scenario([WAIT], [["ok"]]))
  assert proc.returncode == 2 and message in proc.stderr
  assert cloud.calls() == []


def test_dry_run_train_eval_logs_stop_delete():
  out = dry("--name=t", "--repo=https://example.com/supcon_jax.git", "--ref=abc", "setup")
  assert "--worker=all" in out and "worker_setup https://example.com/supcon_jax.git abc" in out
  out = dry("--name=t", "--bucket=bk", "train", "--", "--config.batch_size=4096")
  assert ("worker_start train supcon_jax.main --config=configs/imagenet_r50.py "
          "--workdir=gs://bk/runs/imagenet_r50") in out
  assert "--config.data.data_dir=gs://bk/tensorflow_datasets --config.batch_size=4096" in out
  out = dry("--name=t", "--bucket=bk", "--config=configs/imagenet_r200.py", "eval")
  assert ("worker_start eval supcon_jax.linear_eval --config=configs/imagenet_r200.py "
          "--workdir=gs://bk/runs/imagenet_r200") in out
  assert "--zone=us-central1-a" in dry("--accelerator=v5p-64", "--zone=us-central1-a", "create")
  assert "--worker=all" in dry("--name=t", "logs")
  assert "worker_stop 1 train eval" in dry("--name=t", "stop")
  assert "gcloud compute tpus queued-resources delete t" in dry("--name=t", "delete")


def test_train_without_a_bucket_and_unknown_flags_fail_clearly():
  proc = subprocess.run(["bash", TPU_SH, "--dry-run", "train"], capture_output=True, text=True)
  assert proc.returncode == 2 and "--bucket" in proc.stderr
  proc = subprocess.run(["bash", TPU_SH, "--zone", "x"], capture_output=True, text=True)
  assert proc.returncode == 2 and "unknown flag --zone" in proc.stderr


def test_job_creates_waits_sets_up_trains_evaluates_and_deletes(cloud):
  proc = cloud.tpu("--accelerator=v5litepod-16", "job", "--", "--config.note=two words",
                   scenario=scenario([WAIT], [["ok"]]))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert cloud.names() == [
      "queued-resources create", "tpu-vm ssh worker_setup", "tpu-vm ssh --expect_devices=16",
      "tpu-vm ssh worker_start train", "tpu-vm ssh worker_start eval",
      "queued-resources delete"]
  calls = cloud.calls()
  create = next(argv for name, argv in calls if name == "queued-resources create")
  assert create[:5] == ["alpha", "compute", "tpus", "queued-resources", "create"]
  assert "--autocheckpoint-enabled" in create and "--spot" not in create
  # Setup waited for ACTIVE and a READY node; it ran only after the request left the queue.
  polls = [n for n, _ in calls[:[n for n, _ in calls].index("tpu-vm ssh worker_setup")]]
  assert polls.count("queued-resources describe") == len(WAIT) + 1  # + the existence check
  assert "uv==0.13.8" in "\n".join(cloud.log("setup.log"))
  assert "venv --quiet --python 3.11 --python-preference only-managed .venv" in "\n".join(
      cloud.log("setup.log"))
  runs = cloud.log("python.log")
  for worker in "01":
    mine = [line for line in runs if line.startswith(worker + " ")]
    assert mine[0].startswith(f"{worker} unset -m supcon_jax.preflight --notopology")
    assert mine[1].startswith(f"{worker} 1 -m supcon_jax.preflight --expect_platform=tpu")
    assert mine[2] == (f"{worker} 1 -m supcon_jax.main --config=configs/imagenet_r50.py "
                       "--workdir=gs://bk/runs/imagenet_r50 "
                       "--config.data.data_dir=gs://bk/tensorflow_datasets "
                       "--config.note=two\\ words ")
    assert mine[3].startswith(f"{worker} 1 -m supcon_jax.linear_eval ")


def test_spot_preemption_recreates_the_slice_and_resumes_training(cloud):
  proc = cloud.tpu("--accelerator=v5p-16", "--spot", "job",
                   scenario=scenario([WAIT, ["ACTIVE"]], [["preempt"], ["ok"]]))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert cloud.names() == [
      "queued-resources create", "tpu-vm ssh worker_setup", "tpu-vm ssh --expect_devices=8",
      "tpu-vm ssh worker_start train",
      "queued-resources delete",  # SUSPENDED stays until deleted
      "queued-resources create", "tpu-vm ssh worker_setup", "tpu-vm ssh --expect_devices=8",
      "tpu-vm ssh worker_start train", "tpu-vm ssh worker_start eval",
      "queued-resources delete"]
  creates = [argv for name, argv in cloud.calls() if name == "queued-resources create"]
  assert creates[0] == creates[1] and "--spot" in creates[0] and creates[0][0] == "compute"
  trains = [line.split(" ", 2)[2] for line in cloud.log("python.log") if "supcon_jax.main" in line]
  assert len(trains) == 4 and len(set(trains)) == 1  # same workdir: the trainer resumes
  assert "preempted during train" in proc.stderr


def test_maintenance_stop_resumes_on_the_same_slice(cloud):
  proc = cloud.tpu("--accelerator=v4-16", "job",
                   scenario=scenario([["ACTIVE"]], [["maintenance", "ok"]]))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert cloud.names().count("queued-resources create") == 1
  assert cloud.names().count("tpu-vm ssh worker_start train") == 2


def test_a_worker_that_lost_its_process_stops_the_others_and_resumes(cloud):
  proc = cloud.tpu("--accelerator=v6e-16", "job",
                   scenario=scenario([["ACTIVE"]], [[["vanish", "ok"], ["hang", "ok"]]]))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "lost its train process" in proc.stderr
  assert "1 train SIGTERM" in cloud.log("python.log")
  names = cloud.names()
  assert names.count("queued-resources create") == 1
  assert names.count("tpu-vm ssh worker_start train") == 2


def test_preemptions_are_bounded_and_the_slice_is_deleted(cloud):
  proc = cloud.tpu("--accelerator=v5p-16", "--spot", "--max-attempts=2", "job",
                   scenario=scenario([["ACTIVE"]], [["preempt"]]))
  assert proc.returncode == 1
  assert "interrupted 2 times; giving up" in proc.stderr
  names = cloud.names()
  assert names.count("queued-resources create") == 2 and names[-1] == "queued-resources delete"


def test_a_failing_worker_stops_the_others_and_the_slice_is_deleted(cloud):
  proc = cloud.tpu("--accelerator=v6e-16", "job",
                   scenario=scenario([["ACTIVE"]], [[["hang"], ["fail"]]]))
  assert proc.returncode == 1
  assert "[" in proc.stderr and "boom" in proc.stderr  # the failing worker's log is shown
  assert "0 train SIGTERM" in cloud.log("python.log")  # worker 0 was stopped, not left running
  names = cloud.names()
  assert "tpu-vm ssh worker_start eval" not in names
  assert names[-1] == "queued-resources delete"


def test_a_failed_request_is_deleted(cloud):
  proc = cloud.tpu("--accelerator=v6e-16", "job",
                   scenario=scenario([["WAITING_FOR_RESOURCES", "FAILED"]], [["ok"]]))
  assert proc.returncode == 1
  assert cloud.names() == ["queued-resources create", "queued-resources delete"]
  assert "state: FAILED" in proc.stderr  # the request's details, for the reason


def test_an_existing_queued_resource_is_neither_reused_nor_deleted(cloud):
  assert cloud.tpu("--accelerator=v6e-16", "create",
                   scenario=scenario([["ACTIVE"]], [["ok"]])).returncode == 0
  proc = cloud.tpu("--accelerator=v6e-16", "job")
  assert proc.returncode == 2 and "exists (ACTIVE)" in proc.stderr
  assert "queued-resources delete" not in cloud.names()


def test_stop_makes_the_trainers_save_and_train_return(cloud):
  env_scenario = scenario([["ACTIVE"]], [["hang"]])
  assert cloud.tpu("--accelerator=v6e-16", "create", scenario=env_scenario).returncode == 0
  assert cloud.tpu("--accelerator=v6e-16", "setup").returncode == 0
  train = subprocess.Popen(
      ["bash", TPU_SH, "--name=t", "--bucket=bk", "--accelerator=v6e-16", "train"],
      env=cloud.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 60
  while sum("supcon_jax.main" in line for line in cloud.log("python.log")) < 2:
    assert time.time() < deadline and train.poll() is None
    time.sleep(0.1)
  assert cloud.tpu("--accelerator=v6e-16", "stop").returncode == 0
  assert train.wait(timeout=60) == 2
  assert {"0 train SIGTERM", "1 train SIGTERM"} <= set(cloud.log("python.log"))


def _checkout_with_origin(tmp_path, origin, pushed):
  """A copy of launch/ in a git repo whose origin is `origin`; HEAD pushed or not."""
  repo = tmp_path / "checkout"
  shutil.copytree(os.path.join(REPO, "launch"), repo / "launch")
  git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run(["git", "init", "-q", str(repo)], check=True)
  subprocess.run(git + ["add", "."], check=True)
  subprocess.run(git + ["commit", "-qm", "x"], check=True)
  subprocess.run(git + ["remote", "add", "origin", origin], check=True)
  if pushed:
    subprocess.run(git + ["update-ref", "refs/remotes/origin/main", "HEAD"], check=True)
  head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout
  return str(repo / "launch" / "tpu.sh"), head.strip()


def test_workers_clone_origin_over_https_at_a_pushed_commit(tmp_path):
  script, head = _checkout_with_origin(tmp_path, "git@github.com:owner/supcon_jax.git", True)
  proc = subprocess.run(["bash", script, "--dry-run", "--name=t", "setup"],
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert f"worker_setup https://github.com/owner/supcon_jax.git {head}" in proc.stdout


def test_an_unpushed_head_is_refused(tmp_path):
  script, head = _checkout_with_origin(tmp_path, "https://github.com/owner/supcon_jax.git", False)
  proc = subprocess.run(["bash", script, "--dry-run", "--name=t", "setup"],
                        capture_output=True, text=True)
  assert proc.returncode == 2 and f"HEAD {head} is not on any pushed branch" in proc.stderr


def test_slurm_starts_one_task_per_gpu():
  """jax's SLURM detection gives each task one local device (SLURM_LOCALID)."""
  with open(os.path.join(REPO, "launch", "slurm", "train.sbatch")) as f:
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", f.read(), re.M))
  assert directives["ntasks-per-node"] == directives["gpus-per-node"]


def test_imagenet_preparation_requires_the_validation_tar(tmp_path):
  """tfds' imagenet2012 builder only warns when ILSVRC2012_img_val.tar is missing."""
  script = os.path.join(REPO, "launch", "prepare_imagenet.sh")
  (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(b"x")
  args = ["bash", script, "--dry-run", "--bucket=bk", f"--manual_dir={tmp_path}"]
  proc = subprocess.run(args, capture_output=True, text=True)
  assert proc.returncode == 2 and "ILSVRC2012_img_val.tar is missing" in proc.stderr
  (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(b"x")
  proc = subprocess.run(args, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert (f"build imagenet2012 --data_dir=gs://bk/tensorflow_datasets --manual_dir={tmp_path}"
          in proc.stdout)
