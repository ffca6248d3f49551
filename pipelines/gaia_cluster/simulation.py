"""gaia-cluster's simulator: :func:`simulate` writes a Gaia-like catalog drawn from the model
and its truth sidecar (:func:`truth_path`); the draws from the cluster profiles.

numpy only at import (astropy where the table is written): the package imports this module
when the CLI lists the pipelines. The module is not called ``simulate``: importing a
submodule sets it as the package's attribute of that name, which would replace the
:func:`simulate` the package exports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from astroinfer.errors import OutputError
from astroinfer.tables import check_simulate_target, write_simulated

from .options import (
    GLOBALS, HALO_COMPONENTS, KM_S_PER_MAS_YR_KPC, MIN_STARS, NAME, PROFILES, SIMULATED_FIELDS, _halo_scales,
)

#: The proper-motion truths :func:`simulate` adds with ``proper_motions``: M67's mean motion
#: (Gaia DR3) and an internal velocity dispersion (km/s; 0.15 mas/yr at 850 pc). The
#: field's tangential velocities (km/s, mean and sd per axis) are a rough thin disc seen
#: towards M67.
PM_TRUTH = {"cluster_pmra": -10.97, "cluster_pmdec": -2.94, "cluster_velocity_dispersion": 0.6}
FIELD_VELOCITY_MEAN = (-20.0, -8.0)
FIELD_VELOCITY_SD = (35.0, 22.0)
FIELD_VELOCITY_CORR = 0.3

_WRITE_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".vot": "votable", ".xml": "votable"}


def gaia_parallax_error(g_mag: np.ndarray) -> np.ndarray:
    """Gaia DR3 parallax uncertainty (mas) against G, a fit to the DR3 documentation's
    curve (Lindegren et al. 2021, Fig. 7): about 0.02 mas at G < 14, 0.1 at 17, 0.5 at 20."""
    z = 10 ** (0.4 * (np.maximum(g_mag, 13.0) - 15.0))
    return np.sqrt(40 + 800 * z + 30 * z**2) / 1000.0


def simulate_catalog(rng: np.random.Generator, num_stars: int, truth: dict[str, float],
                     profile: str = "lognormal", field: str = "model") -> dict[str, np.ndarray]:
    """Stars: membership, distance, G magnitude, parallax error, parallax. ``field="model"``:
    from the model itself (the field's r^2 exp(-r / field_scale), G uniform in 11-19.5);
    ``"disc"``: the Galactic field of :mod:`.disc_field`, every star's G from a luminosity
    function through the magnitude limit (``field_scale`` is then not used)."""
    member = rng.uniform(size=num_stars) < truth["member_fraction"]
    r_cluster = _draw_cluster_distances(rng, profile, truth["cluster_distance"], truth["cluster_size"], num_stars)
    if field == "disc":
        from .disc_field import draw_field, draw_magnitudes

        r_field, g_field = draw_field(rng, num_stars)
        r = np.where(member, r_cluster, r_field)
        g = np.where(member, draw_magnitudes(rng, r_cluster), g_field)
    else:
        r = np.where(member, r_cluster, rng.gamma(3.0, truth["field_scale"], size=num_stars))
        g = rng.uniform(11.0, 19.5, size=num_stars)
    error = gaia_parallax_error(g)
    parallax = 1000.0 / r + truth.get("parallax_offset", 0.0) + error * rng.normal(size=num_stars)
    return {"member": member, "distance": r, "phot_g_mean_mag": g, "parallax_error": error, "parallax": parallax}


def simulate_proper_motions(rng: np.random.Generator, member: np.ndarray, distance: np.ndarray,
                            parallax_error: np.ndarray, truth: dict[str, float]) -> dict[str, np.ndarray]:
    """Gaia-like proper motions (mas/yr) for the stars of :func:`simulate_catalog`.

    Members: the cluster's mean motion plus an isotropic velocity dispersion at each
    member's own distance. Field stars: a
    tangential velocity from a correlated Gaussian (:data:`FIELD_VELOCITY_MEAN` and
    ``_SD``) divided by 4.74 times the star's distance in kpc, so nearby field stars move
    fast on the sky and distant ones slowly: not the model's own distance-independent
    field mixture. Errors follow the parallax error (Gaia DR3's proper-motion errors in
    mas/yr are close to its parallax errors in mas; pmdec's a tenth smaller), with a
    correlation uniform in (-0.4, 0.4)."""
    n = member.size
    sd = np.array(FIELD_VELOCITY_SD)
    cov = np.array([[sd[0] ** 2, FIELD_VELOCITY_CORR * sd[0] * sd[1]],
                    [FIELD_VELOCITY_CORR * sd[0] * sd[1], sd[1] ** 2]])
    velocity = rng.multivariate_normal(FIELD_VELOCITY_MEAN, cov, size=n)
    field_pm = velocity / (KM_S_PER_MAS_YR_KPC * distance[:, None] / 1000.0)
    cluster_pm = (np.array([truth["cluster_pmra"], truth["cluster_pmdec"]])
                  + truth["cluster_velocity_dispersion"] / (KM_S_PER_MAS_YR_KPC * distance[:, None] / 1000.0)
                  * rng.normal(size=(n, 2)))
    true_pm = np.where(member[:, None], cluster_pm, field_pm)
    error = np.stack([parallax_error, 0.9 * parallax_error], axis=1)
    corr = rng.uniform(-0.4, 0.4, size=n)
    z = rng.normal(size=(n, 2))
    noise = np.stack([z[:, 0], corr * z[:, 0] + np.sqrt(1 - corr**2) * z[:, 1]], axis=1) * error
    measured = true_pm + noise
    return {"pmra": measured[:, 0], "pmdec": measured[:, 1], "pmra_error": error[:, 0],
            "pmdec_error": error[:, 1], "pmra_pmdec_corr": corr}


def _draw_cluster_distances(rng, profile: str, distance: float, size: float, n: int) -> np.ndarray:
    """``n`` distances (pc) from the cluster profile, truncated at r > 0."""
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


def simulate(path: str | os.PathLike, seed: int = 0, *, num_stars: int = 500, profile: str = "lognormal",
             proper_motions: bool = False, field: str = "model", truth: dict[str, float] | None = None) -> dict[str, Any]:
    """Write a synthetic Gaia-like catalog (.csv, .ecsv, .fits or .vot) and its truth.

    Defaults give an M67-like field: cluster at 850 pc, size 15 pc, 40% members, field scale
    500 pc. Positions are uniform in a 0.5 degree disc around (132.85, 11.81). With
    ``proper_motions`` the catalog also has Gaia's proper-motion columns
    (:func:`simulate_proper_motions`; the truth gets :data:`PM_TRUTH`). ``field="disc"``
    draws the field from a Galactic disc through Gaia's magnitude limit
    (:mod:`.disc_field`), not from the model's family; its truth has no ``field_scale``.
    The truth (with each star's true distance and membership) goes to ``<name>.truth.json``.
    """
    # astropy here, not at the top: the package imports this module at CLI start-up.
    from astropy.table import Table

    path = Path(path)
    ext = check_simulate_target(path, seed, _WRITE_FORMATS)
    if num_stars < MIN_STARS:
        raise OutputError(f"num_stars must be at least {MIN_STARS}, got {num_stars}")
    if profile not in PROFILES:
        raise OutputError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if field not in SIMULATED_FIELDS:
        raise OutputError(f"field must be one of {', '.join(SIMULATED_FIELDS)}, got {field!r}")
    params = {"cluster_distance": 850.0, "cluster_size": 15.0, "member_fraction": 0.4, "field_scale": 500.0,
              "parallax_offset": 0.0, **(PM_TRUTH if proper_motions else {}), **(truth or {})}
    known = GLOBALS + tuple(PM_TRUTH if proper_motions else ())
    unknown = set(params) - set(known)
    if unknown:
        raise OutputError(f"unknown truth parameter(s) {', '.join(sorted(unknown))}; expected {', '.join(known)}")
    rng = np.random.default_rng(seed)
    stars = simulate_catalog(rng, num_stars, params, profile, field)
    if field == "disc":
        del params["field_scale"]  # not a parameter of this field
    radius = 0.5 * np.sqrt(rng.uniform(size=num_stars))
    angle = rng.uniform(0, 2 * np.pi, size=num_stars)
    dec = 11.814 + radius * np.sin(angle)
    ra = 132.846 + radius * np.cos(angle) / np.cos(np.deg2rad(dec))
    source_id = 598690000000000000 + np.sort(rng.choice(10**9, size=num_stars, replace=False)).astype(np.int64)
    table = Table({"source_id": source_id, "ra": ra, "dec": dec, "parallax": stars["parallax"],
                   "parallax_error": stars["parallax_error"], "phot_g_mean_mag": stars["phot_g_mean_mag"]})
    units = [("ra", "deg"), ("dec", "deg"), ("parallax", "mas"), ("parallax_error", "mas"), ("phot_g_mean_mag", "mag")]
    if proper_motions:
        for name, values in simulate_proper_motions(rng, stars["member"], stars["distance"], stars["parallax_error"],
                                                    params).items():
            table[name] = values
        units += [("pmra", "mas / yr"), ("pmdec", "mas / yr"), ("pmra_error", "mas / yr"),
                  ("pmdec_error", "mas / yr"), ("pmra_pmdec_corr", None)]
    for name, unit in units:
        if unit is not None:
            table[name].unit = unit
        table[name].format = ".8g"
    record = {
        "pipeline": NAME, "seed": int(seed), "num_stars": int(num_stars), "profile": profile,
        **({"proper_motions": True} if proper_motions else {}), **({"field": field} if field != "model" else {}),
        "truth": params,
        "member_rows": np.flatnonzero(stars["member"]).tolist(),
        "distance_pc": np.round(stars["distance"], 3).tolist(),
        "model": ("cluster (profile) + exponentially decreasing space density field" if field == "model" else
                  "cluster (profile) + thin and thick exponential disc towards M67 through G < 20.5, magnitudes "
                  "from a luminosity function")
                 + "; parallax = 1000/r + offset + Normal(0, parallax_error), errors from a Gaia DR3 error-vs-G curve"
                 + ("; proper motions: members the cluster's mean + dispersion, field stars disc-like tangential "
                    "velocities over their distance" if proper_motions else ""),
    }
    write_simulated(path, table, _WRITE_FORMATS[ext], record,
                    ecsv_meta={k: record[k] for k in ("pipeline", "seed", "truth", "profile")})
    return record
