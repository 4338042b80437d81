r"""Images per second of the train step, its FLOPs (XLA cost analysis) and model FLOPs utilisation.

  python -m bench.train_step --config=configs/fashion_mnist.py
  python -m bench.train_step --config=configs/imagenet_r50.py --config.batch_size=256 --steps=20

Runs on whatever backend jax picks, on synthetic batches of the config's shape (the input
pipeline is benchmarked by bench/input_pipeline.py). MFU = FLOPs per step / step time / peak,
where the peak of the device kind is known (TPU v4/v5e/v5p, A100, H100, H200; bf16 dense).
"""
import functools
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from supcon_jax import console

console.import_tensorflow_quietly()  # before the modules below import it
# pylint: disable=g-import-not-at-top,wrong-import-position
from supcon_jax import experiment, sharding, train  # noqa: E402

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12,
}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/fashion_mnist.py", "Config file.")
flags.DEFINE_integer("steps", 10, "Timed steps after two warm-up steps.")


def main(argv):
  del argv
  config = FLAGS.config
  mesh = sharding.create_mesh()
  exp = experiment.build_experiment(config, mesh)
  state = exp.init_state(config.seed)
  step_fn = jax.jit(
      functools.partial(train.train_step, model=exp.model, tx=exp.tx, schedule=exp.schedule,
                        config=config, mesh=mesh),
      in_shardings=(exp.state_shardings, sharding.batch_sharding(mesh)), donate_argnums=(0,))
  shape = (config.batch_size, config.data.num_views) + tuple(exp.data.image_shape)
  rng = np.random.default_rng(0)
  batch = jax.device_put(
      {"images": jnp.asarray(rng.normal(size=shape), jnp.float32),
       "labels": jnp.asarray(rng.integers(0, exp.data.num_classes, config.batch_size),
                             jnp.int32)},
      sharding.batch_sharding(mesh))

  compiled = step_fn.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  for _ in range(2):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / FLAGS.steps

  kind = jax.devices()[0].device_kind
  n = jax.device_count()
  images = config.batch_size / seconds
  print(f"config: {config.method} {config.model.name} {config.data.dataset} "
        f"batch {config.batch_size} x {config.data.num_views} views, "
        f"{shape[2]}x{shape[3]}x{shape[4]}, dtype {config.model.dtype}, "
        f"microbatches {config.train.microbatches}")
  print(f"devices: {n} x {kind} ({jax.default_backend()})")
  print(f"step time: {seconds * 1e3:.1f} ms   images/s: {images:.1f}   "
        f"images/s/device: {images / n:.1f}")
  if flops:
    # XLA's count is for the program of one device (SPMD), so it is the per-device FLOPs.
    print(f"FLOPs/step/device (XLA cost analysis): {flops:.3e}   "
          f"achieved: {flops / seconds / 1e12:.2f} TFLOP/s/device")
    peak = next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)
    print(f"MFU: {flops / seconds / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak
          else f"MFU: peak of {kind!r} unknown")
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
