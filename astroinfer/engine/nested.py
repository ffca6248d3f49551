"""Nested sampling with blackjax's nested slice sampler (``blackjax.nss``).

Why this backend (measured and documented in the foundation issue's note): it is built
from pure ``init``/``step`` functions over explicit state, so it jits once and ``vmap``s
over many problems (the batch engine needs that), and it leaves JAX's global
configuration alone. ``numpyro.contrib.nested_sampling`` needs jaxns 2.x, which switches
JAX to float64 globally on use; jaxns 3.0 cannot be jitted or vmapped over problems.

The sampler works in NumPyro's unconstrained space: the prior density there includes the
Jacobian of the constraining transforms, the live points start as prior draws, and the
dead points are mapped back to constrained values at the end.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from blackjax.ns.integrator import init_integrator, update_integrator
from blackjax.ns.base import NSInfo
from blackjax.ns.utils import log_weights

from astroinfer.engine.errors import OptionError
from astroinfer.engine.model import ModelBridge
from astroinfer.engine.run import MethodRun

__all__ = ["DEFAULTS", "run"]

DEFAULTS: dict[str, Any] = {
    "num_live_points": 500,
    "num_delete": None,  # default: a tenth of the live points, replaced in parallel
    "num_inner_steps": None,  # default: max(5, 3 * dimension) slice moves per new point
    "termination": 1e-3,  # stop when the live points hold this fraction of the evidence
    "max_iterations": 50_000,
    "steps_per_chunk": 50,  # compiled steps between convergence checks
    "num_volume_simulations": 100,  # simulated prior-volume sequences for the evidence error
}


def check_options(options: dict[str, Any]) -> None:
    """Constraints between options, checked before any sampling."""
    if options["num_delete"] is not None and options["num_delete"] >= options["num_live_points"]:
        raise OptionError(
            f"option num_delete ({options['num_delete']}) must be smaller than num_live_points "
            f"({options['num_live_points']})"
        )


def resolve(options: dict[str, Any], ndim: int) -> dict[str, Any]:
    resolved = dict(options)
    if resolved["num_delete"] is None:
        resolved["num_delete"] = max(1, resolved["num_live_points"] // 10)
    if resolved["num_inner_steps"] is None:
        resolved["num_inner_steps"] = max(5, 3 * ndim)
    return resolved


def _chunk_fn(algo, steps: int) -> Callable:
    def chunk(state, integrator, key):
        def body(carry, step_key):
            state, integrator = carry
            state, info = algo.step(step_key, state)
            integrator = update_integrator(integrator, state.particles, info.particles)
            return (state, integrator), info.particles

        (state, integrator), dead = jax.lax.scan(
            body, (state, integrator), jax.random.split(key, steps)
        )
        return state, integrator, dead

    return jax.jit(chunk)


def run(model: Callable, data: dict[str, Any], *, seed: int, num_samples: int,
        options: dict[str, Any], progress: bool = False, bridge: ModelBridge | None = None) -> MethodRun:
    bridge = bridge or ModelBridge(model, data)
    opts = resolve(options, bridge.ndim)
    key = jax.random.PRNGKey(seed)
    init_key, run_key, weight_key, draw_key = jax.random.split(key, 4)

    algo = blackjax.nss(
        logprior_fn=bridge.log_prior,
        loglikelihood_fn=bridge.log_likelihood,
        num_inner_steps=opts["num_inner_steps"],
        num_delete=opts["num_delete"],
    )
    live = bridge.prior_draws(init_key, opts["num_live_points"])
    state = jax.jit(algo.init)(live)
    integrator = init_integrator(state.particles)
    chunk = _chunk_fn(algo, opts["steps_per_chunk"])

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
    particles = jax.tree.map(lambda d, l: jnp.concatenate([d, l]), dead, state.particles)
    final = NSInfo(particles, None)

    # Simulated prior-volume sequences give the evidence and its spread.
    log_w = log_weights(weight_key, final, shape=opts["num_volume_simulations"])
    log_z_samples = jax.scipy.special.logsumexp(log_w, axis=0)
    log_z = float(jnp.mean(log_z_samples))
    log_z_err = float(jnp.std(log_z_samples))
    mean_log_w = jax.scipy.special.logsumexp(log_w, axis=1) - np.log(log_w.shape[1])
    weights = np.asarray(jnp.exp(mean_log_w - jax.scipy.special.logsumexp(mean_log_w)), dtype=np.float64)
    weights /= weights.sum()
    kish_ess = float(1.0 / np.sum(weights**2))

    positions = np.asarray(particles.position)
    index = np.asarray(jax.random.choice(draw_key, len(weights), shape=(num_samples,), p=jnp.asarray(weights)))
    posterior = bridge.constrain_many(positions[index][None])
    raw = bridge.constrain_many(positions)

    num_dead = int(positions.shape[0])
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
        "ess_kish": kish_ess,
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
