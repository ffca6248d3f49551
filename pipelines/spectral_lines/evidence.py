"""spectral-lines: ``--lines auto``: nested-sampling fits for K = 0..max_lines and the choice of K.

:func:`nested_fit` is this pipeline's own nested-sampling loop (``blackjax.nss`` with the
engine's densities, compiled once per model structure and pixel count rather than per
spectrum); it stays here, in one place, until the engine's nested sampler can share compiled
code across spectra and replace it. :func:`choose_by_evidence` runs it for every K and
applies :func:`choose_num_lines`.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

import arviz as az
import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.ns.base import NSInfo
from blackjax.ns.integrator import init_integrator, update_integrator
from blackjax.ns.utils import log_weights
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer.util import _unconstrain_reparam, constrain_fn, log_density, unconstrain_fn

from astroinfer.engine.diagnostics import convergence_diagnostics
from astroinfer.engine.timing import CompileTimer
from astroinfer.result import Result
from astroinfer.store import provenance, utc_now

from .numpyro_model import add_line_centres, model, split_data
from .options import LOG_BAYES_FACTOR_FOR_A_LINE, NAME

if TYPE_CHECKING:
    from astroinfer.pipeline import PreparedRun

AUTO_LIVE_POINTS = 200
# With a GP continuum the K-line posterior has a wide, low mode where the GP (at its shortest
# scales) absorbs a line; with 200 live points the K = 3 runs settled there for 7 of 20
# simulated 3-line spectra, and with 400 they found the line in 6 of those 7.
AUTO_LIVE_POINTS_GP = 400


@functools.lru_cache(maxsize=32)
def _nested_functions(structure: tuple, num_live: int, num_delete: int, num_inner: int, steps: int):
    """Jitted nested-sampling pieces for one model structure, the data as arguments.

    ``init(arrays, key) -> (state, integrator)``, ``chunk(arrays, state, integrator, key)``
    (``steps`` iterations of ``blackjax.nss``) and ``constrain(arrays, flat_points)``. The same
    densities as the engine's nested sampler (NumPyro's unconstrained space: log prior with the
    transforms' Jacobians, log likelihood of the observed flux), but every spectrum with the
    same pixel count and structure reuses the compiled code: ``--lines auto`` over many
    spectra (the calibration) compiles four models once instead of four per spectrum.
    """

    def kwargs_of(arrays):
        return {**arrays, **dict(structure)}

    def prior_tree(kwargs, key):
        with handlers.block(hide_fn=lambda site: site.get("is_observed", False)):
            trace = handlers.trace(handlers.seed(model, key)).get_trace(**kwargs)
        return {name: site["value"] for name, site in trace.items()
                if site["type"] == "sample" and not site["is_observed"]}

    def unravel_of(kwargs):
        return ravel_pytree(prior_tree(kwargs, jax.random.PRNGKey(0)))[1]

    def densities(kwargs, unravel, flat):
        params = unravel(flat)
        substituted = handlers.substitute(model, substitute_fn=lambda site: _unconstrain_reparam(params, site))
        _, trace = log_density(substituted, (), kwargs, {})
        log_prior, log_like = jnp.zeros(()), jnp.zeros(())
        for name, site in trace.items():
            if site["type"] != "sample":
                continue
            value = jnp.sum(site["fn"].log_prob(site["value"]))
            if site["is_observed"] and not (name.startswith("_") and name.endswith("_log_det")):
                log_like = log_like + value
            else:  # latent sites and the Jacobians of the constraining transforms
                log_prior = log_prior + value
        return log_prior, log_like

    def algorithm(kwargs):
        unravel = unravel_of(kwargs)
        return blackjax.nss(logprior_fn=lambda f: densities(kwargs, unravel, f)[0],
                            loglikelihood_fn=lambda f: densities(kwargs, unravel, f)[1],
                            num_inner_steps=num_inner, num_delete=num_delete)

    def init(arrays, key):
        kwargs = kwargs_of(arrays)

        def draw(k):
            return ravel_pytree(unconstrain_fn(model, (), kwargs, prior_tree(kwargs, k)))[0]

        live = jax.vmap(draw)(jax.random.split(key, num_live))
        state = algorithm(kwargs).init(live)
        return state, init_integrator(state.particles)

    def chunk(arrays, state, integrator, key):
        algo = algorithm(kwargs_of(arrays))

        def body(carry, step_key):
            state, integrator = carry
            state, info = algo.step(step_key, state)
            integrator = update_integrator(integrator, state.particles, info.particles)
            dead = (info.particles.position, info.particles.loglikelihood, info.particles.loglikelihood_birth)
            return (state, integrator), dead

        (state, integrator), dead = jax.lax.scan(body, (state, integrator), jax.random.split(key, steps))
        return state, integrator, dead

    def constrain(arrays, flat):
        kwargs = kwargs_of(arrays)
        unravel = unravel_of(kwargs)
        return jax.vmap(lambda f: constrain_fn(model, (), kwargs, unravel(f)))(flat)

    def ndim(arrays):
        kwargs = kwargs_of(arrays)
        return ravel_pytree(prior_tree(kwargs, jax.random.PRNGKey(0)))[0]

    return jax.jit(init), jax.jit(chunk), jax.jit(constrain), ndim


def nested_fit(data: dict, seed: int = 0, *, num_live_points: int = AUTO_LIVE_POINTS, num_delete: int | None = None,
               num_inner_steps: int | None = None, termination: float = 1e-3, max_iterations: int = 50_000,
               steps_per_chunk: int = 50, num_volume_simulations: int = 100, num_samples: int = 1000,
               progress: bool = False) -> dict[str, Any]:
    """Nested sampling (``blackjax.nss``, as the engine's ``method="nested"``) of the model on
    ``data`` with compiled code shared by every spectrum of the same size and structure.

    Returns the log-evidence and its spread over simulated prior-volume sequences, the
    dead points (unconstrained), their weights, and ``num_samples`` equally weighted draws
    (constrained, with ``center_u``).
    """
    structure, arrays = split_data(data)
    structure += (("value_only", True),)  # nested sampling never differentiates the density
    arrays = {k: (None if v is None else jnp.asarray(v, dtype=jnp.float32)) for k, v in arrays.items()}
    # the flat parameter count fixes the default slice steps (as the engine's nested sampler)
    probe = _nested_functions(structure, 1, 1, 1, 1)[3]
    ndim = int(jax.eval_shape(probe, arrays).shape[0])
    num_delete = num_delete or max(1, num_live_points // 10)
    num_inner = num_inner_steps or max(5, 3 * ndim)
    init, chunk, constrain, _ = _nested_functions(structure, num_live_points, num_delete, num_inner, steps_per_chunk)
    key = jax.random.PRNGKey(seed)
    init_key, run_key, weight_key, draw_key = jax.random.split(key, 4)
    state, integrator = init(arrays, init_key)
    dead = []
    converged = False
    for index in range(max(1, max_iterations // steps_per_chunk)):
        run_key, chunk_key = jax.random.split(run_key)
        state, integrator, chunk_dead = chunk(arrays, state, integrator, chunk_key)
        dead.append(chunk_dead)
        remaining = float(integrator.logZ_live - integrator.logZ)
        if progress:
            print(f"\rnested: {(index + 1) * steps_per_chunk * num_delete} dead points, live fraction "
                  f"{np.exp(min(remaining, 0.0)):.2e}", end="", flush=True, file=sys.stderr)
        if remaining < math.log(termination) or (not np.isfinite(float(integrator.logZ_live))
                                                  and np.isfinite(float(integrator.logZ))):
            converged = True
            break
    if progress:
        print(file=sys.stderr)
    position = np.concatenate([np.asarray(d[0]).reshape(-1, ndim) for d in dead]
                              + [np.asarray(state.particles.position)])
    loglike = np.concatenate([np.asarray(d[1]).ravel() for d in dead] + [np.asarray(state.particles.loglikelihood)])
    birth = np.concatenate([np.asarray(d[2]).ravel() for d in dead]
                           + [np.asarray(state.particles.loglikelihood_birth)])
    particles = _DeadPoints(jnp.asarray(position), jnp.asarray(loglike), jnp.asarray(birth))
    log_w = log_weights(weight_key, NSInfo(particles, None), shape=num_volume_simulations)
    log_z_samples = np.asarray(jax.scipy.special.logsumexp(log_w, axis=0), dtype=np.float64)
    mean_log_w = np.asarray(jax.scipy.special.logsumexp(log_w, axis=1), dtype=np.float64) - math.log(log_w.shape[1])
    weights = np.exp(mean_log_w - mean_log_w.max())
    weights /= weights.sum()
    pick = np.asarray(jax.random.choice(draw_key, weights.size, shape=(num_samples,), p=jnp.asarray(weights)))
    draws = add_line_centres({k: np.asarray(v) for k, v in constrain(arrays, jnp.asarray(position[pick])).items()})
    return {"log_evidence": float(log_z_samples.mean()), "log_evidence_err": float(log_z_samples.std()),
            "draws": draws, "position": position, "loglikelihood": loglike, "weights": weights,
            "converged": converged, "num_live_points": num_live_points, "num_delete": num_delete,
            "num_inner_steps": num_inner, "ess_kish": float(1.0 / np.sum(weights ** 2)),
            "likelihood_evaluations": int(num_live_points + (position.shape[0] - num_live_points) * num_inner)}


class _DeadPoints(NamedTuple):
    """The fields blackjax's ``log_weights`` reads from the dead points (a pytree)."""

    position: Any
    loglikelihood: Any
    loglikelihood_birth: Any


def _nested_options(prepared: "PreparedRun") -> dict[str, Any]:
    # Evidence for several K: fewer live points than a single nested run's default keep
    # --lines auto quick; evidence errors stay ~0.3-0.5, far below the log Bayes factors of
    # lines with SNR >= 10 (a GP continuum needs more: AUTO_LIVE_POINTS_GP). The run's own
    # nested options win.
    allowed = ("num_live_points", "num_delete", "num_inner_steps", "termination", "max_iterations",
               "steps_per_chunk", "num_volume_simulations")
    options = {k: v for k, v in prepared.options.items() if k in allowed} if prepared.method == "nested" else {}
    gp = prepared.loaded.data["continuum"] == "gp"
    options.setdefault("num_live_points", AUTO_LIVE_POINTS_GP if gp else AUTO_LIVE_POINTS)
    return options


def nested_result(prepared: "PreparedRun", data: dict, fit: dict, started: str, timing: dict) -> "Result":
    """A ``Result`` (method nested) from :func:`nested_fit`'s draws, as the engine would make it."""
    posterior = {k: v[None] for k, v in fit["draws"].items()}
    idata = az.from_dict(posterior=posterior, observed_data={"flux": np.asarray(data["flux"])})
    diagnostics = {**convergence_diagnostics(idata, "nested"),
                   **{k: fit[k] for k in ("converged", "num_live_points", "num_delete", "num_inner_steps",
                                          "ess_kish", "likelihood_evaluations")},
                   "num_dead_points": int(fit["position"].shape[0]), "log_evidence_err": fit["log_evidence_err"],
                   **timing, "warnings": []}
    if not fit["converged"]:
        diagnostics["warnings"].append("nested sampling stopped at max_iterations before the termination criterion")
    record = provenance(method="nested", options={**_nested_options(prepared), "num_samples": prepared.num_samples},
                        seed=prepared.seed, started=started, finished=utc_now(), pipeline=NAME,
                        input_path=str(prepared.input_path))
    return Result(idata=idata, method="nested", log_evidence=fit["log_evidence"],
                  log_evidence_err=fit["log_evidence_err"], diagnostics=diagnostics, provenance=record)


def choose_num_lines(ks: list[int], log_z: np.ndarray, min_log_bayes_factor: float) -> int:
    """The number of lines ``--lines auto`` reports: the fewest lines whose log-evidence is
    within ``min_log_bayes_factor`` of the greatest (0: the greatest log-evidence). A model with
    fewer lines is set aside only when the best model's evidence exceeds its own by more than that."""
    log_z = np.asarray(log_z, dtype=float)
    return ks[int(np.flatnonzero(log_z >= log_z.max() - min_log_bayes_factor)[0])]


class EvidenceChoice(NamedTuple):
    """The number of lines ``--lines auto`` chose, the evidence of every K, and the chosen K's
    nested fit with when it started and what it cost."""

    num_lines: int
    comparison: dict[str, Any]
    fit: dict[str, Any]
    started: str
    timing: dict[str, Any]


def choose_by_evidence(prepared: "PreparedRun", progress: bool) -> EvidenceChoice:
    """Nested sampling (:func:`nested_fit`) for K = 0..max_lines, then :func:`choose_num_lines`."""
    loaded = prepared.loaded
    meta = loaded.metadata
    runs, seconds, started = {}, {}, {}
    for k in range(meta["max_lines"] + 1):
        if progress:
            print(f"spectral-lines: K = {k} line(s), nested sampling", file=sys.stderr)
        started[k] = utc_now()
        with CompileTimer() as timer:
            runs[k] = nested_fit({**loaded.data, "num_lines": k}, seed=prepared.seed, progress=progress,
                                 num_samples=prepared.num_samples, **_nested_options(prepared))
        seconds[k] = {"compile_time_s": timer.compile_seconds, "run_time_s": timer.run_seconds,
                      "wall_time_s": timer.wall_seconds, "backend_compiles": timer.backend_compiles}
    ks = sorted(runs)
    log_z = np.array([runs[k]["log_evidence"] for k in ks])
    log_z_err = np.array([runs[k]["log_evidence_err"] for k in ks])
    best = choose_num_lines(ks, log_z, meta.get("min_log_bayes_factor", LOG_BAYES_FACTOR_FOR_A_LINE))
    comparison = {"k": np.array(ks), "log_evidence": log_z, "log_evidence_err": log_z_err,
                  "log_bayes_factor": log_z - log_z[ks.index(best)], "chosen": best}
    return EvidenceChoice(best, comparison, runs[best], started[best], seconds[best])
