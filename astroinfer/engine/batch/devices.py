"""Chunks over the host's devices: padding, per-problem keys, the split over devices.

Shared by the grid, nested and NUTS chunk functions below ``run``. A chunk is padded to
its fixed size (one compilation per chunk shape) and its problems are split over the
devices with no communication between them; problem ``i`` draws its random numbers from
``fold_in(PRNGKey(seed), i)``, so results do not depend on the chunking.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import PartitionSpec

__all__ = ["devices", "num_devices", "parallel", "pad", "problem_keys", "to_numpy", "take"]


def devices():
    return jax.devices()


def num_devices(size: int) -> int:
    """Devices a chunk of ``size`` problems is split over (all of them, if they divide it)."""
    ndev = len(devices())
    return ndev if size % ndev == 0 else 1


def parallel(fn: Callable, batched_args: tuple[bool, ...], ndev: int) -> Callable:
    """``fn`` with its per-problem arguments split over ``ndev`` devices (one part each).

    Problems are independent, so each device runs its own part with no communication:
    that is what makes XLA use both CPU cores.
    """
    if ndev == 1:
        return jax.jit(fn)
    mesh = jax.make_mesh((ndev,), ("problem",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices()[:ndev])
    specs = tuple(PartitionSpec("problem") if b else PartitionSpec() for b in batched_args)
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=PartitionSpec("problem"),
                                 check_vma=False))


def pad(arrays: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    out = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        if v.shape[0] < size:
            v = np.concatenate([v, np.repeat(v[-1:], size - v.shape[0], axis=0)])
        out[k] = v
    return out


def problem_keys(seed, indices):
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)


def to_numpy(tree) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree.items()}  # writable copies (refinement fills them in)


def take(arrays: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in arrays.items()}
