"""Checks a config before anything runs or is written, naming the field and the fix.

`validate(config)` checks every field of configs/base.py (types, ranges, choices, NaN/Inf, and
the fields that constrain each other); `validate_for_dataset(config, data)` adds the checks
that need the dataset's facts (class count, split size). The trainer runs both before it
creates a file.
"""
import inspect
import math
from typing import Any

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags
from tensorflow_datasets.image_classification import corruptions as tfds_corruptions

from supcon_jax import augment, checks, input_pipeline, losses, models, optim, torch_io

METHODS = ("supcon", "simclr", "cross_entropy")
PROBE_INITS = ("zeros", "glorot_uniform")
# tfds' ImageNet-C functions f(x, severity); impulse_noise draws from an unseeded generator.
CORRUPTIONS = tuple(sorted(
    name for name, fn in vars(tfds_corruptions).items()
    if inspect.isfunction(fn) and list(inspect.signature(fn).parameters)[:2] == ["x", "severity"]
    and name != "impulse_noise"))


def _check_range_pair(field: str, value: Any, high: float) -> None:
  """(low, high) with 0 < low <= high <= `high`."""
  checks.check(field, value,
               isinstance(value, (tuple, list)) and len(value) == 2
               and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
               and 0 < value[0] <= value[1] <= high,
               f"a pair (low, high) with 0 < low <= high <= {high:g}")


def _check_text(field: str, value: Any, optional: bool = False) -> None:
  if optional and value is None:
    return
  checks.check(field, value, isinstance(value, str) and value.strip() != "",
               "a non-empty string" + (" (or None)" if optional else ""))


def _validate_data(data: ml_collections.ConfigDict, method: str) -> None:
  checks.check_choice("config.data.dataset", data.dataset, sorted(input_pipeline.DATASETS))
  _check_text("config.data.data_dir", data.data_dir, optional=True)
  _check_text("config.data.manual_dir", data.manual_dir, optional=True)
  _check_text("config.data.train_split", data.train_split)
  _check_text("config.data.eval_split", data.eval_split)
  checks.check_number("config.data.image_size", data.image_size, low=1, integer=True)
  checks.check_number("config.data.num_views", data.num_views, low=1, integer=True)
  if method == "simclr" and data.num_views < 2:
    checks.check("config.data.num_views", data.num_views, False,
                 "SimCLR's only positives are other views of the same image: use >= 2")
  checks.check_number("config.data.shuffle_buffer_size", data.shuffle_buffer_size, low=1,
                      integer=True)
  checks.check_choice("config.data.augment", data.augment, augment.POLICIES)
  _check_range_pair("config.data.crop_area", data.crop_area, high=1)
  _check_range_pair("config.data.crop_aspect_ratio", data.crop_aspect_ratio, high=math.inf)
  checks.check_number("config.data.crop_min_object_covered", data.crop_min_object_covered,
                      low=0, high=1)
  checks.check_number("config.data.crop_max_attempts", data.crop_max_attempts, low=1,
                      integer=True)
  checks.check_choice("config.data.color_jitter_impl", data.color_jitter_impl,
                      tuple(augment.JITTER_ADJUSTS))
  checks.check_number("config.data.color_jitter_strength", data.color_jitter_strength, low=0)
  checks.check_bool("config.data.blur", data.blur)
  checks.check_number("config.data.randaugment_num_ops", data.randaugment_num_ops, low=0,
                      integer=True)
  # RandAugment's magnitude scale (Cubuk et al., 2020) runs from 0 to 10.
  checks.check_number("config.data.randaugment_magnitude", data.randaugment_magnitude, low=0,
                      high=10)


def _validate_loss(loss: ml_collections.ConfigDict) -> None:
  for field, choices in (("contrast_mode", losses.CONTRAST_MODES),
                         ("summation", losses.SUMMATIONS),
                         ("denominator", losses.DENOMINATORS)):
    checks.check_choice(f"config.loss.{field}", loss[field], choices)
  checks.check_number("config.loss.temperature", loss.temperature, low=0, low_open=True)
  checks.check_number("config.loss.base_temperature", loss.base_temperature, low=0,
                      low_open=True, optional=True)
  checks.check_number("config.loss.label_smoothing", loss.label_smoothing, low=0, high=1,
                      high_open=True)
  checks.check_number("config.loss.block_size", loss.block_size, low=1, integer=True,
                      optional=True)
  checks.check_number("config.loss.positives_cap", loss.positives_cap, low=0, integer=True,
                      optional=True)


def _validate_train(config: ml_collections.ConfigDict) -> None:
  train = config.train
  checks.check_bool("config.train.shard_params", train.shard_params)
  for field in ("log_every_steps", "keep_checkpoints"):
    checks.check_number(f"config.train.{field}", train[field], low=1, integer=True)
  for name in ("eval", "checkpoint"):
    steps, epochs = f"{name}_every_steps", f"{name}_every_epochs"
    # Names the field set last on top of a default: epochs when both are set, steps when
    # neither is.
    field, other = (epochs, steps) if train[epochs] is not None else (steps, epochs)
    checks.check(f"config.train.{field}", train[field],
                 (train[steps] is None) != (train[epochs] is None),
                 f"exactly one of it and config.train.{other} (now {train[other]}) to be set; "
                 "set the other to None")
  # An evaluation interval <= 0 means "only at the end" (configs/base.py).
  checks.check_number("config.train.eval_every_steps", train.eval_every_steps, integer=True,
                      optional=True)
  checks.check_number("config.train.eval_every_epochs", train.eval_every_epochs, optional=True)
  checks.check_number("config.train.checkpoint_every_steps", train.checkpoint_every_steps,
                      low=1, integer=True, optional=True)
  checks.check_number("config.train.checkpoint_every_epochs", train.checkpoint_every_epochs,
                      low=0, low_open=True, optional=True)
  checks.check_number("config.train.probe_weight", train.probe_weight, low=0)
  microbatches = train.microbatches
  checks.check_number("config.train.microbatches", microbatches, low=1, integer=True)
  if config.batch_size % (microbatches * jax.device_count()):
    checks.check("config.train.microbatches", microbatches, False,
                 f"it must split the batch ({config.batch_size}) into micro-batches that are "
                 f"multiples of the {jax.device_count()} devices")


def _validate_init(init: ml_collections.ConfigDict) -> None:
  _check_text("config.init.checkpoint", init.checkpoint, optional=True)
  checks.check_choice("config.init.format", init.format, torch_io.FORMATS)


def validate_probe(probe: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field of config.probe (the linear probe)."""
  optim.validate(probe.optim, "config.probe.optim")
  checks.check_choice("config.probe.init", probe.init, PROBE_INITS)
  checks.check_number("config.probe.label_smoothing", probe.label_smoothing, low=0, high=1,
                      high_open=True)
  if probe.augment is not None:
    checks.check_choice("config.probe.augment", probe.augment, augment.POLICIES)
  checks.check_bool("config.probe.train_batch_statistics", probe.train_batch_statistics)
  for field in ("epochs", "batch_size", "knn_k", "ece_bins"):
    checks.check_number(f"config.probe.{field}", probe[field], low=1, integer=True)
  checks.check_bool("config.probe.augmented_features", probe.augmented_features)
  checks.check_number("config.probe.knn_temperature", probe.knn_temperature, low=0,
                      low_open=True)
  checks.check("config.probe.corruptions", probe.corruptions,
               isinstance(probe.corruptions, (tuple, list))
               and all(name in CORRUPTIONS for name in probe.corruptions),
               f"a tuple of names from {CORRUPTIONS}")
  checks.check("config.probe.severities", probe.severities,
               isinstance(probe.severities, (tuple, list))
               and all(s in (1, 2, 3, 4, 5) for s in probe.severities),
               "a tuple of ImageNet-C severities, each 1 to 5")
  _check_text("config.probe.corruption_split", probe.corruption_split)
  checks.check_number("config.probe.tsne_examples", probe.tsne_examples, low=0, integer=True)
  checks.check_bool("config.probe.raw_pixel_baseline", probe.raw_pixel_baseline)
  checks.check_bool("config.probe.standardize", probe.standardize)
  checks.check("config.probe.reference_top1", probe.reference_top1,
               isinstance(probe.reference_top1, (tuple, list))
               and all(isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], str)
                       and isinstance(r[1], (int, float)) and 0 <= r[1] <= 1
                       for r in probe.reference_top1),
               "a tuple of (label, top-1 in [0, 1]) pairs")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for the first bad value of any field of `config`."""
  checks.check_choice("config.method", config.method, METHODS)
  # int32 seeds: tf.data folds the seed into its stateless random keys.
  checks.check_number("config.seed", config.seed, low=0, high=2**31 - 1, integer=True)
  checks.check_number("config.batch_size", config.batch_size, low=1, integer=True)
  if config.batch_size % jax.device_count():
    checks.check("config.batch_size", config.batch_size, False,
                 f"the global batch must be a positive multiple of the {jax.device_count()} "
                 f"devices ({jax.process_count()} processes)")
  checks.check_number("config.num_train_steps", config.num_train_steps, low=1, integer=True,
                      optional=True)
  # Checked even when num_train_steps overrides it: a stale bad value would surface later.
  checks.check_number("config.num_epochs", config.num_epochs, low=0, low_open=True)
  _validate_data(config.data, config.method)
  models.validate(config.model)
  _validate_loss(config.loss)
  optim.validate(config.optim, "config.optim")
  if config.loss.positives_cap is not None:
    checks.check("config.loss.positives_cap", config.loss.positives_cap,
                 config.loss.positives_cap % config.data.num_views == 0,
                 f"None or a multiple of data.num_views ({config.data.num_views})")
  _validate_train(config)
  validate_probe(config.probe)
  _validate_init(config.init)


def validate_for_dataset(config: ml_collections.ConfigDict,
                         data: input_pipeline.DatasetInfo) -> None:
  """Raises ValueError for what depends on config.data.dataset's facts `data`: the class
  count, a batch no larger than the split, and a run of at least one step."""
  dataset = config.data.dataset
  checks.check("config.model.num_classes", config.model.num_classes,
               config.model.num_classes == data.num_classes,
               f"{data.num_classes}, the number of classes of {dataset} (a different count "
               "would drop labels or train classes that never occur)")
  checks.check("config.batch_size", config.batch_size,
               config.batch_size <= data.num_train_examples,
               f"at most the {data.num_train_examples} examples of {dataset}'s "
               f"{config.data.train_split!r}")
  steps_per_epoch = data.num_train_examples // config.batch_size
  if config.num_train_steps is None:
    checks.check("config.num_epochs", config.num_epochs,
                 total_steps(config, steps_per_epoch) >= 1,
                 f"at least one step: an epoch is {steps_per_epoch} steps of "
                 f"{config.batch_size}, so e.g. num_epochs >= {1 / steps_per_epoch:.3g}")


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """The run's length: num_train_steps if set, else num_epochs rounded to whole steps."""
  return config.num_train_steps or int(round(config.num_epochs * steps_per_epoch))


class _NoneOr(flags.ArgumentParser):
  """`parser`, except that the word None means None."""

  def __init__(self, parser: flags.ArgumentParser):
    super().__init__()
    self._parser = parser

  def parse(self, argument: Any) -> Any:
    return None if argument is None or argument == "None" else self._parser.parse(argument)

  def flag_type(self) -> str:
    return self._parser.flag_type()


def accept_none_on_command_line() -> None:
  """Makes `--config.FIELD=None` set FIELD to None for str, int and float fields.

  ml_collections parses an override with the parser of the field's type, so for an optional
  field (a FieldReference(None, field_type=...)) None became the string 'None' or a parse
  error. Call it before the flags are parsed (it changes ml_collections' parsers for the whole
  process: entry points only). A field that must not be None is then refused by `validate`.
  """
  for field_type, parser in ((str, flags.ArgumentParser()), (int, flags.IntegerParser()),
                             (float, flags.FloatParser())):
    config_flags.register_flag_parser_for_type(field_type, _NoneOr(parser))
