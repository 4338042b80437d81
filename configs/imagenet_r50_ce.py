r"""Cross-entropy ResNet-50 on ImageNet, as released: google-research/google-research
supcon/scripts/cross_entropy_imagenet_resnet50.sh (paper: 78.2% top-1 with AutoAugment).

  python -m supcon_jax.main --config=configs/imagenet_r50_ce.py --workdir=gs://BUCKET/ce_r50

The script's XENT_FLAGS and values: batch 6144, 200 epochs, Nesterov momentum SGD (0.9) at
0.1 × batch / 256, 12 warm-up epochs (flag default) then cosine, weight decay 1e-4 on the
encoder's and the classifier's kernels and biases (not BatchNorm), label smoothing 0.05,
AutoAugment, the representation not normalised (normalize_embedding=False), zero-initialised
last BatchNorm of each residual block. The classifier trains the encoder end to end; there is
no stage 2 (stage_2_epochs=0), so the result is this classifier's accuracy.

Paper text vs. released code: the paper gives no optimizer values for this baseline; we follow
the script. Where we differ from the code: the released model runs both augmented views
through the encoder (BatchNorm statistics over 2 × 6144 images) and takes the loss on the
first; we feed one view; bfloat16 compute; our classifier starts from flax's lecun-normal
kernel instead of glorot-uniform (with no measured effect claimed).
"""
from configs import imagenet_r50


def get_config():
  c = imagenet_r50.get_config()
  c.method = "cross_entropy"
  c.batch_size = 6144
  c.num_epochs = 200.0
  c.data.num_views = 1
  c.data.augment = "autoaugment"
  c.model.normalize_representation = False
  c.loss.label_smoothing = 0.05
  c.optim.name = "sgd"
  c.optim.nesterov = True
  c.optim.momentum = 0.9
  c.optim.base_lr = 0.1
  c.optim.weight_decay = 1e-4
  c.optim.warmup_epochs = 12.0
  c.optim.schedule = "cosine"
  c.optim.decay_biases = True
  c.optim.decay_norms = False
  return c
