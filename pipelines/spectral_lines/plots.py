"""spectral-lines: the fit figure (data, lines and continuum from the posterior, residuals)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from .derived import model_curves

if TYPE_CHECKING:
    from astroinfer.result import Result


def fit_figure(result: "Result"):
    """Data, posterior-predictive lines and continuum (median and 90% band), and residuals."""
    x, flux, error, per_line, continuum = model_curves(result)
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
