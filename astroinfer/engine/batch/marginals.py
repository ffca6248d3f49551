"""Weighted 1-D marginals of the batched nested sampler's points, inside compiled code.

Mean, sd, quantiles (from a fine weighted histogram: no sort of the many dead points) and
modes (basins of a smoothed weighted histogram between its significant minima, each with
its mass, mean and sd from the points in it), static-shaped so a whole sub-batch of
problems is summarised in the sampler's compiled function.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from astroinfer.batch_store import QUANTILES

__all__ = ["weighted_marginal", "sample_modes", "significant_minima", "MODE_DIP"]

_HIST_BINS = 201
_FINE = 10  # fine histogram bins per mode-histogram bin (quantiles)


def weighted_marginal(x, w, max_modes: int, min_mass: float) -> dict[str, Any]:
    """Weighted mean, sd, quantiles and modes of one coordinate's points ``x``."""
    mean = jnp.sum(w * x)
    sd = jnp.sqrt(jnp.maximum(jnp.sum(w * (x - mean) ** 2), 0.0))
    # One fine weighted histogram over the range holding the mass (weights above 1e-8 of
    # the largest): quantiles by linear interpolation of its CDF (no sort of the many
    # dead points, which cost more than the sampling), and, summed ten bins at a time
    # and smoothed over about two bins, the modes: basins between significant minima.
    keep = w > 1e-8 * jnp.max(w)
    lo = jnp.min(jnp.where(keep, x, jnp.inf))
    hi = jnp.max(jnp.where(keep, x, -jnp.inf))
    width = jnp.maximum(hi - lo, 1e-12 * jnp.maximum(jnp.abs(lo), 1.0))
    edge_lo, edge_hi = lo - 0.02 * width, hi + 0.02 * width
    fine_bins = _HIST_BINS * _FINE
    bf = jnp.clip(((x - edge_lo) / (edge_hi - edge_lo) * fine_bins).astype(jnp.int32), 0, fine_bins - 1)
    fine = jnp.zeros(fine_bins, jnp.float32).at[bf].add(w)
    cdf = jnp.concatenate([jnp.zeros(1, jnp.float32), jnp.cumsum(fine)])
    edges = edge_lo + jnp.arange(fine_bins + 1, dtype=jnp.float32) * ((edge_hi - edge_lo) / fine_bins)
    quant = jnp.interp(jnp.asarray(QUANTILES, jnp.float32) * cdf[-1], cdf, edges)
    b = bf // _FINE
    hist = fine.reshape(_HIST_BINS, _FINE).sum(axis=1)
    kern = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    smooth = jnp.convolve(hist, jnp.asarray(kern / kern.sum(), jnp.float32), mode="same")
    centres = edge_lo + (jnp.arange(_HIST_BINS, dtype=jnp.float32) + 0.5) * (edge_hi - edge_lo) / _HIST_BINS
    out = dict(sample_modes(x, w, b, smooth, centres, max_modes, min_mass))
    out.update(mean=mean, sd=sd, quantiles=quant)
    return out


#: A local minimum of the smoothed marginal separates two modes only if it lies below this
#: fraction of the lower of the two peaks it separates (sampling noise makes shallow dips).
MODE_DIP = 0.7


def significant_minima(density):
    """Mask of the local minima of a 1-D density (n,) that separate two peaks: the highest
    point between the minimum and the nearest lower point, on each side, is at least
    ``1 / MODE_DIP`` times the minimum (a persistence test; O(n^2), n is small)."""
    n = density.shape[0]
    d = density
    idx = jnp.arange(n)
    left_val = jnp.concatenate([jnp.full((1,), jnp.inf, d.dtype), d[:-1]])
    right_val = jnp.concatenate([d[1:], jnp.full((1,), jnp.inf, d.dtype)])
    is_min = (d <= left_val) & (d < right_val) & (idx > 0) & (idx < n - 1)
    lower = d[None, :] < d[:, None]  # [i, j]: point j lies below minimum candidate i
    before = idx[None, :] < idx[:, None]
    left_stop = jnp.max(jnp.where(lower & before, idx[None, :], -1), axis=1)
    right_stop = jnp.min(jnp.where(lower & ~before & (idx[None, :] != idx[:, None]), idx[None, :], n), axis=1)
    in_left = (idx[None, :] > left_stop[:, None]) & before
    in_right = (idx[None, :] < right_stop[:, None]) & (idx[None, :] > idx[:, None])
    peak_left = jnp.max(jnp.where(in_left, d[None, :], 0.0), axis=1)
    peak_right = jnp.max(jnp.where(in_right, d[None, :], 0.0), axis=1)
    return is_min & (d < MODE_DIP * jnp.minimum(peak_left, peak_right))


def sample_modes(x, w, bins, smooth, centres, max_modes: int, min_mass: float) -> dict[str, Any]:
    """Modes of a weighted 1-D sample: basins of the smoothed histogram between its
    significant minima; each basin's mass, mean and sd from the samples in it, its
    location at the basin's highest bin; the ``max_modes`` heaviest, heaviest first."""
    nb = smooth.shape[0]
    cut = significant_minima(smooth)
    segment = jnp.cumsum(cut.astype(jnp.int32))  # basin of each bin (a minimum starts the next)
    seg_of = segment[bins]
    mass = jax.ops.segment_sum(w, seg_of, num_segments=nb)
    mean_all = jnp.sum(w * x)
    xc = x - mean_all
    first = jax.ops.segment_sum(w * xc, seg_of, num_segments=nb)
    second = jax.ops.segment_sum(w * xc * xc, seg_of, num_segments=nb)
    peak_val = jax.ops.segment_max(smooth, segment, num_segments=nb)
    is_peak = smooth >= peak_val[segment]
    # First bin reaching its basin's maximum: the basin's location.
    peak_bin = jax.ops.segment_min(jnp.where(is_peak, jnp.arange(nb), nb), segment, num_segments=nb)
    k = min(max_modes, nb)
    top_mass, top = jax.lax.top_k(mass, k)
    valid = top_mass > 0
    safe = jnp.where(valid, top_mass, 1.0)
    m_mean_c = first[top] / safe
    return {
        "mode_location": jnp.where(valid, centres[jnp.clip(peak_bin[top], 0, nb - 1)], jnp.nan),
        "mode_mass": jnp.where(valid, top_mass, 0.0),
        "mode_mean": jnp.where(valid, m_mean_c + mean_all, jnp.nan),
        "mode_sd": jnp.where(valid, jnp.sqrt(jnp.maximum(second[top] / safe - m_mean_c**2, 0.0)), jnp.nan),
        "num_modes": jnp.sum(valid & (top_mass >= min_mass)).astype(jnp.int32),
    }
