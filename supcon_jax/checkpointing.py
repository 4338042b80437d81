"""Orbax checkpoints of the train state, with the config they were trained with.

Every checkpoint that is restored is checked: its config against the current one, its arrays
for being readable and finite. A damaged checkpoint is reported with its path and reason; when
resuming, the newest intact one is used instead and the damaged one is moved aside, never
deleted.
"""
import gc
import os
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

# Fields that fix the shapes of the saved state (or what it means): a checkpoint cannot be
# restored under a config that changes any of them.
STRUCTURAL_FIELDS = ("method", "model", "optim.name")
# Fields that fix what a step number means for a resumed run: its data position (examples seen
# = step × batch_size, in an order drawn from seed) and its learning rate (schedule of step).
# Changing one would skip or repeat data and jump the schedule, so a resume refuses it.
RESUME_FIELDS = ("seed", "batch_size", "num_epochs", "num_train_steps", "data.dataset",
                 "data.train_split", "data.shuffle_buffer_size", "optim.base_lr",
                 "optim.warmup_epochs", "optim.schedule")
# Checkpoints that cannot be restored are moved here (WORKDIR/damaged_checkpoints/STEP).
DAMAGED_DIR = "damaged_checkpoints"


class CheckpointMismatchError(ValueError):
  """The checkpoint in a workdir was written under an incompatible config."""


class CheckpointDamagedError(RuntimeError):
  """A checkpoint cannot be read, or holds NaN/Inf."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


# What orbax forces on a read-only manager anyway, given up front so that it does not warn.
READ_ONLY_OPTIONS = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                                 save_interval_steps=0)


def create_manager(workdir: str, config: ml_collections.ConfigDict,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """Async manager that keeps the last `train.keep_checkpoints` (read_only: keeps everything).

  When to save is the trainer's decision (every train.checkpoint_every_{epochs,steps}, at the
  end, on preemption): orbax's own interval logic would also save the first step of every run.
  A read-only manager gets the options orbax would force on it anyway, so it does not warn.
  """
  if read_only:
    options = READ_ONLY_OPTIONS
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints,
                                           enable_async_checkpointing=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=("state", "config"))


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         config: ml_collections.ConfigDict) -> None:
  """Saves `state` and `config` as the checkpoint of `step` (asynchronously)."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(config.to_dict())), force=True)


def _lookup(tree: Any, dotted: str) -> Any:
  for key in dotted.split("."):
    tree = tree.get(key) if isinstance(tree, dict) else None
  return tree


def _differences(saved: Any, current: Any, prefix: str) -> list[str]:
  if isinstance(saved, dict) and isinstance(current, dict):
    out = []
    for key in sorted(set(saved) | set(current)):
      out += _differences(saved.get(key), current.get(key), f"{prefix}.{key}")
    return out
  # JSON turns tuples into lists.
  norm = lambda v: list(v) if isinstance(v, (tuple, list)) else v
  return [] if norm(saved) == norm(current) else [f"{prefix} = {saved!r} in the checkpoint, "
                                                  f"{current!r} now"]


def _field_differences(saved_config: dict, current: dict, fields: tuple[str, ...]) -> list[str]:
  diffs = []
  for field in fields:
    diffs += _differences(_lookup(saved_config, field), _lookup(current, field),
                          f"config.{field}")
  return diffs


def check_compatible(saved_config: dict, config: ml_collections.ConfigDict, path: str,
                     resume: bool = False) -> None:
  """Raises CheckpointMismatchError naming every field that differs and matters.

  STRUCTURAL_FIELDS always matter; RESUME_FIELDS too when `resume` (continuing the training
  run rather than evaluating its encoder).
  """
  current = config.to_dict()
  diffs = _field_differences(saved_config, current, STRUCTURAL_FIELDS)
  resume_diffs = _field_differences(saved_config, current, RESUME_FIELDS) if resume else []
  if not diffs and not resume_diffs:
    return
  why = []
  if diffs:
    why.append("the saved state has another structure: " + "; ".join(diffs))
  if resume_diffs:
    why.append("a resumed run counts its data position and learning-rate schedule in steps "
               "of the saved config, so these would skip or repeat data and jump the "
               "schedule: " + "; ".join(resume_diffs))
  raise CheckpointMismatchError(
      f"The checkpoint in {path} was trained with a different config ({'. Also, '.join(why)}). "
      "Use the config it was trained with (e.g. set these fields on the command line), or "
      "another workdir. Nothing in the workdir was changed.")


def read_saved_config(workdir: str, step: Optional[int] = None) -> dict:
  """The config (as a dict) that the checkpoint at `step` (default latest) was written with."""
  with ocp.CheckpointManager(checkpoint_dir(workdir), item_names=("state", "config"),
                             options=READ_ONLY_OPTIONS) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {checkpoint_dir(workdir)}.")
    return _read_config(manager, step)


def _reason(error: BaseException) -> str:
  """The innermost cause of `error`, on one line (orbax wraps tensorstore's reason in pages of
  its spec)."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  return f"{type(error).__name__}: {text[:300]}"


def _step_path(manager: ocp.CheckpointManager, step: int) -> str:
  return str(epath.Path(manager.directory) / str(step))


def _read_config(manager: ocp.CheckpointManager, step: int) -> dict:
  try:
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
        "config"]
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointDamagedError(f"{_step_path(manager, step)}: its config cannot be read "
                                 f"({_reason(e)})") from None


def non_finite_leaves(tree: Any) -> list[str]:
  """Paths of the float leaves of `tree` that hold a NaN or Inf."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [jax.tree_util.keystr(path) for path, x in leaves
          if jnp.issubdtype(x.dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(x)))]


def _ignore_closed_event_loop_noise() -> None:
  """Keeps orbax's abandoned asyncio callbacks quiet after a failed restore.

  When a restore fails, callbacks orbax left on its (then closed) event loop can run when they
  are garbage-collected and print "Exception ignored ... RuntimeError: Event loop is closed"
  tracebacks: harmless, and the failure itself is reported in one line. Exactly that exception
  is dropped; every other one still reaches the previous sys.unraisablehook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "ignores_closed_event_loop", False):
    return

  def hook(unraisable) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  hook.ignores_closed_event_loop = True
  sys.unraisablehook = hook
  gc.collect()  # let what the failed restore left behind go now, under the hook


def _load(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
          config: ml_collections.ConfigDict, resume: bool) -> Any:
  """The state of `step`; CheckpointDamagedError if unreadable or not finite."""
  check_compatible(_read_config(manager, step), config, str(manager.directory), resume)
  try:
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))["state"]
  except Exception as e:  # pylint: disable=broad-except
    _ignore_closed_event_loop_noise()
    raise CheckpointDamagedError(f"{_step_path(manager, step)}: its arrays cannot be read "
                                 f"({_reason(e)})") from None
  bad = non_finite_leaves(state)
  if bad:
    raise CheckpointDamagedError(
        f"{_step_path(manager, step)}: NaN/Inf in {len(bad)} arrays "
        f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
  return state


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves checkpoint `step` to WORKDIR/damaged_checkpoints/ (a new run will write that step
  again); returns where it went."""
  directory = epath.Path(manager.directory)
  target = directory.parent / DAMAGED_DIR / str(step)
  suffix = 0
  while target.exists():  # an earlier damaged copy of the same step is kept too
    suffix += 1
    target = directory.parent / DAMAGED_DIR / f"{step}.{suffix}"
  if jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    (directory / str(step)).rename(target)
  multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
  return str(target)


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            config: ml_collections.ConfigDict, step: Optional[int] = None,
            resume: bool = False) -> tuple[Any, int]:
  """Restores the state saved at `step` (default: the newest intact) into `abstract_state`.

  `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings. The saved config is
  checked first, so a mismatch is reported by field name rather than as a shape error (with
  `resume`, also the fields that a resumed run cannot change: RESUME_FIELDS). A checkpoint
  that cannot be read or holds NaN/Inf is reported with its path and reason; without `step`,
  older checkpoints are tried in turn, and with `resume` (a trainer that will write those steps
  again) each damaged one is moved to WORKDIR/damaged_checkpoints/.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(
        f"No checkpoint in {manager.directory}. Pretrain first with "
        "`python -m supcon_jax.main --config=... --workdir=DIR` and pass that DIR.")
  if step is not None:
    if step not in steps:
      raise FileNotFoundError(
          f"No checkpoint for step {step} in {manager.directory}; saved steps: "
          f"{sorted(steps)}.")
    return _load(manager, step, abstract_state, config, resume), step
  damaged = []
  for candidate in steps:
    try:
      state = _load(manager, candidate, abstract_state, config, resume)
    except CheckpointDamagedError as e:
      logging.warning("Cannot use checkpoint %s.", e)
      damaged.append((candidate, str(e)))
      continue
    if damaged:
      moved = [_set_aside(manager, s) for s, _ in damaged] if resume else []
      if moved:
        manager.reload()
      logging.warning("Using step %d, the newest intact checkpoint, instead of %s%s.",
                      candidate, ", ".join(str(s) for s, _ in damaged),
                      f" (kept in {', '.join(moved)})" if moved else "")
    return state, candidate
  raise CheckpointDamagedError(
      f"Every checkpoint in {manager.directory} is damaged: " + "; ".join(r for _, r in damaged)
      + ". Move the checkpoints directory away to start over (or restore it from a copy).")
