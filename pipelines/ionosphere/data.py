"""Loading the ionosphere pipeline's input: an h5parm phase soltab, checked and flattened into
one row of channel phases and weights per (time, ant, dir, pol) problem.

Also the two numbers of the phase model that numpy code needs (the simulator, the residuals
after sampling): :data:`TEC_CONSTANT` and :func:`kappa_from_noise`, the ``--phase-noise``
setting as the von Mises concentration. They live here, not in :mod:`.phase_model`, so
that ``load`` and ``simulate`` do not import JAX.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from scipy.optimize import brentq
from scipy.special import i0e, i1e

from astroinfer.errors import InputError
from astroinfer.pipeline import PipelineData
from astroinfer.pipelines.ionosphere.h5parm import PROBLEM_AXES, read_phases

__all__ = ["TEC_CONSTANT", "kappa_from_noise", "load", "axis_label"]

TEC_CONSTANT = -8.4479745e9  # rad Hz / TECU


def kappa_from_noise(sigma: float) -> float:
    """Von Mises concentration with the mean resultant length of a wrapped normal of sd sigma."""
    target = math.exp(-0.5 * sigma**2)
    if target > 1 - 1e-9:
        return 1e9
    return float(brentq(lambda k: i1e(k) / i0e(k) - target, 1e-9, 1e9))


def load(path: str | os.PathLike, *, phase_noise: float = 0.3, dtec_max: float = 1.0, fit_clock: bool = False,
         clock_max: float = 2e-8, ref_ant: str | None = None, solset: str | None = None, soltab: str | None = None,
         draws: int = 100, chunk_size: int = 8192, h5parm_out: str | None = None,
         smooth: bool = False) -> PipelineData:
    """Read an h5parm phase soltab into per-problem arrays (problem = time, ant, dir, pol).

    ``draws`` to ``smooth`` are run settings (see RUN_OPTIONS), accepted here so that every
    option of the pipeline can be given to it; reading the file does not use them."""
    path = Path(path)
    table = read_phases(path, solset=solset, soltab=soltab)
    phase, weight = table.phase, table.weight
    ants = [axis_label(a) for a in table.axes["ant"]]
    if ref_ant is not None:
        if ref_ant not in ants:
            raise InputError(f"{path}: --ref-ant {ref_ant} is not a station of the soltab; stations are "
                             f"{', '.join(ants[:10])}{', ...' if len(ants) > 10 else ''}")
        r = ants.index(ref_ant)
        phase = np.angle(np.exp(1j * (phase - phase[:, r:r + 1])))
        weight = weight * (weight[:, r:r + 1] > 0)
    T, A, D, P, K = phase.shape
    num = T * A * D * P
    flat_phase = phase.reshape(num, K).astype(np.float32)
    flat_weight = (weight.reshape(num, K) > 0).astype(np.float32)
    grids = np.meshgrid(np.arange(T), np.arange(A), np.arange(D), np.arange(P), indexing="ij")
    index = {a: g.reshape(-1) for a, g in zip(PROBLEM_AXES, grids)}
    kappa = kappa_from_noise(phase_noise)
    shared = {"freq": np.asarray(table.axes["freq"], np.float32), "kappa": np.float32(kappa),
              "dtec_max": np.float32(dtec_max)}
    if fit_clock:
        shared["clock_max"] = np.float32(clock_max)
    metadata = {
        "path": str(path), "solset": table.solset, "soltab": table.soltab, "shape": [T, A, D, P, K],
        "axes_in_file": list(table.present_axes), "num_problems": num, "num_channels": K,
        "num_flagged_channels": int(np.sum(flat_weight == 0)), "num_nan_phases": table.num_nan,
        "num_rewrapped_phases": table.num_rewrapped,
        "num_flagged_problems": int(np.sum(flat_weight.sum(axis=1) == 0)),
        "freq_min_hz": float(np.min(table.axes["freq"])), "freq_max_hz": float(np.max(table.axes["freq"])),
        "kappa": kappa, "phase_noise": phase_noise, "ref_ant": ref_ant,
    }
    return PipelineData(
        data={"phase": flat_phase, "weight": flat_weight, "shared": shared},
        metadata={**metadata, "_axes": table.axes, "_index": index, "_antenna": table.antenna_table,
                  "_source": table.source_table},
    )


def axis_label(value) -> str:
    """A station, direction or polarisation name as text (h5parm axes hold bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
