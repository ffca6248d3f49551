"""Nested sampling with blackjax's nested slice sampler (``blackjax.nss``).

Why this backend (measured and documented in the foundation issue's note): it is built
from pure ``init``/``step`` functions over explicit state, so it jits once and ``vmap``s
over many problems (the batch engine needs that), and it leaves JAX's global
configuration alone. ``numpyro.contrib.nested_sampling`` needs jaxns 2.x, which switches
JAX to float64 globally on use; jaxns 3.0 cannot be jitted or vmapped over problems.

The sampler works in NumPyro's unconstrained space: the prior density there includes the
Jacobian of the constraining transforms, the live points start as prior draws, and the
dead points are mapped back to constrained values at the end.

:data:`METHOD` follows the protocol of :mod:`astroinfer.engine.method`: ``build`` compiles
the prior draws, ``init``, a chunk of ``steps_per_chunk`` iterations and the map back to
constrained values, all with the data as an argument; ``run`` loops over chunks until the
live points hold less than ``termination`` of the evidence.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from blackjax.ns.base import NSInfo
from blackjax.ns.integrator import init_integrator, update_integrator
from blackjax.ns.utils import log_weights

from astroinfer.engine.method import DataFunction, OptionChecks, split_data
from astroinfer.engine.model import ModelBridge, check_prior_draws
from astroinfer.engine.run import MethodRun
from astroinfer.errors import OptionError

__all__ = ["DEFAULTS", "METHOD", "NestedSampling", "NestedFunctions", "resolve"]

DEFAULTS: dict[str, Any] = {
    "num_live_points": 500,
    "num_delete": None,  # default: a tenth of the live points, replaced in parallel
    "num_inner_steps": None,  # default: max(5, 3 * dimension) slice moves per new point
    "termination": 1e-3,  # stop when the live points hold this fraction of the evidence
    "max_iterations": 50_000,
    "steps_per_chunk": 50,  # compiled steps between convergence checks
    "num_volume_simulations": 100,  # simulated prior-volume sequences for the evidence error
}


def resolve(options: Mapping[str, Any], ndim: int) -> dict[str, Any]:
    """``options`` with the defaults that depend on the dimension filled in."""
    resolved = dict(options)
    if resolved["num_delete"] is None:
        resolved["num_delete"] = max(1, resolved["num_live_points"] // 10)
    if resolved["num_inner_steps"] is None:
        resolved["num_inner_steps"] = max(5, 3 * ndim)
    return resolved


@dataclass(frozen=True)
class NestedFunctions:
    """What :meth:`NestedSampling.build` returns: the compiled pieces of one run, each
    taking the data as its first argument, and the options resolved for the dimension."""

    options: dict[str, Any]
    draw_live: DataFunction  # (data, key) -> live points, (num_live_points, ndim)
    init: DataFunction  # (data, live points) -> sampler state
    chunk: DataFunction  # (data, state, integrator, key) -> (state, integrator, dead particles)
    constrain: DataFunction  # (data, flat points (n, ndim)) -> constrained sites, each (n, ...)


class _Steps(NamedTuple):
    """The pieces of :class:`NestedFunctions` with the data of one run fixed."""

    draw_live: Callable
    init: Callable
    chunk: Callable
    constrain: Callable


class NestedSampling(OptionChecks):
    """``method="nested"``: blackjax's nested slice sampler, log-evidence included."""

    name = "nested"
    defaults = DEFAULTS
    choices: Mapping[str, tuple] = {}

    def check_together(self, options: dict[str, Any]) -> None:
        if options["num_delete"] is not None and options["num_delete"] >= options["num_live_points"]:
            raise OptionError(
                f"option num_delete ({options['num_delete']}) must be smaller than num_live_points "
                f"({options['num_live_points']})"
            )

    def build(self, bridge: ModelBridge, options: dict[str, Any]) -> NestedFunctions:
        opts = resolve(options, bridge.ndim)
        structure = split_data(bridge.data)[0]

        def algorithm(data):
            return blackjax.nss(
                logprior_fn=lambda flat: bridge.log_prior(flat, data),
                loglikelihood_fn=lambda flat: bridge.log_likelihood(flat, data),
                num_inner_steps=opts["num_inner_steps"],
                num_delete=opts["num_delete"],
            )

        def draw_live(data, key):
            keys = jax.random.split(key, opts["num_live_points"])
            return jax.vmap(lambda k: bridge.prior_draw(k, data))(keys)

        def init(data, live):
            return algorithm(data).init(live)

        def chunk(data, state, integrator, key):
            algo = algorithm(data)

            def body(carry, step_key):
                state, integrator = carry
                state, info = algo.step(step_key, state)
                integrator = update_integrator(integrator, state.particles, info.particles)
                return (state, integrator), info.particles

            (state, integrator), dead = jax.lax.scan(
                body, (state, integrator), jax.random.split(key, opts["steps_per_chunk"])
            )
            return state, integrator, dead

        def constrain(data, flat):
            return jax.vmap(lambda point: bridge.constrain(point, data))(flat)

        return NestedFunctions(opts, *(DataFunction(fn, structure) for fn in (draw_live, init, chunk, constrain)))

    def run(self, built: NestedFunctions, data: Mapping[str, Any], *, seed: int, num_samples: int,
            progress: bool = False, data_as_constants: bool = False) -> MethodRun:
        steps = _Steps(*(getattr(built, name).on(data, as_constants=data_as_constants) for name in _Steps._fields))
        opts = built.options
        init_key, run_key, weight_key, draw_key = jax.random.split(jax.random.PRNGKey(seed), 4)
        state = steps.init(check_prior_draws(steps.draw_live(init_key)))
        state, dead, converged = _iterate(steps.chunk, state, run_key, opts, progress)
        particles = jax.tree.map(lambda d, live: jnp.concatenate([d, live]), dead, state.particles)
        weights, log_z, log_z_err = _weights(weight_key, particles, opts["num_volume_simulations"])
        positions = np.asarray(particles.position)
        index = np.asarray(jax.random.choice(draw_key, len(weights), shape=(num_samples,), p=jnp.asarray(weights)))
        posterior = _constrained(steps.constrain, positions[index][None])
        raw = _constrained(steps.constrain, positions)
        return _method_run(opts, particles, weights, index, posterior, raw, converged, log_z, log_z_err)


def _iterate(chunk: Callable, state, run_key: jax.Array, opts: dict[str, Any], progress: bool):
    """Chunks of ``steps_per_chunk`` iterations until the live points hold less than
    ``termination`` of the evidence (or ``max_iterations``): (state, dead particles, converged)."""
    integrator = init_integrator(state.particles)
    dead_chunks = []
    log_termination = float(np.log(opts["termination"]))
    max_chunks = max(1, opts["max_iterations"] // opts["steps_per_chunk"])
    converged = False
    for index in range(max_chunks):
        run_key, chunk_key = jax.random.split(run_key)
        state, integrator, dead = chunk(state, integrator, chunk_key)
        dead_chunks.append(dead)
        remaining = float(integrator.logZ_live - integrator.logZ)
        if progress:
            print(
                f"\rnested: {(index + 1) * opts['steps_per_chunk'] * opts['num_delete']} dead points, "
                f"log Z = {float(jnp.logaddexp(integrator.logZ, integrator.logZ_live)):.3f}, "
                f"live fraction = {np.exp(min(remaining, 0.0)):.2e}",
                end="", flush=True, file=sys.stderr,
            )
        if not np.isfinite(float(integrator.logZ_live)) and np.isfinite(float(integrator.logZ)):
            converged = True
            break
        if remaining < log_termination:
            converged = True
            break
    if progress:
        print(file=sys.stderr)
    dead = jax.tree.map(lambda *xs: jnp.concatenate([x.reshape((-1,) + x.shape[2:]) for x in xs]), *dead_chunks)
    return state, dead, converged


def _weights(key: jax.Array, particles, num_simulations: int) -> tuple[np.ndarray, float, float]:
    """Posterior weights of the dead and final live points, log-evidence and its spread,
    from simulated prior-volume sequences."""
    log_w = log_weights(key, NSInfo(particles, None), shape=num_simulations)
    log_z_samples = jax.scipy.special.logsumexp(log_w, axis=0)
    log_z = float(jnp.mean(log_z_samples))
    log_z_err = float(jnp.std(log_z_samples))
    mean_log_w = jax.scipy.special.logsumexp(log_w, axis=1) - np.log(log_w.shape[1])
    weights = np.asarray(jnp.exp(mean_log_w - jax.scipy.special.logsumexp(mean_log_w)), dtype=np.float64)
    weights /= weights.sum()
    return weights, log_z, log_z_err


def _constrained(constrain: Callable, flat_draws: np.ndarray) -> dict[str, np.ndarray]:
    """``constrain`` over the leading axes of ``flat_draws``, as NumPy arrays."""
    lead = flat_draws.shape[:-1]
    out = constrain(jnp.asarray(flat_draws.reshape((-1, flat_draws.shape[-1]))))
    return {k: np.asarray(v).reshape(lead + v.shape[1:]) for k, v in out.items()}


def _method_run(opts: dict[str, Any], particles, weights: np.ndarray, index: np.ndarray,
                posterior: dict[str, np.ndarray], raw: dict[str, np.ndarray], converged: bool,
                log_z: float, log_z_err: float) -> MethodRun:
    num_dead = int(particles.position.shape[0])
    evaluations = opts["num_live_points"] + (num_dead - opts["num_live_points"]) * opts["num_inner_steps"]
    # The raw weighted points, one row per dead (and final live) point.
    columns = {
        **raw,
        "log_weight": np.log(np.maximum(weights, 1e-300)),
        "log_likelihood": np.asarray(particles.loglikelihood),
        "log_likelihood_birth": np.asarray(particles.loglikelihood_birth),
    }
    extra = {
        "nested_samples": xr.Dataset({
            name: (("point",) + tuple(f"{name}_dim_{i}" for i in range(v.ndim - 1)), v)
            for name, v in columns.items()
        })
    }
    diagnostics = {
        "converged": converged,
        "num_dead_points": num_dead,
        "num_live_points": opts["num_live_points"],
        "num_delete": opts["num_delete"],
        "num_inner_steps": opts["num_inner_steps"],
        "ess_kish": float(1.0 / np.sum(weights**2)),
        "log_evidence_err": log_z_err,
        # Slice moves per new point times new points; each move costs a few evaluations.
        "likelihood_evaluations": int(evaluations),
    }
    sample_stats = {"lp": np.asarray(particles.loglikelihood)[index][None]}
    return MethodRun(
        posterior=posterior,
        sample_stats=sample_stats,
        diagnostics=diagnostics,
        extra_groups=extra,
        log_evidence=log_z,
        log_evidence_err=log_z_err,
    )


METHOD = NestedSampling()
