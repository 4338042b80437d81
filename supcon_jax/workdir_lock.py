"""One trainer per workdir: WORKDIR/.lock, held with flock(2) for as long as the run lasts.

Two trainers on one workdir would write the same checkpoint steps over each other. The kernel
drops an flock when its holder dies, so a lock left by a killed run (kill -9, a crash, a lost
node) never blocks a rerun. A multi-host job takes one lock, on process 0, for all its
processes. Workdirs on object stores (gs://...) have no file locks and are not locked.
"""
import contextlib
import fcntl
import json
import os
import socket
import time
from typing import Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

LOCK_FILE = ".lock"


class WorkdirLockedError(RuntimeError):
  """Another trainer holds the workdir."""


def _holder(fd: int) -> str:
  """Who holds the lock, from what it wrote into the lock file."""
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    info = json.loads(os.read(fd, 4096).decode() or "{}")
  except ValueError:
    info = {}
  if not info:
    return "a trainer that is just starting"
  return f"pid {info['pid']} on host {info['host']}, started {info['started']}"


def _try_lock(path: str) -> tuple[int, str]:
  """(fd, "") with the lock held, or (-1, who holds it)."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _holder(fd)
    os.close(fd)
    return -1, holder
  os.ftruncate(fd, 0)
  os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
  os.fsync(fd)
  return fd, ""


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds WORKDIR/.lock while the block runs; raises WorkdirLockedError, naming the holder,
  if another trainer has it. Creates `workdir`. Call it on every process of a job."""
  if "://" in workdir:
    logging.info("Workdir %s is on an object store: it cannot be locked; make sure that only "
                 "one trainer uses it.", workdir)
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  fd, holder = -1, ""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    fd, holder = _try_lock(path)
  locked = fd >= 0
  if jax.process_count() > 1:
    locked = bool(multihost_utils.broadcast_one_to_all(np.int32(locked)))
  if not locked:
    raise WorkdirLockedError(
        f"Workdir {workdir} is in use by another trainer ("
        f"{holder or 'see the message of process 0'}; lock file {path}). Two trainers would "
        "overwrite each other's checkpoints: wait for it to finish or stop it, or use another "
        "--workdir.")
  try:
    yield
  finally:
    if fd >= 0:
      os.ftruncate(fd, 0)  # the next reader sees no stale holder
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
