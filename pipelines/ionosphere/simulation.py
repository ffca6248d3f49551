"""Synthetic ionosphere inputs: an h5parm of phases with known dTEC (and clock), its truth
recorded beside it.

The module is not called ``simulate``: importing a submodule sets it as the package's
attribute of that name, which would replace the :func:`simulate` the package exports.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from astroinfer.files import atomic_write
from astroinfer.pipelines.ionosphere.data import TEC_CONSTANT, kappa_from_noise
from astroinfer.pipelines.ionosphere.h5parm import write_h5parm
from astroinfer.pipelines.ionosphere.options import NAME
from astroinfer.tables import check_simulate_target, truth_path

__all__ = ["simulate", "truth_path"]


def simulate(path: str | os.PathLike, seed: int = 0, *, num_times: int = 24, num_ants: int = 6, num_dirs: int = 1,
             num_pols: int = 2, num_freqs: int = 24, noise: float = 0.3, dtec_range: float = 0.4,
             clock: bool = False, flag_fraction: float = 0.02) -> dict[str, Any]:
    """Write an h5parm (sol000/phase000, AXES time,freq,ant,dir,pol) with known dTEC; return the truth.

    dTEC per station and direction is a random walk in time (start uniform in
    +-dtec_range/2, steps 0.01 TECU, clipped to +-dtec_range), shared by both polarisations;
    phi0 is uniform per problem; the noise is von Mises with the kappa of ``noise`` radians;
    ``flag_fraction`` of the channels get weight 0. Channels span 120-168 MHz.
    """
    path = Path(path)
    check_simulate_target(path, seed)
    rng = np.random.default_rng(seed)
    freq = np.linspace(120e6, 168e6, num_freqs)
    times = 5.0e9 + 30.0 * np.arange(num_times)
    steps = rng.normal(0.0, 0.01, (num_times, num_ants, num_dirs))
    start = rng.uniform(-dtec_range / 2, dtec_range / 2, (1, num_ants, num_dirs))
    dtec = np.clip(start + np.cumsum(steps, axis=0), -dtec_range, dtec_range)
    dtec = np.repeat(dtec[..., None], num_pols, axis=3)  # (time, ant, dir, pol)
    tau = rng.uniform(-5e-9, 5e-9, (1, num_ants, 1, 1)) * np.ones_like(dtec) if clock else np.zeros_like(dtec)
    phi0 = rng.uniform(-np.pi, np.pi, dtec.shape)
    kappa = kappa_from_noise(noise)
    model_phase = (TEC_CONSTANT * dtec[..., None] / freq + 2 * np.pi * freq * tau[..., None] + phi0[..., None])
    phase = np.angle(np.exp(1j * (model_phase + rng.vonmises(0.0, kappa, model_phase.shape))))
    weight = (rng.uniform(size=phase.shape) >= flag_fraction).astype(np.float64)
    # File order: time, freq, ant, dir, pol.
    val = np.transpose(phase, (0, 4, 1, 2, 3))
    wgt = np.transpose(weight, (0, 4, 1, 2, 3))
    ants = np.array([f"SIM{i:03d}HBA".encode() for i in range(num_ants)])
    axes = {"time": times, "freq": freq, "ant": ants, "dir": np.array([f"Dir{i:02d}".encode() for i in range(num_dirs)]),
            "pol": np.array([b"XX", b"YY", b"XY", b"YX"][:num_pols])}
    antenna = np.zeros(num_ants, dtype=[("name", "S16"), ("position", "<f4", (3,))])
    antenna["name"] = ants
    antenna["position"] = rng.normal(0, 3e4, (num_ants, 3)) + np.array([3.8e6, 4.6e5, 5.06e6])
    write_h5parm(path, {"phase000": ("phase", val, wgt)}, axes, ("time", "freq", "ant", "dir", "pol"),
                 antenna_table=antenna)
    record = {
        "pipeline": NAME, "seed": int(seed), "noise_rad": noise, "kappa": kappa,
        "shape": {"time": num_times, "freq": num_freqs, "ant": num_ants, "dir": num_dirs, "pol": num_pols},
        "truth": {"dtec": dtec.round(6).tolist(), **({"clock": tau.tolist()} if clock else {})},
        "model": "phase = -8.4479745e9 dTEC / nu + 2 pi nu tau + phi0 + von Mises noise, wrapped to (-pi, pi]",
    }
    text = json.dumps(record, sort_keys=True) + "\n"
    atomic_write(truth_path(path), lambda tmp: Path(tmp).write_text(text))
    return record
