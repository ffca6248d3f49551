"""spectral-lines: the NumPyro model (K lines on a polynomial or GP continuum) and its pieces.

Profiles, the ordered-centres transform, the tinygp continuum and the observed flux's
likelihoods are here; the physical quantities derived from the draws are in :mod:`.derived`.

The spectrum is fitted in standardised units (``x_u = (x - x_mid) / x_half`` in [-1, 1],
``y_u = (flux - f0) / f_scale``) so that one set of priors, all proper (nested sampling needs
that), serves any spectral and flux unit; physical quantities are computed from the draws
afterwards in float64 and stored with their units.

Model (standardised units, K lines)::

    center_q    ~ Uniform(0, 1) per line           the tutorial's q1, q2 for any K:
    center_u    = ordered(center_q)                u_k = u_{k-1} + (1 - u_{k-1}) (1 - (1 - q_k)^(1/(K-k+1))),
                                                   center = -1 + 2 u: ordered, labels cannot switch
                                                   (computed inside the likelihood; added to the
                                                   posterior afterwards, not a model site)
    amplitude_u ~ Uniform(0, A) per line           (or (-A, 0) for absorption, (-A, A) both)
    log_width_u ~ Uniform(log w_min, log w_max)    Gaussian sigma, Lorentzian HWHM or
                                                   pseudo-Voigt FWHM
    voigt_eta   ~ Uniform(0, 1)                    pseudo-Voigt only: Lorentzian fraction
    continuum_coef ~ Normal(0, 3) each             polynomial of degree d in x_u: Legendre series
                                                   sum_j a_j P_j(x_u) (:mod:`.legendre`)
    GP (continuum="gp"): log_gp_amp ~ U(log 0.01, log 10), log_gp_scale ~ U(log 0.2, log 10),
        tinygp quasiseparable Matern-3/2 (or SHO) kernel: O(N) likelihood; with
        gp_hyperparameters="fixed" the GP sites and the fitted noise term are held at their MAP
        values (model keyword gp_fixed) and the likelihood's gradient avoids reverse-mode scans
    noise: the file's errors; with no errors, log_noise_u ~ U(log 1e-3, log 10); with
        jitter=True, errors^2 + jitter^2, log_jitter_u ~ U(log 1e-3, log 10)

The ordered centres are the order statistics of K uniform positions (each u_k is the
smallest of the K - k + 1 remaining uniforms above u_{k-1}), which is the tutorial's
two-uniform (q1, q2) reparameterisation generalised to any K: the prior is uniform on ordered
K-tuples.

Derived per line, on a ``line`` dimension, in the input's units: ``line_center``,
``line_fwhm``, ``line_amplitude``, ``line_flux`` (integral of the profile), ``line_eqw``
(``line_flux`` divided by the continuum at the centre: positive for emission, negative for
absorption) and, with ``rest`` given, ``line_velocity`` (km/s).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from tinygp import GaussianProcess, kernels

from astroinfer.kalman import matern32_log_likelihood

from .legendre import legendre_series
from .options import COEF_SD, GP_SCALE_MAX_U, GP_SCALE_MIN_U, LOG_GP_AMP_BOUNDS, LOG_NOISE_BOUNDS, WIDTH_MAX_U

# Model keywords that select the model's structure (static for JAX); every other keyword
# (pixels, flux, errors, prior bounds) is an array argument of the compiled functions, so
# spectra of the same pixel count and settings reuse one compilation.
STRUCTURE_KEYS = ("num_lines", "profile", "continuum", "degree", "kernel", "jitter", "sign")


def split_data(data: dict) -> tuple[tuple, dict]:
    """(hashable model structure, array arguments) of the model's keywords ``data``."""
    structure = tuple((k, data[k]) for k in STRUCTURE_KEYS if k in data)
    arrays = {k: v for k, v in data.items() if k not in STRUCTURE_KEYS}
    return structure, arrays


def _profile(x, center, width, eta, profile: str):
    """One peak-normalised profile at pixels ``x`` (scalar centre, width and eta)."""
    d = (x - center) / width
    if profile == "gaussian":
        return jnp.exp(-0.5 * d * d)
    if profile == "lorentzian":
        return 1.0 / (1.0 + d * d)
    # pseudo-Voigt (Thompson, Cox & Hastings 1987 form): width is the FWHM of both parts
    gauss = jnp.exp(-4.0 * math.log(2.0) * d * d)
    lorentz = 1.0 / (1.0 + 4.0 * d * d)
    return eta * lorentz + (1.0 - eta) * gauss


def _profiles(x, center, width, eta, profile: str):
    """Peak-normalised profiles of every line, shape (N, K) (plots)."""
    num = center.shape[0]
    return jnp.stack([_profile(x, center[k], width[k], None if eta is None else eta[k], profile)
                      for k in range(num)], axis=-1) if num else jnp.zeros(x.shape + (0,))


def _lines_flux(x, center, width, eta, amplitude, profile: str):
    """Sum of the K lines at pixels ``x``, shape (N,).

    A Python sum over the lines (K is small and fixed per model): XLA fuses it with the
    likelihood into one pass over the pixels. The (N, K) profile matrix times the amplitude
    vector, or a sum over its short last axis, cost 6-10x more per gradient on CPU (20 000
    pixels, K = 2, gradient inside a jitted loop: ~520-670 us vs ~55-90 us).
    """
    total = 0.0
    for k in range(center.shape[0]):
        total = total + amplitude[k] * _profile(x, center[k], width[k], None if eta is None else eta[k], profile)
    return total


def _poly(x, coef):
    """The polynomial continuum: Legendre series in ``x`` (:mod:`.legendre`)."""
    return legendre_series(x, coef)


def _gaussian_process(kernel: str, log_amp, log_scale, x, variance, **options):
    """The tinygp GP of the continuum: ``kernel`` with amplitude and scale given as logs,
    white noise ``variance`` (a scalar or per pixel) on the diagonal."""
    return GaussianProcess(_gp_kernel(kernel, jnp.exp(log_amp), jnp.exp(log_scale)), x,
                           diag=jnp.broadcast_to(variance, jnp.shape(x)), **options)


def _gp_kernel(kernel: str, amp, scale):
    if kernel == "sho":
        # critically damped-ish oscillator (Q = 1/sqrt 2): a smooth, non-periodic continuum
        return kernels.quasisep.SHO(omega=1.0 / scale, quality=1.0 / math.sqrt(2.0), sigma=amp)
    return kernels.quasisep.Matern32(scale=scale, sigma=amp)


def ordered_positions(q):
    """Ordered positions in [0, 1] from K independent uniforms ``q`` (uniform on ordered tuples).

    ``u_k = u_{k-1} + (1 - u_{k-1}) (1 - (1 - q_k)^(1 / (K - k + 1)))``: the minimum of the
    K - k + 1 remaining uniform positions above ``u_{k-1}``. For K = 2 this is the tutorial's
    ``x0 = 1 - sqrt(1 - q1)``, ``x1 = x0 + (1 - x0) q2``. Compared with Dirichlet spacings
    (same prior), the NUTS sampler compiles faster (fewer transform operations: 17-22 s vs
    26-30 s at load ~7 for the tutorial fit).
    """
    num = q.shape[0]
    positions, u = [], 0.0
    for k in range(num):  # K is small and fixed per model
        u = u + (1.0 - u) * (1.0 - (1.0 - q[k]) ** (1.0 / (num - k)))
        positions.append(u)
    return jnp.stack(positions)


def ordered_positions_inverse(u: np.ndarray) -> np.ndarray:
    """``q`` with ``ordered_positions(q) == u`` for increasing ``u`` in (0, 1)."""
    num = u.shape[0]
    previous = np.concatenate([[0.0], u[:-1]])
    return 1.0 - ((1.0 - u) / (1.0 - previous)) ** (num - np.arange(num))


@functools.lru_cache(maxsize=None)
def _mean_function(profile: str):
    """Jitted lines + polynomial at the pixels: ``(x, center, width, eta, amplitude, coef)``.

    Inside NumPyro's traced samplers the call is inlined; where NumPyro evaluates the model
    and its gradient eagerly (NUTS's initialisation, the trace of the observed data), one
    compiled call replaces dozens of operations each compiled on its own.
    """

    def mean(x, center, width, eta, amplitude, coef):
        total = jnp.zeros_like(x)
        if center is not None:
            total = total + _lines_flux(x, center, width, eta, amplitude, profile)
        if coef is not None:
            total = total + _poly(x, coef)
        return total

    return jax.jit(mean)


def _pixel_log_likelihood_impl(flux, x, q, amplitude, log_width, eta, coef, variance, profile: str):
    center = width = None
    if q is not None:
        center = -1.0 + 2.0 * ordered_positions(q)
        width = jnp.exp(log_width)
    mean = jnp.zeros_like(x)
    if center is not None:
        mean = mean + _lines_flux(x, center, width, eta, amplitude, profile)
    if coef is not None:
        mean = mean + _poly(x, coef)
    residual = flux - mean
    num = x.shape[0]
    if jnp.ndim(variance) == 0:  # one fitted noise level: no per-pixel log
        return -0.5 * (jnp.sum(residual * residual) / variance + num * jnp.log(2.0 * math.pi * variance))
    return -0.5 * jnp.sum(residual * residual / variance + jnp.log(2.0 * math.pi * variance))


@functools.lru_cache(maxsize=None)
def _pixel_log_likelihood(profile: str):
    """Jitted log density of the pixels: Gaussian noise about K lines + polynomial.

    One compiled call (and one for its gradient) where NumPyro evaluates the model eagerly
    (NUTS's initialisation, the trace of the observed data) instead of a few dozen
    operations each compiled on its own; inside NumPyro's traced samplers it is inlined.
    """
    return jax.jit(functools.partial(_pixel_log_likelihood_impl, profile=profile))


class PixelLikelihood(dist.Distribution):
    """Independent Gaussian pixels about K lines (centres from ``center_q``) + a polynomial."""

    support = constraints.real_vector
    pytree_aux_fields = ("profile",)
    pytree_data_fields = ("x", "q", "amplitude", "log_width", "eta", "coef", "noise_variance")

    def __init__(self, x, q, amplitude, log_width, eta, coef, variance, profile):
        self.x, self.q, self.amplitude, self.log_width, self.eta = x, q, amplitude, log_width, eta
        self.coef, self.noise_variance, self.profile = coef, variance, profile
        super().__init__(batch_shape=(), event_shape=jnp.shape(x))

    @property
    def mean(self):
        center = None if self.q is None else -1.0 + 2.0 * ordered_positions(self.q)
        width = None if self.log_width is None else jnp.exp(self.log_width)
        return _mean_function(self.profile)(self.x, center, width, self.eta, self.amplitude, self.coef)

    def sample(self, key, sample_shape=()):
        noise = jax.random.normal(key, tuple(sample_shape) + self.event_shape)
        return self.mean + jnp.sqrt(self.noise_variance) * noise

    def log_prob(self, value):
        return _pixel_log_likelihood(self.profile)(value, self.x, self.q, self.amplitude, self.log_width,
                                                   self.eta, self.coef, self.noise_variance)


@functools.lru_cache(maxsize=None)
def fixed_gp_log_likelihood(kernel: str):
    """``(residual, x, variance, log_amp, log_scale) -> log N(residual | 0, K)`` with a cheap gradient.

    For GP hyperparameters held fixed (``gp_hyperparameters="fixed"``) the log density of the
    residual ``r = flux - mean`` is ``-0.5 r^T K^-1 r - log|L| - N/2 log 2 pi`` and its gradient
    in ``r`` is ``-K^-1 r``. The custom VJP computes ``alpha = K^-1 r`` with tinygp's
    quasiseparable Cholesky factor (the forward pass's ``L^-1 r``, then one solve with
    ``L^T``): value-only scans. Reverse-mode differentiation through tinygp's scans, which
    the sampled-hyperparameter model needs, costs ~1 us per pixel on XLA:CPU (about 20x the
    value at 100 000 pixels). ``x``, ``variance`` and the hyperparameters get zero cotangents:
    they are constants here, never sampled.
    """

    def solver(x, variance, log_amp, log_scale):  # load() sorts the spectral axis
        return _gaussian_process(kernel, log_amp, log_scale, x, variance, assume_sorted=True).solver

    def forward(residual, x, variance, log_amp, log_scale):
        gp_solver = solver(x, variance, log_amp, log_scale)
        whitened = gp_solver.solve_triangular(residual)  # L^-1 r
        value = -0.5 * jnp.sum(whitened * whitened) - gp_solver.normalization()
        return value, (gp_solver.factor, whitened, x, variance, log_amp, log_scale)

    @jax.custom_vjp
    def log_likelihood(residual, x, variance, log_amp, log_scale):
        return forward(residual, x, variance, log_amp, log_scale)[0]

    def backward(saved, cotangent):
        factor, whitened, x, variance, log_amp, log_scale = saved
        alpha = factor.transpose().solve(whitened)  # L^-T L^-1 r = K^-1 r
        return (-cotangent * alpha, jnp.zeros_like(x), jnp.zeros_like(variance), jnp.zeros_like(log_amp),
                jnp.zeros_like(log_scale))

    log_likelihood.defvjp(forward, backward)
    return log_likelihood


class GPResidualLikelihood(dist.Distribution):
    """The observed flux on a GP continuum where its log density is not NumPyro's default
    (tinygp's ``numpyro_dist``, with reverse-mode gradients): lines + polynomial (``mean``)
    plus a quasiseparable GP, evaluated as ``evaluation`` says:

    - ``"fixed"``: hyperparameters are constants; :func:`fixed_gp_log_likelihood`;
    - ``"value"``: the density is only evaluated, never differentiated (nested sampling);
      the Matern-3/2 kernel uses :func:`astroinfer.kalman.matern32_log_likelihood`.
    """

    support = constraints.real_vector
    pytree_aux_fields = ("kernel", "evaluation")
    pytree_data_fields = ("loc", "x", "noise_variance", "log_amp", "log_scale")

    def __init__(self, loc, x, variance, log_amp, log_scale, kernel, evaluation):
        self.loc, self.x, self.noise_variance = loc, x, variance
        self.log_amp, self.log_scale, self.kernel, self.evaluation = log_amp, log_scale, kernel, evaluation
        super().__init__(batch_shape=(), event_shape=jnp.shape(x))

    @property
    def mean(self):
        return self.loc

    def sample(self, key, sample_shape=()):
        gp = _gaussian_process(self.kernel, self.log_amp, self.log_scale, self.x, self.noise_variance,
                               mean_value=self.loc)
        return gp.sample(key, shape=tuple(sample_shape))

    def log_prob(self, value):
        residual = value - self.loc
        if self.evaluation == "fixed":
            return fixed_gp_log_likelihood(self.kernel)(residual, self.x, self.noise_variance,
                                                        self.log_amp, self.log_scale)
        if self.kernel == "matern32":
            return matern32_log_likelihood(self.x, residual, self.noise_variance, jnp.exp(self.log_amp),
                                           jnp.exp(self.log_scale))
        gp = _gaussian_process(self.kernel, self.log_amp, self.log_scale, self.x, self.noise_variance,
                               assume_sorted=True)
        return gp.log_probability(residual)


def fixed_gp_sites(data: dict) -> tuple[str, ...]:
    """The sites a GP continuum's ``gp_fixed`` values stand for, in order: GP amplitude, GP
    scale and, where the model fits one, the noise term (log_noise_u or log_jitter_u)."""
    sites = ("log_gp_amp", "log_gp_scale")
    if data.get("sigma") is None:
        return sites + ("log_noise_u",)
    return sites + (("log_jitter_u",) if data.get("jitter") else ())


def amplitude_bounds(sign: str, amp_max):
    """(low, high) of a line's amplitude prior for ``sign``: emission (0, A), absorption
    (-A, 0), both (-A, A)."""
    return {"emission": (0.0, amp_max), "absorption": (-amp_max, 0.0), "both": (-amp_max, amp_max)}[sign]


def white_noise_variance(xp, sigma, log_noise=None, log_jitter=None):
    """The pixels' white-noise variance: ``exp(2 log_noise)`` where the file has no errors (one
    fitted level, a scalar: no per-pixel sqrt and log), else ``sigma^2`` plus
    ``exp(2 log_jitter)`` where a jitter term is fitted. ``xp`` is ``jax.numpy`` (the model,
    the derived continuum) or ``numpy`` (the start search's dense covariance)."""
    if sigma is None:
        return xp.exp(2.0 * log_noise)
    variance = xp.asarray(sigma) ** 2
    return variance if log_jitter is None else variance + xp.exp(2.0 * log_jitter)


def line_sites(num_lines: int, profile: str, sign: str, amp_max, width_min, width_max):
    """The K lines' sample sites (``center_q``, ``amplitude_u``, ``log_width_u``, and
    ``voigt_eta`` for the pseudo-Voigt): (q, amplitude, log_width, eta), all None for K = 0."""
    if num_lines == 0:
        return None, None, None, None

    def log(v):  # a number stays a number (no eager op); prior bounds are traced in nested runs
        return math.log(v) if isinstance(v, (int, float)) else jnp.log(v)

    q = numpyro.sample("center_q", dist.Uniform(0.0, 1.0).expand([num_lines]).to_event(1))
    low, high = amplitude_bounds(sign, amp_max)
    amplitude = numpyro.sample("amplitude_u", dist.Uniform(low, high).expand([num_lines]).to_event(1))
    log_width = numpyro.sample(
        "log_width_u", dist.Uniform(log(width_min), log(width_max)).expand([num_lines]).to_event(1))
    eta = None
    if profile == "voigt":
        eta = numpyro.sample("voigt_eta", dist.Uniform(0.0, 1.0).expand([num_lines]).to_event(1))
    return q, amplitude, log_width, eta


def model(x, flux, sigma=None, *, num_lines: int = 1, profile: str = "gaussian", continuum: str = "poly",
          degree: int = 1, kernel: str = "matern32", jitter: bool = False, sign: str = "emission",
          amp_max: float = 10.0, width_min: float = 1e-3, width_max: float = WIDTH_MAX_U, gp_fixed=None,
          value_only: bool = False):
    """K lines on a continuum, in standardised units (see the module docstring).

    The ordered centres ``center_u`` are not a site of the model: they follow from
    ``center_q`` and are added to the posterior afterwards (:func:`line_centres_np`), which
    keeps them out of the compiled sampler (its compile time is user-visible).

    ``gp_fixed`` (continuum "gp" only): the values of :func:`fixed_gp_sites`, held fixed
    instead of sampled (empirical Bayes); the likelihood then uses
    :func:`fixed_gp_log_likelihood`, whose gradient avoids reverse-mode scans.

    ``value_only`` (continuum "gp"): the density will only be evaluated, never differentiated
    (nested sampling), so a Matern-3/2 continuum uses the Kalman filter of
    :mod:`astroinfer.kalman`: the same density, 4.6x cheaper for 20 particles at 150 pixels.
    """

    if continuum == "auto":
        raise ValueError("continuum 'auto' is a choice of degree made before the fit (.auto_continuum); "
                         "this model takes poly, gp or none")
    x = jnp.asarray(x)
    flux = jnp.asarray(flux)
    q, amplitude, log_width, eta = line_sites(num_lines, profile, sign, amp_max, width_min, width_max)
    coef = None
    if continuum != "none":
        coef = numpyro.sample("continuum_coef", dist.Normal(0.0, COEF_SD).expand([degree + 1]).to_event(1))
    fixed = None
    if continuum == "gp" and gp_fixed is not None:
        fixed = jnp.asarray(gp_fixed)
    log_noise = log_jitter = None
    if sigma is None:
        log_noise = fixed[2] if fixed is not None else numpyro.sample("log_noise_u", dist.Uniform(*LOG_NOISE_BOUNDS))
    elif jitter:
        log_jitter = (fixed[2] if fixed is not None
                      else numpyro.sample("log_jitter_u", dist.Uniform(*LOG_NOISE_BOUNDS)))
    variance = white_noise_variance(jnp, sigma, log_noise, log_jitter)
    if continuum == "gp":
        center = None if q is None else -1.0 + 2.0 * ordered_positions(q)
        width = None if log_width is None else jnp.exp(log_width)
        mean = _mean_function(profile)(x, center, width, eta, amplitude, coef)
        if fixed is not None:
            numpyro.sample("flux", GPResidualLikelihood(mean, x, variance, fixed[0], fixed[1], kernel, "fixed"),
                           obs=flux)
        else:
            log_amp = numpyro.sample("log_gp_amp", dist.Uniform(*LOG_GP_AMP_BOUNDS))
            log_scale = numpyro.sample("log_gp_scale",
                                       dist.Uniform(math.log(GP_SCALE_MIN_U), math.log(GP_SCALE_MAX_U)))
            if value_only:
                numpyro.sample("flux", GPResidualLikelihood(mean, x, variance, log_amp, log_scale, kernel,
                                                                   "value"), obs=flux)
            else:
                gp = _gaussian_process(kernel, log_amp, log_scale, x, variance, mean_value=mean)
                numpyro.sample("flux", gp.numpyro_dist(), obs=flux)
    else:
        numpyro.sample("flux", PixelLikelihood(x, q, amplitude, log_width, eta, coef, variance, profile),
                       obs=flux)


def line_centres_np(q: np.ndarray) -> np.ndarray:
    """``center_u`` (``-1 + 2 ordered_positions(q)``) for draws ``q`` of shape (..., K), in numpy."""
    q = np.asarray(q, dtype=np.float64)
    out = np.empty_like(q)
    u = np.zeros(q.shape[:-1])
    num = q.shape[-1]
    for j in range(num):
        u = u + (1.0 - u) * (1.0 - (1.0 - q[..., j]) ** (1.0 / (num - j)))
        out[..., j] = u
    return -1.0 + 2.0 * out


def add_line_centres(posterior: dict) -> dict:
    """``posterior`` (name -> draws) with ``center_u`` computed from ``center_q``."""
    if "center_q" in posterior and "center_u" not in posterior:
        q = np.asarray(posterior["center_q"])
        posterior = {**posterior, "center_u": line_centres_np(q).astype(q.dtype)}
    return posterior
