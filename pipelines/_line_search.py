"""Where K lines sit on a correlated continuum: a generalised-least-squares search.

With the continuum's covariance ``C`` (GP + noise) held fixed, lines of given centres and
widths enter the mean linearly (their amplitudes), beside the polynomial's coefficients. So
for any set of lines the best amplitudes, and how much they raise the log-likelihood, follow
from least squares after whitening by ``L^-1`` (``C = L L^T``). The search picks K columns
of a candidate grid (centres x widths) by the posterior mass they add: greedily, then by
swaps (each chosen line replaced by the candidate that adds the most given the others) until
no swap helps.

This is what a gradient search from one start cannot do: it moves a line only downhill, and
on a GP continuum a continuum bump and a weak line can be separated by a ridge.
"""

from __future__ import annotations

import numpy as np

SIGNS = {"emission": 1.0, "absorption": -1.0, "both": 0.0}


def whiten(covariance: np.ndarray, *columns: np.ndarray) -> list[np.ndarray]:
    """``L^-1 a`` for each array ``a`` (vectors or column stacks), ``C = L L^T``."""
    from scipy.linalg import cho_factor, solve_triangular

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
    s = SIGNS[sign]
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
