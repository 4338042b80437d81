"""PyTorch interop: our variables <-> torchvision / timm / SupContrast state dicts.

The conversion is a table from each leaf of our variables ({"params", "batch_stats"}) to a
PyTorch tensor name and a layout rule (NHWC conv kernels become OIHW, Dense kernels are
transposed, attention's per-head kernels become timm's fused qkv). `to_torch` and
`from_torch` both read that one table, as NumPy arrays, so they are exact inverses.

A state dict is handled in three groups: "encoder" (the backbone), "fc" (our online probe,
the classification layer torchvision/timm models end with) and "head" (the projection head,
laid out as SupContrast's `head` module). `pack`/`unpack` put the groups into and out of a
format's file layout. torch is imported only by `save`, `load` and `init_from_checkpoint`,
so the core install stays torch-free.
"""
import argparse
import dataclasses
import re
import types
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from supcon_jax.checkpointing import CheckpointMismatchError

FORMATS = ("torchvision", "timm", "supcontrast")
GROUPS = ("encoder", "fc", "head")
# Our encoder name -> the model each format loads it into.
_TARGETS = types.MappingProxyType({
    "torchvision": {name: name for name in
                    ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")},
    "timm": {**{name: name for name in ("resnet18", "resnet34", "resnet50", "resnet101",
                                        "resnet152", "resnet200")},
             "vit_ti16": "vit_tiny_patch16_224", "vit_s16": "vit_small_patch16_224",
             "vit_b16": "vit_base_patch16_224"},
    # HobbitLong/SupContrast networks/resnet_big.py: model_dict.
    "supcontrast": {name: name for name in ("resnet18", "resnet34", "resnet50", "resnet101")},
})

# A flattened variables key, e.g. ("params", "encoder", "stem_conv", "kernel").
Key = tuple[str, ...]
StateDict = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class _Rule:
  """How one of our arrays (shape s) lays out in its PyTorch tensor."""
  to_torch: Callable[[np.ndarray], np.ndarray]
  from_torch: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]  # (tensor, s) -> array
  torch_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


_RULES = types.MappingProxyType({
    "copy": _Rule(lambda x: x, lambda t, s: t.reshape(s), lambda s: s),
    # Conv kernel [kh, kw, in, out] <-> [out, in, kh, kw].
    "conv": _Rule(lambda x: x.transpose(3, 2, 0, 1), lambda t, s: t.transpose(2, 3, 1, 0),
                  lambda s: (s[3], s[2], s[0], s[1])),
    # Dense kernel [in, out] <-> Linear weight [out, in].
    "dense": _Rule(lambda x: x.T, lambda t, s: t.T, lambda s: s[::-1]),
    # Per-head q/k/v kernel [D, heads, head_dim] <-> [heads * head_dim, D] (heads major, as
    # timm's qkv output is reshaped to (3, heads, head_dim)).
    "heads_in": _Rule(lambda x: x.reshape(x.shape[0], -1).T, lambda t, s: t.T.reshape(s),
                      lambda s: (s[1] * s[2], s[0])),
    # Attention output kernel [heads, head_dim, D] <-> [D, heads * head_dim].
    "heads_out": _Rule(lambda x: x.reshape(-1, x.shape[-1]).T, lambda t, s: t.T.reshape(s),
                       lambda s: (s[2], s[0] * s[1])),
    # Per-head bias [heads, head_dim] <-> [heads * head_dim].
    "flat": _Rule(lambda x: x.reshape(-1), lambda t, s: t.reshape(s),
                  lambda s: (int(np.prod(s)),)),
})
# Our leaf names -> torch's parameter and buffer names.
_LEAVES = types.MappingProxyType({"kernel": "weight", "scale": "weight", "bias": "bias",
                                  "mean": "running_mean", "var": "running_var"})


@dataclasses.dataclass(frozen=True)
class _Link:
  """Our array `key` is slot `slot` (of `slots`, stacked on axis 0) of tensor `name`."""
  key: Key
  group: str
  name: str
  rule: str
  slot: int = 0
  slots: int = 1


def check_supported(model_config: ml_collections.ConfigDict, fmt: str) -> None:
  """Raises ValueError naming why `model_config` (config.model) has no `fmt` counterpart."""
  if fmt not in FORMATS:
    raise ValueError(f"Unknown PyTorch format {fmt!r}; expected one of {FORMATS}.")
  name = model_config.name
  if name not in _TARGETS[fmt]:
    fits = [f for f in FORMATS if name in _TARGETS[f]]
    raise ValueError(f"model.name={name!r} has no {fmt} counterpart (it has: "
                     f"{', '.join(_TARGETS[fmt])}); use format {' or '.join(fits)}.")
  if name.startswith("resnet"):
    if model_config.width != 1:
      raise ValueError(f"model.width={model_config.width}: {fmt} ResNets have 64 base "
                       "channels, so only width 1 can load into them.")
    if model_config.norm != "batch":
      raise ValueError(f"model.norm={model_config.norm!r}: {fmt} ResNets use BatchNorm; only "
                       "norm='batch' converts.")
    if fmt == "supcontrast" and model_config.stem != "small":
      raise ValueError("SupContrast's ResNets (networks/resnet_big.py) have only the small "
                       "stem (3x3/1 conv, no max-pool); use format torchvision or timm for "
                       "model.stem='imagenet'.")


def _resnet_module(part: str, fmt: str) -> str:
  if part == "stem_conv":
    return "conv1"
  if part == "stem_bn":
    return "bn1"
  block = re.fullmatch(r"stage(\d+)_block(\d+)", part)
  if block:
    return f"layer{block[1]}.{int(block[2]) - 1}"
  shortcut = "shortcut" if fmt == "supcontrast" else "downsample"
  return {"downsample_conv": f"{shortcut}.0", "downsample_bn": f"{shortcut}.1"}.get(part, part)


def _layer_link(key: Key, group: str, module: str, kernel_rule: str,
                bias_rule: str = "copy", slot: int = 0, slots: int = 1) -> _Link:
  """The link of `key` (a leaf of the layer that torch calls `module`)."""
  leaf = key[-1]
  return _Link(key, group, f"{module}{_LEAVES[leaf]}",
               kernel_rule if leaf == "kernel" else bias_rule, slot, slots)


def _vit_link(key: Key, modules: Key) -> _Link:
  """timm's VisionTransformer name for an encoder leaf below encoder/<modules>."""
  if not modules:  # cls_token, pos_embedding
    return _Link(key, "encoder", {"pos_embedding": "pos_embed"}.get(key[-1], key[-1]), "copy")
  if modules[0] == "patch_embed":
    return _layer_link(key, "encoder", "patch_embed.proj.", "conv")
  if modules[0] == "encoder_norm":
    return _layer_link(key, "encoder", "norm.", "copy")
  block = f"blocks.{int(modules[0][len('block'):]) - 1}."
  sub = modules[1]
  if sub.startswith("LayerNorm_"):
    return _layer_link(key, "encoder", f"{block}norm{int(sub[-1]) + 1}.", "copy")
  if sub.startswith("Dense_"):
    return _layer_link(key, "encoder", f"{block}mlp.fc{int(sub[-1]) + 1}.", "dense")
  projection = modules[2]  # MultiHeadDotProductAttention_0/{query,key,value,out}
  if projection == "out":
    return _layer_link(key, "encoder", f"{block}attn.proj.", "heads_out")
  return _layer_link(key, "encoder", f"{block}attn.qkv.", "heads_in", "flat",
                     ("query", "key", "value").index(projection), 3)


def _head_index(module: str, num_layers: int, batch_norm: bool) -> str:
  """Index in SupContrast's `head` nn.Sequential: Linear, [BatchNorm1d], ReLU per hidden layer,
  then Linear; a one-layer head is a bare nn.Linear (no index)."""
  if num_layers == 1:
    return ""
  kind, layer = re.fullmatch(r"(dense|bn)(\d+)", module).groups()
  per_layer = 3 if batch_norm else 2
  return f"{(int(layer) - 1) * per_layer + (kind == 'bn')}."


def _link(key: Key, model_config: ml_collections.ConfigDict, fmt: str) -> _Link:
  """Where our array `key` goes in the PyTorch state dict of `fmt`."""
  _, top, *modules = key[:-1]
  if top == "classifier":  # the probe's single Dense layer
    return _layer_link(key, "fc", "", "dense")
  if top == "projection":
    index = _head_index(modules[0], len(model_config.head_dims), model_config.head_bn)
    return _layer_link(key, "head", index, "dense")
  if model_config.name.startswith("vit"):
    return _vit_link(key, tuple(modules))
  module = ".".join(_resnet_module(m, fmt) for m in modules)
  return _layer_link(key, "encoder", f"{module}.", "conv")


def _flatten(variables: Mapping[str, Any]) -> dict[Key, Any]:
  """{("params", ...leaf path): array} over the params and batch_stats collections."""
  flat = {}
  for collection in ("params", "batch_stats"):
    for path, value in traverse_util.flatten_dict(dict(variables.get(collection, {}))).items():
      flat[(collection,) + path] = value
  return flat


def _links(flat: Mapping[Key, Any], model_config, fmt: str) -> dict[tuple[str, str], list[_Link]]:
  """(group, torch name) -> the links that make up that tensor, in slot order."""
  check_supported(model_config, fmt)
  tensors: dict[tuple[str, str], list[_Link]] = {}
  for key in flat:
    link = _link(key, model_config, fmt)
    tensors.setdefault((link.group, link.name), []).append(link)
  for parts in tensors.values():
    parts.sort(key=lambda link: link.slot)
  return tensors


def _bn_counters(names) -> list[str]:
  """torch BatchNorm's `num_batches_tracked` buffer names for the norms among `names`."""
  return [n[:-len("running_mean")] + "num_batches_tracked" for n in names
          if n.endswith("running_mean")]


def to_torch(variables: Mapping[str, Any], model_config: ml_collections.ConfigDict, fmt: str,
             num_batches_tracked: int = 0) -> dict[str, StateDict]:
  """{"encoder", "fc", "head"} -> {torch name: array} of `variables` ({"params", "batch_stats"},
  arrays of any kind) in `fmt`'s layout; exact copies, no rounding.

  BatchNorm layers get torch's `num_batches_tracked` buffer (used by torch only when
  momentum=None) set to `num_batches_tracked`.
  """
  flat = {k: np.asarray(v) for k, v in _flatten(variables).items()}
  groups: dict[str, StateDict] = {g: {} for g in GROUPS}
  for (group, name), parts in _links(flat, model_config, fmt).items():
    pieces = [_RULES[p.rule].to_torch(flat[p.key]) for p in parts]
    groups[group][name] = np.ascontiguousarray(
        pieces[0] if len(pieces) == 1 else np.concatenate(pieces))
  for state_dict in groups.values():
    for counter in _bn_counters(list(state_dict)):
      state_dict[counter] = np.asarray(num_batches_tracked, np.int64)
  return groups


def _differences(expected: Mapping[str, tuple], given: Mapping[str, tuple]) -> list[str]:
  diffs = [f"{n}: missing from the checkpoint (expected shape {expected[n]})"
           for n in sorted(set(expected) - set(given))]
  diffs += [f"{n}: not in the configured model (shape {given[n]})"
            for n in sorted(set(given) - set(expected))]
  diffs += [f"{n}: shape {given[n]} in the checkpoint, {expected[n]} in the configured model"
            for n in sorted(set(expected) & set(given)) if tuple(given[n]) != tuple(expected[n])]
  return diffs


def from_torch(groups: Mapping[str, Mapping[str, Any]], like: Mapping[str, Any],
               model_config: ml_collections.ConfigDict, fmt: str
               ) -> tuple[dict[Key, np.ndarray], list[str]]:
  """Our arrays from the state dict `groups` ({"encoder", "fc", "head"}: {name: array}).

  `like` ({"params", "batch_stats"} of arrays or ShapeDtypeStructs) is the configured model;
  the result has its dtypes. The encoder must match it tensor for tensor (torch's
  `num_batches_tracked` counters are ignored), else CheckpointMismatchError lists every
  difference. "fc" and "head" are loaded only when they match exactly (a 1000-class ImageNet
  fc cannot seed a 10-class probe); each one left out is explained in the returned notes.
  Returns ({flattened variables key: array} of what was loaded, notes).
  """
  flat_like = _flatten(like)
  tensors = _links(flat_like, model_config, fmt)
  loaded: dict[Key, np.ndarray] = {}
  notes = []
  for group in GROUPS:
    given = {n: np.asarray(t) for n, t in groups.get(group, {}).items()
             if not n.endswith("num_batches_tracked")}
    expected = {}
    for (g, name), parts in tensors.items():
      if g == group:
        shapes = [_RULES[p.rule].torch_shape(tuple(flat_like[p.key].shape)) for p in parts]
        expected[name] = (sum(s[0] for s in shapes),) + shapes[0][1:]
    diffs = _differences(expected, {n: t.shape for n, t in given.items()})
    if group == "encoder" and diffs:
      raise CheckpointMismatchError(
          f"The checkpoint's encoder does not fit model.name={model_config.name!r} in format "
          f"{fmt!r} ({len(diffs)} differences):\n  " + "\n  ".join(diffs)
          + "\nSet config.model (name, stem, width, the image channels via the dataset) and "
          "config.init.format to what the checkpoint was trained with.")
    if diffs or not given:
      if expected:
        notes.append(f"{group}: not loaded, kept as initialised ("
                     + ("absent from the checkpoint" if not given else "; ".join(diffs)) + ")")
      continue
    for (g, name), parts in tensors.items():
      if g != group:
        continue
      for part, piece in zip(parts, np.split(given[name], len(parts))):
        target = flat_like[part.key]
        loaded[part.key] = _RULES[part.rule].from_torch(piece, tuple(target.shape)).astype(
            target.dtype)
  return loaded, notes


def pack(groups: Mapping[str, StateDict], model_config: ml_collections.ConfigDict,
         fmt: str) -> dict[str, Any]:
  """The objects a format's files hold: {"encoder": ..., "head": ... (if written separately)}.

  torchvision/timm: the model's own state dict (fc named `fc`, or `head` for timm's ViTs);
  the projection head goes to its own file. SupContrast: {"model": SupConResNet's state dict
  (`encoder.*`, `head.*`), "classifier": LinearClassifier's (`fc.*`)}, one file, as its
  main_linear.py reads it.
  """
  fc = {f"{_fc_name(model_config, fmt)}.{n}": t for n, t in groups.get("fc", {}).items()}
  if fmt == "supcontrast":
    model = {f"encoder.{n}": t for n, t in groups["encoder"].items()}
    model.update({f"head.{n}": t for n, t in groups["head"].items()})
    out = {"model": model}
    if fc:
      out["classifier"] = fc
    return {"encoder": out}
  return {"encoder": {**groups["encoder"], **fc}, "head": dict(groups["head"])}


def unpack(checkpoint: Any, model_config: ml_collections.ConfigDict,
           fmt: str) -> dict[str, StateDict]:
  """Inverse of `pack` for one loaded file, tolerant of what training scripts wrap around it:
  a {"model": ...} or {"state_dict": ...} dict, and `module.` prefixes from DataParallel
  anywhere in a name (SupContrast wraps only the encoder: `encoder.module.conv1.weight`)."""
  if not isinstance(checkpoint, Mapping):
    raise CheckpointMismatchError(f"Expected a state dict (a mapping of tensor names), got "
                                  f"{type(checkpoint).__name__}.")
  state = checkpoint
  for wrapper in ("model", "state_dict"):
    if isinstance(state.get(wrapper), Mapping):
      state = state[wrapper]
      break
  state = {re.sub(r"(^|\.)module\.", r"\1", name): t for name, t in state.items()}
  fc_prefix = f"{_fc_name(model_config, fmt)}."
  groups: dict[str, StateDict] = {g: {} for g in GROUPS}
  for name, tensor in state.items():
    if fmt == "supcontrast":
      group, _, rest = name.partition(".")
      if group not in ("encoder", "head"):
        group, rest = "encoder", name  # reported as not in the model
    elif name.startswith(fc_prefix):
      group, rest = "fc", name[len(fc_prefix):]
    else:
      group, rest = "encoder", name
    groups[group][rest] = tensor
  if fmt == "supcontrast" and isinstance(checkpoint.get("classifier"), Mapping):
    groups["fc"] = {n[len(fc_prefix):]: t for n, t in checkpoint["classifier"].items()
                    if n.startswith(fc_prefix)}
  return groups


def _fc_name(model_config: ml_collections.ConfigDict, fmt: str) -> str:
  return "head" if fmt == "timm" and model_config.name.startswith("vit") else "fc"


def load_code(model_config: ml_collections.ConfigDict, fmt: str, image_shape, include_fc: bool,
              path: str) -> str:
  """Python that builds the PyTorch model the encoder file at `path` loads into with
  strict=True (as `m`), for images of `image_shape` = (H, W, C)."""
  size, _, channels = image_shape
  target = _TARGETS[fmt][model_config.name]
  load = f"m.load_state_dict(torch.load({path!r}))"
  if fmt == "supcontrast":
    return ("import torch; from networks.resnet_big import SupConResNet, "  # SupContrast's repo
            f"{target}; m = SupConResNet(name={target!r}); m.encoder = {target}("
            f"in_channel={channels}); m.load_state_dict(torch.load({path!r})['model'])  # "
            "head: Linear/ReLU/Linear with this run's model.head_dims")
  classes = model_config.num_classes if include_fc else 0  # timm: 0 drops the classifier
  if model_config.name.startswith("vit"):
    kwargs = f"num_classes={classes}, img_size={size}, in_chans={channels}"
    if model_config.patch_size:
      kwargs += f", patch_size={model_config.patch_size}"
    if model_config.pool == "gap":
      kwargs += ", class_token=False, global_pool='avg', fc_norm=False"
    return f"import timm, torch; m = timm.create_model({target!r}, {kwargs}); {load}"
  build = (f"import torch, torchvision; m = torchvision.models.{target}("
           f"num_classes={model_config.num_classes})" if fmt == "torchvision" else
           f"import timm, torch; m = timm.create_model({target!r}, num_classes={classes})")
  if model_config.stem == "small":
    build += (f"; m.conv1 = torch.nn.Conv2d({channels}, 64, 3, 1, 1, bias=False)"
              "; m.maxpool = torch.nn.Identity()")
  elif channels != 3:
    build += f"; m.conv1 = torch.nn.Conv2d({channels}, 64, 7, 2, 3, bias=False)"
  if not include_fc and fmt == "torchvision":
    build += "; m.fc = torch.nn.Identity()"
  return f"{build}; {load}"


# --- The torch side: files ----------------------------------------------------------------

def save(obj: Mapping[str, Any], path: str) -> None:
  """torch.save of a (nested) mapping of NumPy arrays, as torch tensors."""
  import torch  # pylint: disable=g-import-not-at-top
  def convert(x):
    if isinstance(x, Mapping):
      return {k: convert(v) for k, v in x.items()}
    return torch.from_numpy(np.array(x))
  torch.save(convert(obj), path)


def load(path: str) -> dict[str, Any]:
  """torch.load of a checkpoint file on the CPU, tensors as float32/int64 NumPy arrays.

  Only tensors and plain containers are unpickled (weights_only), plus argparse.Namespace,
  which SupContrast stores as 'opt'.
  """
  import torch  # pylint: disable=g-import-not-at-top
  with torch.serialization.safe_globals([argparse.Namespace]):
    obj = torch.load(path, map_location="cpu", weights_only=True)
  def convert(x):
    if isinstance(x, torch.Tensor):
      # NumPy has no bfloat16: widen every float type.
      return (x.float() if x.is_floating_point() else x).numpy()
    if isinstance(x, Mapping):
      return {k: convert(v) for k, v in x.items()}
    return x
  return convert(obj)


def init_from_checkpoint(state: Any, config: ml_collections.ConfigDict, shardings: Any) -> Any:
  """`state` (a fresh TrainState) with config.init.checkpoint's weights in, if it is set.

  The second choice of the resume order: the workdir's own checkpoint, else this file, else
  the random init. `shardings` (a TrainState of shardings) places the loaded arrays; works on
  any number of processes, each reading the file. Raises CheckpointMismatchError listing
  every difference, before any training step, if the encoder does not fit config.model.
  """
  if config.init.checkpoint is None:
    return state
  fmt = config.init.format
  check_supported(config.model, fmt)
  current = {"params": state.params, "batch_stats": state.batch_stats}
  groups = unpack(load(config.init.checkpoint), config.model, fmt)
  loaded, notes = from_torch(groups, current, config.model, fmt)
  placed = _flatten({"params": shardings.params, "batch_stats": shardings.batch_stats})
  new = {}
  for collection, tree in current.items():
    flat = traverse_util.flatten_dict(dict(tree))
    new[collection] = traverse_util.unflatten_dict({
        path: (_put(loaded[(collection,) + path], placed[(collection,) + path])
               if (collection,) + path in loaded else value)
        for path, value in flat.items()})
  logging.info("Initialised %d arrays from %s (%s).%s", len(loaded), config.init.checkpoint, fmt,
               "".join("\n  " + n for n in notes))
  return state.replace(**new)


def _put(array: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A global array with `sharding`, each device taking its slice of the host copy."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
