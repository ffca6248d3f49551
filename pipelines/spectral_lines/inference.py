"""spectral-lines: the pipeline's ``sample`` hook, the fixed-K fit and the result's finishing.

:func:`sample` chooses K by evidence for ``--lines auto`` (:mod:`.evidence`), fits the K-line
model with the method asked for (NUTS started at :mod:`.starts` / :mod:`.gp_start`'s point),
and :func:`finalise` adds the physical per-line variables, the data and the K comparison.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from numpyro import handlers

from .data import _messages
from .derived import _fixed_values, _units, derived_quantities
from .evidence import choose_by_evidence, choose_continuum
from .gp_start import gp_continuum_start
from .numpyro_model import fixed_gp_sites, line_centres_np, model
from .options import LOG_BAYES_FACTOR_FOR_A_LINE
from .residuals import residual_check
from .starts import initial_values, least_squares_start

if TYPE_CHECKING:
    from astroinfer.pipeline import PreparedRun
    from astroinfer.result import Result


def sample(prepared: "PreparedRun", progress: bool) -> "Result":
    """The pipeline's ``sample`` hook: K from ``--lines`` or chosen by evidence, the K-line fit,
    :func:`finalise`; the run layer then records and saves it."""
    loaded = prepared.loaded
    meta = loaded.metadata
    auto_continuum = loaded.data["continuum"] == "auto"
    choice = None
    if meta["lines"] == "auto":
        choice = choose_by_evidence(prepared, progress)
    elif auto_continuum:
        choice = choose_continuum(prepared, progress)
    if choice is None:
        settings = dict(loaded.data)
    else:
        settings = {**loaded.data, "num_lines": choice.num_lines, **choice.continuum}
    # K (and the degree) chosen by evidence; the posterior of the chosen model comes from the
    # method asked for: nested sampling's own draws when that is the method and the model
    # sampled was the one reported (with --continuum auto it had no coefficients to report).
    if choice is not None and meta["lines"] == "auto" and prepared.method == "nested" and not auto_continuum:
        result = choice.result
    else:
        result = _fit_fixed_k(prepared, settings, progress)
    continuum_choice = None
    if choice is not None and choice.degree_probability is not None:
        continuum_choice = {"degree_probability": choice.degree_probability, "chosen": settings["degree"]}
    comparison = None if choice is None else choice.comparison
    finalise(result, settings, meta, getattr(meta, "arrays", {}), comparison, continuum_choice)
    return result


def _fit_fixed_k(prepared: "PreparedRun", settings: dict, progress: bool) -> "Result":
    """Sample the K-line model. With ``gp_hyperparameters="fixed"`` (GP continuum) the GP
    hyperparameters are first set to their joint MAP values and stored in
    ``settings["gp_fixed"]`` (``settings`` is changed in place: :func:`finalise` reads it)."""
    overrides: dict[str, Any] = {"data": settings}
    if prepared.method == "nuts" and "dense_mass" not in prepared.options:
        # Blended lines make centre, width and amplitude strongly correlated: a dense
        # mass matrix (a few parameters only) keeps NUTS trajectories short.
        overrides["dense_mass"] = True
    hold_gp = (settings["continuum"] == "gp"
               and prepared.loaded.metadata.get("gp_hyperparameters", "sample") == "fixed")
    start_nuts = prepared.method == "nuts" and "init" not in prepared.options
    if start_nuts or hold_gp:
        if settings["continuum"] == "gp":
            start = gp_continuum_start(settings)
        else:  # no compilation: the least-squares point of lines + polynomial
            start = least_squares_start(settings, initial_values(settings))
        if hold_gp:
            sites = fixed_gp_sites(settings)
            settings["gp_fixed"] = np.array([start[name] for name in sites], dtype=np.float32)
            start = {k: v for k, v in start.items() if k not in sites}
        if start_nuts:
            overrides["model"] = _started_at(start)
    return prepared.sample_model(progress=progress, **overrides)


def _started_at(values: dict[str, np.ndarray]):
    """``model`` with ``values`` stored in its sites, so NUTS's init_to_median starts there.

    NumPyro's init strategies keep a value a site already holds; the sampler's own
    substitution of the current parameters overrides it, so only the start changes.
    """

    def started(**kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*skipping initialization of site.*")
            with handlers.substitute(data=values):
                return model(**kwargs)

    return started


def finalise(result: "Result", settings: dict, meta: dict, arrays: dict, comparison: dict | None = None,
             continuum_choice: dict | None = None) -> "Result":
    """Add the physical per-line variables (``line`` dimension, units), the data, the K choice
    and (``--continuum auto``) the degree choice."""
    result.idata.posterior = _posterior_with_lines(result.idata.posterior, settings, meta, arrays)
    groups = {"constant_data": _constant_data(result, settings, meta, arrays)}
    if "observed_data" in result.idata.groups():  # the data in physical units, not standardised
        result.idata.observed_data = xr.Dataset({"flux": ("pixel", groups["constant_data"]["flux"].values)},
                                                attrs={"units": meta.get("flux_unit") or ""})
    if comparison is not None:
        groups["model_comparison"] = _model_comparison(result, comparison, meta)
    if continuum_choice is not None:
        groups["continuum_comparison"] = _continuum_comparison(result, continuum_choice)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result.idata.add_groups(groups)
    result.diagnostics["num_lines"] = int(settings["num_lines"])
    result.diagnostics["residual_structure"], residual_messages = residual_check(result)
    messages = _messages(meta) + residual_messages
    if messages:
        result.diagnostics["warnings"] = list(result.diagnostics.get("warnings", [])) + messages
    return result


def _posterior_with_lines(posterior: xr.Dataset, settings: dict, meta: dict, arrays: dict) -> xr.Dataset:
    """``posterior`` with its extra dimensions named ``line`` (``coefficient`` for the
    polynomial), the ordered centres ``center_u`` and the derived ``line_*`` variables."""
    renames = {}
    for name, values in posterior.data_vars.items():
        extra = [d for d in values.dims if d not in ("chain", "draw")]
        if not extra:
            continue
        target = {"continuum_coef": "coefficient"}.get(name, "line")
        renames.update({d: target for d in extra})
    new_vars = {}
    for name, values in posterior.data_vars.items():
        dims = tuple(renames.get(d, d) for d in values.dims)
        new_vars[name] = xr.DataArray(values.values, dims=dims)
    if "center_q" in new_vars and "center_u" not in new_vars:  # the ordered centres (not a model site)
        q = new_vars["center_q"]
        new_vars["center_u"] = xr.DataArray(line_centres_np(q.values).astype(q.dtype), dims=q.dims)
    units = _units(meta)
    for name, values in derived_quantities(new_vars, settings, meta, arrays).items():
        new_vars[name] = xr.DataArray(values, dims=("chain", "draw", "line"),
                                      attrs={"units": units[name]})
    num_lines = settings["num_lines"]
    coords = {"chain": posterior.coords["chain"].values, "draw": posterior.coords["draw"].values}
    if num_lines:
        coords["line"] = np.arange(num_lines)
    return xr.Dataset(new_vars, coords=coords, attrs=dict(posterior.attrs))


def _constant_data(result: "Result", settings: dict, meta: dict, arrays: dict) -> xr.Dataset:
    """The data in physical units, the model settings and the standardisation (what the plots
    need); held-fixed GP hyperparameters are also recorded in ``result.diagnostics``."""
    std = meta["standardisation"]
    constant = {"x": ("pixel", np.asarray(arrays["x_values"], dtype=np.float64)),
                "flux": ("pixel", np.asarray(arrays["flux_values"], dtype=np.float64))}
    if arrays.get("error_values") is not None:
        constant["error"] = ("pixel", np.asarray(arrays["error_values"], dtype=np.float64))
    model_settings = {k: settings[k] for k in ("num_lines", "profile", "continuum", "degree", "kernel", "sign")}
    attrs = {**{k: (str(v) if isinstance(v, str) else int(v)) for k, v in model_settings.items()},
             "jitter": int(bool(settings["jitter"])), "x_unit": meta.get("x_unit") or "",
             "flux_unit": meta.get("flux_unit") or "", "axis": meta.get("axis") or "",
             **{k: float(v) for k, v in std.items()}}
    fixed = _fixed_values(settings)
    if fixed:  # empirical Bayes: the plots' continuum needs the fixed values
        attrs["gp_hyperparameters"] = "fixed"
        attrs.update({f"fixed_{name}": value for name, value in fixed.items()})
        result.diagnostics["gp_hyperparameters_fixed"] = fixed
    return xr.Dataset(constant, attrs=attrs)


def _model_comparison(result: "Result", comparison: dict, meta: dict) -> xr.Dataset:
    """The evidence of every K (``--lines auto``); the chosen K also goes into ``result.diagnostics``."""
    dataset = xr.Dataset(
        {"log_evidence_by_k": ("k", comparison["log_evidence"]),
         "log_evidence_err_by_k": ("k", comparison["log_evidence_err"]),
         "log_bayes_factor": ("k", comparison["log_bayes_factor"])},
        coords={"k": comparison["k"]},
        attrs={"chosen_num_lines": int(comparison["chosen"]),
               "log_bayes_factor": "log Z(K) - log Z(chosen K)",
               "selection_rule": "fewest lines whose log Z is within min_log_bayes_factor of the greatest",
               "min_log_bayes_factor": float(meta.get("min_log_bayes_factor", LOG_BAYES_FACTOR_FOR_A_LINE))})
    result.diagnostics["log_evidence_by_k"] = {int(k): float(v) for k, v in
                                               zip(comparison["k"], comparison["log_evidence"])}
    result.diagnostics["chosen_num_lines"] = int(comparison["chosen"])
    return dataset


def _continuum_comparison(result: "Result", choice: dict) -> xr.Dataset:
    """``--continuum auto``: the posterior probability of every polynomial degree (for the
    chosen K) and the degree fitted; the degree also goes into ``result.diagnostics``."""
    probability = np.asarray(choice["degree_probability"], dtype=np.float64)
    result.diagnostics["continuum_degree"] = int(choice["chosen"])
    return xr.Dataset({"degree_probability": ("degree", probability)},
                      coords={"degree": np.arange(probability.size)},
                      attrs={"chosen_degree": int(choice["chosen"]), "max_degree": int(probability.size - 1),
                             "basis": "Legendre polynomials of the standardised axis",
                             "selection_rule": "the most probable degree under a uniform prior on 0..max_degree, "
                                               "the coefficients integrated out"})
