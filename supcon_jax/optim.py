"""Optimizers and learning-rate schedules, all built from the config with optax."""
from typing import Any

import jax
import ml_collections
import optax

OPTIMIZERS = ("lars", "sgd", "rmsprop", "adamw")

# Leaves named like this are BatchNorm / LayerNorm parameters or biases: the paper's LARS
# recipe (as SimCLR's) applies neither weight decay nor the trust ratio to them.
_UNDECAYED_NAMES = ("bias", "scale")


def decay_mask(params: Any) -> Any:
  """Pytree of bools like `params`: True for weights that get weight decay and LARS scaling."""
  def is_decayed(path, _):
    name = getattr(path[-1], "key", getattr(path[-1], "name", str(path[-1])))
    return name not in _UNDECAYED_NAMES
  return jax.tree_util.tree_map_with_path(is_decayed, params)


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """The linear scaling rule: base_lr × global batch / 256."""
  return config.optim.base_lr * config.batch_size / 256


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over `optim.warmup_epochs`, then cosine decay to 0 at total_steps."""
  peak = peak_learning_rate(config)
  warmup_steps = min(int(round(config.optim.warmup_epochs * steps_per_epoch)), total_steps)
  if config.optim.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup_steps), optax.constant_schedule(peak)],
        [warmup_steps])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """The optimizer named by `optim.name`, with weight decay masked by `decay_mask`."""
  o = config.optim
  if o.name == "lars":
    tx = optax.lars(schedule, weight_decay=o.weight_decay, weight_decay_mask=decay_mask,
                    trust_coefficient=o.trust_coefficient, trust_ratio_mask=decay_mask,
                    momentum=o.momentum, nesterov=o.nesterov)
  elif o.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
                     optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov))
  elif o.name == "rmsprop":
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
                     optax.rmsprop(schedule, decay=o.rmsprop_decay, eps=o.eps,
                                   momentum=o.momentum))
  elif o.name == "adamw":
    tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                     mask=decay_mask)
  else:
    raise ValueError(f"Unknown optim.name={o.name!r}; expected one of {OPTIMIZERS}.")
  if o.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
  return tx
