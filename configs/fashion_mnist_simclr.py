r"""SimCLR (the label-free case) for configs/fashion_mnist.py: same encoder, budget and probe.

  python -m supcon_jax.main --config=configs/fashion_mnist_simclr.py --workdir=/tmp/simclr_fmnist

Without labels the views are the only positives, so SimCLR keeps the strong SimCLR
augmentation (SupContrast's CIFAR crop range, colour jitter, grayscale; no blur at 28 px) and
SupContrast's SimCLR temperature, 0.5. Not tuned: it is the study's label-free reference
(bench/study.py), not a method this project recommends for labelled data.
"""
from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.method = "simclr"
  c.data.augment = "simclr"
  c.data.crop_area = (0.2, 1.0)
  c.data.blur = False
  c.loss.temperature = 0.5
  return c
