"""The device mesh and how arrays are laid out on it."""
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def create_mesh() -> Mesh:
  """A 1-D mesh over every device of every process; the batch is split along it."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], num_shards: int) -> P:
  """Split the largest dimension that divides evenly; replicate what cannot be split."""
  candidates = [d for d in np.argsort(shape)[::-1] if shape[d] % num_shards == 0]
  if not candidates or num_shards == 1:
    return P()
  spec = [None] * len(shape)
  spec[candidates[0]] = DATA_AXIS
  return P(*spec)


def state_shardings(abstract_state: Any, mesh: Mesh, shard_params: bool) -> Any:
  """Shardings for a pytree of ShapeDtypeStructs: replicated, or FSDP-style along `data`."""
  if not shard_params:
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)
  size = mesh.shape[DATA_AXIS]
  return jax.tree.map(lambda x: NamedSharding(mesh, _fsdp_spec(x.shape, size)), abstract_state)
