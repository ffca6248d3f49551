"""Exact quadrature on a grid, for many small problems at once.

A model with at most three continuous scalar parameters (after analytic marginalisation)
on a bounded prior box is integrated exactly enough by a tensor-product trapezoid rule:
the evidence, each parameter's marginal (mean, sd, quantiles, every mode with its mass)
and draws all come from one set of log-density values on the grid nodes. Nothing is
stochastic except the draws, so the answer does not depend on a sampler's luck.

Two ways to get the log densities on the nodes:

- **generic**: any NumPyro model, evaluated node by node with
  ``numpyro.infer.util.log_density`` (vmapped over nodes and problems); the box comes from
  each latent site's support (``interval`` supports) or, for real-valued priors with a
  finite variance, the prior mean +- 10 prior sd.
- **kernel** (the fast path): a :class:`GridKernel` that writes the log-likelihood of a
  whole chunk of problems on a shared grid at once (for instance one complex matrix
  product against a shared basis). It must describe the same model (uniform prior on its
  box); :func:`check_kernel` compares the two at a few random points before a run.

**Resolution check.** Every problem is also integrated on the half grid (every other node
in each dimension). The trapezoid rule converges geometrically for smooth integrands, so
if the half grid already agrees (log-evidence within ``logz_tolerance`` and each mean
within ``mean_tolerance`` posterior sd) the full grid is far more accurate than that; the
difference is recorded as the log-evidence error (a conservative bound). Problems that fail
are *refined*: the grid is zoomed onto the box where the coarse posterior holds mass (nodes
above exp(-30) of the peak, plus one cell), up to ``max_refinements`` times; what still
fails is handed to nested sampling by the batch engine (and counted, and warned about).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.infer.util import log_density

from astroinfer.batch_store import QUANTILES
from astroinfer.engine.errors import OptionError
from astroinfer.engine.model import ModelError

__all__ = [
    "GridKernel", "GRID_DEFAULTS", "default_points", "marginal_summary", "integrate_box",
    "check_kernel", "site_layout", "grid_log_density_fn",
]

GRID_DEFAULTS: dict[str, Any] = {
    "grid_points": None,  # nodes per dimension; None: 2001 (1-D), 201 (2-D), 41 (3-D); odd
    "max_refinements": 2,
    "logz_tolerance": 0.01,
    "mean_tolerance": 0.05,
    "max_modes": 8,
    "mode_min_mass": 1e-3,
}
# With method "grid", sample_batch also takes every batch_nested.DEFAULTS option prefixed with
# ``nested_`` (``nested_fallback``, ``nested_num_live_points``, ...): the nested sampling of
# problems the grid cannot resolve.
MAX_DIM = 3
# Nodes whose log posterior is this far below the peak carry no mass (e^-30 ~ 1e-13).
_ZOOM_LOG_DROP = 30.0


def default_points(ndim: int) -> int:
    return {1: 2001, 2: 201, 3: 41}[ndim]


@dataclass(frozen=True)
class GridKernel:
    """A model's log-likelihood written for a whole chunk of problems on a shared grid.

    names:
        The latent sites, in grid-axis order (each a scalar with a uniform prior).
    bounds:
        ``bounds(shared) -> (low, high)``, each of shape (ndim,): the prior box, the same for
        every problem.
    log_likelihood:
        ``log_likelihood(batched, shared, axes) -> (B, n1, ..., nd)`` where ``batched`` holds
        the chunk's per-problem arrays (leading axis B), ``shared`` the common ones, and
        ``axes`` is a tuple of 1-D node arrays, one per dimension.
    """

    names: tuple[str, ...]
    bounds: Callable[[dict[str, Any]], tuple[Any, Any]]
    log_likelihood: Callable[[dict[str, Any], dict[str, Any], tuple[jax.Array, ...]], jax.Array]


# -- one parameter's marginal ------------------------------------------------------------
def _trapezoid_log_weights(n: int, dtype) -> jax.Array:
    w = jnp.zeros(n, dtype).at[0].set(math.log(0.5)).at[-1].set(math.log(0.5))
    return w


def marginal_summary(x: jax.Array, log_mass: jax.Array, quantiles=QUANTILES, max_modes: int = 8,
                     mode_min_mass: float = 1e-3) -> dict[str, jax.Array]:
    """Mean, sd, quantiles and modes of a 1-D marginal given on nodes.

    ``x`` (B, n): node positions per problem (increasing); ``log_mass`` (B, n): log of the
    posterior mass at each node (quadrature weight included; need not be normalised).
    A mode is a local maximum of the node masses; its basin runs to the nearest local
    minimum on each side (a minimum is shared half and half), so mode masses add to one.
    The ``max_modes`` highest peaks are kept, heaviest first; ``num_modes`` counts those
    above ``mode_min_mass``.
    """
    B, n = log_mass.shape
    w = jax.nn.softmax(log_mass, axis=-1)
    mean = jnp.sum(w * x, axis=-1)
    sd = jnp.sqrt(jnp.maximum(jnp.sum(w * (x - mean[:, None]) ** 2, axis=-1), 0.0))
    cdf = jnp.cumsum(w, axis=-1)
    # Quantiles by linear interpolation of the node CDF (mass at a node spread over its cell).
    mid = cdf - 0.5 * w
    q = jnp.asarray(quantiles, x.dtype)
    quant = jax.vmap(lambda m, xs: jnp.interp(q, m, xs))(mid, x)

    lm = log_mass
    left = jnp.concatenate([jnp.full((B, 1), -jnp.inf, lm.dtype), lm[:, :-1]], axis=1)
    right = jnp.concatenate([lm[:, 1:], jnp.full((B, 1), -jnp.inf, lm.dtype)], axis=1)
    is_max = (lm > left) & (lm >= right)
    inner = jnp.arange(n)
    is_min = (lm <= left) & (lm < right) & (inner > 0) & (inner < n - 1)
    # The k highest peaks (a cheap top_k), then each one's basin: the nearest minimum on
    # either side, found by a masked max/min over the row (no cumulative max over all nodes).
    k = min(max_modes, n)
    _, peak = jax.lax.top_k(jnp.where(is_max, lm, -jnp.inf), k)  # (B, k)
    valid = jnp.take_along_axis(is_max, peak, axis=1)
    min_pos = jnp.where(is_min, inner, -1)[:, None, :]  # (B, 1, n)
    left_min = jnp.max(jnp.where(min_pos < peak[:, :, None], min_pos, -1), axis=2)
    min_pos_r = jnp.where(is_min, inner, n)[:, None, :]
    right_min = jnp.min(jnp.where(min_pos_r > peak[:, :, None], min_pos_r, n), axis=2)

    def basin_sum(values):
        c = jnp.concatenate([jnp.zeros((B, 1), values.dtype), jnp.cumsum(values, axis=1)], axis=1)
        inside = jnp.take_along_axis(c, right_min, axis=1) - jnp.take_along_axis(c, left_min + 1, axis=1)
        half_l = jnp.where(left_min >= 0, 0.5 * jnp.take_along_axis(values, jnp.maximum(left_min, 0), axis=1), 0.0)
        half_r = jnp.where(right_min < n, 0.5 * jnp.take_along_axis(values, jnp.minimum(right_min, n - 1), axis=1), 0.0)
        return inside + half_l + half_r

    mass = jnp.where(valid, basin_sum(w), 0.0)
    xc = x - mean[:, None]  # centred: the second moment keeps its precision in float32
    first = basin_sum(w * xc)
    second = basin_sum(w * xc * xc)
    order = jnp.argsort(-mass, axis=1)  # heaviest first
    sel = lambda a: jnp.take_along_axis(a, order, axis=1)  # noqa: E731
    m_mass, first, second, peak, valid = sel(mass), sel(first), sel(second), sel(peak), sel(valid)
    safe = jnp.where(valid, m_mass, 1.0)
    m_mean_c = first / safe
    m_mean = jnp.where(valid, m_mean_c + mean[:, None], jnp.nan)
    m_sd = jnp.where(valid, jnp.sqrt(jnp.maximum(second / safe - m_mean_c**2, 0.0)), jnp.nan)
    m_loc = jnp.where(valid, jnp.take_along_axis(x, peak, axis=1), jnp.nan)
    return {
        "mean": mean, "sd": sd, "quantiles": quant,
        "mode_location": m_loc, "mode_mass": m_mass, "mode_mean": m_mean, "mode_sd": m_sd,
        "num_modes": jnp.sum(m_mass >= mode_min_mass, axis=1).astype(jnp.int32),
    }


# -- a whole box ---------------------------------------------------------------------------
def integrate_box(log_density: jax.Array, axes: tuple[jax.Array, ...], *, max_modes: int,
                  mode_min_mass: float) -> dict[str, Any]:
    """Evidence, resolution check and marginals from log densities on a tensor grid.

    ``log_density`` (B, n1, ..., nd): log prior density + log likelihood at the nodes;
    ``axes``: d arrays of shape (B, n_j) (per-problem node positions, evenly spaced).
    Returns log_evidence, the half-grid log-evidence and means, and per-dimension
    :func:`marginal_summary` results under ``marginals``.
    """
    d = len(axes)
    B = log_density.shape[0]
    lw = log_density
    lw_half = log_density[(slice(None),) + (slice(None, None, 2),) * d]
    for j, ax in enumerate(axes):
        n = ax.shape[1]
        h = (ax[:, -1] - ax[:, 0]) / (n - 1)
        shape = [B] + [1] * d
        shape[1 + j] = n
        lw = lw + (_trapezoid_log_weights(n, lw.dtype)[None, :] + jnp.log(h)[:, None]).reshape(shape)
        nh = (n + 1) // 2
        shape[1 + j] = nh
        lw_half = lw_half + (_trapezoid_log_weights(nh, lw.dtype)[None, :] + jnp.log(2 * h)[:, None]).reshape(shape)
    flat = lw.reshape(B, -1)
    log_z = jax.scipy.special.logsumexp(flat, axis=1)
    log_z_half = jax.scipy.special.logsumexp(lw_half.reshape(B, -1), axis=1)
    marginals, half_means = [], []
    for j, ax in enumerate(axes):
        others = tuple(1 + i for i in range(d) if i != j)
        lm = jax.scipy.special.logsumexp(lw, axis=others) if others else lw
        lm_half = jax.scipy.special.logsumexp(lw_half, axis=others) if others else lw_half
        marginals.append(marginal_summary(ax, lm, max_modes=max_modes, mode_min_mass=mode_min_mass))
        wh = jax.nn.softmax(lm_half, axis=-1)
        half_means.append(jnp.sum(wh * ax[:, ::2], axis=-1))
    return {"log_evidence": log_z, "log_evidence_half": log_z_half, "marginals": marginals,
            "half_means": half_means, "log_node_mass": flat - log_z[:, None]}


def resolved_mask(box: dict[str, Any], logz_tolerance: float, mean_tolerance: float) -> jax.Array:
    ok = jnp.abs(box["log_evidence"] - box["log_evidence_half"]) <= logz_tolerance
    ok &= jnp.isfinite(box["log_evidence"])
    for marg, half in zip(box["marginals"], box["half_means"]):
        ok &= jnp.abs(marg["mean"] - half) <= mean_tolerance * jnp.maximum(marg["sd"], 1e-30)
    return ok


def zoom_axes(box: dict[str, Any], axes: tuple[jax.Array, ...], shape) -> tuple[jax.Array, ...]:
    """Per-problem boxes around the nodes that hold mass, one cell wider on each side."""
    B = box["log_node_mass"].shape[0]
    lnm = box["log_node_mass"].reshape((B,) + tuple(shape))
    peak = jnp.max(box["log_node_mass"], axis=1)
    keep = lnm >= (peak - _ZOOM_LOG_DROP).reshape((B,) + (1,) * len(shape))
    new_axes = []
    for j, ax in enumerate(axes):
        others = tuple(1 + i for i in range(len(shape)) if i != j)
        any_j = jnp.any(keep, axis=others) if others else keep
        n = ax.shape[1]
        idx = jnp.arange(n)
        first = jnp.min(jnp.where(any_j, idx, n), axis=1)
        last = jnp.max(jnp.where(any_j, idx, -1), axis=1)
        lo_i = jnp.clip(first - 1, 0, n - 1)
        hi_i = jnp.clip(last + 1, 0, n - 1)
        lo = jnp.take_along_axis(ax, lo_i[:, None], axis=1)[:, 0]
        hi = jnp.take_along_axis(ax, hi_i[:, None], axis=1)[:, 0]
        u = jnp.linspace(0.0, 1.0, n, dtype=ax.dtype)
        new_axes.append(lo[:, None] + (hi - lo)[:, None] * u[None, :])
    return tuple(new_axes)


# -- generic models ------------------------------------------------------------------------
@dataclass(frozen=True)
class SiteLayout:
    names: tuple[str, ...]


def site_layout(model: Callable, data0: dict[str, Any]) -> SiteLayout:
    """The latent sites of ``model(**data0)``: at most three scalars, continuous."""

    trace = handlers.trace(handlers.seed(model, 0)).get_trace(**data0)
    names = []
    for name, site in trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if getattr(site["fn"], "is_discrete", False):
            raise ModelError(f"model site '{name}' is discrete; method 'grid' integrates continuous parameters only")
        if jnp.shape(site["value"]) != ():
            raise ModelError(f"model site '{name}' has shape {jnp.shape(site['value'])}; method 'grid' needs "
                             "scalar parameters (at most 3)")
        names.append(name)
    if not names:
        raise ModelError("the model has no latent sample sites to infer")
    if len(names) > MAX_DIM:
        raise ModelError(f"method 'grid' integrates at most {MAX_DIM} parameters; the model has {len(names)} "
                         f"({', '.join(names)}); use method 'nested'")
    return SiteLayout(tuple(names))


def _site_bounds(model: Callable, names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[jax.Array, jax.Array]]:
    """``data -> (low, high)`` of the prior box of one problem (traceable, so it vmaps)."""

    def bounds(data):
        trace = handlers.trace(handlers.seed(model, 0)).get_trace(**data)
        lows, highs = [], []
        for name in names:
            fn = trace[name]["fn"]
            support = fn.support
            base = getattr(support, "base_constraint", support)
            if isinstance(base, (constraints._Interval,)):
                lows.append(jnp.asarray(base.lower_bound, jnp.float32))
                highs.append(jnp.asarray(base.upper_bound, jnp.float32))
            elif support is constraints.real:
                mean, var = fn.mean, fn.variance
                lows.append(jnp.asarray(mean - 10 * jnp.sqrt(var), jnp.float32))
                highs.append(jnp.asarray(mean + 10 * jnp.sqrt(var), jnp.float32))
            else:
                raise ModelError(f"model site '{name}' has support {support}; method 'grid' needs a bounded "
                                 "(interval) prior or a real-valued prior with finite variance")
        return jnp.stack(lows), jnp.stack(highs)

    return bounds


def grid_log_density_fn(model: Callable, names: tuple[str, ...]) -> Callable:
    """``(data, nodes (G, d)) -> (G,)`` log joint density (prior + likelihood) of one problem."""

    def one(data, point):
        params = {name: point[j] for j, name in enumerate(names)}
        return log_density(model, (), data, params)[0]

    return jax.vmap(one, in_axes=(None, 0))


def check_grid_options(options: dict[str, Any]) -> None:
    n = options.get("grid_points")
    if n is not None and (n < 5 or n % 2 == 0):
        raise OptionError(f"option grid_points must be an odd integer >= 5 (the half grid shares its ends), got {n}")


def check_kernel(model: Callable, kernel: GridKernel, batched0: dict[str, Any], shared: dict[str, Any],
                 names: tuple[str, ...], seed: int = 0, tolerance: float = 1e-2) -> None:
    """Refuse a kernel that does not reproduce ``model``'s log density (up to the uniform prior)."""
    if tuple(kernel.names) != tuple(names):
        raise ModelError(f"grid kernel parameters {kernel.names} differ from the model's latent sites {names}")
    low, high = (np.asarray(b, np.float64) for b in kernel.bounds(shared))
    rng = np.random.default_rng(seed)
    pts = low + (high - low) * rng.uniform(size=(3, len(names)))
    data0 = {**shared, **batched0}
    model_ld = np.asarray(grid_log_density_fn(model, names)(data0, jnp.asarray(pts, jnp.float32)))
    batched1 = {k: jnp.asarray(v)[None] for k, v in batched0.items()}
    log_prior = -np.sum(np.log(high - low))
    values = []
    for p in pts:
        axes = tuple(jnp.asarray([p[j]], jnp.float32) for j in range(len(names)))
        values.append(float(np.asarray(kernel.log_likelihood(batched1, shared, axes)).reshape(-1)[0]) + log_prior)
    diff = np.max(np.abs(np.asarray(values) - model_ld))
    # float32 sums of tens of terms: agreement to ~1e-4 relative is all that can be asked.
    if not np.isfinite(diff) or diff > tolerance * max(1.0, 0.1 * np.max(np.abs(model_ld))):
        raise ModelError(f"grid kernel disagrees with the model's log density by {diff:.3g} at random points; "
                         "it must describe the same model with a uniform prior on its box")
