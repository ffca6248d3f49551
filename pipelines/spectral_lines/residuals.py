"""spectral-lines: structure left in a fit's residuals (a continuum shape or a line the model lacks).

White noise averages down: the mean of ``b`` neighbouring standardised residuals has sd
``1 / sqrt(b)`` whatever the noise level. A continuum bump that a straight line cannot
follow, or a line left out, does not average down, so it shows in these bin means. The test
is the chi-square of the bin means, scaled by ``sqrt(b)``, over ``num_bins`` degrees of
freedom. Its p-value is stored with every fit, and a warning goes with it when the p-value
is below :data:`STRUCTURE_P_VALUE`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from .derived import model_curves

if TYPE_CHECKING:
    from astroinfer.result import Result

#: Residual bins: about this many per spectrum, each of at least ``MIN_BIN_PIXELS`` pixels.
NUM_BINS, MIN_BIN_PIXELS = 50, 5
#: A p-value this small is structure, not noise: about 1 false alarm in 10^6 white spectra.
STRUCTURE_P_VALUE = 1e-6


def residual_structure(flux: np.ndarray, model: np.ndarray, noise_sd: np.ndarray | float) -> dict[str, Any]:
    """Chi-square of the binned standardised residuals ``(flux - model) / noise_sd``: the bins'
    pixel count, their number, the chi-square, its p-value and the largest |bin mean| in
    units of its noise sd."""
    z = (np.asarray(flux, float) - np.asarray(model, float)) / np.broadcast_to(noise_sd, np.shape(flux))
    size = max(MIN_BIN_PIXELS, z.size // NUM_BINS)
    num = z.size // size
    if num < 2:
        return {"bin_pixels": size, "num_bins": num, "chi2": float("nan"), "p_value": float("nan"),
                "max_abs_bin": float("nan")}
    means = z[: num * size].reshape(num, size).mean(axis=1) * np.sqrt(size)
    chi2 = float(np.sum(means**2))
    return {"bin_pixels": int(size), "num_bins": int(num), "chi2": chi2, "p_value": float(stats.chi2.sf(chi2, num)),
            "max_abs_bin": float(np.max(np.abs(means)))}


def _noise_sd(result: "Result", error: np.ndarray | None) -> np.ndarray | float:
    """The white-noise sd the fit assumed, in flux units: the errors (with the fitted jitter)
    or the fitted noise level, at their posterior medians."""
    post = result.idata.posterior
    scale = float(result.idata.constant_data.attrs["flux_scale"])
    if error is None:
        return float(np.exp(np.median(post["log_noise_u"].values))) * scale
    if "log_jitter_u" in post:
        jitter = float(np.exp(np.median(post["log_jitter_u"].values))) * scale
        return np.sqrt(error**2 + jitter**2)
    return error


def residual_check(result: "Result") -> tuple[dict[str, Any], list[str]]:
    """:func:`residual_structure` of a finished fit (data minus the posterior-median model) and
    the warning it calls for, if any."""
    x, flux, error, per_line, continuum = model_curves(result, num_draws=20)
    model = np.median(continuum + per_line.sum(axis=1), axis=0)
    record = residual_structure(flux, model, _noise_sd(result, error))
    messages = []
    if record["p_value"] < STRUCTURE_P_VALUE:
        messages.append(
            f"the residuals show structure far above the noise: means of {record['bin_pixels']}-pixel bins give "
            f"chi2 {record['chi2']:.0f} for {record['num_bins']} bins (p = {record['p_value']:.1e}, the largest "
            f"{record['max_abs_bin']:.1f} sd); the continuum or the lines are misspecified (a curved continuum: "
            "--continuum auto or gp, or a higher --degree; a missing line: more --lines)"
        )
    return record, messages
