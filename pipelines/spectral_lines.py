"""spectral-lines: K emission or absorption lines on a polynomial or GP continuum.

The spectrum is fitted in standardised units (``x_u = (x - x_mid) / x_half`` in [-1, 1],
``y_u = (flux - f0) / f_scale``) so that one set of priors, all proper (nested sampling needs
that), serves any spectral and flux unit; physical quantities are computed from the draws
afterwards in float64 and stored with their units.

Model (standardised units, K lines)::

    center_q    ~ Uniform(0, 1) per line           the tutorial's q1, q2 for any K:
    center_u    = ordered(center_q)                u_k = u_{k-1} + (1 - u_{k-1}) (1 - (1 - q_k)^(1/(K-k+1))),
                                                   center = -1 + 2 u: ordered, labels cannot switch
                                                   (computed inside the likelihood; added to the
                                                   posterior afterwards, not a model site)
    amplitude_u ~ Uniform(0, A) per line           (or (-A, 0) for absorption, (-A, A) both)
    log_width_u ~ Uniform(log w_min, log w_max)    Gaussian sigma, Lorentzian HWHM or
                                                   pseudo-Voigt FWHM
    voigt_eta   ~ Uniform(0, 1)                    pseudo-Voigt only: Lorentzian fraction
    continuum_coef ~ Normal(0, 3) each             polynomial of degree d in x_u
    GP (continuum="gp"): log_gp_amp ~ U(log 0.01, log 10), log_gp_scale ~ U(log 0.2, log 10),
        tinygp quasiseparable Matern-3/2 (or SHO) kernel: O(N) likelihood; with
        gp_hyperparameters="fixed" the GP sites and the fitted noise term are held at their MAP
        values (model keyword gp_fixed) and the likelihood's gradient avoids reverse-mode scans
    noise: the file's errors; with no errors, log_noise_u ~ U(log 1e-3, log 10); with
        jitter=True, errors^2 + jitter^2, log_jitter_u ~ U(log 1e-3, log 10)

The ordered centres are the order statistics of K uniform positions (each u_k is the
smallest of the K - k + 1 remaining uniforms above u_{k-1}), which is the tutorial's
two-uniform (q1, q2) reparameterisation generalised to any K: the prior is uniform on ordered
K-tuples.

Derived per line, on a ``line`` dimension, in the input's units: ``line_center``,
``line_fwhm``, ``line_amplitude``, ``line_flux`` (integral of the profile), ``line_eqw``
(``line_flux`` divided by the continuum at the centre: positive for emission, negative for
absorption) and, with ``rest`` given, ``line_velocity`` (km/s).
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from astroinfer.files import atomic_write
from astroinfer.pipeline import (
    InputError, OutputError, Pipeline, PipelineData, PipelineOption, parse_choice, parse_count, parse_non_negative,
    parse_positive,
)
from astroinfer.tables import check_simulate_target
from astroinfer.pipelines._spectral_io import read_spectrum

if TYPE_CHECKING:
    from astroinfer.pipeline import PreparedRun
    from astroinfer.result import Result

__all__ = ["PIPELINE", "load", "model", "simulate", "summarise", "show", "fit_figure", "truth_path",
           "line_table", "count_parameters", "tutorial_spectrum"]

NAME = "spectral-lines"
PROFILES = ("gaussian", "lorentzian", "voigt")
CONTINUA = ("poly", "gp", "none")
KERNELS = ("matern32", "sho")
GP_HYPERPARAMETER_MODES = ("sample", "fixed")
SIGNS = ("emission", "absorption", "both")
LINE_VARIABLES = ("line_center", "line_fwhm", "line_amplitude", "line_flux", "line_eqw", "line_velocity")
SPEED_OF_LIGHT_KMS = 299792.458
GAUSS_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))
# Prior bounds in standardised units (the window is [-1, 1]).
WIDTH_MAX_U = 0.25  # widest line: an eighth of the window
GP_SCALE_MIN_U, GP_SCALE_MAX_U = 0.2, 10.0
# On a GP continuum a line must be narrower than the continuum's shortest length scale (its
# FWHM, 2.35 sigma, below 0.8 of it): a broader "line" and a GP bump fit the same data, and
# --lines auto preferred an extra broad line for continuum wiggles (ln B ~ 6.6 at SNR 10-30).
GP_WIDTH_MAX_U = GP_SCALE_MIN_U / 3.0
LOG_NOISE_BOUNDS = (math.log(1e-3), math.log(10.0))
LOG_GP_AMP_BOUNDS = (math.log(1e-2), math.log(10.0))
COEF_SD = 3.0
AUTO_LIVE_POINTS = 200
# With a GP continuum the K-line posterior has a wide, low mode where the GP (at its shortest
# scales) absorbs a line; with 200 live points the K = 3 runs settled there for 7 of 20
# simulated 3-line spectra, and with 400 they found the line in 6 of those 7.
AUTO_LIVE_POINTS_GP = 400
# A spurious extra line costs only ~1-3 nats of Occam penalty (poly calibration: the true K
# beat K + 1 by -0.8 to 3.8), while real lines with SNR >= 10 win by 14 nats and more; the
# greatest log Z alone picked K + 1 for a continuum wiggle on a GP continuum (ln B 1.8).
LOG_BAYES_FACTOR_FOR_A_LINE = math.log(10.0)


# -- option parsing -------------------------------------------------------------------
def _parse_lines(text: str) -> int | str:
    text = str(text).strip().lower()
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a number of lines (0, 1, 2, ...) or 'auto', got {text!r}") from None
    if value < 0:
        raise ValueError(f"expected a number of lines >= 0 or 'auto', got {value}")
    return value


def _parse_interval(text: str) -> tuple[float, float]:
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"expected LO:HI in the spectral axis' units, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ValueError(f"expected LO:HI with finite LO < HI, got {text!r}")
    return lo, hi


def _parse_intervals(text: str) -> tuple[tuple[float, float], ...]:
    return tuple(_parse_interval(part) for part in str(text).split(",") if part.strip())


def _parse_columns(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in str(text).split(","))
    if len(names) not in (2, 3) or not all(names):
        raise ValueError(f"expected AXIS,FLUX or AXIS,FLUX,ERROR column names, got {text!r}")
    return names


OPTIONS = (
    PipelineOption("lines", "number of lines K, or 'auto': nested sampling for K = 0..max_lines, "
                   "chosen by evidence", "auto", _parse_lines),
    PipelineOption("max_lines", "largest K tried by --lines auto", 3, parse_count()),
    PipelineOption("min_log_bayes_factor", "--lines auto: choose the fewest lines whose log-evidence is within "
                   "this of the greatest (default ln 10, 'strong' on Jeffreys' scale; 0: the greatest)",
                   LOG_BAYES_FACTOR_FOR_A_LINE, parse_non_negative),
    PipelineOption("profile", "line profile: gaussian, lorentzian or voigt (pseudo-Voigt)", "gaussian",
                   parse_choice(*PROFILES)),
    PipelineOption("continuum", "continuum: poly (polynomial), gp (polynomial mean + quasiseparable GP) "
                   "or none", "poly", parse_choice(*CONTINUA)),
    PipelineOption("degree", "polynomial degree of the continuum (the GP's mean for gp)", 1, parse_count()),
    PipelineOption("kernel", "GP kernel for continuum gp: matern32 or sho", "matern32", parse_choice(*KERNELS)),
    PipelineOption("gp_hyperparameters", "continuum gp: sample the GP amplitude, scale and noise term with the "
                   "lines (sample), or hold them at their MAP values (fixed: empirical Bayes, gradients ~20x "
                   "cheaper at 10^4-10^5 pixels)", "sample", parse_choice(*GP_HYPERPARAMETER_MODES)),
    PipelineOption("jitter", "add a fitted noise term to the file's errors", False, flag=True),
    PipelineOption("sign", "line sign: emission, absorption or both", "emission", parse_choice(*SIGNS)),
    PipelineOption("window", "fit only LO:HI of the spectral axis (its units)", None, _parse_interval),
    PipelineOption("mask", "exclude LO:HI[,LO:HI...] of the spectral axis", None, _parse_intervals),
    PipelineOption("columns", "table columns AXIS,FLUX[,ERROR] instead of finding them by name", None,
                   _parse_columns),
    PipelineOption("rest", "rest wavelength or frequency (axis units) for line_velocity in km/s", None,
                   parse_positive),
)

SIMULATE_OPTIONS = (
    PipelineOption("lines", "number of lines", 2, parse_count()),
    PipelineOption("num_pixels", "number of pixels", 300, parse_count()),
    PipelineOption("snr", "signal-to-noise ratio of each line's flux (default: drawn in [10, 30])", None,
                   parse_positive),
    PipelineOption("continuum", "continuum shape: poly (level and slope) or gp (plus a Matern-3/2 GP draw)",
                   "poly", parse_choice("gp", "poly")),
)


def count_parameters(num_lines: int, profile: str, continuum: str, degree: int, has_error: bool,
                     jitter: bool) -> int:
    """Free parameters of the model (centres count once per line)."""
    per_line = 4 if profile == "voigt" else 3
    count = per_line * num_lines
    if continuum != "none":
        count += degree + 1
    if continuum == "gp":
        count += 2
    if not has_error or jitter:
        count += 1
    return count


# -- load and validate ---------------------------------------------------------------
def _check_option(path: Path, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{path}: option {name} must be one of {', '.join(allowed)}, got {value!r}")


def load(path: str | os.PathLike, *, lines: int | str = "auto", max_lines: int = 3,
         min_log_bayes_factor: float = LOG_BAYES_FACTOR_FOR_A_LINE, profile: str = "gaussian",
         continuum: str = "poly", degree: int = 1, kernel: str = "matern32", jitter: bool = False,
         gp_hyperparameters: str = "sample", sign: str = "emission", window: tuple[float, float] | str | None = None,
         mask: Any = None, columns: tuple[str, ...] | str | None = None,
         rest: float | None = None) -> PipelineData:
    """Read and validate a 1-D spectrum; :class:`~astroinfer.pipeline.InputError` on any problem.

    Non-finite values (and pixels the file marks bad) are masked and counted in the metadata;
    a decreasing spectral axis is reversed, an unsorted one sorted, repeated values refused.
    """
    path = Path(path)
    try:
        if isinstance(lines, str):
            lines = _parse_lines(lines)
        elif isinstance(lines, bool) or not isinstance(lines, (int, np.integer)) or lines < 0:
            raise ValueError(f"expected a number of lines >= 0 or 'auto', got {lines!r}")
        for name, value in (("max_lines", max_lines), ("degree", degree)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"option {name}: expected a non-negative integer, got {value!r}")
        if isinstance(min_log_bayes_factor, bool) or not (np.isfinite(min_log_bayes_factor)
                                                          and min_log_bayes_factor >= 0):
            raise ValueError(f"option min_log_bayes_factor: expected a number >= 0, got {min_log_bayes_factor!r}")
        if isinstance(window, str):
            window = _parse_interval(window)
        if isinstance(mask, str):
            mask = _parse_intervals(mask)
        if isinstance(columns, str):
            columns = _parse_columns(columns)
        if rest is not None:
            rest = parse_positive(str(rest))
    except ValueError as err:
        raise InputError(f"{path}: {err}") from None
    _check_option(path, "profile", profile, PROFILES)
    _check_option(path, "continuum", continuum, CONTINUA)
    _check_option(path, "kernel", kernel, KERNELS)
    _check_option(path, "gp_hyperparameters", gp_hyperparameters, GP_HYPERPARAMETER_MODES)
    _check_option(path, "sign", sign, SIGNS)

    raw = read_spectrum(path, tuple(columns) if columns is not None else None)
    x, flux, error = raw.x, raw.flux, raw.error
    n_total = int(flux.size)
    if n_total == 0:
        raise InputError(f"{path}: the spectrum has no pixels")
    finite_flux = np.isfinite(flux)
    if not finite_flux.any():
        raise InputError(f"{path}: all {n_total} flux values are non-finite (NaN or inf); expected numbers")
    bad_x = ~np.isfinite(x)
    bad_flux = ~finite_flux
    bad_error = np.zeros_like(bad_flux) if error is None else ~np.isfinite(error)
    good = ~(bad_x | bad_flux | bad_error | raw.bad)
    if error is not None:
        nonpositive = np.flatnonzero(good & ~(error > 0))
        if nonpositive.size:
            column = (raw.source.get("columns") or {}).get("error") or raw.source.get("error_hdu") or "error"
            first = nonpositive[0]
            raise InputError(f"{path}: error column '{column}' must be > 0; {nonpositive.size} pixel(s) are not "
                             f"(first at pixel {first + 1}: {error[first]})")
    x_unit = raw.x_unit
    xs = x[good]
    if xs.size and np.unique(xs).size != xs.size:
        raise InputError(f"{path}: the spectral axis repeats values ({xs.size - np.unique(xs).size} duplicate(s)); "
                         "expected distinct, monotonic values")
    excluded = np.zeros_like(good)
    if window is not None:
        lo, hi = window
        inside = (x >= lo) & (x <= hi)
        if not (inside & good).any():
            span = f"{np.nanmin(x):.6g} to {np.nanmax(x):.6g}" if np.isfinite(x).any() else "no finite values"
            raise InputError(f"{path}: option window {lo:g}:{hi:g} selects no usable pixel; the spectral axis "
                             f"spans {span}{' ' + x_unit if x_unit else ''}")
        excluded |= ~inside
    for lo, hi in (mask or ()):
        excluded |= (x >= lo) & (x <= hi)
    use = good & ~excluded
    order = np.argsort(x[use], kind="stable")
    x_used = x[use][order]
    flux_used = flux[use][order]
    error_used = None if error is None else error[use][order]
    x_all = x[use]
    monotonic = ("increasing" if np.all(np.diff(x_all) > 0) else
                 "decreasing" if np.all(np.diff(x_all) < 0) else "unsorted")

    kmax = max_lines if lines == "auto" else int(lines)
    needed = count_parameters(kmax, profile, continuum, degree, error is not None, jitter)
    if x_used.size <= needed:
        raise InputError(f"{path}: {x_used.size} usable pixel(s) but the model with {kmax} line(s) has {needed} "
                         f"parameters; expected more pixels than parameters (fewer lines, a lower degree or a "
                         f"wider window)")
    if x_used.size < 2 or x_used[-1] == x_used[0]:
        raise InputError(f"{path}: the usable pixels span no range of the spectral axis")

    x_mid = 0.5 * (x_used[0] + x_used[-1])
    x_half = 0.5 * (x_used[-1] - x_used[0])
    # with no continuum the model's zero is the data's zero
    flux_zero = 0.0 if continuum == "none" else float(np.median(flux_used))
    spread = float(np.std(flux_used))
    if error_used is not None:
        spread = max(spread, float(np.median(error_used)))
    flux_scale = spread if spread > 0 else 1.0
    x_u = (x_used - x_mid) / x_half
    y_u = (flux_used - flux_zero) / flux_scale
    s_u = None if error_used is None else error_used / flux_scale
    width_min = float(np.median(np.diff(x_u)))
    amp_max = float(2.0 * (np.max(y_u) - np.min(y_u)) + (3.0 * np.median(s_u) if s_u is not None else 0.0))
    if not amp_max > 0:
        amp_max = 1.0

    data = {
        "x": x_u.astype(np.float32), "flux": y_u.astype(np.float32),
        "sigma": None if s_u is None else s_u.astype(np.float32),
        "num_lines": 0 if lines == "auto" else int(lines),
        "profile": profile, "continuum": continuum, "degree": int(degree), "kernel": kernel,
        "jitter": bool(jitter), "sign": sign, "amp_max": amp_max,
        "width_min": width_min, "width_max": GP_WIDTH_MAX_U if continuum == "gp" else WIDTH_MAX_U,
    }
    counts = {
        "pixels_in_file": n_total,
        "non_finite_axis": int(bad_x.sum()),
        "non_finite_flux": int(bad_flux.sum()),
        "non_finite_error": int((bad_error & ~bad_flux).sum()),
        "flagged_bad": int((raw.bad & ~(bad_x | bad_flux | bad_error)).sum()),
        "outside_window_or_masked": int((excluded & good).sum()),
        "used": int(x_used.size),
    }
    metadata = {
        "path": str(path), "source": raw.source, "axis": raw.axis_kind,
        "x_unit": x_unit, "flux_unit": raw.flux_unit, "has_error": error is not None,
        "axis_order": monotonic, "pixel_counts": counts,
        "lines": lines, "max_lines": int(max_lines), "min_log_bayes_factor": float(min_log_bayes_factor),
        "gp_hyperparameters": gp_hyperparameters,
        "window": list(window) if window is not None else None,
        "mask": [list(m) for m in mask] if mask else None,
        "rest": rest,
        "standardisation": {"x_mid": float(x_mid), "x_half": float(x_half),
                            "flux_zero": flux_zero, "flux_scale": float(flux_scale)},
        "x_values": x_used, "flux_values": flux_used, "error_values": error_used,
    }
    return PipelineData(data=data, metadata=_metadata_for_provenance(metadata))


class _Metadata(dict):
    """Metadata whose float64 arrays (for the result file) are kept out of the JSON provenance."""

    def __init__(self, public: dict, arrays: dict):
        super().__init__(public)
        self.arrays = arrays

    def copy(self):  # dict(metadata) in PreparedRun.finish keeps only the public part
        return dict(self)


def _metadata_for_provenance(metadata: dict) -> _Metadata:
    arrays = {k: metadata.pop(k) for k in ("x_values", "flux_values", "error_values")}
    return _Metadata(metadata, arrays)


def _messages(metadata: dict) -> list[str]:
    counts = metadata.get("pixel_counts", {})
    out = []
    masked = {k: counts.get(k, 0) for k in ("non_finite_axis", "non_finite_flux", "non_finite_error")}
    if any(masked.values()):
        parts = [f"{v} {k.replace('non_finite_', '')}" for k, v in masked.items() if v]
        out.append(f"{metadata.get('path')}: masked pixels with non-finite values ({', '.join(parts)})")
    if metadata.get("axis_order") == "unsorted":
        out.append(f"{metadata.get('path')}: the spectral axis was not monotonic; pixels were sorted")
    return out


# -- model ---------------------------------------------------------------------------
def _profile(x, center, width, eta, profile: str):
    """One peak-normalised profile at pixels ``x`` (scalar centre, width and eta)."""
    import jax.numpy as jnp

    d = (x - center) / width
    if profile == "gaussian":
        return jnp.exp(-0.5 * d * d)
    if profile == "lorentzian":
        return 1.0 / (1.0 + d * d)
    # pseudo-Voigt (Thompson, Cox & Hastings 1987 form): width is the FWHM of both parts
    gauss = jnp.exp(-4.0 * math.log(2.0) * d * d)
    lorentz = 1.0 / (1.0 + 4.0 * d * d)
    return eta * lorentz + (1.0 - eta) * gauss


def _profiles(x, center, width, eta, profile: str):
    """Peak-normalised profiles of every line, shape (N, K) (plots)."""
    import jax.numpy as jnp

    num = center.shape[0]
    return jnp.stack([_profile(x, center[k], width[k], None if eta is None else eta[k], profile)
                      for k in range(num)], axis=-1) if num else jnp.zeros(x.shape + (0,))


def _lines_flux(x, center, width, eta, amplitude, profile: str):
    """Sum of the K lines at pixels ``x``, shape (N,).

    A Python sum over the lines (K is small and fixed per model): XLA fuses it with the
    likelihood into one pass over the pixels. The (N, K) profile matrix times the amplitude
    vector, or a sum over its short last axis, cost 6-10x more per gradient on CPU (20 000
    pixels, K = 2, gradient inside a jitted loop: ~520-670 us vs ~55-90 us).
    """
    total = 0.0
    for k in range(center.shape[0]):
        total = total + amplitude[k] * _profile(x, center[k], width[k], None if eta is None else eta[k], profile)
    return total


def _poly(x, coef):
    import jax.numpy as jnp

    return jnp.polyval(coef[::-1], x) if coef.shape[0] else jnp.zeros_like(x)


def _gaussian_process(kernel: str, log_amp, log_scale, x, variance, **options):
    """The tinygp GP of the continuum: ``kernel`` with amplitude and scale given as logs,
    white noise ``variance`` (a scalar or per pixel) on the diagonal."""
    import jax.numpy as jnp
    from tinygp import GaussianProcess

    return GaussianProcess(_gp_kernel(kernel, jnp.exp(log_amp), jnp.exp(log_scale)), x,
                           diag=jnp.broadcast_to(variance, jnp.shape(x)), **options)


def _gp_kernel(kernel: str, amp, scale):
    from tinygp import kernels

    if kernel == "sho":
        # critically damped-ish oscillator (Q = 1/sqrt 2): a smooth, non-periodic continuum
        return kernels.quasisep.SHO(omega=1.0 / scale, quality=1.0 / math.sqrt(2.0), sigma=amp)
    return kernels.quasisep.Matern32(scale=scale, sigma=amp)


def ordered_positions(q):
    """Ordered positions in [0, 1] from K independent uniforms ``q`` (uniform on ordered tuples).

    ``u_k = u_{k-1} + (1 - u_{k-1}) (1 - (1 - q_k)^(1 / (K - k + 1)))``: the minimum of the
    K - k + 1 remaining uniform positions above ``u_{k-1}``. For K = 2 this is the tutorial's
    ``x0 = 1 - sqrt(1 - q1)``, ``x1 = x0 + (1 - x0) q2``. Compared with Dirichlet spacings
    (same prior), the NUTS sampler compiles faster (fewer transform operations: 17-22 s vs
    26-30 s at load ~7 for the tutorial fit).
    """
    import jax.numpy as jnp

    num = q.shape[0]
    positions, u = [], 0.0
    for k in range(num):  # K is small and fixed per model
        u = u + (1.0 - u) * (1.0 - (1.0 - q[k]) ** (1.0 / (num - k)))
        positions.append(u)
    return jnp.stack(positions)


def ordered_positions_inverse(u: np.ndarray) -> np.ndarray:
    """``q`` with ``ordered_positions(q) == u`` for increasing ``u`` in (0, 1)."""
    num = u.shape[0]
    previous = np.concatenate([[0.0], u[:-1]])
    return 1.0 - ((1.0 - u) / (1.0 - previous)) ** (num - np.arange(num))


@functools.lru_cache(maxsize=None)
def _mean_function(profile: str):
    """Jitted lines + polynomial at the pixels: ``(x, center, width, eta, amplitude, coef)``.

    Inside NumPyro's traced samplers the call is inlined; where NumPyro evaluates the model
    and its gradient eagerly (NUTS's initialisation, the trace of the observed data), one
    compiled call replaces dozens of operations each compiled on its own.
    """
    import jax
    import jax.numpy as jnp

    def mean(x, center, width, eta, amplitude, coef):
        total = jnp.zeros_like(x)
        if center is not None:
            total = total + _lines_flux(x, center, width, eta, amplitude, profile)
        if coef is not None:
            total = total + _poly(x, coef)
        return total

    return jax.jit(mean)


def _pixel_log_likelihood_impl(flux, x, q, amplitude, log_width, eta, coef, variance, profile: str):
    import jax.numpy as jnp

    center = width = None
    if q is not None:
        center = -1.0 + 2.0 * ordered_positions(q)
        width = jnp.exp(log_width)
    mean = jnp.zeros_like(x)
    if center is not None:
        mean = mean + _lines_flux(x, center, width, eta, amplitude, profile)
    if coef is not None:
        mean = mean + _poly(x, coef)
    residual = flux - mean
    num = x.shape[0]
    if jnp.ndim(variance) == 0:  # one fitted noise level: no per-pixel log
        return -0.5 * (jnp.sum(residual * residual) / variance + num * jnp.log(2.0 * math.pi * variance))
    return -0.5 * jnp.sum(residual * residual / variance + jnp.log(2.0 * math.pi * variance))


@functools.lru_cache(maxsize=None)
def _pixel_log_likelihood(profile: str):
    """Jitted log density of the pixels: Gaussian noise about K lines + polynomial.

    One compiled call (and one for its gradient) where NumPyro evaluates the model eagerly
    (NUTS's initialisation, the trace of the observed data) instead of a few dozen
    operations each compiled on its own; inside NumPyro's traced samplers it is inlined.
    """
    import jax

    return jax.jit(functools.partial(_pixel_log_likelihood_impl, profile=profile))


@functools.cache
def _pixel_distribution():
    """The class of the observed flux's distribution for polynomial / no continuum (lazy:
    NumPyro is imported only when a model is built)."""
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    class PixelLikelihood(dist.Distribution):
        """Independent Gaussian pixels about K lines (centres from ``center_q``) + a polynomial."""

        support = constraints.real_vector
        pytree_aux_fields = ("profile",)
        pytree_data_fields = ("x", "q", "amplitude", "log_width", "eta", "coef", "noise_variance")

        def __init__(self, x, q, amplitude, log_width, eta, coef, variance, profile):
            self.x, self.q, self.amplitude, self.log_width, self.eta = x, q, amplitude, log_width, eta
            self.coef, self.noise_variance, self.profile = coef, variance, profile
            super().__init__(batch_shape=(), event_shape=jnp.shape(x))

        @property
        def mean(self):
            center = None if self.q is None else -1.0 + 2.0 * ordered_positions(self.q)
            width = None if self.log_width is None else jnp.exp(self.log_width)
            return _mean_function(self.profile)(self.x, center, width, self.eta, self.amplitude, self.coef)

        def sample(self, key, sample_shape=()):
            noise = jax.random.normal(key, tuple(sample_shape) + self.event_shape)
            return self.mean + jnp.sqrt(self.noise_variance) * noise

        def log_prob(self, value):
            return _pixel_log_likelihood(self.profile)(value, self.x, self.q, self.amplitude, self.log_width,
                                                       self.eta, self.coef, self.noise_variance)

    return PixelLikelihood


@functools.lru_cache(maxsize=None)
def fixed_gp_log_likelihood(kernel: str):
    """``(residual, x, variance, log_amp, log_scale) -> log N(residual | 0, K)`` with a cheap gradient.

    For GP hyperparameters held fixed (``gp_hyperparameters="fixed"``) the log density of the
    residual ``r = flux - mean`` is ``-0.5 r^T K^-1 r - log|L| - N/2 log 2 pi`` and its gradient
    in ``r`` is ``-K^-1 r``. The custom VJP computes ``alpha = K^-1 r`` with tinygp's
    quasiseparable Cholesky factor (the forward pass's ``L^-1 r``, then one solve with
    ``L^T``): value-only scans. Reverse-mode differentiation through tinygp's scans, which
    the sampled-hyperparameter model needs, costs ~1 us per pixel on XLA:CPU (about 20x the
    value at 100 000 pixels). ``x``, ``variance`` and the hyperparameters get zero cotangents:
    they are constants here, never sampled.
    """
    import jax
    import jax.numpy as jnp

    def solver(x, variance, log_amp, log_scale):  # load() sorts the spectral axis
        return _gaussian_process(kernel, log_amp, log_scale, x, variance, assume_sorted=True).solver

    def forward(residual, x, variance, log_amp, log_scale):
        gp_solver = solver(x, variance, log_amp, log_scale)
        whitened = gp_solver.solve_triangular(residual)  # L^-1 r
        value = -0.5 * jnp.sum(whitened * whitened) - gp_solver.normalization()
        return value, (gp_solver.factor, whitened, x, variance, log_amp, log_scale)

    @jax.custom_vjp
    def log_likelihood(residual, x, variance, log_amp, log_scale):
        return forward(residual, x, variance, log_amp, log_scale)[0]

    def backward(saved, cotangent):
        factor, whitened, x, variance, log_amp, log_scale = saved
        alpha = factor.transpose().solve(whitened)  # L^-T L^-1 r = K^-1 r
        return (-cotangent * alpha, jnp.zeros_like(x), jnp.zeros_like(variance), jnp.zeros_like(log_amp),
                jnp.zeros_like(log_scale))

    log_likelihood.defvjp(forward, backward)
    return log_likelihood


@functools.cache
def _gp_residual_distribution():
    """The class of the observed flux's distribution for a GP continuum whose log density is
    not NumPyro's default (tinygp's ``numpyro_dist`` with reverse-mode gradients)."""
    import jax.numpy as jnp
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    class GPResidualLikelihood(dist.Distribution):
        """Lines + polynomial (``mean``) plus a quasiseparable GP, evaluated as ``evaluation`` says:

        - ``"fixed"``: hyperparameters are constants; :func:`fixed_gp_log_likelihood`;
        - ``"value"``: the density is only evaluated, never differentiated (nested sampling);
          the Matern-3/2 kernel uses :func:`astroinfer.kalman.matern32_log_likelihood`.
        """

        support = constraints.real_vector
        pytree_aux_fields = ("kernel", "evaluation")
        pytree_data_fields = ("loc", "x", "noise_variance", "log_amp", "log_scale")

        def __init__(self, loc, x, variance, log_amp, log_scale, kernel, evaluation):
            self.loc, self.x, self.noise_variance = loc, x, variance
            self.log_amp, self.log_scale, self.kernel, self.evaluation = log_amp, log_scale, kernel, evaluation
            super().__init__(batch_shape=(), event_shape=jnp.shape(x))

        @property
        def mean(self):
            return self.loc

        def sample(self, key, sample_shape=()):
            gp = _gaussian_process(self.kernel, self.log_amp, self.log_scale, self.x, self.noise_variance,
                                   mean_value=self.loc)
            return gp.sample(key, shape=tuple(sample_shape))

        def log_prob(self, value):
            residual = value - self.loc
            if self.evaluation == "fixed":
                return fixed_gp_log_likelihood(self.kernel)(residual, self.x, self.noise_variance,
                                                            self.log_amp, self.log_scale)
            if self.kernel == "matern32":
                from astroinfer.kalman import matern32_log_likelihood

                return matern32_log_likelihood(self.x, residual, self.noise_variance, jnp.exp(self.log_amp),
                                               jnp.exp(self.log_scale))
            gp = _gaussian_process(self.kernel, self.log_amp, self.log_scale, self.x, self.noise_variance,
                                   assume_sorted=True)
            return gp.log_probability(residual)

    return GPResidualLikelihood


def fixed_gp_sites(data: dict) -> tuple[str, ...]:
    """The sites a GP continuum's ``gp_fixed`` values stand for, in order: GP amplitude, GP
    scale and, where the model fits one, the noise term (log_noise_u or log_jitter_u)."""
    sites = ("log_gp_amp", "log_gp_scale")
    if data.get("sigma") is None:
        return sites + ("log_noise_u",)
    return sites + (("log_jitter_u",) if data.get("jitter") else ())


def amplitude_bounds(sign: str, amp_max):
    """(low, high) of a line's amplitude prior for ``sign``: emission (0, A), absorption
    (-A, 0), both (-A, A)."""
    return {"emission": (0.0, amp_max), "absorption": (-amp_max, 0.0), "both": (-amp_max, amp_max)}[sign]


def model(x, flux, sigma=None, *, num_lines: int = 1, profile: str = "gaussian", continuum: str = "poly",
          degree: int = 1, kernel: str = "matern32", jitter: bool = False, sign: str = "emission",
          amp_max: float = 10.0, width_min: float = 1e-3, width_max: float = WIDTH_MAX_U, gp_fixed=None,
          value_only: bool = False):
    """K lines on a continuum, in standardised units (see the module docstring).

    The ordered centres ``center_u`` are not a site of the model: they follow from
    ``center_q`` and are added to the posterior afterwards (:func:`line_centres_np`), which
    keeps them out of the compiled sampler (its compile time is user-visible).

    ``gp_fixed`` (continuum "gp" only): the values of :func:`fixed_gp_sites`, held fixed
    instead of sampled (empirical Bayes); the likelihood then uses
    :func:`fixed_gp_log_likelihood`, whose gradient avoids reverse-mode scans.

    ``value_only`` (continuum "gp"): the density will only be evaluated, never differentiated
    (nested sampling), so a Matern-3/2 continuum uses the Kalman filter of
    :mod:`astroinfer.kalman`: the same density, 4.6x cheaper for 20 particles at 150 pixels.
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def log(v):  # a number stays a number (no eager op); prior bounds are traced in nested runs
        return math.log(v) if isinstance(v, (int, float)) else jnp.log(v)

    x = jnp.asarray(x)
    flux = jnp.asarray(flux)
    q = log_width = amplitude = eta = coef = None
    if num_lines > 0:
        q = numpyro.sample("center_q", dist.Uniform(0.0, 1.0).expand([num_lines]).to_event(1))
        low, high = amplitude_bounds(sign, amp_max)
        amplitude = numpyro.sample("amplitude_u", dist.Uniform(low, high).expand([num_lines]).to_event(1))
        log_width = numpyro.sample(
            "log_width_u", dist.Uniform(log(width_min), log(width_max)).expand([num_lines]).to_event(1))
        if profile == "voigt":
            eta = numpyro.sample("voigt_eta", dist.Uniform(0.0, 1.0).expand([num_lines]).to_event(1))
    if continuum != "none":
        coef = numpyro.sample("continuum_coef", dist.Normal(0.0, COEF_SD).expand([degree + 1]).to_event(1))
    fixed = None
    if continuum == "gp" and gp_fixed is not None:
        fixed = jnp.asarray(gp_fixed)
    if sigma is None:
        log_noise = fixed[2] if fixed is not None else numpyro.sample("log_noise_u", dist.Uniform(*LOG_NOISE_BOUNDS))
        variance = jnp.exp(2.0 * log_noise)  # a scalar: no per-pixel sqrt and log
    else:
        variance = jnp.asarray(sigma) ** 2
        if jitter:
            log_jitter = (fixed[2] if fixed is not None
                          else numpyro.sample("log_jitter_u", dist.Uniform(*LOG_NOISE_BOUNDS)))
            variance = variance + jnp.exp(2.0 * log_jitter)
    if continuum == "gp":
        center = None if q is None else -1.0 + 2.0 * ordered_positions(q)
        width = None if log_width is None else jnp.exp(log_width)
        mean = _mean_function(profile)(x, center, width, eta, amplitude, coef)
        if fixed is not None:
            numpyro.sample("flux", _gp_residual_distribution()(mean, x, variance, fixed[0], fixed[1], kernel, "fixed"),
                           obs=flux)
        else:
            log_amp = numpyro.sample("log_gp_amp", dist.Uniform(*LOG_GP_AMP_BOUNDS))
            log_scale = numpyro.sample("log_gp_scale",
                                       dist.Uniform(math.log(GP_SCALE_MIN_U), math.log(GP_SCALE_MAX_U)))
            if value_only:
                numpyro.sample("flux", _gp_residual_distribution()(mean, x, variance, log_amp, log_scale, kernel,
                                                                   "value"), obs=flux)
            else:
                gp = _gaussian_process(kernel, log_amp, log_scale, x, variance, mean_value=mean)
                numpyro.sample("flux", gp.numpyro_dist(), obs=flux)
    else:
        numpyro.sample("flux", _pixel_distribution()(x, q, amplitude, log_width, eta, coef, variance, profile),
                       obs=flux)


def line_centres_np(q: np.ndarray) -> np.ndarray:
    """``center_u`` (``-1 + 2 ordered_positions(q)``) for draws ``q`` of shape (..., K), in numpy."""
    q = np.asarray(q, dtype=np.float64)
    out = np.empty_like(q)
    u = np.zeros(q.shape[:-1])
    num = q.shape[-1]
    for j in range(num):
        u = u + (1.0 - u) * (1.0 - (1.0 - q[..., j]) ** (1.0 / (num - j)))
        out[..., j] = u
    return -1.0 + 2.0 * out


def add_line_centres(posterior: dict) -> dict:
    """``posterior`` (name -> draws) with ``center_u`` computed from ``center_q``."""
    if "center_q" in posterior and "center_u" not in posterior:
        q = np.asarray(posterior["center_q"])
        posterior = {**posterior, "center_u": line_centres_np(q).astype(q.dtype)}
    return posterior


# -- derived quantities --------------------------------------------------------------
def _draws(posterior, name: str) -> np.ndarray | None:
    return np.asarray(posterior[name], dtype=np.float64) if name in posterior else None


def _profile_integral(width: np.ndarray, eta: np.ndarray | None, profile: str) -> np.ndarray:
    """Integral of the peak-normalised profile, in standardised x units."""
    if profile == "gaussian":
        return width * math.sqrt(2.0 * math.pi)
    if profile == "lorentzian":
        return math.pi * width
    gauss = width / GAUSS_FWHM * math.sqrt(2.0 * math.pi)
    lorentz = math.pi * width / 2.0
    return eta * lorentz + (1.0 - eta) * gauss


def _fwhm_u(width: np.ndarray, profile: str) -> np.ndarray:
    return {"gaussian": GAUSS_FWHM * width, "lorentzian": 2.0 * width, "voigt": width}[profile]


def _gp_continuum_at(settings: dict, x_u: np.ndarray, y_u: np.ndarray, s_u: np.ndarray | None,
                     params: dict[str, np.ndarray], at: np.ndarray, chunk: int = 64) -> np.ndarray:
    """GP continuum (polynomial mean + GP conditional mean given the line-subtracted data) at ``at``.

    ``params`` hold one row per draw; ``at`` has shape (draws, M). Returns (draws, M).
    """
    import jax
    import jax.numpy as jnp

    profile, kernel = settings["profile"], settings["kernel"]
    x = jnp.asarray(x_u, dtype=jnp.float32)
    y = jnp.asarray(y_u, dtype=jnp.float32)

    def one(p, points):
        lines = jnp.zeros_like(x)
        if "center_u" in p:
            lines = _lines_flux(x, p["center_u"], jnp.exp(p["log_width_u"]), p.get("voigt_eta"), p["amplitude_u"],
                                profile)
        mean = _poly(x, p["continuum_coef"])
        if s_u is None:
            var = jnp.exp(2.0 * p["log_noise_u"]) * jnp.ones_like(x)
        else:
            var = jnp.asarray(s_u, dtype=jnp.float32) ** 2
            if "log_jitter_u" in p:
                var = var + jnp.exp(2.0 * p["log_jitter_u"])
        gp = _gaussian_process(kernel, p["log_gp_amp"], p["log_gp_scale"], x, var)
        order = jnp.argsort(points)
        sorted_points = points[order]
        cond = gp.condition(y - mean - lines, X_test=sorted_points).gp.loc
        values = jnp.zeros_like(points).at[order].set(cond)
        return values + _poly(points, p["continuum_coef"])

    batched = jax.jit(jax.vmap(one))
    num = at.shape[0]
    out = np.empty(at.shape, dtype=np.float64)
    for start in range(0, num, chunk):
        stop = min(num, start + chunk)
        sub = {k: jnp.asarray(v[start:stop], dtype=jnp.float32) for k, v in params.items()}
        pts = jnp.asarray(at[start:stop], dtype=jnp.float32)
        if stop - start < chunk:  # pad so one compiled shape serves every chunk
            pad = chunk - (stop - start)
            sub = {k: jnp.concatenate([v, jnp.repeat(v[-1:], pad, axis=0)]) for k, v in sub.items()}
            pts = jnp.concatenate([pts, jnp.repeat(pts[-1:], pad, axis=0)])
        out[start:stop] = np.asarray(batched(sub, pts))[: stop - start]
    return out


_PARAM_SITES = ("center_u", "log_width_u", "amplitude_u", "voigt_eta", "continuum_coef", "log_noise_u",
                "log_jitter_u", "log_gp_amp", "log_gp_scale")


def _flat_params(posterior, fixed: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """One row per draw of each parameter; ``fixed`` values (held-fixed GP hyperparameters)
    are repeated for every draw."""
    out = {}
    for name in _PARAM_SITES:
        if name in posterior:
            values = np.asarray(posterior[name], dtype=np.float64)
            out[name] = values.reshape((-1,) + values.shape[2:])
    total = next(iter(out.values())).shape[0] if out else 0
    for name, value in (fixed or {}).items():
        out[name] = np.full(total, float(value))
    return out


def _fixed_values(settings: dict) -> dict[str, float]:
    """The held-fixed GP hyperparameters by site name (empty when they were sampled)."""
    if settings.get("gp_fixed") is None:
        return {}
    return {name: float(v) for name, v in zip(fixed_gp_sites(settings), np.asarray(settings["gp_fixed"]))}


def derived_quantities(posterior, settings: dict, meta: dict, arrays: dict) -> dict[str, np.ndarray]:
    """Physical per-line quantities, each (chain, draw, K), from standardised draws."""
    num_lines = settings["num_lines"]
    if num_lines == 0:
        return {}
    std = meta["standardisation"]
    x_mid, x_half, f0, fs = std["x_mid"], std["x_half"], std["flux_zero"], std["flux_scale"]
    center_u = _draws(posterior, "center_u")
    width_u = np.exp(_draws(posterior, "log_width_u"))
    amp_u = _draws(posterior, "amplitude_u")
    eta = _draws(posterior, "voigt_eta")
    profile = settings["profile"]
    out = {
        "line_center": x_mid + x_half * center_u,
        "line_fwhm": x_half * _fwhm_u(width_u, profile),
        "line_amplitude": fs * amp_u,
    }
    out["line_flux"] = out["line_amplitude"] * x_half * _profile_integral(width_u, eta, profile)
    continuum = settings["continuum"]
    if continuum == "poly":
        coef = _draws(posterior, "continuum_coef")
        level_u = np.zeros_like(center_u)
        for power in range(coef.shape[-1]):
            level_u += coef[..., power:power + 1] * center_u ** power
        out["line_eqw"] = out["line_flux"] / (f0 + fs * level_u)
    elif continuum == "gp":
        x_u = (arrays["x_values"] - x_mid) / x_half
        y_u = (arrays["flux_values"] - f0) / fs
        s_u = None if arrays["error_values"] is None else arrays["error_values"] / fs
        flat = _flat_params(posterior, _fixed_values(settings))
        lead = center_u.shape[:2]
        level_u = _gp_continuum_at(settings, x_u, y_u, s_u, flat, center_u.reshape((-1, num_lines)))
        out["line_eqw"] = out["line_flux"] / (f0 + fs * level_u.reshape(lead + (num_lines,)))
    rest = meta.get("rest")
    if rest is not None and meta.get("axis") in ("wavelength", "frequency"):
        if meta["axis"] == "wavelength":  # optical convention
            out["line_velocity"] = SPEED_OF_LIGHT_KMS * (out["line_center"] - rest) / rest
        else:  # radio convention
            out["line_velocity"] = SPEED_OF_LIGHT_KMS * (rest - out["line_center"]) / rest
    return out


def _units(meta: dict) -> dict[str, str]:
    x_unit = meta.get("x_unit") or "axis units"
    flux_unit = meta.get("flux_unit") or "flux units"
    if meta.get("x_unit") and meta.get("flux_unit"):
        flux_integral = f"({flux_unit}) {x_unit}"
    else:
        flux_integral = f"{flux_unit} x {x_unit}"
    return {"line_center": x_unit, "line_fwhm": x_unit, "line_amplitude": flux_unit,
            "line_flux": flux_integral, "line_eqw": x_unit, "line_velocity": "km / s"}


# -- inference -----------------------------------------------------------------------
def _running_median(x: np.ndarray, y: np.ndarray, span: float, max_points: int = 4000) -> np.ndarray:
    """The median of ``y`` over ``span`` of ``x`` around each point (``x`` sorted, near-uniform).

    Long spectra are first averaged in groups of consecutive pixels (to at most
    ``max_points``), far narrower than a line, so the filter's cost does not grow with N.
    """
    from scipy.ndimage import median_filter

    group = max(1, -(-x.size // max_points))
    usable = (x.size // group) * group
    xs = x[:usable].reshape(-1, group).mean(axis=1)
    ys = y[:usable].reshape(-1, group).mean(axis=1)
    step = float(np.median(np.diff(xs))) if xs.size > 1 else 1.0
    size = max(1, int(round(span / max(step, 1e-12))) | 1)
    return np.interp(x, xs, median_filter(ys, size=min(size, 2 * (xs.size // 2) + 1), mode="nearest"))


def _gaussian_smooth(y: np.ndarray, sigma_px: float) -> np.ndarray:
    """``y`` convolved with a Gaussian of ``sigma_px`` pixels, edges extended (FFT: cheap for
    the thousands-of-pixels kernels of long spectra)."""
    from scipy.signal import fftconvolve

    half = int(3 * sigma_px) + 1
    taps = np.exp(-0.5 * (np.arange(-half, half + 1) / max(sigma_px, 1e-12)) ** 2)
    return fftconvolve(np.pad(y, half, mode="edge"), taps / taps.sum(), mode="valid")


def _place_lines(data: dict, count: int) -> tuple[list[float], list[float], list[float], np.ndarray]:
    """(centres, amplitudes, widths, residual): ``count`` lines placed greedily, each at the
    largest remaining peak of the smoothed, continuum-subtracted flux (signed by ``sign``),
    with the peak's height and half-width, then subtracted."""
    x = np.asarray(data["x"], dtype=np.float64)
    y = np.asarray(data["flux"], dtype=np.float64)
    sign, profile = data["sign"], data["profile"]
    wmin, wmax = data["width_min"], data["width_max"]
    residual = y - np.median(y)
    gp = data["continuum"] == "gp"
    if gp:
        # a GP continuum's wiggles can be higher than the lines: peaks are looked for above
        # a running median over twice the GP's shortest length scale (2.5 widest-line FWHMs)
        residual = y - _running_median(x, y, 2.0 * GP_SCALE_MIN_U)
    dx = float(np.median(np.diff(x)))
    smooth_px = max(1, int(round(0.01 / max(dx, 1e-12))))
    kernel = np.exp(-0.5 * (np.arange(-3 * smooth_px, 3 * smooth_px + 1) / smooth_px) ** 2)
    kernel /= kernel.sum()
    centres: list[float] = []
    amps: list[float] = []
    widths: list[float] = []
    for _ in range(count):
        smoothed = _gaussian_smooth(residual, smooth_px) if gp else np.convolve(residual, kernel, mode="same")
        # on a GP continuum a line is located on a band-pass (smoothed at 0.01 minus at 0.05),
        # which keeps line-wide bumps and drops what is left of the continuum: on simulated
        # 2-line spectra (with the exclusions below) the start misplaced a line in 4 of 30, not 22 of 30
        located = smoothed - _gaussian_smooth(residual, 0.05 / max(dx, 1e-12)) if gp else smoothed
        score = {"emission": located, "absorption": -located, "both": np.abs(located)}[sign]
        if gp:
            # the band-pass is unreliable within 2 of its widths of the ends, and a line
            # already placed can leave a band-passed remnant: look elsewhere
            allowed = np.abs(x) < 0.9
            for c, w in zip(centres, widths):
                allowed &= np.abs(x - c) > 2.0 * w
            if np.any(allowed):
                score = np.where(allowed, score, -np.inf)
        i = int(np.argmax(score))
        peak = smoothed[i]
        half = np.abs(smoothed) < 0.5 * abs(peak)
        left = np.flatnonzero(half[:i])
        right = np.flatnonzero(half[i:])
        lo = x[left[-1]] if left.size else x[0]
        hi = x[i + right[0]] if right.size else x[-1]
        fwhm = max(hi - lo, 2 * dx)
        width = float(np.clip({"gaussian": fwhm / GAUSS_FWHM, "lorentzian": fwhm / 2, "voigt": fwhm}[profile],
                              wmin * 1.01, wmax * 0.99))
        amp = float(peak)
        if sign == "emission":
            amp = float(np.clip(amp, 1e-3 * data["amp_max"], 0.99 * data["amp_max"]))
        elif sign == "absorption":
            amp = float(np.clip(amp, -0.99 * data["amp_max"], -1e-3 * data["amp_max"]))
        centre = float(np.clip(x[i], -0.999, 0.999))
        d = (x - centre) / width
        shape = np.exp(-0.5 * d * d) if profile == "gaussian" else 1.0 / (1.0 + d * d)
        residual = residual - amp * shape
        centres.append(centre); amps.append(amp); widths.append(width)
    return centres, amps, widths, residual


def _line_values(centres, amps, widths, profile: str) -> dict[str, np.ndarray]:
    """The line sites (``center_q``, ``amplitude_u``, ``log_width_u``[, ``voigt_eta``]) of lines
    given in any order."""
    k = len(centres)
    order = np.argsort(centres)
    u = np.clip((np.asarray(centres, dtype=np.float64)[order] + 1.0) / 2.0, 1e-4, 1.0 - 1e-4)
    u = np.maximum.accumulate(u + 1e-5 * np.arange(k))  # strictly increasing
    values = {"center_q": np.clip(ordered_positions_inverse(np.minimum(u, 1.0 - 1e-5)), 1e-5, 1.0 - 1e-5),
              "amplitude_u": np.asarray(amps, dtype=np.float64)[order],
              "log_width_u": np.log(np.asarray(widths, dtype=np.float64)[order])}
    if profile == "voigt":
        values["voigt_eta"] = np.full(k, 0.5)
    return values


def initial_values(data: dict) -> dict[str, np.ndarray]:
    """A data-driven starting point: lines placed greedily on the largest smoothed residuals.

    Priors' medians are a poor start for line fits (narrow lines at arbitrary places, where
    the likelihood is flat in the centre), so chains could settle in a mode that explains two
    blended lines with one. Each line is placed at the largest remaining peak of the
    smoothed, continuum-subtracted flux (:func:`_place_lines`).
    """
    k = data["num_lines"]
    centres, amps, widths, residual = _place_lines(data, k)
    values: dict[str, np.ndarray] = _line_values(centres, amps, widths, data["profile"]) if k else {}
    if data["continuum"] != "none":
        coef = np.zeros(data["degree"] + 1)
        coef[0] = np.median(np.asarray(data["flux"], dtype=np.float64))
        values["continuum_coef"] = coef
    noise = float(np.clip(np.std(residual), math.exp(LOG_NOISE_BOUNDS[0]) * 1.01, math.exp(LOG_NOISE_BOUNDS[1]) * 0.99))
    if data["sigma"] is None:
        values["log_noise_u"] = np.asarray(math.log(noise))
    elif data["jitter"]:
        values["log_jitter_u"] = np.asarray(math.log(max(noise / 10, math.exp(LOG_NOISE_BOUNDS[0]) * 1.01)))
    if data["continuum"] == "gp":
        values["log_gp_amp"] = np.asarray(math.log(0.1))
        values["log_gp_scale"] = np.asarray(math.log(1.0))
    return {name: np.asarray(v, dtype=np.float32) for name, v in values.items()}


# Model keywords that select the model's structure (static for JAX); every other keyword
# (pixels, flux, errors, prior bounds) is an array argument of the compiled functions, so
# spectra of the same pixel count and settings reuse one compilation.
STRUCTURE_KEYS = ("num_lines", "profile", "continuum", "degree", "kernel", "jitter", "sign")


def split_data(data: dict) -> tuple[tuple, dict]:
    """(hashable model structure, array arguments) of the model's keywords ``data``."""
    structure = tuple((k, data[k]) for k in STRUCTURE_KEYS if k in data)
    arrays = {k: v for k, v in data.items() if k not in STRUCTURE_KEYS}
    return structure, arrays


@functools.lru_cache(maxsize=64)
def _map_function(structure: tuple, steps: int):
    """Jitted ``(arrays, start) -> (constrained MAP point, potential energy there)`` for one
    model structure: at most ``steps`` L-BFGS iterations (zoom line search) in NumPyro's
    unconstrained space, stopping once three iterations in a row lowered the potential
    energy by less than 1e-3 (float32 resolves about 0.01 at the 10^5 of a long spectrum)."""
    import jax
    import jax.numpy as jnp
    import optax
    from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

    optimiser = optax.lbfgs()

    def run(arrays, start):
        kwargs = {**arrays, **dict(structure)}

        def potential(z):
            return potential_energy(model, (), kwargs, z)

        value_and_grad = optax.value_and_grad_from_state(potential)

        def going(carry):
            _, _, iteration, stalled = carry
            return (iteration < steps) & (stalled < 3)

        def step(carry):
            z, state, iteration, stalled = carry
            value, grad = value_and_grad(z, state=state)
            updates, state = optimiser.update(grad, state, z, value=value, grad=grad, value_fn=potential)
            small = ~(value - optax.tree_utils.tree_get(state, "value") >= 1e-3)
            return optax.apply_updates(z, updates), state, iteration + 1, jnp.where(small, stalled + 1, 0)

        z0 = unconstrain_fn(model, (), kwargs, start)
        z, *_ = jax.lax.while_loop(going, step, (z0, optimiser.init(z0), 0, 0))
        energy, energy0 = potential(z), potential(z0)
        found = jnp.isfinite(energy) & (energy <= energy0)  # never worse than the start
        z = jax.tree.map(lambda a, b: jnp.where(found, a, b), z, z0)
        return constrain_fn(model, (), kwargs, z), jnp.where(found, energy, energy0)

    return jax.jit(run)


def _jax_arguments(data: dict, point: dict[str, np.ndarray]) -> tuple[tuple, dict, dict]:
    """(model structure, array arguments, parameter values) of ``data`` and ``point`` as
    float32 JAX arrays, for the jitted functions of one model structure."""
    import jax.numpy as jnp

    structure, arrays = split_data(data)
    arrays = {k: (None if v is None else jnp.asarray(v, dtype=jnp.float32)) for k, v in arrays.items()}
    return structure, arrays, {k: jnp.asarray(v, dtype=jnp.float32) for k, v in point.items()}


def _map_point(data: dict, start: dict[str, np.ndarray], steps: int) -> tuple[dict[str, np.ndarray], float]:
    """(MAP point near ``start``, its potential energy): see :func:`map_estimate`."""
    structure, arrays, start = _jax_arguments(data, start)
    constrained, energy = _map_function(structure, steps)(arrays, start)
    return {k: np.asarray(v) for k, v in constrained.items() if k in start}, float(energy)


def map_estimate(data: dict, start: dict[str, np.ndarray], steps: int = 100) -> dict[str, np.ndarray]:
    """Maximum a posteriori point near ``start`` (L-BFGS in NumPyro's unconstrained space).

    One jitted function per model structure, with the data as arguments: no eager model
    evaluation (which compiles every operation separately) and no recompilation for another
    spectrum of the same size.
    """
    return _map_point(data, start, steps)[0]


# Where lines are on a GP continuum is searched on the spectrum averaged to at most
# START_MAX_BINS points (a bin of 100 000 pixels is then 0.2% of the window, far narrower
# than the lines the search has to find), over a grid of at most START_CENTRES centres x
# START_WIDTHS widths.
START_MAX_BINS = 1000
START_CENTRES = 500
START_WIDTHS = 8


def _noise_from_differences(y: np.ndarray) -> float:
    """Per-pixel noise sd from the median absolute deviation of first differences (a smooth
    continuum and lines many pixels wide cancel in them)."""
    d = np.diff(np.asarray(y, dtype=np.float64))
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def binned_spectrum(data: dict, max_bins: int = START_MAX_BINS) -> dict:
    """``data`` with its pixels averaged in groups of consecutive pixels (at most ``max_bins``
    groups; a partial last group is dropped) and each group's error propagated.

    Missing errors, and the extra scatter ``jitter`` stands for, are taken from
    :func:`_noise_from_differences`, so the binned spectrum always has errors and no jitter.
    Returns ``data`` itself when it has at most ``max_bins`` pixels.
    """
    x = np.asarray(data["x"], dtype=np.float64)
    group = -(-x.size // max_bins)
    if group == 1:
        return data
    usable = (x.size // group) * group
    y = np.asarray(data["flux"], dtype=np.float64)
    noise = _noise_from_differences(y)
    if data["sigma"] is None:
        variance = np.full(usable, noise * noise)
    else:
        variance = np.asarray(data["sigma"], dtype=np.float64)[:usable] ** 2
        if data["jitter"]:
            variance = variance + max(0.0, noise * noise - float(np.median(variance)))

    def mean(a):
        return a[:usable].reshape(-1, group).mean(axis=1)

    x_binned = mean(x)
    return {**data, "x": x_binned.astype(np.float32), "flux": mean(y).astype(np.float32),
            "sigma": (np.sqrt(variance.reshape(-1, group).sum(axis=1)) / group).astype(np.float32),
            "jitter": False, "width_min": max(data["width_min"], float(np.median(np.diff(x_binned))))}


def _gp_covariance(data: dict, values: dict[str, np.ndarray]) -> np.ndarray:
    """The dense covariance (GP at ``values``' hyperparameters + noise) of ``data``'s pixels."""
    import jax.numpy as jnp

    x = np.asarray(data["x"], dtype=np.float64)
    gp_kernel = _gp_kernel(data["kernel"], float(np.exp(values["log_gp_amp"])), float(np.exp(values["log_gp_scale"])))
    covariance = np.asarray(gp_kernel(jnp.asarray(x), jnp.asarray(x)), dtype=np.float64)
    if data["sigma"] is None:
        variance = np.full(x.size, float(np.exp(2.0 * values["log_noise_u"])))
    else:
        variance = np.asarray(data["sigma"], dtype=np.float64) ** 2
        if data["jitter"]:
            variance = variance + float(np.exp(2.0 * values["log_jitter_u"]))
    return covariance + np.diag(variance)


def searched_lines(data: dict, values: dict[str, np.ndarray], lines: tuple[list, list] | None = None
                   ) -> dict[str, np.ndarray]:
    """``values`` with its lines and polynomial replaced by the best K lines of a grid (and
    their least-squares amplitudes and coefficients), the continuum's GP held at ``values``'
    hyperparameters (:mod:`astroinfer.pipelines._line_search`). ``lines`` (centres, widths)
    fixes the lines instead: only their amplitudes and the polynomial are fitted."""
    from astroinfer.pipelines import _line_search

    k, profile = data["num_lines"], data["profile"]
    x = np.asarray(data["x"], dtype=np.float64)
    if lines is None:
        centres = x[np.abs(x) < 0.999][:: max(1, -(-x.size // START_CENTRES))]
        widths = np.geomspace(1.01 * data["width_min"], 0.99 * data["width_max"], START_WIDTHS)
        grid = [(c, w) for w in widths for c in centres]
    else:
        grid = list(zip(*lines))
    candidates = np.column_stack([_profile_np(x, c, w, 0.5, profile) for c, w in grid])
    polynomial = np.vander(x, data["degree"] + 1, increasing=True)
    y, fixed, candidates = _line_search.whiten(_gp_covariance(data, values),
                                               np.asarray(data["flux"], dtype=np.float64), polynomial, candidates)
    if lines is None:
        log_widths = np.log([w for _, w in grid])
        chosen = _line_search.choose_lines(y, fixed, candidates, log_widths, k, data["sign"])
    else:
        chosen = list(range(k))
    coef = _line_search.coefficients(y, np.column_stack([fixed, candidates[:, chosen]]))
    low, high = amplitude_bounds(data["sign"], data["amp_max"])
    margin = 1e-3 * data["amp_max"]
    amps = np.clip(coef[data["degree"] + 1:], low + margin, high - margin)
    placed = _line_values([grid[i][0] for i in chosen], amps, [grid[i][1] for i in chosen], profile)
    return {**values, **{name: v.astype(np.float32) for name, v in placed.items()},
            "continuum_coef": coef[: data["degree"] + 1].astype(np.float32)}


@functools.lru_cache(maxsize=64)
def _laplace_function(structure: tuple):
    """Jitted ``(arrays, point) -> log posterior mass about point`` (Laplace approximation in
    NumPyro's unconstrained space: ``-U - log det(H) / 2``, H the Hessian of the potential
    energy U; eigenvalues below 1e-3 count as 1e-3, so a flat direction's volume stays finite)."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import potential_energy, unconstrain_fn

    def log_mass(arrays, point):
        kwargs = {**arrays, **dict(structure)}
        flat, unravel = ravel_pytree(unconstrain_fn(model, (), kwargs, point))

        def potential(v):
            return potential_energy(model, (), kwargs, unravel(v))

        eigenvalues = jnp.linalg.eigvalsh(jax.hessian(potential)(flat))
        return -potential(flat) - 0.5 * jnp.sum(jnp.log(jnp.maximum(eigenvalues, 1e-3)))

    return jax.jit(log_mass)


def _log_mass(data: dict, point: dict[str, np.ndarray]) -> float:
    """:func:`_laplace_function` of ``data`` at ``point`` (``-inf`` where not finite)."""
    structure, arrays, point = _jax_arguments(data, point)
    value = float(_laplace_function(structure)(arrays, point))
    return value if math.isfinite(value) else -math.inf


LINE_SITES = ("center_q", "amplitude_u", "log_width_u", "voigt_eta")
START_ROUNDS = 3


def gp_continuum_start(data: dict, steps: int = 100) -> dict[str, np.ndarray]:
    """The MAP point of lines on a GP continuum in the mode of most posterior mass among
    several, found on :func:`binned_spectrum` (where the cost does not grow with N) and
    refined on ``data``.

    A gradient search moves lines only downhill from where they start, and the greedy start
    (:func:`initial_values`) can take a continuum bump for a line and miss a weak one (2-4 of
    10 simulated 2-line spectra at 100 000 pixels). So the continuum is fitted alone first,
    and the MAP search runs from the greedy lines on it and from where
    :func:`searched_lines` places the lines, given the GP hyperparameters of the continuum
    fitted alone and then of each MAP point found (up to ``START_ROUNDS`` times, until it
    places the same lines again). The mode kept is the one of greatest Laplace-approximated
    mass (:func:`_laplace_function`), not of highest density: a line shrunk onto a noise
    spike can reach as high a density as a real line the GP has partly absorbed, in a far
    smaller volume.
    """
    binned = binned_spectrum(data)
    greedy = initial_values(binned)
    values, _ = _map_point({**binned, "num_lines": 0},
                           {k: v for k, v in greedy.items() if k not in LINE_SITES}, steps)
    if data["num_lines"]:
        # the greedy lines start on the continuum fitted alone, with least-squares amplitudes:
        # from the prior's GP and rough amplitudes, L-BFGS's first steps can carry a line
        # tens of Angstrom away (seen on simulated 2-line spectra at 2000 pixels)
        centres = line_centres_np(greedy["center_q"])
        widths = np.exp(np.asarray(greedy["log_width_u"], dtype=np.float64))
        modes = [_map_point(binned, searched_lines(binned, values, (centres, widths)), steps)[0]]
        placed = None
        for _ in range(START_ROUNDS):
            searched = searched_lines(binned, values)
            lines = tuple(searched[k].tobytes() for k in LINE_SITES if k in searched)
            if lines == placed:
                break
            placed = lines
            values, _ = _map_point(binned, searched, steps)
            modes.append(values)
        values = max(modes, key=lambda mode: _log_mass(binned, mode))
    if binned is data:
        return values
    start = initial_values(data)  # keeps the noise sites of the full spectrum, which binning drops
    start.update({k: v for k, v in values.items() if k in start})
    return map_estimate(data, start, steps)


def _profile_np(x: np.ndarray, center: float, width: float, eta: float | None, profile: str) -> np.ndarray:
    d = (x - center) / width
    if profile == "gaussian":
        return np.exp(-0.5 * d * d)
    if profile == "lorentzian":
        return 1.0 / (1.0 + d * d)
    return eta / (1.0 + 4.0 * d * d) + (1.0 - eta) * np.exp(-4.0 * math.log(2.0) * d * d)


def _levenberg_marquardt(residual, jacobian, theta, lower, upper, max_iterations: int = 100,
                         rtol: float = 1e-10) -> np.ndarray:
    """Minimise ``|residual(theta)|^2`` within [lower, upper] (steps clipped to the box).

    Levenberg-Marquardt on the normal equations: a few parameters and many pixels, so
    ``J^T J`` (parameters x parameters) is cheap where scipy's trust-region solvers spend
    most of their time on factorising the pixels x parameters Jacobian (0.3-1 s at 20 000
    pixels against ~0.03 s here).
    """
    r = residual(theta)
    cost = float(r @ r)
    damping = 1e-3
    for _ in range(max_iterations):
        jac = jacobian(theta)
        grad = jac.T @ r
        hess = jac.T @ jac
        scale = np.diag(hess) + 1e-12 * (1.0 + np.max(np.diag(hess)))
        for _ in range(40):
            try:
                step = -np.linalg.solve(hess + damping * np.diag(scale), grad)
            except np.linalg.LinAlgError:
                damping *= 4.0
                continue
            trial = np.clip(theta + step, lower, upper)
            r_trial = residual(trial)
            trial_cost = float(r_trial @ r_trial)
            if np.isfinite(trial_cost) and trial_cost < cost:
                break
            damping *= 4.0
        else:
            return theta
        converged = cost - trial_cost <= rtol * cost
        theta, r, cost = trial, r_trial, trial_cost
        damping = max(damping / 3.0, 1e-12)
        if converged:
            break
    return theta


def least_squares_start(data: dict, start: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weighted least-squares refinement of ``start`` (lines + polynomial; no GP), in numpy.

    The start point for NUTS when the continuum is a polynomial or none: it lands where the
    MAP search does (the priors are flat or broad there) without compiling anything, which
    the jitted MAP search (``map_estimate``, used for the GP continuum) costs seconds.
    """
    x = np.asarray(data["x"], dtype=np.float64)
    y = np.asarray(data["flux"], dtype=np.float64)
    k, profile = data["num_lines"], data["profile"]
    weight = 1.0 / np.asarray(data["sigma"], dtype=np.float64) if data["sigma"] is not None else 1.0
    ncoef = data["degree"] + 1 if data["continuum"] != "none" else 0
    low_amp, high_amp = amplitude_bounds(data["sign"], data["amp_max"])
    log_wmin, log_wmax = math.log(data["width_min"]), math.log(data["width_max"])
    voigt = profile == "voigt"
    if k:
        centre0 = line_centres_np(start["center_q"])
    parts0, lower, upper = [], [], []
    for j in range(k):
        parts0 += [centre0[j], start["amplitude_u"][j], start["log_width_u"][j]]
        lower += [-1.0, low_amp, log_wmin]
        upper += [1.0, high_amp, log_wmax]
        if voigt:
            parts0.append(start["voigt_eta"][j]); lower.append(0.0); upper.append(1.0)
    coef0 = np.asarray(start.get("continuum_coef", np.zeros(ncoef)), dtype=np.float64)
    parts0 += list(coef0)
    lower += [-np.inf] * ncoef
    upper += [np.inf] * ncoef
    per = 4 if voigt else 3
    lower, upper = np.asarray(lower), np.asarray(upper)
    eps = 1e-6 * (upper - lower)
    eps[~np.isfinite(eps)] = 0.0
    theta0 = np.clip(np.asarray(parts0, dtype=np.float64), lower + eps, upper - eps)

    def model_flux(theta):
        total = np.polynomial.polynomial.polyval(x, theta[k * per:]) if ncoef else np.zeros_like(x)
        for j in range(k):
            c, a, lw = theta[j * per:j * per + 3]
            eta = theta[j * per + 3] if voigt else None
            total = total + a * _profile_np(x, c, math.exp(lw), eta, profile)
        return total

    powers = np.vander(x, ncoef, increasing=True) if ncoef else np.zeros((x.size, 0))

    def jacobian(theta):
        """d model / d theta, analytic (numerical differences cost a model per parameter)."""
        jac = np.empty((x.size, theta.size))
        for j in range(k):
            c, a, lw = theta[j * per:j * per + 3]
            w = math.exp(lw)
            d = (x - c) / w
            if profile == "gaussian":
                shape = np.exp(-0.5 * d * d)
                d_shape = -d * shape  # d shape / d d
            elif profile == "lorentzian":
                shape = 1.0 / (1.0 + d * d)
                d_shape = -2.0 * d * shape * shape
            else:
                eta = theta[j * per + 3]
                lorentz = 1.0 / (1.0 + 4.0 * d * d)
                gauss = np.exp(-4.0 * math.log(2.0) * d * d)
                shape = eta * lorentz + (1.0 - eta) * gauss
                d_shape = eta * (-8.0 * d * lorentz * lorentz) + (1.0 - eta) * (-8.0 * math.log(2.0) * d * gauss)
                jac[:, j * per + 3] = a * (lorentz - gauss)
            jac[:, j * per] = -a * d_shape / w
            jac[:, j * per + 1] = shape
            jac[:, j * per + 2] = -a * d_shape * d
        jac[:, k * per:] = powers
        return jac * (weight[:, None] if np.ndim(weight) else weight)

    theta = _levenberg_marquardt(lambda t: (model_flux(t) - y) * weight, jacobian, theta0, lower + eps, upper - eps)
    theta = theta if np.all(np.isfinite(theta)) else theta0
    out = dict(start)
    if k:
        rows = theta[:k * per].reshape(k, per)
        order = np.argsort(rows[:, 0])
        rows = rows[order]
        u = np.clip((rows[:, 0] + 1.0) / 2.0, 1e-4, 1.0 - 1e-4)
        u = np.minimum(np.maximum.accumulate(u + 1e-5 * np.arange(k)), 1.0 - 1e-5)
        out["center_q"] = np.clip(ordered_positions_inverse(u), 1e-5, 1.0 - 1e-5)
        out["amplitude_u"] = np.clip(rows[:, 1], low_amp + 1e-3 * data["amp_max"], high_amp - 1e-3 * data["amp_max"])
        out["log_width_u"] = np.clip(rows[:, 2], log_wmin + 1e-4, log_wmax - 1e-4)
        if voigt:
            out["voigt_eta"] = np.clip(rows[:, 3], 1e-3, 1.0 - 1e-3)
    if ncoef:
        out["continuum_coef"] = theta[k * per:]
    if "log_noise_u" in start:
        noise = float(np.std(model_flux(theta) - y))
        out["log_noise_u"] = np.asarray(np.clip(math.log(max(noise, 1e-300)), LOG_NOISE_BOUNDS[0] + 1e-3,
                                                LOG_NOISE_BOUNDS[1] - 1e-3))
    return {name: np.asarray(v, dtype=np.float32) for name, v in out.items()}


def _started_at(values: dict[str, np.ndarray]):
    """``model`` with ``values`` stored in its sites, so NUTS's init_to_median starts there.

    NumPyro's init strategies keep a value a site already holds; the sampler's own
    substitution of the current parameters overrides it, so only the start changes.
    """
    from numpyro import handlers

    def started(**kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*skipping initialization of site.*")
            with handlers.substitute(data=values):
                return model(**kwargs)

    return started


@functools.lru_cache(maxsize=32)
def _nested_functions(structure: tuple, num_live: int, num_delete: int, num_inner: int, steps: int):
    """Jitted nested-sampling pieces for one model structure, the data as arguments.

    ``init(arrays, key) -> (state, integrator)``, ``chunk(arrays, state, integrator, key)``
    (``steps`` iterations of ``blackjax.nss``) and ``constrain(arrays, flat_points)``. The same
    densities as the engine's nested sampler (NumPyro's unconstrained space: log prior with the
    transforms' Jacobians, log likelihood of the observed flux), but every spectrum with the
    same pixel count and structure reuses the compiled code: ``--lines auto`` over many
    spectra (the calibration) compiles four models once instead of four per spectrum.
    """
    import blackjax
    import jax
    import jax.numpy as jnp
    from blackjax.ns.integrator import init_integrator, update_integrator
    from jax.flatten_util import ravel_pytree
    from numpyro import handlers
    from numpyro.infer.util import _unconstrain_reparam, constrain_fn, log_density, unconstrain_fn

    def kwargs_of(arrays):
        return {**arrays, **dict(structure)}

    def prior_tree(kwargs, key):
        with handlers.block(hide_fn=lambda site: site.get("is_observed", False)):
            trace = handlers.trace(handlers.seed(model, key)).get_trace(**kwargs)
        return {name: site["value"] for name, site in trace.items()
                if site["type"] == "sample" and not site["is_observed"]}

    def unravel_of(kwargs):
        return ravel_pytree(prior_tree(kwargs, jax.random.PRNGKey(0)))[1]

    def densities(kwargs, unravel, flat):
        params = unravel(flat)
        substituted = handlers.substitute(model, substitute_fn=lambda site: _unconstrain_reparam(params, site))
        _, trace = log_density(substituted, (), kwargs, {})
        log_prior, log_like = jnp.zeros(()), jnp.zeros(())
        for name, site in trace.items():
            if site["type"] != "sample":
                continue
            value = jnp.sum(site["fn"].log_prob(site["value"]))
            if site["is_observed"] and not (name.startswith("_") and name.endswith("_log_det")):
                log_like = log_like + value
            else:  # latent sites and the Jacobians of the constraining transforms
                log_prior = log_prior + value
        return log_prior, log_like

    def algorithm(kwargs):
        unravel = unravel_of(kwargs)
        return blackjax.nss(logprior_fn=lambda f: densities(kwargs, unravel, f)[0],
                            loglikelihood_fn=lambda f: densities(kwargs, unravel, f)[1],
                            num_inner_steps=num_inner, num_delete=num_delete)

    def init(arrays, key):
        kwargs = kwargs_of(arrays)

        def draw(k):
            return ravel_pytree(unconstrain_fn(model, (), kwargs, prior_tree(kwargs, k)))[0]

        live = jax.vmap(draw)(jax.random.split(key, num_live))
        state = algorithm(kwargs).init(live)
        return state, init_integrator(state.particles)

    def chunk(arrays, state, integrator, key):
        algo = algorithm(kwargs_of(arrays))

        def body(carry, step_key):
            state, integrator = carry
            state, info = algo.step(step_key, state)
            integrator = update_integrator(integrator, state.particles, info.particles)
            dead = (info.particles.position, info.particles.loglikelihood, info.particles.loglikelihood_birth)
            return (state, integrator), dead

        (state, integrator), dead = jax.lax.scan(body, (state, integrator), jax.random.split(key, steps))
        return state, integrator, dead

    def constrain(arrays, flat):
        kwargs = kwargs_of(arrays)
        unravel = unravel_of(kwargs)
        return jax.vmap(lambda f: constrain_fn(model, (), kwargs, unravel(f)))(flat)

    def ndim(arrays):
        kwargs = kwargs_of(arrays)
        return ravel_pytree(prior_tree(kwargs, jax.random.PRNGKey(0)))[0]

    return jax.jit(init), jax.jit(chunk), jax.jit(constrain), ndim


def nested_fit(data: dict, seed: int = 0, *, num_live_points: int = AUTO_LIVE_POINTS, num_delete: int | None = None,
               num_inner_steps: int | None = None, termination: float = 1e-3, max_iterations: int = 50_000,
               steps_per_chunk: int = 50, num_volume_simulations: int = 100, num_samples: int = 1000,
               progress: bool = False) -> dict[str, Any]:
    """Nested sampling (``blackjax.nss``, as the engine's ``method="nested"``) of the model on
    ``data`` with compiled code shared by every spectrum of the same size and structure.

    Returns the log-evidence and its spread over simulated prior-volume sequences, the
    dead points (unconstrained), their weights, and ``num_samples`` equally weighted draws
    (constrained, with ``center_u``).
    """
    import sys

    import jax
    import jax.numpy as jnp
    from blackjax.ns.base import NSInfo
    from blackjax.ns.utils import log_weights

    structure, arrays = split_data(data)
    structure += (("value_only", True),)  # nested sampling never differentiates the density
    arrays = {k: (None if v is None else jnp.asarray(v, dtype=jnp.float32)) for k, v in arrays.items()}
    # the flat parameter count fixes the default slice steps (as the engine's nested sampler)
    probe = _nested_functions(structure, 1, 1, 1, 1)[3]
    ndim = int(jax.eval_shape(probe, arrays).shape[0])
    num_delete = num_delete or max(1, num_live_points // 10)
    num_inner = num_inner_steps or max(5, 3 * ndim)
    init, chunk, constrain, _ = _nested_functions(structure, num_live_points, num_delete, num_inner, steps_per_chunk)
    key = jax.random.PRNGKey(seed)
    init_key, run_key, weight_key, draw_key = jax.random.split(key, 4)
    state, integrator = init(arrays, init_key)
    dead = []
    converged = False
    for index in range(max(1, max_iterations // steps_per_chunk)):
        run_key, chunk_key = jax.random.split(run_key)
        state, integrator, chunk_dead = chunk(arrays, state, integrator, chunk_key)
        dead.append(chunk_dead)
        remaining = float(integrator.logZ_live - integrator.logZ)
        if progress:
            print(f"\rnested: {(index + 1) * steps_per_chunk * num_delete} dead points, live fraction "
                  f"{np.exp(min(remaining, 0.0)):.2e}", end="", flush=True, file=sys.stderr)
        if remaining < math.log(termination) or (not np.isfinite(float(integrator.logZ_live))
                                                  and np.isfinite(float(integrator.logZ))):
            converged = True
            break
    if progress:
        print(file=sys.stderr)
    position = np.concatenate([np.asarray(d[0]).reshape(-1, ndim) for d in dead]
                              + [np.asarray(state.particles.position)])
    loglike = np.concatenate([np.asarray(d[1]).ravel() for d in dead] + [np.asarray(state.particles.loglikelihood)])
    birth = np.concatenate([np.asarray(d[2]).ravel() for d in dead]
                           + [np.asarray(state.particles.loglikelihood_birth)])
    particles = _DeadPoints(jnp.asarray(position), jnp.asarray(loglike), jnp.asarray(birth))
    log_w = log_weights(weight_key, NSInfo(particles, None), shape=num_volume_simulations)
    log_z_samples = np.asarray(jax.scipy.special.logsumexp(log_w, axis=0), dtype=np.float64)
    mean_log_w = np.asarray(jax.scipy.special.logsumexp(log_w, axis=1), dtype=np.float64) - math.log(log_w.shape[1])
    weights = np.exp(mean_log_w - mean_log_w.max())
    weights /= weights.sum()
    pick = np.asarray(jax.random.choice(draw_key, weights.size, shape=(num_samples,), p=jnp.asarray(weights)))
    draws = add_line_centres({k: np.asarray(v) for k, v in constrain(arrays, jnp.asarray(position[pick])).items()})
    return {"log_evidence": float(log_z_samples.mean()), "log_evidence_err": float(log_z_samples.std()),
            "draws": draws, "position": position, "loglikelihood": loglike, "weights": weights,
            "converged": converged, "num_live_points": num_live_points, "num_delete": num_delete,
            "num_inner_steps": num_inner, "ess_kish": float(1.0 / np.sum(weights ** 2)),
            "likelihood_evaluations": int(num_live_points + (position.shape[0] - num_live_points) * num_inner)}


class _DeadPoints(NamedTuple):
    """The fields blackjax's ``log_weights`` reads from the dead points (a pytree)."""

    position: Any
    loglikelihood: Any
    loglikelihood_birth: Any


def _nested_options(prepared: "PreparedRun") -> dict[str, Any]:
    # Evidence for several K: fewer live points than a single nested run's default keep
    # --lines auto quick; evidence errors stay ~0.3-0.5, far below the log Bayes factors of
    # lines with SNR >= 10 (a GP continuum needs more: AUTO_LIVE_POINTS_GP). The run's own
    # nested options win.
    allowed = ("num_live_points", "num_delete", "num_inner_steps", "termination", "max_iterations",
               "steps_per_chunk", "num_volume_simulations")
    options = {k: v for k, v in prepared.options.items() if k in allowed} if prepared.method == "nested" else {}
    gp = prepared.loaded.data["continuum"] == "gp"
    options.setdefault("num_live_points", AUTO_LIVE_POINTS_GP if gp else AUTO_LIVE_POINTS)
    return options


def _nested_result(prepared: "PreparedRun", data: dict, fit: dict, started: str, timing: dict) -> "Result":
    """A ``Result`` (method nested) from :func:`nested_fit`'s draws, as the engine would make it."""
    import arviz as az

    from astroinfer.engine.diagnostics import convergence_diagnostics
    from astroinfer.result import Result
    from astroinfer.store import provenance, utc_now

    posterior = {k: v[None] for k, v in fit["draws"].items()}
    idata = az.from_dict(posterior=posterior, observed_data={"flux": np.asarray(data["flux"])})
    diagnostics = {**convergence_diagnostics(idata, "nested"),
                   **{k: fit[k] for k in ("converged", "num_live_points", "num_delete", "num_inner_steps",
                                          "ess_kish", "likelihood_evaluations")},
                   "num_dead_points": int(fit["position"].shape[0]), "log_evidence_err": fit["log_evidence_err"],
                   **timing, "warnings": []}
    if not fit["converged"]:
        diagnostics["warnings"].append("nested sampling stopped at max_iterations before the termination criterion")
    record = provenance(method="nested", options={**_nested_options(prepared), "num_samples": prepared.num_samples},
                        seed=prepared.seed, started=started, finished=utc_now(), pipeline=NAME,
                        input_path=str(prepared.input_path))
    return Result(idata=idata, method="nested", log_evidence=fit["log_evidence"],
                  log_evidence_err=fit["log_evidence_err"], diagnostics=diagnostics, provenance=record)


def choose_num_lines(ks: list[int], log_z: np.ndarray, min_log_bayes_factor: float) -> int:
    """The number of lines ``--lines auto`` reports: the fewest lines whose log-evidence is
    within ``min_log_bayes_factor`` of the greatest (0: the greatest log-evidence). A model with
    fewer lines is set aside only when the best model's evidence exceeds its own by more than that."""
    log_z = np.asarray(log_z, dtype=float)
    return ks[int(np.flatnonzero(log_z >= log_z.max() - min_log_bayes_factor)[0])]


def _sample(prepared: "PreparedRun", progress: bool) -> "Result":
    loaded = prepared.loaded
    meta = loaded.metadata
    comparison = None
    if meta["lines"] == "auto":
        import sys

        from astroinfer.engine.timing import CompileTimer
        from astroinfer.store import utc_now

        runs, seconds, started = {}, {}, {}
        for k in range(meta["max_lines"] + 1):
            if progress:
                print(f"spectral-lines: K = {k} line(s), nested sampling", file=sys.stderr)
            started[k] = utc_now()
            with CompileTimer() as timer:
                runs[k] = nested_fit({**loaded.data, "num_lines": k}, seed=prepared.seed, progress=progress,
                                     num_samples=prepared.num_samples, **_nested_options(prepared))
            seconds[k] = {"compile_time_s": timer.compile_seconds, "run_time_s": timer.run_seconds,
                          "wall_time_s": timer.wall_seconds, "backend_compiles": timer.backend_compiles}
        ks = sorted(runs)
        log_z = np.array([runs[k]["log_evidence"] for k in ks])
        log_z_err = np.array([runs[k]["log_evidence_err"] for k in ks])
        best = choose_num_lines(ks, log_z, meta.get("min_log_bayes_factor", LOG_BAYES_FACTOR_FOR_A_LINE))
        comparison = {"k": np.array(ks), "log_evidence": log_z, "log_evidence_err": log_z_err,
                      "log_bayes_factor": log_z - log_z[ks.index(best)], "chosen": best}
        settings = {**loaded.data, "num_lines": best}
        # K is chosen by evidence; the posterior of the chosen K comes from the method asked
        # for (nested sampling's own draws when that is the method).
        if prepared.method == "nested":
            result = _nested_result(prepared, settings, runs[best], started[best], seconds[best])
        else:
            result = _fit_fixed_k(prepared, settings, progress)
    else:
        settings = dict(loaded.data)
        result = _fit_fixed_k(prepared, settings, progress)
    finalise(result, settings, meta, getattr(meta, "arrays", {}), comparison)
    return prepared.finish(result)


def _fit_fixed_k(prepared: "PreparedRun", settings: dict, progress: bool) -> "Result":
    """Sample the K-line model. With ``gp_hyperparameters="fixed"`` (GP continuum) the GP
    hyperparameters are first set to their joint MAP values and stored in
    ``settings["gp_fixed"]`` (``settings`` is changed in place: :func:`finalise` reads it)."""
    overrides: dict[str, Any] = {"data": settings}
    if prepared.method == "nuts" and "dense_mass" not in prepared.options:
        # Blended lines make centre, width and amplitude strongly correlated: a dense
        # mass matrix (a few parameters only) keeps NUTS trajectories short.
        overrides["dense_mass"] = True
    hold_gp = (settings["continuum"] == "gp"
               and prepared.loaded.metadata.get("gp_hyperparameters", "sample") == "fixed")
    start_nuts = prepared.method == "nuts" and "init" not in prepared.options
    if start_nuts or hold_gp:
        if settings["continuum"] == "gp":
            start = gp_continuum_start(settings)
        else:  # no compilation: the least-squares point of lines + polynomial
            start = least_squares_start(settings, initial_values(settings))
        if hold_gp:
            sites = fixed_gp_sites(settings)
            settings["gp_fixed"] = np.array([start[name] for name in sites], dtype=np.float32)
            start = {k: v for k, v in start.items() if k not in sites}
        if start_nuts:
            overrides["model"] = _started_at(start)
    return prepared.sample_model(progress=progress, **overrides)


def finalise(result: "Result", settings: dict, meta: dict, arrays: dict, comparison: dict | None = None) -> "Result":
    """Add the physical per-line variables (``line`` dimension, units), the data and the K choice."""
    import xarray as xr

    posterior = result.idata.posterior
    renames = {}
    for name, values in posterior.data_vars.items():
        extra = [d for d in values.dims if d not in ("chain", "draw")]
        if not extra:
            continue
        target = {"continuum_coef": "coefficient"}.get(name, "line")
        renames.update({d: target for d in extra})
    new_vars = {}
    for name, values in posterior.data_vars.items():
        dims = tuple(renames.get(d, d) for d in values.dims)
        new_vars[name] = xr.DataArray(values.values, dims=dims)
    if "center_q" in new_vars and "center_u" not in new_vars:  # the ordered centres (not a model site)
        q = new_vars["center_q"]
        new_vars["center_u"] = xr.DataArray(line_centres_np(q.values).astype(q.dtype), dims=q.dims)
    units = _units(meta)
    for name, values in derived_quantities(new_vars, settings, meta, arrays).items():
        new_vars[name] = xr.DataArray(values, dims=("chain", "draw", "line"),
                                      attrs={"units": units[name]})
    num_lines = settings["num_lines"]
    coords = {"chain": posterior.coords["chain"].values, "draw": posterior.coords["draw"].values}
    if num_lines:
        coords["line"] = np.arange(num_lines)
    result.idata.posterior = xr.Dataset(new_vars, coords=coords, attrs=dict(posterior.attrs))

    std = meta["standardisation"]
    constant = {"x": ("pixel", np.asarray(arrays["x_values"], dtype=np.float64)),
                "flux": ("pixel", np.asarray(arrays["flux_values"], dtype=np.float64))}
    if arrays.get("error_values") is not None:
        constant["error"] = ("pixel", np.asarray(arrays["error_values"], dtype=np.float64))
    model_settings = {k: settings[k] for k in ("num_lines", "profile", "continuum", "degree", "kernel", "sign")}
    attrs = {**{k: (str(v) if isinstance(v, str) else int(v)) for k, v in model_settings.items()},
             "jitter": int(bool(settings["jitter"])), "x_unit": meta.get("x_unit") or "",
             "flux_unit": meta.get("flux_unit") or "", "axis": meta.get("axis") or "",
             **{k: float(v) for k, v in std.items()}}
    fixed = _fixed_values(settings)
    if fixed:  # empirical Bayes: the plots' continuum needs the fixed values
        attrs["gp_hyperparameters"] = "fixed"
        attrs.update({f"fixed_{name}": value for name, value in fixed.items()})
        result.diagnostics["gp_hyperparameters_fixed"] = fixed
    groups = {"constant_data": xr.Dataset(constant, attrs=attrs)}
    if "observed_data" in result.idata.groups():  # the data in physical units, not standardised
        result.idata.observed_data = xr.Dataset({"flux": ("pixel", constant["flux"][1])},
                                                attrs={"units": meta.get("flux_unit") or ""})
    if comparison is not None:
        groups["model_comparison"] = xr.Dataset(
            {"log_evidence_by_k": ("k", comparison["log_evidence"]),
             "log_evidence_err_by_k": ("k", comparison["log_evidence_err"]),
             "log_bayes_factor": ("k", comparison["log_bayes_factor"])},
            coords={"k": comparison["k"]},
            attrs={"chosen_num_lines": int(comparison["chosen"]),
                   "log_bayes_factor": "log Z(K) - log Z(chosen K)",
                   "selection_rule": "fewest lines whose log Z is within min_log_bayes_factor of the greatest",
                   "min_log_bayes_factor": float(meta.get("min_log_bayes_factor", LOG_BAYES_FACTOR_FOR_A_LINE))})
        result.diagnostics["log_evidence_by_k"] = {int(k): float(v) for k, v in
                                                   zip(comparison["k"], comparison["log_evidence"])}
        result.diagnostics["chosen_num_lines"] = int(comparison["chosen"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result.idata.add_groups(groups)
    result.diagnostics["num_lines"] = int(num_lines)
    messages = _messages(meta)
    if messages:
        result.diagnostics["warnings"] = list(result.diagnostics.get("warnings", [])) + messages
    return result


# -- summaries, show, plots -----------------------------------------------------------
def line_table(result: "Result", interval: float = 0.9):
    """Per-line posterior mean, sd and central ``interval`` of every line_* variable."""
    import pandas as pd

    posterior = result.idata.posterior
    rows = []
    lo_q, hi_q = 0.5 - interval / 2, 0.5 + interval / 2
    for name in LINE_VARIABLES:
        if name not in posterior:
            continue
        values = np.asarray(posterior[name]).reshape(-1, posterior.sizes["line"])
        unit = posterior[name].attrs.get("units", "")
        for line in range(values.shape[1]):
            v = values[:, line]
            rows.append({"line": line, "quantity": name, "mean": v.mean(), "sd": v.std(ddof=1),
                         f"q{lo_q:.0%}": np.quantile(v, lo_q), f"q{hi_q:.0%}": np.quantile(v, hi_q),
                         "units": unit})
    return pd.DataFrame(rows)


def _evidence_text(result: "Result") -> str:
    if "model_comparison" not in result.idata.groups():
        return ""
    comp = result.idata.model_comparison
    chosen = int(comp.attrs.get("chosen_num_lines"))
    lines = ["number of lines chosen by nested-sampling evidence:",
             "   K   log Z            ln Bayes factor vs chosen"]
    for k, log_z, err, bf in zip(comp["k"].values, comp["log_evidence_by_k"].values,
                                  comp["log_evidence_err_by_k"].values, comp["log_bayes_factor"].values):
        mark = "  <- chosen" if int(k) == chosen else ""
        lines.append(f"  {int(k):2d}   {log_z:10.3f} +- {err:5.3f}   {bf:9.3f}{mark}")
    return "\n".join(lines)


def show(result: "Result") -> str:
    """Per-line table (and the evidence of every K for --lines auto)."""
    parts = []
    evidence = _evidence_text(result)
    if evidence:
        parts.append(evidence)
    if "line" in result.idata.posterior.dims:
        table = line_table(result)
        with_fmt = table.to_string(index=False, float_format=lambda v: f"{v:.6g}")
        parts.append("per-line posterior (mean, sd, 90% interval):\n" + with_fmt)
    else:
        parts.append("no lines in the model (K = 0): the spectrum is continuum and noise")
    return "\n\n".join(parts)


def summarise(result: "Result", data: PipelineData) -> dict[str, Any]:
    """Per-line table and the evidence comparison (when K was chosen by evidence)."""
    out: dict[str, Any] = {}
    if "line" in result.idata.posterior.dims:
        out["lines"] = line_table(result)
    evidence = _evidence_text(result)
    if evidence:
        out["evidence"] = evidence
    if not out:
        out["lines"] = "no lines in the model (K = 0)"
    return out


def _model_curves(result: "Result", num_draws: int = 40, seed: int = 0):
    """(x, flux, error, lines (draws, K, N), continuum (draws, N)) in physical units."""
    import jax.numpy as jnp

    const = result.idata.constant_data
    attrs = const.attrs
    settings = {k: attrs[k] for k in ("num_lines", "profile", "continuum", "degree", "kernel")}
    settings["num_lines"] = int(settings["num_lines"])
    x = np.asarray(const["x"]); flux = np.asarray(const["flux"])
    error = np.asarray(const["error"]) if "error" in const else None
    x_mid, x_half, f0, fs = (float(attrs[k]) for k in ("x_mid", "x_half", "flux_zero", "flux_scale"))
    x_u, y_u = (x - x_mid) / x_half, (flux - f0) / fs
    fixed = {k[len("fixed_"):]: float(v) for k, v in attrs.items() if k.startswith("fixed_")}
    flat = _flat_params(result.idata.posterior, fixed)
    total = next(iter(flat.values())).shape[0] if flat else 0
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(total, size=min(num_draws, total), replace=False)) if total else np.array([], int)
    params = {k: v[pick] for k, v in flat.items()}
    per_line = np.zeros((pick.size, settings["num_lines"], x.size))
    if settings["num_lines"]:
        for i in range(pick.size):
            eta = params["voigt_eta"][i] if "voigt_eta" in params else None
            shapes = np.asarray(_profiles(jnp.asarray(x_u), jnp.asarray(params["center_u"][i]),
                                          jnp.exp(jnp.asarray(params["log_width_u"][i])),
                                          None if eta is None else jnp.asarray(eta), settings["profile"]))
            per_line[i] = (shapes * params["amplitude_u"][i][None, :]).T * fs
    if settings["continuum"] == "gp":
        s_u = None if error is None else error / fs
        cont_u = _gp_continuum_at(settings, x_u, y_u, s_u, params, np.repeat(x_u[None, :], pick.size, axis=0),
                                  chunk=8)
    elif settings["continuum"] == "poly":
        coef = params["continuum_coef"]
        cont_u = np.stack([np.polyval(c[::-1], x_u) for c in coef]) if pick.size else np.zeros((0, x.size))
    else:
        cont_u = np.zeros((pick.size, x.size))
    continuum = f0 + fs * cont_u
    return x, flux, error, per_line, continuum


def fit_figure(result: "Result"):
    """Data, posterior-predictive lines and continuum (median and 90% band), and residuals."""
    import matplotlib.pyplot as plt

    x, flux, error, per_line, continuum = _model_curves(result)
    attrs = result.idata.constant_data.attrs
    total = continuum + per_line.sum(axis=1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot(x, flux, color="0.5", lw=0.6, drawstyle="steps-mid", label="data")
    lo, med, hi = np.quantile(total, [0.05, 0.5, 0.95], axis=0)
    top.fill_between(x, lo, hi, color="C0", alpha=0.3, lw=0)
    top.plot(x, med, color="C0", lw=1.2, label="lines + continuum (median, 90%)")
    top.plot(x, np.median(continuum, axis=0), color="C1", lw=1.0, ls="--", label="continuum")
    for k in range(per_line.shape[1]):
        top.plot(x, np.median(continuum, axis=0) + np.median(per_line[:, k], axis=0), lw=0.8, ls=":",
                 label=f"line {k}")
    top.set_ylabel(f"flux [{attrs.get('flux_unit') or 'flux units'}]")
    top.legend(fontsize=8, loc="best")
    top.set_title(f"spectral-lines: K = {int(attrs['num_lines'])}, {attrs['profile']} lines, "
                  f"{attrs['continuum']} continuum")
    residual = flux - med
    bottom.plot(x, residual, color="0.3", lw=0.6, drawstyle="steps-mid")
    if error is not None:
        bottom.fill_between(x, -error, error, color="C2", alpha=0.25, lw=0, label="+-1 error")
        bottom.legend(fontsize=8)
    bottom.axhline(0.0, color="k", lw=0.5)
    bottom.set_ylabel("residual")
    bottom.set_xlabel(f"{attrs.get('axis') or 'spectral axis'} [{attrs.get('x_unit') or 'axis units'}]")
    fig.tight_layout()
    return fig


# -- simulate ------------------------------------------------------------------------
_WRITE_FORMATS = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".fits": "fits"}


def truth_path(path: str | os.PathLike) -> Path:
    """The truth sidecar of a simulated spectrum: ``demo.ecsv`` -> ``demo.truth.json``."""
    path = Path(path)
    return path.with_name(path.name.rsplit(".", 1)[0] + ".truth.json")


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
    ``continuum="gp"``, a Matern-3/2 GP draw (amplitude 0.5, length scale 30 Angstrom). Line
    centres are uniform in the inner 70% of the window and at least 4 widths apart, widths
    (Gaussian sigma) uniform in [1.5, 4] Angstrom, and each line's flux is set by its
    signal-to-noise ratio ``snr`` (drawn in [10, 30] if not given), defined as
    ``flux / (noise * dx * sqrt(FWHM / dx))``: the flux over the noise summed over the FWHM.
    """
    from astropy.table import Table

    path = Path(path)
    ext = check_simulate_target(path, seed, _WRITE_FORMATS)
    if num_pixels < 20:
        raise OutputError(f"num_pixels must be at least 20, got {num_pixels}")
    if continuum not in ("gp", "poly"):
        raise OutputError(f"continuum must be gp or poly, got {continuum!r}")
    rng = np.random.default_rng(seed)
    lo, hi = window
    x = np.linspace(lo, hi, num_pixels)
    dx = x[1] - x[0]
    level, slope = 10.0, float(rng.uniform(-0.01, 0.01))
    cont = level + slope * (x - 0.5 * (lo + hi))
    gp_amp, gp_scale = 0.5, 30.0
    if continuum == "gp":
        cont = cont + _matern32_draw(rng, x, gp_amp, gp_scale)
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
                  "continuum_level": level, "continuum_slope": slope,
                  **({"gp_amp": gp_amp, "gp_scale": gp_scale} if continuum == "gp" else {})},
        "units": {"wavelength": "Angstrom", "flux": "1e-17 erg / (Angstrom s cm2)"},
        "model": "Gaussian emission lines on a continuum (level + slope [+ Matern-3/2 GP]) with Gaussian noise",
    }
    import astropy.units as u

    flux_unit = u.Unit("1e-17 erg / (Angstrom s cm2)")
    table = Table({"wavelength": x * u.AA, "flux": flux * flux_unit, "error": error * flux_unit})
    for name in table.colnames:
        table[name].format = ".8g"
    fmt = _WRITE_FORMATS[ext]
    if fmt == "ascii.ecsv":
        table.meta["astroinfer_simulation"] = record
    elif fmt == "fits":
        table.meta.update({"PIPELINE": NAME, "SEED": int(seed), "NLINES": int(lines)})
    atomic_write(path, lambda tmp: table.write(tmp, format=fmt, overwrite=True), suffix=ext)
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    atomic_write(truth_path(path), lambda tmp: Path(tmp).write_text(text))
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


PIPELINE = Pipeline(
    name=NAME,
    description="Emission/absorption lines (ordered centres, K by evidence) on a polynomial or O(N) GP "
                "continuum; 1-D FITS or table spectra",
    load=load,
    model=model,
    simulate=simulate,
    summarise=summarise,
    demo_file="spectral_lines_demo.ecsv",
    demo_seed=6563,
    module_file=__file__,
    options=OPTIONS,
    simulate_options=SIMULATE_OPTIONS,
    sample=_sample,
    show=show,
    plots={"fit": fit_figure},
)
