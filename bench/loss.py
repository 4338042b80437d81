"""Forward+backward time and peak memory of the SupCon loss: ours (dense and blockwise) and peers.

Each (implementation, batch size) runs in its own subprocess, so peak memory is per case. Run
from the repository root, in a venv with bench/requirements.txt (the PyTorch rows are skipped,
with a message, where torch or pytorch-metric-learning is missing):

  python -m bench.loss                          # 1024, 4096, 8192 samples x 2 views x 128-d
  python -m bench.loss --sizes 1024,4096 --repeats 2   # quicker

Rows:
  matmul x4     4 x the best time of one [2B, D] @ [D, 2B] float32 product in JAX (summed, so
                the [2B, 2B] result is not handed back): forward+backward needs the logits
                and the gradients of both factors, and the blockwise form recomputes the
                logits, so 4 such products are its floor (the dense forms need 3).
  jax dense     supcon_loss with one block (all [2B, 2B] intermediates stored).
  jax blockwise supcon_loss with its automatic block_size (or --block-size).
  torch dense   the usual PyTorch formulation (SupContrast repo's formula, written out below).
  pml           pytorch_metric_learning.losses.SupConLoss on the flattened views.
All use contrast_mode "all", L_out, τ = 0.1, labels from 100 classes, and report the loss value
so one sees they compute the same thing.

Time: the best of --repeats runs of jitted value_and_grad (JAX) or loss + backward (PyTorch),
after one warm-up run (JAX: after compilation); wall-clock, and the process's CPU seconds (all
threads), which another busy process on the machine disturbs less. Memory: peak resident set size of the child
process during the warm-up and timed runs, minus its size just before them (inputs created,
JAX function compiled); the kernel's peak counter (VmHWM) is reset first through
/proc/self/clear_refs, so compilation and imports are not counted. Host memory only: on an
accelerator the column says how much host memory the run took, not device memory.
"""
import argparse
import json
import os
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLS = ("matmul", "jax_dense", "jax_blockwise", "torch_dense", "pml")
LABELS = {"matmul": "matmul x4 (floor)", "jax_dense": "jax dense", "jax_blockwise":
          "jax blockwise", "torch_dense": "torch dense", "pml": "pml SupConLoss"}
NUM_CLASSES = 100
TEMPERATURE = 0.1


def _status_mib(key: str) -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(key + ":"):
        return int(line.split()[1]) / 1024
  raise KeyError(key)


def _reset_peak() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # resets VmHWM to the current RSS
    return True
  except OSError:
    return False


def _measure(run, repeats: int) -> dict:
  """Best time of `repeats` calls of run() after a warm-up, and the peak RSS they added."""
  exact_peak = _reset_peak()
  baseline = _status_mib("VmRSS")
  run()
  times, cpu_times = [], []
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    value = run()
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  return dict(time_s=min(times), cpu_s=min(cpu_times),
              peak_mib=_status_mib("VmHWM" if exact_peak else "VmRSS") - baseline, loss=value,
              exact_peak=exact_peak)


def _inputs(size: int, views: int, dim: int):
  import numpy as np
  rng = np.random.default_rng(0)
  features = rng.normal(size=(size, views, dim)).astype(np.float32)
  features /= np.linalg.norm(features, axis=-1, keepdims=True)
  return features, rng.integers(0, NUM_CLASSES, size=size).astype(np.int32)


def _run_jax(impl: str, size: int, views: int, dim: int, repeats: int, block_size) -> dict:
  import functools

  import jax
  import jax.numpy as jnp

  features, labels = map(jnp.asarray, _inputs(size, views, dim))
  if impl == "matmul":
    a = features.reshape(size * views, dim)
    product = jax.jit(lambda x, y: jnp.sum(x @ y.T)).lower(a, a + 1).compile()
    # Cheap, and the reference for every ratio: worth more tries at a quiet moment.
    result = _measure(lambda: float(product(a, a + 1)), max(repeats, 10))
    return dict(result, time_s=4 * result["time_s"], cpu_s=4 * result["cpu_s"], loss=None,
                device=jax.devices()[0].device_kind)
  from supcon_jax.losses import supcon_loss

  if impl == "jax_dense":
    block_size = size * views
  loss = functools.partial(supcon_loss, temperature=TEMPERATURE, block_size=block_size)
  step = jax.jit(jax.value_and_grad(loss)).lower(features, labels).compile()

  def run():
    value, grad = step(features, labels)
    grad.block_until_ready()
    return float(value)
  return dict(_measure(run, repeats), device=jax.devices()[0].device_kind)


def _torch_supcon(features, labels, temperature):
  """The usual dense PyTorch SupCon (L_out, contrast_mode "all"), as in the SupContrast repo."""
  import torch
  batch, views, _ = features.shape
  contrast = torch.cat(torch.unbind(features, dim=1), dim=0)  # view-major [V*B, D]
  logits = contrast @ contrast.T / temperature
  logits = logits - logits.max(dim=1, keepdim=True).values.detach()
  not_self = 1.0 - torch.eye(batch * views, device=features.device)
  mask = (labels[:, None] == labels[None, :]).float().repeat(views, views) * not_self
  exp_logits = torch.exp(logits) * not_self
  log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
  mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
  return -mean_log_prob_pos.mean()


def _run_torch(impl: str, size: int, views: int, dim: int, repeats: int) -> dict:
  import torch

  features, labels = map(torch.from_numpy, _inputs(size, views, dim))
  if impl == "torch_dense":
    loss_fn = lambda f: _torch_supcon(f, labels, TEMPERATURE)
  else:
    from pytorch_metric_learning import losses as pml_losses
    pml_loss = pml_losses.SupConLoss(temperature=TEMPERATURE)
    flat_labels = labels.repeat(views)  # view-major, as the flattened features below
    loss_fn = lambda f: pml_loss(torch.cat(torch.unbind(f, dim=1), dim=0), flat_labels)

  def run():
    f = features.clone().requires_grad_(True)
    value = loss_fn(f)
    value.backward()
    return float(value)
  return dict(_measure(run, repeats), device=f"torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")


def _child(args) -> None:
  if args.child in ("torch_dense", "pml"):
    result = _run_torch(args.child, args.size, args.views, args.dim, args.repeats)
  else:
    result = _run_jax(args.child, args.size, args.views, args.dim, args.repeats,
                      args.block_size)
  print("RESULT " + json.dumps(result))


def run_case(impl: str, size: int, args) -> dict:
  if impl in ("torch_dense", "pml"):
    missing = [m for m in ("torch", "pytorch_metric_learning")[:1 + (impl == "pml")]
               if not importable(m)]
    if missing:
      return dict(skipped=f"{' and '.join(missing)} not installed (pip install -r "
                  "bench/requirements.txt)")
  command = [sys.executable, "-m", "bench.loss", "--child", impl, "--size", str(size),
             "--views", str(args.views), "--dim", str(args.dim), "--repeats", str(args.repeats)]
  if args.block_size:
    command += ["--block-size", str(args.block_size)]
  try:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout,
                          cwd=_REPO)
  except subprocess.TimeoutExpired:
    return dict(skipped=f"over --timeout {args.timeout} s")
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
  return dict(skipped=f"failed (exit {proc.returncode}): {tail[:120]}")


def importable(module: str) -> bool:
  import importlib.util
  return importlib.util.find_spec(module) is not None


def run_all(sizes, impls, args) -> list[dict]:
  """Runs every case, printing each as it finishes; returns the rows of the table."""
  rows = []
  for size in sizes:
    for impl in impls:
      result = run_case(impl, size, args)
      rows.append(dict(result, impl=impl, size=size))
      print(f"  {size:>6} {LABELS[impl]:<18} "
            + (result["skipped"] if "skipped" in result else
               f"{result['time_s']:.3f} s, {result['peak_mib']:.0f} MiB"), file=sys.stderr)
  return rows


def format_table(rows, args) -> str:
  head = (f"SupCon fwd+bwd, B samples x {args.views} views x {args.dim}-d float32, "
          f"best of {args.repeats}; peak = RSS added by the runs")
  lines = [head, "",
           f"{'':>6}  {'':<18} {'wall':>7} {'x':>6} {'x':>6} {'cpu':>7} {'x':>6} "
           f"{'peak':>7} {'x':>6}",
           f"{'B':>6}  {'implementation':<18} {'s':>7} {'floor':>6} {'ours':>6} {'s':>7} "
           f"{'floor':>6} {'MiB':>7} {'ours':>6}  {'loss':>8}"]
  for size in sorted({r["size"] for r in rows}):
    case = {r["impl"]: r for r in rows if r["size"] == size}
    floor, ours = case.get("matmul", {}), case.get("jax_blockwise", {})
    for impl, r in case.items():
      if "skipped" in r:
        lines.append(f"{size:>6}  {LABELS[impl]:<18} skipped: {r['skipped']}")
        continue
      ratio = lambda key, ref: (f"{r[key] / ref[key]:.2f}" if key in ref and ref[key] > 0
                                else "-")
      loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
      lines.append(f"{size:>6}  {LABELS[impl]:<18} {r['time_s']:>7.3f} "
                   f"{ratio('time_s', floor):>6} {ratio('time_s', ours):>6} "
                   f"{r['cpu_s']:>7.2f} {ratio('cpu_s', floor):>6} {r['peak_mib']:>7.0f} "
                   f"{ratio('peak_mib', ours) if impl != 'matmul' else '-':>6}  {loss:>8}")
  devices = sorted({r["device"] for r in rows if "device" in r})
  lines += ["", "devices: " + "; ".join(devices),
            "x floor: / matmul x4 (wall, then CPU seconds); x ours: / jax blockwise (wall, "
            "then peak)"]
  if not all(r.get("exact_peak", True) for r in rows):
    lines.append("peak: /proc/self/clear_refs was not writable; peaks include compilation")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="1024,4096,8192",
                      help="comma-separated numbers of samples B")
  parser.add_argument("--views", type=int, default=2)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--impls", default=",".join(IMPLS), help=f"subset of {','.join(IMPLS)}")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
  parser.add_argument("--block-size", type=int, default=None,
                      help="block_size of the blockwise rows (default: automatic)")
  parser.add_argument("--timeout", type=float, default=600, help="seconds per case")
  parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
  parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    _child(args)
    return
  impls = args.impls.split(",")
  unknown = set(impls) - set(IMPLS)
  if unknown:
    parser.error(f"unknown --impls {sorted(unknown)}; expected a subset of {IMPLS}")
  load_before = os.getloadavg()[0]
  rows = run_all([int(s) for s in args.sizes.split(",")], impls, args)
  print(format_table(rows, args))
  print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs: other work on the machine slows the wall times")


if __name__ == "__main__":
  main()
