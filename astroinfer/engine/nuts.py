"""NUTS through NumPyro's own ``MCMC``: the engine adds nothing to the sampling loop.

The model is handed to ``numpyro.infer.NUTS`` unchanged, so the cost over calling NumPyro
directly is only building the InferenceData and the diagnostics (see
``benchmarks/engine_overhead.py``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from numpyro.infer import MCMC, NUTS
from numpyro.infer.initialization import init_to_median, init_to_sample, init_to_uniform

from astroinfer.engine.run import MethodRun

__all__ = ["DEFAULTS", "CHOICES", "run", "chain_method_for"]

DEFAULTS: dict[str, Any] = {
    "num_warmup": 1000,
    "num_chains": 2,  # one per core on a 2-core laptop; R-hat needs at least two
    "target_accept_prob": 0.8,
    "max_tree_depth": 10,
    "dense_mass": False,
    "init": "median",
    "chain_method": "auto",
    "thinning": 1,
}

CHOICES = {
    "init": ("median", "uniform", "sample"),
    "chain_method": ("auto", "parallel", "sequential", "vectorized"),
}

_INIT = {
    "median": lambda: init_to_median(num_samples=15),
    "uniform": init_to_uniform,
    "sample": init_to_sample,
}
_EXTRA_FIELDS = ("diverging", "accept_prob", "num_steps", "potential_energy", "energy")


def chain_method_for(num_chains: int, requested: str = "auto") -> str:
    """Parallel chains when JAX has a device per chain; on a single accelerator, vectorised
    (a GPU runs a batch of chains in about the time of one: on an H200 the M67 gaia-cluster
    run drew its 2 chains one after another); else one after another."""
    if requested != "auto" or num_chains <= 1:
        return requested if requested != "auto" else "sequential"
    if jax.local_device_count() >= num_chains:
        return "parallel"
    return "vectorized" if jax.default_backend() != "cpu" else "sequential"


def build_mcmc(model: Callable, num_samples: int, options: dict[str, Any], progress: bool) -> MCMC:
    kernel = NUTS(
        model,
        target_accept_prob=options["target_accept_prob"],
        max_tree_depth=options["max_tree_depth"],
        dense_mass=options["dense_mass"],
        init_strategy=_INIT[options["init"]](),
    )
    return MCMC(
        kernel,
        num_warmup=options["num_warmup"],
        num_samples=num_samples,
        num_chains=options["num_chains"],
        thinning=options["thinning"],
        chain_method=chain_method_for(options["num_chains"], options["chain_method"]),
        progress_bar=progress,
    )


def run(model: Callable, data: dict[str, Any], *, seed: int, num_samples: int,
        options: dict[str, Any], progress: bool = False) -> MethodRun:
    mcmc = build_mcmc(model, num_samples, options, progress)
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=_EXTRA_FIELDS, **data)
    posterior = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    num_steps = extra["num_steps"]
    sample_stats = {
        "diverging": extra["diverging"].astype(bool),
        "acceptance_rate": extra["accept_prob"],
        "n_steps": num_steps,
        "tree_depth": np.floor(np.log2(np.maximum(num_steps, 1))).astype(np.int64) + 1,
        "lp": -extra["potential_energy"],
        "energy": extra["energy"],
    }
    diagnostics = {
        "divergences": int(extra["diverging"].sum()),
        "acceptance_rate": float(extra["accept_prob"].mean()),
        "mean_leapfrog_steps": float(num_steps.mean()),
        # One gradient (and density) evaluation per leapfrog step, sampling phase only.
        "likelihood_evaluations": int(num_steps.sum()),
        "chain_method": mcmc.chain_method,
    }
    return MethodRun(posterior=posterior, sample_stats=sample_stats, diagnostics=diagnostics)
