"""Per-star results drawn after the globals: each star's membership probability and distance
from its exact conditional given every global draw (:func:`star_conditionals`).

Membership and the distance mean and sd are Rao-Blackwellised (averaged over the global
draws, by the same quadrature as the likelihood); distance draws come from inverse-CDF
sampling on a fine grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import softmax
from jax.scipy.special import logsumexp

from .marginal import _log_like_u, _log_prior_v, _Terms
from .options import CLUSTER_NODES, FIELD_NODES, PM_GLOBALS, _halo_scales
from .proper_motion import log_pm_marginals


def _star_moments(w, s, profile, distance, size, fraction, scale, offset, field_offset=None, pm_terms=(0.0, 0.0)):
    """Membership probability and E[r], E[r^2] given one global draw (quadrature); the field
    sees parallaxes shifted by ``field_offset`` (default ``offset``); ``pm_terms`` are the
    stars' proper-motion log terms (cluster, field), which the distances do not depend on."""
    t = _Terms(w - offset, s, profile, distance, size, scale, CLUSTER_NODES, FIELD_NODES,
               field_parallax=None if field_offset is None else w - field_offset)
    a = jnp.log(fraction) + logsumexp(t.cluster_terms, axis=-1) + pm_terms[0]
    b = jnp.log1p(-fraction) + logsumexp(t.field_terms, axis=-1) + pm_terms[1]
    member = jnp.exp(a - jnp.logaddexp(a, b))

    def moments(u, terms):
        weights = softmax(terms, axis=-1)
        r = 1000.0 * jnp.exp(-u)
        return (weights * r).sum(-1), (weights * r**2).sum(-1)

    m1c, m2c = moments(t.cluster_v + t.cluster_shift, t.cluster_terms)
    m1f, m2f = moments(t.field_u, t.field_terms)
    return member, member * m1c + (1 - member) * m1f, member * m2c + (1 - member) * m2f


def _star_draw(key, w, s, profile, distance, size, fraction, scale, offset, field_offset=None,
               pm_terms=(0.0, 0.0), grid_points: int = 256):
    """One joint draw (membership indicator, distance) per star from its conditional; the
    field sees parallaxes shifted by ``field_offset`` (default ``offset``); ``pm_terms`` as
    in :func:`_star_moments`."""
    wc = w - offset
    wf = wc if field_offset is None else w - field_offset
    t = _Terms(wc, s, profile, distance, size, scale, CLUSTER_NODES, FIELD_NODES, field_parallax=wf)
    k1, k2, k3 = jax.random.split(key, 3)
    log_c = logsumexp(t.cluster_terms, axis=-1)
    a = jnp.log(fraction) + log_c + pm_terms[0]
    b = jnp.log1p(-fraction) + logsumexp(t.field_terms, axis=-1) + pm_terms[1]
    member = jnp.exp(a - jnp.logaddexp(a, b))
    is_member = jax.random.uniform(k1, w.shape) < member
    cc, cw, size_c = t.cluster_centre, t.cluster_width, t.sizes
    if profile == "student":  # pick the scale-mixture component from its posterior weight
        per_k = logsumexp(t.cluster_terms.reshape(w.shape[0], cc.shape[0], -1), axis=-1)  # (N, K)
        k = jax.random.categorical(k3, per_k, axis=-1)
        cc = jnp.take_along_axis(cc.T, k[:, None], 1)[:, 0]
        cw = jnp.take_along_axis(cw.T, k[:, None], 1)[:, 0]
        size_c = size * jnp.asarray(_halo_scales(), dtype=cc.dtype)[k]
    base = "gaussian" if profile == "student" else profile
    # Inverse CDF on a fine grid of +-10 Laplace widths about the chosen component's centre
    # (trapezoid cells, linear within a cell).
    # Members' grid is in v (log parallax relative to the cluster's), the field's in u.
    grid = jnp.linspace(-10.0, 10.0, grid_points)
    centre = jnp.where(is_member, cc, t.field_centre)
    width = jnp.where(is_member, cw, t.field_width)
    x = centre[:, None] + width[:, None] * grid
    shift = jnp.where(is_member, t.cluster_shift, 0.0)[:, None]
    prior_c = _log_prior_v(x, base, distance, size_c[:, None] if profile == "student" else size_c)[0]
    logp = (jnp.where(is_member[:, None], prior_c, t.field_prior(x)[0])
            + _log_like_u(x, jnp.where(is_member, wc, wf)[:, None], s[:, None], shift)[0])
    dens = jnp.exp(logp - logp.max(axis=1, keepdims=True))
    cells = 0.5 * (dens[:, 1:] + dens[:, :-1])
    cdf = jnp.concatenate([jnp.zeros((w.shape[0], 1)), jnp.cumsum(cells, axis=1)], axis=1)
    cdf = cdf / cdf[:, -1:]
    v = jax.random.uniform(k2, w.shape)
    idx = jnp.clip(jax.vmap(jnp.searchsorted)(cdf, v) - 1, 0, grid_points - 2)
    lo = jnp.take_along_axis(cdf, idx[:, None], 1)[:, 0]
    hi = jnp.take_along_axis(cdf, idx[:, None] + 1, 1)[:, 0]
    frac = jnp.clip((v - lo) / jnp.maximum(hi - lo, 1e-30), 0.0, 1.0)
    x_draw = jnp.take_along_axis(x, idx[:, None], 1)[:, 0] + frac * (x[:, 1] - x[:, 0])
    return member, 1000.0 * jnp.exp(-(x_draw + shift[:, 0])), is_member


def star_conditionals(draws: dict[str, np.ndarray], parallax, parallax_error, *, profile="lognormal",
                      num_draws: int = 200, seed: int = 0, offset_in_field: bool = True,
                      proper_motion: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per-star posterior summaries from the global draws (flattened over chain and draw).

    ``proper_motion`` (the model data's ``proper_motion``, ``proper_motion_cov`` and
    ``proper_motion_used``) adds each draw's proper-motion terms to the memberships; the
    draws then need the :data:`~.options.PM_GLOBALS`.

    ``membership`` and the distance mean/sd are Rao-Blackwellised: averages over every
    global draw of the exact conditional membership probability and distance moments;
    quantiles and the returned ``distance_draws``/``membership_draws`` come from
    ``num_draws`` global draws (evenly thinned), one conditional draw each.
    """
    w = jnp.asarray(parallax, dtype=jnp.float32)
    s = jnp.asarray(parallax_error, dtype=jnp.float32)
    total = draws["cluster_distance"].size
    flat = {k: jnp.asarray(np.asarray(draws[k]).reshape(-1), dtype=jnp.float32)
            for k in ("cluster_distance", "cluster_size", "member_fraction", "field_scale")}
    flat["parallax_offset"] = (jnp.asarray(np.asarray(draws["parallax_offset"]).reshape(-1), dtype=jnp.float32)
                               if "parallax_offset" in draws else jnp.zeros(total, jnp.float32))
    flat["field_offset"] = flat["parallax_offset"] if offset_in_field else jnp.zeros(total, jnp.float32)
    order = ("cluster_distance", "cluster_size", "member_fraction", "field_scale", "parallax_offset", "field_offset")
    if proper_motion is not None:
        pm_data = tuple(jnp.asarray(proper_motion[k], dtype=jnp.float32)
                        for k in ("proper_motion", "proper_motion_cov", "proper_motion_used"))
        flat.update({k: jnp.asarray(np.asarray(draws[k]).reshape(-1), dtype=jnp.float32) for k in PM_GLOBALS})
        order = order + PM_GLOBALS

    def per_draw_terms(p):
        """The parallax globals and the proper-motion terms of one draw."""
        if proper_motion is None:
            return p, (0.0, 0.0)
        return p[:6], log_pm_marginals(*pm_data, dict(zip(PM_GLOBALS, p[6:])), p[0])

    @jax.jit
    def accumulate(params):
        def body(carry, p):
            base, pm_terms = per_draw_terms(p)
            member, m1, m2 = _star_moments(w, s, profile, *base, pm_terms=pm_terms)
            return (carry[0] + member, carry[1] + m1, carry[2] + m2), None
        zero = jnp.zeros_like(w)
        (sm, s1, s2), _ = jax.lax.scan(body, (zero, zero, zero), params)
        return sm, s1, s2

    params = tuple(flat[k] for k in order)
    sm, s1, s2 = accumulate(params)
    membership = np.asarray(sm, dtype=np.float64) / total
    mean = np.asarray(s1, dtype=np.float64) / total
    var = np.maximum(np.asarray(s2, dtype=np.float64) / total - mean**2, 0.0)

    pick = np.unique(np.linspace(0, total - 1, max(1, min(num_draws, total))).round().astype(int))
    keys = jax.random.split(jax.random.PRNGKey(seed), pick.size)

    @jax.jit
    def draw_all(keys, params):
        def one(args):
            key, p = args
            base, pm_terms = per_draw_terms(p)
            member, r, _ = _star_draw(key, w, s, profile, *base, pm_terms=pm_terms)
            return member, r
        return jax.lax.map(one, (keys, params))

    member_draws, distance_draws = draw_all(keys, tuple(flat[k][pick] for k in order))
    distance_draws = np.asarray(distance_draws, dtype=np.float64)
    q05, q50, q95 = np.quantile(distance_draws, [0.05, 0.5, 0.95], axis=0)
    return {"membership": membership, "distance": mean, "distance_sd": np.sqrt(var),
            "distance_q05": q05, "distance_q50": q50, "distance_q95": q95,
            "distance_draws": distance_draws, "membership_draws": np.asarray(member_draws, dtype=np.float64)}
