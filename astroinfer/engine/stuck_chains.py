"""Chains stuck in a minor mode: found by their log density and dropped from a result.

A mixture model can hold a chain in a local mode whose log density is hundreds of nats
below the main one (on a simulated Gaia cone whose cluster moves with the field's core, one
of two chains settled where the field's proper-motion core held the members, 1470 nats
down). Such a mode holds a fraction of about e^-gap of the posterior mass, so the draws
of that chain are not draws of the posterior; R-hat flags them but every summary is then
an average of two different answers. :func:`drop_stuck_chains` removes those chains,
recomputes the convergence diagnostics on the rest and stores a warning saying which were
dropped and why.

The rule is deliberately loose: a chain is dropped only when its mean log density is more
than ``gap`` nats (default 50) and more than 10 within-chain sds below the best chain's.
Chains exploring the same mode differ in mean log density by about sd / sqrt(ESS), far
less. It is for NUTS results (draws with a per-draw ``lp``); a pipeline calls it where its
model is known to have such modes, the engine does not call it on its own.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from astroinfer.engine.diagnostics import convergence_diagnostics
from astroinfer.engine.prior_pull import prior_pull_warnings
from astroinfer.result import Result

__all__ = ["stuck_chains", "drop_stuck_chains", "STUCK_GAP"]

STUCK_GAP = 50.0


def stuck_chains(lp: np.ndarray, gap: float = STUCK_GAP) -> list[int]:
    """Indices of the chains (rows of ``lp``, chain x draw log densities) that are stuck:
    mean more than ``gap`` nats and 10 sds of the best chain below the best chain's."""
    lp = np.asarray(lp, dtype=np.float64)
    means = lp.mean(axis=1)
    best = int(np.argmax(means))
    threshold = max(gap, 10.0 * float(lp[best].std()))
    return [int(c) for c in np.flatnonzero(means < means[best] - threshold)]


def drop_stuck_chains(result: Result, model: Callable, data: dict[str, Any], gap: float = STUCK_GAP) -> list[int]:
    """Remove :func:`stuck_chains` from ``result`` (posterior and sample stats), recompute its
    R-hat, ESS, divergences and prior-pull warnings, and add a warning naming the dropped
    chains; returns their indices (none: ``result`` untouched)."""
    idata = result.idata
    if "sample_stats" not in idata.groups() or "lp" not in idata.sample_stats or idata.posterior.sizes["chain"] < 2:
        return []
    lp = np.asarray(idata.sample_stats["lp"])
    dropped = stuck_chains(lp, gap)
    if not dropped:
        return []
    keep = [c for c in range(lp.shape[0]) if c not in dropped]
    means = lp.mean(axis=1)
    for group in ("posterior", "sample_stats"):
        subset = getattr(idata, group).isel(chain=keep)
        setattr(idata, group, subset.assign_coords(chain=np.arange(len(keep))))
    diag = result.diagnostics
    diag.update(convergence_diagnostics(idata, result.method))
    if "diverging" in idata.sample_stats:
        diag["divergences"] = int(np.asarray(idata.sample_stats["diverging"]).sum())
    # The engine's convergence and prior-pull messages are made again from the kept chains.
    from astroinfer.engine import _convergence_warnings
    from astroinfer.engine.run import MethodRun

    fresh = _convergence_warnings(diag, result.method, MethodRun(posterior={}))
    best = float(means.max())
    gaps = ", ".join(f"chain {c} ({best - means[c]:.0f} nats below)" for c in dropped)
    fresh.append(f"dropped {len(dropped)} chain(s) stuck in a minor mode: {gaps}; the summaries use the other "
                 f"{len(keep)}")
    diag["warnings"] = fresh + prior_pull_warnings(model, data, idata.posterior)
    diag["dropped_chains"] = dropped
    return dropped
