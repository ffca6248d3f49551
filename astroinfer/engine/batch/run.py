"""``sample_batch`` and its steps: the spec of a run, one chunk, chunks in order, the Result.

The unit of work is :func:`run_chunk` ``(spec, chunk_index, batched_slice, shared)``: a
plain function of a picklable :class:`~astroinfer.engine.batch.spec.BatchSpec` and numpy
arrays, so Dask workers (:mod:`.dask`) run it from configuration and data (no jitted
function is ever pickled). This is the top of the batch package: it dispatches to the
grid, nested and NUTS chunk functions, which share :mod:`.spec` and :mod:`.devices` below.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any, Callable, Iterable, Iterator

import arviz as az
import numpy as np

from astroinfer.batch_store import summary_dataset
from astroinfer.engine.batch import dask, grid, nested, nuts
from astroinfer.engine.batch.spec import (BATCH_METHODS, DEFAULT_CHUNK, METHOD_CODES, BatchMethod, BatchSpec,
                                          reference, resolve_reference)
from astroinfer.errors import ConvergenceWarning, OptionError
from astroinfer.result import Result
from astroinfer.store import provenance as make_provenance
from astroinfer.store import utc_now

__all__ = ["sample_batch", "run_chunk", "make_spec", "iter_results", "to_result", "summary_counts",
           "METHODS", "batch_method", "method_defaults", "validate_options"]


def _check_data(data: dict[str, Any]) -> int:
    if not data:
        raise OptionError("sample_batch needs per-problem data: a dict of arrays with a leading problem axis")
    sizes = {name: np.shape(v)[0] if np.ndim(v) else None for name, v in data.items()}
    if any(s is None for s in sizes.values()) or len(set(sizes.values())) != 1:
        raise OptionError(f"every per-problem array needs the same leading (problem) axis; got lengths {sizes}")
    return int(next(iter(sizes.values())))


#: The batch methods, each following :class:`~astroinfer.engine.batch.spec.BatchMethod`.
METHODS: dict[str, BatchMethod] = {"grid": grid.METHOD, "nested": nested.METHOD, "nuts": nuts.METHOD}


def batch_method(method: str) -> BatchMethod:
    if method not in METHODS:
        raise OptionError(f"unknown batch method '{method}': expected one of {', '.join(BATCH_METHODS)}")
    return METHODS[method]


def method_defaults(method: str) -> dict[str, Any]:
    """The options of batch method ``method`` with their defaults; "grid" also takes every
    option of the nested sampler prefixed ``nested_`` (its fallback for unresolved problems)."""
    return dict(batch_method(method).defaults)


def validate_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The defaults merged with ``options``; an unknown option raises OptionError (the
    values are checked by :func:`make_spec`, which knows the model)."""
    defaults = method_defaults(method)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise OptionError(f"unknown option(s) for batch method '{method}': {', '.join(unknown)}; valid options are "
                          f"{', '.join(sorted(defaults))}")
    return {**defaults, **options}


def make_spec(model: Callable, data: dict[str, Any], shared: dict[str, Any] | None, method: str, seed: int,
              num_draws: int, chunk_size: int | None, options: dict[str, Any]) -> BatchSpec:
    """Validate the settings, find the model's parameters, and describe the run."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
        raise OptionError(f"num_draws must be a positive integer, got {num_draws!r}")
    num = _check_data(data)
    options = dict(options)
    kernel = options.pop("grid_kernel", None)
    kernel_ref = kernel if isinstance(kernel, str) else None
    if kernel_ref is not None:
        kernel = resolve_reference(kernel_ref)
    merged = validate_options(method, options)
    shared = dict(shared or {})
    first = {k: np.asarray(v[0]) for k, v in data.items()}  # v may be an h5py dataset: read one row
    chosen = batch_method(method)
    names = chosen.latent_names(model, {**shared, **first})
    merged = chosen.check(merged, model=model, first=first, shared=shared, names=names, num_draws=int(num_draws),
                          kernel=kernel)
    size = chunk_size or DEFAULT_CHUNK["kernel" if kernel is not None else ("generic" if method == "grid" else method)]
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise OptionError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    model_ref = reference(model) or model
    if kernel is not None and kernel_ref is None:
        kernel_ref = reference(kernel) or kernel
    return BatchSpec(model=model_ref, method=method, seed=int(seed), num_problems=num, chunk_size=int(size),
                     num_draws=int(num_draws), names=tuple(names), options=tuple(sorted(merged.items())),
                     grid_kernel=kernel_ref)


def run_chunk(spec: BatchSpec, chunk_index: int, batched: dict[str, np.ndarray],
              shared: dict[str, Any]) -> dict[str, np.ndarray]:
    """Results of one chunk (numpy arrays with a leading axis of the chunk's problems)."""
    start, stop = spec.chunk_bounds(chunk_index)
    indices = np.arange(start, stop, dtype=np.int64)
    out = METHODS[spec.method].run_problems(spec, batched, shared, indices)
    out["problem_index"] = indices
    return out


def iter_results(spec: BatchSpec, batched: dict[str, np.ndarray], shared: dict[str, Any],
                 chunks: Iterable[int], scheduler: str | None = None, progress: bool = False,
                 ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Run ``chunks`` (in-process, or on a Dask cluster) and yield ``(index, results)`` as they finish."""
    chunks = list(chunks)
    started = time.perf_counter()
    done_problems = 0
    if scheduler is None:
        source = ((c, run_chunk(spec, c, {k: v[slice(*spec.chunk_bounds(c))] for k, v in batched.items()}, shared))
                  for c in chunks)
    else:
        source = dask.run_chunks(run_chunk, spec, batched, shared, chunks, scheduler)
    for number, (index, result) in enumerate(source, start=1):
        done_problems += result["problem_index"].size
        if progress:
            rate = done_problems / max(time.perf_counter() - started, 1e-9)
            print(f"\rbatch: chunk {number}/{len(chunks)}, {done_problems} problems, {rate:,.0f} problems/s",
                  end="", flush=True, file=sys.stderr)
        yield index, result
    if progress and chunks:
        print(file=sys.stderr)


def to_result(spec: BatchSpec, parts: dict[int, dict[str, np.ndarray]], coords: dict[str, np.ndarray] | None = None,
              provenance: dict[str, Any] | None = None, diagnostics: dict[str, Any] | None = None):
    """Assemble chunk results (all in memory) into a :class:`~astroinfer.Result`."""
    ordered = [parts[i] for i in sorted(parts)]
    merged = {k: np.concatenate([p[k] for p in ordered]) for k in ordered[0]}
    posterior = {name: merged["draws"][:, j, :].T[None] for j, name in enumerate(spec.names)}
    idata = az.from_dict(posterior=posterior, dims={n: ["problem"] for n in spec.names})
    idata.add_groups({"problem_summary": summary_dataset(spec, merged, coords or {})})
    diag = {"num_problems": spec.num_problems, **summary_counts(merged), **(diagnostics or {})}
    if spec.method == "nuts":
        diag.update(nuts.overall_diagnostics(merged, spec.names))
        for message in diag["warnings"]:
            warnings.warn(message, ConvergenceWarning, stacklevel=3)
    return Result(idata=idata, method=f"batch-{spec.method}", diagnostics=diag, provenance=dict(provenance or {}))


def summary_counts(merged: dict[str, np.ndarray]) -> dict[str, int]:
    codes = merged["method_code"]
    return {f"problems_{name.replace('-', '_')}": int(np.sum(codes == code)) for name, code in METHOD_CODES.items()}


def sample_batch(model: Callable, data: dict[str, Any], method: str = "grid", seed: int = 0, *,
                 shared: dict[str, Any] | None = None, num_draws: int = 100, chunk_size: int | None = None,
                 scheduler: str | None = None, progress: bool = False, coords: dict[str, Any] | None = None,
                 **options: Any):
    """Run B independent problems of ``model`` and return one :class:`~astroinfer.Result`.

    Parameters
    ----------
    model:
        A NumPyro model, called per problem as ``model(**shared, **data_i)``.
    data:
        Per-problem arrays, each with a leading problem axis of length B.
    method:
        ``"grid"`` (exact quadrature, at most 3 scalar parameters; ``grid_kernel=`` gives a
        vectorised likelihood), ``"nested"`` (batched nested sampling, any continuous model)
        or ``"nuts"`` (batched NUTS with per-problem adaptation and R-hat; scalar latent
        sites; no evidence).
    seed:
        Problem ``i`` uses ``fold_in(PRNGKey(seed), i)``.
    shared:
        Arrays and settings common to every problem.
    num_draws:
        Posterior draws kept per problem (bounded storage).
    chunk_size:
        Problems per compiled chunk (default 8192 with a grid kernel, 512 generic grid,
        256 nested, 256 nuts).
    scheduler:
        None (in-process), ``"local"`` (a Dask LocalCluster of 2 processes) or a Dask
        scheduler address.

    The result's ``posterior`` group holds ``num_draws`` draws per problem on a ``problem``
    dimension; the ``problem_summary`` group holds each parameter's mean, sd, quantiles and
    modes (location, mass, mean, sd), the log-evidence and its error, and ``method_code``.
    """
    spec = make_spec(model, data, shared, method, seed, num_draws, chunk_size, options)
    batched = {k: np.asarray(v) for k, v in data.items()}
    shared = dict(shared or {})
    started_utc, t0 = utc_now(), time.perf_counter()
    parts = dict(iter_results(spec, batched, shared, range(spec.num_chunks), scheduler, progress))
    wall = time.perf_counter() - t0
    record = make_provenance(method=f"batch-{method}", options=spec.fingerprint(), seed=seed,
                             started=started_utc, finished=utc_now())
    return to_result(spec, parts, coords, record, {"wall_time_s": wall,
                                                   "problems_per_s": spec.num_problems / max(wall, 1e-9)})
