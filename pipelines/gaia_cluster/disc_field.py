"""A Galactic field for simulated cones, not drawn from the model's own field family:
stars of an exponential thin and thick disc along the line of sight towards M67, with a
luminosity function, seen through Gaia's magnitude limit (``simulate --field disc``).

Density (Galactocentric cylinder R, height z; the Sun at R = 8.2 kpc, z = 20 pc)::

    rho(R, z) = exp(-(R - R_sun) / 2.6 kpc - |z| / 0.3 kpc)              thin disc
              + 0.12 exp(-(R - R_sun) / 2.0 kpc - |z| / 0.9 kpc)          thick disc

Absolute magnitudes: 80% Normal(4.5, 1.8) (dwarfs about the turn-off) and 20% Normal(0.8,
0.8) (giants and the red clump). A star at distance r is in the catalog when
G = M_G + 5 log10(r / 10 pc) < 20.5 (no extinction: M67's is E(B-V) = 0.04). So the field's
distances follow r^2 rho(r) P(M_G < 20.5 - mu(r)): rising as the cone widens, then cut by
the disc's scale height (at M67's latitude, b = 31.9 deg, the thin disc's 0.3 kpc is
0.57 kpc along the line of sight) and by the magnitude limit; not the model's
r^2 exp(-r / L). The cluster's members get magnitudes from the same luminosity function
through the same limit. Errors grow with G (:func:`~.simulation.gaia_parallax_error`).

numpy only (SciPy for the normal distribution function).
"""

from __future__ import annotations

import math

import numpy as np

#: The line of sight: M67's Galactic longitude and latitude (deg).
GALACTIC_L, GALACTIC_B = 215.696, 31.897
R_SUN, Z_SUN = 8200.0, 20.0
#: (radial scale length, scale height, density relative to the thin disc at the Sun), pc.
DISCS = ((2600.0, 300.0, 1.0), (2000.0, 900.0, 0.12))
#: Luminosity function: (weight, mean, sd) of M_G components.
LUMINOSITY_FUNCTION = ((0.8, 4.5, 1.8), (0.2, 0.8, 0.8))
G_LIMIT = 20.5
G_BRIGHT = 6.0


def _density(r: np.ndarray) -> np.ndarray:
    """The discs' summed density at distance r (pc) along the line of sight (thin disc at the Sun = 1)."""
    l, b = math.radians(GALACTIC_L), math.radians(GALACTIC_B)
    x = R_SUN - r * math.cos(b) * math.cos(l)
    y = r * math.cos(b) * math.sin(l)
    z = Z_SUN + r * math.sin(b)
    radius = np.hypot(x, y)
    return sum(w * np.exp(-(radius - R_SUN) / h_r - np.abs(z) / h_z) for h_r, h_z, w in DISCS)


def _fraction_brighter(limit: np.ndarray) -> np.ndarray:
    """P(M_G < limit) under the luminosity function."""
    from scipy.special import ndtr

    return sum(w * ndtr((limit - m) / s) for w, m, s in LUMINOSITY_FUNCTION)


def _distance_modulus(r: np.ndarray) -> np.ndarray:
    return 5.0 * np.log10(r / 10.0)


def draw_magnitudes(rng: np.random.Generator, r: np.ndarray) -> np.ndarray:
    """Apparent G magnitudes of stars at distances ``r`` (pc), each drawn from the luminosity
    function restricted to what the catalog sees there (G_BRIGHT < G < G_LIMIT)."""
    mu = _distance_modulus(r)
    g = np.full(r.shape, np.nan)
    todo = np.ones(r.shape, dtype=bool)
    weights = np.array([w for w, _, _ in LUMINOSITY_FUNCTION])
    while todo.any():  # rejection: a few rounds (stars are only placed where some are seen)
        k = rng.choice(len(weights), size=int(todo.sum()), p=weights / weights.sum())
        means = np.array([m for _, m, _ in LUMINOSITY_FUNCTION])[k]
        sds = np.array([s for _, _, s in LUMINOSITY_FUNCTION])[k]
        trial = rng.normal(means, sds) + mu[todo]
        ok = (trial < G_LIMIT) & (trial > G_BRIGHT)
        idx = np.flatnonzero(todo)
        g[idx[ok]] = trial[ok]
        todo[idx[ok]] = False
    return g


def draw_field(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances (pc) and G magnitudes of ``n`` field stars of the cone's catalog."""
    r = np.geomspace(5.0, 40000.0, 8000)
    visible = r**2 * _density(r) * (_fraction_brighter(G_LIMIT - _distance_modulus(r))
                                    - _fraction_brighter(G_BRIGHT - _distance_modulus(r)))
    cells = 0.5 * (visible[1:] + visible[:-1]) * np.diff(r)
    cdf = np.concatenate([[0.0], np.cumsum(cells)])
    cdf /= cdf[-1]
    distances = np.interp(rng.uniform(size=n), cdf, r)
    return distances, draw_magnitudes(rng, distances)

