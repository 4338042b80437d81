"""Each recipe config against the released script it reproduces, value by value.

Sources (read with the search tool; values carried over, never code):
  TF = google-research/google-research supcon/ at 0c1bbe5 (scripts/*.sh, scripts/configs.sh,
       hparams_flags.py, launcher.py, utils.py, projection_head.py, blocks.py). Script lines are
       cited as file:line; Python sources by the flag, argument or constant that sets the value.
  SC = HobbitLong/SupContrast at 2728c67 (main_supcon.py, main_linear.py, main_ce.py,
       losses.py, networks/resnet_big.py, util.py); README.md at 331aab5.
The behaviour behind the values (optimizer updates, schedules, decay masks, head shapes and
initialisation, loss scaling, what the probe sees) is checked against TF1's and torch's own
optimizers and the formulas of the released code.
"""
import functools
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import traverse_util

from configs import (cifar100_r50, cifar10_r50, fashion_mnist, imagenet_r200, imagenet_r50,
                     imagenet_r50_ce, imagenet_r50_simclr)
from supcon_jax import config_lib, experiment, linear_eval, losses, models, optim
from supcon_jax.models import heads

SUPCON_R50 = {
    "method": "supcon",  # configs.sh:81 use_labels=True (SUPCON_FLAGS)
    "batch_size": 6144,  # supcon_imagenet_resnet50.sh:31
    "num_epochs": 350.0,  # supcon_imagenet_resnet50.sh:35 stage_1_epochs=350
    "data.dataset": "imagenet2012",  # configs.sh:55 input_fn=imagenet
    "data.image_size": 224,  # configs.sh:60
    "data.augment": "autoaugment",  # supcon_imagenet_resnet50.sh:32
    "data.crop_area": (0.08, 1.0),  # hparams_flags.py crop_area_range default ['0.08', '1.0']
    # preprocessing.py _distorted_crop_window aspect_ratio_range=(0.75, 1.33).
    "data.crop_aspect_ratio": (0.75, 1.33),
    "model.name": "resnet50",  # configs.sh:32 resnet_depth=50
    "model.width": 1.0,  # configs.sh:33 resnet_width=1
    "model.stem": "imagenet",  # configs.sh:57-59 first conv 7x7 stride 2, initial max-pool
    "model.zero_init_last_bn": True,  # blocks.py BottleneckResidualBlock third_bn init_zero=True
    "model.bn_momentum": 0.9,  # blocks.py BATCH_NORM_MOMENTUM = 0.9
    "model.bn_epsilon": 1e-5,  # blocks.py BATCH_NORM_EPSILON = 1e-5
    "model.dtype": "bfloat16",  # configs.sh:27 allow_mixed_precision=True
    "model.normalize_representation": True,  # configs.sh:82 normalize_embedding=True
    "model.head_dims": (128,),  # configs.sh:85 projection_head_layers=128
    "model.head_bn": False,  # configs.sh:84 use_projection_batch_norm=False
    # projection_head.py: use_bias=not is_last_layer and not use_batch_norm.
    "model.head_output_bias": False,
    # projection_head.py kernel_initializer=tf.random_normal_initializer(stddev=.01).
    "model.head_init": "normal",
    "model.head_init_std": 0.01,
    "loss.temperature": 0.1,  # supcon_imagenet_resnet50.sh:33
    "loss.base_temperature": 1.0,  # configs.sh:87 scale_by_temperature=True: loss × τ
    "loss.contrast_mode": "all",  # configs.sh:65 contrast_mode=ALL_VIEWS
    "loss.summation": "outside",  # configs.sh:66 summation_location=OUTSIDE
    "loss.denominator": "all",  # configs.sh:67 denominator_mode=ALL
    "loss.label_smoothing": 0.05,  # configs.sh:62 label_smoothing=0.05 (IMAGENET_FLAGS)
    "optim.name": "lars",  # supcon_imagenet_resnet50.sh:39 stage_1_optimizer=LARS
    "optim.base_lr": 0.4,  # supcon_imagenet_resnet50.sh:36 (× batch / 256: launcher.py)
    "optim.momentum": 0.9,  # utils.py build_optimizer momentum=0.9
    "optim.nesterov": False,  # utils.py LARSOptimizer use_nesterov=False
    "optim.trust_coefficient": 1e-3,  # utils.py ETA_DEFAULT = 0.001
    "optim.warmup_epochs": 12.0,  # hparams_flags.py stage_1_warmup_epochs default 12.0
    "optim.warmup_init_factor": 0.0,  # utils.py maybe_add_warmup_to_lr: target × step / steps
    "optim.schedule": "cosine",  # hparams_flags.py stage_1_learning_rate_decay default COSINE
    # utils.py build_learning_rate_schedule: the decay's step counts from the warm-up's end.
    "optim.decay_after_warmup": True,
    "optim.end_lr_factor": 0.0,  # utils.py cosine_decay: tf.train.cosine_decay to 0
    "optim.weight_decay": 1e-3,  # supcon_imagenet_resnet50.sh:34 stage_1_weight_decay=1e-3
    "optim.decay_biases": True,  # configs.sh:83 use_bias_weight_decay=True
    # launcher.py lars_exclude_from_weight_decay = ['batch_normalization'] (LARS also skips
    # the trust ratio there: utils.py exclude_from_layer_adaptation defaults to it).
    "optim.decay_norms": False,
    "probe.epochs": 90,  # supcon_imagenet_resnet50.sh:35 stage_2_epochs=90
    # One --batch_size for both stages (hparams_flags.py batch_size; launcher.py bs).
    "probe.batch_size": 6144,
    # launcher.py: stage 2 trains on the same training input_fn (augmented views).
    "probe.augmented_features": True,
    "probe.augment": None,
    # launcher.py is_bn_train_mode = not eval: stage 2 runs BatchNorm in training mode, and
    # configs.sh:79 stage_2_update_encoder_batch_norm=False keeps the running statistics.
    "probe.train_batch_statistics": True,
    "probe.label_smoothing": 0.05,  # configs.sh:62, one label_smoothing for both stages
    # configs.sh:86 zero_initialize_classifier=False -> launcher.py glorot_uniform kernel.
    "probe.init": "glorot_uniform",
    "probe.optim.name": "rmsprop",  # supcon_imagenet_resnet50.sh:39 stage_2_optimizer=RMSPROP
    "probe.optim.base_lr": 0.05,  # supcon_imagenet_resnet50.sh:37
    "probe.optim.rmsprop_decay": 0.9,  # utils.py build_optimizer decay=0.9
    "probe.optim.momentum": 0.9,  # utils.py build_optimizer momentum=0.9
    "probe.optim.eps": 1e-3,  # hparams_flags.py stage_2_rmsprop_epsilon default 0.001
    # tf.compat.v1.train.RMSPropOptimizer starts its mean square at 1 (checked below).
    "probe.optim.rmsprop_initial_scale": 1.0,
    "probe.optim.warmup_epochs": 12.0,  # hparams_flags.py stage_2_warmup_epochs default 12.0
    "probe.optim.warmup_init_factor": 0.0,  # utils.py maybe_add_warmup_to_lr
    "probe.optim.schedule": "exponential",  # supcon_imagenet_resnet50.sh:38
    "probe.optim.decay_rate": 0.97,  # supcon_imagenet_resnet50.sh:40
    "probe.optim.epochs_per_decay": 0.5,  # supcon_imagenet_resnet50.sh:40
    "probe.optim.decay_after_warmup": True,  # utils.py build_learning_rate_schedule
    "probe.optim.weight_decay": 1e-6,  # supcon_imagenet_resnet50.sh:34 stage_2_weight_decay
    # configs.sh:77 stage_2_use_classification_head_weight_decay=True, :83 biases included.
    "probe.optim.decay_biases": True,
}

SUPCON_R200 = {
    **SUPCON_R50,  # supcon_imagenet_resnet200.sh:27-30: the same flag groups
    "model.name": "resnet200",  # supcon_imagenet_resnet200.sh:28, configs.sh:38 depth 200
    "batch_size": 4096,  # supcon_imagenet_resnet200.sh:31
    "probe.batch_size": 4096,  # supcon_imagenet_resnet200.sh:31 (one batch for both stages)
    "data.augment": "stacked_randaugment",  # supcon_imagenet_resnet200.sh:32
    "data.blur": True,  # configs.sh:61 blur_probability=0.5 (stacked RandAugment blurs)
    "num_epochs": 700.0,  # supcon_imagenet_resnet200.sh:35
    "optim.base_lr": 0.2,  # supcon_imagenet_resnet200.sh:36
    "optim.weight_decay": 1e-4,  # supcon_imagenet_resnet200.sh:34
    # supcon_imagenet_resnet200.sh:32 augmentation_magnitude=1.0: the jitter strength, and
    # RandAugment's magnitude on the released [0, 1] scale (10 on ours); 2 layers
    # (preprocessing.py's stacked RandAugment), with the released (TF) jitter.
    "data.color_jitter_impl": "simclr_tf",  # configs.sh use_pytorch_color_jitter unset
    "data.color_jitter_strength": 1.0,
    "data.randaugment_num_ops": 2,
    "data.randaugment_magnitude": 10,
}

CE_R50 = {
    "method": "cross_entropy",  # configs.sh:100-101 contrastive 0, cross-entropy 1 (XENT)
    "batch_size": 6144,  # cross_entropy_imagenet_resnet50.sh:31
    "num_epochs": 200.0,  # cross_entropy_imagenet_resnet50.sh:34
    "data.augment": "autoaugment",  # cross_entropy_imagenet_resnet50.sh:32
    "data.crop_area": (0.08, 1.0),  # hparams_flags.py crop_area_range default
    "data.crop_aspect_ratio": (0.75, 1.33),  # preprocessing.py _distorted_crop_window
    "model.name": "resnet50",  # cross_entropy_imagenet_resnet50.sh:28
    "model.stem": "imagenet",  # configs.sh:57-59
    "model.zero_init_last_bn": True,  # blocks.py third_bn init_zero=True
    "model.normalize_representation": False,  # configs.sh:112 normalize_embedding=False
    "loss.label_smoothing": 0.05,  # configs.sh:62
    "optim.name": "sgd",  # cross_entropy_imagenet_resnet50.sh:36 NESTEROV
    "optim.nesterov": True,  # utils.py build_optimizer NESTEROV: use_nesterov=True
    "optim.momentum": 0.9,  # utils.py build_optimizer momentum=0.9
    "optim.base_lr": 0.1,  # cross_entropy_imagenet_resnet50.sh:35
    "optim.weight_decay": 1e-4,  # cross_entropy_imagenet_resnet50.sh:33
    "optim.warmup_epochs": 12.0,  # hparams_flags.py stage_1_warmup_epochs default
    "optim.schedule": "cosine",  # hparams_flags.py stage_1_learning_rate_decay default
    "optim.decay_biases": True,  # hparams_flags.py use_bias_weight_decay default True
    # launcher.py _compute_weights skips 'batch_normalization' variables.
    "optim.decay_norms": False,
}

SIMCLR_R50 = {
    "method": "simclr",  # configs.sh:89 use_labels=False
    "batch_size": 6144,  # simclr_imagenet_resnet50.sh:31
    "num_epochs": 100.0,  # simclr_imagenet_resnet50.sh:35
    "data.augment": "simclr",  # simclr_imagenet_resnet50.sh:32
    "data.color_jitter_strength": 1.0,  # simclr_imagenet_resnet50.sh:32 magnitude 1.0
    "data.color_jitter_impl": "simclr_tf",  # configs.sh use_pytorch_color_jitter unset (TF's)
    "data.blur": True,  # configs.sh:61 blur_probability=0.5
    "model.normalize_representation": False,  # configs.sh:90
    "model.head_dims": (2048, 2048, 128),  # configs.sh:93
    "model.head_bn": True,  # configs.sh:92 use_projection_batch_norm=True
    "model.head_output_bias": False,  # projection_head.py: no bias with BN or on the last
    "model.head_init": "normal",  # projection_head.py random_normal_initializer(stddev=.01)
    "model.head_init_std": 0.01,
    "model.zero_init_last_bn": True,  # blocks.py third_bn init_zero=True
    "loss.temperature": 0.1,  # simclr_imagenet_resnet50.sh:33
    "loss.base_temperature": None,  # configs.sh:95 scale_by_temperature=False
    "optim.name": "lars",  # simclr_imagenet_resnet50.sh:37
    "optim.base_lr": 0.3,  # simclr_imagenet_resnet50.sh:36
    "optim.weight_decay": 1e-4,  # simclr_imagenet_resnet50.sh:34
    "optim.warmup_epochs": 12.0,  # hparams_flags.py stage_1_warmup_epochs default
    "optim.decay_biases": True,  # configs.sh:91 use_bias_weight_decay=True
    "optim.decay_norms": False,  # launcher.py lars_exclude_from_weight_decay
    "probe.epochs": 90,  # simclr_imagenet_resnet50.sh:35
    "probe.batch_size": 6144,  # simclr_imagenet_resnet50.sh:31
    "probe.label_smoothing": 0.05,  # configs.sh:62
    "probe.init": "zeros",  # configs.sh:94 zero_initialize_classifier=True
    "probe.augmented_features": True,  # launcher.py: stage 2 reads the training input_fn
    "probe.train_batch_statistics": True,  # launcher.py is_bn_train_mode; configs.sh:79
    "probe.optim.name": "sgd",  # simclr_imagenet_resnet50.sh:37 stage_2_optimizer=NESTEROV
    "probe.optim.nesterov": True,  # utils.py build_optimizer NESTEROV
    "probe.optim.momentum": 0.9,  # utils.py build_optimizer momentum=0.9
    "probe.optim.base_lr": 0.1,  # simclr_imagenet_resnet50.sh:36
    "probe.optim.weight_decay": 1e-6,  # simclr_imagenet_resnet50.sh:34
    "probe.optim.warmup_epochs": 12.0,  # hparams_flags.py stage_2_warmup_epochs default
    "probe.optim.schedule": "cosine",  # hparams_flags.py stage_2_learning_rate_decay default
    "probe.optim.decay_biases": True,  # configs.sh:91
}

SUPCON_CIFAR10 = {
    "method": "supcon",  # main_supcon.py:59 --method default 'SupCon'
    "batch_size": 1024,  # README.md:71 --batch_size 1024
    "num_epochs": 1000.0,  # main_supcon.py:38 --epochs default 1000
    "data.dataset": "cifar10",  # main_supcon.py:55 --dataset default 'cifar10'
    "data.image_size": 32,  # main_supcon.py:133 RandomResizedCrop(size=32, ...)
    "data.augment": "simclr",  # main_supcon.py:132-141 crop, flip, jitter, grayscale
    "data.crop_area": (0.2, 1.0),  # main_supcon.py:133 scale=(0.2, 1.)
    "data.crop_aspect_ratio": (3 / 4, 4 / 3),  # main_supcon.py:133 RandomResizedCrop's default
    "data.color_jitter_strength": 0.5,  # main_supcon.py:136 ColorJitter(0.4, 0.4, 0.4, 0.1)
    "data.color_jitter_impl": "torchvision",  # main_supcon.py:136 transforms.ColorJitter
    "data.blur": False,  # main_supcon.py:132-141 has no blur
    "model.name": "resnet50",  # main_supcon.py:54 --model default 'resnet50'
    "model.width": 1.0,  # resnet_big.py in_planes = 64
    "model.stem": "small",  # resnet_big.py conv1 3x3 stride 1, no max-pool
    "model.zero_init_last_bn": False,  # resnet_big.py ResNet zero_init_residual=False
    "model.bn_momentum": 0.9,  # torch BatchNorm2d momentum 0.1 = flax 0.9
    "model.bn_epsilon": 1e-5,  # torch BatchNorm2d eps 1e-5
    "model.head_dims": (2048, 128),  # resnet_big.py SupConResNet head='mlp', feat_dim=128
    "model.head_bn": False,  # resnet_big.py mlp head: Linear, ReLU, Linear
    "model.head_output_bias": True,  # resnet_big.py nn.Linear(dim_in, feat_dim), bias default
    "model.head_init": "torch",  # resnet_big.py: nn.Linear's default initialisation
    "model.normalize_representation": False,  # resnet_big.py head(self.encoder(x))
    "loss.temperature": 0.1,  # README.md:73 --temp 0.1
    "loss.base_temperature": 0.07,  # losses.py SupConLoss base_temperature=0.07
    "loss.contrast_mode": "all",  # losses.py SupConLoss contrast_mode='all'
    "optim.name": "sgd",  # util.py set_optimizer: optim.SGD
    "optim.base_lr": 0.5 * 256 / 1024,  # README.md:72 --learning_rate 0.5 at batch 1024
    "optim.momentum": 0.9,  # main_supcon.py:50 --momentum default 0.9
    "optim.nesterov": False,  # util.py set_optimizer: SGD without nesterov
    "optim.weight_decay": 1e-4,  # main_supcon.py:48 --weight_decay default 1e-4
    "optim.decay_biases": True,  # util.py set_optimizer: model.parameters(), every one
    "optim.decay_norms": True,  # util.py set_optimizer: BatchNorm weights included
    "optim.warmup_epochs": 10.0,  # main_supcon.py:96-97 warm when batch > 256; :101 10 epochs
    "optim.warmup_init_factor": 0.01 / 0.5,  # main_supcon.py:100 warmup_from = 0.01
    "optim.schedule": "cosine",  # README.md:74 --cosine
    "optim.decay_after_warmup": False,  # util.py adjust_learning_rate: cos(π epoch / epochs)
    "optim.end_lr_factor": 0.1 ** 3,  # main_supcon.py:46 lr_decay_rate 0.1; util.py eta_min
    "probe.epochs": 100,  # main_linear.py:35 --epochs default 100
    "probe.batch_size": 512,  # README.md:83 --batch_size 512
    "probe.augmented_features": True,  # main_ce.py set_loader: augmented train_transform
    "probe.augment": "crop_flip",  # main_ce.py set_loader: RandomResizedCrop + flip only
    "probe.train_batch_statistics": False,  # main_linear.py train(): model.eval()
    "probe.label_smoothing": 0.0,  # main_linear.py set_model: CrossEntropyLoss()
    "probe.optim.name": "sgd",  # util.py set_optimizer: optim.SGD
    "probe.optim.base_lr": 5.0 * 256 / 512,  # README.md:84 --learning_rate 5 at batch 512
    "probe.optim.momentum": 0.9,  # main_linear.py:47 --momentum default 0.9
    "probe.optim.nesterov": False,  # util.py set_optimizer
    "probe.optim.weight_decay": 0.0,  # main_linear.py:45 --weight_decay default 0
    "probe.optim.warmup_epochs": 0.0,  # main_linear.py: --warm off and no auto warm-up
    "probe.optim.schedule": "step",  # README.md:83-85 no --cosine: util.py step decay
    "probe.optim.decay_rate": 0.2,  # main_linear.py:43 --lr_decay_rate default 0.2
    "probe.optim.milestones_epochs": (60, 75, 90),  # main_linear.py:41 '60,75,90'
}

SUPCON_CIFAR100 = {
    **SUPCON_CIFAR10,  # README.md:61 the same commands with --dataset cifar100
    "data.dataset": "cifar100",  # main_supcon.py:55-56 choices ['cifar10', 'cifar100']
    "model.num_classes": 100,
}

RECIPES = {
    "imagenet_r50": (imagenet_r50, SUPCON_R50),
    "imagenet_r200": (imagenet_r200, SUPCON_R200),
    "imagenet_r50_ce": (imagenet_r50_ce, CE_R50),
    "imagenet_r50_simclr": (imagenet_r50_simclr, SIMCLR_R50),
    "cifar10_r50": (cifar10_r50, SUPCON_CIFAR10),
    "cifar100_r50": (cifar100_r50, SUPCON_CIFAR100),
}


def get(config: ml_collections.ConfigDict, dotted: str):
  return functools.reduce(lambda c, key: c[key], dotted.split("."), config)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_sets_every_released_value(name):
  module, expected = RECIPES[name]
  config = module.get_config()
  wrong = {key: (get(config, key), value) for key, value in expected.items()
           if not (get(config, key) == value
                   or isinstance(value, float) and math.isclose(get(config, key), value))}
  assert not wrong, f"{name}: (ours, released) differ for {wrong}"
  config_lib.validate(config)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_durations_are_in_epochs(name):
  """No step count in a recipe: every duration follows batch_size when it changes."""
  train = RECIPES[name][0].get_config().train
  assert train.eval_every_steps is None and train.checkpoint_every_steps is None
  assert train.eval_every_epochs > 0 and train.checkpoint_every_epochs > 0


def test_intervals_in_epochs_follow_the_batch_size():
  config = cifar10_r50.get_config()  # eval every 100 epochs, checkpoint every 50
  for batch in (1024, 512):
    steps_per_epoch = 50_000 // batch  # CIFAR-10's 50,000 training images
    assert experiment.interval_steps(config.train, "eval", steps_per_epoch) == 100 * (
        50_000 // batch)
    assert experiment.interval_steps(config.train, "checkpoint", steps_per_epoch) == 50 * (
        50_000 // batch)
  # The Fashion-MNIST default keeps its step intervals: 200-step checkpoints, one final eval.
  default = fashion_mnist.get_config().train
  assert experiment.interval_steps(default, "checkpoint", 234) == 200
  assert experiment.interval_steps(default, "eval", 234) == 0


@pytest.mark.parametrize("steps, epochs", [(None, None), (100, 2.0)])
def test_interval_needs_exactly_one_unit(steps, epochs):
  config = cifar10_r50.get_config()
  config.train.checkpoint_every_steps = steps
  config.train.checkpoint_every_epochs = epochs
  with pytest.raises(ValueError, match="checkpoint_every_epochs.*set the other to None"):
    config_lib.validate(config)


# --- Behaviour behind the values ---------------------------------------------------------------

def _tree(seed: int = 0):
  """A parameter tree with a conv kernel, BatchNorm, and a Dense kernel and bias."""
  r = np.random.default_rng(seed)
  return {"conv": {"kernel": r.normal(size=(3, 3, 2, 4)).astype(np.float32)},
          "bn": {"scale": r.normal(size=(4,)).astype(np.float32),
                 "bias": r.normal(size=(4,)).astype(np.float32)},
          "dense": {"kernel": r.normal(size=(4, 3)).astype(np.float32),
                    "bias": r.normal(size=(3,)).astype(np.float32)}}


def _optax_run(optim_config, params, grads_per_step, lr: float):
  tx = optim.create_optimizer(optim_config, optax.constant_schedule(lr))
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  for grads in grads_per_step:
    updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, params)
    params = optax.apply_updates(params, updates)
  return params


def _tf1_run(optimizer, params, grads_per_step, weight_decay: float, decayed):
  """TF1 optimizer steps; weight decay as the released non-LARS code adds it to the loss
  (launcher.py: coefficient × Σ tf.nn.l2_loss(w), i.e. gradient += coefficient × w)."""
  tf = pytest.importorskip("tensorflow")
  flat = traverse_util.flatten_dict(params)
  variables = {k: tf.Variable(v) for k, v in flat.items()}
  for grads in grads_per_step:
    g = traverse_util.flatten_dict(grads)
    optimizer.apply_gradients([
        (tf.constant(g[k] + (weight_decay * variables[k].numpy() if decayed[k] else 0.0)),
         variables[k]) for k in flat])
  return traverse_util.unflatten_dict({k: v.numpy() for k, v in variables.items()})


def _grads(steps: int):
  return [jax.tree.map(np.asarray, _tree(seed=10 + s)) for s in range(steps)]


def test_tf_probe_optimizer_is_tf1_rmsprop():
  """imagenet_r50's probe takes the released stage-2 step: TF1 RMSProp (decay 0.9, momentum
  0.9, ε 1e-3 inside the square root, mean square from 1), weight decay on kernel and bias."""
  tf = pytest.importorskip("tensorflow")
  probe = imagenet_r50.get_config().probe.optim
  params = {"dense": _tree()["dense"]}
  grads = [{"dense": g["dense"]} for g in _grads(3)]
  decayed = {k: True for k in traverse_util.flatten_dict(params)}  # classifier kernel and bias
  # utils.py build_optimizer: RMSPropOptimizer(lr, decay=0.9, momentum=0.9, epsilon).
  ref = _tf1_run(tf.compat.v1.train.RMSPropOptimizer(0.3, decay=0.9, momentum=0.9,
                                                       epsilon=1e-3),
                 params, grads, weight_decay=probe.weight_decay, decayed=decayed)
  ours = _optax_run(probe, params, grads, lr=0.3)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, ref)


@pytest.mark.parametrize("module, section", [(imagenet_r50_ce, "optim"),
                                             (imagenet_r50_simclr, "probe.optim")])
def test_tf_nesterov_recipes_are_tf1_nesterov_momentum(module, section):
  """The CE run and SimCLR's probe: TF1 MomentumOptimizer(use_nesterov=True), weight decay
  on kernels and biases, never on BatchNorm (launcher.py _compute_weights)."""
  tf = pytest.importorskip("tensorflow")
  optim_config = get(module.get_config(), section)
  params, grads = _tree(), _grads(3)
  decayed = {k: k[0] != "bn" for k in traverse_util.flatten_dict(params)}
  ref = _tf1_run(tf.compat.v1.train.MomentumOptimizer(0.2, momentum=0.9, use_nesterov=True),
                 params, grads, weight_decay=optim_config.weight_decay, decayed=decayed)
  ours = _optax_run(optim_config, params, grads, lr=0.2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, ref)


_SGD_LR, _SGD_STEPS = 0.2, 3


@pytest.fixture(scope="module")
def torch_reference() -> dict[str, np.ndarray]:
  """What torch computes, in one fresh Python (torch and TensorFlow crash when loaded into
  one process): "sgd/<leaf>": _tree() after _SGD_STEPS steps of torch SGD as SupContrast's
  util.py set_optimizer builds it (cifar10_r50's momentum and weight decay, every parameter);
  "linear/weight", "linear/bias": a torch.nn.Linear(2048, 128) as resnet_big.py's head has."""
  pytest.importorskip("torch")
  optim_config = cifar10_r50.get_config().optim
  inputs = {"/".join(k): v.tolist() for k, v in traverse_util.flatten_dict(_tree()).items()}
  for step, grads in enumerate(_grads(_SGD_STEPS)):
    inputs.update({f"{'/'.join(k)}@{step}": v.tolist()
                   for k, v in traverse_util.flatten_dict(grads).items()})
  program = f"""
import json, sys, torch
inputs = json.load(sys.stdin)
names = [k for k in inputs if "@" not in k]
tensors = {{k: torch.tensor(inputs[k], requires_grad=True) for k in names}}
sgd = torch.optim.SGD(list(tensors.values()), lr={_SGD_LR!r}, momentum={optim_config.momentum!r},
                      weight_decay={optim_config.weight_decay!r})
for step in range({_SGD_STEPS}):
  for k in names:
    tensors[k].grad = torch.tensor(inputs[f"{{k}}@{{step}}"])
  sgd.step()
out = {{"sgd/" + k: t.tolist() for k, t in tensors.items()}}
linear = torch.nn.Linear(2048, 128)
out["linear/weight"], out["linear/bias"] = linear.weight.tolist(), linear.bias.tolist()
json.dump(out, sys.stdout)
"""
  done = subprocess.run([sys.executable, "-c", program], input=json.dumps(inputs), text=True,
                        capture_output=True, check=True)
  return {k: np.asarray(v, np.float32) for k, v in json.loads(done.stdout).items()}


def test_cifar_pretraining_optimizer_is_torch_sgd_with_decay_on_every_parameter(
    torch_reference):
  """SupContrast's util.py set_optimizer: torch SGD(momentum 0.9, weight_decay 1e-4) over
  model.parameters(), BatchNorm and biases included."""
  ours = _optax_run(cifar10_r50.get_config().optim, _tree(), _grads(_SGD_STEPS), lr=_SGD_LR)
  for path, value in traverse_util.flatten_dict(ours).items():
    np.testing.assert_allclose(value, torch_reference["sgd/" + "/".join(path)], rtol=1e-5,
                               atol=1e-6, err_msg=str(path))


def test_tf_probe_schedule_is_warmup_then_staircase_exponential():
  """utils.py build_learning_rate_schedule (EXPONENTIAL): linear warm-up from 0 over 12
  epochs, then tf.compat.v1.train.exponential_decay(peak, step - warm-up, 0.5 epoch, 0.97,
  staircase=True)."""
  tf = pytest.importorskip("tensorflow")
  config = imagenet_r50.get_config()
  batch, steps_per_epoch, total = config.probe.batch_size, 10, 900
  schedule = optim.learning_rate_schedule(config.probe.optim, batch, steps_per_epoch, total)
  peak = 0.05 * batch / 256  # supcon_imagenet_resnet50.sh:37, launcher.py × batch / 256
  warmup = 12 * steps_per_epoch
  for step in (0, 7, 119, 120, 124, 125, 131, 500, 899):
    ref = (peak * step / warmup if step < warmup else float(
        tf.compat.v1.train.exponential_decay(peak, step - warmup, 0.5 * steps_per_epoch, 0.97,
                                             staircase=True)()))
    np.testing.assert_allclose(float(schedule(step)), ref, rtol=1e-5, err_msg=f"step {step}")


def test_cifar_schedules_are_supcontrast_formulas():
  """util.py: warm-up per batch from 0.01 to the cosine's value at epoch 10, then per epoch e
  eta_min + (lr - eta_min)(1 + cos(π e / 1000)) / 2 with eta_min = lr × 0.1³ (ours moves
  every step and equals it at the end of epoch e); main_linear.py: lr × 0.2^(# milestones
  < e) at epoch e (1-based)."""
  config = cifar10_r50.get_config()
  steps_per_epoch, epochs, lr = 48, 1000, 0.5  # README.md:72, batch 1024
  schedule = optim.learning_rate_schedule(config.optim, config.batch_size, steps_per_epoch,
                                          epochs * steps_per_epoch)
  eta_min = lr * 0.1 ** 3
  cosine = lambda e: eta_min + (lr - eta_min) * (1 + math.cos(math.pi * e / epochs)) / 2
  warmup_to, warm = cosine(10), 10 * steps_per_epoch
  for step in (0, 1, 200, warm - 1):
    np.testing.assert_allclose(float(schedule(step)), 0.01 + step / warm * (warmup_to - 0.01),
                               rtol=1e-5)
  for e in (11, 12, 500, 990):
    np.testing.assert_allclose(float(schedule(e * steps_per_epoch)), cosine(e), rtol=1e-4)

  probe = optim.learning_rate_schedule(config.probe.optim, config.probe.batch_size, 97,
                                       100 * 97)
  for e in (1, 60, 61, 75, 76, 90, 91, 100):  # 1-based epochs, as util.py counts them
    expected = 5.0 * 0.2 ** sum(e > m for m in (60, 75, 90))
    np.testing.assert_allclose(float(probe((e - 1) * 97)), expected, rtol=1e-6,
                               err_msg=f"epoch {e}")


def _param_tree(config: ml_collections.ConfigDict):
  model = models.build_model(config.model,
                             classifier_trains_encoder=config.method == "cross_entropy")
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                        jnp.zeros((1, 32, 32, 3)))["params"]


@pytest.mark.parametrize("module, decayed, undecayed", [
    # ResNet-50 (resnet.py, blocks.py): 53 convolutions, each followed by a BatchNorm
    # (1 stem + 16 blocks × 3 + 4 projection shortcuts). TF: BatchNorm's 2 × 53 leaves are
    # excluded, the head's kernel and the classifier's kernel and bias decay.
    (imagenet_r50, 53 + 1 + 2, 2 * 53),
    # SimCLR head: 3 bias-free Dense kernels decay, its 2 BatchNorms do not.
    (imagenet_r50_simclr, 53 + 3 + 2, 2 * 53 + 2 * 2),
    # SupContrast: torch SGD decays every parameter: head 2 × (kernel, bias), classifier 2.
    (cifar10_r50, 53 + 2 * 53 + 4 + 2, 0),
])
def test_decay_mask_covers_what_the_released_code_decays(module, decayed, undecayed):
  optim_config = module.get_config().optim
  params = _param_tree(module.get_config())
  mask = optim.decay_mask(params, optim_config.decay_biases, optim_config.decay_norms)
  leaves = jax.tree.leaves(mask)
  assert (sum(leaves), len(leaves) - sum(leaves)) == (decayed, undecayed)


@pytest.mark.parametrize("module, shapes", [
    (imagenet_r50, {("dense1", "kernel"): (2048, 128)}),
    (imagenet_r50_simclr, {("dense1", "kernel"): (2048, 2048), ("bn1", "scale"): (2048,),
                           ("bn1", "bias"): (2048,), ("dense2", "kernel"): (2048, 2048),
                           ("bn2", "scale"): (2048,), ("bn2", "bias"): (2048,),
                           ("dense3", "kernel"): (2048, 128)}),
    (cifar10_r50, {("dense1", "kernel"): (2048, 2048), ("dense1", "bias"): (2048,),
                   ("dense2", "kernel"): (2048, 128), ("dense2", "bias"): (128,)}),
])
def test_projection_head_shapes(module, shapes):
  head = _param_tree(module.get_config())["projection"]
  assert {k: v.shape for k, v in traverse_util.flatten_dict(head).items()} == shapes


def _head_kernel(config: ml_collections.ConfigDict, fan_in: int, out: int) -> np.ndarray:
  head = heads.ProjectionHead(dims=(out,), output_bias=config.model.head_output_bias,
                              init_scheme=config.model.head_init,
                              init_std=config.model.head_init_std)
  params = head.init(jax.random.PRNGKey(1), jnp.zeros((1, fan_in)), train=False)["params"]
  return params["dense1"]


def test_tf_head_init_is_normal_001():
  """projection_head.py: kernel_initializer=tf.random_normal_initializer(stddev=.01)."""
  dense = _head_kernel(imagenet_r50.get_config(), 2048, 128)
  assert set(dense) == {"kernel"}
  assert abs(float(np.std(dense["kernel"])) - 0.01) < 2e-4
  assert abs(float(np.mean(dense["kernel"]))) < 2e-4


def test_cifar_head_init_matches_torch_linear(torch_reference):
  """resnet_big.py's head uses nn.Linear's default init: compare with torch's own draw."""
  dense = _head_kernel(cifar10_r50.get_config(), 2048, 128)
  kernel, torch_kernel = np.asarray(dense["kernel"]), torch_reference["linear/weight"]
  # 262,144 draws each: the spreads agree to ~0.3%; both stay inside torch's bound.
  np.testing.assert_allclose(np.std(kernel), np.std(torch_kernel), rtol=0.02)
  assert np.abs(kernel).max() <= np.abs(torch_kernel).max() * 1.001
  # nn.Linear's bias: uniform in ±1/sqrt(in_features) (torch.nn.Linear's documentation).
  bias, bound = np.asarray(dense["bias"]), 1 / math.sqrt(2048)
  assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.8 * bound
  assert np.abs(torch_reference["linear/bias"]).max() <= bound


@pytest.mark.parametrize("module, factor", [
    (imagenet_r50, 0.1 / 1.0),  # configs.sh:87 scale_by_temperature=True
    (imagenet_r50_simclr, 1.0),  # configs.sh:95 scale_by_temperature=False
    (cifar10_r50, 0.1 / 0.07),  # losses.py: -(temperature / base_temperature) × mean
])
def test_loss_scale_is_the_released_one(module, factor):
  loss_config = module.get_config().loss
  rng = np.random.default_rng(0)
  z = rng.normal(size=(8, 2, 16)).astype(np.float32)
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  labels = rng.integers(0, 3, size=8)
  scaled = losses.supcon_loss(z, labels, temperature=loss_config.temperature,
                              base_temperature=loss_config.base_temperature)
  unscaled = losses.supcon_loss(z, labels, temperature=loss_config.temperature)
  np.testing.assert_allclose(float(scaled), factor * float(unscaled), rtol=1e-6)


class _TinyEncoder(nn.Module):
  """images [N, H, W, C] -> r [N, 16]: a bias-free Dense on the flattened pixels, then
  BatchNorm (running statistics start at mean 0, variance 1)."""

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    x = nn.Dense(16, use_bias=False)(images.reshape(images.shape[0], -1))
    return nn.BatchNorm(use_running_average=not train)(x)


def test_probe_sees_the_normalised_representation_the_classifier_sees():
  """launcher.py: normalize_classifier_inputs = normalize_embedding; our linear probe reads
  the model's "representation", which is then the normalised r the classifier reads."""
  config = imagenet_r50.get_config()
  config.model.head_dims, config.model.num_classes = (8,), 5
  config.model.dtype = "float32"  # jitted and eager bfloat16 round differently
  # The recipe's model with a one-layer encoder in place of ResNet-50, to stay fast.
  model = models.build_model(config.model).clone(encoder=_TinyEncoder())
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 4, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(1), x)
  out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  r = np.asarray(out["representation"])
  np.testing.assert_allclose(np.linalg.norm(r, axis=-1), 1.0, rtol=1e-5)
  classifier = variables["params"]["classifier"]["Dense_0"]
  np.testing.assert_allclose(out["logits"], r @ classifier["kernel"] + classifier["bias"],
                             rtol=1e-5, atol=1e-6)

  probe_input = linear_eval.represent_fn(model)(_state(variables), x[:, None])
  np.testing.assert_allclose(probe_input, r, rtol=1e-5, atol=1e-6)


def _state(variables) -> experiment.TrainState:
  return experiment.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                               batch_stats=variables["batch_stats"], opt_state=(),
                               rng=jax.random.PRNGKey(0))


def test_probe_training_views_can_use_batch_statistics():
  """The released stage 2 (imagenet_r50) normalises each training batch by its own
  statistics: features then ignore a global rescaling of the images, which the running
  statistics (SupContrast's model.eval(), and every test image) do not; the running
  statistics stay as trained."""
  config = imagenet_r50.get_config()
  config.model.head_dims, config.model.dtype = (8,), "float32"
  config.model.normalize_representation = False
  model = models.build_model(config.model).clone(encoder=_TinyEncoder())
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 1, 4, 4, 3))  # [N, V, H, W, C]
  variables = model.init(jax.random.PRNGKey(1), x[:, 0], train=False)
  state = _state(variables)
  batch = linear_eval.represent_fn(model, batch_statistics=True)
  running = linear_eval.represent_fn(model, batch_statistics=False)
  np.testing.assert_allclose(batch(state, 3.0 * x), batch(state, x), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(running(state, 3.0 * x), 3.0 * running(state, x), rtol=1e-4,
                             atol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, state.batch_stats, variables["batch_stats"])


@pytest.mark.parametrize("module, policy", [
    (imagenet_r50, "autoaugment"),  # launcher.py: stage 2 reads stage 1's training input_fn
    (cifar10_r50, "crop_flip"),  # main_linear.py uses main_ce.py's set_loader: crop + flip
])
def test_probe_trains_on_the_released_views(monkeypatch, module, policy):
  """linear_eval's augmented epochs read one view per image under the released policy."""
  class Seen(Exception):
    pass

  def record(config, mesh):
    del mesh
    raise Seen(config.data.augment, config.data.num_views)  # no data needed beyond this

  monkeypatch.setattr(linear_eval.input_pipeline, "create_train_iterator", record)
  with pytest.raises(Seen) as seen:
    next(linear_eval.augmented_epochs(module.get_config(), None, None, None, 1))
  assert seen.value.args == (policy, 1)
