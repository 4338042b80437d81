"""SupCon loss against a slow per-anchor reference, the paper's gradient, and its sharded form."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from supcon_jax import losses


def unit_features(seed: int, batch: int, views: int, dim: int = 16) -> np.ndarray:
  x = np.random.default_rng(seed).normal(size=(batch, views, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def label_weights(labels, batch: int) -> np.ndarray:
  """[B, B] m_ac = l_a·l_c: the released loss's label product (class ids act as one-hot)."""
  if labels is None:
    vectors = np.eye(batch)
  elif np.ndim(labels) == 1:
    vectors = np.asarray(labels)[:, None] == np.unique(labels)[None, :]
  else:
    vectors = labels
  vectors = np.asarray(vectors, np.float64)
  return vectors @ vectors.T


def reference_supcon(features, labels, *, temperature, base_temperature=None,
                     contrast_mode="all", summation="outside", denominator="all",
                     positives_cap=None):
  """The released loss written from its definition, one anchor at a time, in float64.

  Features [B, V, ...] are flattened per view. A view j of sample c is, for an anchor i of
  sample a (j ≠ i), a positive with weight m_ac = l_a·l_c and a negative with weight
  1 - m_ac. With a cap k, anchor i keeps the positives of its own sample and of the k / V
  other samples with the largest min(m_ac, 1), lower sample index first; the dropped ones
  also leave the "all" denominator. Where supcon_loss documents that it follows the paper
  instead, so does this: the anchor is in none of its own sums, weights stop at 0, and the
  loss is the mean over anchors with a positive (and a negative, for "only_negatives").
  """
  batch, views = features.shape[:2]
  z = np.asarray(features, np.float64).reshape(batch * views, -1)
  m = label_weights(labels, batch)
  kept = m.copy()
  if positives_cap is not None:
    for a in range(batch):
      ranked = sorted((c for c in range(batch) if c != a), key=lambda c: (-min(m[a, c], 1), c))
      dropped = ranked[positives_cap // views:]
      kept[a, dropped] = 0.0
  sample = np.arange(batch * views) // views
  anchors = range(batch * views) if contrast_mode == "all" else range(0, batch * views, views)
  per_anchor = []
  for i in anchors:
    exp = np.exp(z @ z[i] / temperature)
    not_i = np.arange(batch * views) != i
    pos_w = kept[sample[i], sample] * not_i
    neg_w = np.maximum(1 - m[sample[i], sample], 0) * not_i
    all_w = np.maximum(1 - (m - kept)[sample[i], sample], 0) * not_i
    if not pos_w.any() or (denominator == "only_negatives" and not neg_w.any()):
      continue
    pos = np.flatnonzero(pos_w)
    if denominator == "all":
      den = np.full(len(pos), np.sum(all_w * exp))
    elif denominator == "one_positive":
      den = exp[pos] + np.sum(neg_w * exp)
    else:
      den = np.full(len(pos), np.sum(neg_w * exp))
    ratios, weights = exp[pos] / den, pos_w[pos]
    per_anchor.append(-np.sum(weights * np.log(ratios)) / weights.sum()
                      if summation == "outside" else
                      -np.log(np.sum(weights * ratios) / weights.sum()))
  scale = 1.0 if base_temperature is None else temperature / base_temperature
  return scale * np.mean(per_anchor) if per_anchor else 0.0


def reference_gradient(features, labels, eps: float = 1e-6, **kwargs) -> np.ndarray:
  """Central finite differences of reference_supcon in float64."""
  x = np.asarray(features, np.float64)
  grad = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[index] = eps
    grad[index] = (reference_supcon(x + step, labels, **kwargs)
                   - reference_supcon(x - step, labels, **kwargs)) / (2 * eps)
  return grad


MODES = list(itertools.product(losses.CONTRAST_MODES, losses.SUMMATIONS, losses.DENOMINATORS))


@pytest.mark.parametrize("contrast_mode,summation,denominator", MODES)
@pytest.mark.parametrize("views", [1, 2, 3])
def test_matches_reference_with_labels_and_simclr(contrast_mode, summation, denominator, views):
  features = unit_features(views, batch=6, views=views)
  labels = np.array([0, 1, 0, 2, 1, 0])
  kwargs = dict(temperature=0.2, contrast_mode=contrast_mode, summation=summation,
                denominator=denominator)
  for lab in (labels, None):
    got = losses.supcon_loss(jnp.asarray(features), None if lab is None else jnp.asarray(lab),
                             **kwargs)
    want = reference_supcon(features, lab, **kwargs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# Label vectors as the released loss takes them: sample 0 shares two labels with sample 2,
# sample 3 has none (so no positives, not even its other view).
MULTI_HOT = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 0, 1]])
SOFT = np.random.default_rng(0).dirichlet(np.ones(3), size=6)
INT_LABELS = np.array([0, 1, 0, 2, 1, 0])
# (features, labels, positives_cap, check the gradient too)
NEW_INPUT_CASES = [
    (unit_features(20, 6, 2), MULTI_HOT, None, False),
    (unit_features(21, 6, 2, dim=4), SOFT, None, True),
    (unit_features(27, 6, 2), SOFT, 0, False),  # one positive, of weight |l_i|² < 1
    (unit_features(22, 6, 2), INT_LABELS, 2, False),  # each anchor: one other sample's views
    (unit_features(23, 6, 2), INT_LABELS, 0, False),  # only the anchor's own other view
    (unit_features(24, 6, 2, dim=4), MULTI_HOT, 2, True),
    (unit_features(25, 6, 1), INT_LABELS, 1, False),
    (unit_features(26, 6, 2, dim=6).reshape(6, 2, 2, 3), INT_LABELS, None, False),  # rank 4
]


@pytest.mark.slow
@pytest.mark.parametrize("contrast_mode,summation,denominator", MODES)
def test_label_vectors_cap_and_rank_4_features_match_reference(contrast_mode, summation,
                                                                denominator):
  kwargs = dict(temperature=0.2, contrast_mode=contrast_mode, summation=summation,
                denominator=denominator)
  # One compile for all cases, without LLVM's optimisations (see assert_same_values_and_grads).
  caps = [cap for _, _, cap, _ in NEW_INPUT_CASES]
  fn = jax.jit(lambda cases: [
      jax.value_and_grad(functools.partial(losses.supcon_loss, labels=labels,
                                           positives_cap=cap, **kwargs))(features)
      for (features, labels), cap in zip(cases, caps)])
  cases = [(jnp.asarray(f, jnp.float32), jnp.asarray(lab)) for f, lab, _, _ in NEW_INPUT_CASES]
  results = fn.lower(cases).compile(
      compiler_options={"xla_backend_optimization_level": 0})(cases)
  for (features, labels, cap, check_grad), (value, grad) in zip(NEW_INPUT_CASES, results):
    case = f"labels {labels.shape} {labels.dtype}, cap {cap}, features {features.shape}"
    ref_kwargs = dict(kwargs, positives_cap=cap)
    np.testing.assert_allclose(value, reference_supcon(features, labels, **ref_kwargs),
                               rtol=1e-5, atol=1e-6, err_msg=case)
    if check_grad:
      want = reference_gradient(features, labels, **ref_kwargs)
      np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                 err_msg=case)


def test_simclr_with_one_view_has_no_positives_and_is_zero():
  assert float(losses.supcon_loss(jnp.asarray(unit_features(0, 4, 1)))) == 0.0


def test_only_negatives_skips_anchors_without_negatives():
  features = unit_features(1, batch=4, views=2)
  labels = np.array([0, 0, 0, 0])
  got = losses.supcon_loss(jnp.asarray(features), jnp.asarray(labels),
                           denominator="only_negatives")
  assert float(got) == 0.0
  labels = np.array([0, 0, 0, 1])
  got = losses.supcon_loss(jnp.asarray(features), jnp.asarray(labels),
                           denominator="only_negatives")
  np.testing.assert_allclose(
      got, reference_supcon(features, labels, temperature=0.1, denominator="only_negatives"),
      rtol=1e-5)


def test_base_temperature_scales_the_loss():
  features, labels = jnp.asarray(unit_features(2, 6, 2)), jnp.array([0, 1, 0, 1, 2, 2])
  plain = losses.supcon_loss(features, labels, temperature=0.07)
  scaled = losses.supcon_loss(features, labels, temperature=0.07, base_temperature=0.7)
  np.testing.assert_allclose(scaled, plain * 0.1, rtol=1e-6)


def test_gradient_matches_paper_section_3_2_3():
  """d L_out / d z_i for V=1: the paper's own-anchor term, plus z_i's part in other anchors."""
  tau = 0.1
  features = unit_features(3, batch=7, views=1)
  labels = np.array([0, 0, 1, 0, 2, 1, 2])
  grad = jax.grad(lambda f: losses.supcon_loss(f, jnp.asarray(labels), temperature=tau))(
      jnp.asarray(features))[:, 0]

  z = features[:, 0].astype(np.float64)
  n = len(z)
  logits = z @ z.T / tau
  exp = np.exp(logits) * (1 - np.eye(n))
  prob = exp / exp.sum(axis=1, keepdims=True)  # P_ij over A(i) = all but i
  pos = (labels[:, None] == labels[None, :]) & ~np.eye(n, dtype=bool)
  n_pos = pos.sum(axis=1)
  for i in range(n):
    p_idx, n_idx = np.flatnonzero(pos[i]), np.flatnonzero(~pos[i] & (np.arange(n) != i))
    own = (z[p_idx].T @ (prob[i, p_idx] - 1.0 / n_pos[i]) + z[n_idx].T @ prob[i, n_idx]) / tau
    # z_i also sits in the contrast set of every other anchor j.
    as_contrast = sum(z[j] * (prob[j, i] - pos[j, i] / n_pos[j]) / tau
                      for j in range(n) if j != i)
    np.testing.assert_allclose(grad[i], (own + as_contrast) / n, rtol=1e-4, atol=1e-6)


def sharded_loss(mesh, **kwargs):
  loss_fn = functools.partial(losses.supcon_loss, axis_name="data", **kwargs)
  return jax.shard_map(loss_fn, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P())


def sharded_simclr_loss(mesh, **kwargs):
  loss_fn = functools.partial(losses.supcon_loss, labels=None, axis_name="data", **kwargs)
  return jax.shard_map(loss_fn, mesh=mesh, in_specs=P("data"), out_specs=P())


@pytest.mark.slow
@pytest.mark.parametrize("contrast_mode,summation,denominator", [
    ("all", "outside", "all"), ("one", "inside", "one_positive"),
    ("all", "inside", "only_negatives")])
def test_sharded_equals_unsharded(contrast_mode, summation, denominator):
  assert jax.device_count() == 8
  mesh = Mesh(np.array(jax.devices()), ("data",))
  features = jnp.asarray(unit_features(4, batch=16, views=2))
  # Uneven classes per device: some shards hold one class only, some several.
  labels = jnp.array([0, 0, 0, 0, 1, 2, 1, 1, 3, 0, 2, 2, 2, 2, 1, 3])
  kwargs = dict(temperature=0.1, contrast_mode=contrast_mode, summation=summation,
                denominator=denominator)
  dense = lambda f: losses.supcon_loss(f, labels, **kwargs)
  shard = lambda f: sharded_loss(mesh, **kwargs)(f, labels)
  np.testing.assert_allclose(jax.jit(shard)(features), dense(features), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.grad(shard))(features), jax.grad(dense)(features),
                             rtol=1e-5, atol=1e-7)

  simclr_dense = lambda f: losses.supcon_loss(f, **kwargs)
  simclr_shard = lambda f: sharded_simclr_loss(mesh, **kwargs)(f)
  np.testing.assert_allclose(jax.jit(simclr_shard)(features), simclr_dense(features), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.grad(simclr_shard))(features),
                             jax.grad(simclr_dense)(features), rtol=1e-5, atol=1e-7)


def assert_same_values_and_grads(fns, want_fn, features):
  """Each of fns has want_fn's value and gradient at features, to float32 round-off.

  Compiling is most of a small test's time: one jit for all of them, without LLVM's
  optimisations (about half the compile time; the results are the same computation).
  """
  fn_all = jax.jit(lambda f: [jax.value_and_grad(fn)(f) for fn in (want_fn, *fns)])
  results = fn_all.lower(features).compile(
      compiler_options={"xla_backend_optimization_level": 0})(features)
  (want_value, want_grad), *got = results
  for i, (value, grad) in enumerate(got):
    np.testing.assert_allclose(value, want_value, rtol=1e-6, atol=1e-7, err_msg=f"fns[{i}]")
    # A gradient entry sums terms as large as the largest entry; round-off is relative to that.
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6 * np.abs(want_grad).max(),
                               err_msg=f"fns[{i}]")


@pytest.mark.slow
@pytest.mark.parametrize("contrast_mode,summation,denominator", MODES)
def test_blockwise_equals_dense(contrast_mode, summation, denominator):
  # 10 samples x 2 views: 20 anchors ("all") or 10 ("one"); blocks of 5 divide both, of 3 neither.
  features = jnp.asarray(unit_features(8, batch=10, views=2))
  labels = jnp.array([0, 1, 0, 2, 1, 0, 3, 3, 2, 4])
  kwargs = dict(temperature=0.1, contrast_mode=contrast_mode, summation=summation,
                denominator=denominator)
  for lab, block_sizes in ((labels, (3, 5)), (None, (3,))):
    loss = functools.partial(losses.supcon_loss, labels=lab, **kwargs)
    assert_same_values_and_grads(
        [functools.partial(loss, block_size=size) for size in block_sizes],
        functools.partial(loss, block_size=10**6), features)


@pytest.mark.slow
@pytest.mark.parametrize("contrast_mode,summation,denominator", [
    ("all", "outside", "all"), ("one", "inside", "one_positive"),
    ("all", "inside", "only_negatives")])
def test_sharded_blockwise_equals_unsharded_dense(contrast_mode, summation, denominator):
  mesh = Mesh(np.array(jax.devices()), ("data",))
  # 24 samples on 8 devices: 6 local anchors ("all", blocks of 2 divide them, of 4 do not)
  # or 3 ("one": blocks of 2 do not divide them).
  features = jnp.asarray(unit_features(9, batch=24, views=2))
  labels = jnp.asarray(np.random.default_rng(9).integers(0, 4, size=24))
  kwargs = dict(temperature=0.1, contrast_mode=contrast_mode, summation=summation,
                denominator=denominator)
  assert_same_values_and_grads(
      [lambda f, size=size: sharded_loss(mesh, block_size=size, **kwargs)(f, labels)
       for size in (2, 4)],
      lambda f: losses.supcon_loss(f, labels, block_size=10**6, **kwargs), features)
  assert_same_values_and_grads(
      [lambda f, size=size: sharded_simclr_loss(mesh, block_size=size, **kwargs)(f)
       for size in (2, 4)],
      lambda f: losses.supcon_loss(f, block_size=10**6, **kwargs), features)


@pytest.mark.slow
@pytest.mark.parametrize("contrast_mode,summation,denominator", [
    ("all", "outside", "all"), ("one", "inside", "one_positive"),
    ("all", "inside", "only_negatives")])
def test_sharded_blockwise_label_vectors_with_cap_equal_unsharded_dense(contrast_mode, summation,
                                                                        denominator):
  mesh = Mesh(np.array(jax.devices()), ("data",))
  features = jnp.asarray(unit_features(12, batch=24, views=2))
  # Random multi-hot rows over 4 labels: most pairs share one or two, so a cap of 2 other
  # samples binds with many ties, which must resolve to the same global samples per shard.
  labels = jnp.asarray(np.random.default_rng(12).integers(0, 2, size=(24, 4)))
  kwargs = dict(temperature=0.1, contrast_mode=contrast_mode, summation=summation,
                denominator=denominator, positives_cap=4)
  assert_same_values_and_grads(
      [lambda f, size=size: sharded_loss(mesh, block_size=size, **kwargs)(f, labels)
       for size in (2, 4)] + [lambda f: losses.supcon_loss(f, labels, block_size=5, **kwargs)],
      lambda f: losses.supcon_loss(f, labels, block_size=10**6, **kwargs), features)


def test_forward_mode_matches_reverse_mode_blockwise():
  features = jnp.asarray(unit_features(10, batch=6, views=2))
  tangent = jnp.asarray(unit_features(11, batch=6, views=2))
  loss = functools.partial(losses.supcon_loss, labels=jnp.array([0, 1, 0, 2, 1, 0]),
                           block_size=5)
  _, directional = jax.jvp(loss, (features,), (tangent,))
  np.testing.assert_allclose(directional, jnp.vdot(jax.grad(loss)(features), tangent),
                             rtol=1e-5, atol=1e-6)


def test_blockwise_memory_grows_with_the_block_not_the_batch():
  """XLA's own buffer plan for value_and_grad: blocks keep temporaries O(block x contrast)."""
  def temp_bytes(batch, block_size):
    features = jax.ShapeDtypeStruct((batch, 2, 32), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    fn = jax.jit(jax.value_and_grad(functools.partial(losses.supcon_loss, block_size=block_size)))
    return fn.lower(features, labels).compile().memory_analysis().temp_size_in_bytes

  logits_bytes = 4 * 8192 ** 2  # one dense [2B, 2B] float32 matrix at B = 4096
  assert temp_bytes(4096, 8192) > logits_bytes  # dense stores several such matrices
  assert temp_bytes(4096, None) < logits_bytes / 2  # the automatic default blocks here
  assert temp_bytes(4096, 64) < logits_bytes / 16


def test_bfloat16_input_is_finite_and_close():
  features = unit_features(5, batch=8, views=2)
  labels = jnp.array([0, 1, 2, 3, 0, 1, 2, 3])
  got = losses.supcon_loss(jnp.asarray(features, jnp.bfloat16), labels)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, losses.supcon_loss(jnp.asarray(features), labels), rtol=2e-2)


@pytest.mark.slow
@pytest.mark.parametrize("contrast_mode,summation,denominator", MODES)
def test_extreme_inputs_stay_finite(contrast_mode, summation, denominator):
  kwargs = dict(contrast_mode=contrast_mode, summation=summation, denominator=denominator)
  identical = jnp.ones((8, 2, 4)) / 2.0
  spread = jnp.asarray(unit_features(6, batch=8, views=2))
  cases = [
      (identical, jnp.arange(8) % 3, 0.1),
      (spread, jnp.arange(8) % 2, 0.01),
      (spread, jnp.zeros(8, jnp.int32), 0.01),
      (spread[:1], jnp.zeros(1, jnp.int32), 0.1),
      (spread[:1, :1], jnp.zeros(1, jnp.int32), 0.1),
  ]
  for features, labels, tau in cases:
    fn = lambda f: losses.supcon_loss(f, labels, temperature=tau, **kwargs)
    value, grad = jax.value_and_grad(fn)(features)
    assert np.isfinite(value), (features.shape, tau)
    assert np.all(np.isfinite(grad)), (features.shape, tau)


def test_temperature_0_01_matches_reference():
  features = unit_features(7, batch=6, views=2)
  labels = np.array([0, 1, 0, 2, 1, 0])
  got = losses.supcon_loss(jnp.asarray(features), jnp.asarray(labels), temperature=0.01)
  np.testing.assert_allclose(got, reference_supcon(features, labels, temperature=0.01),
                             rtol=1e-4)


@pytest.mark.parametrize("args,kwargs,message", [
    ((np.zeros((4, 8)),), {}, r"rank >= 3"),
    ((np.zeros((4, 2, 8)), np.zeros(3, np.int32)), {}, r"labels must be \[B\]"),
    ((np.zeros((4, 2, 8)), np.zeros((4, 2, 3))), {}, r"labels must be \[B\]"),
    ((np.zeros((4, 2, 8)),), {"positives_cap": 3}, "multiple of the number of views V = 2"),
    ((np.zeros((4, 2, 8)),), {"positives_cap": -2}, "positives_cap must be None or an int >= 0"),
    ((np.zeros((4, 2, 8)),), {"contrast_mode": "some"}, "contrast_mode"),
    ((np.zeros((4, 2, 8)),), {"summation": "middle"}, "summation"),
    ((np.zeros((4, 2, 8)),), {"denominator": "none"}, "denominator"),
    ((np.zeros((4, 2, 8)),), {"temperature": 0.0}, "temperature must be > 0"),
    ((np.zeros((4, 2, 8)),), {"temperature": 0.1, "base_temperature": -1.0}, "base_temperature"),
    ((np.zeros((4, 2, 8)),), {"block_size": 0}, "block_size"),
])
def test_bad_input_raises_value_error_naming_the_problem(args, kwargs, message):
  with pytest.raises(ValueError, match=message):
    losses.supcon_loss(*[jnp.asarray(a) for a in args], **kwargs)


def test_cross_entropy_and_label_smoothing_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 4)).astype(np.float32)
  labels = np.array([0, 3, 1, 1, 2])
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  plain = -log_probs[np.arange(5), labels].mean()
  np.testing.assert_allclose(losses.cross_entropy_loss(logits, labels), plain, rtol=1e-5)
  eps = 0.1
  targets = np.full((5, 4), eps / 4) + (1 - eps) * np.eye(4)[labels]
  smoothed = -(targets * log_probs).sum(-1).mean()
  np.testing.assert_allclose(
      losses.cross_entropy_loss(logits, labels, label_smoothing=eps), smoothed, rtol=1e-5)
  weights = np.array([1, 1, 0, 0, 1])
  np.testing.assert_allclose(
      losses.cross_entropy_loss(logits, labels, weights=weights),
      -log_probs[[0, 1, 4], labels[[0, 1, 4]]].mean(), rtol=1e-5)


def test_topk_accuracy():
  logits = jnp.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
  labels = jnp.array([2, 0, 0, 1])
  assert float(losses.topk_accuracy(logits, labels, k=1)) == pytest.approx(0.25)
  assert float(losses.topk_accuracy(logits, labels, k=2)) == pytest.approx(0.75)
  assert float(losses.topk_accuracy(logits, labels, k=1, weights=jnp.array([0, 1, 0, 0]))) == 1.0
