"""Orbax checkpoints of the train state, with the config they were trained with."""
import os
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

# Fields that fix the shapes of the saved parameters (or what they mean): a checkpoint cannot
# be restored under a config that changes any of them.
STRUCTURAL_FIELDS = ("method", "model")


class CheckpointMismatchError(ValueError):
  """The checkpoint in a workdir was written under an incompatible config."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def create_manager(workdir: str, config: ml_collections.ConfigDict,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """Async manager that keeps the last `train.keep_checkpoints`.

  When to save is the trainer's decision (every train.checkpoint_every_{epochs,steps}, at the
  end, on preemption): orbax's own interval logic would also save the first step of every run.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.train.keep_checkpoints,
      enable_async_checkpointing=True,
      read_only=read_only,
      create=not read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=("state", "config"))


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         config: ml_collections.ConfigDict) -> None:
  """Saves `state` and `config` as the checkpoint of `step` (asynchronously)."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(config.to_dict())), force=True)


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


def check_compatible(saved_config: dict, config: ml_collections.ConfigDict, path: str) -> None:
  """Raises CheckpointMismatchError naming every structural field that differs."""
  current = config.to_dict()
  diffs = []
  for field in STRUCTURAL_FIELDS:
    diffs += _differences(saved_config.get(field), current.get(field), f"config.{field}")
  if diffs:
    raise CheckpointMismatchError(
        f"The checkpoint in {path} was trained with a different config: " + "; ".join(diffs)
        + ". Use the config it was trained with (e.g. set these fields on the command line), "
        "or another workdir. Nothing in the workdir was changed.")


def read_saved_config(workdir: str, step: Optional[int] = None) -> dict:
  """The config (as a dict) that the checkpoint at `step` (default latest) was written with."""
  with ocp.CheckpointManager(checkpoint_dir(workdir), item_names=("state", "config"),
                             options=ocp.CheckpointManagerOptions(read_only=True,
                                                                  create=False)) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {checkpoint_dir(workdir)}.")
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
        "config"]


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            config: ml_collections.ConfigDict, step: Optional[int] = None) -> tuple[Any, int]:
  """Restores the state saved at `step` (default: latest) into `abstract_state`'s shardings.

  `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings. Checks the saved
  config first, so a mismatch is reported by field name rather than as a shape error.
  """
  if step is None:
    step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(
        f"No checkpoint in {manager.directory}. Pretrain first with "
        "`python -m supcon_jax.main --config=... --workdir=DIR` and pass that DIR.")
  if step not in manager.all_steps():
    raise FileNotFoundError(
        f"No checkpoint for step {step} in {manager.directory}; saved steps: "
        f"{sorted(manager.all_steps())}.")
  saved_config = manager.restore(step, args=ocp.args.Composite(
      config=ocp.args.JsonRestore()))["config"]
  check_compatible(saved_config, config, str(manager.directory))
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored["state"], step
