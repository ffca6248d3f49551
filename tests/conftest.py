"""Shared fixtures: simulated line-fit data, and running the CLI in-process or as a real process."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "catalogs" / "line_fit_demo.csv"
DEMO_TRUTH = REPO / "catalogs" / "line_fit_demo.truth.json"


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Free every compiled XLA executable after each test module.

    Each executable the CPU backend loads takes memory mappings of its own, and the
    whole suite in one process compiles thousands: without this, the process passes
    Linux's default limit of 65 530 mappings (``vm.max_map_count``) and LLVM aborts
    the next compilation with "Cannot allocate memory".
    """
    yield
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.clear_caches()
        gc.collect()


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def run_process():
    """Run ``astroinfer ARGS...`` as a separate process: (exit code, stdout, stderr)."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 600):
        proc = subprocess.run(
            [sys.executable, "-m", "astroinfer.cli", *map(str, args)],
            cwd=cwd, env=_subprocess_env(), capture_output=True, text=True, timeout=timeout,
        )
        return proc.returncode, proc.stdout, proc.stderr

    return run


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the CLI in this process through ``astroinfer.cli.main``: (exit code, stdout, stderr)."""
    from astroinfer.cli import main

    # main() may add to XLA_FLAGS and sets the compilation-cache variables; monkeypatch
    # restores them afterwards, so they do not leak into later tests' subprocesses.
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:  # record it as absent (delenv alone records nothing for an absent name)
            monkeypatch.setenv(name, "")
            monkeypatch.delenv(name)

    def run(*args: str):
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def matern32_covariance(x, amp, scale) -> np.ndarray:
    """The dense Matern-3/2 covariance ``amp^2 (1 + t) exp(-t)``, ``t = sqrt(3) |x_i - x_j| / scale``,
    in float64: the independent reference for the GP likelihood tests."""
    x = np.asarray(x, dtype=np.float64)
    t = np.abs(x[:, None] - x[None, :]) * np.sqrt(3.0) / scale
    return amp**2 * (1.0 + t) * np.exp(-t)


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """Exit status 2, exactly one ``astroinfer: error:`` line on stderr, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit status {code}, stderr:\n{err}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("astroinfer: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="session")
def simulated_line(tmp_path_factory):
    """A simulated line-fit table (seed 11, 60 points) and its recorded truth."""
    from astroinfer.pipelines.line_fit import simulate

    path = tmp_path_factory.mktemp("line") / "sim.csv"
    record = simulate(path, seed=11, num_points=60)
    return path, record


@pytest.fixture(scope="session")
def demo_truth() -> dict:
    return json.loads(DEMO_TRUTH.read_text())
