"""Parameters the data pull far outside their prior: a warning stored with the result.

A posterior mean many prior standard deviations from the prior mean means the data and the
prior disagree. Either the prior is wrong, or the parameter is soaking up a misfit elsewhere
in the model (a global parallax offset pulled by a field model that does not fit the field
is the case that prompted this). :func:`prior_pull_warnings` checks every latent site whose
prior is fixed, that is, does not depend on other latent sites, and has a finite mean and
sd. Sites drawn conditionally on others (per-star distances given a cluster distance) have
no fixed prior to compare with and are left out, and so are sites a model marks with
``infer={"prior_pull": False}``: a flat prior over mixture weights (a Dirichlet(1, ..., 1))
has a mean and sd, but it says only that the data decide, and weights far from 1/K are no
disagreement.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np
import xarray as xr
from numpyro import handlers

__all__ = ["PULL_LIMIT", "PriorPull", "fixed_priors", "prior_pulls", "prior_pull_warnings"]

#: Prior sds between the posterior mean and the prior mean beyond which a warning is given.
PULL_LIMIT = 4.0


def _moments(fn) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        mean, var = np.asarray(fn.mean, dtype=float), np.asarray(fn.variance, dtype=float)
    except Exception:  # noqa: BLE001 - mixtures and custom likelihoods may define neither
        return None
    if mean.shape != var.shape or not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var)) and np.all(var > 0)):
        return None
    return mean, np.sqrt(var)


def fixed_priors(model: Callable, data: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(prior mean, prior sd) of each latent site of ``model(**data)`` whose prior is fixed:
    the same in two prior traces with different seeds (so it depends on no other latent
    site), with a finite mean and a positive, finite variance."""
    traces = [handlers.trace(handlers.seed(model, seed)).get_trace(**data) for seed in (0, 1)]
    priors = {}
    for name, site in traces[0].items():
        other = traces[1].get(name)
        if site["type"] != "sample" or site["is_observed"] or other is None:
            continue
        if not (site.get("infer") or {}).get("prior_pull", True):
            continue
        first, second = _moments(site["fn"]), _moments(other["fn"])
        if first is None or second is None or first[0].shape != second[0].shape:
            continue
        if np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1]):
            priors[name] = first
    return priors


class PriorPull(NamedTuple):
    """How far the data pull one site from its prior, at its farthest element ``index``."""

    pull: float  # |posterior mean - prior mean| / prior sd
    index: tuple[int, ...]
    prior_mean: float
    prior_sd: float
    posterior_mean: float


def prior_pulls(model: Callable, data: dict[str, Any], posterior: xr.Dataset) -> dict[str, PriorPull]:
    """Per fixed-prior site in ``posterior`` (draws with chain and draw axes first): its
    :class:`PriorPull`."""
    pulls = {}
    for name, (mean, sd) in fixed_priors(model, data).items():
        if name not in posterior:
            continue
        draws = np.asarray(posterior[name].values, dtype=float)
        post_mean = draws.reshape((-1,) + draws.shape[2:]).mean(axis=0)
        try:
            mean, sd = np.broadcast_to(mean, post_mean.shape), np.broadcast_to(sd, post_mean.shape)
        except ValueError:  # a site stored in another shape than its prior's: nothing to compare
            continue
        z = np.abs(post_mean - mean) / sd
        index = np.unravel_index(int(np.argmax(z)), z.shape) if z.ndim else ()
        pulls[name] = PriorPull(float(z[index]), tuple(int(i) for i in index), float(mean[index]),
                                float(sd[index]), float(post_mean[index]))
    return pulls


def prior_pull_warnings(model: Callable, data: dict[str, Any], posterior: xr.Dataset,
                        limit: float = PULL_LIMIT) -> list[str]:
    """One message per fixed-prior site whose posterior mean is more than ``limit`` prior sds
    from its prior mean."""
    messages = []
    for name, found in prior_pulls(model, data, posterior).items():
        if found.pull > limit:
            element = f"[{', '.join(map(str, found.index))}]" if found.index else ""
            messages.append(
                f"{name}{element}: the data pull it {found.pull:.1f} prior sd from its prior (prior "
                f"{found.prior_mean:.4g} +- {found.prior_sd:.4g}, posterior mean {found.posterior_mean:.4g}): "
                "the prior and the data disagree, or it absorbs a misfit elsewhere in the model"
            )
    return messages
