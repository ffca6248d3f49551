"""Reading and validating a Gaia table (:func:`load`, one named step per check or cut), the
parallax zero point of Lindegren et al. (2021), and the model's prior settings.

numpy only at import (astropy where a table is read, the zero-point package where it is
used): the package imports this module when the CLI lists the pipelines.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from astroinfer.errors import InputError
from astroinfer.pipeline import PipelineData
from astroinfer.tables import READ_FORMATS, extension, find_column, float_column, read_table, shown_columns

from .options import (
    FIELD_MODELS, MAX_FIELD_GROUPS, STARS_PER_FIELD_GROUP, MIN_STARS, NAME, OFFSET_MODES, PM_COLUMNS,
    SYSTEMATICS_MODES, PM_CORRELATION_COLUMN, PM_MODES, PROFILES, REQUIRED, ZERO_POINT_COLUMNS,
)

_EXPECTED = f"a Gaia table (FITS, VOTable, ECSV or CSV) with columns {', '.join(REQUIRED)}"


@dataclass
class GaiaData(PipelineData):
    """A validated Gaia catalog: model keyword arguments, metadata, and per-star columns
    (``source_id``, ``ra``, ``dec``, raw parallax, zero point) for the result's star table."""

    stars: dict[str, np.ndarray] = field(default_factory=dict)


class _Columns(NamedTuple):
    """The required columns, read and checked (parallaxes in mas)."""

    source_id: np.ndarray
    parallax: np.ndarray
    parallax_unit: str | None
    error: np.ndarray
    error_unit: str | None
    ra: np.ndarray
    dec: np.ndarray


@dataclass
class _Selection:
    """The rows kept so far, the count after each step (``metadata["selection"]``) and the
    rows dropped for bad values (``metadata["dropped"]``)."""

    keep: np.ndarray
    steps: list[dict[str, Any]]
    dropped: dict[str, int] = field(default_factory=dict)

    def cut(self, mask: np.ndarray, step: str) -> None:
        self.keep = self.keep & mask
        self.steps.append({"step": step, "kept": int(self.keep.sum())})


# -- reading and validation ----------------------------------------------------------
def _in_unit(table, path: Path, name: str, target: str = "mas",
             expected: str = "a parallax in mas (an angle)") -> tuple[np.ndarray, str | None]:
    """A column in ``target`` units (and its unit as written, None without one); a unit that
    does not convert is refused with ``expected`` in the message, one that does is converted."""
    # astropy here, not at the top: the package imports this module at CLI start-up.
    import astropy.units as u

    values = float_column(table, path, name)
    unit = getattr(table[name], "unit", None)
    if unit is None or str(unit) in ("", "None"):
        return values, None
    try:
        factor = u.Unit(unit).to(u.Unit(target))
    except Exception:
        raise InputError(f"{path}: column '{name}' has unit '{unit}'; expected {expected}") from None
    return values * factor, str(unit)


def _check_bound(path: Path, name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
        raise InputError(f"{path}: option {name} must be a finite number, got {value!r}")
    return float(value)


def _check_options(path: Path, *, zero_point: str, offset: str, profile: str, proper_motion: str, field: str,
                   systematics: str, parallax_min: float | None, parallax_max: float | None,
                   distance_guess: float | None, star_draws: int) -> None:
    """The options that are not numeric bounds (those :func:`_check_bound` checks)."""
    for name, value, allowed in (("zero_point", zero_point, ("auto", "on", "off")), ("offset", offset, OFFSET_MODES),
                                 ("profile", profile, PROFILES), ("proper_motion", proper_motion, PM_MODES),
                                 ("field", field, FIELD_MODELS), ("systematics", systematics, SYSTEMATICS_MODES)):
        if value not in allowed:
            raise InputError(f"{path}: option {name} must be one of {', '.join(allowed)}, got {value!r}")
    if systematics == "gp" and offset != "systematic":
        # The field's terms are computed once because the offset does not shift them; a
        # per-star offset in the field would make them per evaluation.
        raise InputError(f"{path}: option systematics=gp needs offset systematic (the offset field shifts the "
                         f"members' parallaxes), got offset {offset!r}")
    if parallax_min is not None and parallax_max is not None and parallax_min >= parallax_max:
        raise InputError(f"{path}: option parallax_min ({parallax_min}) must be below parallax_max ({parallax_max})")
    if distance_guess is not None and not (isinstance(distance_guess, (int, float)) and distance_guess > 0):
        raise InputError(f"{path}: option distance_guess must be a positive distance in pc, got {distance_guess!r}")
    if isinstance(star_draws, bool) or not isinstance(star_draws, (int, np.integer)) or star_draws < 0:
        raise InputError(f"{path}: option star_draws must be a non-negative integer, got {star_draws!r}")


def _required_columns(table, path: Path) -> dict[str, str]:
    """The table's name of each required column (case-insensitive match); the table has rows."""
    names = {}
    for wanted in REQUIRED:
        found = find_column(table.colnames, wanted)
        if found is None:
            raise InputError(f"{path}: column '{wanted}' is missing; expected columns {', '.join(REQUIRED)}; "
                             f"found {shown_columns(table.colnames)}")
        names[wanted] = found
    if len(table) == 0:
        raise InputError(f"{path}: the table has no rows")
    return names


def _read_columns(table, path: Path, names: dict[str, str]) -> _Columns:
    """Integer source ids with no empty value; parallax and its error in mas; ra and dec."""
    source_col = table[names["source_id"]]
    if source_col.dtype.kind not in "iu":
        raise InputError(f"{path}: column '{names['source_id']}' must hold integer Gaia source ids, got "
                         f"{source_col.dtype.kind!r} values such as {str(source_col[0])!r}")
    if np.ma.count_masked(np.ma.asarray(source_col)):
        raise InputError(f"{path}: column '{names['source_id']}' has empty values; every row needs a source_id")
    source_id = np.asarray(source_col, dtype=np.int64)
    parallax, parallax_unit = _in_unit(table, path, names["parallax"])
    error, error_unit = _in_unit(table, path, names["parallax_error"])
    ra = float_column(table, path, names["ra"])
    dec = float_column(table, path, names["dec"])
    return _Columns(source_id, parallax, parallax_unit, error, error_unit, ra, dec)


def _keep_measured(path: Path, names: dict[str, str], columns: _Columns, rows: int, selection: _Selection) -> None:
    """Keep the stars with a finite parallax and a finite, positive error; refuse a table
    with none."""
    parallax, error = columns.parallax, columns.error
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
    selection.dropped["non_finite_parallax_or_error"] = int((~finite).sum())
    selection.dropped["non_positive_error"] = int((finite & ~positive).sum())
    selection.cut(finite, "finite parallax and parallax_error")
    selection.cut(positive, "parallax_error > 0")


class _ProperMotions(NamedTuple):
    """Every row's proper motion (rows, 2), its error covariance (rows, 3: var pmra, var
    pmdec, covariance) in (mas/yr)^2, and which rows have a usable one."""

    values: np.ndarray
    cov: np.ndarray
    usable: np.ndarray
    columns: dict[str, str]


def _proper_motions(table, path: Path, proper_motion: str) -> _ProperMotions | None:
    """The catalog's proper motions in mas/yr, or None when they are not used (``off``, or
    ``auto`` with a column missing or no usable row). A row is usable when all four values are finite and both
    errors positive; the correlation is 0 where its column is absent or empty."""
    found = {c: find_column(table.colnames, c) for c in PM_COLUMNS}
    missing = [c for c, name in found.items() if name is None]
    if proper_motion == "off" or (proper_motion == "auto" and missing):
        return None
    if missing:
        raise InputError(f"{path}: option proper_motion=on needs column(s) {', '.join(missing)}, which are missing; "
                         f"use proper_motion auto or off")
    values = {wanted: _in_unit(table, path, name, "mas / yr", "a proper motion in mas/yr (an angle per time)")[0]
              for wanted, name in found.items()}
    corr_name = find_column(table.colnames, PM_CORRELATION_COLUMN)
    corr = float_column(table, path, corr_name) if corr_name is not None else np.zeros(len(table))
    if corr_name is not None:
        found[PM_CORRELATION_COLUMN] = corr_name
    corr = np.where(np.isfinite(corr), np.clip(corr, -0.99, 0.99), 0.0)
    ex, ey = values["pmra_error"], values["pmdec_error"]
    usable = (np.isfinite(values["pmra"]) & np.isfinite(values["pmdec"]) & np.isfinite(ex) & np.isfinite(ey)
              & (ex > 0) & (ey > 0))
    if not usable.any():
        if proper_motion == "auto":  # empty columns: parallaxes only, as without them
            return None
        raise InputError(f"{path}: columns {', '.join(found[c] for c in PM_COLUMNS)} have no row with finite "
                         f"proper motions and positive errors; use proper_motion auto or off")
    pm = np.where(usable[:, None], np.stack([values["pmra"], values["pmdec"]], axis=1), 0.0)
    ex, ey, corr = (np.where(usable, a, b) for a, b in ((ex, 1.0), (ey, 1.0), (corr, 0.0)))
    cov = np.stack([ex**2, ey**2, corr * ex * ey], axis=1)
    return _ProperMotions(pm, cov, usable, found)


def pm_prior_settings(parallax: np.ndarray, parallax_error: np.ndarray, proper_motion: np.ndarray,
                      usable: np.ndarray, distance_centre: float) -> dict[str, np.ndarray]:
    """The proper-motion priors' centres (mas/yr): ``pm_centre``, the densest proper motion
    of the stars whose parallax fits the cluster's (within 2 errors + 15% of 1000 /
    ``distance_centre``), and ``field_pm_centre`` / ``field_pm_spread``, the median and
    robust sd (1.4826 MAD, at least 0.5) of every usable star's.

    As with the distance prior's centre, only where sampling starts and the priors' centres
    come from here (the cluster's prior is 5 mas/yr wide), so a rough peak is enough."""
    pm = proper_motion[usable]
    centre = np.median(pm, axis=0)
    spread = np.maximum(1.4826 * np.median(np.abs(pm - centre), axis=0), 0.5)
    w_c = 1000.0 / distance_centre
    near = usable & (np.abs(parallax - w_c) < 2.0 * parallax_error + 0.15 * w_c)
    if near.sum() < 3:
        near = usable
    pm_near = proper_motion[near]
    # The densest point of a Gaussian kernel density (0.3 mas/yr) over a grid spanning the
    # near stars' central 98%.
    lo, hi = np.quantile(pm_near, [0.01, 0.99], axis=0)
    grids = [np.linspace(lo[j], hi[j], 121) for j in (0, 1)]
    gx, gy = np.meshgrid(*grids, indexing="ij")
    kernel = 0.3
    density = np.zeros(gx.shape)
    for chunk in np.array_split(pm_near, max(1, pm_near.shape[0] // 128)):
        density += np.exp(-0.5 * (((gx[..., None] - chunk[:, 0]) / kernel) ** 2
                                  + ((gy[..., None] - chunk[:, 1]) / kernel) ** 2)).sum(-1)
    i, j = np.unravel_index(np.argmax(density), density.shape)
    return {"pm_centre": np.array([gx[i, j], gy[i, j]], dtype=np.float32),
            "field_pm_centre": centre.astype(np.float32), "field_pm_spread": spread.astype(np.float32)}


def _duplicates(path: Path, column: str, source_id: np.ndarray, keep_duplicates: bool) -> tuple[int, int]:
    """The number of repeated source ids and of the rows that hold them; an error unless
    ``keep_duplicates``."""
    unique_ids, counts = np.unique(source_id, return_counts=True)
    duplicated = unique_ids[counts > 1]
    num_duplicate_rows = int(np.isin(source_id, duplicated).sum())
    if duplicated.size and not keep_duplicates:
        raise InputError(f"{path}: column '{column}' repeats {duplicated.size} id(s) over "
                         f"{num_duplicate_rows} rows (first {int(duplicated[0])}); expected one row per star, or "
                         f"give the option keep_duplicates (--keep-duplicates) to keep them all")
    return int(duplicated.size), num_duplicate_rows


def _zero_point_correction(table, path: Path, zero_point: str,
                           selection: _Selection) -> tuple[np.ndarray, np.ndarray | None]:
    """Every row's Lindegren et al. (2021) zero point (zeros when it is not applied) and which
    stars lie inside its calibration (None when it is not applied); stars for which it is
    undefined are dropped."""
    zp_columns = {c: find_column(table.colnames, c) for c in ZERO_POINT_COLUMNS}
    has_zp_columns = all(v is not None for v in zp_columns.values())
    if zero_point == "on" and not has_zp_columns:
        missing = [c for c, v in zp_columns.items() if v is None]
        raise InputError(f"{path}: option zero_point=on needs column(s) {', '.join(missing)}, which are missing; "
                         f"use zero_point auto or off")
    zp = np.zeros(len(table))
    if not (zero_point == "on" or (zero_point == "auto" and has_zp_columns)):
        return zp, None
    zp_inputs = [float_column(table, path, zp_columns[c]) for c in ZERO_POINT_COLUMNS]
    zp = lindegren_zero_point(*zp_inputs)
    in_range = zero_point_in_range(zp_inputs[0], zp_inputs[1], zp_inputs[2], zp_inputs[4])
    available = np.isfinite(zp)
    selection.dropped["zero_point_unavailable"] = int((selection.keep & ~available).sum())
    selection.cut(available, "Lindegren zero point computable")
    return np.where(available, zp, 0.0), in_range


def _cut(table, path: Path, corrected: np.ndarray, selection: _Selection, *, parallax_min: float | None,
         parallax_max: float | None, g_max: float | None, ruwe_max: float | None) -> None:
    """The parallax window (after the zero point), the magnitude limit and the RUWE limit."""
    if parallax_min is not None:
        selection.cut(corrected > parallax_min, f"parallax > {parallax_min:g} mas")
    if parallax_max is not None:
        selection.cut(corrected < parallax_max, f"parallax < {parallax_max:g} mas")
    if g_max is not None:
        g_name = find_column(table.colnames, "phot_g_mean_mag")
        if g_name is None:
            raise InputError(f"{path}: option g_max needs column 'phot_g_mean_mag', which is missing")
        g = float_column(table, path, g_name)
        selection.cut(np.isfinite(g) & (g < g_max), f"G < {g_max:g} mag")
    ruwe_name = find_column(table.colnames, "ruwe")
    if ruwe_max is not None and ruwe_name is not None:
        ruwe = float_column(table, path, ruwe_name)
        selection.cut(np.isfinite(ruwe) & (ruwe < ruwe_max), f"RUWE < {ruwe_max:g}")
    kept = int(selection.keep.sum())
    if kept < MIN_STARS:
        steps = "; ".join(f"{s['step']}: {s['kept']}" for s in selection.steps)
        raise InputError(f"{path}: {kept} star(s) left after the cuts; {NAME} needs at least {MIN_STARS} "
                         f"({steps})")


def load(path: str | os.PathLike, *, parallax_min: float | None = None, parallax_max: float | None = None,
         g_max: float | None = None, ruwe_max: float | None = 1.4, zero_point: str = "auto",
         offset: str = "systematic", profile: str = "lognormal", proper_motion: str = "auto",
         field: str = "mixture", systematics: str = "global", distance_guess: float | None = None,
         keep_duplicates: bool = False, star_draws: int = 0) -> GaiaData:
    """Read and validate a Gaia table, apply the zero point and the cuts; counts at each step
    are kept in ``metadata["selection"]``. Raises :class:`~astroinfer.errors.InputError`."""
    path = Path(path)
    bounds = {name: _check_bound(path, name, value) for name, value in
              (("parallax_min", parallax_min), ("parallax_max", parallax_max), ("g_max", g_max),
               ("ruwe_max", ruwe_max))}
    _check_options(path, zero_point=zero_point, offset=offset, profile=profile, proper_motion=proper_motion,
                   field=field, systematics=systematics, parallax_min=bounds["parallax_min"],
                   parallax_max=bounds["parallax_max"], distance_guess=distance_guess, star_draws=star_draws)

    table = read_table(path, _EXPECTED)
    names = _required_columns(table, path)
    columns = _read_columns(table, path, names)
    rows = len(table)
    selection = _Selection(keep=np.ones(rows, dtype=bool), steps=[{"step": "rows read", "kept": rows}])
    _keep_measured(path, names, columns, rows, selection)
    num_duplicated, num_duplicate_rows = _duplicates(path, names["source_id"], columns.source_id, keep_duplicates)
    zp, in_range = _zero_point_correction(table, path, zero_point, selection)
    pms = _proper_motions(table, path, proper_motion)
    corrected = columns.parallax - zp
    _cut(table, path, corrected, selection, **bounds)

    keep, applied = selection.keep, in_range is not None
    if pms is not None and not pms.usable[keep].any():
        if proper_motion == "on":
            raise InputError(f"{path}: option proper_motion=on, but none of the {int(keep.sum())} stars kept has a "
                             f"usable proper motion; use proper_motion auto or off")
        pms = None
    w, s = corrected[keep], columns.error[keep]
    centre = float(distance_guess) if distance_guess is not None else _distance_peak(w, s)
    data = {
        "parallax": w.astype(np.float32),
        "parallax_error": s.astype(np.float32),
        "profile": profile,
        "fit_offset": offset != "off",
        "offset_in_field": offset == "fit",
        "field_model": field,
        **prior_settings(centre),
    }
    if bounds["parallax_min"] is not None or bounds["parallax_max"] is not None:
        # The likelihood is conditioned on the window (.selection); an open side is infinite.
        data["parallax_window"] = np.array([-np.inf if bounds["parallax_min"] is None else bounds["parallax_min"],
                                            np.inf if bounds["parallax_max"] is None else bounds["parallax_max"]],
                                           dtype=np.float32)
    if field == "mixture":
        group, num_groups = field_groups(s)
        data.update({"field_group": group, "field_groups": num_groups})
    basis = None
    if systematics == "gp":
        from .systematics import offset_field_basis  # JAX and tinygp: not at CLI start-up

        basis = offset_field_basis(columns.ra[keep], columns.dec[keep])
        data.update({"offset_basis": basis.stars.astype(np.float32),
                     "offset_centre_basis": basis.centre.astype(np.float32)})
    if pms is not None:
        used = pms.usable[keep]
        data.update({"proper_motion": pms.values[keep].astype(np.float32),
                     "proper_motion_cov": pms.cov[keep].astype(np.float32),
                     "proper_motion_used": used.astype(np.float32),
                     **pm_prior_settings(w, s, pms.values[keep], used, centre)})
    metadata = {
        "path": str(path),
        "format": READ_FORMATS.get(extension(path), "guessed"),
        "num_rows": rows,
        "num_stars": int(keep.sum()),
        "columns": names,
        "units": {"parallax": columns.parallax_unit, "parallax_error": columns.error_unit},
        "selection": selection.steps,
        # The window the (zero-point corrected) parallaxes were cut to, None for no bound:
        # the posterior predictive check puts its replicated parallaxes through it too.
        "parallax_window_mas": [bounds["parallax_min"], bounds["parallax_max"]],
        "dropped": selection.dropped,
        "duplicated_source_ids": num_duplicated,
        "duplicate_rows_kept": num_duplicate_rows if keep_duplicates else 0,
        "zero_point": "lindegren2021" if applied else "none",
        "zero_point_median_mas": float(np.median(zp[keep])) if applied else 0.0,
        "zero_point_outside_calibration": int((keep & ~in_range).sum()) if applied else 0,
        "profile": profile,
        "offset": offset,
        "fit_offset": offset != "off",
        "systematics": systematics,
        **({} if basis is None else {
            "offset_field_nodes": basis.num_nodes, "offset_field_rank": int(basis.stars.shape[1]),
            # The share of each star's V(0) the basis carries (the rest is finer than its nodes).
            "offset_field_captured": [float(basis.captured.min()), float(basis.captured.max())]}),
        "field": field,
        "field_groups": data.get("field_groups", 0),
        "distance_prior_centre_pc": centre,
        "distance_prior_from": "option distance_guess" if distance_guess is not None else "parallax peak",
        "star_draws": int(star_draws),
        "proper_motion": "used" if pms is not None else "not used",
        "proper_motion_stars": int(pms.usable[keep].sum()) if pms is not None else 0,
        "proper_motion_columns": pms.columns if pms is not None else {},
    }
    stars = {"source_id": columns.source_id[keep], "ra": columns.ra[keep], "dec": columns.dec[keep],
             "parallax_catalog": columns.parallax[keep], "zero_point": zp[keep]}
    if pms is not None:
        used = pms.usable[keep]
        stars["pmra"] = np.where(used, pms.values[keep, 0], np.nan)  # NaN where the catalog has none
        stars["pmdec"] = np.where(used, pms.values[keep, 1], np.nan)
        stars["proper_motion_used"] = used
    return GaiaData(data=data, metadata=metadata, stars=stars)


def field_groups(error: np.ndarray) -> tuple[np.ndarray, int]:
    """Each star's field group (int32, 0 the smallest errors) and the number of groups: one
    per :data:`STARS_PER_FIELD_GROUP` stars, at most :data:`MAX_FIELD_GROUPS`, split at
    quantiles of the parallax error (a proxy for magnitude every Gaia table has)."""
    error = np.asarray(error)
    num = int(np.clip(error.size // STARS_PER_FIELD_GROUP, 1, MAX_FIELD_GROUPS))
    edges = np.quantile(error, np.arange(1, num) / num)
    return np.searchsorted(edges, error, side="right").astype(np.int32), num


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
    # Here, not at the top: only catalogs with the zero point's columns need the package,
    # and the package imports this module at CLI start-up.
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
