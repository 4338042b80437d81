r"""Cross-entropy baseline for configs/fashion_mnist.py: same encoder, data, epochs and probe.

  python -m supcon_jax.main --config=configs/fashion_mnist_ce.py --workdir=/tmp/ce_fmnist
  python -m supcon_jax.linear_eval --config=configs/fashion_mnist_ce.py --workdir=/tmp/ce_fmnist

One view per image, so at equal epochs it computes half of SupCon's forward and backward
passes (bench.study also plots both against wall-clock). Tuned with the same effort as SupCon,
on the same validation split and the same axes (stem, learning rate, crop area; it has no
temperature or views to tune): the trials are in configs/fashion_mnist.py's docstring. It
shares every value it can with SupCon (optimizer, schedule, crop, encoder); where the trials
picked the same value for both, they share it.
"""
from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.method = "cross_entropy"
  c.data.num_views = 1
  c.probe.reference_top1 = ()
  return c
