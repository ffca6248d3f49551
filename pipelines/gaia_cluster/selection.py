"""The parallax window's selection term (options ``parallax_min`` / ``parallax_max``).

A catalog cut to ``lo < parallax < hi`` holds only the stars whose measured parallax fell
inside, so each star's likelihood is that of its parallax given that it was kept::

    p(w_i | s_i, globals, kept) = p(w_i | s_i, globals) / P_i
    P_i = member_fraction P_cluster,i + (1 - member_fraction) sum_k w_k P_field,i,k

with ``P = Pr(lo < w < hi)`` for a star of error ``s_i`` drawn from that component. Left out,
the fit treats the window as a lack of stars outside it: on the demo cone cut to 0.6-1.6 mas
the posterior predictive check (replicates through the same window) gave chi^2 134 over 40
bins with the term left out.

The field components' probabilities do not depend on the globals (unless the offset shifts
the field's parallaxes, ``offset=fit``) and are computed once per catalog, on
:data:`SELECTION_NODES` equal-probability nodes of each r^2 exp(-r/L) density (against
adaptive quadrature: 256 nodes erred by 0.001 in probability, 7% of a precise star's 0.015
inside 0.6-1.6 mas under L = 3.2 kpc, the window's edges falling between nodes; the error
falls as 1 / nodes). Where they are integrated per evaluation (``--field edsd`` or
``--offset fit``), :data:`EVALUATION_NODES`. The cluster's is integrated at every evaluation
on :data:`CLUSTER_SELECTION_NODES` equal-probability nodes of its profile. (A normal
approximation of the members' parallaxes, exact for a compact cluster, was tried first: it
is wrong for a cluster as wide as its distance, and NUTS found that mode, a 2.5 kpc wide
"cluster" at 180 pc that the approximation scored as nearly never kept.)
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from .options import _halo_scales

#: Equal-probability nodes per field component for its window probability: computed once,
#: and computed at every evaluation of the density.
SELECTION_NODES = 2048
EVALUATION_NODES = 256
#: Equal-probability nodes of the cluster's profile (per halo component) for its window
#: probability, at every evaluation.
CLUSTER_SELECTION_NODES = 64


@functools.lru_cache(maxsize=None)
def _normal_nodes(num_nodes: int) -> np.ndarray:
    """Mid-quantiles of the standard normal."""
    from scipy.stats import norm  # SciPy here, not at the top: the CLI imports this module at start-up

    return norm.ppf((np.arange(num_nodes) + 0.5) / num_nodes)


@functools.lru_cache(maxsize=None)
def _gamma3_nodes(num_nodes: int) -> np.ndarray:
    """Mid-quantiles of Gamma(3, 1): r / L at equal-probability nodes of r^2 exp(-r/L)."""
    from scipy.stats import gamma  # SciPy here, not at the top: the CLI imports this module at start-up

    return gamma.ppf((np.arange(num_nodes) + 0.5) / num_nodes, 3.0)


def _inside(true_parallax, error, window):
    """Pr(lo < true + N(0, error) < hi)."""
    return ndtr((window[1] - true_parallax) / error) - ndtr((window[0] - true_parallax) / error)


def field_window_probabilities(error, window, scales, shift=0.0, num_nodes: int = SELECTION_NODES):
    """(stars, components): each star's probability to be measured inside ``window`` (lo, hi)
    under each field component of length scale ``scales`` (pc), parallaxes shifted by
    ``shift``."""
    scales = jnp.atleast_1d(jnp.asarray(scales, dtype=jnp.result_type(float)))
    nodes = jnp.asarray(_gamma3_nodes(num_nodes), dtype=scales.dtype)
    error, window = jnp.asarray(error)[:, None], jnp.asarray(window)
    # One component at a time: stars x nodes of memory, not stars x components x nodes.
    return jnp.stack([jnp.mean(_inside(1000.0 / (scales[k] * nodes) + shift, error, window), axis=-1)
                      for k in range(scales.shape[0])], axis=-1)


def cluster_window_probability(error, window, profile, distance, size, offset=0.0,
                                num_nodes: int = CLUSTER_SELECTION_NODES):
    """Per star: the probability that a member of error ``error`` is measured inside ``window``,
    on equal-probability nodes of the profile (each halo component's for the student one)."""
    z = jnp.asarray(_normal_nodes(num_nodes), dtype=jnp.result_type(float))
    if profile == "lognormal":  # log parallax normal about the cluster's, sd size / distance
        true_parallax = 1000.0 / distance * jnp.exp((size / distance) * z)
    else:  # distance normal, sd size x each component's factor; none behind the observer
        factors = jnp.asarray(_halo_scales() if profile == "student" else np.ones(1), dtype=z.dtype)
        r = distance + size * factors[:, None] * z
        true_parallax = jnp.where(r > 0, 1000.0 / jnp.where(r > 0, r, 1.0), jnp.inf)
    # offset: one value, or one per star (an offset field)
    inside = _inside(true_parallax.reshape(-1) + jnp.reshape(offset, (-1, 1)), jnp.asarray(error)[:, None],
                     jnp.asarray(window))
    return jnp.mean(inside, axis=-1)


def log_selection(fraction, cluster_probability, field_weights_per_star, field_probabilities):
    """Per star: log P_i, the log of the mixture's probability to be kept."""
    field = jnp.sum(field_weights_per_star * field_probabilities, axis=-1)
    return jnp.log(fraction * cluster_probability + (1.0 - fraction) * field)
