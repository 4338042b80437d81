"""Encoders and heads: torchvision parameter counts, shapes, probe isolation, sharded BatchNorm."""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from configs import base
from supcon_jax import models
from supcon_jax.models import heads, resnet, vit


def model_config(**overrides) -> ml_collections.ConfigDict:
  config = base.get_config().model
  config.update(overrides)
  return config


def make_tiny_resnet() -> models.SupConModel:
  """Two one-block stages with 8 and 16 channels, ImageNet stem, BatchNorm in the head."""
  encoder = resnet.ResNet(stage_sizes=(1, 1), block="basic", stem="imagenet", width=0.125)
  return models.SupConModel(encoder=encoder, num_classes=10, head_dims=(32, 16), head_bn=True)


def make_tiny_vit(pool: str) -> models.SupConModel:
  encoder = vit.ViT(patch_size=7, hidden_size=32, depth=2, num_heads=2, mlp_dim=64, pool=pool)
  return models.SupConModel(encoder=encoder, num_classes=10, head_dims=(32, 16))


def images(n: int, size: int, channels: int, seed: int = 0) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), (n, size, size, channels))


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def init(model: nn.Module, x: jax.Array):
  # rbg keys compile much faster than threefry on CPU; init is otherwise most of the test time.
  return jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x)


def init_shapes(model: nn.Module, x: jax.Array):
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def train_apply(model: nn.Module, variables, x: jax.Array):
  """Jitted forward in training mode: (outputs, {"batch_stats": updated statistics})."""
  return jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
      variables, x)


@pytest.fixture(scope="module")
def tiny():
  """(model, variables, x): a tiny ImageNet-stem ResNet and 16 images of 32 px."""
  model = make_tiny_resnet()
  # Shift the first examples so per-shard BatchNorm statistics differ from global ones.
  x = images(16, 32, 3).at[:2].add(3.0)
  return model, init(model, x), x


@pytest.fixture(scope="module")
def tiny_vit():
  """(model, variables, x): a two-block ViT with class token and 4 images of 28x28x1."""
  model = make_tiny_vit("cls")
  x = images(4, 28, 1)
  return model, init(model, x), x


def check_outputs(out: dict, n: int, dim: int) -> None:
  assert out["representation"].shape == (n, dim)
  assert out["projection"].shape == (n, 16)
  assert out["logits"].shape == (n, 10)
  assert all(v.dtype == jnp.float32 and np.all(np.isfinite(v)) for v in out.values())
  np.testing.assert_allclose(jnp.linalg.norm(out["projection"], axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name, expected_params, expected_dim", [
    ("resnet50", 23_508_032, 2048),
    ("resnet18", 11_176_512, 512),
    ("vit_b16", 85_798_656, 768),
])
def test_encoder_parameter_counts_match_torchvision(name, expected_params, expected_dim):
  model = models.build_model(model_config(name=name, stem="imagenet", pool="cls"))
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = init_shapes(model, x)
  assert count(variables["params"]["encoder"]) == expected_params
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert out["representation"].shape == (2, expected_dim)
  assert out["projection"].shape == (2, 128)
  assert out["logits"].shape == (2, 10)


def test_width_multiplier_scales_every_stage():
  model = models.build_model(model_config(name="resnet50", width=2))
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = init_shapes(model, x)
  assert variables["params"]["encoder"]["stem_conv"]["kernel"].shape == (3, 3, 3, 128)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert out["representation"].shape == (2, 4096)


@pytest.mark.parametrize("stem, size, stage1_size, final_size", [
    ("imagenet", 224, 56, 7),
    ("small", 32, 32, 4),
])
def test_stems_and_v1_5_stride_placement(stem, size, stage1_size, final_size):
  model = models.build_model(model_config(name="resnet50", stem=stem))
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  _, state = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False,
                                       capture_intermediates=True), x)
  acts = state["intermediates"]["encoder"]
  assert acts["stage1_block3"]["__call__"][0].shape[1:3] == (stage1_size, stage1_size)
  # v1.5: the first block of a stage keeps the resolution through its 1x1 conv and
  # downsamples in the 3x3 conv.
  first = acts["stage2_block1"]
  assert first["conv1"]["__call__"][0].shape[1:3] == (stage1_size, stage1_size)
  assert first["conv2"]["__call__"][0].shape[1:3] == (stage1_size // 2, stage1_size // 2)
  assert acts["stage4_block3"]["__call__"][0].shape[1:3] == (final_size, final_size)


def test_default_config_runs_on_fashion_mnist_shapes():
  # The default config (resnet18, small stem), narrowed, on 28x28x1 images.
  model = models.build_model(model_config(width=0.125, head_dims=(32, 16)))
  x = images(4, 28, 1)
  out, _ = train_apply(model, init(model, x), x)
  check_outputs(out, 4, 64)


def test_imagenet_stem_forward(tiny):
  model, variables, x = tiny
  out, _ = train_apply(model, variables, x)
  check_outputs(out, 16, 16)
  check_outputs(jax.jit(functools.partial(model.apply, train=False))(variables, x), 16, 16)


@pytest.mark.parametrize("pool, tokens", [("cls", 17), ("gap", 16)])
def test_vit_forward_shapes_and_pooling(pool, tokens, tiny_vit):
  model, variables, x = tiny_vit
  if pool != "cls":
    model = make_tiny_vit(pool)
    variables = init(model, x)
  encoder = variables["params"]["encoder"]
  assert encoder["pos_embedding"].shape == (1, tokens, 32)
  assert ("cls_token" in encoder) == (pool == "cls")
  check_outputs(jax.jit(functools.partial(model.apply, train=False))(variables, x), 4, 32)


def test_vit_patch_size_override_and_indivisible_image():
  model = models.build_model(model_config(name="vit_s16", patch_size=7))
  variables = init_shapes(model, jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
  assert variables["params"]["encoder"]["pos_embedding"].shape == (1, 17, 384)
  with pytest.raises(ValueError, match="patch_size=16"):
    init_shapes(models.build_model(model_config(name="vit_s16")),
                jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))


def test_projection_head_options():
  r = images(4, 1, 8).reshape(4, 8)
  head = heads.ProjectionHead(dims=(16, 12, 4), batch_norm=True)
  variables = init(head, r)
  assert set(variables["params"]) == {"dense1", "bn1", "dense2", "bn2", "dense3"}
  assert "bias" not in variables["params"]["dense1"]
  z, _ = train_apply(head, variables, r)
  np.testing.assert_allclose(jnp.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)


def test_l2_normalize_is_safe_at_zero():
  x = jnp.array([[0.0, 0.0], [3.0, 4.0]], jnp.bfloat16)
  y = heads.l2_normalize(x)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, [[0.0, 0.0], [0.6, 0.8]], rtol=1e-6)
  grad = jax.grad(lambda x: jnp.sum(heads.l2_normalize(x)[:, 0]))(x.astype(jnp.float32))
  assert np.all(np.isfinite(grad))


@pytest.mark.slow
def test_classifier_head_passes_no_gradient_to_encoder(tiny):
  model, variables, x = tiny
  labels = jnp.arange(16) % 10

  @jax.jit
  @jax.grad
  def probe_grads(params):
    out, _ = model.apply({**variables, "params": params}, x, train=True,
                         mutable=["batch_stats"])
    return -jnp.mean(jax.nn.log_softmax(out["logits"])[jnp.arange(16), labels])

  grads = probe_grads(variables["params"])
  for part in ("encoder", "projection"):
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads[part])), part
  assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads["classifier"]))

  # The cross-entropy baseline's classifier does train the encoder.
  baseline = model.clone(classifier_trains_encoder=True)
  ce_grads = jax.grad(lambda p: jnp.mean(baseline.apply(
      {**variables, "params": p}, x, train=True, mutable=["batch_stats"])[0]["logits"]))(
          variables["params"])
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(ce_grads["encoder"]))


@pytest.mark.parametrize("block, last", [("basic", "bn2"), ("bottleneck", "bn3")])
def test_zero_init_last_bn(block, last):
  model = resnet.ResNet(stage_sizes=(1, 1), block=block, width=0.125, zero_init_last_bn=True)
  params = init(model, images(1, 8, 3))["params"]
  assert "downsample_bn" in params["stage2_block1"]
  for block_name in ("stage1_block1", "stage2_block1"):
    norms = {k: v["scale"] for k, v in params[block_name].items() if "bn" in k}
    assert np.all(norms.pop(last) == 0)
    assert norms and all(np.all(s == 1) for s in norms.values())


def test_batch_norm_statistics_span_the_sharded_global_batch(tiny):
  assert jax.device_count() == 8
  model, variables, x = tiny
  step = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
  device = jax.devices()[0]
  expected = step(jax.device_put(variables, device), jax.device_put(x, device))
  mesh = Mesh(np.array(jax.devices()), ("data",))
  actual = step(jax.device_put(variables, NamedSharding(mesh, P())),
                jax.device_put(x, NamedSharding(mesh, P("data"))))
  assert len(actual[0]["projection"].sharding.device_set) == 8
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5),
               actual, expected)
  # The comparison can fail: statistics of one device's shard differ from the global ones.
  _, first_shard = step(variables, x[:2])
  shard_mean = first_shard["batch_stats"]["encoder"]["stem_bn"]["mean"]
  global_mean = expected[1]["batch_stats"]["encoder"]["stem_bn"]["mean"]
  assert not np.allclose(shard_mean, global_mean, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("state", ["tiny", "tiny_vit"])
def test_bfloat16_compute_with_float32_params(state, request):
  model, variables, x = request.getfixturevalue(state)
  model = model.clone(dtype=jnp.bfloat16, encoder=model.encoder.clone(dtype=jnp.bfloat16))
  shapes = init_shapes(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes["params"]))

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, x, train=True,
                         mutable=["batch_stats"])
    return jnp.sum(out["projection"] * out["projection"][::-1]) + jnp.mean(out["logits"]), out

  # The forward really computes in bfloat16, not just casts at the end.
  jaxpr = str(jax.make_jaxpr(loss)(variables["params"]))
  assert re.search(r":bf16\[[\d,]+\] = (conv_general_dilated|dot_general)", jaxpr)
  (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  check_outputs(out, x.shape[0], out["representation"].shape[1])
  assert all(g.dtype == jnp.float32 and np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("field, value, known", [
    ("name", "resnet51", "resnet50"),
    ("stem", "cifar", "imagenet"),
    ("pool", "max", "gap"),
    ("dtype", "float16", "bfloat16"),
    ("width", 0.0, None),
    ("head_dims", (), None),
])
def test_invalid_config_names_the_field(field, value, known):
  with pytest.raises(ValueError, match=rf"model\.{field}=") as err:
    models.build_model(model_config(**{field: value}))
  if known:
    assert known in str(err.value)
