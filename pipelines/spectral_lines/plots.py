"""spectral-lines: the fit figure (data, lines and continuum from the posterior, residuals)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from .derived import _flat_params, _gp_continuum_at
from .numpyro_model import _profiles

if TYPE_CHECKING:
    from astroinfer.result import Result


def _model_curves(result: "Result", num_draws: int = 40, seed: int = 0):
    """(x, flux, error, lines (draws, K, N), continuum (draws, N)) in physical units."""
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
