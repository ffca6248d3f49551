"""Proper-motion terms of the cluster + field mixture: each star's log likelihood of its
measured proper motion under the cluster and under the field (:func:`log_pm_marginals`),
and the NumPyro sites of the globals they need (:func:`pm_globals`).

Per star ``i`` with measured proper motion ``m_i = (pmra_i, pmdec_i)`` (mas/yr) and its
2x2 error covariance ``C_i`` (errors and ``pmra_pmdec_corr``)::

    cluster:  m_i ~ Normal2(mu_c, C_i + sigma_c^2 I),   sigma_c = sigma_v / (4.74 D / kpc)
    field:    m_i ~ f Normal2(mu_f, C_i + S_1) + (1 - f) Normal2(mu_f, C_i + S_2)
              S_1 = [[a^2, rho_1 a b], [rho_1 a b, b^2]],   a = 0.5 + field_pm_excess_ra,
              S_2 = the same with (1 + k) a, (1 + k) b, rho_2,  b = 0.5 + field_pm_excess_dec

Both are independent of the star's distance given its component, so they add to the
parallax terms of :mod:`.marginal` without any new integral.

- The members' internal dispersion is a velocity ``sigma_v`` (km/s,
  ``cluster_velocity_dispersion``) seen at the cluster's distance ``D``, so its prior can be
  physical (open clusters: 0.3-3 km/s). No perspective or projection effects: the cone is small.
- The field is a scale mixture about one mean: a core and a halo ``1 + k`` times broader
  (``k > 0``, so the two cannot swap labels), each at least
  :data:`~.options.FIELD_PM_MIN_SD` (0.5 mas/yr) wide per axis. One mean, because with a
  mean per component a chain on a simulated cone moved the core onto the cluster's motion,
  holding its members, while the "cluster" became a second, broad field component (1500
  nats below the right mode, the "cluster" 700 pc deep with a 26 km/s spread). One mean
  rules that out; a chain can still swap the cluster for the field's core from a poor start,
  which the start at the prior means (:data:`~.options.PM_NUTS_SETTINGS`) avoids.
- The field's proper motions are independent of its distances: a rough model (nearby
  field stars move faster on the sky), whose cost is that field stars near the cluster's
  motion and parallax count as members.

Stars without a usable proper motion (``proper_motion_used`` 0) get both terms 0: their
membership rests on the parallax alone.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from .options import FIELD_PM_MIN_SD, KM_S_PER_MAS_YR_KPC


def _log_normal2(dx, dy, c11, c22, c12):
    """log Normal2((dx, dy) | 0, [[c11, c12], [c12, c22]]), elementwise."""
    det = c11 * c22 - c12**2
    quad = (c22 * dx**2 - 2.0 * c12 * dx * dy + c11 * dy**2) / det
    return -math.log(2.0 * math.pi) - 0.5 * jnp.log(det) - 0.5 * quad


def log_pm_marginals(proper_motion, proper_motion_cov, proper_motion_used, params, distance):
    """Per star: (log cluster term, log field term) of its proper motion.

    ``proper_motion`` (stars, 2) in mas/yr; ``proper_motion_cov`` (stars, 3): var pmra,
    var pmdec, their covariance; ``proper_motion_used`` (stars,) 1 or 0; ``params`` a
    mapping with the names of :data:`~.options.PM_GLOBALS`; ``distance`` the cluster's (pc)."""
    x, y = proper_motion[:, 0], proper_motion[:, 1]
    v11, v22, v12 = proper_motion_cov[:, 0], proper_motion_cov[:, 1], proper_motion_cov[:, 2]
    dispersion = params["cluster_velocity_dispersion"] / (KM_S_PER_MAS_YR_KPC * distance / 1000.0)
    disp2 = dispersion**2
    log_c = _log_normal2(x - params["cluster_pmra"], y - params["cluster_pmdec"], v11 + disp2, v22 + disp2, v12)
    a = FIELD_PM_MIN_SD + params["field_pm_excess_ra"]
    b = FIELD_PM_MIN_SD + params["field_pm_excess_dec"]
    widen = 1.0 + params["field_pm_broadening"]
    dx, dy = x - params["field_pmra"], y - params["field_pmdec"]
    log_1 = _log_normal2(dx, dy, v11 + a**2, v22 + b**2, v12 + params["field_pm_corr_1"] * a * b)
    a2, b2 = widen * a, widen * b
    log_2 = _log_normal2(dx, dy, v11 + a2**2, v22 + b2**2, v12 + params["field_pm_corr_2"] * a2 * b2)
    fraction = params["field_pm_fraction"]
    log_f = jnp.logaddexp(jnp.log(fraction) + log_1, jnp.log1p(-fraction) + log_2)
    used = proper_motion_used
    return log_c * used, log_f * used


def pm_globals(pm_centre, field_pm_centre, field_pm_spread) -> dict:
    """The proper-motion globals' sample sites (mas/yr), priors centred on the catalog's
    own guesses (:func:`~.data.pm_prior_settings`): the cluster's mean within 5 mas/yr of
    the proper-motion peak of the stars at the cluster's parallax, its velocity dispersion
    LogNormal(log 1 km/s, 0.75) (0.2-4.5 km/s at 2 sd), the field's mean within its robust
    spread of the catalog's median, the core's widths in excess of 0.5 mas/yr a factor e
    about that spread, the halo 1 + LogNormal(log 2, 1) times broader."""
    pm_centre = jnp.asarray(pm_centre)
    field_pm_centre = jnp.asarray(field_pm_centre)
    field_pm_spread = jnp.asarray(field_pm_spread)
    p = {
        "cluster_pmra": numpyro.sample("cluster_pmra", dist.Normal(pm_centre[0], 5.0)),
        "cluster_pmdec": numpyro.sample("cluster_pmdec", dist.Normal(pm_centre[1], 5.0)),
        "cluster_velocity_dispersion": numpyro.sample("cluster_velocity_dispersion", dist.LogNormal(0.0, 0.75)),
        "field_pm_fraction": numpyro.sample("field_pm_fraction", dist.Uniform(0.0, 1.0)),
    }
    for axis, j in (("ra", 0), ("dec", 1)):
        p[f"field_pm{axis}"] = numpyro.sample(f"field_pm{axis}", dist.Normal(field_pm_centre[j], field_pm_spread[j]))
    p["field_pm_excess_ra"] = numpyro.sample("field_pm_excess_ra", dist.LogNormal(jnp.log(field_pm_spread[0]), 1.0))
    p["field_pm_excess_dec"] = numpyro.sample("field_pm_excess_dec", dist.LogNormal(jnp.log(field_pm_spread[1]), 1.0))
    p["field_pm_broadening"] = numpyro.sample("field_pm_broadening", dist.LogNormal(math.log(2.0), 1.0))
    for k in (1, 2):
        p[f"field_pm_corr_{k}"] = numpyro.sample(f"field_pm_corr_{k}", dist.Uniform(-0.95, 0.95))
    return p
