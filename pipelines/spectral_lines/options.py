"""spectral-lines: the pipeline's name, choices, prior bounds, option parsers and option tables.

Light on purpose (``math`` and :mod:`astroinfer.pipeline` only): the package imports it when
the CLI lists the pipelines.
"""

from __future__ import annotations

import math

from astroinfer.pipeline import PipelineOption, parse_choice, parse_count, parse_non_negative, parse_positive

NAME = "spectral-lines"
PROFILES = ("gaussian", "lorentzian", "voigt")
CONTINUA = ("auto", "poly", "gp", "none")
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
# --continuum auto: degrees 0..MAX_DEGREE (Legendre), at most one per PIXELS_PER_DEGREE pixels.
# Two periods of a sinusoid across the window need about degree 14 to leave residuals below
# the noise of 3000 pixels; the evidence chooses the degree, so the cap only bounds the cost.
MAX_DEGREE = 20
PIXELS_PER_DEGREE = 10
# A spurious extra line costs only ~1-3 nats of Occam penalty (poly calibration: the true K
# beat K + 1 by -0.8 to 3.8), while real lines with SNR >= 10 win by 14 nats and more; the
# greatest log Z alone picked K + 1 for a continuum wiggle on a GP continuum (ln B 1.8).
LOG_BAYES_FACTOR_FOR_A_LINE = math.log(10.0)


def parse_lines(text: str) -> int | str:
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


def parse_interval(text: str) -> tuple[float, float]:
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


def parse_intervals(text: str) -> tuple[tuple[float, float], ...]:
    return tuple(parse_interval(part) for part in str(text).split(",") if part.strip())


def parse_columns(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in str(text).split(","))
    if len(names) not in (2, 3) or not all(names):
        raise ValueError(f"expected AXIS,FLUX or AXIS,FLUX,ERROR column names, got {text!r}")
    return names


OPTIONS = (
    PipelineOption("lines", "number of lines K, or 'auto': nested sampling for K = 0..max_lines, "
                   "chosen by evidence", "auto", parse_lines),
    PipelineOption("max_lines", "largest K tried by --lines auto", 3, parse_count()),
    PipelineOption("min_log_bayes_factor", "--lines auto: choose the fewest lines whose log-evidence is within "
                   "this of the greatest (default ln 10, 'strong' on Jeffreys' scale; 0: the greatest)",
                   LOG_BAYES_FACTOR_FOR_A_LINE, parse_non_negative),
    PipelineOption("profile", "line profile: gaussian, lorentzian or voigt (pseudo-Voigt)", "gaussian",
                   parse_choice(*PROFILES)),
    PipelineOption("continuum", "continuum: auto (polynomial, its degree chosen by evidence), poly (polynomial of "
                   "--degree), gp (polynomial mean + quasiseparable GP) or none", "auto", parse_choice(*CONTINUA)),
    PipelineOption("degree", "polynomial degree of the continuum for poly (the GP's mean for gp)", 1,
                   parse_count()),
    PipelineOption("max_degree", "continuum auto: the largest degree tried (at most one per "
                   f"{PIXELS_PER_DEGREE} pixels)", MAX_DEGREE, parse_count()),
    PipelineOption("kernel", "GP kernel for continuum gp: matern32 or sho", "matern32", parse_choice(*KERNELS)),
    PipelineOption("gp_hyperparameters", "continuum gp: sample the GP amplitude, scale and noise term with the "
                   "lines (sample), or hold them at their MAP values (fixed: empirical Bayes, gradients ~20x "
                   "cheaper at 10^4-10^5 pixels)", "sample", parse_choice(*GP_HYPERPARAMETER_MODES)),
    PipelineOption("jitter", "add a fitted noise term to the file's errors", False, flag=True),
    PipelineOption("sign", "line sign: emission, absorption or both", "emission", parse_choice(*SIGNS)),
    PipelineOption("window", "fit only LO:HI of the spectral axis (its units)", None, parse_interval),
    PipelineOption("mask", "exclude LO:HI[,LO:HI...] of the spectral axis", None, parse_intervals),
    PipelineOption("columns", "table columns AXIS,FLUX[,ERROR] instead of finding them by name", None,
                   parse_columns),
    PipelineOption("rest", "rest wavelength or frequency (axis units) for line_velocity in km/s", None,
                   parse_positive),
)

SIMULATE_OPTIONS = (
    PipelineOption("lines", "number of lines", 2, parse_count()),
    PipelineOption("num_pixels", "number of pixels", 300, parse_count()),
    PipelineOption("snr", "signal-to-noise ratio of each line's flux (default: drawn in [10, 30])", None,
                   parse_positive),
    PipelineOption("continuum", "continuum shape: poly (level and slope), gp (plus a Matern-3/2 GP draw), "
                   "curved (plus a cubic) or wavy (plus two sinusoids)", "poly",
                   parse_choice("poly", "gp", "curved", "wavy")),
)


def auto_max_degree(max_degree: int, num_pixels: int) -> int:
    """The largest degree ``--continuum auto`` tries: ``max_degree``, at most one per
    :data:`PIXELS_PER_DEGREE` pixels (a short spectrum cannot tell high degrees apart), and
    at least 1 unless ``max_degree`` is 0 (a sloped continuum is always among the choices)."""
    return min(int(max_degree), max(1, num_pixels // PIXELS_PER_DEGREE))


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
