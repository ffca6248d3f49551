"""ionosphere: differential TEC (and clock) per time, station, direction and polarisation.

Every (time, ant, dir, pol) cell of a LOFAR h5parm phase soltab is one small problem: the
phase in each channel is::

    phi(nu) = -8.4479745e9 * dTEC / nu + 2 pi nu tau + phi0        (dTEC in TECU, nu in Hz)

observed modulo 2 pi. **Likelihood** on the unit circle: each unflagged channel's phase is
von Mises about phi(nu) with concentration ``kappa``, chosen so that the von Mises has the
same mean resultant length as a wrapped normal of sd ``phase_noise`` (radians):
``I1(kappa)/I0(kappa) = exp(-phase_noise^2 / 2)``. Flagged channels (weight 0, or NaN
phase) are left out.

**Priors**: dTEC ~ Uniform(-dtec_max, dtec_max) TECU; phi0 ~ Uniform(-pi, pi); tau ~
Uniform(-clock_max, clock_max) seconds (``--fit-clock``).

**phi0 is integrated out exactly**: with S(dTEC, tau) = sum_k kappa_k exp(i (phi_k -
phi_model_k)) the likelihood marginal over a uniform phi0 is
``I0(|S|) / prod_k (2 pi I0(kappa_k))``, evaluated stably as ``log i0e(|S|) + |S|``. That
leaves dTEC one-dimensional (two with the clock), so the batch engine integrates it
exactly on a grid; the grid kernel computes S on all nodes of a chunk with one real matrix
product against a shared basis. ``phi0`` is reported from the conditional posterior
(its circular mean at the dTEC posterior mean).

**Reference station**: h5parm phases are already differences to a reference station; its
own problems are all zero phase and carry no information (they come out with dTEC = 0 and
are flagged when every phase is exactly zero). ``--ref-ant NAME`` subtracts that station's
phases first (per time, dir, pol).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from astroinfer.files import atomic_write
from astroinfer.pipeline import (
    InputError, Pipeline, PipelineData, PipelineOption, parse_choice, parse_count, parse_positive,
)
from astroinfer.tables import check_simulate_target

if TYPE_CHECKING:
    from astroinfer.pipeline import PreparedRun
    from astroinfer.result import Result

__all__ = ["PIPELINE", "TEC_CONSTANT", "model_dtec", "model_dtec_phi0", "model_dtec_clock", "DTEC_KERNEL",
           "DTEC_CLOCK_KERNEL", "kappa_from_noise", "load", "simulate", "summarise", "truth_path",
           "log_likelihood_phi0_marginal"]

NAME = "ionosphere"
TEC_CONSTANT = -8.4479745e9  # rad Hz / TECU
PROBLEM_AXES = ("time", "ant", "dir", "pol")


# -- likelihood ----------------------------------------------------------------------------
def kappa_from_noise(sigma: float) -> float:
    """Von Mises concentration with the mean resultant length of a wrapped normal of sd sigma."""
    from scipy.optimize import brentq
    from scipy.special import i0e, i1e

    target = math.exp(-0.5 * sigma**2)
    if target > 1 - 1e-9:
        return 1e9
    return float(brentq(lambda k: i1e(k) / i0e(k) - target, 1e-9, 1e9))


def _log_norm(kappa_k):
    import jax.numpy as jnp
    from jax.scipy.special import i0e

    # log(2 pi I0(kappa)) per channel, 0 where the channel is flagged (kappa_k = 0 marks it).
    return jnp.where(kappa_k > 0, jnp.log(2 * jnp.pi) + jnp.log(i0e(kappa_k)) + kappa_k, 0.0)


def log_likelihood_phi0_marginal(phase, weight, freq, kappa, dtec, clock=0.0):
    """log of prod_k vonMises(phi_k | model_k + phi0, kappa_k), integrated over phi0 ~ U(-pi, pi)."""
    import jax.numpy as jnp
    from jax.scipy.special import i0e

    kappa_k = kappa * (weight > 0)
    model_phase = TEC_CONSTANT * dtec / freq + 2 * jnp.pi * freq * clock
    resid = phase - model_phase
    s_re = jnp.sum(kappa_k * jnp.cos(resid), axis=-1)
    s_im = jnp.sum(kappa_k * jnp.sin(resid), axis=-1)
    r = jnp.hypot(s_re, s_im)
    return jnp.log(i0e(r)) + r - jnp.sum(_log_norm(kappa_k), axis=-1)


def model_dtec(phase, weight, freq, kappa, dtec_max):
    """dTEC only: phi0 integrated out analytically (the default model)."""
    import numpyro
    import numpyro.distributions as dist

    dtec = numpyro.sample("dtec", dist.Uniform(-dtec_max, dtec_max))
    numpyro.factor("phase", log_likelihood_phi0_marginal(phase, weight, freq, kappa, dtec))


def model_dtec_phi0(phase, weight, freq, kappa, dtec_max):
    """dTEC and phi0 both sampled (for checking the marginalisation; slower and periodic)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    dtec = numpyro.sample("dtec", dist.Uniform(-dtec_max, dtec_max))
    phi0 = numpyro.sample("phi0", dist.Uniform(-jnp.pi, jnp.pi))
    kappa_k = kappa * (weight > 0)
    mu = TEC_CONSTANT * dtec / freq + phi0
    lp = kappa_k * jnp.cos(phase - mu) - _log_norm(kappa_k)
    numpyro.factor("phase", jnp.sum(lp))


def model_dtec_clock(phase, weight, freq, kappa, dtec_max, clock_max):
    """dTEC and clock delay (seconds), phi0 integrated out analytically."""
    import numpyro
    import numpyro.distributions as dist

    dtec = numpyro.sample("dtec", dist.Uniform(-dtec_max, dtec_max))
    clock = numpyro.sample("clock", dist.Uniform(-clock_max, clock_max))
    numpyro.factor("phase", log_likelihood_phi0_marginal(phase, weight, freq, kappa, dtec, clock))


# -- grid kernels (the fast path) ---------------------------------------------------------
def _kernel_s(batched, shared, coefficients):
    """|S| on every node: one real matrix product (B, 2K) @ (2K, 2G)."""
    import jax.numpy as jnp

    kappa_k = shared["kappa"] * (batched["weight"] > 0)
    phase = batched["phase"]
    zr, zi = kappa_k * jnp.cos(phase), kappa_k * jnp.sin(phase)
    # S_g = sum_k z_k exp(-i theta_kg): Re = zr cos + zi sin, Im = zi cos - zr sin.
    cos, sin = jnp.cos(coefficients), jnp.sin(coefficients)  # (K, G)
    lhs = jnp.concatenate([zr, zi], axis=1)
    rhs = jnp.concatenate([jnp.concatenate([cos, -sin], axis=1), jnp.concatenate([sin, cos], axis=1)], axis=0)
    # Full float32 precision: on a GPU, XLA's default for float32 matrix products is TF32,
    # which gave log-evidence errors up to 3e-3 nat on an H200 (5e-6 on the CPU).
    s = jnp.matmul(lhs, rhs, precision="highest")
    G = coefficients.shape[1]
    r = jnp.hypot(s[:, :G], s[:, G:])
    return r, kappa_k


def _dtec_bounds(shared):
    import jax.numpy as jnp

    m = jnp.asarray(shared["dtec_max"], jnp.float32)
    return jnp.stack([-m]), jnp.stack([m])


def _dtec_loglike(batched, shared, axes):
    import jax.numpy as jnp
    from jax.scipy.special import i0e

    freq = jnp.asarray(shared["freq"], jnp.float32)
    theta = (TEC_CONSTANT / freq)[:, None] * axes[0][None, :]
    r, kappa_k = _kernel_s(batched, shared, theta)
    return jnp.log(i0e(r)) + r - jnp.sum(_log_norm(kappa_k), axis=-1, keepdims=True)


def _clock_bounds(shared):
    import jax.numpy as jnp

    m = jnp.asarray(shared["dtec_max"], jnp.float32)
    c = jnp.asarray(shared["clock_max"], jnp.float32)
    return jnp.stack([-m, -c]), jnp.stack([m, c])


def _clock_loglike(batched, shared, axes):
    import jax.numpy as jnp
    from jax.scipy.special import i0e

    freq = jnp.asarray(shared["freq"], jnp.float32)
    d, c = axes
    theta = ((TEC_CONSTANT / freq)[:, None, None] * d[None, :, None]
             + (2 * jnp.pi * freq)[:, None, None] * c[None, None, :])
    nd, nc = d.shape[0], c.shape[0]
    r, kappa_k = _kernel_s(batched, shared, theta.reshape(freq.shape[0], nd * nc))
    ll = jnp.log(i0e(r)) + r - jnp.sum(_log_norm(kappa_k), axis=-1, keepdims=True)
    return ll.reshape(-1, nd, nc)


def _make_kernels():
    from astroinfer.engine.grid import GridKernel

    return (GridKernel(names=("dtec",), bounds=_dtec_bounds, log_likelihood=_dtec_loglike),
            GridKernel(names=("dtec", "clock"), bounds=_clock_bounds, log_likelihood=_clock_loglike))


class _LazyKernel:
    """The kernels without importing JAX when the pipeline module is imported."""

    def __init__(self, which: int):
        self.which = which

    def __getattr__(self, name):
        return getattr(_make_kernels()[self.which], name)


DTEC_KERNEL = _LazyKernel(0)
DTEC_CLOCK_KERNEL = _LazyKernel(1)


# -- load ---------------------------------------------------------------------------------
RUN_OPTIONS = (
    PipelineOption("phase_noise", "phase noise per channel in radians (sets the von Mises kappa)", 0.3, parse_positive),
    PipelineOption("dtec_max", "dTEC prior: Uniform(-dtec_max, dtec_max) TECU", 1.0, parse_positive),
    PipelineOption("fit_clock", "also fit a clock delay tau (2-D grid: slower)", False, flag=True),
    PipelineOption("clock_max", "clock prior: Uniform(-clock_max, clock_max) seconds", 2e-8, parse_positive),
    PipelineOption("ref_ant", "subtract this station's phases first (default: none; h5parm phases are "
                   "usually already referenced)", None, str),
    PipelineOption("solset", "solset to read (default: the first with a phase soltab)", None, str),
    PipelineOption("soltab", "phase soltab to read (default: the first with TITLE 'phase')", None, str),
    PipelineOption("solver", "auto (exact grid, nested sampling where the grid does not resolve), grid or "
                   "nested (the pipeline's one engine method is nested sampling)", "auto", parse_choice("auto", "grid", "nested")),
    PipelineOption("draws", "posterior draws kept per problem", 100, parse_count(1)),
    PipelineOption("chunk_size", "problems per chunk (the unit of resume and of Dask tasks)", 8192, parse_count(1)),
    PipelineOption("h5parm_out", "the TEC h5parm to write (default: OUT with .h5 replaced by .tec.h5)", None, str),
    PipelineOption("smooth", "after the per-problem stage, smooth each station's dTEC over time with a Gaussian "
                   "process (tinygp, Matern-3/2) and flag the problems it calls outliers", False, flag=True),
)


def load(path: str | os.PathLike, *, phase_noise: float = 0.3, dtec_max: float = 1.0, fit_clock: bool = False,
         clock_max: float = 2e-8, ref_ant: str | None = None, solset: str | None = None, soltab: str | None = None,
         solver: str = "auto", draws: int = 100, chunk_size: int = 8192, h5parm_out: str | None = None,
         smooth: bool = False) -> PipelineData:
    """Read an h5parm phase soltab into per-problem arrays (problem = time, ant, dir, pol).

    ``solver`` to ``smooth`` are run settings (see RUN_OPTIONS), accepted here so that every
    option of the pipeline can be given to it; reading the file does not use them."""
    from astroinfer.pipelines._h5parm import read_phases

    path = Path(path)
    table = read_phases(path, solset=solset, soltab=soltab)
    phase, weight = table.phase, table.weight
    ants = [_name(a) for a in table.axes["ant"]]
    if ref_ant is not None:
        if ref_ant not in ants:
            raise InputError(f"{path}: --ref-ant {ref_ant} is not a station of the soltab; stations are "
                             f"{', '.join(ants[:10])}{', ...' if len(ants) > 10 else ''}")
        r = ants.index(ref_ant)
        phase = np.angle(np.exp(1j * (phase - phase[:, r:r + 1])))
        weight = weight * (weight[:, r:r + 1] > 0)
    T, A, D, P, K = phase.shape
    num = T * A * D * P
    flat_phase = phase.reshape(num, K).astype(np.float32)
    flat_weight = (weight.reshape(num, K) > 0).astype(np.float32)
    grids = np.meshgrid(np.arange(T), np.arange(A), np.arange(D), np.arange(P), indexing="ij")
    index = {a: g.reshape(-1) for a, g in zip(PROBLEM_AXES, grids)}
    kappa = kappa_from_noise(phase_noise)
    shared = {"freq": np.asarray(table.axes["freq"], np.float32), "kappa": np.float32(kappa),
              "dtec_max": np.float32(dtec_max)}
    if fit_clock:
        shared["clock_max"] = np.float32(clock_max)
    metadata = {
        "path": str(path), "solset": table.solset, "soltab": table.soltab, "shape": [T, A, D, P, K],
        "axes_in_file": list(table.present_axes), "num_problems": num, "num_channels": K,
        "num_flagged_channels": int(np.sum(flat_weight == 0)), "num_nan_phases": table.num_nan,
        "num_rewrapped_phases": table.num_rewrapped,
        "num_flagged_problems": int(np.sum(flat_weight.sum(axis=1) == 0)),
        "freq_min_hz": float(np.min(table.axes["freq"])), "freq_max_hz": float(np.max(table.axes["freq"])),
        "kappa": kappa, "phase_noise": phase_noise, "ref_ant": ref_ant,
    }
    return PipelineData(
        data={"phase": flat_phase, "weight": flat_weight, "shared": shared},
        metadata={**metadata, "_axes": table.axes, "_index": index, "_antenna": table.antenna_table,
                  "_source": table.source_table},
    )


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def model(phase, weight, freq, kappa, dtec_max, clock_max=None):
    """The pipeline's model for one problem: dTEC (and clock) with phi0 integrated out."""
    if clock_max is None:
        return model_dtec(phase, weight, freq, kappa, dtec_max)
    return model_dtec_clock(phase, weight, freq, kappa, dtec_max, clock_max)


# -- simulate -----------------------------------------------------------------------------
def truth_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    stem = path.name[:-3] if path.name.endswith(".h5") else path.stem
    return path.with_name(f"{stem}.truth.json")


def simulate(path: str | os.PathLike, seed: int = 0, *, num_times: int = 24, num_ants: int = 6, num_dirs: int = 1,
             num_pols: int = 2, num_freqs: int = 24, noise: float = 0.3, dtec_range: float = 0.4,
             clock: bool = False, flag_fraction: float = 0.02) -> dict[str, Any]:
    """Write an h5parm (sol000/phase000, AXES time,freq,ant,dir,pol) with known dTEC; return the truth.

    dTEC per station and direction is a random walk in time (start uniform in
    +-dtec_range/2, steps 0.01 TECU, clipped to +-dtec_range), shared by both polarisations;
    phi0 is uniform per problem; the noise is von Mises with the kappa of ``noise`` radians;
    ``flag_fraction`` of the channels get weight 0. Channels span 120-168 MHz.
    """
    from astroinfer.pipelines._h5parm import write_h5parm

    path = Path(path)
    check_simulate_target(path, seed)
    rng = np.random.default_rng(seed)
    freq = np.linspace(120e6, 168e6, num_freqs)
    times = 5.0e9 + 30.0 * np.arange(num_times)
    steps = rng.normal(0.0, 0.01, (num_times, num_ants, num_dirs))
    start = rng.uniform(-dtec_range / 2, dtec_range / 2, (1, num_ants, num_dirs))
    dtec = np.clip(start + np.cumsum(steps, axis=0), -dtec_range, dtec_range)
    dtec = np.repeat(dtec[..., None], num_pols, axis=3)  # (time, ant, dir, pol)
    tau = rng.uniform(-5e-9, 5e-9, (1, num_ants, 1, 1)) * np.ones_like(dtec) if clock else np.zeros_like(dtec)
    phi0 = rng.uniform(-np.pi, np.pi, dtec.shape)
    kappa = kappa_from_noise(noise)
    model_phase = (TEC_CONSTANT * dtec[..., None] / freq + 2 * np.pi * freq * tau[..., None] + phi0[..., None])
    phase = np.angle(np.exp(1j * (model_phase + rng.vonmises(0.0, kappa, model_phase.shape))))
    weight = (rng.uniform(size=phase.shape) >= flag_fraction).astype(np.float64)
    # File order: time, freq, ant, dir, pol.
    val = np.transpose(phase, (0, 4, 1, 2, 3))
    wgt = np.transpose(weight, (0, 4, 1, 2, 3))
    ants = np.array([f"SIM{i:03d}HBA".encode() for i in range(num_ants)])
    axes = {"time": times, "freq": freq, "ant": ants, "dir": np.array([f"Dir{i:02d}".encode() for i in range(num_dirs)]),
            "pol": np.array([b"XX", b"YY", b"XY", b"YX"][:num_pols])}
    antenna = np.zeros(num_ants, dtype=[("name", "S16"), ("position", "<f4", (3,))])
    antenna["name"] = ants
    antenna["position"] = rng.normal(0, 3e4, (num_ants, 3)) + np.array([3.8e6, 4.6e5, 5.06e6])
    write_h5parm(path, {"phase000": ("phase", val, wgt)}, axes, ("time", "freq", "ant", "dir", "pol"),
                 antenna_table=antenna)
    record = {
        "pipeline": NAME, "seed": int(seed), "noise_rad": noise, "kappa": kappa,
        "shape": {"time": num_times, "freq": num_freqs, "ant": num_ants, "dir": num_dirs, "pol": num_pols},
        "truth": {"dtec": dtec.round(6).tolist(), **({"clock": tau.tolist()} if clock else {})},
        "model": "phase = -8.4479745e9 dTEC / nu + 2 pi nu tau + phi0 + von Mises noise, wrapped to (-pi, pi]",
    }
    text = json.dumps(record, sort_keys=True) + "\n"
    atomic_write(truth_path(path), lambda tmp: Path(tmp).write_text(text))
    return record


SIMULATE_OPTIONS = (
    PipelineOption("num_times", "time slots", 24, parse_count(1)),
    PipelineOption("num_ants", "stations", 6, parse_count(1)),
    PipelineOption("num_dirs", "directions", 1, parse_count(1)),
    PipelineOption("num_pols", "polarisations (1-4)", 2, parse_count(1)),
    PipelineOption("num_freqs", "channels, 120-168 MHz", 24, parse_count(1)),
    PipelineOption("noise", "phase noise in radians", 0.3, parse_positive),
    PipelineOption("dtec_range", "largest |dTEC| of the truth, TECU", 0.4, parse_positive),
    PipelineOption("clock", "add a clock delay per station (up to 5 ns)", False, flag=True),
)


# -- sample (a batch run) -------------------------------------------------------------------
_KERNELS = {False: "astroinfer.pipelines.ionosphere:DTEC_KERNEL", True: "astroinfer.pipelines.ionosphere:DTEC_CLOCK_KERNEL"}
_LOAD_DEFAULTS = {option.name: option.default for option in RUN_OPTIONS}


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


def sample(prepared: "PreparedRun", progress: bool = False) -> "Result":
    """Every (time, ant, dir, pol) problem of the input, in chunks, into a resumable result file."""
    import xarray as xr

    from astroinfer import store as result_store
    from astroinfer.batch_store import BatchStore, result_attrs
    from astroinfer.engine.batch import iter_results, make_spec, summary_counts, to_result

    settings = {**_LOAD_DEFAULTS, **prepared.load_options}
    loaded = prepared.loaded
    shared = dict(loaded.data["shared"])
    fit_clock = "clock_max" in shared
    batched = {"phase": loaded.data["phase"], "weight": loaded.data["weight"]}
    solver = settings["solver"]
    method = "nested" if solver == "nested" else "grid"
    options: dict[str, Any] = {}
    if method == "grid":
        options = {"grid_kernel": _KERNELS[fit_clock], "nested_fallback": solver == "auto"}
    num = batched["phase"].shape[0]
    chunk = min(settings["chunk_size"], -(-num // 512) * 512)
    model_fn = model_dtec_clock if fit_clock else model_dtec
    spec = make_spec(model_fn, batched, shared, method, prepared.seed, settings["draws"], chunk, options)
    started, t0 = result_store.utc_now(), time.perf_counter()
    fingerprint = {**spec.fingerprint(), "input_sha256": result_store.file_sha256(prepared.input_path),
                   # Output-side settings do not change what the chunks hold (resume ignores them).
                   "settings": {k: v for k, v in settings.items() if k not in ("h5parm_out", "smooth")}}
    execution = prepared.execution or {}
    meta = loaded.metadata
    index = meta["_index"]
    axes = meta["_axes"]
    coords = {"time": axes["time"][index["time"]], "ant": np.array([_name(a) for a in axes["ant"]])[index["ant"]],
              "dir": np.array([_name(a) for a in axes["dir"]])[index["dir"]],
              "pol": np.array([_name(a) for a in axes["pol"]])[index["pol"]]}
    if prepared.out is None:  # Python API without an output file: everything in memory
        parts = {}
        for c, part in iter_results(spec, batched, shared, range(spec.num_chunks), execution.get("scheduler"), progress):
            part.update(_chunk_extras(part, batched, shared, fit_clock))
            parts[c] = part
        result = to_result(spec, parts, coords)
        if settings["smooth"]:
            summ = result.idata.problem_summary
            group, result.diagnostics["smoothing"] = smoothed_screen(
                summ["dtec_mode_mean"].values[:, 0], summ["dtec_mode_sd"].values[:, 0], summ["flagged"].values > 0,
                summ["dtec_num_modes"].values > 1, index, axes, coords)
            result.idata.add_groups({"smoothed_screen": group})
        result.provenance = result_store.provenance(method=f"batch-{method}", options=fingerprint, seed=prepared.seed,
                                                    started=started, finished=result_store.utc_now(), pipeline=NAME,
                                                    input_path=prepared.input_path)
        return result
    batch = BatchStore(prepared.out, fingerprint, spec.num_chunks, resume=bool(execution.get("resume")))
    done = batch.completed()
    todo = [c for c in range(spec.num_chunks) if c not in done]
    if progress and done:
        print(f"resuming: {len(done)} of {spec.num_chunks} chunks already done", file=sys.stderr)
    for c, part in iter_results(spec, batched, shared, todo, execution.get("scheduler"), progress):
        part.update(_chunk_extras(part, batched, shared, fit_clock))
        batch.write_chunk(c, part)
    wall = time.perf_counter() - t0

    # Station table and h5parm values, chunk by chunk (bounded memory).
    A = len(axes["ant"])
    ss, nn = np.zeros(A), np.zeros(A)
    shape = meta["shape"][:4]
    values = {k: np.zeros(num, np.float64) for k in ("dtec", "dtec_sd", "dtec_mode_sd", "phi0", "clock", "clock_sd",
                                                      "multi")}
    flagged = np.zeros(num, bool)
    codes = []
    for c in range(spec.num_chunks):
        part = batch.read_chunk(c)
        idx = part["problem_index"]
        np.add.at(ss, index["ant"][idx], part["extra.residual_ss"])
        np.add.at(nn, index["ant"][idx], part["extra.residual_n"])
        values["dtec"][idx] = part["dtec.mode_mean"][:, 0]
        values["dtec_sd"][idx] = part["dtec.sd"]
        values["dtec_mode_sd"][idx] = part["dtec.mode_sd"][:, 0]
        values["phi0"][idx] = part["extra.phi0"]
        values["multi"][idx] = part["dtec.num_modes"] > 1
        if fit_clock:
            values["clock"][idx] = part["clock.mean"]
            values["clock_sd"][idx] = part["clock.sd"]
        flagged[idx] = part["extra.flagged"] > 0
        codes.append(part["method_code"])
    codes = np.concatenate(codes)
    ant_names = [_name(a) for a in axes["ant"]]
    per_station_multi = np.bincount(index["ant"], weights=values["multi"], minlength=A)
    stations = xr.Dataset(
        {"residual_phase_rms": ("station", np.sqrt(ss / np.maximum(nn, 1))),
         "num_channels_used": ("station", nn.astype(np.int64)),
         "num_multimodal": ("station", per_station_multi.astype(np.int64))},
        coords={"station": np.array(ant_names, dtype=object)})
    _write_solutions(prepared, settings, values, flagged, shape, axes, meta, fit_clock)
    extra_groups = {"station_summary": stations}
    smoothing = None
    if settings["smooth"]:
        extra_groups["smoothed_screen"], smoothing = smoothed_screen(values["dtec"], values["dtec_mode_sd"], flagged,
                                                                     values["multi"] > 0, index, axes, coords)
    diagnostics = {
        "num_problems": num, "num_flagged_problems": int(flagged.sum()), "num_multimodal": int(values["multi"].sum()),
        **summary_counts({"method_code": codes}), "chunks_total": spec.num_chunks, "chunks_computed": len(todo),
        "chunks_resumed": len(done), "wall_time_s": wall, "problems_per_s": (len(todo) and
                                                                             sum(min(spec.chunk_size, num - c * spec.chunk_size) for c in todo) / max(wall, 1e-9)),
        "scheduler": execution.get("scheduler"), "h5parm_out": str(_h5parm_path(prepared, settings)),
        "warnings": [],
    }
    if smoothing is not None:
        diagnostics["smoothing"] = smoothing
        if smoothing["hyperparameters_on_grid_edge"]:
            diagnostics["warnings"].append("smoothing: the chosen GP amplitude or time scale is at the edge of its "
                                           "search grid; the screen may be too smooth or too rough")
    if diagnostics["problems_grid_unresolved"]:
        diagnostics["warnings"].append(f"{diagnostics['problems_grid_unresolved']} problem(s) not resolved by the grid "
                                       "even after refinement (method_code 3); use --solver auto for nested fallback")
    if diagnostics["problems_nested"] and solver != "nested":  # a fallback, not what was asked for
        diagnostics["warnings"].append(f"{diagnostics['problems_nested']} problem(s) were not resolved by the grid and "
                                       "were nested-sampled instead (method_code 2)")
    record = result_store.provenance(method=f"batch-{method}", options=fingerprint, seed=prepared.seed,
                                     started=started, finished=result_store.utc_now(), pipeline=NAME,
                                     input_path=prepared.input_path)
    record["input_metadata"] = {k: v for k, v in meta.items() if not k.startswith("_")}
    record["load_options"] = dict(prepared.load_options)
    record["execution"] = dict(execution)
    batch.finish(spec.names, coords, result_attrs(f"batch-{method}", diagnostics, record),
                 extra_groups=extra_groups)
    return result_store.load(prepared.out)


def smoothed_screen(dtec, dtec_sd, flagged, multimodal, index, axes, coords):
    """The smoothing stage over all problems: one GP series per (ant, dir, pol) over time
    (:mod:`astroinfer.pipelines._ionosphere_smooth`). Returns the ``smoothed_screen`` group
    (on the ``problem`` dimension) and its summary for the diagnostics.

    ``dtec`` and ``dtec_sd`` are each problem's solution, the heaviest mode's mean and that
    mode's sd: a multimodal posterior's overall sd spans its modes, which would hide a wrong
    mode from the outlier test; with the mode's own width it stands out and is left out."""
    import xarray as xr

    from astroinfer.pipelines._ionosphere_smooth import smooth_screen

    times = np.asarray(axes["time"], np.float64)
    order = np.argsort(times, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    sizes = (len(axes["ant"]), len(axes["dir"]), len(axes["pol"]))
    series = np.ravel_multi_index((index["ant"], index["dir"], index["pol"]), sizes)
    column = rank[index["time"]]
    shape = (int(np.prod(sizes)), times.size)
    grid_values, grid_sd = np.zeros(shape), np.ones(shape)
    grid_valid = np.zeros(shape, bool)
    grid_values[series, column] = dtec
    grid_sd[series, column] = dtec_sd
    grid_valid[series, column] = ~np.asarray(flagged, bool)
    screen = smooth_screen(times[order], grid_values, grid_sd, grid_valid)
    smooth, smooth_sd = screen["mean"][series, column], screen["sd"][series, column]
    z, outlier = screen["z"][series, column], screen["outlier"][series, column]
    change = np.abs(smooth - dtec)
    group = xr.Dataset(
        {"dtec_smooth": ("problem", smooth, {"units": "TECU", "long_name": "GP-smoothed dTEC (posterior mean)"}),
         "dtec_smooth_sd": ("problem", smooth_sd, {"units": "TECU"}),
         "outlier_z": ("problem", z, {"long_name": "leave-one-out residual of the problem's solution / its sd"}),
         "outlier": ("problem", outlier.astype(np.int8), {"long_name": "|outlier_z| > 3"})},
        coords={"problem": np.arange(dtec.size), **{k: ("problem", np.asarray(v)) for k, v in coords.items()}})
    multimodal = np.asarray(multimodal, bool)
    summary = {
        "model": "per (ant, dir, pol): dTEC(t) ~ GP(weighted mean, amplitude^2 Matern-3/2(scale)), observed "
                 "with the per-problem posterior sd; amplitude and scale shared, type-II maximum likelihood on a grid",
        "amplitude_tecu": screen["amplitude"], "time_scale_s": screen["scale"],
        "hyperparameters_on_grid_edge": screen["on_grid_edge"],
        "num_outliers": int(outlier.sum()), "num_multimodal_outliers": int((outlier & multimodal).sum()),
        "median_change_at_outliers_tecu": float(np.median(change[outlier])) if outlier.any() else 0.0,
        "median_change_elsewhere_tecu": float(np.median(change[~outlier & ~np.asarray(flagged, bool)]))
        if (~outlier).any() else 0.0,
    }
    return group, summary


def _h5parm_path(prepared, settings) -> Path:
    if settings.get("h5parm_out"):
        return Path(settings["h5parm_out"])
    out = Path(prepared.out)
    stem = out.name[:-3] if out.name.endswith(".h5") else out.name
    return out.with_name(f"{stem}.tec.h5")


def _write_solutions(prepared, settings, values, flagged, shape, axes, meta, fit_clock) -> None:
    """tec000 (TECU), phaseoffset000 (rad), clock000 (s) in an h5parm over the input's problem axes.

    Values are the heaviest dTEC mode's mean (a multimodal posterior's overall mean can sit
    between modes, where no solution is); weights are inverse posterior variances scaled so
    the best-determined problem has weight 1; flagged problems get weight 0.
    """
    from astroinfer.pipelines._h5parm import write_h5parm

    present = tuple(a for a in PROBLEM_AXES if a in meta["axes_in_file"])
    drop = tuple(i for i, a in enumerate(PROBLEM_AXES) if a not in present)

    def arrange(v):
        return np.asarray(v).reshape(shape).squeeze(axis=drop) if drop else np.asarray(v).reshape(shape)

    def weights(sd):
        inv = np.where(flagged, 0.0, 1.0 / np.maximum(sd, 1e-12) ** 2)
        return inv / inv.max() if inv.max() > 0 else inv

    soltabs = {"tec000": ("tec", arrange(values["dtec"]), arrange(weights(values["dtec_sd"]))),
               "phaseoffset000": ("phase", arrange(values["phi0"]), arrange(np.where(flagged, 0.0, 1.0)))}
    if fit_clock:
        soltabs["clock000"] = ("clock", arrange(values["clock"]), arrange(weights(values["clock_sd"])))
    write_h5parm(_h5parm_path(prepared, settings), soltabs, axes, present, antenna_table=meta.get("_antenna"),
                 source_table=meta.get("_source"))


# -- summarise, show, plots -----------------------------------------------------------------
def _station_text(result: "Result") -> str:
    st = result.idata["station_summary"] if "station_summary" in result.idata.groups() else None
    if st is None:
        return ""
    lines = ["station          residual phase rms (rad)   multimodal problems"]
    for name, rms, multi in zip(st["station"].values, st["residual_phase_rms"].values, st["num_multimodal"].values):
        lines.append(f"{str(name):16s} {rms:10.3f}                 {int(multi)}")
    return "\n".join(lines)


def show(result: "Result") -> str:
    s = result.idata.problem_summary
    diag = result.diagnostics
    num = s.sizes["problem"]
    multi = int(np.sum(s["dtec_num_modes"].values > 1))
    flagged = int(np.sum(s["flagged"].values > 0)) if "flagged" in s else 0
    codes = s["method_code"].values
    lines = [
        f"{num} problems (time x ant x dir x pol); {flagged} flagged (no unflagged channel)",
        f"multimodal dTEC posteriors (more than one mode above 0.1% mass): {multi}",
        f"methods: grid {int(np.sum(codes == 0))}, refined grid {int(np.sum(codes == 1))}, "
        f"nested {int(np.sum(codes == 2))}, unresolved {int(np.sum(codes == 3))}",
        f"dTEC: median posterior sd {np.nanmedian(s['dtec_sd'].values):.4g} TECU, "
        f"range of means {np.nanmin(s['dtec_mean'].values):.3f} to {np.nanmax(s['dtec_mean'].values):.3f} TECU",
    ]
    if diag.get("h5parm_out"):
        lines.append(f"solutions h5parm: {diag['h5parm_out']} (sol000/tec000)")
    sm = diag.get("smoothing")
    if sm:
        lines.append(f"smoothing (GP over time): amplitude {sm['amplitude_tecu']:.3g} TECU, time scale "
                     f"{sm['time_scale_s']:.3g} s; {sm['num_outliers']} outlier(s) (|leave-one-out z| > 3; "
                     f"{sm['num_multimodal_outliers']} multimodal), median change "
                     f"{sm['median_change_at_outliers_tecu']:.3g} TECU there, "
                     f"{sm['median_change_elsewhere_tecu']:.3g} TECU elsewhere (group smoothed_screen)")
    text = _station_text(result)
    return "\n".join(lines + ([text] if text else []))


def summarise(result: "Result", data: PipelineData) -> dict[str, Any]:
    diag = result.diagnostics
    rate = diag.get("problems_per_s")
    head = f"{diag.get('num_problems')} problems" + (f" at {rate:,.0f} problems/s" if rate else "")
    return {"overview": head + "\n" + show(result)}


def plot_dtec(result: "Result"):
    """dTEC (heaviest mode's mean, +- posterior sd) against time, one line per station."""
    import matplotlib.pyplot as plt

    s = result.idata.problem_summary
    times = np.asarray(s["time"].values, np.float64)
    ants = np.asarray(s["ant"].values).astype(str)
    pols = np.asarray(s["pol"].values).astype(str)
    dirs = np.asarray(s["dir"].values).astype(str)
    keep = (pols == pols[0]) & (dirs == dirs[0])
    fig, ax = plt.subplots(figsize=(9, 5))
    t0 = np.nanmin(times)
    for name in dict.fromkeys(ants[keep]):
        sel = keep & (ants == name)
        t = (times[sel] - t0) / 60.0
        y = s["dtec_mode_mean"].values[sel, 0]
        e = s["dtec_sd"].values[sel]
        ax.plot(t, y, lw=1, label=name)
        ax.fill_between(t, y - e, y + e, alpha=0.2)
    ax.set_xlabel("time since start (min)")
    ax.set_ylabel("dTEC (TECU)")
    ax.set_title(f"dTEC per station (pol {pols[0]}, dir {dirs[0]})")
    if len(set(ants[keep])) <= 30:
        ax.legend(fontsize=6, ncol=3)
    return fig


PIPELINE = Pipeline(
    name=NAME,
    description="LOFAR h5parm phases -> dTEC (+clock) per time/station/dir/pol: exact batched grid, Dask, resumable",
    load=load,
    model=model,
    simulate=simulate,
    summarise=summarise,
    demo_file="ionosphere_demo.h5",
    demo_seed=4,
    module_file=__file__,
    options=RUN_OPTIONS,
    simulate_options=SIMULATE_OPTIONS,
    sample=sample,
    show=show,
    plots={"dtec": plot_dtec},
    batch=True,
    # Problems of one or two parameters: exact quadrature, with batched nested sampling where
    # the grid does not resolve a posterior (--solver); NUTS and flow-MC do not apply.
    methods=("nested",),
    default_method="nested",
)
