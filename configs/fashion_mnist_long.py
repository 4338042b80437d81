r"""The long Fashion-MNIST recipe: configs/fashion_mnist.py for 16 epochs (~45 minutes here).

  python -m supcon_jax.main --config=configs/fashion_mnist_long.py --workdir=/tmp/supcon_long
  python -m supcon_jax.linear_eval --config=configs/fashion_mnist_long.py --workdir=/tmp/supcon_long

Everything but the budget is the default's, chosen on the validation split at 3 epochs (see
configs/fashion_mnist.py); no value was tuned for this length, and the test set was scored once.
Measured here (test set, once): linear probe top-1 93.49% (kNN 93.49%, probe train top-1
95.53%, ECE 0.014, mean top-1 under the 50 corruption sets 55.98%), after 2627 s of
pretraining and 92 s of linear evaluation: 45 min 19 s, of which the first six minutes shared
the CPU with a scikit-learn job (0.81 steps/s then, ~1.5 after); about 43 minutes without it.
"""
from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.num_epochs = 16.0
  c.train.checkpoint_every_steps = 500
  c.probe.reference_top1 = (("SupCon default, 2.5 epochs (README)", 0.9048),
                            ("cross-entropy encoder, 2.5 epochs (README)", 0.9006))
  return c
