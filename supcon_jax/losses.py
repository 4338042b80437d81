"""Losses: the SupCon family (L_out, L_in, SimCLR) and cross-entropy with top-k accuracy."""
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.ad_checkpoint import checkpoint_name

from supcon_jax import checks

CONTRAST_MODES = ("all", "one")
SUMMATIONS = ("outside", "inside")
DENOMINATORS = ("all", "one_positive", "only_negatives")


def _check_positive(name: str, value) -> None:
  # Traced values cannot be checked here; concrete ones can and should be.
  if isinstance(value, (int, float)) and not value > 0:
    raise ValueError(f"supcon_loss: {name} must be > 0, got {value}.")


# Names of the per-row statistics that a recomputed block keeps from its forward pass.
_ROW_STATS = "supcon_row_stats"
# Automatic block size: this many anchors per block (fastest on CPU from 1024 to 8192 samples
# x 2 views), fewer where their float32 logits would take more than _AUTO_BLOCK_BYTES.
_AUTO_BLOCK_ROWS = 512
_AUTO_BLOCK_BYTES = 32 * 2**20


def _masked_logsumexp(x: jax.Array, nonempty: jax.Array,
                      mask: Optional[jax.Array] = None) -> jax.Array:
  """log Σ_j mask_ij exp(x_ij) along the last axis (mask: bool or weights >= 0; None: all 1).

  Stable and NaN-free.

  Entries of x may be -inf (they add nothing). `nonempty` [...] says whether a row has any
  entry that is not -inf and not masked out; callers know it from counts, which saves a pass
  over x. Rows without one get lse = 0, so callers can drop them without an -inf ever
  reaching a gradient.
  """
  if mask is not None and mask.dtype != jnp.bool_:
    # A weight w adds log w to the exponent; weights of 0 become the mask.
    x = x + jnp.log(jnp.where(mask > 0, mask, 1.0))
    mask = mask > 0
  if mask is not None:
    # Masking before exp keeps a huge masked-out entry from overflowing into a NaN gradient.
    x = jnp.where(mask, x, -jnp.inf)
  row_max = jnp.max(x, axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  row_max = checkpoint_name(row_max, _ROW_STATS)
  # The maximal entry contributes exp(0) = 1, so total >= 1 on non-empty rows.
  total = jnp.sum(jnp.exp(x - row_max), axis=-1)
  total = checkpoint_name(jnp.where(nonempty, total, 1.0), _ROW_STATS)
  lse = jnp.log(total) + row_max[..., 0]
  return jnp.where(nonempty, lse, 0.0)


@jax.custom_jvp
def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """a @ b in float32, differentiated so that reverse mode never transposes a left operand."""
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


@_matmul.defjvp
def _matmul_jvp(primals, tangents):
  a, b = primals
  da, db = tangents
  # Reverse mode transposes a @ db into aᵀ @ g. XLA:CPU runs that about 2.5x slower when aᵀ is
  # a view of a, so aᵀ ([D, rows], small) is materialised; the barrier keeps XLA from folding
  # it back into the product. Elsewhere this costs next to nothing.
  a_t = jax.lax.optimization_barrier(a.T)
  return _matmul(a, b), (jnp.matmul(da, b, precision=jax.lax.Precision.HIGHEST)
                         + jnp.matmul(a_t.T, db, precision=jax.lax.Precision.HIGHEST))


class _Anchors(NamedTuple):
  """Per-anchor inputs of `_anchor_losses`; every field has a leading [anchors] axis."""
  features: jax.Array  # [b, D] divided by the temperature
  index: jax.Array  # [b] the anchor's own column in the contrast set (not in its contrast set)
  label: jax.Array  # [b] class ids, or [b, L] label vectors
  num_same: Optional[jax.Array]  # [b] contrast views with the anchor's class, itself included
  positive_sum: Optional[jax.Array]  # [b, D] Σ_{p ∈ P(i)} z_p, where summation needs it


class _Pairs(NamedTuple):
  """Which contrast views count for each anchor of a block, as [b, N] masks or weights.

  Masks (bool) come from class ids; weights (float32 >= 0) from label vectors or a cap.
  Every field is False / 0 at the anchor itself.
  """
  positive: jax.Array  # P(i), weighted
  negative: jax.Array  # N(i), weighted
  everything: Optional[jax.Array]  # the "all" denominator's views; None: every view but i
  num_positives: jax.Array  # [b] Σ_j positive_ij
  has_negative: jax.Array  # [b] bool: any negative


def _class_pairs(anchors: _Anchors, contrast_label: jax.Array) -> _Pairs:
  """Masks from [N] class ids: positives share the anchor's class, negatives do not."""
  num_contrast = contrast_label.shape[0]
  same_label = anchors.label[:, None] == contrast_label[None, :]
  positive = same_label & (anchors.index[:, None] != jnp.arange(num_contrast)[None, :])
  return _Pairs(positive=positive, negative=~same_label, everything=None,
                num_positives=anchors.num_same - 1,
                has_negative=anchors.num_same < num_contrast)


def _weighted_pairs(anchors: _Anchors, sample_label: jax.Array, views: int,
                    positives_cap: Optional[int]) -> _Pairs:
  """Weights from the [G] class ids or [G, L] label vectors of the G contrast samples.

  The weight of a pair of samples is m = l_a·l_c (class ids: 1 if equal, else 0). As in the
  released code, a view of sample c is a positive of weight m (0 if the cap drops c) and a
  negative of weight 1 - m; the "all" denominator holds every view once, less m for those
  the cap drops. Where the released weights go below 0 (m > 1) they stop at 0 here.
  """
  num_samples = sample_label.shape[0]
  if sample_label.ndim == 1:
    m = (anchors.label[:, None] == sample_label[None, :]).astype(jnp.float32)
  else:
    m = jnp.matmul(anchors.label, sample_label.T, precision=jax.lax.Precision.HIGHEST)
  own = (anchors.index // views)[:, None] == jnp.arange(num_samples)[None, :]
  kept = m
  if positives_cap is not None:
    # The released choice: the cap // V samples with the largest min(m, 1) other than the
    # anchor's own, the lowest index first among equals (as TF's and XLA's top_k order
    # them), so the same ones whatever the sharding. All their views are kept.
    keys = jnp.where(own, 0.0, jnp.minimum(m, 1.0))
    _, chosen = jax.lax.top_k(keys, min(positives_cap // views, num_samples))
    keep = own.at[jnp.arange(m.shape[0])[:, None], chosen].set(True)
    kept = jnp.where(keep, m, 0.0)
  not_self = anchors.index[:, None] != jnp.arange(num_samples * views)[None, :]
  # Contrast views are ordered sample-major (row c * V + v), so a sample's weight repeats V
  # times.
  per_view = lambda w: jnp.where(not_self, jnp.repeat(w, views, axis=1), 0.0)
  positive = per_view(kept)
  negative = per_view(jnp.maximum(1.0 - m, 0.0))
  everything = None if positives_cap is None else per_view(jnp.maximum(1.0 - (m - kept), 0.0))
  return _Pairs(positive=positive, negative=negative, everything=everything,
                num_positives=jnp.sum(positive, axis=-1),
                has_negative=jnp.any(negative > 0, axis=-1))


def _weighted_sum(weight: jax.Array, x: jax.Array) -> jax.Array:
  """Σ_j weight_ij x_ij over the last axis, where entries of x outside the weight may be ±inf."""
  if weight.dtype == jnp.bool_:
    return jnp.sum(jnp.where(weight, x, 0.0), axis=-1)
  return jnp.sum(jnp.where(weight > 0, weight * x, 0.0), axis=-1)


def _anchor_losses(anchors: _Anchors, contrast_t: jax.Array, pairs_fn, summation: str,
                   denominator: str) -> tuple[jax.Array, jax.Array]:
  """The loss of each anchor in a block of rows: the one implementation of the per-row math.

  Args:
    anchors: a block of b anchors.
    contrast_t: [D, N] the whole contrast set, transposed.
    pairs_fn: anchors -> `_Pairs`: their positives and negatives in the contrast set.
    summation, denominator: as in `supcon_loss`.

  Returns:
    (loss [b], valid [b]): an anchor's loss counts only where valid (see `supcon_loss`).
  """
  num_contrast = contrast_t.shape[1]
  rows = jnp.arange(anchors.index.shape[0])
  # s_ij with s_ii = -inf: the anchor is in no sum over its contrast set. The [b, N] masks
  # below are built from [b] and [N] vectors inside fused elementwise code.
  logits = _matmul(anchors.features, contrast_t).at[rows, anchors.index].set(
      -jnp.inf, unique_indices=True, indices_are_sorted=True, mode="promise_in_bounds")
  pairs = pairs_fn(anchors)
  has_positive = pairs.num_positives > 0
  has_negative = pairs.has_negative
  # Label vectors can give fractional counts, so no clamp to 1 here.
  count = jnp.where(has_positive, pairs.num_positives, 1).astype(jnp.float32)

  if denominator == "one_positive":
    # log(exp(s_ip) / den_ip) = s_ip - logaddexp(s_ip, lse_neg_i) = -softplus(lse_neg_i - s_ip),
    # and 0 when there is no negative (den_ip = exp(s_ip)).
    lse_neg = _masked_logsumexp(logits, has_negative, pairs.negative)
    log_prob = jnp.where(has_negative[:, None],
                         -jax.nn.softplus(lse_neg[:, None] - logits), 0.0)
    if summation == "outside":
      anchor_loss = -_weighted_sum(pairs.positive, log_prob) / count
    else:
      anchor_loss = jnp.log(count) - _masked_logsumexp(log_prob, has_positive, pairs.positive)
    return anchor_loss, has_positive

  if denominator == "all":
    if pairs.everything is None:
      valid = jnp.full(has_positive.shape, num_contrast > 1)
    else:
      valid = jnp.any(pairs.everything > 0, axis=-1)
    log_den = _masked_logsumexp(logits, valid, pairs.everything)
  else:  # only_negatives
    valid = has_negative
    log_den = _masked_logsumexp(logits, has_negative, pairs.negative)
  # den_i does not depend on p, so log(exp(s_ip) / den_i) = s_ip - log_den_i, and the mean
  # over P(i) of s_ip is z_i / τ · Σ_p z_p / |P(i)|: no pass over the [b, N] logits where
  # the class sums are known.
  if summation == "outside":
    if anchors.positive_sum is None:
      positive_logits = _weighted_sum(pairs.positive, logits)
    else:
      positive_logits = jnp.sum(anchors.features * anchors.positive_sum, axis=-1)
    anchor_loss = log_den - positive_logits / count
  else:
    anchor_loss = log_den - _masked_logsumexp(logits, has_positive, pairs.positive) + jnp.log(
        count)
  return anchor_loss, valid & has_positive


def _auto_block_size(num_contrast: int) -> int:
  return max(8, min(_AUTO_BLOCK_ROWS, _AUTO_BLOCK_BYTES // (4 * num_contrast) // 8 * 8))


def _blockwise_anchor_losses(block_size: int, anchors: _Anchors,
                             block_fn) -> tuple[jax.Array, jax.Array]:
  """Applies block_fn to consecutive blocks of block_size anchors.

  Each block is recomputed in the backward pass, keeping only its per-row statistics, so
  memory is O(block_size × contrast set) whatever the number of anchors. The last block is
  padded with copies of the last anchor, whose results are dropped.
  """
  num_anchors = anchors.index.shape[0]
  if block_size >= num_anchors:
    return block_fn(anchors)
  block_fn = jax.checkpoint(
      block_fn, prevent_cse=False,  # safe under scan, and lets XLA share work
      policy=jax.checkpoint_policies.save_only_these_names(_ROW_STATS))
  num_blocks = -(-num_anchors // block_size)
  pad = num_blocks * block_size - num_anchors
  blocks = jax.tree.map(
      lambda r: jnp.pad(r, [(0, pad)] + [(0, 0)] * (r.ndim - 1), mode="edge").reshape(
          num_blocks, block_size, *r.shape[1:]), anchors)
  loss, valid = jax.lax.map(block_fn, blocks)
  return loss.reshape(-1)[:num_anchors], valid.reshape(-1)[:num_anchors]


def supcon_loss(
    features: jax.Array,
    labels: Optional[jax.Array] = None,
    *,
    temperature: float = 0.1,
    base_temperature: Optional[float] = None,
    contrast_mode: str = "all",
    summation: str = "outside",
    denominator: str = "all",
    positives_cap: Optional[int] = None,
    axis_name: Optional[str] = None,
    block_size: Optional[int] = None,
) -> jax.Array:
  """Supervised contrastive loss (Khosla et al., 2020, arXiv 2004.11362).

  It accepts what the released loss (google-research `supcon/losses.py`) accepts, and equals
  it to float32 round-off except in the places listed under "Differences" below.

  Args:
    features: [B, V, D] embeddings of V >= 1 views of B samples, each L2-normalised; or
      [B, V, d1, d2, ...], flattened to [B, V, d1·d2·...]. Any float dtype; the logits are
      computed in float32.
    labels: one of
      - [B] integer class ids: views of samples with the same id are positives;
      - [B, L] label vectors, multi-hot or soft (values >= 0, any numeric dtype), as the
        released loss takes them: samples a and c are positives with weight
        m_ac = l_a·l_c (a pair sharing two labels counts twice) and negatives with weight
        max(1 - m_ac, 0); one-hot vectors give exactly the class-id loss. A sample whose
        vector is all 0 has no positives, not even its other views;
      - None for SimCLR (each sample is its own class, so an anchor's positives are the
        other views of its own sample).
    temperature: τ > 0; logits are z_i·z_j / τ.
    base_temperature: if given, the loss is multiplied by temperature / base_temperature
      (the official code's rescaling); else by 1.
    contrast_mode: "all": every view of every sample is an anchor; "one": only view 0 of
      each sample is. The contrast set of an anchor is always all B·V views except itself.
    summation: "outside" (L_out, eq. 2 of the paper, recommended): the anchor's loss is
      -mean_{p ∈ P(i)} log(exp(s_ip) / den_ip). "inside" (L_in, eq. 3): it is
      -log(mean_{p ∈ P(i)} exp(s_ip) / den_ip). Here s_ij = z_i·z_j / τ and P(i) are the
      views in the contrast set with the anchor's label (means weighted by m with label
      vectors).
    denominator: "all": den_ip = Σ_{j ≠ i} exp(s_ij) over the whole contrast set;
      "one_positive": den_ip = exp(s_ip) + Σ_{n ∈ N(i)} exp(s_in); "only_negatives":
      den_ip = Σ_{n ∈ N(i)} exp(s_in), where N(i) are the views with another label.
    positives_cap: None (no cap) or k >= 0, a multiple of V: as released, each anchor keeps
      at most k positives besides the other views of its own sample, namely all views of
      the k / V other samples that share most labels with it (min(m, 1) largest; the lowest
      global sample index first among equals, so the choice is deterministic and the same
      sharded or not). The positives it drops leave the "all" denominator too, and do not
      become negatives.
    axis_name: set when called inside `jax.shard_map` over that mesh axis, with the local
      shard [B_local, V, ...] (and [B_local] or [B_local, L] labels). Local views are the
      anchors; the contrast set is all-gathered (differentiably) from every device along
      the axis, in axis order. The result is the mean over the global batch, identical on
      every device, and equal (loss and gradients) to the unsharded call on the
      concatenated batch.
    block_size: how many anchors' logits are computed at once. Anchors are processed in
      blocks of this many (the last one padded), and each block is recomputed in the
      backward pass rather than stored, so peak memory is O(block_size × contrast set)
      instead of O(anchors × contrast set); the loss and its gradients are those of the dense
      form (block_size >= anchors) up to float32 round-off. None picks 512 anchors (fewer
      where their logits would take over 32 MiB), which was fastest on CPU; on an
      accelerator a larger block may be faster. Sharded, it counts local anchors.

  Returns:
    Scalar float32: the mean of the anchors' losses over anchors that have at least one
    positive (and, for "only_negatives", at least one negative, since den is otherwise
    empty); other anchors add nothing. It is 0 when no anchor qualifies. Logits are
    max-subtracted and sums taken as log-sum-exp, so the result is never NaN or Inf.

  Differences from the released code, where we follow the paper's eq. 2 and 3:
    1. With one view per sample (V = 1) the released code divides each anchor's loss by
       |P(i)| a second time and averages over all anchors, those without a positive adding
       0 (as it also does for an all-0 label vector); here the loss is the mean of the
       anchors' own losses over anchors with a positive. With V > 1 and class ids every
       anchor has a positive, and both agree.
    2. With "only_negatives", an anchor without negatives makes the released loss NaN
       (log of an empty sum); here that anchor adds nothing, and the loss is 0 when no
       anchor has both a positive and a negative.
    With label vectors, the released code also puts the anchor itself in its denominators
    with weight 1 - l_i·l_i and lets weights 1 - m go below 0 (m > 1), which makes its loss
    NaN for any sample with two labels or more; here the anchor is never in its own sums
    and those weights stop at 0. Neither arises with class ids or one-hot vectors.

  Raises:
    ValueError: features of rank < 3, labels not [B] or [B, L], an unknown mode, a
      temperature <= 0, a positives_cap that is not None or a multiple of V >= 0, or a
      block_size < 1.
  """
  if features.ndim < 3:
    raise ValueError(
        f"supcon_loss: features must be [B, V, D] or [B, V, d1, ...] (rank >= 3), got shape "
        f"{features.shape}; stack the views of each sample on axis 1.")
  batch, views = features.shape[:2]
  if labels is not None and (labels.ndim not in (1, 2) or labels.shape[0] != batch):
    raise ValueError(
        f"supcon_loss: labels must be [B] class ids or [B, L] label vectors with B = {batch}, "
        f"got shape {labels.shape}.")
  checks.check_choice("supcon_loss contrast_mode", contrast_mode, CONTRAST_MODES)
  checks.check_choice("supcon_loss summation", summation, SUMMATIONS)
  checks.check_choice("supcon_loss denominator", denominator, DENOMINATORS)
  _check_positive("temperature", temperature)
  if base_temperature is not None:
    _check_positive("base_temperature", base_temperature)
  if positives_cap is not None and not (
      isinstance(positives_cap, int) and positives_cap >= 0 and positives_cap % views == 0):
    raise ValueError(
        f"supcon_loss: positives_cap must be None or an int >= 0 that is a multiple of the "
        f"number of views V = {views} (it counts views of other samples), got {positives_cap!r}.")
  if block_size is not None and not (isinstance(block_size, int) and block_size >= 1):
    raise ValueError(f"supcon_loss: block_size must be an int >= 1 or None, got {block_size!r}.")

  # The released loss flattens any feature shape per view the same way.
  features = features.reshape(batch, views, -1).astype(jnp.float32)
  if axis_name is None:
    offset = 0
    gather = lambda x: x
  else:
    offset = jax.lax.axis_index(axis_name) * batch
    gather = lambda x: jax.lax.all_gather(x, axis_name, axis=0, tiled=True)
  all_features = gather(features)
  global_batch = all_features.shape[0]

  local_ids = offset + jnp.arange(batch)
  if labels is None:
    # SimCLR: the global sample index is the class.
    anchor_labels = local_ids
    sample_labels = jnp.arange(global_batch)
  else:
    if labels.ndim == 2:
      labels = labels.astype(jnp.float32)
    anchor_labels = labels
    sample_labels = gather(labels)

  anchor_views = views if contrast_mode == "all" else 1
  # Flattened views are ordered sample-major: row b * V + v.
  contrast = all_features.reshape(global_batch * views, -1)
  anchor_labels = jnp.repeat(anchor_labels, anchor_views, axis=0)
  anchor_index = (local_ids[:, None] * views + jnp.arange(anchor_views)[None, :]).reshape(-1)
  num_same = positive_sum = None
  if sample_labels.ndim == 2 or positives_cap is not None:
    pairs_fn = functools.partial(_weighted_pairs, sample_label=sample_labels, views=views,
                                 positives_cap=positives_cap)
  else:
    contrast_labels = jnp.repeat(sample_labels, views)
    pairs_fn = functools.partial(_class_pairs, contrast_label=contrast_labels)
    # Class sizes (and sums) from the sorted labels, rather than from passes over [b, N] masks.
    sorted_labels = jnp.sort(contrast_labels)
    first_same = jnp.searchsorted(sorted_labels, anchor_labels, side="left")
    num_same = jnp.searchsorted(sorted_labels, anchor_labels, side="right") - first_same
    if summation == "outside" and denominator != "one_positive":
      class_sums = jax.ops.segment_sum(
          contrast, jnp.searchsorted(sorted_labels, contrast_labels, side="left"),
          num_segments=contrast.shape[0])
      positive_sum = class_sums[first_same] - contrast[anchor_index]
  anchors = _Anchors(
      # Dividing the [A, D] anchors by τ is cheaper than dividing the [A, N] logits.
      features=features[:, :anchor_views].reshape(batch * anchor_views, -1) / temperature,
      index=anchor_index, label=anchor_labels, num_same=num_same, positive_sum=positive_sum)
  if block_size is None:
    block_size = _auto_block_size(contrast.shape[0])

  block_fn = functools.partial(_anchor_losses, contrast_t=contrast.T, pairs_fn=pairs_fn,
                               summation=summation, denominator=denominator)
  anchor_loss, valid = _blockwise_anchor_losses(block_size, anchors, block_fn)

  total = jnp.sum(jnp.where(valid, anchor_loss, 0.0))
  count = jnp.sum(valid).astype(jnp.float32)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
    count = jax.lax.psum(count, axis_name)
  scale = 1.0 if base_temperature is None else temperature / base_temperature
  return scale * total / jnp.maximum(count, 1.0)


def cross_entropy_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    label_smoothing: float = 0.0,
    weights: Optional[jax.Array] = None,
) -> jax.Array:
  """Mean softmax cross-entropy of [N, C] logits against [N] integer labels.

  `label_smoothing` mixes the one-hot target with the uniform distribution (optax.smooth_labels).
  `weights` ([N], e.g. a padding mask) weight each example; the mean is over their sum.
  Computed in float32.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"cross_entropy_loss: label_smoothing must be in [0, 1), got {label_smoothing}.")
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  per_example = optax.softmax_cross_entropy(logits, targets)
  return _weighted_mean(per_example, weights)


def topk_accuracy(
    logits: jax.Array, labels: jax.Array, k: int = 1, weights: Optional[jax.Array] = None
) -> jax.Array:
  """Fraction of [N] examples whose label is among the k largest of their [N, C] logits."""
  correct = topk_correct(logits, labels, k)
  return _weighted_mean(correct.astype(jnp.float32), weights)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int = 1) -> jax.Array:
  """[N] bool: the label is among the k largest logits (ties broken by rank, as lax.top_k)."""
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1)


def _weighted_mean(values: jax.Array, weights: Optional[jax.Array]) -> jax.Array:
  if weights is None:
    return jnp.mean(values)
  weights = weights.astype(jnp.float32)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)
