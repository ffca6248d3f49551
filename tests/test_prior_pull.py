"""A parameter the data pull far off its prior is flagged, with the numbers, in the result.

Truth: a normal mean with a Normal(0, tau) prior and n observations of known sd sigma has a
normal posterior with mean (n ybar / sigma^2) / (n / sigma^2 + 1 / tau^2), so the pull in
prior sds is known exactly; the engine's posterior mean must give it, and the warning must
appear exactly when it exceeds 4.
"""

from __future__ import annotations

import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import astroinfer
from astroinfer.engine.prior_pull import PULL_LIMIT, fixed_priors, prior_pulls

TAU, SIGMA, N = 0.01, 0.1, 100


def offset_model(y, sigma):
    mu = numpyro.sample("mu", dist.Normal(0.0, TAU))
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def hierarchical_model(y):
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("obs", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(0.0, scale))  # its prior depends on scale
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def exact_pull(ybar: float) -> float:
    precision = N / SIGMA**2 + 1 / TAU**2
    return abs(N * ybar / SIGMA**2 / precision) / TAU


@pytest.mark.parametrize("ybar", [0.003, 0.1])
def test_the_pull_matches_the_conjugate_posterior_and_warns_beyond_four_sd(ybar):
    rng = np.random.default_rng(0)
    noise = rng.normal(size=N)
    y = (ybar + SIGMA * (noise - noise.mean())).astype(np.float32)  # sample mean exactly ybar
    data = {"y": y, "sigma": SIGMA}
    res = astroinfer.sample(offset_model, data, method="nuts", seed=1, num_samples=2000, num_warmup=500)
    pull = prior_pulls(offset_model, data, res.idata.posterior)["mu"]
    expected = exact_pull(ybar)
    # Monte Carlo error of the posterior mean: posterior sd / sqrt(ESS) ~ 0.7 / sqrt(1000) prior sd
    assert abs(pull.pull - expected) < 0.1, (pull, expected)
    assert pull.prior_mean == 0.0 and np.isclose(pull.prior_sd, TAU)
    flagged = [m for m in res.diagnostics["warnings"] if m.startswith("mu:")]
    assert bool(flagged) == (expected > PULL_LIMIT)
    if flagged:
        assert f"{expected:.0f}" in flagged[0] or f"{pull.pull:.1f}" in flagged[0]


def test_sites_whose_prior_depends_on_other_sites_are_not_judged():
    y = np.linspace(-3.0, 3.0, 8).astype(np.float32)
    priors = fixed_priors(hierarchical_model, {"y": y})
    assert set(priors) == {"scale"}
    mean, sd = priors["scale"]
    np.testing.assert_allclose(mean, np.exp(0.5), rtol=1e-6)  # LogNormal(0, 1): mean e^(1/2)
    np.testing.assert_allclose(sd, np.sqrt((np.e - 1) * np.e), rtol=1e-6)


def test_the_warning_is_stored_in_the_result_file(tmp_path):
    y = (0.2 + np.zeros(N)).astype(np.float32)
    res = astroinfer.sample(offset_model, {"y": y, "sigma": SIGMA}, method="nuts", seed=0, num_samples=500,
                            num_warmup=300)
    path = tmp_path / "pulled.h5"
    res.save(path)
    stored = astroinfer.load(path).diagnostics["warnings"]
    assert any(m.startswith("mu:") and "prior sd from its prior" in m for m in stored)
