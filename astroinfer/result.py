"""The one result type every inference method returns."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arviz as az

__all__ = ["Result"]


@dataclass
class Result:
    """Posterior draws, evidence and diagnostics of one run.

    Attributes
    ----------
    idata:
        ``arviz.InferenceData`` with ``posterior`` (chain, draw, ...), ``sample_stats`` and
        ``observed_data``; methods may add groups (``nested_samples`` for nested sampling).
    method:
        ``"nuts"``, ``"nested"`` or ``"flowmc"``.
    log_evidence:
        Natural-log evidence for ``method="nested"``, else ``None``.
    log_evidence_err:
        Its uncertainty (standard deviation over simulated prior-volume sequences).
    diagnostics:
        R-hat, bulk/tail ESS, divergences, acceptance, likelihood evaluations, compile and
        run time, and ``warnings`` (poor convergence) for the run.
    provenance:
        Versions, method, options, seed, input file and hash, command line, times.
    """

    idata: az.InferenceData
    method: str
    log_evidence: float | None = None
    log_evidence_err: float | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def posterior(self):
        """The posterior group as an ``xarray.Dataset``."""
        return self.idata.posterior

    def summary(self, var_names=None):
        """``arviz.summary`` of the posterior (mean, sd, HDI, MCSE, ESS, R-hat).

        Nested sampling's draws are one chain of resampled points, where R-hat and MCSE are
        undefined, so only the statistics are given for them.
        """
        kind = "all" if self.idata.posterior.sizes["chain"] > 1 else "stats"
        return az.summary(self.idata, var_names=var_names, kind=kind)

    def save(self, path: str | os.PathLike) -> Path:
        """Write to one HDF5 file atomically; see :mod:`astroinfer.store`."""
        from astroinfer import store

        return store.save(self, path)
