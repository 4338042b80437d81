"""Exports a pretraining checkpoint's encoder as a PyTorch state dict.

  python -m supcon_jax.export --config=configs/imagenet_r50.py --workdir=DIR \
      --format=torchvision --output=encoder.pt [--step=N] [--no_fc]

--config is the run's config file with the same overrides (checked against the one saved with
the checkpoint). Formats (supcon_jax/torch_io.py): torchvision (ResNet-18..152), timm
(ResNet-18..200, ViT-Ti/S/B), supcontrast (HobbitLong/SupContrast's small-stem ResNets). The
file loads with `load_state_dict(torch.load(path), strict=True)` into the model whose code the
command prints; `fc` comes from the online probe unless --no_fc. The projection head goes to
OUTPUT with `.head` before the extension (inside the file for supcontrast).
"""
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from ml_collections import config_flags

from supcon_jax import checkpointing, console, torch_io


def restore_variables(workdir: str, config: ml_collections.ConfigDict,
                      step: Optional[int] = None) -> tuple[dict[str, Any], int]:
  """({"params", "batch_stats"} as NumPy arrays, step) of the checkpoint at `step` (default
  latest), restored onto this process's first device whatever devices wrote it."""
  with ocp.CheckpointManager(
      checkpointing.checkpoint_dir(workdir), item_names=("state", "config"),
      options=checkpointing.READ_ONLY_OPTIONS,
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "config": ocp.JsonCheckpointHandler()}) as manager:
    # The layout of the saved arrays (the same in every step), placed on one device; without
    # any checkpoint, checkpointing.restore says so.
    newest = manager.latest_step() if step is None else step
    abstract = None
    if newest in manager.all_steps():
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      abstract = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
          manager.item_metadata(newest)["state"].tree)
    # As linear_eval restores: config checked by field, unreadable or non-finite checkpoints
    # reported, and without `step` the newest intact one.
    state, step = checkpointing.restore(manager, abstract, config, step)
  return {k: jax.tree.map(np.asarray, state[k]) for k in ("params", "batch_stats")}, step


def head_path(output: str) -> str:
  """encoder.pt -> encoder.head.pt: where the projection head goes."""
  root, ext = os.path.splitext(output)
  return f"{root}.head{ext or '.pt'}"


def export_checkpoint(config: ml_collections.ConfigDict, workdir: str, fmt: str, output: str,
                      step: Optional[int] = None, include_fc: bool = True) -> dict[str, str]:
  """Writes the encoder (and head) of `workdir`'s checkpoint in PyTorch format `fmt`.

  Returns {"encoder": path, "head": path (torchvision/timm), "code": Python building the
  PyTorch model the encoder file loads into with strict=True}.
  """
  torch_io.check_supported(config.model, fmt)
  variables, step = restore_variables(workdir, config, step)
  groups = torch_io.to_torch(variables, config.model, fmt, num_batches_tracked=step)
  if not include_fc:
    groups["fc"] = {}
  files = torch_io.pack(groups, config.model, fmt)
  written = {"encoder": output}
  if "head" in files:
    written["head"] = head_path(output)
  for key, path in written.items():
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch_io.save(files[key], path)
  encoder = variables["params"]["encoder"]
  first = encoder["stem_conv" if "stem_conv" in encoder else "patch_embed"]["kernel"]
  image_shape = (config.data.image_size, config.data.image_size, first.shape[2])
  written["code"] = torch_io.load_code(config.model, fmt, image_shape, include_fc, output)
  notes = []
  if config.model.bn_epsilon != 1e-5:
    notes.append(f"set eps={config.model.bn_epsilon} on every BatchNorm (torch's default is "
                 "1e-5)")
  if config.model.normalize_representation:
    notes.append("the projection head expects L2-normalised representations")
  logging.info("Exported step %d of %s to %s.%s", step, workdir, written,
               "".join(f" Note: {n}." for n in notes))
  return written


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup(FLAGS.verbose)
  written = export_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.format, FLAGS.output,
                              FLAGS.step, include_fc=not FLAGS.no_fc)
  for key in ("encoder", "head"):
    if key in written:
      print(f"{key}: {written[key]}")
  print(f"load in PyTorch: {written['code']}")


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "The pretraining run's config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "The pretraining run's workdir (holds checkpoints/).")
  flags.DEFINE_enum("format", None, torch_io.FORMATS, "PyTorch layout to write.")
  flags.DEFINE_string("output", None, "Path of the encoder's .pt file.")
  flags.DEFINE_integer("step", None, "Checkpoint step to export (default: latest).")
  flags.DEFINE_bool("no_fc", False, "Leave out fc (the online probe); the model then needs "
                    "fc = torch.nn.Identity() (num_classes=0 in timm).")
  flags.mark_flags_as_required(["config", "workdir", "format", "output"])
  console.define_flags()
  app.run(main)
