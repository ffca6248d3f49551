"""Spatially correlated parallax systematics: a Gaussian process over the sky (``systematics="gp"``).

Gaia's parallax errors are correlated between stars close on the sky, with an angular
covariance ``V(theta)`` measured from quasars and LMC stars. Maiz Apellaniz, Pantaleoni
Gonzalez & Barba (2021, A&A 649, A13, eqs. 8-10) combine the LMC's small separations with
the quasars' large ones (theta in degrees, V in micro-arcsec^2)::

    V(theta)   = V_LMC(theta) + V_QSO(theta)
    V_LMC      = 46.2 [a exp(-theta / 1.4)
                       + (1 - a) cos(2 pi theta / 1.05 + phi) / cos(phi) (b exp(-(theta / 0.35)^0.8) + 1 - b)]
                 a = 0.6, b = 0.94, phi = -5 pi / 18
    V_QSO      = 60 (theta < 3), 1.62 (40 - theta) (3..40), 0 (40..140), 1.62 (140 - theta) (> 140)

so ``V(0) = 106.2`` (10.3 micro-arcsec at a point) and ``V`` falls to 75 at 0.5 degree: across a
cluster's field the offset varies. Lindegren et al. (2021, A&A 649, A2, eq. 24) fit
``142 exp(-theta / 16)`` to quasars, which are too sparse to resolve scales under a degree.

The offset field ``eps(sky) ~ GP(0, V)`` shifts each member's parallax by its value at the
star (as ``offset="systematic"``'s global offset does: the field's parallaxes are taken as
measured). It is represented by its values on a grid of nodes over the stars' part of the
sky, whitened: with ``K_mm = Q diag(lambda) Q^T`` the nodes' covariance and ``K_nm`` the
stars' against the nodes', ``eps = Phi u``, ``Phi = K_nm Q diag(lambda)^-1/2``,
``u ~ Normal(0, 1)`` per kept eigenvector (the projected process; the directions of
negligible eigenvalue are dropped, which also removes any negative ones: the piecewise
formula is not guaranteed positive definite on the sphere). NUTS samples ``u``
(``offset_field``); ``parallax_offset`` is the field at the stars' mean position.

The kernel is a :class:`tinygp.kernels.Kernel` on unit vectors, evaluated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import tinygp

#: Spacing of the field's nodes (degrees): a third of the LMC term's 0.35-degree scale and a
#: tenth of its 1.05-degree period.
NODE_SPACING_DEG = 0.1
#: At most this many nodes: a wider field gets a proportionally coarser grid.
MAX_NODES = 400
#: Eigenvectors of the nodes' covariance are kept down to this fraction of the largest
#: eigenvalue (the rest carry less variance than float32 round-off in the likelihood).
EIGENVALUE_FLOOR = 1e-4
MAS2_PER_MUAS2 = 1e-6


def parallax_covariance_mas2(theta_deg):
    """Maiz Apellaniz et al. (2021) eqs. 8-10: the covariance (mas^2) of two stars' parallax
    errors at separation ``theta_deg`` (degrees)."""
    theta = jnp.asarray(theta_deg)
    a, b, period, phase = 0.6, 0.94, 1.05, -5.0 * np.pi / 18.0
    lmc = 46.2 * (a * jnp.exp(-theta / 1.4) + (1.0 - a) * jnp.cos(2.0 * np.pi * theta / period + phase)
                  / np.cos(phase) * (b * jnp.exp(-jnp.power(theta / 0.35, 0.8)) + 1.0 - b))
    qso = jnp.where(theta < 3.0, 60.0, jnp.where(theta <= 40.0, 1.62 * (40.0 - theta),
                                                 jnp.where(theta <= 140.0, 0.0, 1.62 * (140.0 - theta))))
    return MAS2_PER_MUAS2 * (lmc + qso)


class AngularParallaxCovariance(tinygp.kernels.Kernel):
    """``parallax_covariance_mas2`` of the angle between two unit vectors (inputs of shape 3)."""

    def evaluate(self, X1, X2):
        chord = jnp.sqrt(jnp.sum(jnp.square(X1 - X2)))
        theta = jnp.degrees(2.0 * jnp.arcsin(jnp.minimum(0.5 * chord, 1.0)))
        return parallax_covariance_mas2(theta)


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    """(n, 3) unit vectors of sky positions in degrees."""
    ra, dec = np.radians(np.asarray(ra_deg, float)), np.radians(np.asarray(dec_deg, float))
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _tangent_plane(vectors: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gnomonic coordinates (degrees) of ``vectors`` about ``centre``, and the plane's axes."""
    east = np.cross([0.0, 0.0, 1.0], centre)
    east = east / np.linalg.norm(east) if np.linalg.norm(east) > 1e-12 else np.array([1.0, 0.0, 0.0])
    north = np.cross(centre, east)
    depth = vectors @ centre
    xy = np.degrees(np.stack([vectors @ east, vectors @ north], axis=-1) / depth[:, None])
    return xy, east, north


def _grid_nodes(vectors: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Unit vectors of a square grid in the tangent plane over the stars (one spacing beyond
    the farthest star from the centre)."""
    xy, east, north = _tangent_plane(vectors, centre)
    reach = float(np.max(np.hypot(xy[:, 0], xy[:, 1]))) + NODE_SPACING_DEG
    spacing = max(NODE_SPACING_DEG, 2.0 * reach / np.sqrt(4.0 * MAX_NODES / np.pi))
    ticks = np.arange(-reach, reach + 0.5 * spacing, spacing)
    gx, gy = np.meshgrid(ticks, ticks)
    inside = np.hypot(gx, gy) <= reach
    plane = np.radians(np.stack([gx[inside], gy[inside]], axis=-1))
    nodes = centre[None, :] + plane[:, :1] * east[None, :] + plane[:, 1:] * north[None, :]
    return nodes / np.linalg.norm(nodes, axis=1, keepdims=True)


@dataclass(frozen=True)
class OffsetFieldBasis:
    """The whitened projected-process basis of the offset field.

    ``stars`` (n, r): each star's offset is ``stars @ u``; ``centre`` (r,): the field at the
    stars' mean position (``parallax_offset``); ``captured`` (n,): each star's variance in the
    basis over ``V(0)``: below 1 where scales finer than the nodes are left out, and slightly
    above 1 (1.017-1.022 on M67) because dropping the formula's negative eigenvalues adds
    variance; ``num_nodes``: grid nodes before the eigenvectors were cut to r."""

    stars: np.ndarray
    centre: np.ndarray
    captured: np.ndarray
    num_nodes: int


def offset_field_basis(ra_deg, dec_deg) -> OffsetFieldBasis:
    """The basis of :class:`OffsetFieldBasis` for stars at ``ra_deg``, ``dec_deg`` (degrees)."""
    vectors = unit_vectors(ra_deg, dec_deg)
    mean = vectors.mean(axis=0)
    centre = mean / np.linalg.norm(mean)
    nodes = _grid_nodes(vectors, centre)
    kernel = AngularParallaxCovariance()
    with jax.enable_x64(True):  # eigenvalues spanning four decades, and K_nm Q / sqrt(lambda)
        k_mm = np.asarray(kernel(jnp.asarray(nodes), jnp.asarray(nodes)))
        k_nm = np.asarray(kernel(jnp.asarray(vectors), jnp.asarray(nodes)))
        k_cm = np.asarray(kernel(jnp.asarray(centre[None, :]), jnp.asarray(nodes)))
        prior = float(parallax_covariance_mas2(0.0))
    lam, q = np.linalg.eigh(0.5 * (k_mm + k_mm.T))
    keep = lam > EIGENVALUE_FLOOR * lam.max()
    whiten = q[:, keep] / np.sqrt(lam[keep])
    stars = k_nm @ whiten
    return OffsetFieldBasis(stars=stars, centre=(k_cm @ whiten)[0], captured=np.sum(stars**2, axis=1) / prior,
                            num_nodes=int(nodes.shape[0]))
