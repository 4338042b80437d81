"""What a config determines before training starts: data facts, model, optimizer, state layout.

`build_experiment(config, mesh)` is the one place that turns a validated config into the
objects the trainer, the linear evaluation, the benchmarks and the tests share; none of them
needs the trainer to get a model or the layout of its state.
"""
import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from jax.sharding import Mesh

from supcon_jax import config_lib, input_pipeline, models, optim, sharding


class TrainState(flax.struct.PyTreeNode):
  """Everything a resumed run needs besides the data position (which is `step`)."""
  step: jax.Array  # int32 []
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # uint32 [2], the run's base key; step keys are fold_in(rng, step)


def create_train_state(rng: jax.Array, *, model, tx: optax.GradientTransformation,
                       image_shape: tuple[int, ...]) -> TrainState:
  """Initial state for images of `image_shape` = (H, W, C)."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32),
                         train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    rng=state_rng)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What the config determines before any array exists; shared by training and evaluation."""
  data: input_pipeline.DatasetInfo
  model: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  steps_per_epoch: int
  total_steps: int
  # train.*_every_{epochs,steps} in steps; eval_every_steps <= 0: only at the end.
  eval_every_steps: int
  checkpoint_every_steps: int
  init_fn: Callable[[jax.Array], TrainState]
  state_shape: Any  # TrainState of jax.ShapeDtypeStruct
  state_shardings: Any

  def init_state(self, seed: int) -> TrainState:
    """The initial state, created directly with its shardings (never whole on one device)."""
    return jax.jit(self.init_fn, out_shardings=self.state_shardings)(jax.random.PRNGKey(seed))

  def abstract_state(self) -> Any:
    """ShapeDtypeStructs with shardings: the target a checkpoint is restored into."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        self.state_shape, self.state_shardings)


def prepared_dataset_info(config: ml_collections.ConfigDict) -> input_pipeline.DatasetInfo:
  """Dataset facts; a single-process run prepares a small dataset on first use, like tfds.load.

  ImageNet (a manual download) and multi-host runs (every host would write) must be prepared
  beforehand: their error says how.
  """
  try:
    return input_pipeline.dataset_info(config)
  except FileNotFoundError as not_prepared:
    if jax.process_count() > 1 or config.data.dataset == "imagenet2012":
      raise
    logging.info("Preparing %s with tfds (first run).", config.data.dataset)
    try:
      input_pipeline.prepare_dataset(config)
    except Exception as e:
      raise not_prepared from e
    return input_pipeline.dataset_info(config)


def interval_steps(train_config: ml_collections.ConfigDict, name: str,
                   steps_per_epoch: int) -> int:
  """train.<name>_every_steps, or train.<name>_every_epochs in steps (at least 1 when > 0).

  The one place where an interval in epochs becomes steps, so it follows config.batch_size;
  config_lib.validate has checked that exactly one of the two is set.
  """
  steps = train_config[f"{name}_every_steps"]
  if steps is not None:
    return steps
  epochs = train_config[f"{name}_every_epochs"]
  return max(int(round(epochs * steps_per_epoch)), 1) if epochs > 0 else 0


def build_experiment(config: ml_collections.ConfigDict, mesh: Mesh) -> Experiment:
  """Validates `config` (also against its dataset), then derives data facts, model, optimizer
  and the state's layout."""
  config_lib.validate(config)
  data = prepared_dataset_info(config)
  config_lib.validate_for_dataset(config, data)
  steps_per_epoch = data.num_train_examples // config.batch_size
  total_steps = config_lib.total_steps(config, steps_per_epoch)
  schedule = optim.learning_rate_schedule(config.optim, config.batch_size, steps_per_epoch,
                                         total_steps)
  tx = optim.create_optimizer(config.optim, schedule)
  model = models.build_model(
      config.model, classifier_trains_encoder=config.method == "cross_entropy")
  init_fn = functools.partial(create_train_state, model=model, tx=tx,
                              image_shape=data.image_shape)
  state_shape = jax.eval_shape(init_fn, jax.random.PRNGKey(config.seed))
  return Experiment(data=data, model=model, tx=tx, schedule=schedule,
                    steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                    eval_every_steps=interval_steps(config.train, "eval", steps_per_epoch),
                    checkpoint_every_steps=interval_steps(config.train, "checkpoint",
                                                          steps_per_epoch),
                    init_fn=init_fn,
                    state_shape=state_shape,
                    state_shardings=sharding.state_shardings(state_shape, mesh,
                                                             config.train.shard_params))
