"""Checks a config before anything runs, naming the field and the fix."""
import jax
import ml_collections

from supcon_jax import augment, checks, losses, optim

METHODS = ("supcon", "simclr", "cross_entropy")
PROBE_INITS = ("zeros", "glorot_uniform")


def _fail(field: str, value, expected: str) -> None:
  checks.check(field, value, False, expected)


def validate_probe(probe: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field of config.probe (the linear probe)."""
  optim.validate(probe.optim, "config.probe.optim")
  checks.check_choice("config.probe.init", probe.init, PROBE_INITS)
  checks.check("config.probe.label_smoothing", probe.label_smoothing,
               0 <= probe.label_smoothing < 1, "a value in [0, 1)")
  checks.check("config.probe.epochs", probe.epochs, probe.epochs >= 1, ">= 1")
  if probe.augment is not None:
    checks.check_choice("config.probe.augment", probe.augment, augment.POLICIES)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for the first bad trainer-level value (models and data check theirs)."""
  checks.check_choice("config.method", config.method, METHODS)
  optim.validate(config.optim, "config.optim")
  validate_probe(config.probe)
  for field, choices in (("contrast_mode", losses.CONTRAST_MODES),
                         ("summation", losses.SUMMATIONS),
                         ("denominator", losses.DENOMINATORS)):
    checks.check_choice(f"config.loss.{field}", config.loss[field], choices)
  if not config.loss.temperature > 0:
    _fail("config.loss.temperature", config.loss.temperature, "it must be > 0")
  if config.batch_size <= 0 or config.batch_size % jax.device_count():
    _fail("config.batch_size", config.batch_size,
          f"the global batch must be a positive multiple of the {jax.device_count()} devices "
          f"({jax.process_count()} processes)")
  if config.data.num_views < 1:
    _fail("config.data.num_views", config.data.num_views, "it must be >= 1")
  cap = config.loss.positives_cap
  if cap is not None and (cap < 0 or cap % config.data.num_views):
    _fail("config.loss.positives_cap", cap,
          f"it must be None or a multiple >= 0 of data.num_views ({config.data.num_views})")
  if config.method == "simclr" and config.data.num_views < 2:
    _fail("config.data.num_views", config.data.num_views,
          "SimCLR's only positives are other views of the same image: use >= 2")
  if config.num_train_steps is None and not config.num_epochs > 0:
    _fail("config.num_epochs", config.num_epochs, "it must be > 0 (or set num_train_steps)")
  if config.num_train_steps is not None and config.num_train_steps <= 0:
    _fail("config.num_train_steps", config.num_train_steps, "it must be > 0")
  microbatches = config.train.microbatches
  if microbatches < 1 or config.batch_size % (microbatches * jax.device_count()):
    _fail("config.train.microbatches", microbatches,
          f"it must be >= 1 and split the batch ({config.batch_size}) into micro-batches "
          f"that are multiples of the {jax.device_count()} devices")
  for field in ("log_every_steps", "keep_checkpoints"):
    if config.train[field] <= 0:
      _fail(f"config.train.{field}", config.train[field], "it must be > 0")
  for name in ("eval", "checkpoint"):
    steps, epochs = config.train[f"{name}_every_steps"], config.train[f"{name}_every_epochs"]
    if (steps is None) == (epochs is None):
      _fail(f"config.train.{name}_every_epochs", epochs,
            f"exactly one of it and config.train.{name}_every_steps (now {steps}) to be set; "
            "set the other to None")
  for field in ("checkpoint_every_steps", "checkpoint_every_epochs"):
    if config.train[field] is not None and config.train[field] <= 0:
      _fail(f"config.train.{field}", config.train[field], "it must be > 0")
