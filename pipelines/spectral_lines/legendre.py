"""spectral-lines: the polynomial continuum in Legendre polynomials, and its coefficients
integrated out for a continuum whose degree is chosen by evidence (``--continuum auto``).

The continuum is ``sum_j a_j P_j(x_u)`` on the standardised axis ``x_u`` in [-1, 1]. At degree
0 and 1 that is ``a_0 + a_1 x_u``, as with monomials; at the degrees a wavy continuum needs
(10-20) monomials are nearly collinear on [-1, 1] (the condition number of their design grows
about as 4^d), while Legendre polynomials stay close to orthogonal, so the coefficients'
Normal(0, ``COEF_SD``) prior means the same at every degree and NUTS sees no ridge.

**The coefficients integrated out.** With ``a ~ Normal(0, c^2 I)`` and Gaussian noise of
covariance ``s^2 D`` (``D = diag(sigma^2)`` from the file's errors, ``s = 1``; or ``D = I``
and ``s`` the fitted noise level), the residual ``r = flux - lines`` is Gaussian::

    r ~ Normal(0, s^2 D + c^2 B_d B_d^T),   B_d = [P_0(x) ... P_d(x)]

Whitened, ``z = D^(-1/2) r`` and ``D^(-1/2) B = Q R`` (QR; the first d + 1 columns of Q and
the leading block ``R_d`` of R are the QR of the degree-d basis, so one factorisation serves
every degree). With ``R_d = P S V^T`` (SVD) and ``g = P^T Q_d^T z``::

    log N = -1/2 [ ||z - Q_d Q_d^T z||^2 / s^2 + sum_j g_j^2 / (s^2 + c^2 S_j^2) ]
            - 1/2 sum_j log(1 + c^2 S_j^2 / s^2) - N log s - sum_i log sigma_i - N/2 log 2 pi

``||z||^2 - ||Q_d^T z||^2`` in float32 would cancel most digits (the polynomial takes up most
of the flux's variance), so the flux's own distance from the basis is formed once in float64
and only the lines' terms per evaluation (:func:`integrated_log_likelihood`). Q, P and S
depend only on the pixels and the errors, so they are computed once per spectrum (numpy,
float64) and passed to the compiled likelihood as arrays; the degree is a traced
integer that masks the columns beyond it, so every degree shares one compilation. With
``--jitter`` the whitening depends on a sampled parameter, and the factorisation is done
inside the likelihood (one QR of N x (D + 1) and one small SVD per evaluation).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from .options import COEF_SD


def legendre_design(x: np.ndarray, degree: int) -> np.ndarray:
    """``[P_0(x) ... P_degree(x)]``, shape (N, degree + 1), float64 (numpy)."""
    return np.polynomial.legendre.legvander(np.asarray(x, dtype=np.float64), degree)


def legendre_series(x, coef):
    """``sum_j coef[j] P_j(x)`` in JAX (Bonnet's recurrence; degree = ``len(coef) - 1``)."""
    num = coef.shape[0]
    if num == 0:
        return jnp.zeros_like(x)
    total = coef[0] * jnp.ones_like(x)
    if num == 1:
        return total
    previous, current = jnp.ones_like(x), x
    total = total + coef[1] * current
    for n in range(1, num - 1):  # P_{n+1} = ((2n + 1) x P_n - n P_{n-1}) / (n + 1)
        previous, current = current, ((2 * n + 1) * x * current - n * previous) / (n + 1)
        total = total + coef[n + 1] * current
    return total


class MarginalBasis(NamedTuple):
    """The factors of the whitened Legendre design, and the whitened flux projected on it, that
    the integrated likelihood needs (one spectrum; float32).

    ``q``: (N, D + 1) orthonormal columns; ``p``: (D + 1, D + 1, D + 1), ``p[d]`` the left
    singular vectors of the leading (d + 1) block of R, zero-padded; ``s``: (D + 1, D + 1),
    ``s[d]`` its singular values, zero-padded; ``log_sigma_sum``: sum of log errors (0 with
    none). For the whitened flux ``a``: ``flux_coef`` = ``Q^T a``, ``flux_perp`` = ``a - Q Q^T a``
    and ``flux_perp_norm2`` its squared norm (formed in float64).
    """

    q: np.ndarray
    p: np.ndarray
    s: np.ndarray
    log_sigma_sum: np.ndarray
    flux_coef: np.ndarray
    flux_perp: np.ndarray
    flux_perp_norm2: np.ndarray


def _leading_block_svd(r, degree, xp):
    """(p, s): SVD of the leading (degree + 1) block of ``r``, zero-padded to ``r``'s shape.

    Padding keeps the shapes static (``degree`` may be traced). The padded directions carry
    nothing: ``p`` is zeroed outside the first degree + 1 rows, where the masked projection of
    the data is zero too, and their singular values are 0."""
    keep = (xp.arange(r.shape[0]) <= degree).astype(r.dtype)
    p, s, _ = xp.linalg.svd(r * keep[:, None] * keep[None, :])
    return p * keep[:, None], s * keep


def marginal_basis(x: np.ndarray, flux: np.ndarray, sigma: np.ndarray | None, max_degree: int) -> MarginalBasis:
    """:class:`MarginalBasis` of the degree-``max_degree`` design and ``flux``, both whitened by
    the errors ``sigma`` (none: unit errors, the fitted noise level scales them)."""
    design = legendre_design(x, max_degree)
    whitened = np.asarray(flux, dtype=np.float64)
    log_sigma_sum = 0.0
    if sigma is not None:
        sigma = np.asarray(sigma, dtype=np.float64)
        design = design / sigma[:, None]
        whitened = whitened / sigma
        log_sigma_sum = float(np.sum(np.log(sigma)))
    q, r = np.linalg.qr(design)
    blocks = [_leading_block_svd(r, d, np) for d in range(max_degree + 1)]
    coef = q.T @ whitened
    perp = whitened - q @ coef
    f32 = np.float32
    return MarginalBasis(q.astype(f32), np.stack([b[0] for b in blocks]).astype(f32),
                         np.stack([b[1] for b in blocks]).astype(f32), f32(log_sigma_sum), coef.astype(f32),
                         perp.astype(f32), f32(perp @ perp))


def integrated_log_likelihood(lines, sigma, degree, basis: MarginalBasis, noise_scale):
    """log density of the flux (in ``basis``) given the ``lines`` (pixels, standardised; errors
    ``sigma`` or None), the Legendre coefficients of degrees 0..``degree`` integrated out under
    Normal(0, ``COEF_SD``) each (JAX; ``degree`` a traced integer). ``noise_scale``: ``s`` of the
    module docstring (1 with known errors). ``basis``: :func:`marginal_basis` for the same
    flux and ``sigma``.

    With ``z = a - b`` (whitened flux minus whitened lines), the squared distance of ``z``
    from the basis' span is ``|a_perp|^2 - 2 a_perp . b + |b|^2 - |Q^T b|^2``: only the lines'
    own terms are computed here, one product with ``Q^T`` per evaluation, and no difference
    of two large sums (the flux's part was formed in float64)."""
    b = lines if sigma is None else lines / sigma
    q = jnp.asarray(basis.q)
    lines_coef = q.T @ b
    perp_norm2 = (basis.flux_perp_norm2 - 2.0 * jnp.dot(jnp.asarray(basis.flux_perp), b)
                  + (jnp.dot(b, b) - jnp.dot(lines_coef, lines_coef)))
    p, s = jnp.asarray(basis.p)[degree], jnp.asarray(basis.s)[degree]
    return (_integrated(perp_norm2, jnp.asarray(basis.flux_coef) - lines_coef, degree, p, s, noise_scale,
                        b.shape[0]) - basis.log_sigma_sum)


def integrated_log_likelihood_jitter(residual, sigma, degree, design, log_jitter):
    """As :func:`integrated_log_likelihood`, for the ``residual`` (flux - lines) with errors
    ``sigma`` plus a fitted jitter: the whitening depends on ``log_jitter``, so the
    factorisation is done here (``design``: the unwhitened Legendre design, (N, D + 1))."""
    scale = jnp.sqrt(sigma * sigma + jnp.exp(2.0 * log_jitter))
    z = residual / scale
    q, r = jnp.linalg.qr(design / scale[:, None])
    p, s = _leading_block_svd(r, degree, jnp)
    coef = q.T @ z
    projected = z - q @ coef  # pixel by pixel: no cancellation between two large sums
    return (_integrated(jnp.dot(projected, projected), coef, degree, p, s, 1.0, z.shape[0])
            - jnp.sum(jnp.log(scale)))


def _integrated(perp_norm2, coef, degree, p, s, noise_scale, num_pixels):
    """The log density of the module docstring from the whitened residual's squared distance
    from the full basis' span (``perp_norm2``) and its coordinates in it (``coef``, Q^T z)."""
    keep = (jnp.arange(coef.shape[0]) <= degree).astype(coef.dtype)
    outside = coef * (1.0 - keep)  # the columns above the degree: part of the distance
    g = p.T @ (coef * keep)
    s2 = noise_scale * noise_scale
    prior_var = COEF_SD * COEF_SD * s * s
    quad = (perp_norm2 + jnp.dot(outside, outside)) / s2 + jnp.sum(g * g / (s2 + prior_var))
    log_det = jnp.sum(jnp.log1p(prior_var / s2)) + num_pixels * jnp.log(s2)
    return -0.5 * (quad + log_det + num_pixels * math.log(2.0 * math.pi))
