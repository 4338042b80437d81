"""Optimizer construction: masks, learning-rate scaling and schedule shape."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from supcon_jax import optim


def toy_params():
  return {
      "conv1": {"kernel": jnp.ones((3, 3, 1, 4))},
      "bn1": {"scale": jnp.ones((4,)), "bias": jnp.zeros((4,))},
      "head": {"Dense_0": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros((2,))}},
      "LayerNorm_0": {"scale": jnp.ones((4,)), "bias": jnp.zeros((4,))},
  }


def test_decay_mask_excludes_exactly_norm_parameters_and_biases():
  mask = optim.decay_mask(toy_params())
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat == {
      "['conv1']['kernel']": True, "['bn1']['scale']": False, "['bn1']['bias']": False,
      "['head']['Dense_0']['kernel']": True, "['head']['Dense_0']['bias']": False,
      "['LayerNorm_0']['scale']": False, "['LayerNorm_0']['bias']": False}


def test_lars_leaves_masked_parameters_without_decay_or_trust_ratio():
  config = base.get_config()
  config.optim.weight_decay = 0.5
  tx = optim.create_optimizer(config.optim, optax.constant_schedule(1.0))
  params = toy_params()
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Masked leaves get plain -lr * grad; kernels get -lr * trust * (grad + wd * w).
  np.testing.assert_allclose(updates["bn1"]["scale"], -1.0)
  np.testing.assert_allclose(updates["head"]["Dense_0"]["bias"], -1.0)
  kernel, g = params["conv1"]["kernel"], grads["conv1"]["kernel"] + 0.5 * params["conv1"]["kernel"]
  trust = config.optim.trust_coefficient * np.linalg.norm(kernel) / np.linalg.norm(g)
  np.testing.assert_allclose(updates["conv1"]["kernel"], -trust * g, rtol=1e-6)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_reduces_a_quadratic(name):
  config = base.get_config()
  config.optim.name = name
  tx = optim.create_optimizer(config.optim, optax.constant_schedule(0.05))
  params = {"w": {"kernel": jnp.full((3, 3), 2.0)}}
  loss = lambda p: jnp.sum(p["w"]["kernel"] ** 2)
  state = tx.init(params)
  for _ in range(20):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert loss(params) < 36.0


def test_schedule_scales_with_batch_warms_up_and_decays_to_zero():
  config = base.get_config()
  config.batch_size = 1024
  config.optim.base_lr = 0.3
  config.optim.warmup_epochs = 2
  schedule = optim.learning_rate_schedule(config.optim, config.batch_size, steps_per_epoch=10,
                                           total_steps=100)
  peak = 0.3 * 1024 / 256
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(schedule(10), peak / 2, rtol=1e-6)
  np.testing.assert_allclose(schedule(20), peak, rtol=1e-6)
  np.testing.assert_allclose(schedule(60), peak / 2, rtol=1e-5)
  assert abs(float(schedule(100))) < 1e-6


def test_unknown_optimizer_names_the_field():
  config = base.get_config()
  config.optim.name = "lamb"
  with pytest.raises(ValueError, match="config.optim.name"):
    optim.create_optimizer(config.optim, optax.constant_schedule(1.0))
