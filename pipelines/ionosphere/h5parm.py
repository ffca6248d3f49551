"""Reading and writing LOFAR h5parm files with h5py (losoto is GPL and needs PyTables).

An h5parm is HDF5: solsets (groups such as ``sol000``) hold soltabs (groups such as
``phase000``, whose ``TITLE`` attribute names the kind: ``phase``, ``tec``, ``clock``...),
each with ``val`` and ``weight`` datasets and one 1-D dataset per axis. The ``AXES``
attribute of ``val`` ("time,freq,ant,dir,pol") gives the axis order; no order is assumed.
Only the ionosphere pipeline uses this module; :func:`write_solutions` writes its solutions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from astroinfer.errors import InputError
from astroinfer.files import atomic_write

__all__ = ["PhaseTable", "read_phases", "write_h5parm", "write_solutions", "PROBLEM_AXES"]

PROBLEM_AXES = ("time", "ant", "dir", "pol")
_KNOWN_AXES = PROBLEM_AXES + ("freq",)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)


@dataclass
class PhaseTable:
    """Phases as (time, ant, dir, pol, freq) with weights, axis values and what was flagged."""

    phase: np.ndarray
    weight: np.ndarray
    axes: dict[str, np.ndarray]
    present_axes: tuple[str, ...]
    solset: str
    soltab: str
    num_rewrapped: int
    num_nan: int
    antenna_table: np.ndarray | None = None
    source_table: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


def _is_phase_soltab(name: str, group) -> bool:
    title = _text(group.attrs.get("TITLE", b""))
    return title == "phase" or (not title.strip() and name.startswith("phase"))


def read_phases(path: str | os.PathLike, solset: str | None = None, soltab: str | None = None) -> PhaseTable:
    """Read a phase soltab; every problem with the file raises :class:`InputError` (one line)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a LOFAR h5parm (HDF5) file")
    if not h5py.is_hdf5(path):
        raise InputError(f"{path}: not an HDF5 file; expected a LOFAR h5parm with a phase soltab (e.g. sol000/phase000)")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: cannot open it as HDF5: {err}") from err
    with handle as f:
        solsets = [n for n in f if isinstance(f[n], h5py.Group)]
        if solset is not None and solset not in solsets:
            raise InputError(f"{path}: no solset '{solset}' (option --solset); the file has {', '.join(solsets) or 'none'}")
        candidates = []
        for ss in ([solset] if solset else solsets):
            for st in f[ss]:
                obj = f[ss][st]
                if isinstance(obj, h5py.Group) and (st == soltab if soltab else _is_phase_soltab(st, obj)):
                    candidates.append((ss, st))
        if not candidates:
            what = f"soltab '{soltab}'" if soltab else "phase soltab (a group with TITLE 'phase', e.g. sol000/phase000)"
            raise InputError(f"{path}: no {what}; expected a LOFAR h5parm with phases per channel")
        ss, st = candidates[0]
        group = f[ss][st]
        where = f"{path}: {ss}/{st}"
        if "val" not in group:
            raise InputError(f"{where} has no 'val' dataset; expected the phases in radians")
        val = group["val"]
        if "AXES" not in val.attrs:
            raise InputError(f"{where}/val has no AXES attribute; expected e.g. 'time,freq,ant,dir,pol'")
        names = [a.strip() for a in _text(val.attrs["AXES"]).split(",") if a.strip()]
        if len(names) != val.ndim:
            raise InputError(f"{where}/val: AXES '{','.join(names)}' names {len(names)} axes but the data have "
                             f"{val.ndim} (shape {val.shape})")
        unknown = [a for a in names if a not in _KNOWN_AXES]
        if unknown or len(set(names)) != len(names):
            raise InputError(f"{where}/val: AXES '{','.join(names)}' has unknown or repeated axes; expected some of "
                             f"{', '.join(_KNOWN_AXES)}")
        if "freq" not in names:
            raise InputError(f"{where}/val: AXES '{','.join(names)}' has no freq axis; expected phases per channel")
        axes = {}
        for name, size in zip(names, val.shape):
            if name not in group:
                if name == "freq":
                    raise InputError(f"{where}: frequencies missing (no 'freq' dataset); expected channel frequencies in Hz")
                axes[name] = np.arange(size)
                continue
            values = group[name][()]
            if values.shape != (size,):
                raise InputError(f"{where}: axis '{name}' has {values.shape[0] if values.ndim else 0} values but val has "
                                 f"{size} along it (AXES inconsistent with the shape)")
            axes[name] = values
        freq = np.asarray(axes["freq"], dtype=np.float64)
        if not np.all(np.isfinite(freq)) or np.any(freq <= 0):
            raise InputError(f"{where}: frequencies must be finite and positive (Hz); got values from {np.nanmin(freq):.6g} "
                             f"to {np.nanmax(freq):.6g}")
        phase = np.asarray(val[()], dtype=np.float64)
        if "weight" in group:
            weight = np.asarray(group["weight"][()], dtype=np.float64)
            if weight.shape != phase.shape:
                raise InputError(f"{where}: weight has shape {weight.shape} but val has {phase.shape}")
        else:
            weight = np.ones_like(phase)
        antenna = f[ss]["antenna"][()] if "antenna" in f[ss] else None
        source = f[ss]["source"][()] if "source" in f[ss] else None
    # Canonical order: time, ant, dir, pol, freq (missing problem axes become length 1).
    order = [names.index(a) for a in PROBLEM_AXES if a in names] + [names.index("freq")]
    phase = np.transpose(phase, order)
    weight = np.transpose(weight, order)
    present = tuple(a for a in PROBLEM_AXES if a in names)
    shape = [phase.shape[present.index(a)] if a in present else 1 for a in PROBLEM_AXES] + [freq.size]
    phase = phase.reshape(shape)
    weight = weight.reshape(shape)
    for a in PROBLEM_AXES:
        if a not in axes:
            axes[a] = np.array([0]) if a == "time" else np.array([b"-"])
    nan = ~np.isfinite(phase)
    bad_weight = ~np.isfinite(weight) | (weight < 0)
    weight = np.where(nan | bad_weight, 0.0, weight)
    phase = np.where(nan, 0.0, phase)
    outside = (phase <= -np.pi) | (phase > np.pi)
    wrapped = np.angle(np.exp(1j * phase))
    wrapped = np.where(wrapped <= -np.pi, np.pi, wrapped)
    if not np.any(weight > 0):
        raise InputError(f"{where}: all weights are zero (every channel flagged); nothing to fit")
    return PhaseTable(phase=wrapped, weight=weight, axes=axes, present_axes=present, solset=ss, soltab=st,
                      num_rewrapped=int(np.sum(outside & ~nan)), num_nan=int(np.sum(nan)),
                      antenna_table=antenna, source_table=source)


def write_h5parm(path: str | os.PathLike, soltabs: dict[str, tuple[str, np.ndarray, np.ndarray]],
                 axes: dict[str, np.ndarray], axis_names: tuple[str, ...], *, solset: str = "sol000",
                 antenna_table: np.ndarray | None = None, source_table: np.ndarray | None = None,
                 extra_attrs: dict[str, Any] | None = None) -> Path:
    """Write soltabs ``name -> (title, val, weight)`` over ``axis_names`` (atomic).

    ``val`` and ``weight`` have one axis per name in ``axis_names``, in that order, and the
    ``AXES`` attribute says so; the axis values come from ``axes``.
    """
    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs["h5parm_version"] = np.bytes_("1.0")
            ss = f.create_group(solset)
            ss.attrs["TITLE"] = np.bytes_("")
            if antenna_table is not None:
                ss.create_dataset("antenna", data=antenna_table)
                ss["antenna"].attrs["CLASS"] = b"TABLE"
            if source_table is not None:
                ss.create_dataset("source", data=source_table)
                ss["source"].attrs["CLASS"] = b"TABLE"
            for name, (title, val, weight) in soltabs.items():
                g = ss.create_group(name)
                g.attrs["TITLE"] = np.bytes_(title)
                for key, value in (extra_attrs or {}).get(name, {}).items():
                    g.attrs[key] = value
                for a in axis_names:
                    g.create_dataset(a, data=np.asarray(axes[a]))
                for dname, data in (("val", val), ("weight", weight)):
                    ds = g.create_dataset(dname, data=np.asarray(data, np.float64), compression="gzip")
                    ds.attrs["AXES"] = np.bytes_(",".join(axis_names))  # fixed-length, as LOFAR writes it

    return atomic_write(path, write)


def write_solutions(path: str | os.PathLike, solutions: dict[str, np.ndarray], flagged: np.ndarray,
                    shape: tuple[int, ...], axes: dict[str, np.ndarray], axes_in_file: tuple[str, ...] | list[str],
                    fit_clock: bool, *, antenna_table: np.ndarray | None = None,
                    source_table: np.ndarray | None = None) -> Path:
    """tec000 (TECU), phaseoffset000 (rad), clock000 (s) in an h5parm over the input's problem axes.

    ``solutions`` holds one value per problem (problems in (time, ant, dir, pol) order, of
    ``shape``): ``dtec``, ``dtec_sd``, ``phi0`` and, with ``fit_clock``, ``clock`` and
    ``clock_sd``; ``flagged`` marks the problems without an unflagged channel. Problem axes
    not in the input file (``axes_in_file``) are left out again.

    Values are the heaviest dTEC mode's mean (a multimodal posterior's overall mean can sit
    between modes, where no solution is); weights are inverse posterior variances scaled so
    the best-determined problem has weight 1; flagged problems get weight 0.
    """
    present = tuple(a for a in PROBLEM_AXES if a in axes_in_file)
    drop = tuple(i for i, a in enumerate(PROBLEM_AXES) if a not in present)

    def arrange(v):
        return np.asarray(v).reshape(shape).squeeze(axis=drop) if drop else np.asarray(v).reshape(shape)

    def weights(sd):
        inv = np.where(flagged, 0.0, 1.0 / np.maximum(sd, 1e-12) ** 2)
        return inv / inv.max() if inv.max() > 0 else inv

    soltabs = {"tec000": ("tec", arrange(solutions["dtec"]), arrange(weights(solutions["dtec_sd"]))),
               "phaseoffset000": ("phase", arrange(solutions["phi0"]), arrange(np.where(flagged, 0.0, 1.0)))}
    if fit_clock:
        soltabs["clock000"] = ("clock", arrange(solutions["clock"]), arrange(weights(solutions["clock_sd"])))
    return write_h5parm(path, soltabs, axes, present, antenna_table=antenna_table, source_table=source_table)
