"""spectral-lines: reading a 1-D spectrum and validating it into the model's standardised data.

Two kinds of file are understood:

- a FITS image with one axis and a spectral WCS (``CTYPE1``/``CRVAL1``/``CDELT1`` or
  ``CD1_1``/``CRPIX1``, read with ``astropy.wcs``); uncertainties from an image extension
  named ``ERR``/``ERROR``/``SIGMA``/``UNCERT`` (or ``IVAR``, inverse variance) and bad pixels
  from one named ``MASK`` (non-zero = bad), each of the same length;
- a table (FITS binary table, ECSV, CSV, VOTable) whose columns are found by name: the
  spectral axis (``wavelength``/``wave``/``lambda``, ``frequency``/``freq``, ``velocity``/
  ``vel``), ``flux``, and optionally the error (``error``/``flux_err``/``sigma``/..., or
  ``ivar``) and a bad-pixel ``mask``; or named explicitly with ``columns=``.

:func:`load` then masks unusable pixels, applies the window and mask options, sorts the
spectral axis and standardises it (see :mod:`.numpyro_model`). Every problem raises
:class:`~astroinfer.errors.InputError` with one line naming the file, the column, HDU or
option, and what was expected.

astropy is imported where a file is read, not at the top: the package imports this module
(for ``PIPELINE.load``) when the CLI only lists the pipelines.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from astroinfer.errors import InputError
from astroinfer.pipeline import PipelineData, parse_positive
from astroinfer.tables import check_readable, find_column, first_line, read_table, shown_columns

from .options import (
    CONTINUA, GP_HYPERPARAMETER_MODES, GP_WIDTH_MAX_U, KERNELS, LOG_BAYES_FACTOR_FOR_A_LINE, MAX_DEGREE, PROFILES,
    SIGNS, WIDTH_MAX_U, auto_max_degree, count_parameters, parse_columns, parse_interval, parse_intervals, parse_lines,
)

AXIS_NAMES = {
    "wavelength": ("wavelength", "wave", "lambda", "lam", "wl", "wavelength_air", "wavelength_vac"),
    "frequency": ("frequency", "freq", "nu"),
    "velocity": ("velocity", "vel", "vrad", "v"),
}
FLUX_NAMES = ("flux", "f", "flam", "fnu", "intensity", "spec", "spectrum")
ERROR_NAMES = ("error", "err", "flux_err", "flux_error", "sigma", "uncertainty", "unc", "noise", "e_flux")
IVAR_NAMES = ("ivar", "inverse_variance", "flux_ivar")
MASK_NAMES = ("mask", "bad", "badpix", "bad_pixel")

_FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
_ERROR_HDUS = ("ERR", "ERROR", "SIGMA", "UNCERT", "UNCERTAINTY", "STDDEV")
_IVAR_HDUS = ("IVAR",)
_MASK_HDUS = ("MASK", "BADPIX", "DQ")
# FITS WCS spectral CTYPE prefixes -> axis kind
_CTYPE_KIND = {"WAVE": "wavelength", "AWAV": "wavelength", "WAVN": "wavenumber", "FREQ": "frequency",
               "VRAD": "velocity", "VOPT": "velocity", "VELO": "velocity", "ZOPT": "redshift",
               "ENER": "energy", "LAMBDA": "wavelength"}


@dataclass
class RawSpectrum:
    """A spectrum as read: spectral coordinate, flux, optional error, bad-pixel mask."""

    x: np.ndarray
    flux: np.ndarray
    error: np.ndarray | None
    bad: np.ndarray  # True where the file marks a pixel bad
    axis_kind: str
    x_unit: str | None
    flux_unit: str | None
    source: dict[str, Any] = field(default_factory=dict)


def _is_fits(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(_FITS_EXTENSIONS):
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(9) == b"SIMPLE  ="
    except OSError:
        return False


def read_spectrum(path: Path, columns: tuple[str, ...] | None = None) -> RawSpectrum:
    """Read ``path`` (FITS image, FITS table or text/VOTable table) into a :class:`RawSpectrum`."""
    check_readable(path, "a spectrum file (FITS, ECSV or CSV)")
    if _is_fits(path):
        return _read_fits(path, columns)
    table = read_table(path, "a spectrum table (FITS, ECSV, CSV or VOTable) with wavelength and flux columns")
    return _from_table(path, table, columns, hdu=None)


# -- FITS -----------------------------------------------------------------------------
def _read_fits(path: Path, columns) -> RawSpectrum:
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(path, memmap=False)
            hdul.verify("silentfix")
    except Exception as err:
        raise InputError(f"{path}: cannot read it as FITS: {first_line(err)}") from err
    with hdul:
        for index, hdu in enumerate(hdul):
            if hdu.data is None:
                continue
            if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                from astropy.table import Table

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    table = Table.read(hdu)
                return _from_table(path, table, columns, hdu=index)
            if columns is not None:
                raise InputError(f"{path}: option columns applies to tables, but HDU {index} is an image; "
                                 "the spectral axis comes from its WCS")
            return _from_image(path, hdul, index)
    raise InputError(f"{path}: no HDU holds data; expected a 1-D spectrum image or a table")


def _from_image(path: Path, hdul, index: int) -> RawSpectrum:
    hdu = hdul[index]
    data = np.asarray(hdu.data)
    if data.ndim != 1:
        raise InputError(f"{path}: HDU {index} is an image with {data.ndim} dimensions {data.shape}; "
                         "expected a 1-D spectrum (one axis)")
    if data.dtype.kind not in "iuf":
        raise InputError(f"{path}: HDU {index} holds {data.dtype} values; expected numbers")
    header = hdu.header
    ctype = str(header.get("CTYPE1", "")).strip().upper()
    has_scale = any(k in header for k in ("CDELT1", "CD1_1"))
    if not ctype or "CRVAL1" not in header or not has_scale:
        raise InputError(f"{path}: HDU {index} has no spectral axis: expected a spectral WCS "
                         "(CTYPE1, CRVAL1, CDELT1 or CD1_1) in its header")
    kind = next((k for prefix, k in _CTYPE_KIND.items() if ctype.startswith(prefix)), None)
    if kind is None or kind not in ("wavelength", "frequency", "velocity"):
        raise InputError(f"{path}: HDU {index} has CTYPE1 = '{ctype}'; expected a spectral axis "
                         "(WAVE, AWAV, FREQ, VRAD, VOPT or VELO)")
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header, naxis=1)
            x = np.asarray(wcs.pixel_to_world_values(np.arange(data.size, dtype=np.float64)), dtype=np.float64)
            x_unit = str(wcs.wcs.cunit[0]) or None
            declared = str(header.get("CUNIT1", "")).strip()
            if declared and x_unit and declared != x_unit:
                # astropy.wcs works in SI (m, Hz, m/s); give the axis back in the file's unit
                import astropy.units as u

                target = u.Unit(declared, format="fits")
                x = (x * u.Unit(x_unit)).to_value(target, equivalencies=u.spectral())
                x_unit = target.to_string()
    except Exception as err:
        raise InputError(f"{path}: HDU {index}: cannot evaluate the spectral WCS: {first_line(err)}") from err
    x = x.reshape(-1)
    flux = data.astype(np.float64)
    error = None
    bad = np.zeros(flux.size, dtype=bool)
    source = {"kind": "fits-image", "hdu": index, "ctype": ctype}
    for ext in hdul[1:] if index == 0 else hdul:
        name = str(ext.name).upper()
        if ext is hdu or ext.data is None or name not in (*_ERROR_HDUS, *_IVAR_HDUS, *_MASK_HDUS):
            continue
        values = np.asarray(ext.data)
        if values.shape != data.shape:
            raise InputError(f"{path}: HDU '{name}' has shape {values.shape}; expected {data.shape} like the flux")
        if name in _MASK_HDUS:
            bad |= values.astype(np.float64) != 0
            source["mask_hdu"] = name
        elif name in _IVAR_HDUS:
            ivar = values.astype(np.float64)
            bad |= ~(ivar > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                error = np.where(ivar > 0, 1.0 / np.sqrt(np.abs(ivar)), np.nan)
            source["error_hdu"] = name
        else:
            error = values.astype(np.float64)
            source["error_hdu"] = name
    flux_unit = str(header.get("BUNIT")).strip() if header.get("BUNIT") else None
    return RawSpectrum(x, flux, error, bad, kind, x_unit, flux_unit, source)


# -- tables ---------------------------------------------------------------------------
def _numeric(table, path: Path, name: str, hdu) -> np.ndarray:
    column = table[name]
    where = f"{path}" + (f" HDU {hdu}" if hdu is not None else "")
    if column.ndim != 1:
        raise InputError(f"{where}: column '{name}' holds arrays of shape {column.shape[1:]} per row; "
                         "expected one number per row (one pixel per row)")
    if column.dtype.kind not in "iufb":
        sample = str(column[0]) if len(column) else ""
        raise InputError(f"{where}: column '{name}' must be numeric, got values such as {sample!r}")
    values = np.ma.filled(np.ma.asarray(column, dtype=np.float64), np.nan)
    return np.asarray(values, dtype=np.float64)


def _unit(table, name: str) -> str | None:
    unit = getattr(table[name], "unit", None)
    return None if unit is None else str(unit)


def _from_table(path: Path, table, columns, hdu) -> RawSpectrum:
    names = list(table.colnames)
    where = f"{path}" + (f" HDU {hdu}" if hdu is not None else "")
    if not names:
        raise InputError(f"{where}: not a table with wavelength and flux columns (no columns found)")
    if columns is not None:
        chosen = []
        for role, wanted in zip(("spectral axis", "flux", "error"), columns):
            found = find_column(names, wanted)
            if found is None:
                raise InputError(f"{where}: column '{wanted}' (the {role}, named by option columns) is "
                                 f"missing; found {shown_columns(names)}")
            chosen.append(found)
        x_name, flux_name = chosen[0], chosen[1]
        err_name = chosen[2] if len(chosen) > 2 else None
        ivar_name = None
        lower = x_name.lower()
        kind = next((k for k, c in AXIS_NAMES.items() if lower in c), "wavelength")
    else:
        x_name, kind = None, None
        for axis_kind, candidates in AXIS_NAMES.items():
            x_name = find_column(names, *candidates)
            if x_name is not None:
                kind = axis_kind
                break
        if x_name is None:
            loglam = find_column(names, "loglam", "log_wavelength")
            if loglam is not None:
                x_name, kind = loglam, "loglam"
        if x_name is None:
            raise InputError(f"{where}: no spectral axis found: expected a column named wavelength, wave, "
                             f"lambda, frequency, freq or velocity (or option columns); found {shown_columns(names)}")
        flux_name = find_column(names, *FLUX_NAMES)
        if flux_name is None:
            raise InputError(f"{where}: flux column missing: expected a column named flux (or option "
                             f"columns); found {shown_columns(names)}")
        err_name = find_column(names, *ERROR_NAMES)
        ivar_name = None if err_name is not None else find_column(names, *IVAR_NAMES)
    mask_name = find_column(names, *MASK_NAMES)
    x = _numeric(table, path, x_name, hdu)
    x_unit = _unit(table, x_name)
    if kind == "loglam":
        x = 10.0 ** x
        kind, x_unit = "wavelength", x_unit if x_unit not in (None, "dex") else None
    flux = _numeric(table, path, flux_name, hdu)
    flux_unit = _unit(table, flux_name)
    bad = np.zeros(flux.size, dtype=bool)
    error = None
    if err_name is not None:
        error = _numeric(table, path, err_name, hdu)
        err_unit = _unit(table, err_name)
        if flux_unit and err_unit and err_unit != flux_unit:
            import astropy.units as u

            try:
                error = error * u.Unit(err_unit).to(u.Unit(flux_unit))
            except Exception as err:
                raise InputError(f"{where}: column '{err_name}' has unit {err_unit}, which does not convert "
                                 f"to the flux unit {flux_unit}") from err
    elif ivar_name is not None:
        ivar = _numeric(table, path, ivar_name, hdu)
        bad |= ~(ivar > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            error = np.where(ivar > 0, 1.0 / np.sqrt(np.abs(ivar)), np.nan)
    if mask_name is not None:
        mask_values = _numeric(table, path, mask_name, hdu)
        bad |= ~np.isfinite(mask_values) | (mask_values != 0)
    source = {"kind": "table", "hdu": hdu,
              "columns": {"x": x_name, "flux": flux_name, "error": err_name or ivar_name, "mask": mask_name}}
    return RawSpectrum(x, flux, error, bad, kind, x_unit, flux_unit, source)


# -- load and validate ---------------------------------------------------------------
def load(path: str | os.PathLike, *, lines: int | str = "auto", max_lines: int = 3,
         min_log_bayes_factor: float = LOG_BAYES_FACTOR_FOR_A_LINE, profile: str = "gaussian",
         continuum: str = "auto", degree: int = 1, max_degree: int = MAX_DEGREE, kernel: str = "matern32",
         jitter: bool = False,
         gp_hyperparameters: str = "sample", sign: str = "emission", window: tuple[float, float] | str | None = None,
         mask: Any = None, columns: tuple[str, ...] | str | None = None,
         rest: float | None = None) -> PipelineData:
    """Read and validate a 1-D spectrum; :class:`~astroinfer.errors.InputError` on any problem.

    Non-finite values (and pixels the file marks bad) are masked and counted in the metadata;
    a decreasing spectral axis is reversed, an unsorted one sorted, repeated values refused.
    """
    path = Path(path)
    lines, window, mask, columns, rest = _parsed_options(path, lines, max_lines, degree, max_degree,
                                                         min_log_bayes_factor, window, mask, columns, rest)
    for name, value, allowed in (("profile", profile, PROFILES), ("continuum", continuum, CONTINUA),
                                 ("kernel", kernel, KERNELS),
                                 ("gp_hyperparameters", gp_hyperparameters, GP_HYPERPARAMETER_MODES),
                                 ("sign", sign, SIGNS)):
        _check_option(path, name, value, allowed)

    raw = read_spectrum(path, tuple(columns) if columns is not None else None)
    flags = _flagged_pixels(path, raw)
    excluded = _excluded_pixels(path, raw, flags.good, window, mask)
    _check_errors(path, raw, flags, excluded)
    used = _used_pixels(raw, flags.good & ~excluded)
    kmax = max_lines if lines == "auto" else int(lines)
    if continuum == "auto":  # the model's degree is the largest one tried; the fit's is chosen
        degree = auto_max_degree(max_degree, used.x.size)
    _check_enough_pixels(path, used.x, count_parameters(kmax, profile, continuum, degree, raw.error is not None,
                                                        jitter), kmax)
    scaled = _standardised(used, continuum)

    data = {
        "x": scaled.x.astype(np.float32), "flux": scaled.flux.astype(np.float32),
        "sigma": None if scaled.sigma is None else scaled.sigma.astype(np.float32),
        "num_lines": 0 if lines == "auto" else int(lines),
        "profile": profile, "continuum": continuum, "degree": int(degree), "kernel": kernel,
        "jitter": bool(jitter), "sign": sign, "amp_max": scaled.amp_max,
        "width_min": scaled.width_min, "width_max": GP_WIDTH_MAX_U if continuum == "gp" else WIDTH_MAX_U,
    }
    metadata = {
        "path": str(path), "source": raw.source, "axis": raw.axis_kind,
        "x_unit": raw.x_unit, "flux_unit": raw.flux_unit, "has_error": raw.error is not None,
        "axis_order": used.axis_order, "pixel_counts": _pixel_counts(raw, flags, excluded, used),
        "lines": lines, "max_lines": int(max_lines), "min_log_bayes_factor": float(min_log_bayes_factor),
        "gp_hyperparameters": gp_hyperparameters,
        "window": list(window) if window is not None else None,
        "mask": [list(m) for m in mask] if mask else None,
        "rest": rest,
        "standardisation": {"x_mid": scaled.x_mid, "x_half": scaled.x_half,
                            "flux_zero": scaled.flux_zero, "flux_scale": scaled.flux_scale},
        "x_values": used.x, "flux_values": used.flux, "error_values": used.error,
    }
    return PipelineData(data=data, metadata=_metadata_for_provenance(metadata))


def _parsed_options(path: Path, lines, max_lines, degree, max_degree, min_log_bayes_factor, window, mask, columns,
                    rest):
    """(lines, window, mask, columns, rest) checked, and parsed where given as text."""
    try:
        if isinstance(lines, str):
            lines = parse_lines(lines)
        elif isinstance(lines, bool) or not isinstance(lines, (int, np.integer)) or lines < 0:
            raise ValueError(f"expected a number of lines >= 0 or 'auto', got {lines!r}")
        for name, value in (("max_lines", max_lines), ("degree", degree), ("max_degree", max_degree)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"option {name}: expected a non-negative integer, got {value!r}")
        if isinstance(min_log_bayes_factor, bool) or not (np.isfinite(min_log_bayes_factor)
                                                          and min_log_bayes_factor >= 0):
            raise ValueError(f"option min_log_bayes_factor: expected a number >= 0, got {min_log_bayes_factor!r}")
        if isinstance(window, str):
            window = parse_interval(window)
        if isinstance(mask, str):
            mask = parse_intervals(mask)
        if isinstance(columns, str):
            columns = parse_columns(columns)
        if rest is not None:
            rest = parse_positive(str(rest))
    except ValueError as err:
        raise InputError(f"{path}: {err}") from None
    return lines, window, mask, columns, rest


def _check_option(path: Path, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{path}: option {name} must be one of {', '.join(allowed)}, got {value!r}")


class _Flags(NamedTuple):
    """Per-pixel flags of a spectrum as read: ``good`` where every value is usable."""

    good: np.ndarray
    bad_x: np.ndarray
    bad_flux: np.ndarray
    bad_error: np.ndarray  # not finite
    zero_error: np.ndarray  # exactly 0: SDSS/DESI files mark masked pixels so (inverse variance 0)
    negative_error: np.ndarray


def _flagged_pixels(path: Path, raw: RawSpectrum) -> _Flags:
    """The pixels with finite values, a positive error and no bad mark in the file; refuses a
    spectrum with none and a spectral axis with repeated values. A zero error masks its pixel
    (an inverse variance of 0 means "masked"); a negative one is refused only where the fit
    would use it (:func:`_check_errors`)."""
    x, flux, error = raw.x, raw.flux, raw.error
    n_total = int(flux.size)
    if n_total == 0:
        raise InputError(f"{path}: the spectrum has no pixels")
    finite_flux = np.isfinite(flux)
    if not finite_flux.any():
        raise InputError(f"{path}: all {n_total} flux values are non-finite (NaN or inf); expected numbers")
    bad_x = ~np.isfinite(x)
    bad_flux = ~finite_flux
    no_flags = np.zeros_like(bad_flux)
    bad_error = no_flags if error is None else ~np.isfinite(error)
    zero_error = no_flags if error is None else (error == 0)
    negative_error = no_flags if error is None else (error < 0)
    good = ~(bad_x | bad_flux | bad_error | zero_error | negative_error | raw.bad)
    xs = x[good]
    if xs.size and np.unique(xs).size != xs.size:
        raise InputError(f"{path}: the spectral axis repeats values ({xs.size - np.unique(xs).size} duplicate(s)); "
                         "expected distinct, monotonic values")
    return _Flags(good, bad_x, bad_flux, bad_error, zero_error, negative_error)


def _check_errors(path: Path, raw: RawSpectrum, flags: _Flags, excluded: np.ndarray) -> None:
    """Refuse negative errors on pixels the fit would use (inside the window, outside the
    mask, otherwise usable); outside, they do not matter."""
    otherwise_good = ~(flags.bad_x | flags.bad_flux | flags.bad_error | raw.bad)
    negative = np.flatnonzero(flags.negative_error & otherwise_good & ~excluded)
    if negative.size:
        column = (raw.source.get("columns") or {}).get("error") or raw.source.get("error_hdu") or "error"
        first = negative[0]
        raise InputError(f"{path}: error column '{column}' must be > 0 (0 masks a pixel); {negative.size} "
                         f"pixel(s) in the fitted range are negative (first at pixel {first + 1}: {raw.error[first]})")


def _excluded_pixels(path: Path, raw: RawSpectrum, good: np.ndarray, window, mask) -> np.ndarray:
    """The pixels outside ``window`` or inside an interval of ``mask``; refuses a window with
    no good pixel."""
    x, x_unit = raw.x, raw.x_unit
    excluded = np.zeros_like(good)
    if window is not None:
        lo, hi = window
        inside = (x >= lo) & (x <= hi)
        if not (inside & good).any():
            span = f"{np.nanmin(x):.6g} to {np.nanmax(x):.6g}" if np.isfinite(x).any() else "no finite values"
            raise InputError(f"{path}: option window {lo:g}:{hi:g} selects no usable pixel; the spectral axis "
                             f"spans {span}{' ' + x_unit if x_unit else ''}")
        excluded |= ~inside
    for lo, hi in (mask or ()):
        excluded |= (x >= lo) & (x <= hi)
    return excluded


class _UsedPixels(NamedTuple):
    """The pixels the model fits, sorted by the spectral axis, and the axis' order in the file."""

    x: np.ndarray
    flux: np.ndarray
    error: np.ndarray | None
    axis_order: str


def _used_pixels(raw: RawSpectrum, use: np.ndarray) -> _UsedPixels:
    order = np.argsort(raw.x[use], kind="stable")
    x_all = raw.x[use]
    monotonic = ("increasing" if np.all(np.diff(x_all) > 0) else
                 "decreasing" if np.all(np.diff(x_all) < 0) else "unsorted")
    return _UsedPixels(x_all[order], raw.flux[use][order], None if raw.error is None else raw.error[use][order],
                       monotonic)


def _check_enough_pixels(path: Path, x_used: np.ndarray, needed: int, kmax: int) -> None:
    if x_used.size <= needed:
        raise InputError(f"{path}: {x_used.size} usable pixel(s) but the model with {kmax} line(s) has {needed} "
                         f"parameters; expected more pixels than parameters (fewer lines, a lower degree or a "
                         f"wider window)")
    if x_used.size < 2 or x_used[-1] == x_used[0]:
        raise InputError(f"{path}: the usable pixels span no range of the spectral axis")


class _Standardised(NamedTuple):
    """The used pixels in standardised units, the standardisation and the data-set prior bounds."""

    x: np.ndarray
    flux: np.ndarray
    sigma: np.ndarray | None
    x_mid: float
    x_half: float
    flux_zero: float
    flux_scale: float
    width_min: float
    amp_max: float


def _standardised(used: _UsedPixels, continuum: str) -> _Standardised:
    """``x_u = (x - x_mid) / x_half`` in [-1, 1], ``y_u = (flux - f0) / f_scale``; the narrowest
    line is a pixel wide and the largest amplitude twice the flux range (plus three errors)."""
    x_used, flux_used, error_used = used.x, used.flux, used.error
    x_mid = 0.5 * (x_used[0] + x_used[-1])
    x_half = 0.5 * (x_used[-1] - x_used[0])
    # with no continuum the model's zero is the data's zero
    flux_zero = 0.0 if continuum == "none" else float(np.median(flux_used))
    spread = float(np.std(flux_used))
    if error_used is not None:
        spread = max(spread, float(np.median(error_used)))
    flux_scale = spread if spread > 0 else 1.0
    x_u = (x_used - x_mid) / x_half
    y_u = (flux_used - flux_zero) / flux_scale
    s_u = None if error_used is None else error_used / flux_scale
    width_min = float(np.median(np.diff(x_u)))
    amp_max = float(2.0 * (np.max(y_u) - np.min(y_u)) + (3.0 * np.median(s_u) if s_u is not None else 0.0))
    if not amp_max > 0:
        amp_max = 1.0
    return _Standardised(x_u, y_u, s_u, float(x_mid), float(x_half), flux_zero, float(flux_scale), width_min,
                         amp_max)


def _pixel_counts(raw: RawSpectrum, flags: _Flags, excluded: np.ndarray, used: _UsedPixels) -> dict[str, int]:
    bad_x, bad_flux, bad_error = flags.bad_x, flags.bad_flux, flags.bad_error
    return {
        "pixels_in_file": int(raw.flux.size),
        "non_finite_axis": int(bad_x.sum()),
        "non_finite_flux": int(bad_flux.sum()),
        "non_finite_error": int((bad_error & ~bad_flux).sum()),
        "zero_error": int((flags.zero_error & ~(bad_x | bad_flux)).sum()),
        "flagged_bad": int((raw.bad & ~(bad_x | bad_flux | bad_error | flags.zero_error)).sum()),
        "outside_window_or_masked": int((excluded & flags.good).sum()),
        "used": int(used.x.size),
    }


class _Metadata(dict):
    """Metadata whose float64 arrays (for the result file) are kept out of the JSON provenance."""

    def __init__(self, public: dict, arrays: dict):
        super().__init__(public)
        self.arrays = arrays

    def copy(self):  # dict(metadata) in PreparedRun.finish keeps only the public part
        return dict(self)


def _metadata_for_provenance(metadata: dict) -> _Metadata:
    arrays = {k: metadata.pop(k) for k in ("x_values", "flux_values", "error_values")}
    return _Metadata(metadata, arrays)


def _messages(metadata: dict) -> list[str]:
    """Warnings about the input for the result's diagnostics: masked non-finite pixels, a
    spectral axis that had to be sorted."""
    counts = metadata.get("pixel_counts", {})
    out = []
    masked = {k: counts.get(k, 0) for k in ("non_finite_axis", "non_finite_flux", "non_finite_error")}
    if any(masked.values()):
        parts = [f"{v} {k.replace('non_finite_', '')}" for k, v in masked.items() if v]
        out.append(f"{metadata.get('path')}: masked pixels with non-finite values ({', '.join(parts)})")
    if counts.get("zero_error"):
        out.append(f"{metadata.get('path')}: masked {counts['zero_error']} pixel(s) with zero error (an inverse "
                   "variance of 0 marks a masked pixel)")
    if not metadata.get("has_error", True):
        out.append(f"{metadata.get('path')}: no error column; the noise level is fitted (log_noise_u)")
    if metadata.get("axis_order") == "unsorted":
        out.append(f"{metadata.get('path')}: the spectral axis was not monotonic; pixels were sorted")
    return out
