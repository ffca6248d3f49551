"""spectral-lines: ``--continuum auto``, a polynomial continuum whose degree is chosen by evidence.

A continuum that a straight line does not fit (a curved or wavy one) makes ``--lines auto``
invent lines: each bump the polynomial misses is a "line" that raises the evidence by
hundreds of nats. So the degree is a parameter too. :func:`model` is the K-line model of
:mod:`.numpyro_model` with the Legendre coefficients integrated out analytically
(:mod:`.legendre`) and the degree ``d`` in 0..D a discrete parameter with a uniform prior,
written as ``continuum_degree_u ~ Uniform(0, D + 1)``, ``d = floor(continuum_degree_u)``:
nested sampling then integrates over the degree as over any other parameter (its slice moves
need no gradient, and a density that is constant between jumps is still a density), so one
run per K gives ``Z(K) = mean over d of Z(K, d)``, and its draws give the degree's posterior.
The coefficients cost nothing in dimension: the sampler sees the lines (3 parameters each)
and the degree, and one compilation serves every degree and every spectrum of one size.

The chosen K's most probable degree then makes the continuum of the fit that reports the
lines (``continuum="poly"`` at that degree, coefficients sampled as usual).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from .legendre import (
    MarginalBasis, integrated_log_likelihood, integrated_log_likelihood_jitter, legendre_design, marginal_basis,
)
from .numpyro_model import _lines_flux, line_sites, ordered_positions
from .options import LOG_NOISE_BOUNDS, WIDTH_MAX_U

DEGREE_SITE = "continuum_degree_u"


def model(x, flux, sigma=None, *, num_lines: int = 1, profile: str = "gaussian", jitter: bool = False,
          sign: str = "emission", amp_max: float = 10.0, width_min: float = 1e-3, width_max: float = WIDTH_MAX_U,
          basis: MarginalBasis | None = None, design=None, **_ignored):
    """K lines on a Legendre continuum of unknown degree, its coefficients integrated out.

    Line and noise sites are those of :func:`.numpyro_model.model`; ``continuum_degree_u``
    (Uniform(0, D + 1), D = the basis' largest degree) gives the degree by its floor.
    ``basis``: :func:`.legendre.marginal_basis` of the pixels, flux and errors; with ``jitter``,
    ``design`` (the unwhitened Legendre design) instead, factorised per evaluation. Other
    keywords (``value_only``, and the full model's ``continuum``, ``degree``, ``kernel``) are ignored.
    """

    q, amplitude, log_width, eta = line_sites(num_lines, profile, sign, amp_max, width_min, width_max)
    log_noise = log_jitter = None
    num_degrees = (design if basis is None else basis.q).shape[1]
    degree_u = numpyro.sample(DEGREE_SITE, dist.Uniform(0.0, float(num_degrees)))
    if sigma is None:
        log_noise = numpyro.sample("log_noise_u", dist.Uniform(*LOG_NOISE_BOUNDS))
    elif jitter:
        log_jitter = numpyro.sample("log_jitter_u", dist.Uniform(*LOG_NOISE_BOUNDS))
    value = _log_likelihood(profile)(x, flux, sigma, q, amplitude, log_width, eta, degree_u, log_noise, log_jitter,
                                     basis, design)
    numpyro.factor("flux", value)


@functools.lru_cache(maxsize=None)
def _log_likelihood(profile: str):
    """Jitted log density of the pixels given the lines and the degree, the continuum's
    coefficients integrated out: NumPyro evaluates the model eagerly while it sets up a
    sampler, and one compiled call replaces a few dozen operations each compiled on its own
    (about 7 s of a nested run's 18 s of compilation before)."""

    def log_likelihood(x, flux, sigma, q, amplitude, log_width, eta, degree_u, log_noise, log_jitter, basis,
                       design):
        lines = jnp.zeros_like(x)
        if q is not None:
            lines = _lines_flux(x, -1.0 + 2.0 * ordered_positions(q), jnp.exp(log_width), eta, amplitude, profile)
        num_degrees = (design if basis is None else basis.q).shape[1]
        degree = jnp.clip(jnp.floor(degree_u), 0, num_degrees - 1).astype(jnp.int32)
        if log_jitter is not None:
            return integrated_log_likelihood_jitter(flux - lines, sigma, degree, design, log_jitter)
        noise_scale = 1.0 if log_noise is None else jnp.exp(log_noise)
        return integrated_log_likelihood(lines, sigma, degree, basis, noise_scale)

    return jax.jit(log_likelihood)


def model_data(data: dict, max_degree: int) -> dict:
    """The keywords of :func:`model` for the full model's ``data``: the factors of the
    degree-``max_degree`` design (once per spectrum, numpy float64), whitened by the errors."""
    sigma = data.get("sigma")
    out = {k: v for k, v in data.items() if k not in ("continuum", "degree", "kernel", "gp_fixed")}
    if data.get("jitter") and sigma is not None:
        out["design"] = legendre_design(data["x"], max_degree).astype(np.float32)
    else:
        out["basis"] = marginal_basis(data["x"], data["flux"], sigma, max_degree)
    return out


def degree_probabilities(draws: np.ndarray, max_degree: int) -> np.ndarray:
    """Posterior probability of each degree 0..``max_degree`` from draws of ``continuum_degree_u``."""
    degrees = np.clip(np.floor(np.asarray(draws, dtype=np.float64)).astype(int), 0, max_degree).ravel()
    return np.bincount(degrees, minlength=max_degree + 1) / max(degrees.size, 1)
