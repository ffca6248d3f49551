"""HDF5 result files: one netCDF4-compatible file per run, provenance inside.

Layout (every group is a netCDF group, so ``arviz.from_netcdf``, xarray and h5py read it):

- ``posterior``, ``sample_stats``, ``observed_data``: the arviz InferenceData groups;
- method extras as further groups (``nested_samples`` holds nested sampling's raw weighted
  points, for instance);
- root attributes: ``astroinfer_format`` (marks the file as a result), ``method``,
  ``log_evidence``/``log_evidence_err`` when present, and JSON strings ``diagnostics``
  and ``provenance``.

Files are written under a temporary name in the target folder and renamed into place,
so a crash or a kill while saving never leaves a half-written file under the final name.

The store reads and writes plain fields (:class:`ResultFields`); :class:`astroinfer.Result`
adds the methods on top, so this module imports nothing of the engine and no JAX (the CLI
imports it for ``show``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import arviz as az
import h5py
import numpy as np

from astroinfer.errors import ResultFileError
from astroinfer.files import atomic_write

__all__ = [
    "save", "load", "ResultFields", "ResultFileError", "FORMAT_VERSION", "provenance", "record_input",
    "file_sha256", "utc_now", "is_result_file",
]

FORMAT_NAME = "astroinfer-result"
FORMAT_VERSION = "1"
_DEPENDENCIES = (
    "astroinfer", "jax", "jaxlib", "numpyro", "blackjax", "flowjax", "arviz",
    "xarray", "h5netcdf", "h5py", "numpy", "astropy", "tinygp",
)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


@dataclass
class ResultFields:
    """The plain fields of one result, as :func:`save` writes and :func:`load` reads them
    (see :class:`astroinfer.Result` for their meaning)."""

    idata: az.InferenceData
    method: str
    log_evidence: float | None = None
    log_evidence_err: float | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(
    *,
    method: str,
    options: dict[str, Any],
    seed: int,
    started: str,
    finished: str,
    pipeline: str | None = None,
    input_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Everything needed to know how a result was made (and to make it again)."""
    record: dict[str, Any] = {
        "astroinfer_version": _version("astroinfer"),
        "versions": {name: _version(name) for name in _DEPENDENCIES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "method": method,
        "options": options,
        "seed": int(seed),
        "pipeline": None,
        "input_path": None,
        "input_sha256": None,
        "command_line": " ".join(sys.argv),
        "started_utc": started,
        "finished_utc": finished,
    }
    return record_input(record, pipeline=pipeline, input_path=input_path)


def record_input(record: dict[str, Any], *, pipeline: str | None = None,
                 input_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Set the pipeline and the input file (resolved path and sha256) in the provenance
    ``record`` (a result's ``provenance``), in place; returns it."""
    record["pipeline"] = pipeline
    record["input_path"] = None if input_path is None else str(Path(input_path).resolve())
    record["input_sha256"] = None if input_path is None else file_sha256(input_path)
    return record


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def to_json(value: Any) -> str:
    return json.dumps(value, default=_json_default, allow_nan=True, sort_keys=True)


def save(result: ResultFields, path: str | os.PathLike) -> Path:
    """Write the fields of ``result`` (a :class:`ResultFields` or a ``Result``) to ``path``
    atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    folder = path.resolve().parent
    if not folder.is_dir():
        raise ResultFileError(f"{path}: folder {folder} does not exist")
    attrs = {
        "astroinfer_format": FORMAT_NAME,
        "astroinfer_format_version": FORMAT_VERSION,
        "method": result.method,
        "diagnostics": to_json(result.diagnostics),
        "provenance": to_json(result.provenance),
    }
    if result.log_evidence is not None:
        attrs["log_evidence"] = float(result.log_evidence)
        attrs["log_evidence_err"] = float(result.log_evidence_err)
    idata = result.idata.copy()
    idata.attrs = attrs  # root attributes of the file
    # The SIGKILL test in tests/test_store.py relies on this going through atomic_write.
    atomic_write(path, lambda tmp: idata.to_netcdf(tmp, engine="h5netcdf"))
    return path


def is_result_file(path: str | os.PathLike) -> bool:
    try:
        with h5py.File(path, "r") as handle:
            marker = handle.attrs.get("astroinfer_format")
    except (OSError, ValueError):
        return False
    if isinstance(marker, bytes):
        marker = marker.decode()
    return marker == FORMAT_NAME


def load(path: str | os.PathLike) -> ResultFields:
    """Read the fields of a result file written by :func:`save` (``astroinfer.load`` returns
    them as a :class:`~astroinfer.Result`)."""
    path = Path(path)
    if not path.exists():
        raise ResultFileError(f"{path}: no such file")
    if not is_result_file(path):
        raise ResultFileError(f"{path}: not an astroinfer result file (expected HDF5 written by astroinfer)")
    idata = az.from_netcdf(str(path), engine="h5netcdf")
    for group in idata.groups():
        # Read everything now so the file is not held open by lazy arrays.
        getattr(idata, group).load()
    attrs = dict(idata.attrs)
    log_z = attrs.get("log_evidence")
    log_z_err = attrs.get("log_evidence_err")
    return ResultFields(
        idata=idata,
        method=str(attrs.get("method")),
        log_evidence=None if log_z is None else float(log_z),
        log_evidence_err=None if log_z_err is None else float(log_z_err),
        diagnostics=json.loads(attrs.get("diagnostics", "{}")),
        provenance=json.loads(attrs.get("provenance", "{}")),
    )
