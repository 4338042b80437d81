"""Nothing lost, nothing silent (issue 15): finite-state steps and checkpoints, damaged
checkpoints, every config field checked before anything is written, the workdir lock, Ctrl-C,
resume-critical fields, None on the command line."""
import functools
import glob
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from absl import flags
from jax.sharding import Mesh
from ml_collections import config_flags

from configs import base
from supcon_jax import checkpointing, config_lib, experiment, input_pipeline, models, sharding
from supcon_jax import train, workdir_lock
from test_train import REPO, TINY, saved_state, tiny_config

# --- A step whose new state is not finite is not applied ---------------------------------------


def _inf_updates() -> optax.GradientTransformation:
  """Finite loss and gradient, infinite parameter update (an overflowing learning rate)."""
  return optax.scale(jnp.inf)


def _inf_opt_state() -> optax.GradientTransformation:
  """Zero updates, but an optimizer state that becomes infinite."""
  return optax.GradientTransformation(
      init=lambda params: {"acc": jnp.zeros(())},
      update=lambda updates, s, params=None: (jax.tree.map(jnp.zeros_like, updates),
                                              {"acc": s["acc"] + jnp.inf}))


@pytest.mark.parametrize("make_tx", [_inf_updates, _inf_opt_state])
def test_update_to_a_non_finite_state_is_not_applied(make_tx):
  # The smallest step to compile: one device, one view, no contrastive loss.
  config = tiny_config(None, method="cross_entropy", **{"data.num_views": 1})
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  model, tx = models.build_model(config.model), make_tx()
  state = experiment.create_train_state(jax.random.PRNGKey(0), model=model, tx=tx,
                                        image_shape=(16, 16, 1))
  step = jax.jit(functools.partial(train.train_step, model=model, tx=tx,
                                   schedule=optax.constant_schedule(0.1), config=config,
                                   mesh=mesh))
  rng = np.random.default_rng(0)
  batch = {"images": rng.normal(size=(16, 1, 16, 16, 1)).astype(np.float32),
           "labels": rng.integers(0, 10, size=16).astype(np.int32)}
  before = jax.device_get(state)
  after, metrics = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
  assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
  assert metrics["finite"] == 0.0
  after = jax.device_get(after)
  assert int(after.step) == 0
  jax.tree.map(np.testing.assert_array_equal, after, before)


# --- Shared trained workdir -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_mnist_dir):
  """A workdir with the checkpoints of steps 2, 4 and 6 of a 6-step run."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  train.train_and_evaluate(tiny_config(fashion_mnist_dir, num_train_steps=6), workdir)
  return workdir


@pytest.fixture
def workdir(trained, tmp_path):
  """A private copy of `trained`."""
  copy = str(tmp_path / "run")
  shutil.copytree(trained, copy)
  return copy


def _state_files(workdir: str, step: int) -> list[str]:
  """The array data files of a checkpoint, largest last."""
  files = glob.glob(os.path.join(checkpointing.checkpoint_dir(workdir), str(step), "state",
                                 "**", "d", "*"), recursive=True)
  return sorted(files, key=os.path.getsize)


def _truncate_data(workdir: str, step: int) -> str:
  path = _state_files(workdir, step)[-1]
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  return "cannot be read"


def _garbage_config(workdir: str, step: int) -> str:
  with open(os.path.join(checkpointing.checkpoint_dir(workdir), str(step), "config",
                         "metadata"), "w") as f:
    f.write("{not json")
  return "config cannot be read"


def _nan_parameters(workdir: str, step: int) -> str:
  """Rewrites checkpoint `step` with one NaN parameter array (what a bad disk or a bad update
  from older code leaves behind)."""
  state = saved_state(workdir, step)
  saved_config = checkpointing.read_saved_config(workdir, step)
  kernel = state["params"]["classifier"]["Dense_0"]["kernel"]
  state["params"]["classifier"]["Dense_0"]["kernel"] = np.full_like(kernel, np.nan)
  shutil.rmtree(os.path.join(checkpointing.checkpoint_dir(workdir), str(step)))
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir),
                             item_names=("state", "config")) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               config=ocp.args.JsonSave(saved_config)),
                 force=True)
  return r"NaN/Inf in 1 arrays \(\.params\['classifier'\]\['Dense_0'\]\['kernel'\]\)"


DAMAGES = [_truncate_data, _garbage_config, _nan_parameters]


def _restore(config, workdir: str, **kwargs):
  exp = experiment.build_experiment(config, sharding.create_mesh())
  with checkpointing.create_manager(workdir, config) as manager:
    return checkpointing.restore(manager, exp.abstract_state(), config, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_latest_checkpoint_falls_back_and_is_kept(fashion_mnist_dir, workdir, damage,
                                                          caplog):
  reason = damage(workdir, 6)
  config = tiny_config(fashion_mnist_dir, num_train_steps=6)
  path = os.path.join(checkpointing.checkpoint_dir(workdir), "6")
  with pytest.raises(checkpointing.CheckpointDamagedError, match=f"{path}: .*{reason}"):
    _restore(config, workdir, step=6)  # an explicit step does not fall back

  with caplog.at_level(logging.WARNING):
    state, step = _restore(config, workdir, resume=True)
  assert step == 4
  kernel = lambda params: params["classifier"]["Dense_0"]["kernel"]
  np.testing.assert_array_equal(jax.device_get(kernel(state.params)),
                                kernel(saved_state(workdir, 4)["params"]))
  kept = os.path.join(workdir, checkpointing.DAMAGED_DIR, "6")
  assert os.path.isdir(kept) and not os.path.exists(path)
  log = caplog.text
  assert f"Cannot use checkpoint {path}" in log and "newest intact" in log and kept in log


@pytest.mark.slow
def test_every_checkpoint_damaged_is_one_error_naming_each(fashion_mnist_dir, workdir):
  reasons = {step: damage(workdir, step) for step, damage in zip((2, 4, 6), DAMAGES)}
  with pytest.raises(checkpointing.CheckpointDamagedError, match="Every checkpoint") as error:
    _restore(tiny_config(fashion_mnist_dir, num_train_steps=6), workdir, resume=True)
  for step, reason in reasons.items():
    path = os.path.join(checkpointing.checkpoint_dir(workdir), str(step))
    assert re.search(f"{path}: [^;]*{reason}", str(error.value)), (step, str(error.value))
  assert os.path.isdir(os.path.join(checkpointing.checkpoint_dir(workdir), "6"))  # untouched


def _cli_env() -> dict:
  return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
          "JAX_PLATFORMS": "cpu"}


def _cli_args(fashion_mnist_dir: str, workdir: str, steps: int) -> list[str]:
  """The command line of tiny_config's run of `steps` steps."""
  overrides = {**TINY, "data.data_dir": fashion_mnist_dir, "num_train_steps": steps}
  return [sys.executable, "-m", "supcon_jax.main", "--config=configs/base.py",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]


@pytest.mark.slow
def test_cli_resumes_past_a_truncated_checkpoint_with_one_readable_message(fashion_mnist_dir,
                                                                           workdir):
  _truncate_data(workdir, 6)
  proc = subprocess.run(_cli_args(fashion_mnist_dir, workdir, 6), cwd=REPO, env=_cli_env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Cannot use checkpoint {workdir}/checkpoints/6: its arrays cannot be read" in proc.stderr
  assert "Event loop is closed" not in proc.stderr and "Traceback" not in proc.stderr
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir)) as manager:
    assert sorted(manager.all_steps()) == [2, 4, 6]
  assert os.path.isdir(os.path.join(workdir, checkpointing.DAMAGED_DIR, "6"))
  state = saved_state(workdir, 6)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


# --- Resume-critical fields ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("overrides,field", [
    ({"batch_size": 32}, "config.batch_size = 16 in the checkpoint, 32 now"),
    ({"optim.base_lr": 0.1}, "config.optim.base_lr = 0.5 in the checkpoint, 0.1 now"),
    ({"optim.warmup_epochs": 1.0}, "config.optim.warmup_epochs"),
    ({"seed": 1}, "config.seed"),
])
def test_resume_refuses_a_schedule_or_data_change(fashion_mnist_dir, workdir, overrides, field):
  config = tiny_config(fashion_mnist_dir, num_train_steps=6, **overrides)
  with pytest.raises(checkpointing.CheckpointMismatchError) as error:
    train.train_and_evaluate(config, workdir)
  assert field in str(error.value) and "data position and learning-rate schedule" in str(
      error.value)
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir)) as manager:
    assert manager.latest_step() == 6  # nothing was written


@pytest.mark.slow
def test_resume_accepts_gradient_clipping_to_get_past_a_divergence(fashion_mnist_dir, workdir):
  shutil.rmtree(os.path.join(checkpointing.checkpoint_dir(workdir), "6"))  # resume from 4
  result = train.train_and_evaluate(
      tiny_config(fashion_mnist_dir, num_train_steps=6, **{"optim.grad_clip_norm": 1.0}),
      workdir)
  assert np.isfinite(result["loss"])
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir)) as manager:
    assert manager.latest_step() == 6


# --- Every field checked, before anything is written -------------------------------------------

# One bad value per field of configs/base.py: a new field needs a check and an entry here.
BAD_VALUES = {
    "seed": -1, "method": "byol", "batch_size": 0, "num_epochs": 0.0, "num_train_steps": 0,
    "data.dataset": "mnist", "data.data_dir": "", "data.train_split": "",
    "data.eval_split": "", "data.image_size": 0, "data.num_views": 0, "data.manual_dir": "",
    "data.shuffle_buffer_size": 0, "data.augment": "bogus", "data.crop_area": (1.5, 0.2),
    "data.crop_aspect_ratio": (4 / 3, 3 / 4), "data.color_jitter_strength": -0.5,
    "data.blur": None, "data.randaugment_num_ops": -1, "data.randaugment_magnitude": 11,
    "model.name": "resnet7", "model.num_classes": 0, "model.dtype": "float16",
    "model.stem": "huge", "model.width": 0.0, "model.zero_init_last_bn": None,
    "model.bn_momentum": 1.0, "model.bn_epsilon": 0.0, "model.norm": "layer",
    "model.patch_size": 0, "model.pool": "max", "model.head_dims": (), "model.head_bn": None,
    "model.normalize_representation": None,
    "loss.temperature": 0.0, "loss.base_temperature": -1.0, "loss.contrast_mode": "some",
    "loss.summation": "middle", "loss.denominator": "none", "loss.label_smoothing": 1.0,
    "loss.block_size": 0,
    "train.shard_params": None, "train.log_every_steps": 0, "train.eval_every_steps": None,
    "train.checkpoint_every_steps": 0, "train.keep_checkpoints": 0, "train.microbatches": 0,
    "train.probe_weight": -1.0,
    "probe.epochs": 0, "probe.batch_size": 0, "probe.augmented_features": None,
    "probe.knn_k": 0, "probe.knn_temperature": 0.0, "probe.ece_bins": 0,
    "probe.corruptions": ("gaussian_noise", "impulse_noise"), "probe.severities": (0,),
    "probe.corruption_split": "", "probe.tsne_examples": -1,
    "data.crop_min_object_covered": 1.5, "data.crop_max_attempts": 0,
    "data.color_jitter_impl": "pil", "init.checkpoint": "", "init.format": "onnx",
    "loss.positives_cap": -2, "model.head_init": "xavier", "model.head_init_std": 0.0,
    "model.head_output_bias": None, "train.eval_every_steps": None,
    # Exactly one of *_every_epochs and *_steps: the tiny config sets the steps.
    "train.eval_every_epochs": 1.0, "train.checkpoint_every_epochs": 1.0,
    "probe.augment": "bogus", "probe.init": "ones", "probe.label_smoothing": 1.0,
    "probe.train_batch_statistics": None, "probe.raw_pixel_baseline": None,
    "probe.standardize": None,
    "probe.reference_top1": (("cross-entropy", 91.0),),
}
OPTIM_BAD_VALUES = {
    "name": "lamb", "base_lr": -1.0, "warmup_epochs": -1.0, "schedule": "linear",
    "weight_decay": -1e-6, "momentum": 1.0, "nesterov": None, "trust_coefficient": 0.0,
    "b1": 1.0, "b2": -0.1, "eps": 0.0, "rmsprop_decay": 1.5, "grad_clip_norm": -1.0,
    "warmup_init_factor": -0.1, "end_lr_factor": 1.5, "decay_rate": 0.0,
    "epochs_per_decay": 0.0, "milestones_epochs": (60, 30), "decay_after_warmup": None,
    "decay_biases": None, "decay_norms": None, "rmsprop_initial_scale": -1.0,
}
for _section in ("optim", "probe.optim"):
  BAD_VALUES.update({f"{_section}.{k}": v for k, v in OPTIM_BAD_VALUES.items()})


def _fields(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_fields(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


BASE_FIELDS = _fields(base.get_config())


def _set(config: ml_collections.ConfigDict, field: str, value) -> None:
  *path, last = field.split(".")
  for part in path:
    config = config[part]
  config[last] = value


@pytest.mark.parametrize("field", sorted(BASE_FIELDS))
def test_every_field_has_a_check(field):
  assert field in BAD_VALUES, (
      f"{field} has no bad value here: add a check to config_lib.validate and one here.")
  config = tiny_config(None)
  _set(config, field, BAD_VALUES[field])
  with pytest.raises(ValueError, match=rf"Bad value config\.{field.replace('.', '[.]')}="):
    config_lib.validate(config)


FLOAT_FIELDS = sorted(f for f, v in BASE_FIELDS.items() if isinstance(v, float) or (
    isinstance(v, tuple) and v and isinstance(v[0], float)))


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_in_any_float_field_is_refused(field, bad):
  config = tiny_config(None)
  value = BASE_FIELDS[field]
  _set(config, field, (bad,) + tuple(value[1:]) if isinstance(value, tuple) else bad)
  with pytest.raises(ValueError, match=rf"Bad value config\.{field.replace('.', '[.]')}="):
    config_lib.validate(config)


@pytest.mark.parametrize("overrides,message", [
    ({"model.num_classes": 3}, r"config\.model\.num_classes=3: expected 10, the number of "
                               r"classes of fashion_mnist"),
    ({"num_train_steps": None, "num_epochs": 0.001}, r"config\.num_epochs=0\.001: expected at "
                                                     r"least one step"),
    ({"batch_size": 128}, r"config\.batch_size=128: expected at most the 64 examples"),
    ({"data.augment": "bogus"}, r"config\.data\.augment='bogus'"),
    ({"data.image_size": 0}, r"config\.data\.image_size=0"),
    ({"data.crop_area": (1.5, 0.2)}, r"config\.data\.crop_area=\(1\.5, 0\.2\)"),
    ({"optim.base_lr": -1.0}, r"config\.optim\.base_lr=-1\.0"),
    ({"optim.base_lr": math.nan}, r"config\.optim\.base_lr=nan"),
])
def test_bad_values_stop_the_run_before_anything_is_written(fashion_mnist_dir, tmp_path,
                                                            overrides, message):
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(tiny_config(fashion_mnist_dir, **overrides), workdir)
  assert not os.path.exists(workdir)


# --- One trainer per workdir ---------------------------------------------------------------------


def test_a_second_trainer_exits_at_once_naming_the_holder(fashion_mnist_dir, tmp_path):
  workdir = str(tmp_path)
  holder = f"pid {os.getpid()} on host {socket.gethostname()}"
  with workdir_lock.hold(workdir):
    with pytest.raises(workdir_lock.WorkdirLockedError, match=holder):
      train.train_and_evaluate(tiny_config(fashion_mnist_dir), workdir)
    assert not os.path.exists(checkpointing.checkpoint_dir(workdir))
  with workdir_lock.hold(workdir):  # released at the end of the block
    pass


_HOLD_THEN_DIE = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from supcon_jax import workdir_lock
with workdir_lock.hold({workdir!r}):
  print("locked", flush=True)
  os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_the_lock_of_a_killed_trainer_does_not_block(tmp_path):
  workdir = str(tmp_path)
  proc = subprocess.run([sys.executable, "-c", _HOLD_THEN_DIE.format(repo=REPO, workdir=workdir)],
                        env=_cli_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL and "locked" in proc.stdout, proc.stderr[-2000:]
  assert os.path.getsize(os.path.join(workdir, workdir_lock.LOCK_FILE)) > 0  # left behind
  with workdir_lock.hold(workdir):
    pass


# --- Ctrl-C -------------------------------------------------------------------------------------


def _interrupted_iterator(monkeypatch, signals: int):
  real_iterator = input_pipeline.create_train_iterator

  def interrupted_after_3_batches(*args, **kwargs):
    for i, batch in enumerate(real_iterator(*args, **kwargs)):
      if i == 3:
        for _ in range(signals):
          os.kill(os.getpid(), signal.SIGINT)
      yield batch

  monkeypatch.setattr(input_pipeline, "create_train_iterator", interrupted_after_3_batches)


@pytest.mark.slow
def test_ctrl_c_saves_and_stops(fashion_mnist_dir, tmp_path, monkeypatch):
  _interrupted_iterator(monkeypatch, signals=1)
  handler = signal.getsignal(signal.SIGINT)
  result = train.train_and_evaluate(tiny_config(fashion_mnist_dir, num_train_steps=6),
                                    str(tmp_path))
  assert result["preempted_at_step"] == 4
  assert signal.getsignal(signal.SIGINT) is handler  # put back
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(str(tmp_path))) as manager:
    assert manager.latest_step() == 4


@pytest.mark.slow
def test_a_second_ctrl_c_quits_at_once(fashion_mnist_dir, tmp_path, monkeypatch):
  _interrupted_iterator(monkeypatch, signals=2)
  with pytest.raises(KeyboardInterrupt, match="without saving"):
    train.train_and_evaluate(tiny_config(fashion_mnist_dir, num_train_steps=6), str(tmp_path))
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(str(tmp_path))) as manager:
    assert manager.latest_step() == 2  # the periodic one; no save on the way out
  with workdir_lock.hold(str(tmp_path)):  # and the lock was released
    pass


# --- None on the command line -------------------------------------------------------------------


@pytest.mark.parametrize("field,config_file", [
    ("data.manual_dir", "configs/fashion_mnist.py"),  # a str field set by the recipe
    ("data.data_dir", "configs/base.py"),
    ("num_train_steps", "configs/base.py"),  # int
    ("loss.base_temperature", "configs/base.py"),  # float
])
def test_none_on_the_command_line_means_none(field, config_file):
  argv = ["prog", f"--config={os.path.join(REPO, config_file)}", f"--config.{field}=None"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  config_lib.accept_none_on_command_line()
  flag_values(argv)
  value = flag_values.config
  for part in field.split("."):
    value = value[part]
  assert value is None
