"""What one inference method hands back to the engine before it becomes a ``Result``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["MethodRun"]


@dataclass
class MethodRun:
    """Raw output of one method.

    posterior:
        Constrained draws (latent and deterministic sites), each of shape (chain, draw, ...).
    sample_stats:
        Per-draw statistics, each of shape (chain, draw).
    diagnostics:
        Method-specific numbers (acceptance, divergences, likelihood evaluations, ...).
    extra_groups:
        Further result-file groups (name -> ``xarray.Dataset``), e.g. nested sampling's raw
        weighted points or flow-MC's trained flow.
    """

    posterior: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    extra_groups: dict[str, xr.Dataset] = field(default_factory=dict)
    log_evidence: float | None = None
    log_evidence_err: float | None = None
