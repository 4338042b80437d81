"""Pretraining: SupCon / SimCLR / cross-entropy over a device mesh, with an online linear probe.

`train_and_evaluate(config, workdir)` is the whole job; `train_step` and `eval_step` are the
pure functions it jits. The SupCon loss runs under `jax.shard_map` so each device's views are
anchors against the all-gathered global batch: exact over the global batch, O(local × global)
memory per device.
"""
import functools
import json
import os
import signal
import threading
import time
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import metric_writers, parameter_overview
from etils import epath
from jax.sharding import Mesh, PartitionSpec as P

from supcon_jax import checkpointing, console, experiment, input_pipeline, losses, metrics
from supcon_jax import sharding, torch_io, workdir_lock
from supcon_jax.experiment import TrainState


def contrastive_loss(z: jax.Array, labels: Optional[jax.Array], config: ml_collections.ConfigDict,
                     mesh: Mesh) -> jax.Array:
  """SupCon (or SimCLR when labels is None) of [B, V, D] projections sharded over the mesh."""
  loss_fn = functools.partial(
      losses.supcon_loss, temperature=config.loss.temperature,
      base_temperature=config.loss.base_temperature, contrast_mode=config.loss.contrast_mode,
      summation=config.loss.summation, denominator=config.loss.denominator,
      positives_cap=config.loss.positives_cap, block_size=config.loss.block_size,
      axis_name=sharding.DATA_AXIS)
  if labels is None:
    return jax.shard_map(lambda f: loss_fn(f, None), mesh=mesh,
                         in_specs=P(sharding.DATA_AXIS), out_specs=P())(z)
  return jax.shard_map(loss_fn, mesh=mesh, in_specs=(P(sharding.DATA_AXIS),) * 2,
                       out_specs=P())(z, labels)


def objective(outputs: dict[str, jax.Array], labels: jax.Array, *,
              config: ml_collections.ConfigDict, mesh: Mesh) -> tuple[jax.Array, dict]:
  """Training loss of the model outputs of a whole global batch.

  `outputs` hold "projection" [B, V, D] and "logits" [B, V, C]; `labels` are [B].
  Returns (total, metrics); the probe's cross-entropy only reaches the classifier head
  (it sees stop_gradient(r)) unless the method is the cross-entropy baseline.
  """
  b, v = outputs["logits"].shape[:2]
  logits = outputs["logits"].reshape(b * v, -1)
  flat_labels = jnp.repeat(labels, v)
  probe_loss = losses.cross_entropy_loss(logits, flat_labels,
                                         label_smoothing=config.loss.label_smoothing)
  if config.method == "cross_entropy":
    main_loss = total = probe_loss
  else:
    main_loss = contrastive_loss(outputs["projection"],
                                 labels if config.method == "supcon" else None, config, mesh)
    total = main_loss + config.train.probe_weight * probe_loss
  return total, dict(main_loss=main_loss, probe_loss=probe_loss,
                     probe_top1=losses.topk_accuracy(logits, flat_labels, k=1))


def _forward(model, params, batch_stats, images: jax.Array, rng: jax.Array):
  """images [n, V, H, W, C] -> ({"projection": [n, V, D], "logits": [n, V, C]}, batch_stats)."""
  n, v = images.shape[:2]
  # Sample-major flattening keeps each sample's views on the device that holds the sample.
  outputs, mutated = model.apply(
      {"params": params, "batch_stats": batch_stats}, images.reshape((n * v,) + images.shape[2:]),
      train=True, mutable=["batch_stats"], rngs={"dropout": rng})
  outputs = {k: outputs[k].reshape(n, v, -1) for k in ("projection", "logits")}
  # Encoders without BatchNorm (GroupNorm ResNets, ViTs) have no statistics to update.
  return outputs, mutated.get("batch_stats", batch_stats)


def _split(x: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [k, B / k, ...]: micro-batch j holds samples j, j + k, ..., so each one is
  spread over every device that holds the batch."""
  return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)


def _merge(x: jax.Array) -> jax.Array:
  """Inverse of _split: [k, B / k, ...] -> [B, ...]."""
  return jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])


def cached_gradients(params, batch_stats, images: jax.Array, labels: jax.Array, rng: jax.Array,
                     *, model, config: ml_collections.ConfigDict, mesh: Mesh):
  """Gradient caching (Gao et al., 2021) over `config.train.microbatches` = k micro-batches.

  Pass 1 embeds each micro-batch without keeping activations; the objective and its
  gradient w.r.t. the embeddings are taken over the whole global batch; pass 2 re-runs each
  micro-batch and pulls its slice of that gradient back into the parameters. The result
  equals the full-batch gradient for encoders whose outputs do not depend on the rest of the
  batch (GroupNorm, LayerNorm); BatchNorm normalises with per-micro-batch statistics.
  Returns ((total, metrics), grads, new batch_stats).
  """
  k = config.train.microbatches
  micro_images = _split(images, k)
  rngs = jax.random.split(rng, k)

  def embed(stats, inputs):
    x, r = inputs
    outputs, stats = _forward(model, params, stats, x, r)
    return stats, outputs

  new_stats, micro_outputs = jax.lax.scan(embed, batch_stats, (micro_images, rngs))
  outputs = jax.tree.map(_merge, micro_outputs)
  (total, metrics), output_grads = jax.value_and_grad(
      functools.partial(objective, config=config, mesh=mesh), has_aux=True)(outputs, labels)
  micro_grads = jax.tree.map(functools.partial(_split, k=k), output_grads)

  def backprop(acc, inputs):
    x, r, cotangent = inputs
    _, pullback = jax.vjp(lambda p: _forward(model, p, batch_stats, x, r)[0], params)
    return jax.tree.map(jnp.add, acc, pullback(cotangent)[0]), None

  grads, _ = jax.lax.scan(backprop, jax.tree.map(jnp.zeros_like, params),
                          (micro_images, rngs, micro_grads))
  return (total, metrics), grads, new_stats


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               config: ml_collections.ConfigDict, mesh: Mesh) -> tuple[TrainState, dict]:
  """One update on a global batch {"images": [B, V, H, W, C], "labels": [B]}.

  An update whose loss, gradient or new state (parameters, batch statistics, optimizer state)
  holds a NaN or Inf is not applied: the state comes back unchanged and metrics["finite"] = 0,
  so the caller can stop before anything bad is saved.
  """
  images, labels = batch["images"], batch["labels"]
  step_rng = jax.random.fold_in(state.rng, state.step)
  if config.train.microbatches > 1:
    (loss, aux), grads, new_stats = cached_gradients(
        state.params, state.batch_stats, images, labels, step_rng, model=model, config=config,
        mesh=mesh)
  else:
    def loss_fn(params):
      outputs, stats = _forward(model, params, state.batch_stats, images, step_rng)
      total, metrics = objective(outputs, labels, config=config, mesh=mesh)
      return total, (metrics, stats)
    (loss, (aux, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)

  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  grad_norm = optax.global_norm(grads)
  candidate = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=new_stats, opt_state=new_opt_state)
  # A finite loss and gradient can still give an overflowing update (a huge learning rate).
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(
      (candidate.params, candidate.batch_stats, candidate.opt_state))
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), candidate, state)
  step_metrics = dict(
      loss=loss, **aux, learning_rate=schedule(state.step), grad_norm=grad_norm,
      param_norm=optax.global_norm(state.params), update_norm=optax.global_norm(updates),
      finite=finite.astype(jnp.float32))
  return new_state, step_metrics


def _all_finite(tree: Any) -> jax.Array:
  """bool []: no float leaf of `tree` holds a NaN or Inf."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return functools.reduce(jnp.logical_and, checks, jnp.array(True))


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, model) -> dict[str, jax.Array]:
  """Sums of top-1/top-5 hits and of real examples for {"images": [B, 1, ...], "mask": [B]}."""
  images = batch["images"][:, 0]
  outputs = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images,
                        train=False)
  mask = batch["mask"].astype(jnp.float32)
  k5 = min(5, outputs["logits"].shape[-1])
  return dict(
      top1=jnp.sum(losses.topk_correct(outputs["logits"], batch["labels"], 1) * mask),
      top5=jnp.sum(losses.topk_correct(outputs["logits"], batch["labels"], k5) * mask),
      count=jnp.sum(mask))


def evaluate(eval_fn, state: TrainState, batches: Iterable[dict]) -> dict[str, float]:
  """Probe top-1/top-5 over the whole eval split (padding masked out, every example once)."""
  totals = None
  for batch in batches:
    sums = eval_fn(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = max(float(totals["count"]), 1.0)
  return dict(probe_eval_top1=float(totals["top1"]) / count,
              probe_eval_top5=float(totals["top5"]) / count,
              eval_examples=float(totals["count"]))


class _StopSignals:
  """Records SIGTERM (preemption) and SIGINT (Ctrl-C) of a single-process run, so the loop can
  save and exit cleanly; a second signal of either kind, while saving, quits at once."""

  _NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}

  def __init__(self):
    self.received = threading.Event()
    self._previous: dict[int, Any] = {}

  def _handle(self, signum: int, _) -> None:
    if self.received.is_set():
      raise KeyboardInterrupt(f"{self._NAMES[signum]} again: quitting without saving.")
    self.received.set()
    logging.warning("%s: saving a checkpoint after this step, then stopping (%s again quits "
                    "without saving).", self._NAMES[signum], self._NAMES[signum])

  def __enter__(self):
    # With jax.distributed, JAX's preemption service owns SIGTERM and orbax syncs on it; a
    # Ctrl-C reaches each process at a different step, so there it only interrupts.
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self._NAMES}
    return self

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def _describe_run(config: ml_collections.ConfigDict, exp: experiment.Experiment, state,
                  workdir: str, start_step: int) -> None:
  """Writes config.json and parameters.txt to the workdir and says what runs, in a few lines."""
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  if jax.process_index() == 0:  # epath: the workdir may be on GCS.
    path = epath.Path(workdir)
    (path / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
    (path / "parameters.txt").write_text(
        parameter_overview.get_parameter_overview(state.params) + "\n")
  d = exp.data
  logging.info("%s on %s: %d train / %d eval examples, %d classes, input %s.", config.method,
               config.data.dataset, d.num_train_examples, d.num_eval_examples, d.num_classes,
               "x".join(map(str, d.image_shape)))
  logging.info("Model %s: %.2fM parameters (table: %s).", config.model.name, num_params / 1e6,
               os.path.join(workdir, "parameters.txt"))
  logging.info("%d %s device(s) in %d process(es); global batch %d; %d steps (%.4g epochs of "
               "%d steps)%s.", jax.device_count(), jax.devices()[0].platform,
               jax.process_count(), config.batch_size, exp.total_steps,
               exp.total_steps / exp.steps_per_epoch, exp.steps_per_epoch,
               f", resuming at step {start_step}" if start_step else "")
  logging.info("Workdir %s: checkpoints every %d steps in checkpoints/, config.json; "
               "TensorBoard: tensorboard --logdir %s", workdir,
               exp.checkpoint_every_steps, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Pretrains (resuming from `workdir` if it holds a checkpoint) and returns final metrics.

  Every config field is checked, also against the dataset, before anything is written; the
  workdir is then locked for this run (workdir_lock).
  """
  started = time.time()
  mesh = sharding.create_mesh()
  exp = experiment.build_experiment(config, mesh)
  with workdir_lock.hold(workdir), checkpointing.create_manager(workdir, config) as manager:
    return _train(config, workdir, exp, mesh, manager, started)


def _train(config: ml_collections.ConfigDict, workdir: str, exp: experiment.Experiment,
           mesh: Mesh, manager, started: float) -> dict[str, float]:
  """The training loop of train_and_evaluate, with the workdir locked and `manager` open."""
  model, tx, schedule, total_steps = exp.model, exp.tx, exp.schedule, exp.total_steps
  state_shardings = exp.state_shardings
  if manager.all_steps():
    state, start_step = checkpointing.restore(manager, exp.abstract_state(), config,
                                              resume=True)
    last_checkpoint: Optional[int] = start_step
  else:
    state = torch_io.init_from_checkpoint(exp.init_state(config.seed), config, state_shardings)
    start_step, last_checkpoint = 0, None
  _describe_run(config, exp, state, workdir, start_step)

  writer = metrics.create_writer(workdir)
  if start_step == 0:
    writer.write_hparams(flatten_config(config))

  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = jax.jit(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config,
                        mesh=mesh),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  eval_fn = jax.jit(functools.partial(eval_step, model=model),
                    in_shardings=(state_shardings, batch_sharding))
  hooks = metrics.create_hooks(total_steps, writer, config.train.log_every_steps)

  train_iter = input_pipeline.create_train_iterator(config, mesh, start_step=start_step)
  pending: list[dict] = []  # metrics since the last log, still on device
  last_log = (start_step, time.time())
  step = start_step
  result: dict[str, float] = {}
  with _StopSignals() as stop, metric_writers.ensure_flushes(writer):
    while step < total_steps:
      state, step_metrics = step_fn(state, next(train_iter))
      # Checking the previous update keeps the host one step behind the device, not in sync.
      if pending:
        _check_finite(pending[-1], step, last_checkpoint)
      pending.append(step_metrics)
      step += 1
      for hook in hooks:
        hook(step)
      preempted = (stop.received.is_set() if jax.process_count() == 1
                   else manager.reached_preemption(step))
      is_last = step == total_steps
      if step % config.train.log_every_steps == 0 or is_last:
        _check_finite(step_metrics, step, last_checkpoint)
        summary = metrics.mean_of(pending)
        del summary["finite"]
        elapsed = max(time.time() - last_log[1], 1e-9)
        steps_per_sec = (step - last_log[0]) / elapsed
        summary["images_per_sec_per_device"] = (
            steps_per_sec * config.batch_size / jax.device_count())
        writer.write_scalars(step, summary)
        logging.info("%s", console.progress_line(step, total_steps, summary, steps_per_sec,
                                                 steps_per_sec * config.batch_size))
        result.update(summary)
        pending, last_log = [], (step, time.time())
      if step == start_step + 1:  # time from here on, so that compilation is not in steps/s
        last_log = (step, time.time())
      if preempted or is_last or step % exp.checkpoint_every_steps == 0:
        _check_finite(step_metrics, step, last_checkpoint)  # never save a rejected update
        checkpointing.save(manager, step, state, config)
        last_checkpoint = step
      if preempted:
        manager.wait_until_finished()
        logging.warning("Stopped: saved the checkpoint of step %d; rerun the same command "
                        "to resume.", step)
        result["preempted_at_step"] = float(step)
        return result
      if exp.eval_every_steps > 0 and step % exp.eval_every_steps == 0 and not is_last:
        eval_metrics = evaluate(eval_fn, state,
                                input_pipeline.create_eval_iterator(config, mesh))
        writer.write_scalars(step, eval_metrics)
        logging.info("%s", _eval_line(step, eval_metrics))
    eval_metrics = evaluate(eval_fn, state, input_pipeline.create_eval_iterator(config, mesh))
    writer.write_scalars(step, eval_metrics)
    result.update(eval_metrics)
  manager.wait_until_finished()
  logging.info("Result: %s after %d steps (%s). Linear evaluation of the frozen encoder: "
               "python -m supcon_jax.linear_eval --config=... --workdir=%s",
               _eval_line(step, eval_metrics), step, console.duration(time.time() - started),
               workdir)
  return result


def _eval_line(step: int, eval_metrics: dict[str, float]) -> str:
  return (f"online probe top-1 {100 * eval_metrics['probe_eval_top1']:.2f}% "
          f"(top-5 {100 * eval_metrics['probe_eval_top5']:.2f}%) on "
          f"{int(eval_metrics['eval_examples'])} eval examples at step {step}")


def _check_finite(step_metrics: dict, step: int, last_checkpoint: Optional[int]) -> None:
  """Stops with a clear message when the update to `step` was rejected for a NaN or Inf.

  `last_checkpoint` is the newest step saved or resumed from: the trainer saves only states
  that passed this check, so it holds finite values.
  """
  if float(jax.device_get(step_metrics["finite"])) == 1.0:
    return
  kept = (f"the last checkpoint, step {last_checkpoint}, holds finite values"
          if last_checkpoint is not None else "no checkpoint was written")
  raise FloatingPointError(
      f"NaN/Inf in the update to step {step} (loss={float(step_metrics['loss'])}, "
      f"grad_norm={float(step_metrics['grad_norm'])}, or in the new parameters, batch "
      f"statistics or optimizer state): it was not applied, training stopped, and {kept}. "
      "Set optim.grad_clip_norm or raise loss.temperature and rerun the same command to "
      "resume from there; a lower optim.base_lr or longer optim.warmup_epochs changes the "
      "schedule, which a resumed run keeps, so use a new workdir for those.")


def flatten_config(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """{"optim.base_lr": 0.3, ...} with values TensorBoard's hparams plugin accepts."""
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten_config(value, name + "."))
    elif isinstance(value, (bool, int, float, str)):
      out[name] = value
    else:
      out[name] = str(value)
  return out
