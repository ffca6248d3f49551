"""The one bridge from a NumPyro model to every sampler.

``ModelBridge`` turns ``model(**data)`` into pure functions on a flat vector in
unconstrained space: the log posterior density, its split into log prior and log
likelihood (nested sampling needs them apart), prior draws, and the map back to
constrained values including ``numpyro.deterministic`` sites. Samplers only ever see
these functions, so every method handles constrained sites, deterministic sites and
observed data the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer.util import (
    _unconstrain_reparam,
    initialize_model,
    log_density,
)
from numpyro.infer.initialization import init_to_median

from astroinfer.errors import ModelError

__all__ = ["ModelBridge", "ModelError"]




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


class ModelBridge:
    """A NumPyro model and its data, seen as densities on a flat unconstrained vector."""

    def __init__(self, model: Callable, data: dict[str, Any] | None = None, *, rng_seed: int = 0):
        self.model = model
        self.data = dict(data or {})
        key = jax.random.PRNGKey(rng_seed)
        try:
            info = initialize_model(
                key,
                model,
                model_kwargs=self.data,
                init_strategy=init_to_median(num_samples=15),
            )
        except (TypeError, KeyError) as err:
            raise ModelError(f"cannot run the model with the given data: {err}") from err
        self._postprocess = info.postprocess_fn
        self._potential_tree = info.potential_fn
        init_tree = info.param_info.z
        if not init_tree:
            raise ModelError("the model has no latent sample sites to infer")
        flat, self._unravel = ravel_pytree(init_tree)
        self.init_flat = flat
        self.ndim = int(flat.shape[0])
        self.sites = _classify_sites(info.model_trace)
        self._model_trace = info.model_trace

    # -- pytree <-> flat -------------------------------------------------------------
    def unravel(self, flat: jax.Array) -> dict[str, jax.Array]:
        return self._unravel(flat)

    # -- densities on the flat unconstrained vector ---------------------------------
    def log_density(self, flat: jax.Array) -> jax.Array:
        """Log posterior density (up to a constant) in unconstrained space."""
        return -self._potential_tree(self._unravel(flat))

    def log_prior_and_likelihood(self, flat: jax.Array, data: dict[str, Any] | None = None
                                 ) -> tuple[jax.Array, jax.Array]:
        """(log prior incl. Jacobian, log likelihood) at an unconstrained point, with the
        bridge's data or, for a batch of problems of one model, another problem's ``data``.

        Observed sites and user ``numpyro.factor`` terms are the likelihood; latent sites
        and the Jacobians of the constraining transforms are the prior.
        """
        params = self._unravel(flat)
        substituted = handlers.substitute(
            self.model, substitute_fn=lambda site: _unconstrain_reparam(params, site)
        )
        _, trace = log_density(substituted, (), self.data if data is None else data, {})
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

    def log_prior(self, flat: jax.Array) -> jax.Array:
        return self.log_prior_and_likelihood(flat)[0]

    def log_likelihood(self, flat: jax.Array) -> jax.Array:
        return self.log_prior_and_likelihood(flat)[1]

    # -- draws -----------------------------------------------------------------------
    def prior_draws(self, key: jax.Array, num: int) -> jax.Array:
        """``num`` independent prior draws as flat unconstrained vectors, shape (num, ndim)."""
        names = self.sites.latent_names

        def one(k):
            tr = handlers.trace(handlers.seed(self._prior_only_model, k)).get_trace()
            constrained = {n: tr[n]["value"] for n in names}
            return self._unconstrain(constrained)

        draws = jax.jit(jax.vmap(one))(jax.random.split(key, num))
        if not bool(jnp.all(jnp.isfinite(draws))):
            raise ModelError(
                "prior draws are not finite in unconstrained space; nested sampling and "
                "flow-MC need a proper prior on every latent site"
            )
        return draws

    def _prior_only_model(self):
        # Observed sites are sampled too (obs=None would change shapes), so block them.
        with handlers.block(hide_fn=lambda site: site.get("is_observed", False)):
            return self.model(**self.data)

    def _unconstrain(self, constrained: dict[str, jax.Array]) -> jax.Array:
        from numpyro.distributions.transforms import biject_to

        tree = {}
        for name in self.unravel(self.init_flat):
            site = self._model_trace[name]
            tree[name] = biject_to(site["fn"].support).inv(constrained[name])
        return ravel_pytree(tree)[0]

    def constrain(self, flat: jax.Array) -> dict[str, jax.Array]:
        """Constrained latent values plus deterministic sites at one unconstrained point."""
        return self._postprocess(self._unravel(flat))

    def constrain_many(self, flat_draws: jax.Array) -> dict[str, np.ndarray]:
        """Apply :meth:`constrain` over leading axes (e.g. chain, draw)."""
        lead = flat_draws.shape[:-1]
        flat = flat_draws.reshape((-1, self.ndim))
        out = jax.jit(jax.vmap(self.constrain))(flat)
        return {k: np.asarray(v).reshape(lead + v.shape[1:]) for k, v in out.items()}
