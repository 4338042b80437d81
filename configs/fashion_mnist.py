r"""The embedded default: SupCon on real Fashion-MNIST, on the CPU of a laptop, in minutes.

  python -m supcon_jax.main --config=configs/fashion_mnist.py --workdir=/tmp/supcon_fmnist

A ResNet-18 at quarter width (0.7M parameters) pretrained for one epoch with LARS, then the online probe's accuracy is printed; `python -m supcon_jax.linear_eval` with the
same flags fits the paper's linear probe on the frozen encoder. Data: Debian's
dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), turned into tfds' fashion_mnist on
the first run; with internet, set data.manual_dir=None and tfds downloads it.
The cross-entropy baseline with the same budget: configs/fashion_mnist_ce.py.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.method = "supcon"
  c.batch_size = 256
  c.num_epochs = 1.0

  c.data.dataset = "fashion_mnist"
  c.data.manual_dir = "/usr/share/datasets/fashion-mnist"
  c.data.image_size = 28
  c.data.num_views = 2
  c.data.augment = "simclr"
  # Small images: SupContrast's CIFAR crop range, and no blur.
  c.data.crop_area = (0.2, 1.0)
  c.data.blur = False
  c.probe.corruption_split = "test[:1000]"

  c.model.name = "resnet18"
  # The ImageNet stem (28 -> 7 px) runs ~5x faster on a CPU than the small-image stem, which
  # keeps 28 px through the first stage: the difference between minutes and half an hour.
  c.model.stem = "imagenet"
  c.model.width = 0.25
  c.model.num_classes = 10
  c.model.head_dims = (128, 64)

  c.loss.temperature = 0.1

  c.optim.name = "lars"
  c.optim.base_lr = 1.0
  c.optim.weight_decay = 1e-6
  c.optim.warmup_epochs = 0.5

  c.train.log_every_steps = 50
  c.train.eval_every_steps = 0  # once, at the end
  c.train.checkpoint_every_steps = 200
  return c
