"""Optional smoothing stage of the ionosphere pipeline: a Gaussian process over time.

The per-problem stage solves every (time, ant, dir, pol) problem alone. The ionosphere
changes smoothly in time, so each station's dTEC series (one per ant, dir, pol) is modelled
as a Gaussian process over time, observed through the per-problem posteriors::

    dTEC(t) ~ GP(c, amplitude^2 Matern-3/2(|t - t'| / scale))
    m_t     ~ Normal(dTEC(t), sd_t)

``m_t`` is the problem's solution (the heaviest mode's mean) and ``sd_t`` its posterior sd;
flagged problems are left out (infinite noise). ``c`` is each series' precision-weighted
mean. The amplitude and the scale are shared by all series and chosen by maximising the
summed log marginal likelihood on a grid (type-II maximum likelihood). tinygp's
quasiseparable Matern-3/2 makes each series O(T), so millions of problems stay cheap.

The result per problem is the smoothed screen (GP posterior mean and sd at its time), and
which problems the screen calls outliers: the leave-one-out residual of the GP (exact for a
Gaussian model), ``z = (m_t - E[dTEC(t) | m_-t]) / sqrt(var(dTEC(t) | m_-t) + sd_t^2)``,
beyond 3. A multimodal problem whose heaviest mode was the wrong one shows up there. The
screen is refitted without the outliers found so far (they pull it towards them and hide
others) until the set of outliers stops changing, at most MAX_PASSES times.

:func:`smooth_screen` smooths series given as (series, time) arrays; :func:`smoothed_screen`
is the pipeline's stage, from the per-problem solutions to the ``smoothed_screen`` group.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tinygp import GaussianProcess, kernels

__all__ = ["smooth_screen", "smoothed_screen", "OUTLIER_Z", "MAX_PASSES"]

OUTLIER_Z = 3.0
MAX_PASSES = 6
AMPLITUDES = 12
SCALES = 16


def _series_fns():
    def gp(times, sd, amplitude, scale):
        kernel = kernels.quasisep.Matern32(scale=scale, sigma=amplitude)
        return GaussianProcess(kernel, times, diag=sd**2)

    def centred(y, sd):
        w = 1.0 / sd**2
        return y - jnp.sum(w * y) / jnp.sum(w)

    def log_likelihood(times, y, sd, amplitude, scale):
        return gp(times, sd, amplitude, scale).log_probability(centred(y, sd))

    def smooth(times, y, sd, amplitude, scale):
        """Posterior mean and variance of dTEC(t) at every time, and the leave-one-out
        mean and variance (Sundararajan & Keerthi 2001: divide the observation's Gaussian
        factor out of the full posterior)."""
        r = centred(y, sd)
        offset = y - r
        cond = gp(times, sd, amplitude, scale).condition(r).gp
        mean, var = cond.loc, cond.variance
        var_loo = 1.0 / jnp.maximum(1.0 / var - 1.0 / sd**2, 1e-30)
        mean_loo = var_loo * (mean / var - r / sd**2)
        return mean + offset, var, mean_loo + offset, var_loo

    total = jax.jit(jax.vmap(lambda times, y, sd, a, s: jnp.sum(jax.vmap(log_likelihood, (None, 0, 0, None, None))(
        times, y, sd, a, s)), (None, None, None, 0, 0)))
    smooth_all = jax.jit(jax.vmap(smooth, (None, 0, 0, None, None)))
    return total, smooth_all


def smooth_screen(times: np.ndarray, values: np.ndarray, sds: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """Smooth per-problem solutions over time, series by series.

    ``times`` (T,) in seconds, increasing; ``values``, ``sds``, ``valid`` (S, T): each row one
    series (ant, dir, pol). Returns the smoothed mean and sd (S, T), the leave-one-out z and
    the outlier mask (S, T), and the chosen amplitude (TECU) and scale (s) with the grid's
    log marginal likelihoods.
    """
    times = np.asarray(times, np.float64)
    values = np.asarray(values, np.float64)
    sds = np.asarray(sds, np.float64)
    valid = np.asarray(valid, bool) & np.isfinite(values) & np.isfinite(sds) & (sds > 0)
    if times.ndim != 1 or values.shape != sds.shape or values.shape[-1] != times.size:
        raise ValueError("times (T,), values and sds (S, T) expected")
    if not np.all(np.diff(times) > 0):
        raise ValueError("times must increase")
    # Flagged problems: a huge noise, so the GP passes them by (the shapes stay static).
    big = 1e3 * max(float(np.nanmax(np.abs(values[valid]))) if valid.any() else 1.0, 1.0)
    spread = float(np.std(values[valid])) if valid.sum() > 1 else 1.0
    step = float(np.median(np.diff(times))) if times.size > 1 else 1.0
    amplitudes = np.geomspace(max(spread, 1e-6) / 30, max(spread, 1e-6) * 3, AMPLITUDES)
    scales = np.geomspace(step, step * max(times.size, 2) * 3, SCALES)
    grid_a, grid_s = (g.ravel() for g in np.meshgrid(amplitudes, scales, indexing="ij"))
    total, smooth_all = _series_fns()

    def fit(used):
        y = np.where(used, values, 0.0)
        sd = np.where(used, sds, big)
        with jax.enable_x64(True):  # long series: the marginal likelihood sums many terms
            ll = np.asarray(total(times, y, sd, grid_a, grid_s), np.float64).reshape(AMPLITUDES, SCALES)
            best = np.unravel_index(np.nanargmax(ll), ll.shape)
            mean, var, mean_loo, var_loo = (np.asarray(a, np.float64) for a in
                                            smooth_all(times, y, sd, amplitudes[best[0]], scales[best[1]]))
        # Problems in the fit: their leave-one-out prediction; problems left out: the fit is
        # already blind to them.
        pred = np.where(used, mean_loo, mean)
        pred_var = np.where(used, var_loo, var)
        z = np.where(valid, (values - pred) / np.sqrt(pred_var + sds**2), np.nan)
        return ll, best, mean, var, z

    # Outliers (a wrong mode, say) pull a GP towards them and make it wiggle, which hides
    # other outliers: fit again without the outliers found so far, until none are added.
    outlier = np.zeros_like(valid)
    for _ in range(MAX_PASSES):
        ll, best, mean, var, z = fit(valid & ~outlier)
        found = valid & (np.abs(np.nan_to_num(z)) > OUTLIER_Z)
        if np.array_equal(found, outlier):
            break
        outlier = found
    return {"mean": mean, "sd": np.sqrt(var), "z": z, "outlier": found,
            "amplitude": float(amplitudes[best[0]]), "scale": float(scales[best[1]]),
            "on_grid_edge": bool(best[0] in (0, AMPLITUDES - 1) or best[1] in (0, SCALES - 1)),
            "log_marginal_likelihood": ll, "amplitudes": amplitudes, "scales": scales}


def smoothed_screen(dtec, dtec_sd, flagged, multimodal, index, axes, coords):
    """The smoothing stage over all problems: one GP series per (ant, dir, pol) over time
    (:func:`smooth_screen`). Returns the ``smoothed_screen`` group (on the ``problem``
    dimension) and its summary for the diagnostics.

    ``dtec`` and ``dtec_sd`` are each problem's solution, the heaviest mode's mean and that
    mode's sd: a multimodal posterior's overall sd spans its modes, which would hide a wrong
    mode from the outlier test; with the mode's own width it stands out and is left out."""
    times = np.asarray(axes["time"], np.float64)
    order = np.argsort(times, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    sizes = (len(axes["ant"]), len(axes["dir"]), len(axes["pol"]))
    series = np.ravel_multi_index((index["ant"], index["dir"], index["pol"]), sizes)
    column = rank[index["time"]]
    shape = (int(np.prod(sizes)), times.size)
    grid_values, grid_sd = np.zeros(shape), np.ones(shape)
    grid_valid = np.zeros(shape, bool)
    grid_values[series, column] = dtec
    grid_sd[series, column] = dtec_sd
    grid_valid[series, column] = ~np.asarray(flagged, bool)
    screen = smooth_screen(times[order], grid_values, grid_sd, grid_valid)
    smooth, smooth_sd = screen["mean"][series, column], screen["sd"][series, column]
    z, outlier = screen["z"][series, column], screen["outlier"][series, column]
    change = np.abs(smooth - dtec)
    group = xr.Dataset(
        {"dtec_smooth": ("problem", smooth, {"units": "TECU", "long_name": "GP-smoothed dTEC (posterior mean)"}),
         "dtec_smooth_sd": ("problem", smooth_sd, {"units": "TECU"}),
         "outlier_z": ("problem", z, {"long_name": "leave-one-out residual of the problem's solution / its sd"}),
         "outlier": ("problem", outlier.astype(np.int8), {"long_name": "|outlier_z| > 3"})},
        coords={"problem": np.arange(dtec.size), **{k: ("problem", np.asarray(v)) for k, v in coords.items()}})
    multimodal = np.asarray(multimodal, bool)
    summary = {
        "model": "per (ant, dir, pol): dTEC(t) ~ GP(weighted mean, amplitude^2 Matern-3/2(scale)), observed "
                 "with the per-problem posterior sd; amplitude and scale shared, type-II maximum likelihood on a grid",
        "amplitude_tecu": screen["amplitude"], "time_scale_s": screen["scale"],
        "hyperparameters_on_grid_edge": screen["on_grid_edge"],
        "num_outliers": int(outlier.sum()), "num_multimodal_outliers": int((outlier & multimodal).sum()),
        "median_change_at_outliers_tecu": float(np.median(change[outlier])) if outlier.any() else 0.0,
        "median_change_elsewhere_tecu": float(np.median(change[~outlier & ~np.asarray(flagged, bool)]))
        if (~outlier).any() else 0.0,
    }
    return group, summary
