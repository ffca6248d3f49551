"""NUTS through NumPyro: its own ``MCMC`` driver, or its kernel in a loop compiled once.

With the data compiled in (``data_as_constants=True``, what :func:`astroinfer.engine.sample`
does) the model is handed to ``numpyro.infer.NUTS`` and ``MCMC`` unchanged, so the cost over
calling NumPyro directly is only building the InferenceData and the diagnostics (see
``benchmarks/engine_overhead.py``).

With the data as an argument, the same ``NUTS`` kernel (``init`` and ``sample``, NumPyro's
public kernel interface) runs in one compiled function per chain: warmup, then the draws,
then the map to constrained values. ``MCMC(..., jit_model_args=True)`` would pass the data
as an argument too, but its driver (``fori_collect``) wraps its loop in a new ``jax.jit`` on
every run and so compiles it again for every run and chain (measured with numpyro 0.22).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS
from numpyro.infer.initialization import init_to_mean, init_to_median, init_to_sample, init_to_uniform

from astroinfer.engine.method import DataFunction, DataStructure, OptionChecks, split_data
from astroinfer.engine.model import ModelBridge
from astroinfer.engine.run import MethodRun

__all__ = ["DEFAULTS", "CHOICES", "METHOD", "NoUTurn", "NutsFunctions", "chain_method_for", "build_mcmc"]

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
    "init": ("median", "mean", "uniform", "sample"),
    "chain_method": ("auto", "parallel", "sequential", "vectorized"),
}

_INIT = {
    "median": lambda: init_to_median(num_samples=15),
    # Every chain at the prior means (exact where the distribution has one): for mixtures
    # whose components must start on their own data (gaia-cluster with proper motions).
    "mean": init_to_mean,
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


def _kernel(model: Callable, options: Mapping[str, Any]) -> NUTS:
    return NUTS(
        model,
        target_accept_prob=options["target_accept_prob"],
        max_tree_depth=options["max_tree_depth"],
        dense_mass=options["dense_mass"],
        init_strategy=_INIT[options["init"]](),
    )


def build_mcmc(model: Callable, num_samples: int, options: dict[str, Any], progress: bool) -> MCMC:
    return MCMC(
        _kernel(model, options),
        num_warmup=options["num_warmup"],
        num_samples=num_samples,
        num_chains=options["num_chains"],
        thinning=options["thinning"],
        chain_method=chain_method_for(options["num_chains"], options["chain_method"]),
        progress_bar=progress,
    )


@dataclass(frozen=True)
class NutsFunctions:
    """What :meth:`NoUTurn.build` returns: the model, the resolved options and, per number
    of draws, the compiled chains (``(data, keys) -> (draws, fields)``, data as an argument)."""

    model: Callable
    options: dict[str, Any]
    structure: DataStructure
    chain_method: str
    _chains: dict[int, DataFunction] = field(default_factory=dict, repr=False)

    def chains(self, num_samples: int) -> DataFunction:
        """The compiled chains for ``num_samples`` draws per chain (compiled on first use)."""
        if num_samples not in self._chains:
            self._chains[num_samples] = DataFunction(
                _chain_function(_kernel(self.model, self.options), self.options, num_samples),
                self.structure,
                _over_chains(self.chain_method),
            )
        return self._chains[num_samples]


def _chain_function(kernel: NUTS, options: Mapping[str, Any], num_samples: int) -> Callable:
    """One chain ``(data, key) -> (constrained draws, per-draw fields)``: NumPyro's kernel
    initialised as ``MCMC`` does (the key split inside ``kernel.init``), ``num_warmup``
    adapting steps, ``num_samples`` draws, every ``thinning``-th kept (the last of each
    group, as ``MCMC``)."""
    num_warmup, thinning = options["num_warmup"], options["thinning"]

    def chain(data, key):
        state = kernel.init(key, num_warmup, model_args=(), model_kwargs=data)
        state = jax.lax.fori_loop(0, num_warmup, lambda _, s: kernel.sample(s, (), data), state)

        def draw(state, _):
            state = kernel.sample(state, (), data)
            fields = {name: getattr(state, name) for name in _EXTRA_FIELDS}
            return state, (state.z, fields)

        _, (z, fields) = jax.lax.scan(draw, state, None, length=num_samples)
        z, fields = jax.tree.map(lambda x: x[thinning - 1::thinning], (z, fields))
        constrained = jax.vmap(kernel.postprocess_fn((), data))(z)
        return constrained, fields

    return chain


def _over_chains(chain_method: str) -> Callable:
    """How ``g(arrays, keys)`` runs its chains: compiled once and called per chain
    (sequential), vmapped (vectorized) or one chain per device (parallel)."""
    if chain_method == "vectorized":
        return lambda fn: jax.jit(jax.vmap(fn, in_axes=(None, 0)))
    if chain_method == "parallel":
        return lambda fn: jax.pmap(fn, in_axes=(None, 0))
    one = jax.jit

    def sequential(fn):
        compiled = one(fn)

        def each(arrays, keys):
            runs = [compiled(arrays, key) for key in keys]
            return jax.tree.map(lambda *xs: jnp.stack(xs), *runs)

        return each

    return sequential


class NoUTurn(OptionChecks):
    """``method="nuts"``: NumPyro's NUTS with its adaptation of step size and mass matrix."""

    name = "nuts"
    defaults = DEFAULTS
    choices = CHOICES

    def build(self, bridge: ModelBridge, options: dict[str, Any]) -> NutsFunctions:
        chain_method = chain_method_for(options["num_chains"], options["chain_method"])
        return NutsFunctions(bridge.model, dict(options), split_data(bridge.data)[0], chain_method)

    def run(self, built: NutsFunctions, data: Mapping[str, Any], *, seed: int, num_samples: int,
            progress: bool = False, data_as_constants: bool = False) -> MethodRun:
        if data_as_constants:
            mcmc = build_mcmc(built.model, num_samples, built.options, progress)
            mcmc.run(jax.random.PRNGKey(seed), extra_fields=_EXTRA_FIELDS, **data)
            posterior = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
            extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
            return _method_run(posterior, extra, mcmc.chain_method)
        num_chains = built.options["num_chains"]
        if progress:
            print(f"nuts: {num_chains} chain(s) of {built.options['num_warmup']} warmup steps and "
                  f"{num_samples} draws ({built.chain_method})", file=sys.stderr)
        key = jax.random.PRNGKey(seed)
        # As MCMC: one key per chain when there are several.
        keys = jax.random.split(key, num_chains) if num_chains > 1 else key[None]
        posterior, extra = built.chains(num_samples)(data, keys)
        posterior = {k: np.asarray(v) for k, v in posterior.items()}
        extra = {k: np.asarray(v) for k, v in extra.items()}
        return _method_run(posterior, extra, built.chain_method)


def _method_run(posterior: dict[str, np.ndarray], extra: dict[str, np.ndarray], chain_method: str) -> MethodRun:
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
        "chain_method": chain_method,
    }
    return MethodRun(posterior=posterior, sample_stats=sample_stats, diagnostics=diagnostics)


METHOD = NoUTurn()
