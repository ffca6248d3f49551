"""The NumPyro models of gaia-cluster.

:func:`model` is the cluster + field mixture with every star's distance integrated out of
the likelihood (by the quadrature of :mod:`.marginal`). Per star ``i`` with parallax ``w_i``
and error ``s_i`` in mas, true distance ``r_i`` in pc::

    w_i | r_i        ~ Normal(1000 / r_i + parallax_offset, s_i)
    r_i              ~ member_fraction  * cluster profile(cluster_distance, cluster_size)
                       + (1 - member_fraction) * field(field_scale)
    field(L)         = r^2 exp(-r / L) / (2 L^3)      exponentially decreasing space density

With ``offset_in_field=False`` (the pipeline's default, ``--offset systematic``) the offset
shifts the members' parallaxes only and the field's are taken as measured: the field's
distances are not known well enough (its density is a rough model) to measure Gaia's offset
from, so the field does not pull on it, the offset stays near its prior and the cluster
distance's error includes it.

with the lognormal, gaussian or student cluster profile (the package's docstring defines
them). NUTS samples only the globals ``cluster_distance``, ``cluster_size``,
``member_fraction``, ``field_scale`` and ``parallax_offset`` (when fitted), and with proper
motions the globals of :mod:`.proper_motion`, whose per-star terms multiply each
component's parallax term.

:func:`reference_model` is the full-latent model (one latent distance per star, the
lognormal profile) used to prove that the marginalised model gives the same posterior.

The module is not called ``model``: importing a submodule sets it as the package's
attribute of that name, which would replace the :func:`model` the package exports.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from .marginal import log_component_marginals
from .options import OFFSET_PRIOR_SD, PROFILES
from .proper_motion import log_pm_marginals, pm_globals


def _globals(distance_centre, distance_width, size_centre, size_width, field_centre, field_width, fit_offset):
    distance = numpyro.sample("cluster_distance", dist.LogNormal(jnp.log(distance_centre), distance_width))
    size = numpyro.sample("cluster_size", dist.LogNormal(jnp.log(size_centre), size_width))
    fraction = numpyro.sample("member_fraction", dist.Uniform(0.0, 1.0))
    scale = numpyro.sample("field_scale", dist.LogNormal(jnp.log(field_centre), field_width))
    offset = numpyro.sample("parallax_offset", dist.Normal(0.0, OFFSET_PRIOR_SD)) if fit_offset else 0.0
    return distance, size, fraction, scale, offset


def model(parallax, parallax_error, profile="lognormal", fit_offset=True, distance_centre=1000.0,
          distance_width=0.5, size_centre=10.0, size_width=1.0, field_centre=1000.0, field_width=1.0,
          field_table=None, field_table_domain=None, offset_in_field=True, proper_motion=None,
          proper_motion_cov=None, proper_motion_used=None, pm_centre=None, field_pm_centre=None,
          field_pm_spread=None):
    """Cluster + field mixture with every star's distance integrated out (see the module doc);
    ``field_table``/``field_table_domain`` (optional, :func:`with_field_table`) tabulate the
    field term. With ``proper_motion`` (and its covariance, usable-star mask and prior
    centres, from :func:`~.data.load`) each component's likelihood also has the proper-motion
    term of :mod:`.proper_motion`."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    distance, size, fraction, scale, offset = _globals(distance_centre, distance_width, size_centre, size_width,
                                                       field_centre, field_width, fit_offset)
    w = jnp.asarray(parallax)
    s = jnp.asarray(parallax_error)
    log_c, log_f = log_component_marginals(w, s, profile=profile, distance=distance, size=size, scale=scale,
                                           offset=offset, offset_in_field=offset_in_field,
                                           field_table=field_table, field_table_domain=field_table_domain)
    if proper_motion is not None:
        pm = pm_globals(pm_centre, field_pm_centre, field_pm_spread)
        pm_c, pm_f = log_pm_marginals(jnp.asarray(proper_motion), jnp.asarray(proper_motion_cov),
                                      jnp.asarray(proper_motion_used), pm, distance)
        log_c, log_f = log_c + pm_c, log_f + pm_f
    per_star = jnp.logaddexp(jnp.log(fraction) + log_c, jnp.log1p(-fraction) + log_f)
    numpyro.factor("parallax_likelihood", jnp.sum(per_star))


def reference_model(parallax, parallax_error, profile="lognormal", fit_offset=True, distance_centre=1000.0,
                    distance_width=0.5, size_centre=10.0, size_width=1.0, field_centre=1000.0, field_width=1.0,
                    offset_in_field=True):
    """The full-latent reference: one latent distance per star (``star_distance``), drawn from
    the same mixture (lognormal cluster profile only), the same priors on the globals.

    It shifts every star's parallax by the offset (``--offset fit`` or ``off``). A full-latent
    form of ``--offset systematic`` needs a latent distance per star in each component, and
    NUTS did not mix on it (chains of a 250-star catalog disagreed by 130 pc), so that mode is
    checked against brute-force integrals of its density instead."""
    if profile != "lognormal":
        raise ValueError("the full-latent reference model has the lognormal profile only")
    if fit_offset and not offset_in_field:
        raise ValueError("the full-latent reference model shifts every star's parallax by the offset: "
                         "load the data with offset='fit' or 'off'")
    distance, size, fraction, scale, offset = _globals(distance_centre, distance_width, size_centre, size_width,
                                                       field_centre, field_width, fit_offset)
    w = jnp.asarray(parallax)
    with numpyro.plate("star", w.shape[0]):
        mixing = dist.Categorical(probs=jnp.stack([fraction, 1.0 - fraction]))
        components = [dist.LogNormal(jnp.log(distance), size / distance), dist.Gamma(3.0, 1.0 / scale)]
        r = numpyro.sample("star_distance", dist.MixtureGeneral(mixing, components))
        numpyro.sample("parallax", dist.Normal(1000.0 / r + offset, jnp.asarray(parallax_error)), obs=w)
