"""Nested sampling of many problems at once: blackjax's nested slice sampler, vmapped.

Every problem of a chunk runs the same compiled step (``jax.vmap`` over problems of
``blackjax.nss``'s pure ``init``/``step``), so shapes are static: all problems take the same
number of iterations, in blocks of ``steps_per_chunk``, until every problem of the chunk
has met the termination criterion (problems that finish early keep compressing, which only
adds dead points). Problem ``i`` is seeded from ``fold_in(PRNGKey(seed), i)``.

Per problem: the log-evidence (mean over simulated prior-volume sequences) and its spread,
each parameter's weighted mean, sd and quantiles, modes of a weighted histogram of its
marginal (smoothed over two bins), and equally weighted draws.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["DEFAULTS", "latent_names", "run_problems"]

DEFAULTS: dict[str, Any] = {
    "num_live_points": 500,
    "num_delete": 50,
    "num_inner_steps": None,  # default max(5, 3 * dimension)
    "termination": 1e-3,
    "max_iterations": 5000,
    "steps_per_chunk": 25,
    "num_volume_simulations": 50,
    "fallback": True,  # grid only: hand unresolved problems to nested sampling
}
_HIST_BINS = 201


def latent_names(model: Callable, data0: dict[str, Any]) -> tuple[str, ...]:
    from astroinfer.engine.model import ModelBridge

    bridge = ModelBridge(model, data0)
    return tuple(bridge.sites.latent_names)


_CACHE: dict[Any, Any] = {}


def _functions(spec, opts: dict[str, Any], shared_keys: tuple[str, ...], batched_example: dict[str, Any],
               shared: dict[str, Any]):
    import blackjax
    import jax
    import jax.numpy as jnp
    from blackjax.ns.integrator import init_integrator, update_integrator
    from jax.flatten_util import ravel_pytree
    from numpyro import handlers
    from numpyro.infer.util import _unconstrain_reparam, log_density

    from astroinfer.engine.model import ModelBridge

    key = (spec.model, tuple(sorted(opts.items())), shared_keys, spec.num_draws)
    if key in _CACHE:
        return _CACHE[key]
    model = spec.model_fn()
    bridge = ModelBridge(model, {**shared, **batched_example})
    ndim = bridge.ndim
    num_inner = opts["num_inner_steps"] or max(5, 3 * ndim)
    names = bridge.sites.latent_names
    sites = {n: bridge._model_trace[n] for n in names}

    def split_density(data, flat):
        params = bridge.unravel(flat)
        sub = handlers.substitute(model, substitute_fn=lambda site: _unconstrain_reparam(params, site))
        _, trace = log_density(sub, (), data, {})
        lp, ll = jnp.zeros(()), jnp.zeros(())
        for name, site in trace.items():
            if site["type"] != "sample":
                continue
            v = jnp.sum(site["fn"].log_prob(site["value"]) * (site.get("scale") or 1.0))
            if site["is_observed"] and not (name.startswith("_") and name.endswith("_log_det")):
                ll = ll + v
            else:
                lp = lp + v
        return lp, ll

    def prior_draw(data, k):
        from numpyro.distributions.transforms import biject_to

        with handlers.block(hide_fn=lambda site: site.get("is_observed", False)):
            tr = handlers.trace(handlers.seed(model, k)).get_trace(**data)
        tree = {n: biject_to(sites[n]["fn"].support).inv(tr[n]["value"]) for n in bridge.unravel(bridge.init_flat)}
        return ravel_pytree(tree)[0]

    def make_algo(data):
        return blackjax.nss(logprior_fn=lambda x: split_density(data, x)[0],
                            loglikelihood_fn=lambda x: split_density(data, x)[1],
                            num_inner_steps=num_inner, num_delete=opts["num_delete"])

    def init_one(data, k):
        live = jax.vmap(lambda kk: prior_draw(data, kk))(jax.random.split(k, opts["num_live_points"]))
        state = make_algo(data).init(live)
        return state, init_integrator(state.particles)

    def steps_one(data, state, integ, k):
        algo = make_algo(data)

        def body(carry, kk):
            st, ig = carry
            st, info = algo.step(kk, st)
            ig = update_integrator(ig, st.particles, info.particles)
            return (st, ig), (info.particles.position, info.particles.loglikelihood,
                              info.particles.loglikelihood_birth)

        (state, integ), dead = jax.lax.scan(body, (state, integ), jax.random.split(k, opts["steps_per_chunk"]))
        return state, integ, dead

    constrain = jax.vmap(bridge.constrain)
    fns = (jax.jit(jax.vmap(init_one)), jax.jit(jax.vmap(steps_one)), constrain, names, ndim)
    _CACHE[key] = fns
    return fns


def _weighted_summary(x: np.ndarray, w: np.ndarray, quantiles, max_modes: int, min_mass: float,
                      low: float, high: float) -> dict[str, np.ndarray]:
    """Marginal summary of weighted points (one problem, one parameter)."""
    import jax.numpy as jnp

    from astroinfer.engine.grid import marginal_summary

    order = np.argsort(x)
    xs, ws = x[order], w[order]
    mean = float(np.sum(ws * xs))
    sd = float(np.sqrt(max(np.sum(ws * (xs - mean) ** 2), 0.0)))
    cdf = np.cumsum(ws) - 0.5 * ws
    quant = np.interp(quantiles, cdf, xs)
    edges = np.linspace(low, high, _HIST_BINS + 1)
    hist, _ = np.histogram(xs, bins=edges, weights=ws)
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    smooth = np.convolve(hist, kernel / kernel.sum(), mode="same")
    centres = 0.5 * (edges[1:] + edges[:-1])
    marg = marginal_summary(jnp.asarray(centres)[None], jnp.log(jnp.asarray(smooth) + 1e-300)[None],
                            max_modes=max_modes, mode_min_mass=min_mass)
    out = {k: np.asarray(v)[0] for k, v in marg.items()}
    out.update(mean=np.float32(mean), sd=np.float32(sd), quantiles=quant.astype(np.float32))
    return out


def run_problems(spec, batched: dict[str, np.ndarray], shared: dict[str, Any], indices: np.ndarray,
                 opts: dict[str, Any]) -> dict[str, np.ndarray]:
    """Nested-sample the given problems; results in the batch engine's per-problem layout."""
    import jax
    import jax.numpy as jnp
    from blackjax.ns.base import NSInfo
    from blackjax.ns.utils import log_weights

    from astroinfer.engine.grid import GRID_DEFAULTS, QUANTILES

    opts = {**DEFAULTS, **{k: v for k, v in opts.items() if k in DEFAULTS}}
    n = indices.size
    example = {k: np.asarray(v)[0] for k, v in batched.items()}
    init_b, steps_b, constrain, names, ndim = _functions(spec, opts, tuple(sorted(shared)), example, shared)
    data = {**{k: jnp.broadcast_to(jnp.asarray(v), (n,) + np.shape(v)) for k, v in shared.items()},
            **{k: jnp.asarray(v) for k, v in batched.items()}}
    base = jax.random.PRNGKey(spec.seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))
    split = jax.vmap(lambda k: jax.random.split(k, 4))(keys)
    init_keys, run_keys, weight_keys, draw_keys = (split[:, j] for j in range(4))
    state, integ = init_b(data, init_keys)
    dead = []
    log_term = np.log(opts["termination"])
    max_blocks = max(1, opts["max_iterations"] // opts["steps_per_chunk"])
    converged = False
    for block in range(max_blocks):
        block_keys = jax.vmap(lambda k: jax.random.fold_in(k, block))(run_keys)
        state, integ, d = steps_b(data, state, integ, block_keys)
        dead.append(d)
        remaining = np.asarray(integ.logZ_live - integ.logZ)
        if np.all((remaining < log_term) | ~np.isfinite(np.asarray(integ.logZ_live))):
            converged = True
            break
    pos = np.concatenate([np.asarray(d[0]).reshape(n, -1, ndim) for d in dead] +
                         [np.asarray(state.particles.position).reshape(n, -1, ndim)], axis=1)
    ll = np.concatenate([np.asarray(d[1]).reshape(n, -1) for d in dead] +
                        [np.asarray(state.particles.loglikelihood).reshape(n, -1)], axis=1)
    llb = np.concatenate([np.asarray(d[2]).reshape(n, -1) for d in dead] +
                         [np.asarray(state.particles.loglikelihood_birth).reshape(n, -1)], axis=1)

    # blackjax's prior-volume simulation indexes with booleans, so it runs problem by problem.
    log_z = np.zeros(n)
    log_z_err = np.zeros(n)
    w = np.zeros(ll.shape)
    for b in range(n):
        log_w = log_weights(weight_keys[b], NSInfo(_Particles(pos[b], ll[b], llb[b]), None),
                            shape=opts["num_volume_simulations"])
        samples = np.asarray(jax.scipy.special.logsumexp(log_w, axis=0))
        log_z[b], log_z_err[b] = samples.mean(), samples.std()
        mean_lw = np.asarray(jax.scipy.special.logsumexp(log_w, axis=1), np.float64)
        w[b] = np.exp(mean_lw - mean_lw.max())
        w[b] /= w[b].sum()
    constrained = constrain(jnp.asarray(pos.reshape(-1, ndim)))
    values = {nm: np.asarray(constrained[nm]).reshape(n, -1) for nm in names}

    max_modes = dict(spec.options).get("max_modes", GRID_DEFAULTS["max_modes"])
    min_mass = dict(spec.options).get("mode_min_mass", GRID_DEFAULTS["mode_min_mass"])
    out: dict[str, np.ndarray] = {"log_evidence": log_z.astype(np.float32), "log_evidence_err": log_z_err.astype(np.float32)}
    draws = np.zeros((n, len(names), spec.num_draws), np.float32)
    for b in range(n):
        rng = np.random.default_rng([spec.seed, int(indices[b])])
        pick = rng.choice(w.shape[1], size=spec.num_draws, p=w[b])
        for j, nm in enumerate(names):
            x = values[nm][b]
            s = _weighted_summary(x, w[b], QUANTILES, max_modes, min_mass, float(x.min()), float(x.max()))
            for key, v in s.items():
                full = f"{nm}.{key}"
                if full not in out:
                    out[full] = np.zeros((n,) + np.shape(v), np.asarray(v).dtype if key != "num_modes" else np.int32)
                out[full][b] = v
            draws[b, j] = x[pick]
    out["draws"] = draws
    out["nested_converged"] = np.full(n, converged)
    return out


class _Particles:
    """The fields ``log_weights`` reads from dead particles."""

    def __init__(self, position, loglikelihood, loglikelihood_birth):
        self.position = position
        self.loglikelihood = loglikelihood
        self.loglikelihood_birth = loglikelihood_birth


def _flatten_particles(p):
    return (p.position, p.loglikelihood, p.loglikelihood_birth), None


def _unflatten_particles(_, children):
    return _Particles(*children)


def _register():
    import jax

    jax.tree_util.register_pytree_node(_Particles, _flatten_particles, _unflatten_particles)


_register()
