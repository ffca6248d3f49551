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

from .options import GLOBALS, HALO_COMPONENTS, MIN_STARS, NAME, PROFILES, _halo_scales

_WRITE_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".vot": "votable", ".xml": "votable"}


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
             truth: dict[str, float] | None = None) -> dict[str, Any]:
    """Write a synthetic Gaia-like catalog (.csv, .ecsv, .fits or .vot) and its truth.

    Defaults give an M67-like field: cluster at 850 pc, size 15 pc, 40% members, field scale
    500 pc. Positions are uniform in a 0.5 degree disc around (132.85, 11.81).
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
    write_simulated(path, table, _WRITE_FORMATS[ext], record,
                    ecsv_meta={k: record[k] for k in ("pipeline", "seed", "truth", "profile")})
    return record
