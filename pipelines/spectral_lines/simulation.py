"""spectral-lines: synthetic spectra with known lines (``simulate``, the demo) and the tutorial's
two-Gaussian spectrum.

numpy only at import (astropy where the file is written): the package imports this module
for ``PIPELINE.simulate`` when the CLI only lists the pipelines.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from astroinfer.errors import OutputError
from astroinfer.tables import check_simulate_target, write_simulated

from .options import GAUSS_FWHM, NAME


# Continuum shapes of simulated spectra: poly (level and slope), gp (plus a Matern-3/2 draw),
# curved (plus a cubic) and wavy (plus two sinusoids, periods 50-80 and 100-200 Angstrom).
SIMULATED_CONTINUA = ("poly", "gp", "curved", "wavy")
_WRITE_FORMATS = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".fits": "fits"}


def _matern32_draw(rng, x: np.ndarray, amp: float, scale: float) -> np.ndarray:
    """One draw of a Matern-3/2 GP on sorted ``x`` via its exact state-space recursion (O(N))."""
    f = math.sqrt(3.0) / scale
    state = rng.multivariate_normal(np.zeros(2), np.diag([1.0, f * f]))
    out = np.empty(x.size)
    out[0] = state[0]
    stationary = np.diag([1.0, f * f])
    for i in range(1, x.size):
        dt = x[i] - x[i - 1]
        a = math.exp(-f * dt) * np.array([[1 + f * dt, dt], [-f * f * dt, 1 - f * dt]])
        q = stationary - a @ stationary @ a.T
        q = 0.5 * (q + q.T) + 1e-12 * np.eye(2)
        state = a @ state + rng.multivariate_normal(np.zeros(2), q)
        out[i] = state[0]
    return amp * out


def simulate(path: str | os.PathLike, seed: int = 0, *, lines: int = 2, num_pixels: int = 300,
             snr: float | None = None, continuum: str = "poly", noise: float = 0.3,
             window: tuple[float, float] = (6480.0, 6640.0)) -> dict[str, Any]:
    """Write a synthetic spectrum (Gaussian emission lines on a continuum) and return its truth.

    The continuum is a level of 10 (in 1e-17 erg/s/cm2/Angstrom) with a slope and, for
    ``continuum="gp"``, a Matern-3/2 GP draw (amplitude 0.5, length scale 30 Angstrom), for
    ``"curved"`` a quadratic and a cubic term (each coefficient uniform in [-1, 1] over the
    half-window), for ``"wavy"`` two sinusoids (periods 50-80 and 100-200 Angstrom, amplitudes
    0.4-0.8 and 0.3-0.6, random phases). Line
    centres are uniform in the inner 70% of the window and at least 4 widths apart, widths
    (Gaussian sigma) uniform in [1.5, 4] Angstrom, and each line's flux is set by its
    signal-to-noise ratio ``snr`` (drawn in [10, 30] if not given), defined as
    ``flux / (noise * dx * sqrt(FWHM / dx))``: the flux over the noise summed over the FWHM.
    """
    # astropy here, not at the top: the package imports this module at CLI start-up
    import astropy.units as u
    from astropy.table import Table

    path = Path(path)
    ext = check_simulate_target(path, seed, _WRITE_FORMATS)
    if num_pixels < 20:
        raise OutputError(f"num_pixels must be at least 20, got {num_pixels}")
    if continuum not in SIMULATED_CONTINUA:
        raise OutputError(f"continuum must be one of {', '.join(SIMULATED_CONTINUA)}, got {continuum!r}")
    rng = np.random.default_rng(seed)
    lo, hi = window
    x = np.linspace(lo, hi, num_pixels)
    dx = x[1] - x[0]
    level, slope = 10.0, float(rng.uniform(-0.01, 0.01))
    cont = level + slope * (x - 0.5 * (lo + hi))
    gp_amp, gp_scale = 0.5, 30.0
    shape: dict[str, Any] = {}
    if continuum == "gp":
        cont = cont + _matern32_draw(rng, x, gp_amp, gp_scale)
        shape = {"gp_amp": gp_amp, "gp_scale": gp_scale}
    elif continuum == "curved":  # a cubic: not a straight line, and not the fit's Legendre prior
        t = (x - 0.5 * (lo + hi)) / (0.5 * (hi - lo))
        shape = {"quadratic": float(rng.uniform(-1.0, 1.0)), "cubic": float(rng.uniform(-1.0, 1.0))}
        cont = cont + shape["quadratic"] * t * t + shape["cubic"] * t ** 3
    elif continuum == "wavy":  # two sinusoids (the 0.8 sin(w/9) + 0.5 cos(w/23) is one such)
        shape = {"periods": [float(rng.uniform(50.0, 80.0)), float(rng.uniform(100.0, 200.0))],
                 "amplitudes": [float(rng.uniform(0.4, 0.8)), float(rng.uniform(0.3, 0.6))],
                 "phases": [float(v) for v in rng.uniform(0.0, 2.0 * math.pi, 2)]}
        for period, amp, phase in zip(shape["periods"], shape["amplitudes"], shape["phases"]):
            cont = cont + amp * np.sin(2.0 * math.pi * x / period + phase)
    truth_lines = []
    span = hi - lo
    for _ in range(1000):
        centres = np.sort(rng.uniform(lo + 0.15 * span, hi - 0.15 * span, lines))
        widths = rng.uniform(1.5, 4.0, lines)
        if lines < 2 or np.all(np.diff(centres) > 4.0 * np.maximum(widths[1:], widths[:-1])):
            break
    snrs = rng.uniform(10.0, 30.0, lines) if snr is None else np.full(lines, float(snr))
    model_flux = cont.copy()
    for centre, width, s in zip(centres[:lines], widths[:lines], snrs):
        fwhm = GAUSS_FWHM * width
        line_flux = s * noise * dx * math.sqrt(fwhm / dx)
        amplitude = line_flux / (width * math.sqrt(2.0 * math.pi))
        model_flux += amplitude * np.exp(-0.5 * ((x - centre) / width) ** 2)
        c_at = float(np.interp(centre, x, cont))
        truth_lines.append({"center": float(centre), "sigma": float(width), "fwhm": float(fwhm),
                            "amplitude": float(amplitude), "flux": float(line_flux),
                            "eqw": float(line_flux / c_at), "snr": float(s)})
    flux = model_flux + noise * rng.normal(size=num_pixels)
    error = np.full(num_pixels, noise)
    record = {
        "pipeline": NAME, "seed": int(seed), "num_pixels": int(num_pixels),
        "truth": {"num_lines": int(lines), "lines": truth_lines, "noise": noise, "continuum": continuum,
                  "continuum_level": level, "continuum_slope": slope, **shape},
        "units": {"wavelength": "Angstrom", "flux": "1e-17 erg / (Angstrom s cm2)"},
        "model": "Gaussian emission lines on a continuum (level + slope [+ a Matern-3/2 GP draw, a cubic or two "
                 "sinusoids]) with Gaussian noise",
    }
    flux_unit = u.Unit("1e-17 erg / (Angstrom s cm2)")
    table = Table({"wavelength": x * u.AA, "flux": flux * flux_unit, "error": error * flux_unit})
    for name in table.colnames:
        table[name].format = ".8g"
    write_simulated(path, table, _WRITE_FORMATS[ext], record,
                    fits_header={"PIPELINE": NAME, "SEED": int(seed), "NLINES": int(lines)})
    return record


def tutorial_spectrum(seed: int = 0, num_pixels: int = 20_000):
    """The JAX/NumPyro tutorial's two-Gaussian spectrum: x in [-5, 5], amplitudes 2 and 1.5,
    centres -0.5 and 0.6, widths (sigma) 0.6 and 0.9, Gaussian noise 0.3. Returns (x, y, truth)."""
    truth = {"amplitude": (2.0, 1.5), "center": (-0.5, 0.6), "sigma": (0.6, 0.9), "noise": 0.3}
    rng = np.random.default_rng(seed)
    x = np.linspace(-5.0, 5.0, num_pixels)
    y = sum(a * np.exp(-0.5 * ((x - c) / s) ** 2) for a, c, s in
            zip(truth["amplitude"], truth["center"], truth["sigma"]))
    y = y + truth["noise"] * rng.normal(size=num_pixels)
    return x, y, truth
