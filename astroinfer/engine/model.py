"""The one bridge from a NumPyro model to every sampler.

``ModelBridge`` turns ``model(**data)`` into pure functions on a flat vector in
unconstrained space: the log posterior density, its split into log prior and log
likelihood (nested sampling needs them apart), prior draws, and the map back to
constrained values including ``numpyro.deterministic`` sites. Samplers only ever see
these functions, so every method handles constrained sites, deterministic sites and
observed data the same way.

Every function takes an optional ``data``: without it the bridge's own data are used; with
it, another problem of the same structure and shapes (traced or not), so one bridge serves
compiled code that takes the data as an argument (see :mod:`astroinfer.engine.method`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.initialization import init_to_median
from numpyro.infer.util import _unconstrain_reparam, constrain_fn, initialize_model, log_density

from astroinfer.errors import ModelError

__all__ = ["ModelBridge", "ModelError", "check_prior_draws"]


@dataclass(frozen=True)
class _SiteInfo:
    latent_names: tuple[str, ...]
    observed_names: tuple[str, ...]
    deterministic_names: tuple[str, ...]


def _classify_sites(trace: dict) -> _SiteInfo:
    latent, observed, deterministic = [], [], []
    for name, site in trace.items():
        if site["type"] == "sample":
            if site["is_observed"]:
                observed.append(name)
            else:
                if getattr(site["fn"], "is_discrete", False):
                    raise ModelError(
                        f"model site '{name}' is a discrete latent variable; astroinfer samples "
                        "continuous parameters only (marginalise it out in the model)"
                    )
                latent.append(name)
        elif site["type"] == "deterministic":
            deterministic.append(name)
    return _SiteInfo(tuple(latent), tuple(observed), tuple(deterministic))


class _ModelInfo(NamedTuple):
    """What ``initialize_model`` tells about the model on the bridge's data."""

    potential_gen: Callable  # potential_gen(**data) -> potential energy of the params tree
    init_flat: jax.Array
    unravel: Callable
    sites: _SiteInfo
    model_trace: dict


def check_prior_draws(draws: jax.Array) -> jax.Array:
    """``draws`` if every prior draw is finite in unconstrained space, else ModelError."""
    if not bool(jnp.all(jnp.isfinite(draws))):
        raise ModelError(
            "prior draws are not finite in unconstrained space; nested sampling and "
            "flow-MC need a proper prior on every latent site"
        )
    return draws


class ModelBridge:
    """A NumPyro model and its data, seen as densities on a flat unconstrained vector.

    Constructing one is cheap; the model is first run (``initialize_model``) when a
    property or density needs it, and a model that cannot run raises ModelError then.
    """

    def __init__(self, model: Callable, data: dict[str, Any] | None = None, *, rng_seed: int = 0):
        self.model = model
        self.data = dict(data or {})
        self._rng_seed = rng_seed

    @functools.cached_property
    def _info(self) -> _ModelInfo:
        try:
            # dynamic_args: the potential takes the data as arguments.
            info = initialize_model(
                jax.random.PRNGKey(self._rng_seed),
                self.model,
                model_kwargs=self.data,
                init_strategy=init_to_median(num_samples=15),
                dynamic_args=True,
            )
        except (TypeError, KeyError) as err:
            raise ModelError(f"cannot run the model with the given data: {err}") from err
        init_tree = info.param_info.z
        if not init_tree:
            raise ModelError("the model has no latent sample sites to infer")
        flat, unravel = ravel_pytree(init_tree)
        return _ModelInfo(info.potential_fn, flat, unravel,
                          _classify_sites(info.model_trace), info.model_trace)

    @property
    def init_flat(self) -> jax.Array:
        """The initial point (prior medians) as a flat unconstrained vector."""
        return self._info.init_flat

    @property
    def ndim(self) -> int:
        return int(self._info.init_flat.shape[0])

    @property
    def sites(self) -> _SiteInfo:
        return self._info.sites

    @property
    def _model_trace(self) -> dict:
        return self._info.model_trace

    def _data(self, data: dict[str, Any] | None) -> dict[str, Any]:
        return self.data if data is None else data

    # -- pytree <-> flat -------------------------------------------------------------
    def unravel(self, flat: jax.Array) -> dict[str, jax.Array]:
        return self._info.unravel(flat)

    # -- densities on the flat unconstrained vector ---------------------------------
    def log_density(self, flat: jax.Array, data: dict[str, Any] | None = None) -> jax.Array:
        """Log posterior density (up to a constant) in unconstrained space."""
        return -self._info.potential_gen(**self._data(data))(self.unravel(flat))

    def log_prior_and_likelihood(self, flat: jax.Array, data: dict[str, Any] | None = None
                                 ) -> tuple[jax.Array, jax.Array]:
        """(log prior incl. Jacobian, log likelihood) at an unconstrained point, with the
        bridge's data or, for another problem of the same model, ``data``.

        Observed sites and user ``numpyro.factor`` terms are the likelihood; latent sites
        and the Jacobians of the constraining transforms are the prior. Each site's log
        density is weighted by its ``scale`` (``numpyro.handlers.scale``, subsampling).
        """
        params = self.unravel(flat)
        # numpyro's own reparametrisation of potential_energy (unconstrained value in, the
        # transform's Jacobian as a factor site out); its public functions only return the
        # sum, and the split needs the sites.
        substituted = handlers.substitute(
            self.model, substitute_fn=lambda site: _unconstrain_reparam(params, site)
        )
        _, trace = log_density(substituted, (), self._data(data), {})
        log_prior = jnp.zeros(())
        log_like = jnp.zeros(())
        for name, site in trace.items():
            if site["type"] != "sample":
                continue
            lp = site["fn"].log_prob(site["value"])
            if site.get("scale") is not None:
                lp = lp * site["scale"]
            lp = jnp.sum(lp)
            is_jacobian = name.startswith("_") and name.endswith("_log_det")
            if site["is_observed"] and not is_jacobian:
                log_like = log_like + lp
            else:
                log_prior = log_prior + lp
        return log_prior, log_like

    def log_prior(self, flat: jax.Array, data: dict[str, Any] | None = None) -> jax.Array:
        return self.log_prior_and_likelihood(flat, data)[0]

    def log_likelihood(self, flat: jax.Array, data: dict[str, Any] | None = None) -> jax.Array:
        return self.log_prior_and_likelihood(flat, data)[1]

    # -- draws -----------------------------------------------------------------------
    def prior_draw(self, key: jax.Array, data: dict[str, Any] | None = None) -> jax.Array:
        """One prior draw as a flat unconstrained vector (traceable: no checks)."""
        data = self._data(data)

        def prior_only():
            # Observed sites are sampled too (obs=None would change shapes), so block them.
            with handlers.block(hide_fn=lambda site: site.get("is_observed", False)):
                return self.model(**data)

        trace = handlers.trace(handlers.seed(prior_only, key)).get_trace()
        # In the flat vector's order; each site's support as the model gives it for ``data``.
        tree = {name: biject_to(trace[name]["fn"].support).inv(trace[name]["value"])
                for name in self.unravel(self.init_flat)}
        return ravel_pytree(tree)[0]

    def prior_draws(self, key: jax.Array, num: int, data: dict[str, Any] | None = None) -> jax.Array:
        """``num`` independent prior draws as flat unconstrained vectors, shape (num, ndim)."""
        draws = jax.jit(jax.vmap(lambda k: self.prior_draw(k, data)))(jax.random.split(key, num))
        return check_prior_draws(draws)

    def constrain(self, flat: jax.Array, data: dict[str, Any] | None = None) -> dict[str, jax.Array]:
        """Constrained latent values plus deterministic sites at one unconstrained point."""
        # The model is replayed on ``data``: numpyro's ``postprocess_fn`` (dynamic_args) keeps
        # the transforms of the data it was initialised with when the model has no
        # deterministic site, so a support set by the data (Uniform(0, A) with A from the
        # flux range) would map another problem's draws with the first problem's bounds.
        return constrain_fn(self.model, (), self._data(data), self.unravel(flat), return_deterministic=True)

    def constrain_many(self, flat_draws: jax.Array, data: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Apply :meth:`constrain` over leading axes (e.g. chain, draw)."""
        lead = flat_draws.shape[:-1]
        flat = flat_draws.reshape((-1, self.ndim))
        out = jax.jit(jax.vmap(lambda f: self.constrain(f, data)))(flat)
        return {k: np.asarray(v).reshape(lead + v.shape[1:]) for k, v in out.items()}
