"""Flow-MC: local MALA/HMC/NUTS moves plus global proposals from a normalizing flow.

The algorithm of flowMC (Gabrié, Rotskoff & Vanden-Eijnden 2022; Wong, Gabrié &
Foreman-Mackey 2023), written on blackjax kernels and a flowjax flow so that every stage
compiles once per run:

1. ``num_chains`` chains start from prior draws in NumPyro's unconstrained space.
2. Warmup loops: local moves (step size adapted per chain towards a target acceptance;
   coordinates rescaled by the chains' spread), then a rational-quadratic-spline flow is
   fitted to the visited positions (early stopping on a held-out loss), then global
   independence proposals from the flow are accepted with the exact Metropolis-Hastings
   ratio. Chains that sit in different modes teach the flow all of them; the MH correction
   gets the weights right. Training stops once the global acceptance is high enough.
3. Production: flow, step sizes and scales are frozen, so the draws are a valid MCMC; each
   draw follows ``local_steps_per_draw`` local moves and one global proposal.

Every stage runs the same compiled ``sweep`` over a fixed number of iterations (production
is a sequence of such sweeps), so the number of compilations does not grow with the number
of loops or draws. A trained flow is returned with the result (group ``flowmc_state``) and
can be reused on a rerun of the same model and data (``reuse_flow=``), which skips training.

:data:`METHOD` follows the protocol of :mod:`astroinfer.engine.method`: ``build`` makes the
sweep, the prior draws and the map back to constrained values (data as an argument) and the
flow's trainer; ``run`` is the three steps above, :func:`_start`, :func:`_warm_up` and
:func:`_produce`.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from flowjax.bijections import RationalQuadraticSpline
from flowjax.distributions import Normal
from flowjax.flows import coupling_flow, masked_autoregressive_flow
import paramax
from flowjax.train.losses import MaximumLikelihoodLoss
from jax.flatten_util import ravel_pytree

from astroinfer import store
from astroinfer.engine.method import DataFunction, OptionChecks, split_data
from astroinfer.engine.model import ModelBridge, check_prior_draws
from astroinfer.engine.run import MethodRun
from astroinfer.errors import OptionError

__all__ = ["DEFAULTS", "CHOICES", "METHOD", "FlowMC", "FlowFunctions", "fingerprint", "stored_flow_matches"]

DEFAULTS: dict[str, Any] = {
    "num_chains": 20,
    "local_kernel": "mala",
    "num_leapfrog_steps": 8,  # HMC only
    "num_warmup_loops": 6,
    "steps_per_loop": 100,  # iterations (local moves + one global proposal) per sweep
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
    "reuse_flow": None,  # path of an earlier flowmc result file of the same model and data
}
CHOICES = {"local_kernel": ("mala", "hmc", "nuts")}
_TARGET_LOCAL_ACCEPT = {"mala": 0.574, "hmc": 0.65, "nuts": 0.8}
_ADAPT_RATE = 0.05
# An accepted global move counts as a mode switch when it travels this many local scales
# (RMS over coordinates): far beyond what the local kernel does in one iteration.
_SWITCH_DISTANCE = 3.0
STATE_GROUP = "flowmc_state"
_LOSS = MaximumLikelihoodLoss()
_VALIDATION_FRACTION = 0.1


def _local_kernel(name: str, num_leapfrog: int):
    """(init, step) for one chain, on a density of rescaled coordinates x = z / scale."""
    if name == "mala":
        kernel = blackjax.mcmc.mala.build_kernel()
        return blackjax.mcmc.mala.init, lambda key, state, logdensity, eps: kernel(key, state, logdensity, eps)
    if name == "hmc":
        kernel = blackjax.mcmc.hmc.build_kernel()

        def hmc_step(key, state, logdensity, eps):
            return kernel(key, state, logdensity, eps, jnp.ones_like(state.position), num_leapfrog)

        return blackjax.mcmc.hmc.init, hmc_step
    kernel = blackjax.mcmc.nuts.build_kernel()

    def nuts_step(key, state, logdensity, eps):
        return kernel(key, state, logdensity, eps, jnp.ones_like(state.position))

    return blackjax.mcmc.nuts.init, nuts_step


def _new_flow(key, ndim: int, opts: dict[str, Any]):
    # Coupling flows sample and evaluate in one pass each way; a one-dimensional problem
    # has nothing to couple, so it gets a (then equally cheap) autoregressive flow.
    build = coupling_flow if ndim > 1 else masked_autoregressive_flow
    return build(
        jax.random.wrap_key_data(key),
        base_dist=Normal(jnp.zeros(ndim)),
        transformer=RationalQuadraticSpline(knots=opts["flow_knots"], interval=5.0),
        flow_layers=opts["flow_layers"],
        nn_width=opts["flow_width"],
    )


def _trainable(flow):
    """(parameters, static part) of a flow, as flowjax's own training splits it."""
    return eqx.partition(flow, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))


def _make_trainer(optimizer, num_points: int, batch_size: int, max_epochs: int, patience: int):
    """One compiled function that fits a flow by maximum likelihood with early stopping.

    flowjax's ``fit_to_data`` runs epochs from Python and recompiles a small function per
    epoch (its early-stopping check sees a longer loss list each time): about 120 backend
    compilations per flow-MC run. Here the whole fit is one ``lax.while_loop`` over epochs of
    shuffled mini-batches, stopping once the held-out loss has not improved for ``patience``
    epochs and returning the parameters of the best held-out loss; it compiles once per run.
    Returns ``train(key, flow, opt_state, points) -> (flow, opt_state, train_loss, val_loss)``
    where the losses have ``max_epochs`` entries, NaN after the stop.
    """
    num_val = max(1, int(round(_VALIDATION_FRACTION * num_points)))
    num_train = num_points - num_val
    batch_size = max(1, min(batch_size, num_train))
    num_batches = num_train // batch_size

    def train(key, flow, opt_state, points):
        params, static = _trainable(flow)
        loss = lambda p, x: _LOSS(p, static, x)  # noqa: E731
        key, k_split = jax.random.split(key)
        order = jax.random.permutation(k_split, num_points)
        x_val, x_train = points[order[:num_val]], points[order[num_val:]]
        nan_curve = jnp.full((max_epochs,), jnp.nan)

        def batch_step(carry, batch):
            p, state = carry
            value, grads = jax.value_and_grad(loss)(p, x_train[batch])
            updates, state = optimizer.update(grads, state, p)
            return (eqx.apply_updates(p, updates), state), value

        def epoch(carry):
            i, key, p, state, best, best_val, since_best, train_curve, val_curve = carry
            key, k_epoch = jax.random.split(key)
            batches = jax.random.permutation(k_epoch, num_train)[: num_batches * batch_size]
            (p, state), values = jax.lax.scan(batch_step, (p, state), batches.reshape(num_batches, batch_size))
            val = loss(p, x_val)
            improved = val < best_val
            best = jax.tree.map(lambda new, old: jnp.where(improved, new, old), p, best)
            return (i + 1, key, p, state, best,
                    jnp.where(improved, val, best_val), jnp.where(improved, 0, since_best + 1),
                    train_curve.at[i].set(values.mean()), val_curve.at[i].set(val))

        def keep_going(carry):
            i, since_best = carry[0], carry[6]
            return (i < max_epochs) & (since_best <= patience)

        start = (0, key, params, opt_state, params, loss(params, x_val), 0, nan_curve, nan_curve)
        _, _, _, opt_state, best, _, _, train_curve, val_curve = jax.lax.while_loop(keep_going, epoch, start)
        return eqx.combine(best, static), opt_state, train_curve, val_curve

    return eqx.filter_jit(train)


def _make_sweep(init, step, target_accept: float, n_iter: int, n_local: int) -> Callable:
    """The one compiled function of a run, ``sweep(log_density, key, z, ...)``: ``n_iter`` x
    (local moves, one global proposal), on every chain.

    ``adapt`` switches step-size adaptation on (warmup) or off (production), ``use_flow``
    switches the global proposal; both are traced values, so every stage shares the code.
    """

    def one_chain(log_density, key, z, log_step, scale, adapt, use_flow, flow, center, flow_scale):
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
            # Global independence proposal from the flow, exact MH correction. The flow's
            # density at the proposal comes with the draw (one pass instead of two; the
            # standardisation's Jacobian cancels in the ratio).
            standard, log_q_new = flow.sample_and_log_prob(jax.random.wrap_key_data(k_prop))
            proposal = center + flow_scale * standard
            log_p_new = log_density(proposal)
            log_ratio = (log_p_new - log_p) + (flow.log_prob((z - center) / flow_scale) - log_q_new)
            log_ratio = jnp.where(jnp.isfinite(log_ratio), log_ratio, -jnp.inf)
            accept = use_flow & (jnp.log(jax.random.uniform(k_acc)) < log_ratio)
            jump = jnp.sqrt(jnp.mean(((proposal - z) / scale) ** 2))
            switch = accept & (jump > _SWITCH_DISTANCE)
            z = jnp.where(accept, proposal, z)
            log_p = jnp.where(accept, log_p_new, log_p)
            return (z, log_step), (z, log_p, jnp.mean(acc), accept, switch)

        (z, log_step), trace = jax.lax.scan(iteration, (z, log_step), jax.random.split(key, n_iter))
        return z, log_step, trace

    def sweep(log_density, key, z, log_step, scale, adapt, use_flow, flow, center, flow_scale):
        chain = partial(one_chain, log_density)
        keys = jax.random.split(key, z.shape[0])
        return jax.vmap(chain, in_axes=(0, 0, 0, None, None, None, None, None, None))(
            keys, z, log_step, scale, adapt, use_flow, flow, center, flow_scale
        )

    return sweep


def fingerprint(model: Callable, data: dict[str, Any], ndim: int, opts: dict[str, Any]) -> str:
    """Identifies a model, its data and the flow's shape: a stored flow is reused only on a match."""
    digest = hashlib.sha256()
    try:
        digest.update(inspect.getsource(model).encode())
    except (OSError, TypeError):
        digest.update(f"{getattr(model, '__module__', '')}.{getattr(model, '__qualname__', repr(model))}".encode())
    for name in sorted(data):
        digest.update(name.encode())
        value = data[name]
        try:
            digest.update(np.ascontiguousarray(np.asarray(value)).tobytes())
        except (TypeError, ValueError):
            digest.update(repr(value).encode())
    digest.update(repr((ndim, opts["flow_layers"], opts["flow_knots"], opts["flow_width"])).encode())
    return digest.hexdigest()


def stored_flow_matches(path: str | Path, model: Callable, data: dict[str, Any], options: dict[str, Any]) -> bool:
    """Whether ``path`` is a flow-MC result file whose stored flow fits this model, data and
    (resolved) flow options, so that ``reuse_flow=path`` would be accepted."""
    if not Path(path).is_file() or not store.is_result_file(path):
        return False
    try:
        stored = store.load(path)
    except (OSError, ValueError):
        return False
    if stored.method != "flowmc" or STATE_GROUP not in stored.idata.groups():
        return False
    expected = fingerprint(model, data, ModelBridge(model, data).ndim, options)
    return stored.diagnostics.get("flow_fingerprint") == expected


def _load_state(path: str, expected: str, template) -> dict[str, Any]:
    stored = store.load(path)
    found = stored.diagnostics.get("flow_fingerprint")
    if found != expected:
        raise OptionError(
            f"option reuse_flow: {path} holds a flow for another model, data or flow shape "
            f"(fingerprint {str(found)[:12]}..., expected {expected[:12]}...)"
        )
    group = stored.idata[STATE_GROUP]
    params, static = eqx.partition(template, eqx.is_array)
    _, unravel = ravel_pytree(params)
    flat = jnp.asarray(group["flow_parameters"].values)
    return {
        "flow": eqx.combine(unravel(flat), static),
        "center": jnp.asarray(group["center"].values),
        "flow_scale": jnp.asarray(group["flow_scale"].values),
        "scale": jnp.asarray(group["local_scale"].values),
    }


@dataclass(frozen=True)
class FlowFunctions:
    """What :meth:`FlowMC.build` returns: the compiled pieces of a run (data as their first
    argument, except the flow's trainer, which sees only positions) and their settings."""

    model: Callable
    options: dict[str, Any]
    ndim: int
    draw_chains: DataFunction  # (data, key) -> starting points, (num_chains, ndim)
    sweep: DataFunction  # (data, key, z, log_step, scale, adapt, use_flow, flow, center, flow_scale)
    constrain: DataFunction  # (data, flat points (n, ndim)) -> constrained sites, each (n, ...)
    optimizer: Any
    train: Callable  # (key, flow, opt_state, points) -> (flow, opt_state, train loss, val loss)
    num_points: int  # training points per fit
    flow_template: Any  # a flow whose non-array parts every run's flow shares

    def new_flow(self, key: jax.Array):
        """A flow initialised from ``key``, with the template's non-array parts: flowjax
        builds new functions into every flow it makes (equal in what they compute), and
        compiled code that takes a flow is keyed on those, so runs would compile again."""
        arrays = eqx.filter(_new_flow(key, self.ndim, self.options), eqx.is_array)
        return eqx.combine(arrays, eqx.filter(self.flow_template, eqx.is_array, inverse=True))


class _Steps(NamedTuple):
    """The data-taking pieces of :class:`FlowFunctions` with the data of one run fixed."""

    draw_chains: Callable
    sweep: Callable
    constrain: Callable


@dataclass
class _Chains:
    """The state that warmup adapts and production freezes."""

    z: jax.Array
    log_step: jax.Array
    scale: jax.Array
    flow: Any
    center: jax.Array
    flow_scale: jax.Array
    trained: bool
    opt_state: Any = None


@dataclass
class _Warmup:
    """What warmup reports."""

    loss_curves: list[dict[str, list[float]]] = field(default_factory=list)
    global_acceptance: list[float] = field(default_factory=list)
    local_acceptance: list[float] = field(default_factory=list)


# Arrays, not Python floats: filter_jit treats Python scalars as static, so 1.0 and 0.0
# would compile the sweep twice.
def _adapt(on: bool) -> jax.Array:
    return jnp.asarray(1.0 if on else 0.0)


class FlowMC(OptionChecks):
    """``method="flowmc"``: local moves plus global proposals from a trained flow."""

    name = "flowmc"
    defaults = DEFAULTS
    choices = CHOICES

    def build(self, bridge: ModelBridge, options: dict[str, Any]) -> FlowFunctions:
        opts = dict(options)
        structure = split_data(bridge.data)[0]
        init, step = _local_kernel(opts["local_kernel"], opts["num_leapfrog_steps"])
        sweep = _make_sweep(init, step, _TARGET_LOCAL_ACCEPT[opts["local_kernel"]],
                            opts["steps_per_loop"], opts["local_steps_per_draw"])

        def draw_chains(data, key):
            return jax.vmap(lambda k: bridge.prior_draw(k, data))(jax.random.split(key, opts["num_chains"]))

        def sweep_on(data, *args):
            return sweep(lambda flat: bridge.log_density(flat, data), *args)

        def constrain(data, flat):
            return jax.vmap(lambda point: bridge.constrain(point, data))(flat)

        optimizer = optax.adam(opts["learning_rate"])
        num_points = min(opts["num_chains"] * opts["steps_per_loop"], opts["max_training_points"])
        train = _make_trainer(optimizer, num_points, opts["batch_size"], opts["max_epochs"], opts["patience"])
        return FlowFunctions(
            bridge.model, opts, bridge.ndim, DataFunction(draw_chains, structure),
            DataFunction(sweep_on, structure, eqx.filter_jit), DataFunction(constrain, structure),
            optimizer, train, num_points, _new_flow(jax.random.PRNGKey(0), bridge.ndim, opts),
        )

    def run(self, built: FlowFunctions, data: Mapping[str, Any], *, seed: int, num_samples: int,
            progress: bool = False, data_as_constants: bool = False) -> MethodRun:
        steps = _Steps(*(getattr(built, name).on(data, as_constants=data_as_constants) for name in _Steps._fields))
        k_init, k_flow, k_warm, k_prod = jax.random.split(jax.random.PRNGKey(seed), 4)
        flow_fingerprint = fingerprint(built.model, data, built.ndim, built.options)
        chains = _start(built, steps.draw_chains, k_init, k_flow, flow_fingerprint)
        warmup = _warm_up(built, steps.sweep, chains, k_warm, progress)
        trace, log_p, local_acc, accepted, switches = _produce(built, steps.sweep, chains, k_prod, num_samples, progress)
        opts = built.options
        # Every array of the flow, integer permutations included (they differ between seeds).
        flow_params = ravel_pytree(eqx.partition(chains.flow, eqx.is_array)[0])[0]
        local_evals = opts["local_steps_per_draw"] * (opts["num_leapfrog_steps"] if opts["local_kernel"] == "hmc" else 1)
        diagnostics = {
            "local_kernel": opts["local_kernel"],
            "local_acceptance": float(np.mean(local_acc)),
            "global_acceptance": float(accepted.mean()) if chains.trained else None,
            "mode_switches": int(switches.sum()),
            "warmup_local_acceptance": warmup.local_acceptance,
            "warmup_global_acceptance": warmup.global_acceptance,
            "num_training_loops": len(warmup.loss_curves),
            "flow_loss": warmup.loss_curves,
            "flow_reused": opts["reuse_flow"] is not None,
            "flow_fingerprint": flow_fingerprint,
            "step_size": np.exp(np.asarray(chains.log_step)).tolist(),
            # Production density(+gradient) evaluations; NUTS varies per move, counted as one.
            "likelihood_evaluations": int(opts["num_chains"] * num_samples * (local_evals + 1)),
        }
        sample_stats = {
            "lp": log_p,
            "acceptance_rate": local_acc,
            "global_accepted": accepted,
            "mode_switch": switches,
        }
        state = {
            STATE_GROUP: xr.Dataset({
                "flow_parameters": ("flow_parameter", np.asarray(flow_params)),
                "center": ("unconstrained_dim", np.asarray(chains.center)),
                "flow_scale": ("unconstrained_dim", np.asarray(chains.flow_scale)),
                "local_scale": ("unconstrained_dim", np.asarray(chains.scale)),
            })
        }
        posterior = _constrained(steps.constrain, trace)
        return MethodRun(posterior=posterior, sample_stats=sample_stats, diagnostics=diagnostics, extra_groups=state)


def _start(built: FlowFunctions, draw_chains: Callable, k_init: jax.Array, k_flow: jax.Array,
           flow_fingerprint: str) -> _Chains:
    """Chains at prior draws with an untrained flow, or the stored flow, scales and centre
    of ``reuse_flow``."""
    opts, ndim = built.options, built.ndim
    flow = built.new_flow(k_flow)
    z = check_prior_draws(draw_chains(k_init))
    chains = _Chains(
        z=z,
        log_step=jnp.full((opts["num_chains"],), jnp.log(0.1 / np.sqrt(ndim))),
        scale=jnp.ones(ndim),
        flow=flow,
        center=jnp.zeros(ndim),
        flow_scale=jnp.ones(ndim),
        trained=False,
    )
    if opts["reuse_flow"] is not None:
        state = _load_state(str(opts["reuse_flow"]), flow_fingerprint, flow)
        chains.flow, chains.center, chains.flow_scale, chains.scale = (
            state["flow"], state["center"], state["flow_scale"], state["scale"]
        )
        chains.trained = True
    chains.opt_state = built.optimizer.init(_trainable(chains.flow)[0])
    return chains


def _warm_up(built: FlowFunctions, sweep: Callable, chains: _Chains, k_warm: jax.Array, progress: bool) -> _Warmup:
    """Warmup loops (updating ``chains``): local moves with adapted step sizes, then a flow
    fitted to the visited positions, then global proposals from it; a reused flow gets one
    loop of burn-in and step-size adaptation only."""
    opts = built.options
    reused = opts["reuse_flow"] is not None
    num_loops = 1 if reused else opts["num_warmup_loops"]
    n_iter = opts["steps_per_loop"]
    warmup = _Warmup()
    for loop in range(num_loops):
        k_warm, k_sweep, k_train = jax.random.split(k_warm, 3)
        chains.z, chains.log_step, (trace, _, local_acc, accepted, _) = sweep(
            k_sweep, chains.z, chains.log_step, chains.scale, _adapt(True), jnp.array(chains.trained),
            chains.flow, chains.center, chains.flow_scale,
        )
        warmup.local_acceptance.append(float(local_acc.mean()))
        if chains.trained:
            warmup.global_acceptance.append(float(accepted.mean()))
        else:
            # Rescale local moves by the spread within chains, measured before any global
            # jump can mix modes into it; step sizes keep adapting to it in later loops.
            within = jnp.sqrt(jnp.mean(jnp.var(trace[:, n_iter // 2:], axis=1), axis=0))
            chains.scale = jnp.where(jnp.isfinite(within) & (within > 0), within, chains.scale)
        if progress:
            acc_text = f", global acceptance {warmup.global_acceptance[-1]:.2f}" if chains.trained else ""
            print(f"\rflowmc warmup loop {loop + 1}/{num_loops}: local acceptance "
                  f"{warmup.local_acceptance[-1]:.2f}{acc_text}   ", end="", flush=True, file=sys.stderr)
        done_training = chains.trained and (
            reused or warmup.global_acceptance[-1] >= opts["target_global_acceptance"]
        )
        if done_training or loop == num_loops - 1:
            break  # the last loop only adapts; production starts with the trained flow
        _train(built, chains, trace, k_train, warmup)
    return warmup


def _train(built: FlowFunctions, chains: _Chains, trace: jax.Array, key: jax.Array, warmup: _Warmup) -> None:
    """Fit the flow (updating ``chains``) to at most ``num_points`` visited positions,
    standardised by the first fit's centre and spread."""
    points = trace.reshape(-1, built.ndim)
    stride = max(1, points.shape[0] // built.options["max_training_points"])
    points = points[::stride][:built.num_points]
    if not chains.trained:
        chains.center = jnp.mean(points, axis=0)
        chains.flow_scale = jnp.std(points, axis=0) + 1e-6
    chains.flow, chains.opt_state, train_curve, val_curve = built.train(
        key, chains.flow, chains.opt_state, (points - chains.center) / chains.flow_scale
    )
    train_curve, val_curve = np.asarray(train_curve), np.asarray(val_curve)
    epochs = int(np.sum(np.isfinite(val_curve)))
    warmup.loss_curves.append({"train": train_curve[:epochs].tolist(), "val": val_curve[:epochs].tolist()})
    chains.trained = True


def _produce(built: FlowFunctions, sweep: Callable, chains: _Chains, k_prod: jax.Array, num_samples: int,
             progress: bool) -> tuple[np.ndarray, ...]:
    """Production with frozen adaptation: whole sweeps until ``num_samples`` draws per chain.
    Returns (positions, log density, local acceptance, global accepted, mode switch), each
    (chain, draw, ...)."""
    n_iter = built.options["steps_per_loop"]
    pieces = []
    for index in range(-(-num_samples // n_iter)):
        k_prod, k_sweep = jax.random.split(k_prod)
        chains.z, _, piece = sweep(k_sweep, chains.z, chains.log_step, chains.scale, _adapt(False),
                                   jnp.array(chains.trained), chains.flow, chains.center, chains.flow_scale)
        pieces.append(piece)
        if progress:
            print(f"\rflowmc sampling: {min((index + 1) * n_iter, num_samples)}/{num_samples} draws per chain   ",
                  end="", flush=True, file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    return tuple(np.concatenate([np.asarray(p[i]) for p in pieces], axis=1)[:, :num_samples] for i in range(5))


def _constrained(constrain: Callable, flat_draws: np.ndarray) -> dict[str, np.ndarray]:
    """``constrain`` over the leading axes of ``flat_draws``, as NumPy arrays."""
    lead = flat_draws.shape[:-1]
    out = constrain(jnp.asarray(flat_draws.reshape((-1, flat_draws.shape[-1]))))
    return {k: np.asarray(v).reshape(lead + v.shape[1:]) for k, v in out.items()}


METHOD = FlowMC()
