"""Meshes and shardings for data-parallel training and checkpoint-parallel analyses.

`jax.make_mesh` defaults to Explicit axis types in this JAX, under which an embedding
lookup raises ShardingTypeError; every mesh here uses Auto axes, so XLA's partitioner
propagates shardings from the inputs and the model code stays sharding-agnostic.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from models.errors import OntogenyError


def mesh_1d(axis: str, devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    return Mesh(np.array(devices), (axis,), axis_types=(jax.sharding.AxisType.Auto,))


def data_mesh(devices=None) -> Mesh:
    return mesh_1d("data", devices)


def check_divisible(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise OntogenyError(f"train.batch_size={batch_size} does not split over {n} devices; "
                            f"use a multiple of {n} or fewer devices")


def shard_batch(batch, mesh: Mesh):
    """Split every array's leading (batch) axis over the mesh's data axis."""
    return jax.device_put(batch, NamedSharding(mesh, P(mesh.axis_names[0])))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))
