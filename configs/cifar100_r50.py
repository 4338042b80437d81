r"""SupCon ResNet-50 on CIFAR-100: configs/cifar10_r50.py on 100 classes (paper: 76.5% top-1).

  python -m supcon_jax.main --config=configs/cifar100_r50.py --workdir=gs://BUCKET/cifar100_r50
"""
from configs import cifar10_r50


def get_config():
  c = cifar10_r50.get_config()
  c.data.dataset = "cifar100"
  c.model.num_classes = 100
  return c
