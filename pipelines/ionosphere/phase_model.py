"""The ionosphere phase model: the von Mises likelihood with phi0 integrated out, the NumPyro
models of one problem, and the grid kernels that evaluate the likelihood on a whole chunk.

The model and its derivation are in the package docstring (:mod:`astroinfer.pipelines.ionosphere`);
its constant and the noise-to-concentration conversion are in :mod:`.data` (numpy only).
The module is not called ``model``: importing a submodule sets it as the package's attribute
of that name, which would replace the :func:`model` the package exports.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import i0e

from astroinfer.engine.grid import GridKernel
from astroinfer.pipelines.ionosphere.data import TEC_CONSTANT

__all__ = ["log_likelihood_phi0_marginal", "model", "model_dtec", "model_dtec_phi0", "model_dtec_clock",
           "DTEC_KERNEL", "DTEC_CLOCK_KERNEL"]


# -- likelihood ----------------------------------------------------------------------------
def _log_norm(kappa_k):
    # log(2 pi I0(kappa)) per channel, 0 where the channel is flagged (kappa_k = 0 marks it).
    return jnp.where(kappa_k > 0, jnp.log(2 * jnp.pi) + jnp.log(i0e(kappa_k)) + kappa_k, 0.0)


def log_likelihood_phi0_marginal(phase, weight, freq, kappa, dtec, clock=0.0):
    """log of prod_k vonMises(phi_k | model_k + phi0, kappa_k), integrated over phi0 ~ U(-pi, pi)."""
    kappa_k = kappa * (weight > 0)
    model_phase = TEC_CONSTANT * dtec / freq + 2 * jnp.pi * freq * clock
    resid = phase - model_phase
    s_re = jnp.sum(kappa_k * jnp.cos(resid), axis=-1)
    s_im = jnp.sum(kappa_k * jnp.sin(resid), axis=-1)
    r = jnp.hypot(s_re, s_im)
    return jnp.log(i0e(r)) + r - jnp.sum(_log_norm(kappa_k), axis=-1)


# -- the models of one problem --------------------------------------------------------------
def model_dtec(phase, weight, freq, kappa, dtec_max):
    """dTEC only: phi0 integrated out analytically (the default model)."""
    dtec = numpyro.sample("dtec", dist.Uniform(-dtec_max, dtec_max))
    numpyro.factor("phase", log_likelihood_phi0_marginal(phase, weight, freq, kappa, dtec))


def model_dtec_phi0(phase, weight, freq, kappa, dtec_max):
    """dTEC and phi0 both sampled (for checking the marginalisation; slower and periodic)."""
    dtec = numpyro.sample("dtec", dist.Uniform(-dtec_max, dtec_max))
    phi0 = numpyro.sample("phi0", dist.Uniform(-jnp.pi, jnp.pi))
    kappa_k = kappa * (weight > 0)
    mu = TEC_CONSTANT * dtec / freq + phi0
    lp = kappa_k * jnp.cos(phase - mu) - _log_norm(kappa_k)
    numpyro.factor("phase", jnp.sum(lp))


def model_dtec_clock(phase, weight, freq, kappa, dtec_max, clock_max):
    """dTEC and clock delay (seconds), phi0 integrated out analytically."""
    dtec = numpyro.sample("dtec", dist.Uniform(-dtec_max, dtec_max))
    clock = numpyro.sample("clock", dist.Uniform(-clock_max, clock_max))
    numpyro.factor("phase", log_likelihood_phi0_marginal(phase, weight, freq, kappa, dtec, clock))


def model(phase, weight, freq, kappa, dtec_max, clock_max=None):
    """The pipeline's model for one problem: dTEC (and clock) with phi0 integrated out."""
    if clock_max is None:
        return model_dtec(phase, weight, freq, kappa, dtec_max)
    return model_dtec_clock(phase, weight, freq, kappa, dtec_max, clock_max)


# -- grid kernels (the fast path) ---------------------------------------------------------
def _kernel_s(batched, shared, coefficients):
    """|S| on every node: one real matrix product (B, 2K) @ (2K, 2G)."""
    kappa_k = shared["kappa"] * (batched["weight"] > 0)
    phase = batched["phase"]
    zr, zi = kappa_k * jnp.cos(phase), kappa_k * jnp.sin(phase)
    # S_g = sum_k z_k exp(-i theta_kg): Re = zr cos + zi sin, Im = zi cos - zr sin.
    cos, sin = jnp.cos(coefficients), jnp.sin(coefficients)  # (K, G)
    lhs = jnp.concatenate([zr, zi], axis=1)
    rhs = jnp.concatenate([jnp.concatenate([cos, -sin], axis=1), jnp.concatenate([sin, cos], axis=1)], axis=0)
    # Full float32 precision: on a GPU, XLA's default for float32 matrix products is TF32,
    # which gave log-evidence errors up to 3e-3 nat on an H200 (5e-6 on the CPU).
    s = jnp.matmul(lhs, rhs, precision="highest")
    G = coefficients.shape[1]
    r = jnp.hypot(s[:, :G], s[:, G:])
    return r, kappa_k


def _dtec_bounds(shared):
    m = jnp.asarray(shared["dtec_max"], jnp.float32)
    return jnp.stack([-m]), jnp.stack([m])


def _dtec_loglike(batched, shared, axes):
    freq = jnp.asarray(shared["freq"], jnp.float32)
    theta = (TEC_CONSTANT / freq)[:, None] * axes[0][None, :]
    r, kappa_k = _kernel_s(batched, shared, theta)
    return jnp.log(i0e(r)) + r - jnp.sum(_log_norm(kappa_k), axis=-1, keepdims=True)


def _clock_bounds(shared):
    m = jnp.asarray(shared["dtec_max"], jnp.float32)
    c = jnp.asarray(shared["clock_max"], jnp.float32)
    return jnp.stack([-m, -c]), jnp.stack([m, c])


def _clock_loglike(batched, shared, axes):
    freq = jnp.asarray(shared["freq"], jnp.float32)
    d, c = axes
    theta = ((TEC_CONSTANT / freq)[:, None, None] * d[None, :, None]
             + (2 * jnp.pi * freq)[:, None, None] * c[None, None, :])
    nd, nc = d.shape[0], c.shape[0]
    r, kappa_k = _kernel_s(batched, shared, theta.reshape(freq.shape[0], nd * nc))
    ll = jnp.log(i0e(r)) + r - jnp.sum(_log_norm(kappa_k), axis=-1, keepdims=True)
    return ll.reshape(-1, nd, nc)


DTEC_KERNEL = GridKernel(names=("dtec",), bounds=_dtec_bounds, log_likelihood=_dtec_loglike)
DTEC_CLOCK_KERNEL = GridKernel(names=("dtec", "clock"), bounds=_clock_bounds, log_likelihood=_clock_loglike)
