"""Many independent problems of one NumPyro model: ``sample_batch``.

``data`` holds the per-problem arrays, each with a leading problem axis of length B;
``shared`` holds what every problem has in common (frequencies, settings). Problems run in
fixed-size chunks (padded, so one compile per chunk shape), each chunk vectorised and split
across the host's devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2`` gives
two CPU devices; the CLI sets it), so both cores work. Problem ``i`` draws its random
numbers from ``jax.random.fold_in(PRNGKey(seed), i)``: results do not depend on the chunk
size or on which process ran the chunk.

Methods:

- ``"grid"``: exact quadrature (:mod:`astroinfer.engine.grid`) for models with at most
  three scalar parameters on a bounded box; with a :class:`~astroinfer.engine.grid.GridKernel`
  (option ``grid_kernel``) the likelihood of a whole chunk is computed at once. Problems the
  grid does not resolve are refined, then handed to nested sampling; the method each
  problem ended with is recorded (``method_code``: 0 grid, 1 refined grid, 2 nested,
  3 unresolved grid).
- ``"nested"``: a lockstep, static-shape nested sampler for many small problems
  (:mod:`astroinfer.engine.batch.nested`), any continuous NumPyro model.
- ``"nuts"``: NUTS with per-problem window adaptation, vmapped over problems and chains
  (:mod:`astroinfer.engine.batch.nuts`); per-problem R-hat, bulk ESS and divergences, no evidence.

The package, arrows pointing down only: :mod:`.run` (``sample_batch``, ``make_spec``,
``run_chunk``, ``iter_results``, ``to_result``) dispatches to :mod:`.grid`, :mod:`.nested`
and :mod:`.nuts` (one chunk each) and to :mod:`.dask` (chunks on Dask workers); all of them
share :mod:`.spec` (:class:`BatchSpec`, the :class:`BatchMethod` protocol each method
follows, the method codes) and :mod:`.devices` (padding, per-problem keys, the split over
devices).
"""

from astroinfer.engine.batch.run import (METHODS, batch_method, iter_results, make_spec, method_defaults, run_chunk,
                                         sample_batch, summary_counts, to_result, validate_options)
from astroinfer.engine.batch.spec import BATCH_METHODS, METHOD_CODES, BatchMethod, BatchSpec

__all__ = ["sample_batch", "BatchSpec", "run_chunk", "make_spec", "iter_results", "to_result",
           "BATCH_METHODS", "METHOD_CODES", "summary_counts", "method_defaults", "validate_options", "METHODS",
           "BatchMethod", "batch_method"]
