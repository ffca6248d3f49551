"""spectral-lines: ``--lines auto``: nested-sampling fits for K = 0..max_lines and the choice of K.

:func:`nested_fit` runs the engine's nested sampler (``method="nested"``) with
``share_compiled``: the spectrum is an argument of the compiled code, so every spectrum of the
same pixel count and K reuses it (``--lines auto`` over many spectra, as in the calibration,
compiles each K once). :func:`choose_by_evidence` runs it for every K and applies
:func:`choose_num_lines`. With ``--continuum auto`` every run integrates over the
polynomial's degree (:mod:`.auto_continuum`) and the chosen K's most probable degree is the
continuum of the fit; :func:`choose_continuum` does that for a fixed K.
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from astroinfer.engine import sample
from astroinfer.errors import ConvergenceWarning
from astroinfer.store import record_input

from . import auto_continuum
from .numpyro_model import STRUCTURE_KEYS, add_line_centres, model
from .options import LOG_BAYES_FACTOR_FOR_A_LINE, NAME

if TYPE_CHECKING:
    from astroinfer.pipeline import PreparedRun
    from astroinfer.result import Result

AUTO_LIVE_POINTS = 200
# With a GP continuum the K-line posterior has a wide, low mode where the GP (at its shortest
# scales) absorbs a line; with 200 live points the K = 3 runs settled there for 7 of 20
# simulated 3-line spectra, and with 400 they found the line in 6 of those 7.
AUTO_LIVE_POINTS_GP = 400


def _as_arguments(data: dict) -> dict:
    """``data`` with its numbers that vary between spectra (the amplitude and width bounds) as
    float32 scalars: arguments of the compiled code rather than constants compiled in. The
    model's structure (``STRUCTURE_KEYS``) stays static; ``value_only``: nested sampling never
    differentiates the density."""
    out = {k: (np.float32(v) if k not in STRUCTURE_KEYS and isinstance(v, float) else v) for k, v in data.items()}
    return {**out, "value_only": True}


def nested_fit(data: dict, seed: int = 0, *, num_samples: int = 1000, progress: bool = False,
               **options: Any) -> dict[str, Any]:
    """Nested sampling of the model on ``data`` with the engine (``method="nested"``), the
    compiled code shared by every spectrum of the same size and structure; ``options`` are the
    nested sampler's (``num_live_points`` defaults to :data:`AUTO_LIVE_POINTS` here).

    With ``continuum="auto"`` the model is :func:`.auto_continuum.model` (the polynomial's
    coefficients integrated out, its degree 0..``data["degree"]`` a parameter).

    Returns ``result`` (the engine's :class:`~astroinfer.Result`), its ``log_evidence`` and
    ``log_evidence_err``, ``draws``: the equally weighted draws (chains joined, with
    ``center_u``), and for ``continuum="auto"`` ``degree_probability``: the posterior of the
    degree.
    """
    options.setdefault("num_live_points", AUTO_LIVE_POINTS)
    auto = data["continuum"] == "auto"
    fn, arguments = ((auto_continuum.model, auto_continuum.model_data(data, data["degree"])) if auto
                     else (model, data))
    result = sample(fn, _as_arguments(arguments), method="nested", seed=seed, num_samples=num_samples,
                    progress=progress, share_compiled=True, **options)
    draws = add_line_centres({name: values.values.reshape((-1,) + values.shape[2:])
                              for name, values in result.idata.posterior.data_vars.items()})
    out = {"result": result, "log_evidence": result.log_evidence, "log_evidence_err": result.log_evidence_err,
           "draws": draws}
    if auto:
        out["degree_probability"] = auto_continuum.degree_probabilities(draws[auto_continuum.DEGREE_SITE],
                                                                        data["degree"])
    return out


def _nested_options(prepared: "PreparedRun") -> dict[str, Any]:
    # Evidence for several K: fewer live points than a single nested run's default keep
    # --lines auto quick; evidence errors stay ~0.3-0.5, far below the log Bayes factors of
    # lines with SNR >= 10 (a GP continuum needs more: AUTO_LIVE_POINTS_GP). The run's own
    # nested options win.
    allowed = ("num_live_points", "num_delete", "num_inner_steps", "termination", "max_iterations",
               "steps_per_chunk", "num_volume_simulations")
    options = {k: v for k, v in prepared.options.items() if k in allowed} if prepared.method == "nested" else {}
    gp = prepared.loaded.data["continuum"] == "gp"
    options.setdefault("num_live_points", AUTO_LIVE_POINTS_GP if gp else AUTO_LIVE_POINTS)
    return options


def choose_num_lines(ks: list[int], log_z: np.ndarray, min_log_bayes_factor: float) -> int:
    """The number of lines ``--lines auto`` reports: the fewest lines whose log-evidence is
    within ``min_log_bayes_factor`` of the greatest (0: the greatest log-evidence). A model with
    fewer lines is set aside only when the best model's evidence exceeds its own by more than that."""
    log_z = np.asarray(log_z, dtype=float)
    return ks[int(np.flatnonzero(log_z >= log_z.max() - min_log_bayes_factor)[0])]


class EvidenceChoice(NamedTuple):
    """The number of lines chosen, the evidence of every K (``comparison``; None for a fixed K),
    the chosen K's nested-sampling result (pipeline and input recorded in its provenance for
    ``--lines auto``) and, for ``--continuum auto``, the continuum chosen (``continuum``: the fit's ``continuum`` and
    ``degree``; ``degree_probability``: the chosen K's posterior of the degree)."""

    num_lines: int
    comparison: dict[str, Any] | None
    result: "Result"
    continuum: dict[str, Any]
    degree_probability: np.ndarray | None = None


def _run_k(prepared: "PreparedRun", k: int, progress: bool) -> dict[str, Any]:
    if progress:
        print(f"spectral-lines: K = {k} line(s), nested sampling", file=sys.stderr)
    # A K with too few or too many lines may sample poorly; only the chosen K's
    # warnings matter, and they stay in its diagnostics.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return nested_fit({**prepared.loaded.data, "num_lines": k}, seed=prepared.seed, progress=progress,
                          num_samples=prepared.num_samples, **_nested_options(prepared))


def _chosen_continuum(data: dict, degree_probability: np.ndarray | None) -> dict[str, Any]:
    """The fit's continuum: the most probable degree for ``--continuum auto``, else as given."""
    if degree_probability is None:
        return {"continuum": data["continuum"], "degree": data["degree"]}
    return {"continuum": "poly", "degree": int(np.argmax(degree_probability))}


def choose_continuum(prepared: "PreparedRun", progress: bool) -> EvidenceChoice:
    """``--continuum auto`` with a fixed K: one nested run of that K over the degrees."""
    k = prepared.loaded.data["num_lines"]
    run = _run_k(prepared, k, progress)
    probability = run["degree_probability"]
    return EvidenceChoice(k, None, run["result"], _chosen_continuum(prepared.loaded.data, probability), probability)


def choose_by_evidence(prepared: "PreparedRun", progress: bool) -> EvidenceChoice:
    """Nested sampling (:func:`nested_fit`) for K = 0..max_lines, then :func:`choose_num_lines`."""
    loaded = prepared.loaded
    meta = loaded.metadata
    runs = {k: _run_k(prepared, k, progress) for k in range(meta["max_lines"] + 1)}
    ks = sorted(runs)
    log_z = np.array([runs[k]["log_evidence"] for k in ks])
    log_z_err = np.array([runs[k]["log_evidence_err"] for k in ks])
    best = choose_num_lines(ks, log_z, meta.get("min_log_bayes_factor", LOG_BAYES_FACTOR_FOR_A_LINE))
    comparison = {"k": np.array(ks), "log_evidence": log_z, "log_evidence_err": log_z_err,
                  "log_bayes_factor": log_z - log_z[ks.index(best)], "chosen": best}
    chosen = runs[best]["result"]
    record_input(chosen.provenance, pipeline=NAME, input_path=prepared.input_path)
    probability = runs[best].get("degree_probability")
    return EvidenceChoice(best, comparison, chosen, _chosen_continuum(loaded.data, probability), probability)
