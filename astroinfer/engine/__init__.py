"""The shared inference engine: any NumPyro model, three methods, one ``Result``.

``sample(model, data, method=...)`` validates the options, runs the method and turns its
output into an ``arviz.InferenceData`` with diagnostics and provenance. Each method follows
the protocol of :mod:`astroinfer.engine.method` (``check``, ``build``, ``run``), so
``sample`` is a thin loop over it. The engine knows no pipeline.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import arviz as az
import numpy as np
from numpyro import handlers

from astroinfer.engine import flowmc, nested, nuts
from astroinfer.engine.diagnostics import convergence_diagnostics
from astroinfer.engine.method import Method, build_for, is_count
from astroinfer.engine.model import ModelBridge
from astroinfer.engine.prior_pull import prior_pull_warnings
from astroinfer.engine.run import MethodRun
from astroinfer.engine.timing import CompileTimer
from astroinfer.errors import ConvergenceWarning, ModelError, OptionError
from astroinfer.result import Result
from astroinfer.store import provenance, utc_now

__all__ = [
    "sample", "METHODS", "method_defaults", "validate_options", "check_settings",
    "ModelError", "OptionError", "ConvergenceWarning",
]

METHODS: dict[str, Method] = {"nuts": nuts.METHOD, "nested": nested.METHOD, "flowmc": flowmc.METHOD}


def method_defaults(method: str) -> dict[str, Any]:
    """The options of ``method`` ("nuts", "nested" or "flowmc") with their default values."""
    check_method(method)
    return dict(METHODS[method].defaults)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise OptionError(f"unknown method '{method}': expected one of {', '.join(METHODS)}")


def validate_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``options``; unknown keys and wrongly typed values are refused."""
    check_method(method)
    return METHODS[method].check(options)


def check_settings(method: str, seed: Any, num_samples: Any, options: dict[str, Any],
                   validate: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Refuse a bad method, seed, sample count or option; return the resolved options.

    :func:`sample` calls it first; pipelines call it before reading any data. ``validate``
    checks the method and its options (default :func:`validate_options`; a batch pipeline
    passes the batch engine's).
    """
    resolved = (validate or validate_options)(method, dict(options))  # also checks the method name
    if not is_count(num_samples) or num_samples < 1:
        raise OptionError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not is_count(seed) or seed < 0:
        raise OptionError(f"seed must be a non-negative integer, got {seed!r}")
    return resolved


def _to_idata(run: MethodRun, observed: dict[str, np.ndarray]) -> az.InferenceData:
    idata = az.from_dict(
        posterior=run.posterior,
        sample_stats=run.sample_stats or None,
        observed_data=observed or None,
    )
    if run.extra_groups:
        idata.add_groups(run.extra_groups)
    return idata


def _observed_data(model: Callable, data: dict[str, Any]) -> dict[str, np.ndarray]:
    trace = handlers.trace(handlers.seed(model, 0)).get_trace(**data)
    return {
        name: np.asarray(site["value"])
        for name, site in trace.items()
        if site["type"] == "sample" and site["is_observed"]
        and type(site["fn"]).__name__ != "Unit"  # numpyro.factor terms are not data
    }


def sample(
    model: Callable,
    data: dict[str, Any] | None = None,
    method: str = "nuts",
    seed: int = 0,
    num_samples: int = 1000,
    *,
    progress: bool = False,
    share_compiled: bool = False,
    **options: Any,
) -> Result:
    """Run one inference of ``model(**data)`` and return a :class:`~astroinfer.Result`.

    Parameters
    ----------
    model:
        A NumPyro model function, called as ``model(**data)``.
    data:
        Keyword arguments for the model (observations, covariates, settings).
    method:
        ``"nuts"`` (NumPyro NUTS), ``"nested"`` (nested sampling with log-evidence) or
        ``"flowmc"`` (normalizing-flow global proposals over local MALA/HMC moves).
    seed:
        The same seed gives bitwise-identical draws.
    num_samples:
        Posterior draws per chain (NUTS, flow-MC) or equally weighted draws (nested).
    progress:
        Show progress on the terminal.
    share_compiled:
        Compile once for data of this structure and these array shapes and reuse the code
        in later calls (the data are arguments of the compiled code, see
        :mod:`astroinfer.engine.method`): for many problems of one size. The draws of a
        seed may then differ in the last bits from those of the default, which compiles
        the data in.
    options:
        Method options; ``method_defaults(method)`` lists them with their defaults.
    """
    resolved = check_settings(method, seed, num_samples, options)
    data = dict(data or {})
    chosen = METHODS[method]
    started = utc_now()
    with CompileTimer() as timer:
        if share_compiled:
            built = build_for(chosen, model, data, resolved)
        else:
            built = chosen.build(ModelBridge(model, data), resolved)
        # By default the data are compiled in: XLA folds terms computed from the data (a prior
        # scaled from them) while compiling and rounds them differently from the same terms
        # computed at run time; compiled in, a seed gives bitwise the draws of earlier versions.
        run = chosen.run(built, data, seed=seed, num_samples=num_samples, progress=progress,
                         data_as_constants=not share_compiled)
    finished = utc_now()
    idata = _to_idata(run, _observed_data(model, data))
    diagnostics = {
        **convergence_diagnostics(idata, method),
        **run.diagnostics,
        "compile_time_s": timer.compile_seconds,
        "run_time_s": timer.run_seconds,
        "wall_time_s": timer.wall_seconds,
        "backend_compiles": timer.backend_compiles,
    }
    diagnostics["warnings"] = _convergence_warnings(diagnostics, method, run)
    for message in diagnostics["warnings"]:
        warnings.warn(message, ConvergenceWarning, stacklevel=2)
    # Not a sampling problem but a modelling one: stored with the result, shown by `show`.
    diagnostics["warnings"] += prior_pull_warnings(model, data, idata.posterior)
    record = provenance(
        method=method,
        options={**resolved, "num_samples": num_samples},
        seed=seed,
        started=started,
        finished=finished,
    )
    return Result(
        idata=idata,
        method=method,
        log_evidence=run.log_evidence,
        log_evidence_err=run.log_evidence_err,
        diagnostics=diagnostics,
        provenance=record,
    )


def _convergence_warnings(diag: dict[str, Any], method: str, run: MethodRun) -> list[str]:
    messages = []
    r_hat = diag.get("r_hat_max")
    if r_hat is not None and np.isfinite(r_hat) and r_hat > 1.01:
        messages.append(f"R-hat up to {r_hat:.3f} (> 1.01): chains disagree; run longer or check the model")
    if diag.get("divergences", 0) > 0:
        messages.append(f"{diag['divergences']} divergent transitions: the posterior may be biased")
    ess = diag.get("ess_bulk_min")
    if ess is not None and np.isfinite(ess) and ess < 100:
        messages.append(f"bulk ESS as low as {ess:.0f} (< 100): too few effective draws")
    if run.log_evidence_err is not None and run.log_evidence_err > 0.5:
        messages.append(f"log-evidence error {run.log_evidence_err:.2f} (> 0.5): use more live points")
    if method == "nested" and not run.diagnostics.get("converged", True):
        messages.append("nested sampling stopped at max_iterations before reaching its termination criterion")
    return messages
