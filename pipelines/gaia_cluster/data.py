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

from .options import MIN_STARS, NAME, OFFSET_MODES, PROFILES, REQUIRED, ZERO_POINT_COLUMNS

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
def _to_mas(table, path: Path, name: str) -> tuple[np.ndarray, str | None]:
    """A parallax-like column in mas; a unit that is not an angle is refused, an angle converted."""
    # astropy here, not at the top: the package imports this module at CLI start-up.
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


def _check_bound(path: Path, name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
        raise InputError(f"{path}: option {name} must be a finite number, got {value!r}")
    return float(value)


def _check_options(path: Path, *, zero_point: str, offset: str, profile: str, parallax_min: float | None,
                   parallax_max: float | None, distance_guess: float | None, star_draws: int) -> None:
    """The options that are not numeric bounds (those :func:`_check_bound` checks)."""
    for name, value, allowed in (("zero_point", zero_point, ("auto", "on", "off")), ("offset", offset, OFFSET_MODES),
                                 ("profile", profile, PROFILES)):
        if value not in allowed:
            raise InputError(f"{path}: option {name} must be one of {', '.join(allowed)}, got {value!r}")
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
    parallax, parallax_unit = _to_mas(table, path, names["parallax"])
    error, error_unit = _to_mas(table, path, names["parallax_error"])
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
         offset: str = "systematic", profile: str = "lognormal", distance_guess: float | None = None,
         keep_duplicates: bool = False, star_draws: int = 0) -> GaiaData:
    """Read and validate a Gaia table, apply the zero point and the cuts; counts at each step
    are kept in ``metadata["selection"]``. Raises :class:`~astroinfer.errors.InputError`."""
    path = Path(path)
    bounds = {name: _check_bound(path, name, value) for name, value in
              (("parallax_min", parallax_min), ("parallax_max", parallax_max), ("g_max", g_max),
               ("ruwe_max", ruwe_max))}
    _check_options(path, zero_point=zero_point, offset=offset, profile=profile, parallax_min=bounds["parallax_min"],
                   parallax_max=bounds["parallax_max"], distance_guess=distance_guess, star_draws=star_draws)

    table = read_table(path, _EXPECTED)
    names = _required_columns(table, path)
    columns = _read_columns(table, path, names)
    rows = len(table)
    selection = _Selection(keep=np.ones(rows, dtype=bool), steps=[{"step": "rows read", "kept": rows}])
    _keep_measured(path, names, columns, rows, selection)
    num_duplicated, num_duplicate_rows = _duplicates(path, names["source_id"], columns.source_id, keep_duplicates)
    zp, in_range = _zero_point_correction(table, path, zero_point, selection)
    corrected = columns.parallax - zp
    _cut(table, path, corrected, selection, **bounds)

    keep, applied = selection.keep, in_range is not None
    w, s = corrected[keep], columns.error[keep]
    centre = float(distance_guess) if distance_guess is not None else _distance_peak(w, s)
    data = {
        "parallax": w.astype(np.float32),
        "parallax_error": s.astype(np.float32),
        "profile": profile,
        "fit_offset": offset != "off",
        "offset_in_field": offset == "fit",
        **prior_settings(centre),
    }
    metadata = {
        "path": str(path),
        "format": READ_FORMATS.get(extension(path), "guessed"),
        "num_rows": rows,
        "num_stars": int(keep.sum()),
        "columns": names,
        "units": {"parallax": columns.parallax_unit, "parallax_error": columns.error_unit},
        "selection": selection.steps,
        "dropped": selection.dropped,
        "duplicated_source_ids": num_duplicated,
        "duplicate_rows_kept": num_duplicate_rows if keep_duplicates else 0,
        "zero_point": "lindegren2021" if applied else "none",
        "zero_point_median_mas": float(np.median(zp[keep])) if applied else 0.0,
        "zero_point_outside_calibration": int((keep & ~in_range).sum()) if applied else 0,
        "profile": profile,
        "offset": offset,
        "fit_offset": offset != "off",
        "distance_prior_centre_pc": centre,
        "distance_prior_from": "option distance_guess" if distance_guess is not None else "parallax peak",
        "star_draws": int(star_draws),
    }
    stars = {"source_id": columns.source_id[keep], "ra": columns.ra[keep], "dec": columns.dec[keep],
             "parallax_catalog": columns.parallax[keep], "zero_point": zp[keep]}
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
