"""Separate compile time from run time, for any sampler, without touching its code.

JAX reports every trace, lowering and backend compilation through ``jax.monitoring``;
summing those events while a sampler runs gives the compile time (and the number of
backend compilations), and the rest of the wall time is sampling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import jax.monitoring

_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"

# One process-wide listener (jax.monitoring has no cheap way to remove one on every
# JAX version); it feeds whichever timers are active.
_active: list["CompileTimer"] = []
_registered = False


def _listener(event: str, duration: float, **_: object) -> None:
    if event in _COMPILE_EVENTS:
        for timer in _active:
            timer.compile_seconds += duration
            if event == _BACKEND_COMPILE:
                timer.backend_compiles += 1


@dataclass
class CompileTimer:
    """Context manager: wall time, compile time and backend-compile count of a block."""

    compile_seconds: float = 0.0
    backend_compiles: int = 0
    wall_seconds: float = 0.0
    _start: float = field(default=0.0, repr=False)

    def __enter__(self) -> "CompileTimer":
        global _registered
        if not _registered:
            jax.monitoring.register_event_duration_secs_listener(_listener)
            _registered = True
        _active.append(self)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_seconds = time.perf_counter() - self._start
        _active.remove(self)

    @property
    def run_seconds(self) -> float:
        return max(self.wall_seconds - self.compile_seconds, 0.0)
