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
"""

from __future__ import annotations

from typing import Any

import numpy as np

OUTLIER_Z = 3.0
MAX_PASSES = 6
AMPLITUDES = 12
SCALES = 16


def _series_fns():
    import jax
    import jax.numpy as jnp
    from tinygp import GaussianProcess, kernels

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
    import jax

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
