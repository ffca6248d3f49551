"""The one result type every inference method returns, and :func:`load` for result files.

``Result`` is the plain fields the store reads and writes (:class:`astroinfer.store.ResultFields`)
with the methods users call on them; this module uses the store, never the other way round.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import arviz as az

from astroinfer import store

__all__ = ["Result", "load"]


@dataclass
class Result(store.ResultFields):
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

    @classmethod
    def from_fields(cls, fields: store.ResultFields) -> "Result":
        """The result with the fields of ``fields`` (the same objects, not copies)."""
        return cls(**{f.name: getattr(fields, f.name) for f in dataclasses.fields(store.ResultFields)})

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
        return store.save(self, path)


def load(path: str | os.PathLike) -> Result:
    """Read a result file written by :meth:`Result.save`."""
    return Result.from_fields(store.load(path))
