"""A stand-in for `gcloud compute tpus` that plays a queued resource's life, for test_launch.py.

State lives in $FAKE_GCLOUD_DIR: scenario.json (set by the test), state.json, calls.log (one
JSON argv per call) and homes/N, the home directory of TPU worker N. `tpu-vm ssh` runs the
command with bash in each worker's home, as sshd would; deleting the queued resource kills
what runs there and removes the homes, as losing the VMs does.

scenario.json: {"workers": W, "states": [[state, ...] per created slice],
                "train": [behaviour per created slice], "eval": [...]}. Each describe call
takes the next state of the current slice (the last one stays); a behaviour is a list of
lines ("ok", "fail", "hang", "preempt", "maintenance"), one per start of the job on that slice,
or a list of such lists, one per worker (see test_launch.TRAINER).
"""
import json
import os
import shutil
import signal
import subprocess
import sys

DIR = os.environ["FAKE_GCLOUD_DIR"]


def _path(name):
  return os.path.join(DIR, name)


def _load(name, default):
  if not os.path.exists(_path(name)):
    return default
  with open(_path(name)) as f:
    return json.load(f)


def _save(name, value):
  """Atomically: `tpu.sh stop` may call while `tpu.sh train` polls."""
  with open(_path(name) + f".{os.getpid()}", "w") as f:
    json.dump(value, f)
  os.replace(_path(name) + f".{os.getpid()}", _path(name))


def _flag(args, name):
  return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


def _state(state):
  """The queued resource's current state; a trainer may force one (preempt)."""
  if os.path.exists(_path("forced_state")):
    with open(_path("forced_state")) as f:
      return f.read().strip()
  return state["pending"][0]


def _lose_workers(state):
  for pgid in state["pgids"]:
    try:
      os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  state["pgids"] = []
  shutil.rmtree(_path("homes"), ignore_errors=True)


def _new_workers(scenario, index):
  for worker in range(scenario["workers"]):
    home = os.path.join(_path("homes"), str(worker))
    os.makedirs(home)
    for job in ("train", "eval"):
      plan = scenario[job][min(index, len(scenario[job]) - 1)]
      lines = plan[worker] if isinstance(plan[0], list) else plan
      with open(os.path.join(home, f".fake_{job}"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv):
  with open(_path("calls.log"), "a") as f:
    f.write(json.dumps(argv) + "\n")
  args = argv[1:] if argv[:1] == ["alpha"] else argv
  scenario = _load("scenario.json", None)
  state = _load("state.json", {"created": 0, "exists": False, "pending": [], "pgids": []})
  if args[:3] != ["compute", "tpus", "queued-resources"] and args[:3] != ["compute", "tpus",
                                                                          "tpu-vm"]:
    sys.exit(f"fake gcloud: unsupported {argv}")
  kind, verb, rest = args[2], args[3], args[4:]
  fmt = _flag(rest, "format")
  status = 0
  if kind == "queued-resources" and verb == "create":
    if state["exists"]:
      print("ERROR: ALREADY_EXISTS", file=sys.stderr)
      return 1
    _new_workers(scenario, state["created"])
    state.update(exists=True, pending=list(scenario["states"][min(
        state["created"], len(scenario["states"]) - 1)]))
    state["created"] += 1
    if os.path.exists(_path("forced_state")):
      os.remove(_path("forced_state"))
  elif not state["exists"]:
    print("ERROR: NOT_FOUND", file=sys.stderr)
    status = 1
  elif kind == "queued-resources" and verb == "describe":
    print(_state(state) if fmt == "value(state.state)" else f"state:\n  state: {_state(state)}")
    if len(state["pending"]) > 1:
      state["pending"].pop(0)
  elif kind == "queued-resources" and verb == "delete":
    _lose_workers(state)
    state["exists"] = False
  elif kind == "tpu-vm" and verb == "describe":
    ready = _state(state) == "ACTIVE"
    if fmt == "value(state)":
      print("READY" if ready else "CREATING")
    else:
      assert fmt == "value(networkEndpoints.len())", fmt
      print(scenario["workers"])
  elif kind == "tpu-vm" and verb == "ssh":
    if _state(state) != "ACTIVE":
      print("ERROR: ssh: connect to host: Connection refused", file=sys.stderr)
      status = 255
    else:
      worker = _flag(rest, "worker")
      workers = range(scenario["workers"]) if worker == "all" else [int(worker)]
      for w in workers:
        home = os.path.join(_path("homes"), str(w))
        env = dict(HOME=home, PATH=f"{_path('bin')}:/usr/bin:/bin", FAKE_GCLOUD_DIR=DIR,
                   FAKE_WORKER=str(w), LANG="C")
        proc = subprocess.Popen(["bash", "-c", _flag(rest, "command")], cwd=home, env=env,
                                start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        state["pgids"].append(proc.pid)
        _save("state.json", state)
        out, err = proc.communicate(timeout=60)  # a worker job that kept ssh open hangs here
        sys.stdout.write(out)
        sys.stderr.write(err)
        status = max(status, proc.returncode)
  else:
    sys.exit(f"fake gcloud: unsupported {argv}")
  _save("state.json", state)
  return status


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
