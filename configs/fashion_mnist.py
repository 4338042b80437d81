r"""The embedded default: SupCon on real Fashion-MNIST, on a 2-core CPU, in under 10 minutes.

  python -m supcon_jax.main --config=configs/fashion_mnist.py --workdir=/tmp/supcon_fmnist
  python -m supcon_jax.linear_eval --config=configs/fashion_mnist.py --workdir=/tmp/supcon_fmnist

An eighth-width ResNet-18 with the small-image stem (0.19M parameters, 64-d r) pretrained with
SupCon for 2.5 epochs, then the linear probe on the frozen encoder, which ends by printing its
test top-1 next to the same probe on raw pixels and the cross-entropy encoder's figure. Data:
Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), turned into tfds'
fashion_mnist on the first run; with internet, set data.manual_dir=None and tfds downloads it.
Baselines with the same encoder, budget and probe: configs/fashion_mnist_ce.py
(cross-entropy), configs/fashion_mnist_simclr.py (SimCLR); the long recipe:
configs/fashion_mnist_long.py; all of them side by side: `python -m bench.study` (README).

How these values were chosen. Not the paper's recipes (configs/cifar*.py and imagenet*.py
are those, exactly): a budget of minutes on a CPU. Every choice was made on a validation split
held out from the training set (trained on train[:50000], linear probe scored on
train[50000:]); the test set was scored once per final config, by bench.study. One run per
trial, seed 0, 3 epochs of 195 steps (585 steps: the default's 2.5 epochs of the full 60,000)
unless noted; linear-probe top-1 on the validation images (* = probe.standardize on):

  trial                                                     SupCon  cross-entropy
  ImageNet stem, LARS 1.0 (wd 1e-6), crop area 0.2-1, 6 ep   84.5      -
  ImageNet stem, SGD 0.1 (wd 5e-4), crop area 0.2-1, 6 ep      -      87.9
  ImageNet stem, SGD 0.1, crop area 0.2-1                    84.2     86.3
  ImageNet stem, SGD 0.5, crop area 0.2-1                    83.3     85.1
  ImageNet stem, SGD 0.1, crop area 0.2-1, temperature 0.2   85.0     n/a
  ImageNet stem, SGD 0.1, crop area 0.5-1                    85.9     87.4
  ImageNet stem, SGD 0.1, one view per image, 6 ep           85.0     (is CE's)
  small stem 1/8 width, LARS 1.0, crop area 0.2-1, 2.5 ep    84.2      -
  small stem 1/8 width, SGD 0.1, τ 0.2, crop area 0.5-1      89.3*    89.6*
  small stem 1/8 width, SGD 0.1, τ 0.2, crop area 0.8-1      91.2*    91.0*   <- chosen
  small stem 1/8 width, LARS 1.0, τ 0.2, crop area 0.8-1     89.4*    89.7*

Read: (1) the ImageNet stem (28 -> 7 px before the first stage) caps both methods; the small
stem (28 px through the first stage) at 1/8 width costs ~3x more per step and gains 4-5
points; (2) plain SGD with momentum learns about twice as fast as LARS here (LARS's trust
ratio is made for batches of thousands), and at the chosen values LARS trails it by 1.9
(SupCon) and 1.3 (cross-entropy) points; a learning rate of 0.5 is worse than 0.1 for both;
(3) Fashion-MNIST's centred 28-px garments lose class evidence under the CIFAR crop range:
the milder the crop, the better both methods do at this budget; (4) temperature 0.2 beat 0.1;
one view per image (twice the epochs in the same time) did not beat two. Cross-entropy got
the same values on every shared axis (stem, optimizer, learning rate, crop) and 7 trials to
SupCon's 11 (it has no temperature or views). Standardising the probe's features
(probe.standardize) moved the 89.1 trial to 89.3 and makes the raw-pixel floor the same
probe. Test-set figures of the final configs: README, "Results on Fashion-MNIST".
"""
from configs import base


def get_config():
  c = base.get_config()
  c.method = "supcon"
  c.batch_size = 256
  c.num_epochs = 2.5

  c.data.dataset = "fashion_mnist"
  c.data.manual_dir = "/usr/share/datasets/fashion-mnist"
  c.data.image_size = 28
  c.data.num_views = 2
  # A random resized crop and a flip; no colour jitter (grayscale, centred garments).
  c.data.augment = "crop_flip"
  c.data.crop_area = (0.8, 1.0)

  c.model.name = "resnet18"
  # 28 px through the first stage (the ImageNet stem's 7 px caps accuracy; see above), at 1/8
  # width so that a step stays at ~0.57 s on 2 CPU cores.
  c.model.stem = "small"
  c.model.width = 0.125
  c.model.num_classes = 10
  c.model.head_dims = (128, 64)

  c.loss.temperature = 0.2

  c.optim.name = "sgd"
  c.optim.base_lr = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 0.5

  c.train.log_every_steps = 50
  c.train.eval_every_steps = 0  # once, at the end
  c.train.checkpoint_every_steps = 200

  c.probe.standardize = True
  c.probe.raw_pixel_baseline = True
  c.probe.corruption_split = "test[:1000]"
  # Measured by `python -m bench.study` (README): the cross-entropy encoder of
  # configs/fashion_mnist_ce.py, same budget and probe, on the test set.
  c.probe.reference_top1 = (("cross-entropy encoder, same budget (README)", 0.9006),)
  return c
