"""spectral-lines: the per-line table, the evidence of every K, ``show`` and ``summarise``.

numpy only at import (pandas where the table is made): the package imports this module for
``PIPELINE.show`` and ``PIPELINE.summarise`` when the CLI only lists the pipelines. The fit
figure, which needs JAX, is in :mod:`.plots`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from astroinfer.pipeline import PipelineData

from .options import LINE_VARIABLES

if TYPE_CHECKING:
    from astroinfer.result import Result


def line_table(result: "Result", interval: float = 0.9):
    """Per-line posterior mean, sd and central ``interval`` of every line_* variable."""
    import pandas as pd  # here, not at the top: the package imports this module at CLI start-up

    posterior = result.idata.posterior
    rows = []
    lo_q, hi_q = 0.5 - interval / 2, 0.5 + interval / 2
    for name in LINE_VARIABLES:
        if name not in posterior:
            continue
        values = np.asarray(posterior[name]).reshape(-1, posterior.sizes["line"])
        unit = posterior[name].attrs.get("units", "")
        for line in range(values.shape[1]):
            v = values[:, line]
            rows.append({"line": line, "quantity": name, "mean": v.mean(), "sd": v.std(ddof=1),
                         f"q{lo_q:.0%}": np.quantile(v, lo_q), f"q{hi_q:.0%}": np.quantile(v, hi_q),
                         "units": unit})
    return pd.DataFrame(rows)


def _evidence_text(result: "Result") -> str:
    if "model_comparison" not in result.idata.groups():
        return ""
    comp = result.idata.model_comparison
    chosen = int(comp.attrs.get("chosen_num_lines"))
    lines = ["number of lines chosen by nested-sampling evidence:",
             "   K   log Z            ln Bayes factor vs chosen"]
    for k, log_z, err, bf in zip(comp["k"].values, comp["log_evidence_by_k"].values,
                                  comp["log_evidence_err_by_k"].values, comp["log_bayes_factor"].values):
        mark = "  <- chosen" if int(k) == chosen else ""
        lines.append(f"  {int(k):2d}   {log_z:10.3f} +- {err:5.3f}   {bf:9.3f}{mark}")
    return "\n".join(lines)


def _continuum_text(result: "Result") -> str:
    if "continuum_comparison" not in result.idata.groups():
        return ""
    comp = result.idata.continuum_comparison
    probability = comp["degree_probability"].values
    likely = ", ".join(f"{d}: {p:.2f}" for d, p in enumerate(probability) if p >= 0.01)
    return (f"continuum degree chosen by evidence (Legendre, 0..{int(comp.attrs['max_degree'])}): "
            f"{int(comp.attrs['chosen_degree'])}; posterior probability by degree {likely}")


def show(result: "Result") -> str:
    """Per-line table (and the evidence of every K for --lines auto, the continuum's degree
    for --continuum auto)."""
    parts = [text for text in (_evidence_text(result), _continuum_text(result)) if text]
    if "line" in result.idata.posterior.dims:
        table = line_table(result)
        with_fmt = table.to_string(index=False, float_format=lambda v: f"{v:.6g}")
        parts.append("per-line posterior (mean, sd, 90% interval):\n" + with_fmt)
    else:
        parts.append("no lines in the model (K = 0): the spectrum is continuum and noise")
    return "\n\n".join(parts)


def summarise(result: "Result", data: PipelineData) -> dict[str, Any]:
    """Per-line table and the evidence comparison (when K was chosen by evidence)."""
    out: dict[str, Any] = {}
    if "line" in result.idata.posterior.dims:
        out["lines"] = line_table(result)
    evidence = _evidence_text(result)
    if evidence:
        out["evidence"] = evidence
    continuum = _continuum_text(result)
    if continuum:
        out["continuum"] = continuum
    if not out:
        out["lines"] = "no lines in the model (K = 0)"
    return out
