r"""The long Fashion-MNIST recipe: configs/fashion_mnist.py for 16 epochs (40 minutes here).

  python -m supcon_jax.main --config=configs/fashion_mnist_long.py --workdir=/tmp/supcon_long
  python -m supcon_jax.linear_eval --config=configs/fashion_mnist_long.py --workdir=/tmp/supcon_long

Everything but the budget is the default's, chosen on the validation split at 3 epochs (see
configs/fashion_mnist.py); no value was tuned for this length, and the test set scores
only this final config.
Measured here (test set): linear probe top-1 93.49% (kNN 93.49%, probe train top-1 95.53%,
ECE 0.014, mean top-1 under the 50 corruption sets 55.98%), after 2302 s of pretraining
(1.64-1.74 steps/s) and 96 s of linear evaluation on an idle machine: 39 min 58 s. A first
run, which shared its first six minutes with a scikit-learn job, took 45 min 19 s and gave
the same figures to the last digit (the run is deterministic on one CPU device).
Cross-entropy with this budget (configs/fashion_mnist_ce.py for 16 epochs, the README's
study) reaches 93.10% in 1115 s + 97 s; the evaluation's Compare: line quotes it.
"""
from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.num_epochs = 16.0
  c.train.checkpoint_every_steps = 500
  c.probe.reference_top1 = (("SupCon default, 2.5 epochs (README)", 0.9048),
                            ("cross-entropy encoder, same budget (README)", 0.9310))
  return c
