"""Reading input tables for pipelines: one place for formats, checks and error lines.

Every pipeline that takes a table (CSV, ECSV, FITS or VOTable through ``astropy.table``)
reads it with :func:`read_table`, so a missing, unreadable or malformed file gets the same
kind of one-line :class:`~astroinfer.pipeline.InputError` everywhere: the file, and what was
expected of it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from astroinfer.errors import InputError, OutputError
from astroinfer.files import atomic_write

__all__ = [
    "READ_FORMATS", "extension", "first_line", "check_readable", "read_table", "find_column", "shown_columns",
    "float_column", "check_simulate_target", "truth_path",
]

#: astropy format of each file-name ending the readers know (longest ending wins).
READ_FORMATS = {
    ".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".txt": "ascii", ".dat": "ascii",
    ".fits": "fits", ".fit": "fits", ".fts": "fits",
    ".fits.gz": "fits", ".fit.gz": "fits", ".vot": "votable", ".xml": "votable", ".vot.gz": "votable",
}


def extension(path: Path, known=READ_FORMATS) -> str:
    """The file-name ending of ``path`` among ``known`` (``.fits.gz`` before ``.gz``), else its suffix."""
    name = path.name.lower()
    for ending in sorted(known, key=len, reverse=True):
        if name.endswith(ending):
            return ending
    return path.suffix.lower()


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, shortened, for a one-line error."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    if "Unable to guess table format" in text:
        text = "no known table format matched its content"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_readable(path: Path, expected: str) -> None:
    """Refuse a missing file, a folder or an unreadable file; ``expected`` names what should be there."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected {expected}")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as err:
        raise InputError(f"{path}: cannot read the file: {err.strerror or err}") from err


def read_table(path: Path, expected: str):
    """``astropy.table.Table`` from ``path``, its format from the file name or else guessed.

    ``expected`` completes the error line "cannot read it as ...", e.g. "a table with
    columns x, y, sigma_y (CSV, ECSV, FITS or VOTable)".
    """
    from astropy.table import Table

    check_readable(path, expected)
    fmt = READ_FORMATS.get(extension(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's unit and header chatter
        try:
            if fmt is not None:
                table = Table.read(path, format=fmt)
            else:
                try:
                    table = Table.read(path)  # astropy guesses FITS/VOTable/ECSV from content
                except Exception:
                    table = Table.read(path, format="ascii")
        except Exception as err:
            kind = f" as {fmt}" if fmt else ""
            raise InputError(f"{path}: cannot read it{kind} as {expected}: {first_line(err)}") from err
    if len(table.colnames) == 0:
        raise InputError(f"{path}: not a table (no columns found); expected {expected}")
    return table


def find_column(names, *wanted: str) -> str | None:
    """The first of ``wanted`` among the column ``names``: matched exactly, then ignoring case;
    None when none is there."""
    names = list(names)
    for candidate in wanted:
        if candidate in names:
            return candidate
        found = next((n for n in names if n.lower() == candidate.lower()), None)
        if found is not None:
            return found
    return None


def shown_columns(names, limit: int = 12) -> str:
    """The first ``limit`` column names, for an error line that says what the file holds."""
    names = list(names)
    return (", ".join(names[:limit]) + (", ..." if len(names) > limit else "")) or "no columns"


def float_column(table, path: Path, name: str) -> np.ndarray:
    """Column ``name`` of ``table`` as float64, empty (masked) entries as NaN.

    Refuses, naming the file and column, a column that is not one number per row.
    """
    column = table[name]
    if column.ndim != 1:
        raise InputError(f"{path}: column '{name}' must hold one number per row, got shape {column.shape}")
    if column.dtype.kind not in "iuf":
        raise InputError(f"{path}: column '{name}' must be numeric, got {column.dtype.kind!r} values such as "
                         f"{str(column[0])!r}")
    return np.asarray(np.ma.filled(np.ma.asarray(column).astype(np.float64), np.nan), dtype=np.float64)


def check_simulate_target(path: Path, seed: Any, write_formats: Mapping[str, str] | None = None) -> str:
    """Refuse a ``simulate`` output that cannot be written, before anything is simulated.

    The folder must exist, ``seed`` must be a non-negative integer and, when ``write_formats``
    is given, the file name must end in one of its keys. Returns that ending ("" without
    ``write_formats``). Raises :class:`~astroinfer.pipeline.OutputError`.
    """
    ending = ""
    if write_formats is not None:
        ending = extension(path, write_formats)
        if ending not in write_formats:
            raise OutputError(f"{path}: cannot write a table with extension '{ending or path.suffix}'; "
                              f"use one of {', '.join(write_formats)}")
    if not path.resolve().parent.is_dir():
        raise OutputError(f"{path}: folder {path.resolve().parent} does not exist")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OutputError(f"seed must be a non-negative integer, got {seed!r}")
    return ending


#: Endings of the files simulators write beyond the tables (the ionosphere h5parm).
_SIMULATED_FORMATS = {**READ_FORMATS, ".h5": "hdf5"}


def truth_path(path: str | os.PathLike) -> Path:
    """The truth sidecar a simulator writes next to its file: ``demo.csv``, ``demo.fits.gz``
    or ``demo.h5`` -> ``demo.truth.json``."""
    path = Path(path)
    ending = extension(path, _SIMULATED_FORMATS)
    stem = path.name[: -len(ending)] if ending and path.name.lower().endswith(ending) else path.stem
    return path.with_name(f"{stem}.truth.json")


def write_simulated(path: Path, table, fmt: str, record: Mapping[str, Any], *,
                    ecsv_meta: Mapping[str, Any] | None = None,
                    fits_header: Mapping[str, Any] | None = None) -> None:
    """Write a simulated input ``table`` to ``path`` in astropy format ``fmt`` and its truth
    ``record`` to :func:`truth_path` (JSON), both atomically. The truth also goes into the
    table itself where the format has room: an ECSV's metadata (``ecsv_meta``, default the
    whole record) and a FITS header (``fits_header`` cards)."""
    if fmt == "ascii.ecsv":
        table.meta["astroinfer_simulation"] = dict(record if ecsv_meta is None else ecsv_meta)
    elif fmt == "fits" and fits_header:
        table.meta.update(fits_header)
    atomic_write(path, lambda tmp: table.write(tmp, format=fmt, overwrite=True), suffix=extension(path) or ".tmp")
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    atomic_write(truth_path(path), lambda tmp: Path(tmp).write_text(text))
