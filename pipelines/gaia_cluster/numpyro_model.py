"""The NumPyro models of gaia-cluster.

:func:`model` is the cluster + field mixture with every star's distance integrated out of
the likelihood (by the quadrature of :mod:`.marginal`). Per star ``i`` with parallax ``w_i``
and error ``s_i`` in mas, true distance ``r_i`` in pc::

    w_i | r_i        ~ Normal(1000 / r_i + parallax_offset, s_i)
    r_i              ~ member_fraction  * cluster profile(cluster_distance, cluster_size)
                       + (1 - member_fraction) * field
    field            = sum_k field_weights[g_i, k] p(r; L_k)           field_model "mixture"
                       (fixed L_k, weights per group g_i of stars of similar error: .field_mixture)
                    or p(r; field_scale)                                field_model "edsd"
    p(r; L)          = r^2 exp(-r / L) / (2 L^3)      exponentially decreasing space density

With ``offset_in_field=False`` (the pipeline's default, ``--offset systematic``) the offset
shifts the members' parallaxes only and the field's are taken as measured: the field's
distances are not known well enough (its density is a rough model) to measure Gaia's offset
from, so the field does not pull on it, the offset stays near its prior and the cluster
distance's error includes it. With ``offset_basis`` (``systematics="gp"``,
:mod:`.systematics`) the offset is a field over the sky, ``offset_basis @ offset_field``
per star with ``offset_field ~ Normal(0, 1)`` per basis vector, and ``parallax_offset`` its
value at the stars' mean position.

with the lognormal, gaussian or student cluster profile (the package's docstring defines
them). NUTS samples only the globals ``cluster_distance``, ``cluster_size``,
``member_fraction``, ``field_weights`` (or ``field_scale``) and ``parallax_offset`` (when fitted), and with proper
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

from .field_mixture import field_component_terms, log_field_mixture, star_log_weights
from .marginal import log_cluster_marginals, log_component_marginals
from .options import FIELD_MODELS, FIELD_SCALES_PC, OFFSET_PRIOR_SD, PROFILES
from .proper_motion import log_pm_marginals, pm_globals
from .selection import EVALUATION_NODES, cluster_window_probability, field_window_probabilities, log_selection


def _globals(distance_centre, distance_width, size_centre, size_width, field_centre, field_width, fit_offset,
             field_model="edsd", field_groups=1):
    """The globals' sample sites; the field's ``field_scale`` (single density) or
    ``field_weights`` (mixture) is returned as ``scale``."""
    distance = numpyro.sample("cluster_distance", dist.LogNormal(jnp.log(distance_centre), distance_width))
    size = numpyro.sample("cluster_size", dist.LogNormal(jnp.log(size_centre), size_width))
    fraction = numpyro.sample("member_fraction", dist.Uniform(0.0, 1.0))
    scale = (numpyro.sample("field_scale", dist.LogNormal(jnp.log(field_centre), field_width))
             if field_model == "edsd" else _field_weights(field_groups))
    offset = numpyro.sample("parallax_offset", dist.Normal(0.0, OFFSET_PRIOR_SD)) if fit_offset else 0.0
    return distance, size, fraction, scale, offset


def _offset_field(offset_basis, offset_centre_basis):
    """Each star's offset (mas) from the whitened offset field; records ``parallax_offset``,
    the field at the stars' mean position."""
    basis = jnp.asarray(offset_basis)
    u = numpyro.sample("offset_field", dist.Normal(0.0, 1.0).expand([basis.shape[1]]).to_event(1))
    numpyro.deterministic("parallax_offset", jnp.dot(jnp.asarray(offset_centre_basis), u))
    return basis @ u


def _field_weights(field_groups):
    """The mixture field's weights (groups, components), flat Dirichlet per group; left out
    of the prior-pull check, since a flat prior on a simplex says only that the data decide."""
    prior = dist.Dirichlet(jnp.ones(len(FIELD_SCALES_PC))).expand([int(field_groups)]).to_event(1)
    return numpyro.sample("field_weights", prior, infer={"prior_pull": False})


def _check_field(profile, field_model):
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if field_model not in FIELD_MODELS:
        raise ValueError(f"field_model must be one of {', '.join(FIELD_MODELS)}, got {field_model!r}")


def model(parallax, parallax_error, profile="lognormal", fit_offset=True, distance_centre=1000.0,
          distance_width=0.5, size_centre=10.0, size_width=1.0, field_centre=1000.0, field_width=1.0,
          field_table=None, field_table_domain=None, offset_in_field=True, field_model="edsd", field_group=None,
          field_groups=1, field_components=None, proper_motion=None, proper_motion_cov=None,
          proper_motion_used=None, pm_centre=None, field_pm_centre=None, field_pm_spread=None,
          parallax_window=None, field_window=None, offset_basis=None, offset_centre_basis=None):
    """Cluster + field mixture with every star's distance integrated out (see the module doc).

    ``field_model`` "edsd": one field density with a fitted ``field_scale``;
    ``field_table``/``field_table_domain`` (optional, :func:`with_field_table`) tabulate its
    term. "mixture" (what :func:`~.data.load` sets by default): the field of
    :mod:`.field_mixture`, weights per ``field_group`` (stars' group indices, ``field_groups``
    groups; all stars in one group when None); ``field_components`` (optional,
    :func:`~.field_mixture.with_field_components`) holds its per-star component terms.
    With ``proper_motion`` (and its covariance, usable-star mask and prior centres, from
    :func:`~.data.load`) each component's likelihood also has the proper-motion term of
    :mod:`.proper_motion`. With ``parallax_window`` (lo, hi in mas; a catalog cut in
    parallax) each star's likelihood is conditioned on its parallax falling inside
    (:mod:`.selection`); ``field_window`` (optional, from
    :func:`~.field_mixture.with_field_components`) holds the field components' part.
    ``offset_basis`` (stars, r) and ``offset_centre_basis`` (r,) (from :func:`~.data.load`
    with ``systematics="gp"``) make the members' offset a field over the sky."""
    _check_field(profile, field_model)
    if offset_basis is not None and offset_in_field:
        raise ValueError("an offset field (offset_basis) shifts the members' parallaxes only: offset_in_field "
                         "must be False")
    distance, size, fraction, scale, offset = _globals(distance_centre, distance_width, size_centre, size_width,
                                                       field_centre, field_width, fit_offset and offset_basis is None,
                                                       field_model, field_groups)
    if offset_basis is not None:
        offset = _offset_field(offset_basis, offset_centre_basis)
    w = jnp.asarray(parallax)
    s = jnp.asarray(parallax_error)
    if field_model == "edsd":
        log_c, log_f = log_component_marginals(w, s, profile=profile, distance=distance, size=size, scale=scale,
                                               offset=offset, offset_in_field=offset_in_field,
                                               field_table=field_table, field_table_domain=field_table_domain)
    else:
        weights = scale
        group = jnp.zeros(w.shape[0], jnp.int32) if field_group is None else field_group
        log_c = log_cluster_marginals(w, s, profile=profile, distance=distance, size=size, offset=offset)
        if field_components is None:
            field_w = w - offset if offset_in_field else w
            field_components = field_component_terms(field_w, s)
        log_f = log_field_mixture(star_log_weights(weights, group), field_components)
    if proper_motion is not None:
        pm = pm_globals(pm_centre, field_pm_centre, field_pm_spread)
        pm_c, pm_f = log_pm_marginals(jnp.asarray(proper_motion), jnp.asarray(proper_motion_cov),
                                      jnp.asarray(proper_motion_used), pm, distance)
        log_c, log_f = log_c + pm_c, log_f + pm_f
    per_star = jnp.logaddexp(jnp.log(fraction) + log_c, jnp.log1p(-fraction) + log_f)
    if parallax_window is not None:
        per_star = per_star - _log_kept(s, parallax_window, profile, distance, size, fraction, scale, offset,
                                        offset_in_field, field_model, field_group, field_window)
    numpyro.factor("parallax_likelihood", jnp.sum(per_star))


def _log_kept(s, window, profile, distance, size, fraction, scale, offset, offset_in_field, field_model,
              field_group, field_window):
    """Per star: log of the probability that the model puts its parallax inside ``window``."""
    cluster = cluster_window_probability(s, window, profile, distance, size, offset)
    if field_model == "edsd":
        weights, scales = jnp.ones((s.shape[0], 1)), jnp.reshape(scale, (1,))
    else:
        group = jnp.zeros(s.shape[0], jnp.int32) if field_group is None else jnp.asarray(field_group)
        weights, scales = scale[group], FIELD_SCALES_PC
    if field_window is None:
        field_window = field_window_probabilities(s, window, scales, shift=offset if offset_in_field else 0.0,
                                                  num_nodes=EVALUATION_NODES)
    return log_selection(fraction, cluster, weights, field_window)


def reference_model(parallax, parallax_error, profile="lognormal", fit_offset=True, distance_centre=1000.0,
                    distance_width=0.5, size_centre=10.0, size_width=1.0, field_centre=1000.0, field_width=1.0,
                    offset_in_field=True, field_model="edsd", field_group=None, field_groups=1):
    """The full-latent reference: one latent distance per star (``star_distance``), drawn from
    the same mixture (lognormal cluster profile only, either field model), the same priors
    on the globals.

    It shifts every star's parallax by the offset (``--offset fit`` or ``off``). A full-latent
    form of ``--offset systematic`` needs a latent distance per star in each component, and
    NUTS did not mix on it (chains of a 250-star catalog disagreed by 130 pc), so that mode is
    checked against brute-force integrals of its density instead."""
    if profile != "lognormal":
        raise ValueError("the full-latent reference model has the lognormal profile only")
    if fit_offset and not offset_in_field:
        raise ValueError("the full-latent reference model shifts every star's parallax by the offset: "
                         "load the data with offset='fit' or 'off'")
    _check_field(profile, field_model)
    distance, size, fraction, scale, offset = _globals(distance_centre, distance_width, size_centre, size_width,
                                                       field_centre, field_width, fit_offset, field_model, field_groups)
    w = jnp.asarray(parallax)
    cluster = dist.LogNormal(jnp.log(distance), size / distance)
    if field_model == "edsd":
        probs = jnp.stack([fraction, 1.0 - fraction])
        components = [cluster, dist.Gamma(3.0, 1.0 / scale)]
    else:
        weights = scale
        group = jnp.zeros(w.shape[0], jnp.int32) if field_group is None else field_group
        field_probs = (1.0 - fraction) * weights[jnp.asarray(group)]  # (stars, components)
        probs = jnp.concatenate([jnp.full((w.shape[0], 1), fraction), field_probs], axis=1)
        components = [cluster] + [dist.Gamma(3.0, 1.0 / scale_k) for scale_k in FIELD_SCALES_PC]
    with numpyro.plate("star", w.shape[0]):
        r = numpyro.sample("star_distance", dist.MixtureGeneral(dist.Categorical(probs=probs), components))
        numpyro.sample("parallax", dist.Normal(1000.0 / r + offset, jnp.asarray(parallax_error)), obs=w)
