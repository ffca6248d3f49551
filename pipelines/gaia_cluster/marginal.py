"""The marginal likelihood of each star, its distance integrated out by adaptive Gauss-Hermite
quadrature (:func:`log_component_marginals`), and the field term tabulated as Chebyshev
series per star (:func:`with_field_table`).

In ``u = log(parallax / mas)`` the integrand of each component is close to a Gaussian, so
the rule is centred at its mode (a few Gauss-Newton steps from a prior/likelihood guess)
with the Laplace width: 4 nodes for the cluster term and 16 for the field term.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from .options import CLUSTER_NODES, FIELD_NODES, OFFSET_PRIOR_SD, _halo_scales


# -- the marginal likelihood by adaptive Gauss-Hermite quadrature ---------------------
def _hermgauss(n: int):
    nodes, weights = np.polynomial.hermite.hermgauss(n)
    return nodes, np.log(weights) + nodes**2


def _log_prior_v(v, profile: str, distance, size):
    """Cluster profile (lognormal or gaussian) as a density in ``v = u - log(1000 / distance)``,
    the log parallax relative to the cluster's (Jacobian included), its first derivative, and
    a positive curvature for Gauss-Newton.

    Relative, because a compact cluster's profile is narrower in u than float32 resolves
    around u itself (size / distance of 1e-7 or less): written in u, the profile's nodes
    collapse onto one value and the integral comes out wrong by tens of nats."""
    if profile == "lognormal":
        tau = size / distance
        z = v / tau
        return -0.5 * z**2 - jnp.log(tau) - 0.5 * math.log(2 * math.pi), -z / tau, 1.0 / tau**2 + 0 * v
    r = distance * jnp.exp(-v)
    z = distance * jnp.expm1(-v) / size  # (r - distance) / size without cancellation
    logp = -0.5 * z**2 - jnp.log(size) - 0.5 * math.log(2 * math.pi) + jnp.log(distance) - v  # log r = log D - v
    return logp, z * r / size - 1.0, (r / size) ** 2


def _log_field_u(u, scale):
    """Exponentially decreasing space density r^2 exp(-r/L) / (2 L^3) as a density in u."""
    r = 1000.0 * jnp.exp(-u)
    logp = 3.0 * (math.log(1000.0) - u) - r / scale - 3.0 * jnp.log(scale) - math.log(2.0)
    return logp, r / scale - 3.0, r / scale


def _log_like_u(u, parallax, error, shift=0.0):
    """Gaussian parallax likelihood at ``u + shift`` (log parallax), with its first derivative
    and Gauss-Newton curvature in u."""
    w = jnp.exp(u + shift)
    resid = (parallax - w) / error
    logl = -0.5 * resid**2 - jnp.log(error) - 0.5 * math.log(2 * math.pi)
    return logl, resid * w / error, (w / error) ** 2


def _newton_centre(prior_fn, u0, parallax, error, steps: int, shift=0.0):
    """Gauss-Newton steps towards the mode of likelihood x prior in u (the likelihood taken
    at ``u + shift``); returns (centre, width).

    Both are returned under ``stop_gradient``. Where the nodes sit does not change the
    integral (only the quadrature error, < 0.003 nat per catalog), so gradients taken with
    the nodes held still differ from the exact ones by about 1e-4 relative. That halves the
    cost of a gradient (no back-propagation through the Newton steps). The sampler stays
    exact: the potential's value is untouched, and leapfrog steps with a slightly
    non-conservative force are still reversible and volume-preserving, so the accept
    step corrects for it."""

    def curvature_and_step(u):
        _, dl, hl = _log_like_u(u, parallax, error, shift)
        _, dp, hp = prior_fn(u)
        h = hl + hp
        return h, jnp.clip((dl + dp) / h, -1.0, 1.0)

    u = u0
    for _ in range(steps):  # a few steps, unrolled: a handful of elementwise operations each
        _, step = curvature_and_step(u)
        u = u + step
    h, _ = curvature_and_step(u)
    return jax.lax.stop_gradient(u), jax.lax.stop_gradient(1.0 / jnp.sqrt(h))


def _gh_terms(log_integrand, centre, width, num_nodes: int):
    """Gauss-Hermite nodes ``centre + sqrt(2) width t_k`` (last axis) and the log terms whose
    logsumexp is the log integral over u of exp(log_integrand(u))."""
    nodes, log_weights = _hermgauss(num_nodes)
    u = centre[..., None] + math.sqrt(2.0) * width[..., None] * nodes
    terms = log_weights + log_integrand(u) + jnp.log(math.sqrt(2.0) * width)[..., None]
    return u, terms


class _Terms:
    """One star-by-node quadrature of both components for one set of globals.

    ``cluster_v``/``cluster_terms`` (stars, nodes): nodes in ``v = u - cluster_shift`` (log
    parallax relative to the cluster's, see :func:`_log_prior_v`) and log terms of the
    cluster integral (for the heavy-tailed profile the components' nodes side by side, each
    with its log weight); ``field_u``/``field_terms`` the same for the field, in u, of
    ``field_parallax`` (default ``parallax``; the raw parallaxes where the offset applies to
    the cluster only).
    """

    def __init__(self, parallax, error, profile, distance, size, scale, cluster_nodes, field_nodes,
                 field_parallax=None):
        w, s = parallax, error
        base = "gaussian" if profile == "student" else profile
        if profile == "student":
            sizes = size * jnp.asarray(_halo_scales(), dtype=jnp.result_type(float))[:, None]  # (K, 1)
        else:
            sizes = size
        self.sizes = sizes
        shift = jnp.log(1000.0 / distance)
        self.cluster_shift = shift

        def cluster_prior(v, sz=sizes):
            return _log_prior_v(v, base, distance, sz)

        def field_prior(u):
            return _log_field_u(u, scale)

        self.cluster_prior = cluster_prior
        self.field_prior = field_prior
        cc, cw = _newton_centre(cluster_prior, 0 * w, w, s, steps=3, shift=shift)
        self.cluster_centre, self.cluster_width = cc, cw

        def like(v):
            return _log_like_u(v, w[..., None], s[..., None], shift)[0]

        cv, ct = _gh_terms(lambda v: like(v) + cluster_prior(v, sizes[..., None] if profile == "student"
                                                             else sizes)[0], cc, cw, cluster_nodes)
        if profile == "student":  # (K, N, n) -> (N, K n), each component weighted 1/K
            k = cv.shape[0]
            cv = jnp.moveaxis(cv, 0, 1).reshape(w.shape[0], -1)
            ct = jnp.moveaxis(ct - math.log(k), 0, 1).reshape(w.shape[0], -1)
        self.cluster_v, self.cluster_terms = cv, ct
        if field_nodes:
            self.field_u, self.field_terms, self.field_centre, self.field_width = _field_quadrature(
                w if field_parallax is None else field_parallax, s, scale, field_nodes)


def _field_quadrature(w, s, scale, num_nodes: int):
    """Nodes in u (stars, nodes) and log terms of the field integral
    ``int N(w | e^u, s) p_field(u; scale) du`` (its logsumexp over the last axis), and the
    rule's centre and width per star. ``w``, ``s`` and ``scale`` broadcast together (stars
    by mixture components with ``w[:, None]`` and a row of scales); the nodes add an axis."""

    def field_prior(u):
        return _log_field_u(u, scale)

    def field_prior_at_nodes(u):
        return _log_field_u(u, jnp.expand_dims(jnp.asarray(scale), -1))

    # Start from the precision-weighted mean of the prior mode (r = 3L, curvature 3) and the
    # measured parallax (width error/parallax in u) when it is positive.
    u_prior = jnp.log(1000.0 / (3.0 * scale))
    snr2 = jnp.where(w > 0, (w / s) ** 2, 0.0)
    u_meas = jnp.log(jnp.where(w > 0, w, 1.0))
    centre, width = _newton_centre(field_prior, (3.0 * u_prior + snr2 * u_meas) / (3.0 + snr2), w, s, steps=3)
    u, terms = _gh_terms(lambda u: _log_like_u(u, w[..., None], s[..., None])[0] + field_prior_at_nodes(u)[0],
                         centre, width, num_nodes)
    return u, terms, centre, width


def log_cluster_marginals(parallax, error, *, profile="lognormal", distance, size, offset=0.0,
                          cluster_nodes: int = CLUSTER_NODES):
    """Per star: log of the cluster marginal likelihood ``log int N(w | e^u + offset, s) p_c(u) du``."""
    t = _Terms(parallax - offset, error, profile, distance, size, 1.0, cluster_nodes, 0)
    return logsumexp(t.cluster_terms, axis=-1)


def log_component_marginals(parallax, error, *, profile="lognormal", distance, size, scale, offset=0.0,
                            offset_in_field: bool = True, cluster_nodes: int = CLUSTER_NODES,
                            field_nodes: int = FIELD_NODES, field_table=None, field_table_domain=None):
    """Per star: log of the cluster and field marginal likelihoods
    ``log int N(w | e^u + offset, s) p_c(u) du`` and the same with the field density (its
    parallaxes shifted by ``offset`` too unless ``offset_in_field`` is False).

    With ``field_table`` (from :func:`field_table`) the field term is read from the table
    where the globals lie inside its domain, and computed by quadrature elsewhere."""
    w = parallax - offset
    t = _Terms(w, error, profile, distance, size, scale, cluster_nodes, field_nodes if field_table is None else 0,
               field_parallax=None if offset_in_field else parallax)
    log_c = logsumexp(t.cluster_terms, axis=-1)
    if field_table is None:
        return log_c, logsumexp(t.field_terms, axis=-1)
    if not offset_in_field:
        offset = 0.0

    # Rematerialised: without it the gradient keeps (zero-filled) intermediates of both
    # branches, which costs a quarter of the gradient when the table branch is taken.
    @jax.checkpoint
    def by_quadrature(log_scale, offset):
        return logsumexp(_field_quadrature(parallax - offset, error, jnp.exp(log_scale), field_nodes)[1], axis=-1)

    def by_table(log_scale, offset):
        return _field_from_table(field_table, field_table_domain, log_scale, offset)

    log_scale = jnp.log(scale)
    offset = jnp.asarray(offset, dtype=log_scale.dtype)
    inside = _inside_field_table(field_table_domain, log_scale, offset)
    # lax.cond runs one branch (on CPU, unbatched): the table where it holds, else the
    # quadrature it was made from, so the potential is defined everywhere.
    return log_c, jax.lax.cond(inside, by_table, by_quadrature, log_scale, offset)


# -- the field term, tabulated --------------------------------------------------------
# A star's field term depends on the globals only through field_scale and parallax_offset,
# so it is tabulated once per catalog: a Chebyshev series in log field_scale over +-0.4
# around a pilot estimate (the posterior sd is about 0.015 on M67), times one in the offset
# over +-5 prior sds when it is fitted. Summing the series costs a small fraction of the 16
# quadrature nodes per star it replaces (value+gradient of the M67 likelihood, 4300
# stars: 0.45 -> 0.20 ms with the offset fixed). The series reproduce the quadrature to
# about 2e-5 nat per star, below float32's rounding of the catalog sum (checked against a
# float64 quadrature in tests/test_gaia_cluster.py).
FIELD_TABLE_HALF_WIDTH = 0.4  # in log field_scale
FIELD_TABLE_DEGREE = 12
OFFSET_TABLE_DEGREE = 6
OFFSET_TABLE_HALF_WIDTH = 5 * OFFSET_PRIOR_SD


def _chebyshev_basis(z, degree: int):
    """T_0(z) .. T_{degree-1}(z), stacked on the first axis."""
    terms = [jnp.ones_like(z), z]
    for _ in range(2, degree):
        terms.append(2.0 * z * terms[-1] - terms[-2])
    return jnp.stack(terms[:degree])


def _chebyshev_nodes(degree: int) -> np.ndarray:
    return np.cos(np.pi * (np.arange(degree) + 0.5) / degree)


def _chebyshev_coefficients(values: np.ndarray, axis: int) -> np.ndarray:
    """Coefficients along ``axis`` of the series through values at :func:`_chebyshev_nodes`."""
    n = values.shape[axis]
    theta = np.pi * (np.arange(n) + 0.5) / n
    basis = np.cos(np.arange(n)[:, None] * theta[None, :]) * (2.0 / n)
    basis[0] /= 2.0
    return np.moveaxis(np.tensordot(basis, values, axes=([1], [axis])), 0, axis)


def _inside_field_table(domain, log_scale, offset):
    return (jnp.abs(log_scale - domain[0]) <= domain[1]) & (jnp.abs(offset) <= domain[2])


def _field_from_table(table, domain, log_scale, offset):
    """Every star's log field term from the series (valid inside the table's domain)."""
    degree, offset_degree, _ = table.shape
    # Products and sums rather than matrix products: XLA's CPU dot is 3x slower on these
    # thin shapes (stars long, degree short).
    if offset_degree > 1:
        coef = jnp.sum(_chebyshev_basis(offset / domain[2], offset_degree)[:, None] * table, axis=1)
    else:
        coef = table[:, 0]
    return jnp.sum(_chebyshev_basis((log_scale - domain[0]) / domain[1], degree)[:, None] * coef, axis=0)


@functools.cache
def _field_rows():
    """Compiled: log field term by quadrature, (len(log_scales), stars), one row per
    (log field_scale, offset) pair."""

    @jax.jit
    def rows(w, s, log_scales, offsets):
        def one(args):
            log_scale, offset = args
            return logsumexp(_field_quadrature(w - offset, s, jnp.exp(log_scale), FIELD_NODES)[1], axis=-1)
        return jax.lax.map(one, (log_scales, offsets), batch_size=16)

    return rows


@functools.cache
def _pilot_scores():
    """Compiled: for each log field_scale, the best log likelihood over member fractions
    with the cluster at the given distance and size (lognormal profile)."""

    @jax.jit
    def scores(w, s, log_scales, distance, size):
        log_f = _field_rows()(w, s, log_scales, jnp.zeros_like(log_scales))
        log_c = logsumexp(_Terms(w, s, "lognormal", distance, size, 1.0, CLUSTER_NODES, 0).cluster_terms, axis=-1)
        fractions = jnp.linspace(0.02, 0.98, 25)[:, None, None]
        like = jnp.logaddexp(jnp.log(fractions) + log_c, jnp.log1p(-fractions) + log_f)
        return like.sum(-1).max(0)

    return scores


def _as_model_floats(*arrays):
    dtype = jnp.result_type(float)
    return [jnp.asarray(a, dtype) for a in arrays]


def pilot_field_scale(parallax, parallax_error, *, distance_centre=1000.0, size_centre=10.0, field_centre=1000.0,
                      field_width=1.0, **_) -> float:
    """A rough field_scale (pc) to centre the field table on: the best of a grid over
    field_scale (prior +-4 sd) and member_fraction, the cluster held at its prior centre.
    A poor pilot costs speed, not accuracy: outside the table the model uses quadrature."""
    log_scales = np.log(field_centre) + field_width * np.linspace(-4.0, 4.0, 49)
    like = np.asarray(_pilot_scores()(*_as_model_floats(parallax, parallax_error, log_scales, distance_centre,
                                                         size_centre)), dtype=np.float64)
    score = like - 0.5 * ((log_scales - np.log(field_centre)) / field_width) ** 2
    return float(np.exp(log_scales[np.argmax(score)]))


def field_table(parallax, error, *, scale_centre: float, fit_offset: bool) -> dict[str, np.ndarray]:
    """Model data entries: ``field_table`` (degree, offset degree, stars), every star's field
    term as Chebyshev coefficients made from the quadrature the model uses, and
    ``field_table_domain`` [centre log field_scale, its half width, largest |offset|]."""
    degree, offset_degree = FIELD_TABLE_DEGREE, OFFSET_TABLE_DEGREE if fit_offset else 1
    centre, half_width = math.log(scale_centre), FIELD_TABLE_HALF_WIDTH
    offset_max = OFFSET_TABLE_HALF_WIDTH if fit_offset else 0.0
    log_scales = centre + half_width * _chebyshev_nodes(degree)
    offsets = offset_max * _chebyshev_nodes(offset_degree) if fit_offset else np.zeros(1)
    grid_scales, grid_offsets = np.broadcast_arrays(log_scales[:, None], offsets[None, :])
    values = np.asarray(_field_rows()(*_as_model_floats(parallax, error, grid_scales.ravel(), grid_offsets.ravel())),
                        dtype=np.float64)
    coef = _chebyshev_coefficients(values.reshape(degree, offset_degree, -1), axis=0)
    if fit_offset:
        coef = _chebyshev_coefficients(coef, axis=1)
    return {"field_table": coef.astype(np.float32),
            "field_table_domain": np.array([centre, half_width, offset_max], dtype=np.float32)}


def with_field_table(data: dict[str, Any]) -> dict[str, Any]:
    """The model's data (:func:`load`'s ``data``) with the field table added, centred by
    :func:`pilot_field_scale`."""
    centre = pilot_field_scale(**data)
    field_sees_offset = bool(data.get("fit_offset", True)) and bool(data.get("offset_in_field", True))
    return {**data, **field_table(data["parallax"], data["parallax_error"], scale_centre=centre,
                                  fit_offset=field_sees_offset)}
