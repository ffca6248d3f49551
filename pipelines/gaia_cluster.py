"""gaia-cluster: a star cluster's distance and size, and every star's distance and membership,
from Gaia parallaxes.

Model (per star ``i`` with parallax ``w_i`` and error ``s_i`` in mas, true distance ``r_i``
in pc, true parallax ``1000 / r_i`` mas)::

    w_i | r_i        ~ Normal(1000 / r_i + parallax_offset, s_i)
    r_i              ~ member_fraction  * cluster profile(cluster_distance, cluster_size)
                       + (1 - member_fraction) * field(field_scale)
    field(L)         = r^2 exp(-r / L) / (2 L^3)      exponentially decreasing space density
    cluster profiles:  lognormal  log r ~ Normal(log D, size / D)     (the reference profile)
                       gaussian   r ~ Normal(D, size)
                       student    r ~ Student-t(3, D, size) as a Gaussian scale mixture:
                                  Normal(D, size / sqrt(lambda_k)), k = 1..8, equal weights,
                                  lambda_k the mid-quantiles of Gamma(3/2, rate 3/2)

This is the hierarchical mixture of the NumPyro introduction for astronomers, in which
NUTS samples every star's distance. Here each star's distance is integrated out of the
likelihood numerically instead: in ``u = log(parallax / mas)`` the integrand of each
component is close to a Gaussian, so an adaptive Gauss-Hermite rule centred at its mode
(a few Gauss-Newton steps from a prior/likelihood guess) with the Laplace width is accurate
with 4 nodes for the cluster term and 16 for the field term (checked against a dense
brute-force integral in ``tests/test_gaia_cluster.py``). On CPU the field term, which
depends on the globals only through ``field_scale`` and ``parallax_offset``, is tabulated
once per catalog as Chebyshev series made from that quadrature (:func:`with_field_table`).
NUTS (dense mass matrix) then samples only the globals ``cluster_distance`` (pc), ``cluster_size`` (pc),
``member_fraction``, ``field_scale`` (pc) and ``parallax_offset`` (mas, when fitted).

Per-star results are drawn afterwards from their exact conditionals given each global draw
(:func:`star_conditionals`): membership probability ``P_i = q C_i / (q C_i + (1-q) F_i)``
and distance moments by the same quadrature (Rao-Blackwellised means and sds), distance
draws by inverse-CDF sampling on a fine grid. They are stored in the result's ``stars``
group on a ``star`` dimension with a ``source_id`` coordinate (``distance``, ``membership``,
...), joinable on ``source_id``; per-star draws in ``star_draws`` on request.

The parallax zero point of Lindegren et al. (2021) is applied when the catalog has the
columns it needs (``gaiadr3-zeropoint`` package), and a global parallax offset with prior
sd 0.012 mas (the spatially correlated part of Gaia's systematics over a field under a
degree; Lindegren et al. 2021, Vasiliev & Baumgardt 2021) is fitted by default, so the
reported distance error includes the systematics.

:func:`reference_model` is the full-latent model (one latent distance per star, the
lognormal profile) used to prove that the marginalised model gives the same posterior.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from astroinfer.files import atomic_write
from astroinfer.pipeline import (
    InputError, OutputError, Pipeline, PipelineData, PipelineOption, parse_choice, parse_count, parse_positive,
)
from astroinfer.tables import READ_FORMATS, check_simulate_target, extension, float_column, read_table

if TYPE_CHECKING:
    from astroinfer.pipeline import PreparedRun
    from astroinfer.result import Result

__all__ = [
    "PIPELINE", "load", "model", "reference_model", "simulate", "summarise", "show", "truth_path",
    "lindegren_zero_point", "zero_point_in_range", "log_component_marginals", "star_conditionals", "GLOBALS", "PROFILES",
    "GaiaData", "parallax_figure", "prior_settings", "field_table", "pilot_field_scale", "with_field_table",
]

NAME = "gaia-cluster"
REQUIRED = ("source_id", "ra", "dec", "parallax", "parallax_error")
ZERO_POINT_COLUMNS = ("phot_g_mean_mag", "nu_eff_used_in_astrometry", "pseudocolour", "ecl_lat",
                      "astrometric_params_solved")
GLOBALS = ("cluster_distance", "cluster_size", "member_fraction", "field_scale", "parallax_offset")
PROFILES = ("lognormal", "gaussian", "student")
STUDENT_DOF = 3.0
HALO_COMPONENTS = 8
#: Prior sd of the global parallax offset (mas): the spatially correlated part of Gaia
#: (E)DR3's parallax systematics on scales under a degree (Lindegren et al. 2021, sect. 5.6;
#: Vasiliev & Baumgardt 2021: about 0.011 mas).
OFFSET_PRIOR_SD = 0.012
CLUSTER_NODES = 4
FIELD_NODES = 16
MIN_STARS = 10
LIKELY_MEMBER = 0.5
# NUTS defaults for the globals (options the user sets win): a dense mass matrix, since the
# four globals are correlated, and a target acceptance of 0.65, the optimum for HMC
# (Beskos et al. 2013). On M67 it gave 1.4x the minimum ESS per second of 0.8 (5.9
# instead of 8.5 leapfrog steps per draw) with no divergences.
NUTS_SETTINGS = {"dense_mass": True, "target_accept_prob": 0.65}

_WRITE_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".vot": "votable", ".xml": "votable"}
_EXPECTED = f"a Gaia table (FITS, VOTable, ECSV or CSV) with columns {', '.join(REQUIRED)}"


# -- reading and validation ----------------------------------------------------------
def _find(table, wanted: str) -> str | None:
    names = list(table.colnames)
    return wanted if wanted in names else next((n for n in names if n.lower() == wanted.lower()), None)


def _to_mas(table, path: Path, name: str) -> tuple[np.ndarray, str | None]:
    """A parallax-like column in mas; a unit that is not an angle is refused, an angle converted."""
    import astropy.units as u

    values = float_column(table, path, name)
    unit = getattr(table[name], "unit", None)
    if unit is None or str(unit) in ("", "None"):
        return values, None
    try:
        factor = u.Unit(unit).to(u.mas)
    except Exception:
        raise InputError(f"{path}: column '{name}' has unit '{unit}'; expected a parallax in mas "
                         f"(an angle)") from None
    return values * factor, str(unit)


@dataclass
class GaiaData(PipelineData):
    """A validated Gaia catalog: model keyword arguments, metadata, and per-star columns
    (``source_id``, ``ra``, ``dec``, raw parallax, zero point) for the result's star table."""

    stars: dict[str, np.ndarray] = field(default_factory=dict)


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


OPTIONS = (
    PipelineOption("parallax_min", "keep stars with parallax (after the zero point) above this, mas", None, _parse_float),
    PipelineOption("parallax_max", "keep stars with parallax (after the zero point) below this, mas", None, _parse_float),
    PipelineOption("g_max", "keep stars brighter than this G magnitude (needs phot_g_mean_mag)", None, _parse_float),
    PipelineOption("ruwe_max", "keep stars with RUWE below this when the catalog has a ruwe column", 1.4, parse_positive),
    PipelineOption("zero_point", "Lindegren et al. (2021) parallax zero point: auto (when its columns are "
                   "present), on, off", "auto", parse_choice("auto", "on", "off")),
    PipelineOption("offset", "global parallax offset, prior sd 0.012 mas: fit or off", "fit", parse_choice("fit", "off")),
    PipelineOption("profile", "cluster profile: lognormal, gaussian or student (heavy tails)", "lognormal", parse_choice(*PROFILES)),
    PipelineOption("distance_guess", "centre of the cluster-distance prior, pc [default: the peak of the "
                   "parallax distribution]", None, parse_positive),
    PipelineOption("keep_duplicates", "keep rows whose source_id repeats (else they are an error)", False, flag=True),
    PipelineOption("star_draws", "per-star distance and membership draws to store (0: summaries only)", 0, parse_count()),
)


def _check_bound(path: Path, name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
        raise InputError(f"{path}: option {name} must be a finite number, got {value!r}")
    return float(value)


def load(path: str | os.PathLike, *, parallax_min: float | None = None, parallax_max: float | None = None,
         g_max: float | None = None, ruwe_max: float | None = 1.4, zero_point: str = "auto",
         offset: str = "fit", profile: str = "lognormal", distance_guess: float | None = None,
         keep_duplicates: bool = False, star_draws: int = 0) -> GaiaData:
    """Read and validate a Gaia table, apply the zero point and the cuts; counts at each step
    are kept in ``metadata["selection"]``. Raises :class:`~astroinfer.pipeline.InputError`."""
    path = Path(path)
    parallax_min = _check_bound(path, "parallax_min", parallax_min)
    parallax_max = _check_bound(path, "parallax_max", parallax_max)
    g_max = _check_bound(path, "g_max", g_max)
    ruwe_max = _check_bound(path, "ruwe_max", ruwe_max)
    for name, value, allowed in (("zero_point", zero_point, ("auto", "on", "off")), ("offset", offset, ("fit", "off")),
                                 ("profile", profile, PROFILES)):
        if value not in allowed:
            raise InputError(f"{path}: option {name} must be one of {', '.join(allowed)}, got {value!r}")
    if parallax_min is not None and parallax_max is not None and parallax_min >= parallax_max:
        raise InputError(f"{path}: option parallax_min ({parallax_min}) must be below parallax_max ({parallax_max})")
    if distance_guess is not None and not (isinstance(distance_guess, (int, float)) and distance_guess > 0):
        raise InputError(f"{path}: option distance_guess must be a positive distance in pc, got {distance_guess!r}")
    if isinstance(star_draws, bool) or not isinstance(star_draws, (int, np.integer)) or star_draws < 0:
        raise InputError(f"{path}: option star_draws must be a non-negative integer, got {star_draws!r}")

    table = read_table(path, _EXPECTED)
    names = {}
    for wanted in REQUIRED:
        found = _find(table, wanted)
        if found is None:
            shown = ", ".join(table.colnames[:12]) + (", ..." if len(table.colnames) > 12 else "")
            raise InputError(f"{path}: column '{wanted}' is missing; expected columns {', '.join(REQUIRED)}; "
                             f"found {shown}")
        names[wanted] = found
    if len(table) == 0:
        raise InputError(f"{path}: the table has no rows")
    source_col = table[names["source_id"]]
    if source_col.dtype.kind not in "iu":
        raise InputError(f"{path}: column '{names['source_id']}' must hold integer Gaia source ids, got "
                         f"{source_col.dtype.kind!r} values such as {str(source_col[0])!r}")
    if np.ma.count_masked(np.ma.asarray(source_col)):
        raise InputError(f"{path}: column '{names['source_id']}' has empty values; every row needs a source_id")
    source_id = np.asarray(source_col, dtype=np.int64)
    parallax, parallax_unit = _to_mas(table, path, names["parallax"])
    error, error_unit = _to_mas(table, path, names["parallax_error"])
    ra = float_column(table, path, names["ra"])
    dec = float_column(table, path, names["dec"])
    rows = len(table)
    selection: list[dict[str, Any]] = [{"step": "rows read", "kept": rows}]
    dropped: dict[str, int] = {}

    finite = np.isfinite(parallax) & np.isfinite(error)
    if not np.isfinite(parallax).any():
        raise InputError(f"{path}: column '{names['parallax']}' has no finite value in any of its {rows} rows; "
                         f"expected parallaxes in mas")
    if not np.isfinite(error).any():
        raise InputError(f"{path}: column '{names['parallax_error']}' has no finite value in any of its {rows} rows")
    positive = finite & (error > 0)
    if not (error[finite] > 0).any():
        raise InputError(f"{path}: column '{names['parallax_error']}' must be > 0; all {int(finite.sum())} finite "
                         f"value(s) are <= 0")
    dropped["non_finite_parallax_or_error"] = int((~finite).sum())
    dropped["non_positive_error"] = int((finite & ~positive).sum())
    keep = positive
    selection.append({"step": "finite parallax and parallax_error", "kept": int(finite.sum())})
    selection.append({"step": "parallax_error > 0", "kept": int(keep.sum())})

    unique_ids, counts = np.unique(source_id, return_counts=True)
    duplicated = unique_ids[counts > 1]
    num_duplicate_rows = int(np.isin(source_id, duplicated).sum())
    if duplicated.size and not keep_duplicates:
        raise InputError(f"{path}: column '{names['source_id']}' repeats {duplicated.size} id(s) over "
                         f"{num_duplicate_rows} rows (first {int(duplicated[0])}); expected one row per star, or "
                         f"give the option keep_duplicates (--keep-duplicates) to keep them all")

    # Parallax zero point (Lindegren et al. 2021).
    zp_columns = {c: _find(table, c) for c in ZERO_POINT_COLUMNS}
    has_zp_columns = all(v is not None for v in zp_columns.values())
    if zero_point == "on" and not has_zp_columns:
        missing = [c for c, v in zp_columns.items() if v is None]
        raise InputError(f"{path}: option zero_point=on needs column(s) {', '.join(missing)}, which are missing; "
                         f"use zero_point auto or off")
    applied = zero_point == "on" or (zero_point == "auto" and has_zp_columns)
    zp = np.zeros(rows)
    if applied:
        zp_inputs = [float_column(table, path, zp_columns[c]) for c in ZERO_POINT_COLUMNS]
        zp = lindegren_zero_point(*zp_inputs)
        in_range = zero_point_in_range(zp_inputs[0], zp_inputs[1], zp_inputs[2], zp_inputs[4])
        available = np.isfinite(zp)
        dropped["zero_point_unavailable"] = int((keep & ~available).sum())
        keep = keep & available
        zp = np.where(available, zp, 0.0)
        selection.append({"step": "Lindegren zero point computable", "kept": int(keep.sum())})
    corrected = parallax - zp

    if parallax_min is not None:
        keep = keep & (corrected > parallax_min)
        selection.append({"step": f"parallax > {parallax_min:g} mas", "kept": int(keep.sum())})
    if parallax_max is not None:
        keep = keep & (corrected < parallax_max)
        selection.append({"step": f"parallax < {parallax_max:g} mas", "kept": int(keep.sum())})
    if g_max is not None:
        g_name = _find(table, "phot_g_mean_mag")
        if g_name is None:
            raise InputError(f"{path}: option g_max needs column 'phot_g_mean_mag', which is missing")
        g = float_column(table, path, g_name)
        keep = keep & np.isfinite(g) & (g < g_max)
        selection.append({"step": f"G < {g_max:g} mag", "kept": int(keep.sum())})
    ruwe_name = _find(table, "ruwe")
    if ruwe_max is not None and ruwe_name is not None:
        ruwe = float_column(table, path, ruwe_name)
        keep = keep & np.isfinite(ruwe) & (ruwe < ruwe_max)
        selection.append({"step": f"RUWE < {ruwe_max:g}", "kept": int(keep.sum())})
    kept = int(keep.sum())
    if kept < MIN_STARS:
        steps = "; ".join(f"{s['step']}: {s['kept']}" for s in selection)
        raise InputError(f"{path}: {kept} star(s) left after the cuts; gaia-cluster needs at least {MIN_STARS} "
                         f"({steps})")

    w, s = corrected[keep], error[keep]
    centre = float(distance_guess) if distance_guess is not None else _distance_peak(w, s)
    data = {
        "parallax": w.astype(np.float32),
        "parallax_error": s.astype(np.float32),
        "profile": profile,
        "fit_offset": offset == "fit",
        **prior_settings(centre),
    }
    metadata = {
        "path": str(path),
        "format": READ_FORMATS.get(extension(path), "guessed"),
        "num_rows": rows,
        "num_stars": kept,
        "columns": names,
        "units": {"parallax": parallax_unit, "parallax_error": error_unit},
        "selection": selection,
        "dropped": dropped,
        "duplicated_source_ids": int(duplicated.size),
        "duplicate_rows_kept": num_duplicate_rows if keep_duplicates else 0,
        "zero_point": "lindegren2021" if applied else "none",
        "zero_point_median_mas": float(np.median(zp[keep])) if applied else 0.0,
        "zero_point_outside_calibration": int((keep & ~in_range).sum()) if applied else 0,
        "profile": profile,
        "fit_offset": offset == "fit",
        "distance_prior_centre_pc": centre,
        "distance_prior_from": "option distance_guess" if distance_guess is not None else "parallax peak",
        "star_draws": int(star_draws),
    }
    stars = {"source_id": source_id[keep], "ra": ra[keep], "dec": dec[keep],
             "parallax_catalog": parallax[keep], "zero_point": zp[keep]}
    return GaiaData(data=data, metadata=metadata, stars=stars)


def prior_settings(distance_centre: float) -> dict[str, float]:
    """The model's prior settings (keyword arguments) for a cluster-distance prior centre in pc."""
    return {"distance_centre": float(distance_centre), "distance_width": 0.5, "size_centre": 10.0,
            "size_width": 1.0, "field_centre": 1000.0, "field_width": 1.0}


def _distance_peak(parallax: np.ndarray, error: np.ndarray) -> float:
    """Distance (pc) of the densest part of the precise parallaxes: the cluster's, in practice.

    Only the prior's centre comes from here (its width is a factor 1.6), so a rough peak is
    enough; a kernel density estimate in log parallax of the stars with 10% parallaxes."""
    good = (parallax > 0) & (error < 0.1 * np.abs(parallax))
    if good.sum() < 5:
        good = parallax > 2 * error
    if good.sum() < 3:
        return 1000.0
    u = np.log(parallax[good])
    grid = np.linspace(u.min(), u.max(), 512)
    width = 0.02
    density = np.exp(-0.5 * ((grid[:, None] - u[None, :]) / width) ** 2).sum(axis=1)
    return float(1000.0 / np.exp(grid[np.argmax(density)]))


# -- the Lindegren et al. (2021) zero point --------------------------------------------
def lindegren_zero_point(g_mag, nu_eff, pseudocolour, ecl_lat, params_solved) -> np.ndarray:
    """Parallax zero point (mas; subtract it from the catalog parallax) of Lindegren et al.
    (2021, A&A 649, A4) for 5- and 6-parameter solutions, through the ``gaiadr3-zeropoint``
    package (the authors' code, with their coefficient tables). NaN where it is undefined:
    2-parameter solutions or missing inputs. Outside the fitted ranges (6 < G < 21,
    1.1 < nu_eff < 1.9, 1.24 < pseudocolour < 1.72) the recipe holds its edge values, as the
    authors' code does; :func:`zero_point_in_range` tells which stars those are."""
    from zero_point import zpt

    g, nu, pc, beta, solved = (np.asarray(a, dtype=np.float64) for a in
                               (g_mag, nu_eff, pseudocolour, ecl_lat, params_solved))
    out = np.full(g.shape, np.nan)
    five = (solved == 31) & np.isfinite(nu)
    six = (solved == 95) & np.isfinite(pc)
    ok = (five | six) & np.isfinite(g) & np.isfinite(beta)
    if not ok.any():
        return out
    if getattr(zpt, "j_5", None) is None:
        zpt.load_tables()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns about out-of-range stars
        # It wants arrays (numpy 2 refuses its scalar checks); fill the unused colour.
        out[ok] = zpt.get_zpt(g[ok], np.where(five, nu, 1.5)[ok], np.where(six, pc, 1.5)[ok], beta[ok], solved[ok])
    return out


def zero_point_in_range(g_mag, nu_eff, pseudocolour, params_solved) -> np.ndarray:
    """Stars inside the ranges the Lindegren et al. (2021) recipe was fitted on."""
    g, nu, pc, solved = (np.asarray(a, dtype=np.float64) for a in (g_mag, nu_eff, pseudocolour, params_solved))
    five = (solved == 31) & (nu > 1.1) & (nu < 1.9)
    six = (solved == 95) & (pc > 1.24) & (pc < 1.72)
    return (five | six) & (g > 6) & (g < 21)


# -- the marginal likelihood by adaptive Gauss-Hermite quadrature ---------------------
def _hermgauss(n: int):
    nodes, weights = np.polynomial.hermite.hermgauss(n)
    return nodes, np.log(weights) + nodes**2


def _halo_scales() -> np.ndarray:
    """Width factors of the heavy-tailed profile: a Student-t with 3 degrees of freedom is a
    Gaussian scale mixture over precision factors lambda ~ Gamma(3/2, rate 3/2); the profile
    takes the HALO_COMPONENTS mid-quantiles of that Gamma, equal weights, so its
    quadrature is that of the Gaussian profile, component by component."""
    from scipy.stats import gamma

    levels = (np.arange(HALO_COMPONENTS) + 0.5) / HALO_COMPONENTS
    lam = gamma.ppf(levels, STUDENT_DOF / 2, scale=2 / STUDENT_DOF)
    return 1.0 / np.sqrt(lam)


def _log_prior_v(v, profile: str, distance, size):
    """Cluster profile (lognormal or gaussian) as a density in ``v = u - log(1000 / distance)``,
    the log parallax relative to the cluster's (Jacobian included), its first derivative, and
    a positive curvature for Gauss-Newton.

    Relative, because a compact cluster's profile is narrower in u than float32 resolves
    around u itself (size / distance of 1e-7 or less): written in u, the profile's nodes
    collapse onto one value and the integral comes out wrong by tens of nats."""
    import jax.numpy as jnp

    if profile == "lognormal":
        tau = size / distance
        z = v / tau
        return -0.5 * z**2 - jnp.log(tau) - 0.5 * math.log(2 * math.pi), -z / tau, 1.0 / tau**2 + 0 * v
    r = distance * jnp.exp(-v)
    z = distance * jnp.expm1(-v) / size  # (r - distance) / size without cancellation
    logp = -0.5 * z**2 - jnp.log(size) - 0.5 * math.log(2 * math.pi) + jnp.log(distance) - v  # log r = log D - v
    return logp, z * r / size - 1.0, (r / size) ** 2


def _log_field_u(u, scale):
    """Exponentially decreasing space density r^2 exp(-r/L) / (2 L^3) as a density in u."""
    import jax.numpy as jnp

    r = 1000.0 * jnp.exp(-u)
    logp = 3.0 * (math.log(1000.0) - u) - r / scale - 3.0 * jnp.log(scale) - math.log(2.0)
    return logp, r / scale - 3.0, r / scale


def _log_like_u(u, parallax, error, shift=0.0):
    """Gaussian parallax likelihood at ``u + shift`` (log parallax), with its first derivative
    and Gauss-Newton curvature in u."""
    import jax.numpy as jnp

    w = jnp.exp(u + shift)
    resid = (parallax - w) / error
    logl = -0.5 * resid**2 - jnp.log(error) - 0.5 * math.log(2 * math.pi)
    return logl, resid * w / error, (w / error) ** 2


def _newton_centre(prior_fn, u0, parallax, error, steps: int, shift=0.0):
    """Gauss-Newton steps towards the mode of likelihood x prior in u (the likelihood taken
    at ``u + shift``); returns (centre, width).

    Both are returned under ``stop_gradient``. Where the nodes sit does not change the
    integral (only the quadrature error, < 0.003 nat per catalog), so gradients taken with
    the nodes held still differ from the exact ones by about 1e-4 relative. That halves the
    cost of a gradient (no back-propagation through the Newton steps). The sampler stays
    exact: the potential's value is untouched, and leapfrog steps with a slightly
    non-conservative force are still reversible and volume-preserving, so the accept
    step corrects for it."""
    import jax
    import jax.numpy as jnp

    def curvature_and_step(u):
        _, dl, hl = _log_like_u(u, parallax, error, shift)
        _, dp, hp = prior_fn(u)
        h = hl + hp
        return h, jnp.clip((dl + dp) / h, -1.0, 1.0)

    u = u0
    for _ in range(steps):  # a few steps, unrolled: a handful of elementwise operations each
        _, step = curvature_and_step(u)
        u = u + step
    h, _ = curvature_and_step(u)
    return jax.lax.stop_gradient(u), jax.lax.stop_gradient(1.0 / jnp.sqrt(h))


def _gh_terms(log_integrand, centre, width, num_nodes: int):
    """Gauss-Hermite nodes ``centre + sqrt(2) width t_k`` (last axis) and the log terms whose
    logsumexp is the log integral over u of exp(log_integrand(u))."""
    import jax.numpy as jnp

    nodes, log_weights = _hermgauss(num_nodes)
    u = centre[..., None] + math.sqrt(2.0) * width[..., None] * nodes
    terms = log_weights + log_integrand(u) + jnp.log(math.sqrt(2.0) * width)[..., None]
    return u, terms


class _Terms:
    """One star-by-node quadrature of both components for one set of globals.

    ``cluster_v``/``cluster_terms`` (stars, nodes): nodes in ``v = u - cluster_shift`` (log
    parallax relative to the cluster's, see :func:`_log_prior_v`) and log terms of the
    cluster integral (for the heavy-tailed profile the components' nodes side by side, each
    with its log weight); ``field_u``/``field_terms`` the same for the field, in u.
    """

    def __init__(self, parallax, error, profile, distance, size, scale, cluster_nodes, field_nodes):
        import jax.numpy as jnp

        w, s = parallax, error
        base = "gaussian" if profile == "student" else profile
        if profile == "student":
            sizes = size * jnp.asarray(_halo_scales(), dtype=jnp.result_type(float))[:, None]  # (K, 1)
        else:
            sizes = size
        self.sizes = sizes
        shift = jnp.log(1000.0 / distance)
        self.cluster_shift = shift

        def cluster_prior(v, sz=sizes):
            return _log_prior_v(v, base, distance, sz)

        def field_prior(u):
            return _log_field_u(u, scale)

        self.cluster_prior = cluster_prior
        self.field_prior = field_prior
        cc, cw = _newton_centre(cluster_prior, 0 * w, w, s, steps=3, shift=shift)
        self.cluster_centre, self.cluster_width = cc, cw

        def like(v):
            return _log_like_u(v, w[..., None], s[..., None], shift)[0]

        cv, ct = _gh_terms(lambda v: like(v) + cluster_prior(v, sizes[..., None] if profile == "student"
                                                             else sizes)[0], cc, cw, cluster_nodes)
        if profile == "student":  # (K, N, n) -> (N, K n), each component weighted 1/K
            k = cv.shape[0]
            cv = jnp.moveaxis(cv, 0, 1).reshape(w.shape[0], -1)
            ct = jnp.moveaxis(ct - math.log(k), 0, 1).reshape(w.shape[0], -1)
        self.cluster_v, self.cluster_terms = cv, ct
        if field_nodes:
            self.field_u, self.field_terms, self.field_centre, self.field_width = _field_quadrature(
                w, s, scale, field_nodes)


def _field_quadrature(w, s, scale, num_nodes: int):
    """Nodes in u (stars, nodes) and log terms of the field integral
    ``int N(w | e^u, s) p_field(u; scale) du`` (its logsumexp over the last axis), and the
    rule's centre and width per star."""
    import jax.numpy as jnp

    def field_prior(u):
        return _log_field_u(u, scale)

    # Start from the precision-weighted mean of the prior mode (r = 3L, curvature 3) and the
    # measured parallax (width error/parallax in u) when it is positive.
    u_prior = jnp.log(1000.0 / (3.0 * scale))
    snr2 = jnp.where(w > 0, (w / s) ** 2, 0.0)
    u_meas = jnp.log(jnp.where(w > 0, w, 1.0))
    centre, width = _newton_centre(field_prior, (3.0 * u_prior + snr2 * u_meas) / (3.0 + snr2), w, s, steps=3)
    u, terms = _gh_terms(lambda u: _log_like_u(u, w[..., None], s[..., None])[0] + field_prior(u)[0],
                         centre, width, num_nodes)
    return u, terms, centre, width


def log_component_marginals(parallax, error, *, profile="lognormal", distance, size, scale, offset=0.0,
                            cluster_nodes: int = CLUSTER_NODES, field_nodes: int = FIELD_NODES,
                            field_table=None, field_table_domain=None):
    """Per star: log of the cluster and field marginal likelihoods
    ``log int N(w | e^u + offset, s) p_c(u) du`` and the same with the field density.

    With ``field_table`` (from :func:`field_table`) the field term is read from the table
    where the globals lie inside its domain, and computed by quadrature elsewhere."""
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    w = parallax - offset
    t = _Terms(w, error, profile, distance, size, scale, cluster_nodes, field_nodes if field_table is None else 0)
    log_c = logsumexp(t.cluster_terms, axis=-1)
    if field_table is None:
        return log_c, logsumexp(t.field_terms, axis=-1)

    # Rematerialised: without it the gradient keeps (zero-filled) intermediates of both
    # branches, which costs a quarter of the gradient when the table branch is taken.
    @jax.checkpoint
    def by_quadrature(log_scale, offset):
        return logsumexp(_field_quadrature(parallax - offset, error, jnp.exp(log_scale), field_nodes)[1], axis=-1)

    def by_table(log_scale, offset):
        return _field_from_table(field_table, field_table_domain, log_scale, offset)

    log_scale = jnp.log(scale)
    offset = jnp.asarray(offset, dtype=log_scale.dtype)
    inside = _inside_field_table(field_table_domain, log_scale, offset)
    # lax.cond runs one branch (on CPU, unbatched): the table where it holds, else the
    # quadrature it was made from, so the potential is defined everywhere.
    return log_c, jax.lax.cond(inside, by_table, by_quadrature, log_scale, offset)


# -- the field term, tabulated --------------------------------------------------------
# A star's field term depends on the globals only through field_scale and parallax_offset,
# so it is tabulated once per catalog: a Chebyshev series in log field_scale over +-0.4
# around a pilot estimate (the posterior sd is about 0.015 on M67), times one in the offset
# over +-5 prior sds when it is fitted. Summing the series costs a small fraction of the 16
# quadrature nodes per star it replaces (value+gradient of the M67 likelihood, 4300
# stars: 0.45 -> 0.20 ms with the offset fixed). The series reproduce the quadrature to
# about 2e-5 nat per star, below float32's rounding of the catalog sum (checked against a
# float64 quadrature in tests/test_gaia_cluster.py).
FIELD_TABLE_HALF_WIDTH = 0.4  # in log field_scale
FIELD_TABLE_DEGREE = 12
OFFSET_TABLE_DEGREE = 6
OFFSET_TABLE_HALF_WIDTH = 5 * OFFSET_PRIOR_SD


def _chebyshev_basis(z, degree: int):
    """T_0(z) .. T_{degree-1}(z), stacked on the first axis."""
    import jax.numpy as jnp

    terms = [jnp.ones_like(z), z]
    for _ in range(2, degree):
        terms.append(2.0 * z * terms[-1] - terms[-2])
    return jnp.stack(terms[:degree])


def _chebyshev_nodes(degree: int) -> np.ndarray:
    return np.cos(np.pi * (np.arange(degree) + 0.5) / degree)


def _chebyshev_coefficients(values: np.ndarray, axis: int) -> np.ndarray:
    """Coefficients along ``axis`` of the series through values at :func:`_chebyshev_nodes`."""
    n = values.shape[axis]
    theta = np.pi * (np.arange(n) + 0.5) / n
    basis = np.cos(np.arange(n)[:, None] * theta[None, :]) * (2.0 / n)
    basis[0] /= 2.0
    return np.moveaxis(np.tensordot(basis, values, axes=([1], [axis])), 0, axis)


def _inside_field_table(domain, log_scale, offset):
    import jax.numpy as jnp

    return (jnp.abs(log_scale - domain[0]) <= domain[1]) & (jnp.abs(offset) <= domain[2])


def _field_from_table(table, domain, log_scale, offset):
    """Every star's log field term from the series (valid inside the table's domain)."""
    import jax.numpy as jnp

    degree, offset_degree, _ = table.shape
    # Products and sums rather than matrix products: XLA's CPU dot is 3x slower on these
    # thin shapes (stars long, degree short).
    if offset_degree > 1:
        coef = jnp.sum(_chebyshev_basis(offset / domain[2], offset_degree)[:, None] * table, axis=1)
    else:
        coef = table[:, 0]
    return jnp.sum(_chebyshev_basis((log_scale - domain[0]) / domain[1], degree)[:, None] * coef, axis=0)


@functools.cache
def _field_rows():
    """Compiled: log field term by quadrature, (len(log_scales), stars), one row per
    (log field_scale, offset) pair."""
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    @jax.jit
    def rows(w, s, log_scales, offsets):
        def one(args):
            log_scale, offset = args
            return logsumexp(_field_quadrature(w - offset, s, jnp.exp(log_scale), FIELD_NODES)[1], axis=-1)
        return jax.lax.map(one, (log_scales, offsets), batch_size=16)

    return rows


@functools.cache
def _pilot_scores():
    """Compiled: for each log field_scale, the best log likelihood over member fractions
    with the cluster at the given distance and size (lognormal profile)."""
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    @jax.jit
    def scores(w, s, log_scales, distance, size):
        log_f = _field_rows()(w, s, log_scales, jnp.zeros_like(log_scales))
        log_c = logsumexp(_Terms(w, s, "lognormal", distance, size, 1.0, CLUSTER_NODES, 0).cluster_terms, axis=-1)
        fractions = jnp.linspace(0.02, 0.98, 25)[:, None, None]
        like = jnp.logaddexp(jnp.log(fractions) + log_c, jnp.log1p(-fractions) + log_f)
        return like.sum(-1).max(0)

    return scores


def _as_model_floats(*arrays):
    import jax.numpy as jnp

    dtype = jnp.result_type(float)
    return [jnp.asarray(a, dtype) for a in arrays]


def pilot_field_scale(parallax, parallax_error, *, distance_centre=1000.0, size_centre=10.0, field_centre=1000.0,
                      field_width=1.0, **_) -> float:
    """A rough field_scale (pc) to centre the field table on: the best of a grid over
    field_scale (prior +-4 sd) and member_fraction, the cluster held at its prior centre.
    A poor pilot costs speed, not accuracy: outside the table the model uses quadrature."""
    log_scales = np.log(field_centre) + field_width * np.linspace(-4.0, 4.0, 49)
    like = np.asarray(_pilot_scores()(*_as_model_floats(parallax, parallax_error, log_scales, distance_centre,
                                                         size_centre)), dtype=np.float64)
    score = like - 0.5 * ((log_scales - np.log(field_centre)) / field_width) ** 2
    return float(np.exp(log_scales[np.argmax(score)]))


def field_table(parallax, error, *, scale_centre: float, fit_offset: bool) -> dict[str, np.ndarray]:
    """Model data entries: ``field_table`` (degree, offset degree, stars), every star's field
    term as Chebyshev coefficients made from the quadrature the model uses, and
    ``field_table_domain`` [centre log field_scale, its half width, largest |offset|]."""
    degree, offset_degree = FIELD_TABLE_DEGREE, OFFSET_TABLE_DEGREE if fit_offset else 1
    centre, half_width = math.log(scale_centre), FIELD_TABLE_HALF_WIDTH
    offset_max = OFFSET_TABLE_HALF_WIDTH if fit_offset else 0.0
    log_scales = centre + half_width * _chebyshev_nodes(degree)
    offsets = offset_max * _chebyshev_nodes(offset_degree) if fit_offset else np.zeros(1)
    grid_scales, grid_offsets = np.broadcast_arrays(log_scales[:, None], offsets[None, :])
    values = np.asarray(_field_rows()(*_as_model_floats(parallax, error, grid_scales.ravel(), grid_offsets.ravel())),
                        dtype=np.float64)
    coef = _chebyshev_coefficients(values.reshape(degree, offset_degree, -1), axis=0)
    if fit_offset:
        coef = _chebyshev_coefficients(coef, axis=1)
    return {"field_table": coef.astype(np.float32),
            "field_table_domain": np.array([centre, half_width, offset_max], dtype=np.float32)}


def with_field_table(data: dict[str, Any]) -> dict[str, Any]:
    """The model's data (:func:`load`'s ``data``) with the field table added, centred by
    :func:`pilot_field_scale`."""
    centre = pilot_field_scale(**data)
    return {**data, **field_table(data["parallax"], data["parallax_error"], scale_centre=centre,
                                  fit_offset=bool(data.get("fit_offset", True)))}


# -- models --------------------------------------------------------------------------
def _globals(distance_centre, distance_width, size_centre, size_width, field_centre, field_width, fit_offset):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    distance = numpyro.sample("cluster_distance", dist.LogNormal(jnp.log(distance_centre), distance_width))
    size = numpyro.sample("cluster_size", dist.LogNormal(jnp.log(size_centre), size_width))
    fraction = numpyro.sample("member_fraction", dist.Uniform(0.0, 1.0))
    scale = numpyro.sample("field_scale", dist.LogNormal(jnp.log(field_centre), field_width))
    offset = numpyro.sample("parallax_offset", dist.Normal(0.0, OFFSET_PRIOR_SD)) if fit_offset else 0.0
    return distance, size, fraction, scale, offset


def model(parallax, parallax_error, profile="lognormal", fit_offset=True, distance_centre=1000.0,
          distance_width=0.5, size_centre=10.0, size_width=1.0, field_centre=1000.0, field_width=1.0,
          field_table=None, field_table_domain=None):
    """Cluster + field mixture with every star's distance integrated out (see the module doc);
    ``field_table``/``field_table_domain`` (optional, :func:`with_field_table`) tabulate the
    field term."""
    import jax.numpy as jnp
    import numpyro

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    distance, size, fraction, scale, offset = _globals(distance_centre, distance_width, size_centre, size_width,
                                                       field_centre, field_width, fit_offset)
    w = jnp.asarray(parallax)
    s = jnp.asarray(parallax_error)
    log_c, log_f = log_component_marginals(w, s, profile=profile, distance=distance, size=size, scale=scale,
                                           offset=offset, field_table=field_table,
                                           field_table_domain=field_table_domain)
    per_star = jnp.logaddexp(jnp.log(fraction) + log_c, jnp.log1p(-fraction) + log_f)
    numpyro.factor("parallax_likelihood", jnp.sum(per_star))


def reference_model(parallax, parallax_error, profile="lognormal", fit_offset=True, distance_centre=1000.0,
                    distance_width=0.5, size_centre=10.0, size_width=1.0, field_centre=1000.0, field_width=1.0):
    """The full-latent reference: one latent distance per star (``star_distance``), drawn from
    the same mixture (lognormal cluster profile only), the same priors on the globals."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    if profile != "lognormal":
        raise ValueError("the full-latent reference model has the lognormal profile only")
    distance, size, fraction, scale, offset = _globals(distance_centre, distance_width, size_centre, size_width,
                                                       field_centre, field_width, fit_offset)
    w = jnp.asarray(parallax)
    with numpyro.plate("star", w.shape[0]):
        mixing = dist.Categorical(probs=jnp.stack([fraction, 1.0 - fraction]))
        components = [dist.LogNormal(jnp.log(distance), size / distance), dist.Gamma(3.0, 1.0 / scale)]
        r = numpyro.sample("star_distance", dist.MixtureGeneral(mixing, components))
        numpyro.sample("parallax", dist.Normal(1000.0 / r + offset, jnp.asarray(parallax_error)), obs=w)


# -- per-star conditionals given the globals -----------------------------------------
def _star_moments(w, s, profile, distance, size, fraction, scale, offset):
    """Membership probability and E[r], E[r^2] given one global draw (quadrature)."""
    import jax.numpy as jnp
    from jax.nn import softmax
    from jax.scipy.special import logsumexp

    t = _Terms(w - offset, s, profile, distance, size, scale, CLUSTER_NODES, FIELD_NODES)
    a = jnp.log(fraction) + logsumexp(t.cluster_terms, axis=-1)
    b = jnp.log1p(-fraction) + logsumexp(t.field_terms, axis=-1)
    member = jnp.exp(a - jnp.logaddexp(a, b))

    def moments(u, terms):
        weights = softmax(terms, axis=-1)
        r = 1000.0 * jnp.exp(-u)
        return (weights * r).sum(-1), (weights * r**2).sum(-1)

    m1c, m2c = moments(t.cluster_v + t.cluster_shift, t.cluster_terms)
    m1f, m2f = moments(t.field_u, t.field_terms)
    return member, member * m1c + (1 - member) * m1f, member * m2c + (1 - member) * m2f


def _star_draw(key, w, s, profile, distance, size, fraction, scale, offset, grid_points: int = 256):
    """One joint draw (membership indicator, distance) per star from its conditional."""
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    wc = w - offset
    t = _Terms(wc, s, profile, distance, size, scale, CLUSTER_NODES, FIELD_NODES)
    k1, k2, k3 = jax.random.split(key, 3)
    log_c = logsumexp(t.cluster_terms, axis=-1)
    a = jnp.log(fraction) + log_c
    b = jnp.log1p(-fraction) + logsumexp(t.field_terms, axis=-1)
    member = jnp.exp(a - jnp.logaddexp(a, b))
    is_member = jax.random.uniform(k1, w.shape) < member
    cc, cw, size_c = t.cluster_centre, t.cluster_width, t.sizes
    if profile == "student":  # pick the scale-mixture component from its posterior weight
        per_k = logsumexp(t.cluster_terms.reshape(w.shape[0], cc.shape[0], -1), axis=-1)  # (N, K)
        k = jax.random.categorical(k3, per_k, axis=-1)
        cc = jnp.take_along_axis(cc.T, k[:, None], 1)[:, 0]
        cw = jnp.take_along_axis(cw.T, k[:, None], 1)[:, 0]
        size_c = size * jnp.asarray(_halo_scales(), dtype=cc.dtype)[k]
    base = "gaussian" if profile == "student" else profile
    # Inverse CDF on a fine grid of +-10 Laplace widths about the chosen component's centre
    # (trapezoid cells, linear within a cell).
    # Members' grid is in v (log parallax relative to the cluster's), the field's in u.
    grid = jnp.linspace(-10.0, 10.0, grid_points)
    centre = jnp.where(is_member, cc, t.field_centre)
    width = jnp.where(is_member, cw, t.field_width)
    x = centre[:, None] + width[:, None] * grid
    shift = jnp.where(is_member, t.cluster_shift, 0.0)[:, None]
    prior_c = _log_prior_v(x, base, distance, size_c[:, None] if profile == "student" else size_c)[0]
    logp = (jnp.where(is_member[:, None], prior_c, t.field_prior(x)[0])
            + _log_like_u(x, wc[:, None], s[:, None], shift)[0])
    dens = jnp.exp(logp - logp.max(axis=1, keepdims=True))
    cells = 0.5 * (dens[:, 1:] + dens[:, :-1])
    cdf = jnp.concatenate([jnp.zeros((w.shape[0], 1)), jnp.cumsum(cells, axis=1)], axis=1)
    cdf = cdf / cdf[:, -1:]
    v = jax.random.uniform(k2, w.shape)
    idx = jnp.clip(jax.vmap(jnp.searchsorted)(cdf, v) - 1, 0, grid_points - 2)
    lo = jnp.take_along_axis(cdf, idx[:, None], 1)[:, 0]
    hi = jnp.take_along_axis(cdf, idx[:, None] + 1, 1)[:, 0]
    frac = jnp.clip((v - lo) / jnp.maximum(hi - lo, 1e-30), 0.0, 1.0)
    x_draw = jnp.take_along_axis(x, idx[:, None], 1)[:, 0] + frac * (x[:, 1] - x[:, 0])
    return member, 1000.0 * jnp.exp(-(x_draw + shift[:, 0])), is_member


def star_conditionals(draws: dict[str, np.ndarray], parallax, parallax_error, *, profile="lognormal",
                      num_draws: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-star posterior summaries from the global draws (flattened over chain and draw).

    ``membership`` and the distance mean/sd are Rao-Blackwellised: averages over every
    global draw of the exact conditional membership probability and distance moments;
    quantiles and the returned ``distance_draws``/``membership_draws`` come from
    ``num_draws`` global draws (evenly thinned), one conditional draw each.
    """
    import jax
    import jax.numpy as jnp

    w = jnp.asarray(parallax, dtype=jnp.float32)
    s = jnp.asarray(parallax_error, dtype=jnp.float32)
    total = draws["cluster_distance"].size
    flat = {k: jnp.asarray(np.asarray(draws[k]).reshape(-1), dtype=jnp.float32)
            for k in ("cluster_distance", "cluster_size", "member_fraction", "field_scale")}
    flat["parallax_offset"] = (jnp.asarray(np.asarray(draws["parallax_offset"]).reshape(-1), dtype=jnp.float32)
                               if "parallax_offset" in draws else jnp.zeros(total, jnp.float32))
    order = ("cluster_distance", "cluster_size", "member_fraction", "field_scale", "parallax_offset")

    @jax.jit
    def accumulate(params):
        def body(carry, p):
            member, m1, m2 = _star_moments(w, s, profile, *p)
            return (carry[0] + member, carry[1] + m1, carry[2] + m2), None
        zero = jnp.zeros_like(w)
        (sm, s1, s2), _ = jax.lax.scan(body, (zero, zero, zero), params)
        return sm, s1, s2

    params = tuple(flat[k] for k in order)
    sm, s1, s2 = accumulate(params)
    membership = np.asarray(sm, dtype=np.float64) / total
    mean = np.asarray(s1, dtype=np.float64) / total
    var = np.maximum(np.asarray(s2, dtype=np.float64) / total - mean**2, 0.0)

    pick = np.unique(np.linspace(0, total - 1, max(1, min(num_draws, total))).round().astype(int))
    keys = jax.random.split(jax.random.PRNGKey(seed), pick.size)

    @jax.jit
    def draw_all(keys, params):
        def one(args):
            key, p = args
            member, r, _ = _star_draw(key, w, s, profile, *p)
            return member, r
        return jax.lax.map(one, (keys, params))

    member_draws, distance_draws = draw_all(keys, tuple(flat[k][pick] for k in order))
    distance_draws = np.asarray(distance_draws, dtype=np.float64)
    q05, q50, q95 = np.quantile(distance_draws, [0.05, 0.5, 0.95], axis=0)
    return {"membership": membership, "distance": mean, "distance_sd": np.sqrt(var),
            "distance_q05": q05, "distance_q50": q50, "distance_q95": q95,
            "distance_draws": distance_draws, "membership_draws": np.asarray(member_draws, dtype=np.float64)}


# -- the sample, show and plot hooks -------------------------------------------------
def _print_selection(metadata: dict[str, Any]) -> None:
    steps = metadata.get("selection", [])
    print(f"{NAME}: " + "; ".join(f"{s['step']}: {s['kept']}" for s in steps), file=sys.stderr)
    dropped = {k: v for k, v in metadata.get("dropped", {}).items() if v}
    if dropped:
        print(f"{NAME}: dropped " + ", ".join(f"{v} ({k.replace('_', ' ')})" for k, v in dropped.items()),
              file=sys.stderr)
    if metadata.get("duplicate_rows_kept"):
        print(f"{NAME}: kept {metadata['duplicate_rows_kept']} rows with duplicated source_id", file=sys.stderr)
    if metadata.get("zero_point") != "none":
        print(f"{NAME}: Lindegren et al. (2021) zero point applied (median {metadata['zero_point_median_mas']:.4f} "
              f"mas; {metadata.get('zero_point_outside_calibration', 0)} star(s) outside its calibrated G/colour "
              f"range, at its edge values)", file=sys.stderr)


def _table_pays_off(options: dict[str, Any]) -> bool:
    """The field table's switch between table and quadrature (``lax.cond``) runs one branch
    only when the chains are not vectorised (on CPU, unless asked); vectorised, it runs both."""
    import jax

    return jax.default_backend() == "cpu" and options.get("chain_method", "auto") != "vectorized"


def sample(prepared: "PreparedRun", progress: bool = False) -> "Result":
    """NUTS (dense mass matrix unless set; the field term tabulated, see
    :func:`with_field_table`) on the globals, then per-star conditionals."""
    import xarray as xr

    loaded = prepared.loaded
    if progress:
        _print_selection(loaded.metadata)
    overrides: dict[str, Any] = {}
    table_domain = None
    if prepared.method == "nuts":
        overrides = {k: v for k, v in NUTS_SETTINGS.items() if k not in prepared.options}
        if _table_pays_off(prepared.options):
            overrides["data"] = with_field_table(loaded.data)
            table_domain = overrides["data"]["field_table_domain"]
    result = prepared.sample_model(progress=progress, **overrides)
    posterior = result.idata.posterior
    draws = {k: np.asarray(posterior[k]) for k in GLOBALS if k in posterior}
    if table_domain is not None:
        inside = np.asarray(_inside_field_table(table_domain, np.log(draws["field_scale"]),
                                                draws.get("parallax_offset", 0.0)))
        result.diagnostics["field_table_scale_range_pc"] = [float(np.exp(table_domain[0] - table_domain[1])),
                                                            float(np.exp(table_domain[0] + table_domain[1]))]
        result.diagnostics["field_table_draws_inside"] = float(inside.mean())
    num_keep = int(loaded.metadata.get("star_draws", 0))
    stars = star_conditionals(draws, loaded.data["parallax"], loaded.data["parallax_error"],
                              profile=loaded.data["profile"], num_draws=max(200, num_keep), seed=prepared.seed)
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
    groups = {"stars": table}
    if num_keep:
        pick = np.linspace(0, stars["distance_draws"].shape[0] - 1, num_keep).round().astype(int)
        groups["star_draws"] = xr.Dataset(
            {"distance": (("sample", "star"), stars["distance_draws"][pick], {"units": "pc"}),
             "membership": (("sample", "star"), stars["membership_draws"][pick])},
            coords=coords)
    result.idata.add_groups(groups)
    result.diagnostics["likely_members"] = int((stars["membership"] > LIKELY_MEMBER).sum())
    result.diagnostics["expected_members"] = float(stars["membership"].sum())
    return prepared.finish(result)


def _globals_table(result: "Result") -> list[str]:
    posterior = result.idata.posterior
    units = {"cluster_distance": "pc", "cluster_size": "pc", "member_fraction": "", "field_scale": "pc",
             "parallax_offset": "mas"}
    lines = []
    for name in GLOBALS:
        if name in posterior:
            values = np.asarray(posterior[name]).reshape(-1)
            lo, hi = np.quantile(values, [0.05, 0.95])
            lines.append(f"  {name:17s} {values.mean():10.4g} +- {values.std():<9.3g} {units[name]:4s}"
                         f" 90% [{lo:.4g}, {hi:.4g}]")
    return lines


def show(result: "Result") -> str:
    """The globals with 90% intervals and the number of likely members."""
    lines = ["globals (mean +- sd):", *_globals_table(result)]
    if "stars" in result.idata.groups():
        membership = np.asarray(result.idata.stars["membership"])
        likely = int((membership > LIKELY_MEMBER).sum())
        lines.append(f"likely members (membership > {LIKELY_MEMBER}): {likely} of {membership.size} stars "
                     f"(expected number {membership.sum():.1f})")
    meta = result.provenance.get("input_metadata", {})
    if meta:
        lines.append(f"profile: {meta.get('profile')}; zero point: {meta.get('zero_point')}; "
                     f"parallax offset fitted: {meta.get('fit_offset')}")
    inside = result.diagnostics.get("field_table_draws_inside")
    if inside is not None:
        low, high = result.diagnostics["field_table_scale_range_pc"]
        lines.append(f"field term tabulated for field_scale {low:.0f}-{high:.0f} pc: {100 * inside:.0f}% of draws "
                     "inside" + ("" if inside > 0.5 else " (the rest used the slower quadrature)"))
    return "\n".join(lines)


def summarise(result: "Result", data: PipelineData) -> dict[str, Any]:
    """A text block of the globals and the likely members."""
    return {"globals": show(result)}


def _posterior_predictive(result: "Result", num: int = 50, seed: int = 0):
    """Replicated parallaxes of every star for ``num`` global draws, with their component."""
    rng = np.random.default_rng(seed)
    post = result.idata.posterior
    stars = result.idata.stars
    s = np.asarray(stars["parallax_error"])
    total = post.sizes["chain"] * post.sizes["draw"]
    pick = rng.choice(total, size=min(num, total), replace=False)
    g = {k: np.asarray(post[k]).reshape(-1)[pick] for k in GLOBALS if k in post}
    profile = result.provenance.get("input_metadata", {}).get("profile", "lognormal")
    reps, members = [], []
    for j in range(pick.size):
        member = rng.uniform(size=s.size) < g["member_fraction"][j]
        r = _draw_cluster_distances(rng, profile, g["cluster_distance"][j], g["cluster_size"][j], s.size)
        r_field = rng.gamma(3.0, g["field_scale"][j], size=s.size)
        r = np.where(member, r, r_field)
        offset = g["parallax_offset"][j] if "parallax_offset" in g else 0.0
        reps.append(1000.0 / r + offset + s * rng.normal(size=s.size))
        members.append(member)
    return np.array(reps), np.array(members)


def _draw_cluster_distances(rng, profile: str, distance: float, size: float, n: int) -> np.ndarray:
    if profile == "lognormal":
        return np.exp(rng.normal(np.log(distance), size / distance, size=n))
    if profile == "gaussian":
        r = rng.normal(distance, size, size=n)
    else:  # the heavy-tailed profile: the same 8-component scale mixture as the model
        r = rng.normal(distance, size * _halo_scales()[rng.integers(HALO_COMPONENTS, size=n)])
    bad = r <= 0
    while bad.any():  # the profiles are truncated at r > 0 (D >> size in practice)
        r[bad] = _draw_cluster_distances(rng, profile, distance, size, int(bad.sum()))
        bad = r <= 0
    return r


def parallax_figure(result: "Result"):
    """Histogram of the parallaxes used, with the fitted mixture (cluster and field parts)
    and the posterior predictive (median and 90% band of replicated histograms)."""
    import matplotlib.pyplot as plt

    w = np.asarray(result.idata.stars["parallax"])
    reps, members = _posterior_predictive(result)
    lo, hi = np.quantile(w, [0.002, 0.998])
    bins = np.linspace(lo, hi, 80)
    width = bins[1] - bins[0]
    counts = np.array([np.histogram(r, bins)[0] for r in reps])
    cluster = np.array([np.histogram(r[m], bins)[0] for r, m in zip(reps, members)]).mean(0)
    fieldc = np.array([np.histogram(r[~m], bins)[0] for r, m in zip(reps, members)]).mean(0)
    centres = 0.5 * (bins[1:] + bins[:-1])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist(w, bins, color="0.8", label=f"data ({w.size} stars)")
    ax.hist(w, bins, histtype="step", color="k", lw=1.2)
    band = np.quantile(counts, [0.05, 0.5, 0.95], axis=0)
    ax.fill_between(centres, band[0], band[2], step="mid", color="C0", alpha=0.3, label="posterior predictive 90%")
    ax.step(centres, band[1], where="mid", color="C0", label="posterior predictive median")
    ax.plot(centres, cluster, color="C3", label="fitted mixture: cluster")
    ax.plot(centres, fieldc, color="C2", label="fitted mixture: field")
    ax.plot(centres, cluster + fieldc, color="k", lw=1, label="fitted mixture: total")
    ax.set(xlabel="parallax (mas)", ylabel=f"stars per {width:.3g} mas", title="gaia-cluster: parallaxes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# -- simulate -------------------------------------------------------------------------
def truth_path(path: str | os.PathLike) -> Path:
    """The truth sidecar of a simulated table: ``demo.csv`` -> ``demo.truth.json``."""
    path = Path(path)
    ext = extension(path)
    stem = path.name[: -len(ext)] if ext and path.name.lower().endswith(ext) else path.stem
    return path.with_name(f"{stem}.truth.json")


def gaia_parallax_error(g_mag: np.ndarray) -> np.ndarray:
    """Gaia DR3 parallax uncertainty (mas) against G, a fit to the DR3 documentation's
    curve (Lindegren et al. 2021, Fig. 7): about 0.02 mas at G < 14, 0.1 at 17, 0.5 at 20."""
    z = 10 ** (0.4 * (np.maximum(g_mag, 13.0) - 15.0))
    return np.sqrt(40 + 800 * z + 30 * z**2) / 1000.0


def simulate_catalog(rng: np.random.Generator, num_stars: int, truth: dict[str, float],
                     profile: str = "lognormal") -> dict[str, np.ndarray]:
    """Stars from the model itself: membership, distance, G magnitude, parallax error, parallax."""
    member = rng.uniform(size=num_stars) < truth["member_fraction"]
    r_cluster = _draw_cluster_distances(rng, profile, truth["cluster_distance"], truth["cluster_size"], num_stars)
    r = np.where(member, r_cluster, rng.gamma(3.0, truth["field_scale"], size=num_stars))
    g = rng.uniform(11.0, 19.5, size=num_stars)
    error = gaia_parallax_error(g)
    parallax = 1000.0 / r + truth.get("parallax_offset", 0.0) + error * rng.normal(size=num_stars)
    return {"member": member, "distance": r, "phot_g_mean_mag": g, "parallax_error": error, "parallax": parallax}


def simulate(path: str | os.PathLike, seed: int = 0, *, num_stars: int = 500, profile: str = "lognormal",
             truth: dict[str, float] | None = None) -> dict[str, Any]:
    """Write a synthetic Gaia-like catalog (.csv, .ecsv, .fits or .vot) and its truth.

    Defaults give an M67-like field: cluster at 850 pc, size 15 pc, 40% members, field scale
    500 pc. Positions are uniform in a 0.5 degree disc around (132.85, 11.81).
    The truth (with each star's true distance and membership) goes to ``<name>.truth.json``.
    """
    from astropy.table import Table

    path = Path(path)
    ext = check_simulate_target(path, seed, _WRITE_FORMATS)
    if num_stars < MIN_STARS:
        raise OutputError(f"num_stars must be at least {MIN_STARS}, got {num_stars}")
    if profile not in PROFILES:
        raise OutputError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    params = {"cluster_distance": 850.0, "cluster_size": 15.0, "member_fraction": 0.4, "field_scale": 500.0,
              "parallax_offset": 0.0, **(truth or {})}
    unknown = set(params) - set(GLOBALS)
    if unknown:
        raise OutputError(f"unknown truth parameter(s) {', '.join(sorted(unknown))}; expected {', '.join(GLOBALS)}")
    rng = np.random.default_rng(seed)
    stars = simulate_catalog(rng, num_stars, params, profile)
    radius = 0.5 * np.sqrt(rng.uniform(size=num_stars))
    angle = rng.uniform(0, 2 * np.pi, size=num_stars)
    dec = 11.814 + radius * np.sin(angle)
    ra = 132.846 + radius * np.cos(angle) / np.cos(np.deg2rad(dec))
    source_id = 598690000000000000 + np.sort(rng.choice(10**9, size=num_stars, replace=False)).astype(np.int64)
    table = Table({"source_id": source_id, "ra": ra, "dec": dec, "parallax": stars["parallax"],
                   "parallax_error": stars["parallax_error"], "phot_g_mean_mag": stars["phot_g_mean_mag"]})
    for name, unit in (("ra", "deg"), ("dec", "deg"), ("parallax", "mas"), ("parallax_error", "mas"),
                       ("phot_g_mean_mag", "mag")):
        table[name].unit = unit
        table[name].format = ".8g"
    record = {
        "pipeline": NAME, "seed": int(seed), "num_stars": int(num_stars), "profile": profile, "truth": params,
        "member_rows": np.flatnonzero(stars["member"]).tolist(),
        "distance_pc": np.round(stars["distance"], 3).tolist(),
        "model": "cluster (profile) + exponentially decreasing space density field; parallax = 1000/r + offset "
                 "+ Normal(0, parallax_error), errors from a Gaia DR3 error-vs-G curve",
    }
    fmt = _WRITE_FORMATS[ext]
    if fmt == "ascii.ecsv":
        table.meta["astroinfer_simulation"] = {k: record[k] for k in ("pipeline", "seed", "truth", "profile")}
    atomic_write(path, lambda tmp: table.write(tmp, format=fmt, overwrite=True), suffix=ext or ".tmp")
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    atomic_write(truth_path(path), lambda tmp: Path(tmp).write_text(text))
    return record


SIMULATE_OPTIONS = (
    PipelineOption("num_stars", "number of stars", 500, parse_count()),
    PipelineOption("profile", "cluster profile: lognormal, gaussian or student (heavy tails)", "lognormal", parse_choice(*PROFILES)),
)


PIPELINE = Pipeline(
    name=NAME,
    description="Cluster distance, size and membership from Gaia parallaxes (star distances integrated out); "
                "input a Gaia table with source_id, ra, dec, parallax, parallax_error",
    load=load,
    model=model,
    simulate=simulate,
    summarise=summarise,
    demo_file="gaia_cluster_demo.ecsv",
    demo_seed=67,
    module_file=__file__,
    options=OPTIONS,
    simulate_options=SIMULATE_OPTIONS,
    sample=sample,
    show=show,
    plots={"parallax": parallax_figure},
    # NUTS (the default) and nested sampling (evidence to compare profiles) are tested here.
)
