r"""Cross-entropy baseline for configs/fashion_mnist.py: same encoder, data and step budget.

  python -m supcon_jax.main --config=configs/fashion_mnist_ce.py --workdir=/tmp/ce_fmnist

One view per image (the budget in images seen is half of SupCon's two views per image).
"""
from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.method = "cross_entropy"
  c.data.num_views = 1
  c.data.augment = "crop_flip"
  c.optim.name = "sgd"
  c.optim.base_lr = 0.1
  c.optim.weight_decay = 5e-4
  return c
