"""Per-star results drawn after the globals: each star's membership probability and distance
from its exact conditional given every global draw (:func:`star_conditionals`).

Membership and the distance mean and sd are Rao-Blackwellised (averaged over the global
draws, by the same quadrature as the likelihood); distance draws come from inverse-CDF
sampling on a fine grid.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import softmax
from jax.scipy.special import logsumexp

from .field_mixture import field_component_quadrature, field_scales, star_log_weights
from .marginal import _log_field_u, _log_like_u, _log_prior_v, _Terms
from .options import CLUSTER_NODES, FIELD_NODES, MIXTURE_FIELD_NODES, PM_GLOBALS, _halo_scales
from .proper_motion import log_pm_marginals


class FieldParts(NamedTuple):
    """The field's per-star quadrature under each of its components (stars, components):
    log mass, posterior E[r] and E[r^2], and the rule's centre and width in u."""

    log_mass: Any
    mean: Any
    second_moment: Any
    centre: Any
    width: Any


def _moments(u, terms):
    """E[r] and E[r^2] over quadrature nodes ``u`` (log parallax, last axis) with log terms ``terms``."""
    weights = softmax(terms, axis=-1)
    r = 1000.0 * jnp.exp(-u)
    return (weights * r).sum(-1), (weights * r**2).sum(-1)


def _field_parts(wf, s, scales, num_nodes: int = FIELD_NODES) -> FieldParts:
    """:class:`FieldParts` of the field's components of length scales ``scales`` ((M,);
    one for the single density) for parallaxes ``wf``, by ``num_nodes``-node quadrature."""
    u, terms, centre, width = field_component_quadrature(wf, s, scales, num_nodes)
    return FieldParts(logsumexp(terms, axis=-1), *_moments(u, terms), centre, width)


def _star_moments(w, s, profile, distance, size, fraction, field: FieldParts, log_weights, offset,
                  pm_terms=(0.0, 0.0)):
    """Membership probability and E[r], E[r^2] given one global draw (quadrature); the field
    is the mixture of the components of ``field`` with each star's ``log_weights`` ((stars,
    M) or (M,)); ``pm_terms`` are the stars' proper-motion log terms (cluster, field), which
    the distances do not depend on."""
    t = _Terms(w - offset, s, profile, distance, size, 1.0, CLUSTER_NODES, 0)
    per_component = field.log_mass + log_weights
    a = jnp.log(fraction) + logsumexp(t.cluster_terms, axis=-1) + pm_terms[0]
    b = jnp.log1p(-fraction) + logsumexp(per_component, axis=-1) + pm_terms[1]
    member = jnp.exp(a - jnp.logaddexp(a, b))
    m1c, m2c = _moments(t.cluster_v + t.cluster_shift, t.cluster_terms)
    pi = softmax(per_component, axis=-1)
    m1f, m2f = (pi * field.mean).sum(-1), (pi * field.second_moment).sum(-1)
    return member, member * m1c + (1 - member) * m1f, member * m2c + (1 - member) * m2f


def _star_draw(key, w, s, profile, distance, size, fraction, field: FieldParts, log_weights, offset,
               field_offset=None, *, scales, pm_terms=(0.0, 0.0), grid_points: int = 256):
    """One joint draw (membership indicator, distance) per star from its conditional; the
    field (components of length ``scales``, their ``field`` parts for parallaxes shifted by
    ``field_offset``, default ``offset``) and ``pm_terms`` as in :func:`_star_moments`."""
    wc = w - offset
    wf = wc if field_offset is None else w - field_offset
    t = _Terms(wc, s, profile, distance, size, 1.0, CLUSTER_NODES, 0)
    per_component = field.log_mass + log_weights
    k1, k2, k3, k4 = jax.random.split(key, 4)
    log_c = logsumexp(t.cluster_terms, axis=-1)
    a = jnp.log(fraction) + log_c + pm_terms[0]
    b = jnp.log1p(-fraction) + logsumexp(per_component, axis=-1) + pm_terms[1]
    member = jnp.exp(a - jnp.logaddexp(a, b))
    is_member = jax.random.uniform(k1, w.shape) < member
    # The field component, drawn from its posterior weight; its centre, width and scale.
    j = jax.random.categorical(k4, per_component, axis=-1)[:, None]
    field_centre = jnp.take_along_axis(field.centre, j, 1)[:, 0]
    field_width = jnp.take_along_axis(field.width, j, 1)[:, 0]
    field_scale = jnp.asarray(scales)[j]  # (stars, 1)
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
    centre = jnp.where(is_member, cc, field_centre)
    width = jnp.where(is_member, cw, field_width)
    x = centre[:, None] + width[:, None] * grid
    shift = jnp.where(is_member, t.cluster_shift, 0.0)[:, None]
    prior_c = _log_prior_v(x, base, distance, size_c[:, None] if profile == "student" else size_c)[0]
    logp = (jnp.where(is_member[:, None], prior_c, _log_field_u(x, field_scale)[0])
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
                      proper_motion: dict[str, np.ndarray] | None = None,
                      field_group: np.ndarray | None = None,
                      offset_basis: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-star posterior summaries from the global draws (flattened over chain and draw).

    The field is the single density when the draws have ``field_scale``, the mixture of
    :mod:`.field_mixture` when they have ``field_weights`` (each star's group in
    ``field_group``; all in one group when None). With ``offset_basis`` (stars, r; an offset
    field, :mod:`.systematics`) each star's offset is ``offset_basis @`` the draw's
    ``offset_field``.

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
    mixture = "field_weights" in draws
    field_name = "field_weights" if mixture else "field_scale"

    def flat_draws(name):
        values = np.asarray(draws[name])
        return jnp.asarray(values.reshape((total,) + values.shape[2:]), dtype=jnp.float32)

    flat = {k: flat_draws(k) for k in ("cluster_distance", "cluster_size", "member_fraction", field_name)}
    if offset_basis is not None:  # the offset field's coordinates; each star's offset per draw below
        flat["parallax_offset"] = flat_draws("offset_field")
        basis = jnp.asarray(offset_basis, dtype=jnp.float32)
    else:
        flat["parallax_offset"] = flat_draws("parallax_offset") if "parallax_offset" in draws else jnp.zeros(total)
    flat["field_offset"] = (flat["parallax_offset"] if offset_in_field and offset_basis is None
                            else jnp.zeros(total, jnp.float32))
    order = ("cluster_distance", "cluster_size", "member_fraction", field_name, "parallax_offset", "field_offset")
    group = jnp.asarray(np.zeros(w.shape[0], np.int32) if field_group is None else field_group)
    if proper_motion is not None:
        pm_data = tuple(jnp.asarray(proper_motion[k], dtype=jnp.float32)
                        for k in ("proper_motion", "proper_motion_cov", "proper_motion_used"))
        flat.update({k: flat_draws(k) for k in PM_GLOBALS})
        order = order + PM_GLOBALS

    # The mixture's components do not move with the globals unless the offset shifts the
    # field's parallaxes: their quadrature is then done once, not per draw.
    nodes = MIXTURE_FIELD_NODES if mixture else FIELD_NODES  # as the likelihood integrates each
    fixed_field = _field_parts(w, s, field_scales(), nodes) if mixture and not offset_in_field else None

    def per_draw_terms(p):
        """The parallax globals of one draw with the field's parts and per-star log weights,
        the keyword arguments of a draw, and the proper-motion terms."""
        distance, size, fraction, field, offset, field_offset = p[:6]
        if offset_basis is not None:
            offset = basis @ offset
        if mixture:
            scales, log_weights = field_scales(), star_log_weights(field, group)
        else:
            scales, log_weights = field[None], jnp.zeros(1)
        parts = fixed_field if fixed_field is not None else _field_parts(w - field_offset, s, scales, nodes)
        base = (distance, size, fraction, parts, log_weights, offset)
        extra = {"field_offset": field_offset, "scales": scales}
        if proper_motion is None:
            return base, extra, (0.0, 0.0)
        return base, extra, log_pm_marginals(*pm_data, dict(zip(PM_GLOBALS, p[6:])), distance)

    @jax.jit
    def accumulate(params):
        def body(carry, p):
            base, _, pm_terms = per_draw_terms(p)
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
            base, extra, pm_terms = per_draw_terms(p)
            member, r, _ = _star_draw(key, w, s, profile, *base, **extra, pm_terms=pm_terms)
            return member, r
        return jax.lax.map(one, (keys, params))

    member_draws, distance_draws = draw_all(keys, tuple(flat[k][pick] for k in order))
    distance_draws = np.asarray(distance_draws, dtype=np.float64)
    q05, q50, q95 = np.quantile(distance_draws, [0.05, 0.5, 0.95], axis=0)
    return {"membership": membership, "distance": mean, "distance_sd": np.sqrt(var),
            "distance_q05": q05, "distance_q50": q50, "distance_q95": q95,
            "distance_draws": distance_draws, "membership_draws": np.asarray(member_draws, dtype=np.float64)}
