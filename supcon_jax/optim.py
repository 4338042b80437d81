"""Optimizers and learning-rate schedules, all built from the config with optax."""
from typing import Any

import jax
import ml_collections
import optax

from supcon_jax import checks

OPTIMIZERS = ("lars", "sgd", "rmsprop", "adamw")
SCHEDULES = ("cosine", "constant")

# Leaves named like this are BatchNorm / LayerNorm parameters or biases: the paper's LARS
# recipe (as SimCLR's) applies neither weight decay nor the trust ratio to them.
_UNDECAYED_NAMES = ("bias", "scale")


def decay_mask(params: Any) -> Any:
  """Pytree of bools like `params`: True for weights that get weight decay and LARS scaling."""
  def is_decayed(path, _):
    name = getattr(path[-1], "key", getattr(path[-1], "name", str(path[-1])))
    return name not in _UNDECAYED_NAMES
  return jax.tree_util.tree_map_with_path(is_decayed, params)


def validate(optim_config: ml_collections.ConfigDict, prefix: str) -> None:
  """Raises ValueError naming the first bad choice of `optim_config` (called `prefix`)."""
  checks.check_choice(f"{prefix}.name", optim_config.name, OPTIMIZERS)
  checks.check_choice(f"{prefix}.schedule", optim_config.schedule, SCHEDULES)
  o = optim_config
  checks.check_number(f"{prefix}.base_lr", o.base_lr, low=0, low_open=True)
  for field in ("warmup_epochs", "weight_decay", "grad_clip_norm"):
    checks.check_number(f"{prefix}.{field}", o[field], low=0)
  for field in ("momentum", "b1", "b2", "rmsprop_decay"):
    checks.check_number(f"{prefix}.{field}", o[field], low=0, high=1, high_open=True)
  for field in ("trust_coefficient", "eps"):
    checks.check_number(f"{prefix}.{field}", o[field], low=0, low_open=True)
  checks.check_bool(f"{prefix}.nesterov", o.nesterov)


def learning_rate_schedule(optim_config: ml_collections.ConfigDict, batch_size: int,
                           steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_epochs`, then cosine decay to 0 at total_steps.

  The peak follows the linear scaling rule: base_lr × global batch / 256.
  `optim_config` is `config.optim` (pretraining) or `config.probe.optim` (linear eval).
  """
  peak = optim_config.base_lr * batch_size / 256
  warmup_steps = min(int(round(optim_config.warmup_epochs * steps_per_epoch)), total_steps)
  if optim_config.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup_steps), optax.constant_schedule(peak)],
        [warmup_steps])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)


def create_optimizer(optim_config: ml_collections.ConfigDict, schedule: optax.Schedule,
                     prefix: str = "config.optim") -> optax.GradientTransformation:
  """The optimizer named by `optim_config.name` (the config section `prefix`), with weight
  decay masked by `decay_mask`."""
  validate(optim_config, prefix)
  o = optim_config
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
  else:  # adamw
    tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                     mask=decay_mask)
  # Always a chain of two: clipping adds no state, so turning it on to get past a divergence
  # keeps the optimizer state's structure and the run can resume from its checkpoint.
  clip = optax.clip_by_global_norm(o.grad_clip_norm) if o.grad_clip_norm else optax.identity()
  return optax.chain(clip, tx)
