"""Optimizers and learning-rate schedules, all built from the config with optax."""
import functools
import math
from typing import Any

import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from supcon_jax import checks

OPTIMIZERS = ("lars", "sgd", "rmsprop", "adamw")
# What follows the linear warm-up: cosine (to end_lr_factor × peak at the end) | constant |
# exponential (× decay_rate every epochs_per_decay epochs, staircase) | step (× decay_rate at
# each of milestones_epochs).
SCHEDULES = ("cosine", "constant", "exponential", "step")


def decay_mask(params: Any, decay_biases: bool = False, decay_norms: bool = False) -> Any:
  """Pytree of bools like `params`: True for leaves that get weight decay and LARS scaling.

  Kernels and every other leaf always do. A `bias` beside a `kernel` (Dense / Conv) does only
  if `decay_biases`; the `scale` and `bias` of a module without a kernel (BatchNorm, LayerNorm,
  GroupNorm) only if `decay_norms`.
  """
  flat = traverse_util.flatten_dict(params)
  has_kernel = {path[:-1] for path in flat if path[-1] == "kernel"}

  def decayed(path: tuple[str, ...]) -> bool:
    if path[-1] in ("scale", "bias") and path[:-1] not in has_kernel:
      return decay_norms
    return decay_biases if path[-1] == "bias" else True
  return traverse_util.unflatten_dict({path: decayed(path) for path in flat})


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
  for field in ("nesterov", "decay_after_warmup", "decay_biases", "decay_norms"):
    checks.check_bool(f"{prefix}.{field}", o[field])
  checks.check_number(f"{prefix}.rmsprop_initial_scale", o.rmsprop_initial_scale, low=0)
  # Every field is checked whatever the schedule, so that a bad value cannot wait in a config
  # until someone switches schedules.
  for field in ("warmup_init_factor", "end_lr_factor"):
    checks.check_number(f"{prefix}.{field}", o[field], low=0, high=1)
  checks.check_number(f"{prefix}.decay_rate", o.decay_rate, low=0, high=1, low_open=True)
  checks.check_number(f"{prefix}.epochs_per_decay", o.epochs_per_decay, low=0, low_open=True)
  milestones = o.milestones_epochs
  checks.check(f"{prefix}.milestones_epochs", milestones,
               isinstance(milestones, (tuple, list)) and len(milestones) > 0
               and all(isinstance(m, (int, float)) and math.isfinite(m) and m > 0
                       for m in milestones)
               and list(milestones) == sorted(set(milestones)),
               "increasing positive epochs, e.g. (60, 75, 90)")


def learning_rate_schedule(optim_config: ml_collections.ConfigDict, batch_size: int,
                           steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """Linear warm-up over `warmup_epochs` from warmup_init_factor × peak to the value the decay
  has where the warm-up ends, then `optim_config.schedule` (see SCHEDULES) until total_steps.

  The peak follows the linear scaling rule: base_lr × global batch / 256. With
  decay_after_warmup the decay starts at the peak when the warm-up ends (the released TF
  code); without, it is a function of the step from 0 and the warm-up replaces its first
  epochs (SupContrast). `optim_config` is `config.optim` (pretraining) or `config.probe.optim`
  (linear eval).
  """
  o = optim_config
  peak = o.base_lr * batch_size / 256
  warmup_steps = min(int(round(o.warmup_epochs * steps_per_epoch)), total_steps)
  offset = 0 if o.decay_after_warmup else warmup_steps
  if o.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, max(total_steps - warmup_steps + offset, 1),
                                        alpha=o.end_lr_factor)
  elif o.schedule == "exponential":
    decay = optax.exponential_decay(peak, transition_steps=o.epochs_per_decay * steps_per_epoch,
                                    decay_rate=o.decay_rate, staircase=True)
  elif o.schedule == "step":  # from the first step of each milestone epoch on
    boundaries = jnp.array([int(round(e * steps_per_epoch)) for e in o.milestones_epochs])
    decay = lambda count: peak * o.decay_rate ** jnp.sum(count >= boundaries)
  else:  # constant
    decay = optax.constant_schedule(peak)
  after = lambda count: decay(count + offset)
  warmup = optax.linear_schedule(o.warmup_init_factor * peak, after(0), warmup_steps)
  return optax.join_schedules([warmup, after], [warmup_steps])


def create_optimizer(optim_config: ml_collections.ConfigDict, schedule: optax.Schedule,
                     prefix: str = "config.optim") -> optax.GradientTransformation:
  """The optimizer named by `optim_config.name` (the config section `prefix`), with weight
  decay (and LARS's trust ratio) masked by `decay_mask` under the section's decay_biases and
  decay_norms."""
  validate(optim_config, prefix)
  o = optim_config
  mask = functools.partial(decay_mask, decay_biases=o.decay_biases, decay_norms=o.decay_norms)
  if o.name == "lars":
    tx = optax.lars(schedule, weight_decay=o.weight_decay, weight_decay_mask=mask,
                    trust_coefficient=o.trust_coefficient, trust_ratio_mask=mask,
                    momentum=o.momentum, nesterov=o.nesterov)
  elif o.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=mask),
                     optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov))
  elif o.name == "rmsprop":
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=mask),
                     optax.rmsprop(schedule, decay=o.rmsprop_decay, eps=o.eps,
                                   initial_scale=o.rmsprop_initial_scale,
                                   momentum=o.momentum))
  else:  # adamw
    tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                     mask=mask)
  # Always a chain of two: clipping adds no state, so turning it on to get past a divergence
  # keeps the optimizer state's structure and the run can resume from its checkpoint.
  clip = optax.clip_by_global_norm(o.grad_clip_norm) if o.grad_clip_norm else optax.identity()
  return optax.chain(clip, tx)
