"""Result files of batch runs: written chunk by chunk, resumable, finished by atomic rename.

While a batch runs, each finished chunk is saved as its own file in ``OUT.h5.parts/``
(``chunk-000012.npz``, written under a temporary name and renamed, so a chunk is either
complete or absent whatever moment the process is killed at; an HDF5 file being written
is not safe against SIGKILL). ``manifest.json`` there records the run's fingerprint (input
file hash, model, method, options, seed, chunking). ``--resume`` checks the fingerprint and
runs only the missing chunks; the seeding (problem ``i`` from ``fold_in(seed, i)``) makes
the values identical to an uninterrupted run.

When every chunk is there, :func:`BatchStore.finish` streams the chunks (bounded memory)
into the final netCDF4/HDF5 result file under a temporary name and renames it to ``OUT.h5``:

- ``posterior``: each parameter's draws, dims (chain=1, draw, problem);
- ``problem_summary``: per problem ``<p>_mean``, ``<p>_sd``, ``<p>_quantiles`` (problem,
  quantile), ``<p>_mode_location``/``_mode_mass``/``_mode_mean``/``_mode_sd`` (problem,
  mode), ``<p>_num_modes``, ``log_evidence``, ``log_evidence_err``, ``method_code``
  (0 grid, 1 refined grid, 2 nested, 3 unresolved), and coordinates along ``problem``
  given by the caller (``time``, ``ant``, ``dir``, ``pol`` for the ionosphere);
- root attributes as in :mod:`astroinfer.store` (``diagnostics``, ``provenance`` JSON).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from astroinfer.files import atomic_write
from astroinfer.errors import ResultFileError, ResumeError
from astroinfer.store import FORMAT_NAME, FORMAT_VERSION, to_json

__all__ = ["BatchStore", "ResumeError", "summary_dataset", "SUMMARY_KEYS", "parts_folder"]

# Quantile levels of every batch summary: 95% and 68% intervals and the median.
QUANTILES = (0.025, 0.16, 0.5, 0.84, 0.975)
SUMMARY_KEYS = ("mean", "sd", "quantiles", "mode_location", "mode_mass", "mode_mean", "mode_sd", "num_modes")
_MODE_KEYS = {"mode_location", "mode_mass", "mode_mean", "mode_sd"}


def parts_folder(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def _dims(key: str) -> tuple[str, ...]:
    base = key.split(".", 1)[1] if "." in key else key
    if base == "quantiles":
        return ("problem", "quantile")
    if base in _MODE_KEYS:
        return ("problem", "mode")
    return ("problem",)


def _summary_items(merged: dict[str, np.ndarray], names) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    items = {}
    for name in names:
        for key in SUMMARY_KEYS:
            items[f"{name}_{key}"] = (_dims(key), merged[f"{name}.{key}"])
    for key in ("log_evidence", "log_evidence_err", "method_code"):
        items[key] = (("problem",), merged[key])
    for key, value in merged.items():  # extra per-problem values a pipeline adds (e.g. flagged)
        if key.startswith("extra."):
            items[key[len("extra."):]] = (("problem",) + tuple(f"{key[6:]}_dim_{i}" for i in range(value.ndim - 1)), value)
    return items


def summary_dataset(spec, merged: dict[str, np.ndarray], coords: dict[str, np.ndarray]):
    """The ``problem_summary`` group as an ``xarray.Dataset`` (in-memory runs)."""
    import xarray as xr


    items = _summary_items(merged, spec.names)
    ds = xr.Dataset({k: (dims, np.asarray(v)) for k, (dims, v) in items.items()})
    ds = ds.assign_coords(quantile=("quantile", np.asarray(QUANTILES)))
    for name, values in coords.items():
        ds = ds.assign_coords({name: ("problem", np.asarray(values))})
    return ds


class BatchStore:
    """The parts folder of one batch run, and the final result file it becomes."""

    def __init__(self, out: str | os.PathLike, fingerprint: dict[str, Any], num_chunks: int, *, resume: bool):
        self.out = Path(out)
        self.folder = parts_folder(out)
        self.fingerprint = json.loads(to_json(fingerprint))
        self.num_chunks = num_chunks
        manifest = self.folder / "manifest.json"
        if resume and manifest.is_file():
            try:
                recorded = json.loads(manifest.read_text())
            except (OSError, ValueError) as err:
                raise ResumeError(f"{manifest}: unreadable manifest of the interrupted run ({err}); delete "
                                  f"{self.folder} to start again") from err
            if recorded != self.fingerprint:
                differing = sorted(k for k in set(recorded) | set(self.fingerprint)
                                   if recorded.get(k) != self.fingerprint.get(k))
                raise ResumeError(f"{self.out}: --resume refused: the interrupted run in {self.folder} had a different "
                                  f"{', '.join(differing)}; rerun without --resume to start again")
        else:
            if self.folder.exists():
                shutil.rmtree(self.folder)
            self.folder.mkdir()
            text = to_json(self.fingerprint)
            atomic_write(manifest, lambda tmp: Path(tmp).write_text(text))

    def _chunk_path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:06d}.npz"

    def completed(self) -> set[int]:
        done = set()
        for path in self.folder.glob("chunk-*.npz"):
            try:
                done.add(int(path.stem.split("-")[1]))
            except ValueError:
                continue
        return {i for i in done if i < self.num_chunks}

    def write_chunk(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        def write(tmp):
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        atomic_write(self._chunk_path(index), write)

    def read_chunk(self, index: int) -> dict[str, np.ndarray]:
        with np.load(self._chunk_path(index)) as z:
            return {k: z[k] for k in z.files}

    def finish(self, names: Iterable[str], coords: dict[str, np.ndarray], attrs: dict[str, Any],
               extra_groups: dict[str, Any] | None = None) -> Path:
        """Stream every chunk into the final result file (atomic), then remove the parts."""
        import h5netcdf

    
        names = list(names)
        missing = sorted(set(range(self.num_chunks)) - self.completed())
        if missing:
            raise ResultFileError(f"{self.out}: chunks {missing[:5]} are missing; rerun with --resume")
        first = self.read_chunk(0)
        num_problems = int(self.read_chunk(self.num_chunks - 1)["problem_index"][-1]) + 1
        num_draws = first["draws"].shape[2]
        items0 = _summary_items(first, names)

        def write(tmp):
            with h5netcdf.File(tmp, "w") as f:
                for key, value in attrs.items():
                    f.attrs[key] = value
                post = f.create_group("posterior")
                post.dimensions = {"chain": 1, "draw": num_draws, "problem": num_problems}
                for dim, size in (("chain", 1), ("draw", num_draws), ("problem", num_problems)):
                    post.create_variable(dim, (dim,), data=np.arange(size))
                for name in names:
                    post.create_variable(name, ("chain", "draw", "problem"), dtype=np.float32,
                                         chunks=(1, num_draws, min(num_problems, 4096)), compression="gzip")
                summ = f.create_group("problem_summary")
                modes = first[f"{names[0]}.mode_mass"].shape[1]
                extra_dims = {d: v.shape[i] for (dims, v) in items0.values() for i, d in enumerate(dims) if i > 0}
                summ.dimensions = {"problem": num_problems, "quantile": len(QUANTILES), "mode": modes,
                                   **{d: s for d, s in extra_dims.items() if d not in ("quantile", "mode")}}
                summ.create_variable("problem", ("problem",), data=np.arange(num_problems))
                summ.create_variable("quantile", ("quantile",), data=np.asarray(QUANTILES))
                summ.create_variable("mode", ("mode",), data=np.arange(modes))
                for key, (dims, value) in items0.items():
                    value = np.asarray(value)
                    dtype = np.int8 if value.dtype == bool else value.dtype
                    summ.create_variable(key, dims, dtype=dtype, compression="gzip")
                for cname, values in coords.items():
                    values = np.asarray(values)
                    _create(summ, cname, ("problem",), values)
                summ.attrs["method_code_meaning"] = "0 grid, 1 refined grid, 2 nested sampling, 3 unresolved grid, 4 NUTS"
                for index in range(self.num_chunks):
                    part = first if index == 0 else self.read_chunk(index)
                    idx = part["problem_index"]
                    lo, hi = int(idx[0]), int(idx[-1]) + 1
                    for j, name in enumerate(names):
                        post[name][0, :, lo:hi] = part["draws"][:, j, :].T
                    for key, (dims, value) in _summary_items(part, names).items():
                        value = np.asarray(value)
                        summ[key][lo:hi, ...] = value.astype(np.int8) if value.dtype == bool else value
                for group, ds in (extra_groups or {}).items():
                    g = f.create_group(group)
                    g.dimensions = {d: s for d, s in ds.sizes.items()}
                    for cname, coord in ds.coords.items():
                        _create(g, cname, coord.dims, np.asarray(coord.values))
                    for vname, var in ds.data_vars.items():
                        _create(g, vname, var.dims, np.asarray(var.values))

        atomic_write(self.out, write)
        shutil.rmtree(self.folder, ignore_errors=True)
        return self.out


def _create(group, name: str, dims, values: np.ndarray) -> None:
    """A netCDF variable; text becomes variable-length UTF-8 strings (netCDF4 ``string``)."""
    import h5py

    if values.dtype.kind in "USO":
        values = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1)],
                          dtype=object).reshape(values.shape)
        group.create_variable(name, dims, data=values, dtype=h5py.string_dtype("utf-8"))
    else:
        group.create_variable(name, dims, data=values)


def result_attrs(method: str, diagnostics: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    return {"astroinfer_format": FORMAT_NAME, "astroinfer_format_version": FORMAT_VERSION, "method": method,
            "diagnostics": to_json(diagnostics), "provenance": to_json(provenance)}
