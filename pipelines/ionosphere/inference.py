"""The ionosphere pipeline's ``sample`` hook: every (time, ant, dir, pol) problem of the input,
in chunks (resumable, optionally on Dask), then the TEC h5parm, the station table, the
optional smoothing stage and the result file.

The steps, in order: :func:`_plan` (settings and the batch spec), :func:`_compute_chunks`
(each chunk solved, its per-problem extras added, written to the parts folder, and its
solutions kept), :func:`_gather` (the solutions of every chunk, in chunk order),
:func:`_station_summary`, :func:`~astroinfer.pipelines.ionosphere.h5parm.write_solutions`,
:func:`_diagnostics` and the result file. The h5parm is written from the solutions the run
holds; only chunks of an interrupted run (``--resume``) are read back from the parts folder.

The module is not called ``sample``: importing a submodule sets it as the package's
attribute of that name, which would replace the hook the package exports.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from astroinfer import store as result_store
from astroinfer.result import load as load_result
from astroinfer.batch_store import BatchStore, result_attrs
from astroinfer.engine.batch import iter_results, make_spec, summary_counts, to_result
from astroinfer.pipelines.ionosphere.data import TEC_CONSTANT, axis_label
from astroinfer.pipelines.ionosphere.h5parm import write_solutions
from astroinfer.pipelines.ionosphere.options import LOAD_DEFAULTS, NAME
from astroinfer.pipelines.ionosphere.phase_model import model_dtec, model_dtec_clock
from astroinfer.pipelines.ionosphere.smooth import smoothed_screen

if TYPE_CHECKING:
    from astroinfer.engine.batch import BatchSpec
    from astroinfer.pipeline import PreparedRun
    from astroinfer.result import Result

__all__ = ["sample"]

# Named through the package, as tests and benchmarks name them: the run's fingerprint records it.
_KERNELS = {False: "astroinfer.pipelines.ionosphere:DTEC_KERNEL", True: "astroinfer.pipelines.ionosphere:DTEC_CLOCK_KERNEL"}

#: A chunk's per-problem fields that the h5parm, the station table and the diagnostics use.
_SOLUTION_FIELDS = ("problem_index", "dtec.mode_mean", "dtec.sd", "dtec.mode_sd", "dtec.num_modes", "extra.phi0",
                    "extra.residual_ss", "extra.residual_n", "extra.flagged", "method_code")
_CLOCK_FIELDS = ("clock.mean", "clock.sd")


@dataclass
class _BatchRun:
    """One run's settings, problems and batch spec: what every step needs."""

    prepared: "PreparedRun"
    settings: dict[str, Any]
    batched: dict[str, np.ndarray]
    shared: dict[str, Any]
    fit_clock: bool
    method: str
    spec: "BatchSpec"
    fingerprint: dict[str, Any]
    started: str
    t0: float
    coords: dict[str, np.ndarray]

    @property
    def meta(self) -> dict[str, Any]:
        return self.prepared.loaded.metadata

    @property
    def execution(self) -> dict[str, Any]:
        return self.prepared.execution or {}

    @property
    def num_problems(self) -> int:
        return self.batched["phase"].shape[0]


@dataclass
class _Solutions:
    """Every problem's solution (the heaviest dTEC mode), and the station sums of the residuals."""

    values: dict[str, np.ndarray]
    flagged: np.ndarray
    codes: np.ndarray
    residual_ss: np.ndarray
    residual_n: np.ndarray


def sample(prepared: "PreparedRun", progress: bool = False) -> "Result":
    """Every (time, ant, dir, pol) problem of the input, in chunks, into a resumable result file."""
    run = _plan(prepared)
    if prepared.out is None:  # Python API without an output file: everything in memory
        return _sample_in_memory(run, progress)
    return _sample_to_file(run, progress)


# -- the steps ---------------------------------------------------------------------------------
def _plan(prepared: "PreparedRun") -> _BatchRun:
    """The run's settings, its problems and the batch spec (grid, or nested sampling)."""
    settings = {**LOAD_DEFAULTS, **prepared.load_options}
    loaded = prepared.loaded
    shared = dict(loaded.data["shared"])
    fit_clock = "clock_max" in shared
    batched = {"phase": loaded.data["phase"], "weight": loaded.data["weight"]}
    method = prepared.method
    options: dict[str, Any] = dict(prepared.options)
    if method == "grid":  # the likelihood of a whole chunk on the grid at once
        options["grid_kernel"] = _KERNELS[fit_clock]
    num = batched["phase"].shape[0]
    chunk = min(settings["chunk_size"], -(-num // 512) * 512)
    model_fn = model_dtec_clock if fit_clock else model_dtec
    spec = make_spec(model_fn, batched, shared, method, prepared.seed, settings["draws"], chunk, options)
    started, t0 = result_store.utc_now(), time.perf_counter()
    fingerprint = {**spec.fingerprint(), "input_sha256": result_store.file_sha256(prepared.input_path),
                   # Output-side settings do not change what the chunks hold (resume ignores them).
                   "settings": {k: v for k, v in settings.items() if k not in ("h5parm_out", "smooth")}}
    return _BatchRun(prepared=prepared, settings=settings, batched=batched, shared=shared, fit_clock=fit_clock,
                     method=method, spec=spec, fingerprint=fingerprint, started=started, t0=t0,
                     coords=_problem_coords(loaded.metadata))


def _problem_coords(meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """Each problem's time, station, direction and polarisation."""
    index, axes = meta["_index"], meta["_axes"]
    return {"time": axes["time"][index["time"]], "ant": np.array([axis_label(a) for a in axes["ant"]])[index["ant"]],
            "dir": np.array([axis_label(a) for a in axes["dir"]])[index["dir"]],
            "pol": np.array([axis_label(a) for a in axes["pol"]])[index["pol"]]}


def _sample_in_memory(run: _BatchRun, progress: bool) -> "Result":
    """All chunks into one in-memory result (no result file, no h5parm)."""
    parts = {}
    for c, part in iter_results(run.spec, run.batched, run.shared, range(run.spec.num_chunks),
                                run.execution.get("scheduler"), progress):
        part.update(_chunk_extras(part, run.batched, run.shared, run.fit_clock))
        parts[c] = part
    result = to_result(run.spec, parts, run.coords)
    if run.settings["smooth"]:
        summ = result.idata.problem_summary
        group, result.diagnostics["smoothing"] = smoothed_screen(
            summ["dtec_mode_mean"].values[:, 0], summ["dtec_mode_sd"].values[:, 0], summ["flagged"].values > 0,
            summ["dtec_num_modes"].values > 1, run.meta["_index"], run.meta["_axes"], run.coords)
        result.idata.add_groups({"smoothed_screen": group})
    result.provenance = _provenance(run)
    return result


def _sample_to_file(run: _BatchRun, progress: bool) -> "Result":
    """The chunks through the parts folder (resumable) into the result file, and the h5parm."""
    prepared, spec, meta = run.prepared, run.spec, run.meta
    batch = BatchStore(prepared.out, run.fingerprint, spec.num_chunks, resume=bool(run.execution.get("resume")))
    done = batch.completed()
    todo = [c for c in range(spec.num_chunks) if c not in done]
    if progress and done:
        print(f"resuming: {len(done)} of {spec.num_chunks} chunks already done", file=sys.stderr)
    fields = _compute_chunks(run, batch, todo, progress)
    wall = time.perf_counter() - run.t0
    for c in sorted(done):  # the interrupted run's chunks: only in the parts folder
        fields[c] = _solution_fields(batch.read_chunk(c), run.fit_clock)
    solutions = _gather(run, fields)
    h5parm = _h5parm_path(prepared, run.settings)
    write_solutions(h5parm, solutions.values, solutions.flagged, meta["shape"][:4], meta["_axes"],
                    meta["axes_in_file"], run.fit_clock, antenna_table=meta.get("_antenna"),
                    source_table=meta.get("_source"))
    extra_groups = {"station_summary": _station_summary(run, solutions)}
    smoothing = None
    if run.settings["smooth"]:
        values = solutions.values
        extra_groups["smoothed_screen"], smoothing = smoothed_screen(
            values["dtec"], values["dtec_mode_sd"], solutions.flagged, values["multi"] > 0, meta["_index"],
            meta["_axes"], run.coords)
    diagnostics = _diagnostics(run, solutions, todo, done, wall, h5parm, smoothing)
    record = _provenance(run)
    record["input_metadata"] = {k: v for k, v in meta.items() if not k.startswith("_")}
    record["load_options"] = dict(prepared.load_options)
    record["execution"] = dict(run.execution)
    batch.finish(spec.names, run.coords, result_attrs(f"batch-{run.method}", diagnostics, record),
                 extra_groups=extra_groups)
    return load_result(prepared.out)


def _compute_chunks(run: _BatchRun, batch: BatchStore, todo: list[int],
                    progress: bool) -> dict[int, dict[str, np.ndarray]]:
    """Solve the chunks ``todo``, write each to the parts folder; return their solution fields."""
    fields = {}
    for c, part in iter_results(run.spec, run.batched, run.shared, todo, run.execution.get("scheduler"), progress):
        part.update(_chunk_extras(part, run.batched, run.shared, run.fit_clock))
        batch.write_chunk(c, part)
        fields[c] = _solution_fields(part, run.fit_clock)
    return fields


def _chunk_extras(part: dict[str, np.ndarray], batched: dict[str, np.ndarray], shared: dict[str, Any],
                  fit_clock: bool) -> dict[str, np.ndarray]:
    """Per problem: phi0 at the heaviest mode, residual phase sum of squares, flagged."""
    idx = part["problem_index"]
    phase = batched["phase"][idx].astype(np.float64)
    weight = (batched["weight"][idx] > 0).astype(np.float64)
    freq = np.asarray(shared["freq"], np.float64)
    dtec = part["dtec.mode_mean"][:, 0].astype(np.float64)
    model_phase = TEC_CONSTANT * dtec[:, None] / freq
    if fit_clock:
        model_phase = model_phase + 2 * np.pi * freq * part["clock.mean"].astype(np.float64)[:, None]
    s = np.sum(weight * np.exp(1j * (phase - model_phase)), axis=1)
    phi0 = np.angle(s)
    resid = np.angle(np.exp(1j * (phase - model_phase - phi0[:, None])))
    n = weight.sum(axis=1)
    return {"extra.phi0": phi0.astype(np.float32), "extra.residual_ss": np.sum(weight * resid**2, axis=1),
            "extra.residual_n": n.astype(np.int32), "extra.flagged": (n == 0).astype(np.int8),
            "extra.problem_index": idx}


def _solution_fields(part: dict[str, np.ndarray], fit_clock: bool) -> dict[str, np.ndarray]:
    """The fields of a chunk that :func:`_gather` uses (not the draws: memory stays bounded)."""
    names = _SOLUTION_FIELDS + (_CLOCK_FIELDS if fit_clock else ())
    return {name: np.asarray(part[name]) for name in names}


def _gather(run: _BatchRun, fields: dict[int, dict[str, np.ndarray]]) -> _Solutions:
    """Every chunk's solutions into per-problem arrays, and the residuals summed per station.

    Chunks are taken in chunk order, whatever order they were solved in, so the station sums
    (floating point) are the same for a resumed or a Dask run as for an uninterrupted one."""
    index = run.meta["_index"]
    num_ants = len(run.meta["_axes"]["ant"])
    ss, nn = np.zeros(num_ants), np.zeros(num_ants)
    values = {k: np.zeros(run.num_problems, np.float64) for k in ("dtec", "dtec_sd", "dtec_mode_sd", "phi0", "clock",
                                                                  "clock_sd", "multi")}
    flagged = np.zeros(run.num_problems, bool)
    codes = []
    for c in range(run.spec.num_chunks):
        part = fields[c]
        idx = part["problem_index"]
        np.add.at(ss, index["ant"][idx], part["extra.residual_ss"])
        np.add.at(nn, index["ant"][idx], part["extra.residual_n"])
        values["dtec"][idx] = part["dtec.mode_mean"][:, 0]
        values["dtec_sd"][idx] = part["dtec.sd"]
        values["dtec_mode_sd"][idx] = part["dtec.mode_sd"][:, 0]
        values["phi0"][idx] = part["extra.phi0"]
        values["multi"][idx] = part["dtec.num_modes"] > 1
        if run.fit_clock:
            values["clock"][idx] = part["clock.mean"]
            values["clock_sd"][idx] = part["clock.sd"]
        flagged[idx] = part["extra.flagged"] > 0
        codes.append(part["method_code"])
    return _Solutions(values=values, flagged=flagged, codes=np.concatenate(codes), residual_ss=ss, residual_n=nn)


def _station_summary(run: _BatchRun, solutions: _Solutions) -> xr.Dataset:
    """Per station: the residual phase rms, the channels used and the multimodal problems."""
    axes, index = run.meta["_axes"], run.meta["_index"]
    num_ants = len(axes["ant"])
    ss, nn = solutions.residual_ss, solutions.residual_n
    ant_names = [axis_label(a) for a in axes["ant"]]
    per_station_multi = np.bincount(index["ant"], weights=solutions.values["multi"], minlength=num_ants)
    return xr.Dataset(
        {"residual_phase_rms": ("station", np.sqrt(ss / np.maximum(nn, 1))),
         "num_channels_used": ("station", nn.astype(np.int64)),
         "num_multimodal": ("station", per_station_multi.astype(np.int64))},
        coords={"station": np.array(ant_names, dtype=object)})


def _h5parm_path(prepared: "PreparedRun", settings: dict[str, Any]) -> Path:
    if settings.get("h5parm_out"):
        return Path(settings["h5parm_out"])
    out = Path(prepared.out)
    stem = out.name[:-3] if out.name.endswith(".h5") else out.name
    return out.with_name(f"{stem}.tec.h5")


def _diagnostics(run: _BatchRun, solutions: _Solutions, todo: list[int], done: set[int], wall: float,
                 h5parm: Path, smoothing: dict[str, Any] | None) -> dict[str, Any]:
    """The result file's diagnostics: counts, chunks, speed, and the warnings."""
    spec, num = run.spec, run.num_problems
    computed = sum(min(spec.chunk_size, num - c * spec.chunk_size) for c in todo)
    diagnostics = {
        "num_problems": num, "num_flagged_problems": int(solutions.flagged.sum()),
        "num_multimodal": int(solutions.values["multi"].sum()), **summary_counts({"method_code": solutions.codes}),
        "chunks_total": spec.num_chunks, "chunks_computed": len(todo), "chunks_resumed": len(done),
        "wall_time_s": wall, "problems_per_s": (len(todo) and computed / max(wall, 1e-9)),
        "scheduler": run.execution.get("scheduler"), "h5parm_out": str(h5parm), "warnings": [],
    }
    if smoothing is not None:
        diagnostics["smoothing"] = smoothing
        if smoothing["hyperparameters_on_grid_edge"]:
            diagnostics["warnings"].append("smoothing: the chosen GP amplitude or time scale is at the edge of its "
                                           "search grid; the screen may be too smooth or too rough")
    if diagnostics["problems_grid_unresolved"]:
        diagnostics["warnings"].append(f"{diagnostics['problems_grid_unresolved']} problem(s) not resolved by the grid "
                                       "even after refinement (method_code 3); nested_fallback = true (the default) in the "
                                       "config's [grid] table nested-samples them")
    if diagnostics["problems_nested"] and run.method != "nested":  # a fallback, not what was asked for
        diagnostics["warnings"].append(f"{diagnostics['problems_nested']} problem(s) were not resolved by the grid and "
                                       "were nested-sampled instead (method_code 2)")
    return diagnostics


def _provenance(run: _BatchRun) -> dict[str, Any]:
    prepared = run.prepared
    return result_store.provenance(method=f"batch-{run.method}", options=run.fingerprint, seed=prepared.seed,
                                   started=run.started, finished=result_store.utc_now(), pipeline=NAME,
                                   input_path=prepared.input_path)
