"""Checksums of saved checkpoints: recorded when a step is saved or imported, re-verified when a
user asks (`dynamics.checkpoints.load_stack(..., verify=True)`).

The checksum is `dynamics.hf_import.checksum`: sha256 over every leaf's path, dtype, shape and
bytes, in sorted path order, the one `experiments import` records for each step, so a trained
series and an imported suite are verified alike.
"""
from __future__ import annotations

import jax
import numpy as np

from dynamics.hf_import import checksum
from models.errors import OntogenyError


def plain(tree) -> bool:
    """A nested dict of arrays (the params of every model family), which the checksum reads."""
    if isinstance(tree, dict):
        return all(plain(v) for v in tree.values())
    return isinstance(tree, (np.ndarray, np.generic, jax.Array))


def with_checksum(meta: dict, params) -> dict:
    """`meta` with the params' checksum added (unless it has one, or the params are not plain)."""
    if "checksum" in meta or not plain(params):
        return meta
    return {**meta, "checksum": checksum(params)}


def verify(series, step: int, params) -> None:
    """Refuse checkpoint `step` of `series` when its params' sha256 differs from the one recorded."""
    recorded = series.meta(step).get("checksum")
    where = series.directory / str(step)
    if recorded is None:
        raise OntogenyError(f"{where} records no checksum to verify (it was saved before checksums were kept); "
                            f"load it without verify=True")
    actual = checksum(params)
    if actual != recorded:
        raise OntogenyError(f"{where} changed on disk since it was saved (sha256 {actual[:12]}, recorded "
                            f"{recorded[:12]}); import or train that step again, or delete it")
