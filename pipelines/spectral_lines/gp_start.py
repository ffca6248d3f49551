"""spectral-lines: the start search for lines on a GP continuum.

:func:`gp_continuum_start` finds the MAP point of the lines in the mode of most posterior
mass among several: the continuum alone first, then lines placed greedily and by a
generalised-least-squares search, each refined by L-BFGS (:func:`map_estimate`), all on the
spectrum binned to at most ``START_MAX_BINS`` points (:func:`binned_spectrum`) and the mode
kept refined on the full spectrum.

The search (:func:`searched_lines`, :func:`choose_lines`): with the continuum's covariance
``C`` (GP + noise) held fixed, lines of given centres and widths enter the mean linearly
(their amplitudes), beside the polynomial's coefficients. So for any set of lines the best
amplitudes, and how much they raise the log-likelihood, follow from least squares after
whitening by ``L^-1`` (``C = L L^T``). The search picks K columns of a candidate grid
(centres x widths) by the posterior mass they add: greedily, then by swaps (each chosen line
replaced by the candidate that adds the most given the others) until no swap helps.

This is what a gradient search from one start cannot do: it moves a line only downhill, and
on a GP continuum a continuum bump and a weak line can be separated by a ridge.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn
from scipy.linalg import cho_factor, solve_triangular

from .legendre import legendre_design
from .numpyro_model import _gp_kernel, amplitude_bounds, line_centres_np, model, split_data, white_noise_variance
from .starts import _line_values, _profile_np, group_means, initial_values, pixel_group


@functools.lru_cache(maxsize=64)
def _map_function(structure: tuple, steps: int):
    """Jitted ``(arrays, start) -> (constrained MAP point, potential energy there)`` for one
    model structure: at most ``steps`` L-BFGS iterations (zoom line search) in NumPyro's
    unconstrained space, stopping once three iterations in a row lowered the potential
    energy by less than 1e-3 (float32 resolves about 0.01 at the 10^5 of a long spectrum)."""
    optimiser = optax.lbfgs()

    def run(arrays, start):
        kwargs = {**arrays, **dict(structure)}

        def potential(z):
            return potential_energy(model, (), kwargs, z)

        value_and_grad = optax.value_and_grad_from_state(potential)

        def going(carry):
            _, _, iteration, stalled = carry
            return (iteration < steps) & (stalled < 3)

        def step(carry):
            z, state, iteration, stalled = carry
            value, grad = value_and_grad(z, state=state)
            updates, state = optimiser.update(grad, state, z, value=value, grad=grad, value_fn=potential)
            small = ~(value - optax.tree_utils.tree_get(state, "value") >= 1e-3)
            return optax.apply_updates(z, updates), state, iteration + 1, jnp.where(small, stalled + 1, 0)

        z0 = unconstrain_fn(model, (), kwargs, start)
        z, *_ = jax.lax.while_loop(going, step, (z0, optimiser.init(z0), 0, 0))
        energy, energy0 = potential(z), potential(z0)
        found = jnp.isfinite(energy) & (energy <= energy0)  # never worse than the start
        z = jax.tree.map(lambda a, b: jnp.where(found, a, b), z, z0)
        return constrain_fn(model, (), kwargs, z), jnp.where(found, energy, energy0)

    return jax.jit(run)


def _jax_arguments(data: dict, point: dict[str, np.ndarray]) -> tuple[tuple, dict, dict]:
    """(model structure, array arguments, parameter values) of ``data`` and ``point`` as
    float32 JAX arrays, for the jitted functions of one model structure."""
    structure, arrays = split_data(data)
    arrays = {k: (None if v is None else jnp.asarray(v, dtype=jnp.float32)) for k, v in arrays.items()}
    return structure, arrays, {k: jnp.asarray(v, dtype=jnp.float32) for k, v in point.items()}


def _map_point(data: dict, start: dict[str, np.ndarray], steps: int) -> tuple[dict[str, np.ndarray], float]:
    """(MAP point near ``start``, its potential energy): see :func:`map_estimate`."""
    structure, arrays, start = _jax_arguments(data, start)
    constrained, energy = _map_function(structure, steps)(arrays, start)
    return {k: np.asarray(v) for k, v in constrained.items() if k in start}, float(energy)


def map_estimate(data: dict, start: dict[str, np.ndarray], steps: int = 100) -> dict[str, np.ndarray]:
    """Maximum a posteriori point near ``start`` (L-BFGS in NumPyro's unconstrained space).

    One jitted function per model structure, with the data as arguments: no eager model
    evaluation (which compiles every operation separately) and no recompilation for another
    spectrum of the same size.
    """
    return _map_point(data, start, steps)[0]

# Where lines are on a GP continuum is searched on the spectrum averaged to at most
# START_MAX_BINS points (a bin of 100 000 pixels is then 0.2% of the window, far narrower
# than the lines the search has to find), over a grid of at most START_CENTRES centres x
# START_WIDTHS widths.
START_MAX_BINS = 1000
START_CENTRES = 500
START_WIDTHS = 8


def _noise_from_differences(y: np.ndarray) -> float:
    """Per-pixel noise sd from the median absolute deviation of first differences (a smooth
    continuum and lines many pixels wide cancel in them)."""
    d = np.diff(np.asarray(y, dtype=np.float64))
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def binned_spectrum(data: dict, max_bins: int = START_MAX_BINS) -> dict:
    """``data`` with its pixels averaged in groups of consecutive pixels (at most ``max_bins``
    groups; a partial last group is dropped) and each group's error propagated.

    Missing errors, and the extra scatter ``jitter`` stands for, are taken from
    :func:`_noise_from_differences`, so the binned spectrum always has errors and no jitter.
    Returns ``data`` itself when it has at most ``max_bins`` pixels.
    """
    x = np.asarray(data["x"], dtype=np.float64)
    group = pixel_group(x.size, max_bins)
    if group == 1:
        return data
    usable = (x.size // group) * group
    y = np.asarray(data["flux"], dtype=np.float64)
    noise = _noise_from_differences(y)
    if data["sigma"] is None:
        variance = np.full(usable, noise * noise)
    else:
        variance = np.asarray(data["sigma"], dtype=np.float64)[:usable] ** 2
        if data["jitter"]:
            variance = variance + max(0.0, noise * noise - float(np.median(variance)))
    x_binned = group_means(x, group)
    return {**data, "x": x_binned.astype(np.float32), "flux": group_means(y, group).astype(np.float32),
            "sigma": (np.sqrt(variance.reshape(-1, group).sum(axis=1)) / group).astype(np.float32),
            "jitter": False, "width_min": max(data["width_min"], float(np.median(np.diff(x_binned))))}


def _gp_covariance(data: dict, values: dict[str, np.ndarray]) -> np.ndarray:
    """The dense covariance (GP at ``values``' hyperparameters + noise) of ``data``'s pixels."""
    x = np.asarray(data["x"], dtype=np.float64)
    gp_kernel = _gp_kernel(data["kernel"], float(np.exp(values["log_gp_amp"])), float(np.exp(values["log_gp_scale"])))
    covariance = np.asarray(gp_kernel(jnp.asarray(x), jnp.asarray(x)), dtype=np.float64)
    sigma = None if data["sigma"] is None else np.asarray(data["sigma"], dtype=np.float64)
    variance = white_noise_variance(np, sigma, values.get("log_noise_u"),
                                    values["log_jitter_u"] if data["jitter"] else None)
    return covariance + np.diag(np.broadcast_to(variance, x.shape))


def searched_lines(data: dict, values: dict[str, np.ndarray], lines: tuple[list, list] | None = None
                   ) -> dict[str, np.ndarray]:
    """``values`` with its lines and polynomial replaced by the best K lines of a grid (and
    their least-squares amplitudes and coefficients), the continuum's GP held at ``values``'
    hyperparameters (:func:`choose_lines`). ``lines`` (centres, widths)
    fixes the lines instead: only their amplitudes and the polynomial are fitted."""
    k, profile = data["num_lines"], data["profile"]
    x = np.asarray(data["x"], dtype=np.float64)
    if lines is None:
        centres = x[np.abs(x) < 0.999][:: max(1, -(-x.size // START_CENTRES))]
        widths = np.geomspace(1.01 * data["width_min"], 0.99 * data["width_max"], START_WIDTHS)
        grid = [(c, w) for w in widths for c in centres]
    else:
        grid = list(zip(*lines))
    candidates = np.column_stack([_profile_np(x, c, w, 0.5, profile) for c, w in grid])
    polynomial = legendre_design(x, data["degree"])
    y, fixed, candidates = whiten(_gp_covariance(data, values), np.asarray(data["flux"], dtype=np.float64),
                                  polynomial, candidates)
    if lines is None:
        log_widths = np.log([w for _, w in grid])
        chosen = choose_lines(y, fixed, candidates, log_widths, k, data["sign"])
    else:
        chosen = list(range(k))
    coef = coefficients(y, np.column_stack([fixed, candidates[:, chosen]]))
    low, high = amplitude_bounds(data["sign"], data["amp_max"])
    margin = 1e-3 * data["amp_max"]
    amps = np.clip(coef[data["degree"] + 1:], low + margin, high - margin)
    placed = _line_values([grid[i][0] for i in chosen], amps, [grid[i][1] for i in chosen], profile)
    return {**values, **{name: v.astype(np.float32) for name, v in placed.items()},
            "continuum_coef": coef[: data["degree"] + 1].astype(np.float32)}


@functools.lru_cache(maxsize=64)
def _laplace_function(structure: tuple):
    """Jitted ``(arrays, point) -> log posterior mass about point`` (Laplace approximation in
    NumPyro's unconstrained space: ``-U - log det(H) / 2``, H the Hessian of the potential
    energy U; eigenvalues below 1e-3 count as 1e-3, so a flat direction's volume stays finite)."""

    def log_mass(arrays, point):
        kwargs = {**arrays, **dict(structure)}
        flat, unravel = ravel_pytree(unconstrain_fn(model, (), kwargs, point))

        def potential(v):
            return potential_energy(model, (), kwargs, unravel(v))

        eigenvalues = jnp.linalg.eigvalsh(jax.hessian(potential)(flat))
        return -potential(flat) - 0.5 * jnp.sum(jnp.log(jnp.maximum(eigenvalues, 1e-3)))

    return jax.jit(log_mass)


def _log_mass(data: dict, point: dict[str, np.ndarray]) -> float:
    """:func:`_laplace_function` of ``data`` at ``point`` (``-inf`` where not finite)."""
    structure, arrays, point = _jax_arguments(data, point)
    value = float(_laplace_function(structure)(arrays, point))
    return value if math.isfinite(value) else -math.inf


LINE_SITES = ("center_q", "amplitude_u", "log_width_u", "voigt_eta")
START_ROUNDS = 3


def gp_continuum_start(data: dict, steps: int = 100) -> dict[str, np.ndarray]:
    """The MAP point of lines on a GP continuum in the mode of most posterior mass among
    several, found on :func:`binned_spectrum` (where the cost does not grow with N) and
    refined on ``data``.

    A gradient search moves lines only downhill from where they start, and the greedy start
    (:func:`initial_values`) can take a continuum bump for a line and miss a weak one (2-4 of
    10 simulated 2-line spectra at 100 000 pixels). So the continuum is fitted alone first,
    and the MAP search runs from the greedy lines on it and from where
    :func:`searched_lines` places the lines, given the GP hyperparameters of the continuum
    fitted alone and then of each MAP point found (up to ``START_ROUNDS`` times, until it
    places the same lines again). The mode kept is the one of greatest Laplace-approximated
    mass (:func:`_laplace_function`), not of highest density: a line shrunk onto a noise
    spike can reach as high a density as a real line the GP has partly absorbed, in a far
    smaller volume.
    """
    binned = binned_spectrum(data)
    greedy = initial_values(binned)
    values, _ = _map_point({**binned, "num_lines": 0},
                           {k: v for k, v in greedy.items() if k not in LINE_SITES}, steps)
    if data["num_lines"]:
        # the greedy lines start on the continuum fitted alone, with least-squares amplitudes:
        # from the prior's GP and rough amplitudes, L-BFGS's first steps can carry a line
        # tens of Angstrom away (seen on simulated 2-line spectra at 2000 pixels)
        centres = line_centres_np(greedy["center_q"])
        widths = np.exp(np.asarray(greedy["log_width_u"], dtype=np.float64))
        modes = [_map_point(binned, searched_lines(binned, values, (centres, widths)), steps)[0]]
        placed = None
        for _ in range(START_ROUNDS):
            searched = searched_lines(binned, values)
            lines = tuple(searched[k].tobytes() for k in LINE_SITES if k in searched)
            if lines == placed:
                break
            placed = lines
            values, _ = _map_point(binned, searched, steps)
            modes.append(values)
        values = max(modes, key=lambda mode: _log_mass(binned, mode))
    if binned is data:
        return values
    start = initial_values(data)  # keeps the noise sites of the full spectrum, which binning drops
    start.update({k: v for k, v in values.items() if k in start})
    return map_estimate(data, start, steps)


# -- generalised least squares on the whitened spectrum ----------------------------
AMPLITUDE_SIGNS = {"emission": 1.0, "absorption": -1.0, "both": 0.0}


def whiten(covariance: np.ndarray, *columns: np.ndarray) -> list[np.ndarray]:
    """``L^-1 a`` for each array ``a`` (vectors or column stacks), ``C = L L^T``."""
    factor, lower = cho_factor(covariance, lower=True)
    return [solve_triangular(factor, a, lower=True, check_finite=False) for a in columns]


def _basis(columns: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the span of ``columns`` (n x m; m may be 0)."""
    if columns.shape[1] == 0:
        return columns
    q, r = np.linalg.qr(columns)
    keep = np.abs(np.diag(r)) > 1e-10 * max(1.0, float(np.abs(r).max()))
    return q[:, keep]


def _scores(y: np.ndarray, basis: np.ndarray, candidates: np.ndarray, log_widths: np.ndarray,
            sign: float) -> np.ndarray:
    """The log posterior mass each candidate line adds to the lines in ``basis``'s span
    (Laplace approximation, up to a constant; ``-inf`` where the line's amplitude would have
    the wrong sign or the candidate is already in the span).

    A line ``a b(x; c, w)`` raises the log-likelihood by ``g/2``, ``g = (r.b)^2 / |b|^2``
    (``r`` the residual, ``b`` the whitened profile projected off the span). Its posterior
    sds are about ``1/|b|`` in amplitude, ``w / (|a| |b|)`` in centre and ``1 / (|a| |b|)`` in
    log width, with ``|a| |b| = sqrt(g)``: so the mass is ``g/2 - log g - log |b| + log w``.
    The volume terms are what keep a line shrunk onto a noise spike from beating a real,
    wider line whose likelihood gain is about the same.
    """
    residual = y - basis @ (basis.T @ y)
    projected = candidates - basis @ (basis.T @ candidates)
    norm2 = np.einsum("ij,ij->j", projected, projected)
    dot = residual @ projected
    usable = norm2 > 1e-8 * np.einsum("ij,ij->j", candidates, candidates)
    if sign:
        usable &= sign * dot > 0
    norm2 = np.where(usable, norm2, 1.0)
    gain = dot * dot / norm2
    score = 0.5 * gain - np.log(np.maximum(gain, 1.0)) - 0.5 * np.log(norm2) + log_widths
    return np.where(usable, score, -np.inf)


def choose_lines(y: np.ndarray, fixed: np.ndarray, candidates: np.ndarray, log_widths: np.ndarray,
                 num_lines: int, sign: str, max_sweeps: int = 10) -> list[int]:
    """Indices of ``num_lines`` candidate columns that together hold the most posterior mass.

    All arrays are whitened: ``y`` (n), ``fixed`` (n x p, always fitted: the polynomial) and
    ``candidates`` (n x m, one line profile each, of log width ``log_widths``). ``sign``
    ("emission", "absorption" or "both") restricts the sign of each newly placed line's
    amplitude.
    """
    s = AMPLITUDE_SIGNS[sign]
    chosen: list[int] = []
    for _ in range(num_lines):
        scores = _scores(y, _basis(np.column_stack([fixed, candidates[:, chosen]])), candidates, log_widths, s)
        scores[chosen] = -np.inf
        chosen.append(int(np.argmax(scores)))
    for _ in range(max_sweeps):
        swapped = False
        for position in range(num_lines):
            others = chosen[:position] + chosen[position + 1:]
            scores = _scores(y, _basis(np.column_stack([fixed, candidates[:, others]])), candidates, log_widths, s)
            scores[others] = -np.inf
            best = int(np.argmax(scores))
            if scores[best] > scores[chosen[position]] + 1e-9:
                chosen[position] = best
                swapped = True
        if not swapped:
            break
    return chosen


def coefficients(y: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Least-squares coefficients of whitened ``y`` on the whitened ``design``."""
    return np.linalg.lstsq(design, y, rcond=None)[0]
