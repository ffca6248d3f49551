"""Reading 1-D spectra for the spectral-lines pipeline (private to it).

Two kinds of file are understood:

- a FITS image with one axis and a spectral WCS (``CTYPE1``/``CRVAL1``/``CDELT1`` or
  ``CD1_1``/``CRPIX1``, read with ``astropy.wcs``); uncertainties from an image extension
  named ``ERR``/``ERROR``/``SIGMA``/``UNCERT`` (or ``IVAR``, inverse variance) and bad pixels
  from one named ``MASK`` (non-zero = bad), each of the same length;
- a table (FITS binary table, ECSV, CSV, VOTable) whose columns are found by name: the
  spectral axis (``wavelength``/``wave``/``lambda``, ``frequency``/``freq``, ``velocity``/
  ``vel``), ``flux``, and optionally the error (``error``/``flux_err``/``sigma``/..., or
  ``ivar``) and a bad-pixel ``mask``; or named explicitly with ``columns=``.

Every problem raises :class:`~astroinfer.pipeline.InputError` with one line naming the file,
the column, HDU or option, and what was expected.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from astroinfer.pipeline import InputError
from astroinfer.tables import check_readable, first_line, read_table

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
def _lookup(names: list[str], wanted: str) -> str | None:
    if wanted in names:
        return wanted
    return next((n for n in names if n.lower() == wanted.lower()), None)


def _find(names: list[str], candidates) -> str | None:
    for candidate in candidates:
        found = _lookup(names, candidate)
        if found is not None:
            return found
    return None


def _shown(names: list[str]) -> str:
    return (", ".join(names[:12]) + (", ..." if len(names) > 12 else "")) or "no columns"


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
            found = _lookup(names, wanted)
            if found is None:
                raise InputError(f"{where}: column '{wanted}' (the {role}, named by option columns) is "
                                 f"missing; found {_shown(names)}")
            chosen.append(found)
        x_name, flux_name = chosen[0], chosen[1]
        err_name = chosen[2] if len(chosen) > 2 else None
        ivar_name = None
        lower = x_name.lower()
        kind = next((k for k, c in AXIS_NAMES.items() if lower in c), "wavelength")
    else:
        x_name, kind = None, None
        for axis_kind, candidates in AXIS_NAMES.items():
            x_name = _find(names, candidates)
            if x_name is not None:
                kind = axis_kind
                break
        if x_name is None:
            loglam = _find(names, ("loglam", "log_wavelength"))
            if loglam is not None:
                x_name, kind = loglam, "loglam"
        if x_name is None:
            raise InputError(f"{where}: no spectral axis found: expected a column named wavelength, wave, "
                             f"lambda, frequency, freq or velocity (or option columns); found {_shown(names)}")
        flux_name = _find(names, FLUX_NAMES)
        if flux_name is None:
            raise InputError(f"{where}: flux column missing: expected a column named flux (or option "
                             f"columns); found {_shown(names)}")
        err_name = _find(names, ERROR_NAMES)
        ivar_name = None if err_name is not None else _find(names, IVAR_NAMES)
    mask_name = _find(names, MASK_NAMES)
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
