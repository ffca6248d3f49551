"""What a batch run is: :class:`BatchSpec`, the batch methods and their result codes.

A spec holds names and numbers, never compiled code: it pickles to a Dask worker, which
rebuilds the model (and grid kernel) from their ``module:qualname`` references. Every other
module of the batch package reads it; it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

__all__ = ["BatchSpec", "BatchMethod", "BATCH_METHODS", "METHOD_CODES", "DEFAULT_CHUNK", "reference",
           "resolve_reference"]

BATCH_METHODS = ("grid", "nested", "nuts")
METHOD_CODES = {"grid": 0, "grid-refined": 1, "nested": 2, "grid-unresolved": 3, "nuts": 4}
DEFAULT_CHUNK = {"kernel": 8192, "generic": 512, "nested": 256, "nuts": 256}


def reference(obj: Any) -> str | None:
    """``module:qualname`` of an importable function or object, else None."""
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qual or "<locals>" in qual or module == "__main__":
        return None
    try:
        target = import_module(module)
        for part in qual.split("."):
            target = getattr(target, part)
    except Exception:
        return None
    return f"{module}:{qual}" if target is obj else None


def resolve_reference(ref: str) -> Any:
    module, _, qual = ref.partition(":")
    target = import_module(module)
    for part in qual.split("."):
        target = getattr(target, part)
    return target


@dataclass(frozen=True)
class BatchSpec:
    """Everything a process needs to run a chunk: names and numbers, never compiled code.

    ``model`` and ``grid_kernel`` are ``module:qualname`` references when the objects are
    importable (then the spec pickles to a Dask worker); otherwise the objects themselves
    (in-process runs only).
    """

    model: Any
    method: str
    seed: int
    num_problems: int
    chunk_size: int
    num_draws: int
    names: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()
    grid_kernel: Any = None

    @property
    def num_chunks(self) -> int:
        return -(-self.num_problems // self.chunk_size)

    def chunk_bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(self.num_problems, start + self.chunk_size)

    def option(self, name: str) -> Any:
        return dict(self.options)[name]

    def model_fn(self) -> Callable:
        return resolve_reference(self.model) if isinstance(self.model, str) else self.model

    def kernel_obj(self):
        if self.grid_kernel is None:
            return None
        return resolve_reference(self.grid_kernel) if isinstance(self.grid_kernel, str) else self.grid_kernel

    def portable(self) -> bool:
        return isinstance(self.model, str) and (self.grid_kernel is None or isinstance(self.grid_kernel, str))

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a resumed run to continue this one."""
        return {"model": self.model if isinstance(self.model, str) else repr(self.model),
                "method": self.method, "seed": self.seed, "num_problems": self.num_problems,
                "chunk_size": self.chunk_size, "num_draws": self.num_draws, "names": list(self.names),
                "options": {k: v for k, v in self.options},
                "grid_kernel": self.grid_kernel if isinstance(self.grid_kernel, (str, type(None))) else repr(self.grid_kernel)}


@runtime_checkable
class BatchMethod(Protocol):
    """The protocol every batch method (``grid``, ``nested``, ``nuts``) follows, so that
    :func:`~astroinfer.engine.batch.run.sample_batch` is a thin loop over it.

    - ``name`` and ``defaults`` (every option with its default);
    - ``latent_names(model, example)``: the parameters a problem has (``example`` is one
      problem's data merged with the shared data);
    - ``check(options, model=, first=, shared=, names=, num_draws=, kernel=)``: the merged
      options with their values checked and the defaults that depend on the model filled in
      (``first`` is the first problem's data, ``kernel`` the grid kernel or None);
    - ``run_problems(spec, batched, shared, indices)``: one chunk's results, a dict of numpy
      arrays with a leading problem axis, ``method_code`` included. The compiled chunk
      function behind it is built once per spec and chunk shape and takes the problems'
      data as its argument, so later chunks compile nothing.
    """

    name: str
    defaults: Mapping[str, Any]

    def latent_names(self, model: Callable, example: dict[str, Any]) -> tuple[str, ...]:
        """The model's latent parameters, in the order of the results."""

    def check(self, options: dict[str, Any], *, model: Callable, first: dict[str, Any], shared: dict[str, Any],
              names: tuple[str, ...], num_draws: int, kernel: Any) -> dict[str, Any]:
        """``options`` (defaults merged) with their values checked."""

    def run_problems(self, spec: BatchSpec, batched: dict[str, Any], shared: dict[str, Any],
                     indices: Any) -> dict[str, Any]:
        """One chunk's per-problem results."""
