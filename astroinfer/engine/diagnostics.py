"""Convergence diagnostics shared by every method (R-hat, bulk and tail ESS)."""

from __future__ import annotations

import warnings
from typing import Any

import arviz as az
import numpy as np

__all__ = ["convergence_diagnostics"]


def _per_variable(dataset) -> dict[str, list | float]:
    out = {}
    for name, values in dataset.data_vars.items():
        array = np.asarray(values, dtype=float)
        out[name] = float(array) if array.ndim == 0 else array.ravel().tolist()
    return out


def _extreme(per_var: dict[str, Any], fn) -> float | None:
    values = [v for item in per_var.values() for v in np.atleast_1d(item) if np.isfinite(v)]
    return float(fn(values)) if values else None


def convergence_diagnostics(idata: az.InferenceData, method: str) -> dict[str, Any]:
    """R-hat (max over chains' variables) and bulk/tail ESS (min), per variable and overall.

    Nested sampling's equally weighted draws form one chain of resampled points, where
    R-hat is undefined; their effective size is the Kish ESS of the weights instead.
    """
    posterior = idata.posterior
    num_chains = posterior.sizes["chain"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz warns on constant draws (deterministic sites)
        ess_bulk = _per_variable(az.ess(posterior, method="bulk"))
        ess_tail = _per_variable(az.ess(posterior, method="tail"))
        r_hat = _per_variable(az.rhat(posterior)) if num_chains > 1 else {}
    result: dict[str, Any] = {
        "num_chains": int(num_chains),
        "num_draws": int(posterior.sizes["draw"]),
        "r_hat": r_hat,
        "ess_bulk": ess_bulk,
        "ess_tail": ess_tail,
        "r_hat_max": _extreme(r_hat, max),
        "ess_bulk_min": _extreme(ess_bulk, min),
        "ess_tail_min": _extreme(ess_tail, min),
    }
    if method == "nested":
        # Resampled draws repeat points, so arviz's ESS is not the information content.
        result["ess_bulk_min"] = None
        result["ess_tail_min"] = None
    return result
