"""gaia-cluster's ``sample`` hook: NUTS (or the method asked for) on the globals, with the
field term tabulated where that pays off, then the per-star conditionals stored in the
result's ``stars`` (and, on request, ``star_draws``) groups.

The module is not called ``sample``: importing a submodule sets it as the package's
attribute of that name, which would replace the hook the package exports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import xarray as xr

from astroinfer.engine.stuck_chains import drop_stuck_chains

from .data import GaiaData
from .marginal import _inside_field_table, with_field_table
from .field_mixture import with_field_components
from .options import (FIELD_WEIGHTS, FLOWMC_SETTINGS, GLOBALS, LIKELY_MEMBER, NUTS_SETTINGS, OFFSET_FIELD, PM_GLOBALS,
                      PM_NUTS_SETTINGS)
from .report import _print_selection, field_predictive_check
from .stars import star_conditionals

if TYPE_CHECKING:
    from astroinfer.pipeline import PreparedRun
    from astroinfer.result import Result


def _table_pays_off(options: dict[str, Any]) -> bool:
    """The field table's switch between table and quadrature (``lax.cond``) runs one branch
    only when the chains are not vectorised (on CPU, unless asked); vectorised, it runs both."""
    return jax.default_backend() == "cpu" and options.get("chain_method", "auto") != "vectorized"


def _star_groups(loaded: GaiaData, stars: dict[str, np.ndarray], num_keep: int) -> dict[str, xr.Dataset]:
    """The result's ``stars`` group (per-star summaries and catalog columns on a ``star``
    dimension with a ``source_id`` coordinate) and, when ``num_keep``, ``star_draws``."""
    info = loaded.stars
    coords = {"source_id": ("star", np.asarray(info["source_id"], dtype=np.int64))}
    table = xr.Dataset(
        {
            "distance": ("star", stars["distance"], {"units": "pc", "long_name": "posterior mean distance"}),
            "distance_sd": ("star", stars["distance_sd"], {"units": "pc"}),
            "distance_q05": ("star", stars["distance_q05"], {"units": "pc"}),
            "distance_q50": ("star", stars["distance_q50"], {"units": "pc"}),
            "distance_q95": ("star", stars["distance_q95"], {"units": "pc"}),
            "membership": ("star", stars["membership"], {"long_name": "posterior probability of cluster membership"}),
            "ra": ("star", info["ra"], {"units": "deg"}),
            "dec": ("star", info["dec"], {"units": "deg"}),
            "parallax": ("star", np.asarray(loaded.data["parallax"], dtype=np.float64),
                         {"units": "mas", "long_name": "parallax used (zero point subtracted)"}),
            "parallax_error": ("star", np.asarray(loaded.data["parallax_error"], dtype=np.float64), {"units": "mas"}),
            "zero_point": ("star", info["zero_point"], {"units": "mas"}),
        },
        coords=coords,
    )
    if "field_group" in loaded.data:
        table["field_group"] = ("star", np.asarray(loaded.data["field_group"], dtype=np.int32),
                                {"long_name": "the star's field group (its set of field mixture weights)"})
    if "offset_basis" in loaded.data:  # the offset field's basis: each star's offset is basis @ offset_field
        table["offset_basis"] = (("star", "offset_mode"), np.asarray(loaded.data["offset_basis"], dtype=np.float32),
                                 {"units": "mas", "long_name": "offset field basis (systematics gp)"})
    if "pmra" in info:
        table["pmra"] = ("star", info["pmra"], {"units": "mas/yr"})
        table["pmdec"] = ("star", info["pmdec"], {"units": "mas/yr"})
        table["proper_motion_used"] = ("star", np.asarray(info["proper_motion_used"], dtype=np.int8),
                                       {"long_name": "1 where the star's proper motion entered its membership"})
    groups = {"stars": table}
    if num_keep:
        pick = np.linspace(0, stars["distance_draws"].shape[0] - 1, num_keep).round().astype(int)
        groups["star_draws"] = xr.Dataset(
            {"distance": (("sample", "star"), stars["distance_draws"][pick], {"units": "pc"}),
             "membership": (("sample", "star"), stars["membership_draws"][pick])},
            coords=coords)
    return groups


def sample(prepared: "PreparedRun", progress: bool = False) -> "Result":
    """NUTS (dense mass matrix unless set; the field term tabulated, see
    :func:`with_field_table`) on the globals, then per-star conditionals."""
    loaded = prepared.loaded
    if progress:
        _print_selection(loaded.metadata)
    overrides: dict[str, Any] = {}
    table_domain = None
    if loaded.data.get("field_model") == "mixture":
        # The mixture's component terms are exact constants (unless the offset moves the
        # field's parallaxes): computed once, for every method.
        overrides["data"] = with_field_components(loaded.data)
    if prepared.method == "nuts":
        settings = {**NUTS_SETTINGS, **(PM_NUTS_SETTINGS if "proper_motion" in loaded.data else {})}
        overrides.update({k: v for k, v in settings.items() if k not in prepared.options})
        if loaded.data.get("field_model", "edsd") == "edsd" and _table_pays_off(prepared.options):
            overrides["data"] = with_field_table(loaded.data)
            table_domain = overrides["data"]["field_table_domain"]
    if prepared.method == "flowmc":
        overrides.update({k: v for k, v in FLOWMC_SETTINGS.items() if k not in prepared.options})
    result = prepared.sample_model(progress=progress, **overrides)
    if prepared.method == "nuts":
        # A chain can settle in a minor mode of the mixture (see astroinfer.engine.stuck_chains);
        # the warning it stores is printed with the run's others.
        drop_stuck_chains(result, prepared.pipeline.model, overrides.get("data", loaded.data))
    posterior = result.idata.posterior
    draws = {k: np.asarray(posterior[k]) for k in GLOBALS + PM_GLOBALS + (FIELD_WEIGHTS, OFFSET_FIELD)
             if k in posterior}
    if table_domain is not None:
        field_offset = draws.get("parallax_offset", 0.0) if loaded.data.get("offset_in_field", True) else 0.0
        inside = np.asarray(_inside_field_table(table_domain, np.log(draws["field_scale"]), field_offset))
        result.diagnostics["field_table_scale_range_pc"] = [float(np.exp(table_domain[0] - table_domain[1])),
                                                            float(np.exp(table_domain[0] + table_domain[1]))]
        result.diagnostics["field_table_draws_inside"] = float(inside.mean())
    num_keep = int(loaded.metadata.get("star_draws", 0))
    stars = star_conditionals(draws, loaded.data["parallax"], loaded.data["parallax_error"],
                              profile=loaded.data["profile"], num_draws=max(200, num_keep), seed=prepared.seed,
                              offset_in_field=bool(loaded.data.get("offset_in_field", True)),
                              proper_motion=loaded.data if "proper_motion" in loaded.data else None,
                              field_group=loaded.data.get("field_group"),
                              offset_basis=loaded.data.get("offset_basis"))
    result.idata.add_groups(_star_groups(loaded, stars, num_keep))
    field_predictive_check(result, loaded.metadata)  # the provenance is attached later
    result.diagnostics["likely_members"] = int((stars["membership"] > LIKELY_MEMBER).sum())
    result.diagnostics["expected_members"] = float(stars["membership"].sum())
    return result
