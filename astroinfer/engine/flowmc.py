"""Flow-MC: local MALA/HMC moves plus global proposals from a normalizing flow.

The algorithm of flowMC (Gabrié, Rotskoff & Vanden-Eijnden 2022; Wong, Gabrié &
Foreman-Mackey 2023), written on blackjax kernels and a flowjax flow so that every stage
compiles once per run:

1. ``num_chains`` chains start from prior draws in NumPyro's unconstrained space.
2. Warmup loops: local moves (step size adapted per chain towards a target acceptance;
   coordinates rescaled by the chains' spread), then a masked autoregressive flow with
   rational-quadratic splines is fitted to the visited positions (early stopping on a
   held-out loss), then global independence proposals from the flow are accepted with the
   exact Metropolis-Hastings ratio. Chains that sit in different modes teach the flow all
   of them; the MH correction gets the weights right.
3. Production: flow, step sizes and scales are frozen, so the draws are a valid MCMC; each
   draw follows ``local_steps_per_draw`` local moves and one global proposal.
"""

from __future__ import annotations

from typing import Any, Callable

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flowjax.bijections import RationalQuadraticSpline
from flowjax.distributions import Normal
from flowjax.flows import masked_autoregressive_flow
from flowjax.train import fit_to_data

from astroinfer.engine.model import ModelBridge
from astroinfer.engine.run import MethodRun

__all__ = ["DEFAULTS", "CHOICES", "run"]

DEFAULTS: dict[str, Any] = {
    "num_chains": 20,
    "local_kernel": "mala",
    "num_leapfrog_steps": 8,  # HMC only
    "num_warmup_loops": 6,
    "warmup_steps_per_loop": 100,  # local+global iterations between flow trainings
    "local_steps_per_draw": 5,
    "target_global_acceptance": 0.6,  # stop training early once reached
    "flow_layers": 4,
    "flow_knots": 8,
    "flow_width": 32,
    "learning_rate": 1e-3,
    "max_epochs": 200,
    "patience": 10,
    "batch_size": 256,
    "max_training_points": 4000,
}
CHOICES = {"local_kernel": ("mala", "hmc")}
_TARGET_LOCAL_ACCEPT = {"mala": 0.574, "hmc": 0.65}
_ADAPT_RATE = 0.05


def _local_kernel(name: str, num_leapfrog: int):
    """(init, step) for one chain, on a density of rescaled coordinates x = z / scale."""
    if name == "mala":
        kernel = blackjax.mcmc.mala.build_kernel()

        def step(key, state, logdensity, step_size):
            return kernel(key, state, logdensity, step_size)

        return blackjax.mcmc.mala.init, step
    kernel = blackjax.mcmc.hmc.build_kernel()

    def step(key, state, logdensity, step_size):
        inverse_mass = jnp.ones_like(state.position)
        return kernel(key, state, logdensity, step_size, inverse_mass, num_leapfrog)

    return blackjax.mcmc.hmc.init, step


def _flow_log_prob(flow, z, center, flow_scale):
    return flow.log_prob((z - center) / flow_scale) - jnp.sum(jnp.log(flow_scale))


def _make_sweep(log_density: Callable, init, step, target_accept: float):
    """One compiled function for every stage: ``n_iter`` x (local moves, one global proposal).

    ``adapt`` switches step-size adaptation on (warmup) or off (production), ``use_flow``
    switches the global proposal; both are traced values, so warmup and production share
    the compiled code for a given iteration count.
    """

    def chain(key, z, log_step, scale, adapt, use_flow, flow, center, flow_scale, n_iter, n_local):
        logdensity_x = lambda x: log_density(x * scale)  # noqa: E731

        def local_move(carry, k):
            state, log_step = carry
            new_state, info = step(k, state, logdensity_x, jnp.exp(log_step))
            acc = jnp.nan_to_num(info.acceptance_rate)
            log_step = log_step + adapt * _ADAPT_RATE * (acc - target_accept)
            return (new_state, log_step), acc

        def iteration(carry, k):
            z, log_step = carry
            k_local, k_prop, k_acc = jax.random.split(k, 3)
            state = init(z / scale, logdensity_x)
            (state, log_step), acc = jax.lax.scan(
                local_move, (state, log_step), jax.random.split(k_local, n_local)
            )
            z = state.position * scale
            log_p = state.logdensity
            # Global independence proposal from the flow, exact MH correction.
            proposal = center + flow_scale * flow.sample(jax.random.wrap_key_data(k_prop))
            log_p_new = log_density(proposal)
            log_ratio = (log_p_new - log_p) + (
                _flow_log_prob(flow, z, center, flow_scale)
                - _flow_log_prob(flow, proposal, center, flow_scale)
            )
            log_ratio = jnp.where(jnp.isfinite(log_ratio), log_ratio, -jnp.inf)
            accept = use_flow & (jnp.log(jax.random.uniform(k_acc)) < log_ratio)
            z = jnp.where(accept, proposal, z)
            log_p = jnp.where(accept, log_p_new, log_p)
            return (z, log_step), (z, log_p, jnp.mean(acc), accept)

        (z, log_step), trace = jax.lax.scan(iteration, (z, log_step), jax.random.split(key, n_iter))
        return z, log_step, trace

    def sweep(key, z, log_step, scale, adapt, use_flow, flow, center, flow_scale, n_iter, n_local):
        keys = jax.random.split(key, z.shape[0])
        return jax.vmap(
            chain, in_axes=(0, 0, 0, None, None, None, None, None, None, None, None)
        )(keys, z, log_step, scale, adapt, use_flow, flow, center, flow_scale, n_iter, n_local)

    return eqx.filter_jit(sweep)


def run(model: Callable, data: dict[str, Any], *, seed: int, num_samples: int,
        options: dict[str, Any], progress: bool = False, bridge: ModelBridge | None = None) -> MethodRun:
    bridge = bridge or ModelBridge(model, data)
    opts = dict(options)
    ndim = bridge.ndim
    n_chains = opts["num_chains"]
    key = jax.random.PRNGKey(seed)
    k_init, k_flow, k_warm, k_prod = jax.random.split(key, 4)

    init, step = _local_kernel(opts["local_kernel"], opts["num_leapfrog_steps"])
    sweep = _make_sweep(bridge.log_density, init, step, _TARGET_LOCAL_ACCEPT[opts["local_kernel"]])

    flow = masked_autoregressive_flow(
        jax.random.wrap_key_data(k_flow),
        base_dist=Normal(jnp.zeros(ndim)),
        transformer=RationalQuadraticSpline(knots=opts["flow_knots"], interval=5.0),
        flow_layers=opts["flow_layers"],
        nn_width=opts["flow_width"],
    )
    # One optimizer object for the run: flowjax's compiled training step is keyed on it.
    optimizer = optax.adam(opts["learning_rate"])

    z = bridge.prior_draws(k_init, n_chains)
    log_step = jnp.full((n_chains,), jnp.log(0.1 / np.sqrt(ndim)))
    scale = jnp.ones(ndim)
    center, flow_scale = jnp.zeros(ndim), jnp.ones(ndim)
    n_local = opts["local_steps_per_draw"]
    n_warm = opts["warmup_steps_per_loop"]
    loss_curves: list[dict[str, list[float]]] = []
    warmup_global_acceptance: list[float] = []
    use_flow = jnp.array(False)

    for loop in range(opts["num_warmup_loops"]):
        k_warm, k_sweep, k_train = jax.random.split(k_warm, 3)
        z, log_step, (trace, _, local_acc, accepted) = sweep(
            k_sweep, z, log_step, scale, 1.0, use_flow, flow, center, flow_scale, n_warm, n_local
        )
        if bool(use_flow):
            warmup_global_acceptance.append(float(accepted.mean()))
        if not bool(use_flow):
            # Rescale local moves by the spread within chains, measured before any global
            # jump can mix modes into it; step sizes keep adapting to it in later loops.
            within = jnp.sqrt(jnp.mean(jnp.var(trace[:, n_warm // 2:], axis=1), axis=0))
            scale = jnp.where(jnp.isfinite(within) & (within > 0), within, scale)
        if progress:
            acc_text = f", global acceptance {warmup_global_acceptance[-1]:.2f}" if warmup_global_acceptance else ""
            print(f"\rflowmc warmup loop {loop + 1}/{opts['num_warmup_loops']}: local acceptance "
                  f"{float(local_acc.mean()):.2f}{acc_text}", end="", flush=True)
        if warmup_global_acceptance and warmup_global_acceptance[-1] >= opts["target_global_acceptance"]:
            break
        if loop == opts["num_warmup_loops"] - 1:
            break  # the last loop only adapts; production starts with the trained flow
        points = trace.reshape(-1, ndim)
        stride = max(1, points.shape[0] // opts["max_training_points"])
        points = points[::stride][: opts["max_training_points"]]
        if not bool(use_flow):
            center = jnp.mean(points, axis=0)
            flow_scale = jnp.std(points, axis=0) + 1e-6
        flow, losses = fit_to_data(
            jax.random.wrap_key_data(k_train),
            flow,
            (points - center) / flow_scale,
            optimizer=optimizer,
            max_epochs=opts["max_epochs"],
            max_patience=opts["patience"],
            batch_size=min(opts["batch_size"], points.shape[0] // 2),
            show_progress=False,
        )
        loss_curves.append({"train": losses["train"], "val": losses["val"]})
        use_flow = jnp.array(True)
    if progress:
        print()

    z, _, (trace, log_p, local_acc, accepted) = sweep(
        k_prod, z, log_step, scale, 0.0, use_flow, flow, center, flow_scale, num_samples, n_local
    )
    accepted = np.asarray(accepted)
    posterior = bridge.constrain_many(trace)
    diagnostics = {
        "local_kernel": opts["local_kernel"],
        "local_acceptance": float(np.mean(local_acc)),
        "global_acceptance": float(accepted.mean()) if bool(use_flow) else None,
        "warmup_global_acceptance": warmup_global_acceptance,
        "num_training_loops": len(loss_curves),
        "flow_loss": loss_curves,
        "step_size": np.exp(np.asarray(log_step)).tolist(),
        # Density+gradient evaluations in production: local moves (x leapfrog steps) + proposals.
        "likelihood_evaluations": int(
            n_chains * num_samples * (n_local * (opts["num_leapfrog_steps"] if opts["local_kernel"] == "hmc" else 1) + 1)
        ),
    }
    sample_stats = {
        "lp": np.asarray(log_p),
        "acceptance_rate": np.asarray(local_acc),
        "global_accepted": accepted,
    }
    return MethodRun(posterior=posterior, sample_stats=sample_stats, diagnostics=diagnostics)
