"""Dask execution of batch chunks.

``scheduler="local"`` starts a ``LocalCluster`` of worker *processes* (NumPyro's effect
handlers are global per thread, so never threads), one per core up to 2; any other value
is the address of a running Dask scheduler (``tcp://host:8786``; on SLURM/PBS start one
with dask-jobqueue, see the docs' cluster page). Each task receives the run's
:class:`~astroinfer.engine.batch.spec.BatchSpec` (names and numbers: the model and grid
kernel travel as ``module:qualname`` references) and its chunk's numpy arrays, runs the
chunk function it is given (``run.run_chunk``, pickled by reference), compiles in the
worker (once per worker and chunk shape) and returns numpy results. The client keeps a
bounded number of chunks in flight, so memory does not grow with the number of problems,
and is the only writer of the result file.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from astroinfer.errors import SchedulerError

__all__ = ["run_chunks", "SchedulerError", "LOCAL_WORKERS"]

LOCAL_WORKERS = 2


def _client(scheduler: str):
    try:  # Dask is an optional extra: imported only when a scheduler is asked for
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise SchedulerError("--scheduler needs Dask: pip install 'astroinfer[distributed]'") from err
    if scheduler == "local":
        workers = max(1, min(LOCAL_WORKERS, os.cpu_count() or 1))
        # One JAX device per worker process: the processes are the parallelism.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout="20s"), None
    except (OSError, TimeoutError, ValueError) as err:
        raise SchedulerError(f"--scheduler {scheduler}: cannot connect to a Dask scheduler there ({err}); "
                             "expected 'local' or an address such as tcp://host:8786") from err


def run_chunks(run_chunk: Callable, spec, batched: dict[str, np.ndarray], shared: dict[str, Any],
               chunks: Iterable[int], scheduler: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Run ``chunks`` on Dask workers, each as ``run_chunk(spec, index, arrays, shared)`` (a
    module-level function: workers import it by name); yield ``(index, results)`` in
    completion order."""
    if not spec.portable():
        raise SchedulerError("--scheduler needs a model (and grid kernel) defined at module level of an importable "
                             "module, so that workers can import it by name")
    from distributed import as_completed

    client, cluster = _client(scheduler)
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        pending = list(chunks)
        in_flight = as_completed()
        limit = 2 * workers

        def submit(index: int) -> None:
            lo, hi = spec.chunk_bounds(index)
            part = {k: v[lo:hi] for k, v in batched.items()}
            in_flight.add(client.submit(run_chunk, spec, index, part, shared, pure=False, key=f"astroinfer-chunk-{index}-{os.getpid()}"))

        for _ in range(min(limit, len(pending))):
            index = pending.pop(0)
            submit(index)
        for future in in_flight:
            result = future.result()
            index = int(result["problem_index"][0] // spec.chunk_size)
            if pending:
                submit(pending.pop(0))
            yield index, result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
