"""The trainer: methods, sharded vs single-device steps, resume after SIGKILL/SIGTERM, NaN stop.

Damaged checkpoints, the workdir lock, Ctrl-C and config checks: tests/test_robustness.py.
"""
import functools
import glob
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh

from configs import base
from supcon_jax import checkpointing, config_lib, experiment, input_pipeline, models, optim
from supcon_jax import train
from supcon_jax.losses import supcon_loss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_EXAMPLES = 40  # not a multiple of the batch: the last eval batch is padded
# Applied on top of configs/base.py: a tiny ResNet on a slice of the real Fashion-MNIST,
# 2 samples per device. (tfds' mock data is not used here: under it, orbax's asynchronous
# saves fail to create their metadata directories.)
TINY = {
    "batch_size": 16, "num_train_steps": 4,
    "data.dataset": "fashion_mnist", "data.train_split": "train[:64]",
    "data.eval_split": f"test[:{EVAL_EXAMPLES}]", "data.image_size": 16, "data.blur": False,
    "data.shuffle_buffer_size": 64,
    "model.name": "resnet18", "model.stem": "imagenet", "model.width": 0.125,
    "model.head_dims": (16, 8), "model.num_classes": 10,
    "optim.name": "sgd", "optim.base_lr": 0.5, "optim.warmup_epochs": 0.0,
    "train.log_every_steps": 2, "train.eval_every_steps": 2,
    "train.checkpoint_every_steps": 2,
}


def tiny_config(data_dir: str, **overrides):
  config = base.get_config()
  config.data.data_dir = data_dir
  for key, value in {**TINY, **overrides}.items():
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    node[last] = value
  return config


def saved_state(workdir: str, step: int, like=None) -> dict:
  """The state saved at `step`, as numpy arrays.

  `like` (a state of the same structure) is needed when the checkpoint was written by other
  devices than this process has (e.g. by two processes).
  """
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir),
                             item_names=("state", "config")) as manager:
    if like is None:
      args = ocp.args.StandardRestore()
    else:
      args = ocp.args.PyTreeRestore(item=like, restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), like))
    return manager.restore(step, args=ocp.args.Composite(state=args))["state"]


def assert_trees_close(a, b, **tol):
  jax.tree.map(functools.partial(np.testing.assert_allclose, **tol), a, b)


@pytest.mark.slow
@pytest.mark.parametrize("method,views", [("supcon", 2), ("simclr", 2), ("cross_entropy", 1)])
def test_each_method_trains_evaluates_and_checkpoints(fashion_mnist_dir, tmp_path, method, views):
  config = tiny_config(fashion_mnist_dir, method=method, **{"data.num_views": views})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(result["loss"]) and np.isfinite(result["main_loss"])
  assert result["eval_examples"] == EVAL_EXAMPLES  # every example of the eval split, once
  assert 0.0 <= result["probe_eval_top1"] <= result["probe_eval_top5"] <= 1.0
  saved = {int(os.path.basename(p)) for p in glob.glob(os.path.join(tmp_path, "checkpoints", "*"))}
  assert saved == {2, 4}  # the configured interval and the end; not step 1
  assert glob.glob(os.path.join(tmp_path, "events.out.tfevents.*"))


def _step_setup(config, mesh):
  model = models.build_model(config.model)
  schedule = optim.learning_rate_schedule(config.optim, config.batch_size, 10, 100)
  tx = optim.create_optimizer(config.optim, schedule)
  state = experiment.create_train_state(jax.random.PRNGKey(0), model=model, tx=tx,
                                   image_shape=(16, 16, 1))
  step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, schedule=schedule,
                                   config=config, mesh=mesh))
  return state, step


def _fixed_batch(config, mesh):
  batch = next(input_pipeline.create_train_dataset(config).as_numpy_iterator())
  return input_pipeline.to_global_arrays(batch, mesh)


@pytest.mark.slow
def test_supcon_loss_goes_down_on_a_fixed_batch(fashion_mnist_dir):
  config = tiny_config(fashion_mnist_dir)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  state, step = _step_setup(config, mesh)
  batch = _fixed_batch(config, mesh)
  losses = []
  for _ in range(10):
    state, metrics = step(state, batch)
    losses.append(float(metrics["main_loss"]))
  assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.slow
def test_one_step_on_8_devices_equals_one_step_on_1_device(fashion_mnist_dir):
  config = tiny_config(fashion_mnist_dir)
  results = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = Mesh(np.array(devices), ("data",))
    state, step = _step_setup(config, mesh)
    state, metrics = step(state, _fixed_batch(config, mesh))
    results.append((jax.device_get(state), jax.device_get(metrics)))
  (sharded, m8), (single, m1) = results
  np.testing.assert_allclose(m8["main_loss"], m1["main_loss"], rtol=1e-5)
  assert_trees_close(sharded.params, single.params, rtol=1e-4, atol=1e-6)
  assert_trees_close(sharded.batch_stats, single.batch_stats, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_fsdp_sharded_state_takes_the_same_step_as_replicated(fashion_mnist_dir):
  """train.shard_params splits parameters and optimizer state over the data axis."""
  mesh = Mesh(np.array(jax.devices()), ("data",))
  results = []
  for shard in (False, True):
    config = tiny_config(fashion_mnist_dir, **{"train.shard_params": shard})
    exp = experiment.build_experiment(config, mesh)
    state = exp.init_state(0)
    if shard:
      kernel = state.params["encoder"]["stage4_block1"]["conv2"]["kernel"]
      assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
    step = jax.jit(functools.partial(train.train_step, model=exp.model, tx=exp.tx,
                                     schedule=exp.schedule, config=config, mesh=mesh),
                   in_shardings=(exp.state_shardings, None),
                   out_shardings=(exp.state_shardings, None))
    state, _ = step(state, _fixed_batch(config, mesh))
    results.append(jax.device_get(state.params))
  assert_trees_close(results[1], results[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("num_devices,microbatches", [(1, 4), (8, 2)])
def test_gradient_caching_equals_the_full_batch_update(fashion_mnist_dir, num_devices,
                                                       microbatches):
  """Exact for an encoder without batch statistics (GroupNorm), on 1 and on 8 devices."""
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
  results = []
  for k in (1, microbatches):
    config = tiny_config(fashion_mnist_dir, **{"model.norm": "group", "train.microbatches": k})
    state, step = _step_setup(config, mesh)
    state, metrics = step(state, _fixed_batch(config, mesh))
    results.append((jax.device_get(state.params), jax.device_get(metrics)))
  (full, full_metrics), (cached, cached_metrics) = results
  np.testing.assert_allclose(cached_metrics["loss"], full_metrics["loss"], rtol=1e-6)
  np.testing.assert_allclose(cached_metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-5)
  assert_trees_close(cached, full, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fashion_mnist_dir):
  """(workdir, final state) of an uninterrupted 6-step run."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  train.train_and_evaluate(tiny_config(fashion_mnist_dir, num_train_steps=6), workdir)
  return workdir, saved_state(workdir, 6)


_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from supcon_jax import checkpointing, train
import test_train

save = checkpointing.save
def save_then_die(manager, step, *args, **kwargs):
  saved = save(manager, step, *args, **kwargs)
  if step == 4:  # a hard kill right after the step-4 checkpoint is on disk
    manager.wait_until_finished()
    os.kill(os.getpid(), signal.SIGKILL)
  return saved
checkpointing.save = save_then_die
train.train_and_evaluate(test_train.tiny_config({data_dir!r}, num_train_steps=6), {workdir!r})
"""


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(fashion_mnist_dir, tmp_path, uninterrupted,
                                                      cpu_env):
  workdir = str(tmp_path)
  env = cpu_env(8)
  code = _KILLED_RUN.format(repo=REPO, tests=os.path.join(REPO, "tests"), data_dir=fashion_mnist_dir,
                            workdir=workdir)
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir)) as manager:
    assert manager.latest_step() == 4

  result = train.train_and_evaluate(tiny_config(fashion_mnist_dir, num_train_steps=6), workdir)
  assert np.isfinite(result["loss"])
  assert_trees_close(saved_state(workdir, 6), uninterrupted[1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sigterm_saves_exits_and_resumes(fashion_mnist_dir, tmp_path, monkeypatch, uninterrupted):
  real_iterator = input_pipeline.create_train_iterator

  def preempted_after_3_batches(*args, **kwargs):
    for i, batch in enumerate(real_iterator(*args, **kwargs)):
      if i == 3:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(input_pipeline, "create_train_iterator", preempted_after_3_batches)
  result = train.train_and_evaluate(tiny_config(fashion_mnist_dir, num_train_steps=6), str(tmp_path))
  assert result["preempted_at_step"] == 4
  monkeypatch.undo()
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was put back
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(str(tmp_path))) as manager:
    assert manager.latest_step() == 4
  train.train_and_evaluate(tiny_config(fashion_mnist_dir, num_train_steps=6), str(tmp_path))
  assert_trees_close(saved_state(str(tmp_path), 6), uninterrupted[1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_error_keeps_the_last_good_checkpoint_and_resumes(
    fashion_mnist_dir, tmp_path, monkeypatch):
  real_iterator = input_pipeline.create_train_iterator

  def nan_at_step_3(*args, **kwargs):
    for i, batch in enumerate(real_iterator(*args, **kwargs)):
      if i == 2:
        batch = {**batch, "images": batch["images"] * jnp.nan}
      yield batch

  monkeypatch.setattr(input_pipeline, "create_train_iterator", nan_at_step_3)
  config = tiny_config(fashion_mnist_dir, num_train_steps=6, **{"train.checkpoint_every_steps": 1})
  with pytest.raises(FloatingPointError, match=r"NaN/Inf in the update to step 3 .*not applied"
                                               r".*the last checkpoint, step 2, holds finite"):
    train.train_and_evaluate(config, str(tmp_path))
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(str(tmp_path))) as manager:
    assert manager.latest_step() == 2
  state = saved_state(str(tmp_path), 2)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))
  monkeypatch.undo()  # the cause is gone: rerunning resumes from step 2 and gets past step 3
  assert np.isfinite(train.train_and_evaluate(config, str(tmp_path))["loss"])


@pytest.mark.slow
def test_resuming_under_a_different_model_names_the_field(fashion_mnist_dir, uninterrupted):
  workdir, _ = uninterrupted
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r"config\.model\.width"):
    train.train_and_evaluate(
        tiny_config(fashion_mnist_dir, num_train_steps=8, **{"model.width": 0.25}), workdir)
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir)) as manager:
    assert manager.latest_step() == 6  # nothing was written


@pytest.mark.parametrize("overrides,field", [
    ({"method": "byol"}, "config.method"),
    ({"optim.name": "lamb"}, "config.optim.name"),
    ({"batch_size": 12}, "config.batch_size"),
    ({"loss.temperature": 0.0}, "config.loss.temperature"),
    ({"loss.summation": "middle"}, "config.loss.summation"),
    ({"method": "simclr", "data.num_views": 1}, "config.data.num_views"),
    ({"train.microbatches": 4}, "config.train.microbatches"),
    ({"loss.positives_cap": 3}, "config.loss.positives_cap"),  # not a multiple of 2 views
])
def test_bad_config_values_name_the_field(overrides, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    config_lib.validate(tiny_config(None, **overrides))


def test_contrastive_loss_takes_the_configured_positives_cap():
  """loss.positives_cap reaches supcon_loss (tested against its reference in test_losses)."""
  mesh = Mesh(np.array(jax.devices()), ("data",))
  z = jax.random.normal(jax.random.PRNGKey(0), (16, 2, 8))
  z /= jnp.linalg.norm(z, axis=-1, keepdims=True)
  labels = jnp.arange(16) % 2  # 8 samples per class: a cap of one other sample binds
  config = tiny_config(None, **{"loss.positives_cap": 2})
  tau = config.loss.temperature
  # One compile for the three, without LLVM's optimisations (they are only a few ops).
  fn = jax.jit(lambda z: (train.contrastive_loss(z, labels, config, mesh),
                          supcon_loss(z, labels, temperature=tau, positives_cap=2),
                          supcon_loss(z, labels, temperature=tau)))
  got, capped, uncapped = fn.lower(z).compile(
      compiler_options={"xla_backend_optimization_level": 0})(z)
  np.testing.assert_allclose(got, capped, rtol=1e-6)
  assert not np.isclose(got, uncapped, rtol=1e-3)


def test_unknown_model_names_the_field():
  with pytest.raises(ValueError, match=r"model\.name"):
    models.build_model(tiny_config(None, **{"model.name": "resnet7"}).model)


CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                      if not p.endswith("__init__.py"))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_file_is_valid(name):
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  config = module.get_config()
  config_lib.validate(config)
  models.validate(config.model)


@pytest.mark.slow
def test_command_line_overrides_reach_the_config(tmp_path, cpu_env):
  """A bad override reaches validation and the error names it; nothing is written."""
  env = cpu_env(8)
  proc = subprocess.run(
      [sys.executable, "-m", "supcon_jax.main", "--config=configs/fashion_mnist.py",
       f"--workdir={tmp_path}/run", "--config.batch_size=100"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "config.batch_size=100" in proc.stderr
  assert not os.path.exists(f"{tmp_path}/run")
