"""The engine against analytic truth: posteriors, evidences, mode weights, determinism."""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats
from scipy.special import gammaln

import astroinfer

METHODS = ["nuts", "nested", "flowmc"]
# Settings that keep each run to seconds on 2 cores and are still accurate for these tests.
FAST = {
    "nuts": dict(num_warmup=500, num_chains=2),
    "nested": dict(num_live_points=400),
    "flowmc": dict(num_chains=16, num_warmup_loops=4),
}


# --- 4-D linear-Gaussian model: prior N(0, s0^2 I), y ~ N(A theta, s^2 I) --------------------
D, N_OBS, S0, S = 4, 6, 2.0, 0.7
_rng = np.random.default_rng(42)
A = _rng.normal(size=(N_OBS, D))
THETA_TRUE = _rng.normal(size=D)
Y = A @ THETA_TRUE + S * _rng.normal(size=N_OBS)


def linear_gaussian(A, y):
    theta = numpyro.sample("theta", dist.Normal(0.0, S0).expand([D]).to_event(1))
    numpyro.deterministic("theta_sum", theta.sum())
    numpyro.sample("y", dist.Normal(A @ theta, S).to_event(1), obs=y)


def linear_gaussian_truth():
    precision = np.eye(D) / S0**2 + A.T @ A / S**2
    cov = np.linalg.inv(precision)
    mean = cov @ A.T @ Y / S**2
    evidence_cov = S0**2 * A @ A.T + S**2 * np.eye(N_OBS)
    log_z = stats.multivariate_normal(np.zeros(N_OBS), evidence_cov).logpdf(Y)
    return mean, np.sqrt(np.diag(cov)), log_z


@pytest.fixture(scope="module", params=METHODS)
def gaussian_run(request):
    method = request.param
    data = dict(A=jnp.asarray(A, jnp.float32), y=jnp.asarray(Y, jnp.float32))
    return method, astroinfer.sample(linear_gaussian, data, method=method, seed=1, num_samples=2000, **FAST[method])


def test_gaussian_posterior_matches_analytic(gaussian_run):
    method, res = gaussian_run
    mean, sd, _ = linear_gaussian_truth()
    draws = res.idata.posterior["theta"].values.reshape(-1, D)
    assert np.all(np.abs(draws.mean(0) - mean) < 0.15 * sd), (method, draws.mean(0), mean, sd)
    assert np.all(np.abs(draws.std(0) / sd - 1) < 0.12), (method, draws.std(0), sd)
    # Deterministic sites come back for every method, computed from the same draws.
    np.testing.assert_allclose(res.idata.posterior["theta_sum"].values.reshape(-1), draws.sum(1), rtol=1e-4, atol=1e-4)
    assert "y" in res.idata.observed_data


def test_gaussian_evidence_matches_analytic(gaussian_run):
    method, res = gaussian_run
    _, _, log_z = linear_gaussian_truth()
    if method != "nested":
        assert res.log_evidence is None and res.log_evidence_err is None
        return
    assert res.log_evidence_err > 0
    assert abs(res.log_evidence - log_z) < max(0.25, 3 * res.log_evidence_err), (res.log_evidence, log_z)


def test_diagnostics_are_reported(gaussian_run):
    method, res = gaussian_run
    diag = res.diagnostics
    for key in ("compile_time_s", "run_time_s", "likelihood_evaluations", "ess_bulk", "warnings"):
        assert key in diag, key
    assert diag["run_time_s"] > 0 and diag["compile_time_s"] > 0
    if method == "nested":
        assert diag["ess_kish"] > 500
    else:
        assert diag["r_hat_max"] < 1.01
        assert diag["ess_bulk_min"] > 400


# --- constrained site: Gamma-Poisson conjugate pair ------------------------------------------
ALPHA, BETA = 2.0, 0.5
COUNTS = np.array([3, 7, 4, 6, 5, 2, 8, 5])


def gamma_poisson(counts):
    rate = numpyro.sample("rate", dist.Gamma(ALPHA, BETA))
    numpyro.sample("counts", dist.Poisson(rate), obs=counts)


@pytest.mark.parametrize("method", METHODS)
def test_constrained_site_gamma_poisson(method):
    res = astroinfer.sample(gamma_poisson, dict(counts=jnp.asarray(COUNTS)), method=method, seed=3,
                            num_samples=2000, **FAST[method])
    post = stats.gamma(ALPHA + COUNTS.sum(), scale=1 / (BETA + len(COUNTS)))
    draws = res.idata.posterior["rate"].values.ravel()
    assert draws.min() > 0
    assert abs(draws.mean() - post.mean()) < 0.15 * post.std()
    assert abs(draws.std() / post.std() - 1) < 0.12
    if method == "nested":
        a, b, n, k = ALPHA, BETA, len(COUNTS), COUNTS
        log_z = (a * np.log(b) - gammaln(a) + gammaln(a + k.sum()) - (a + k.sum()) * np.log(b + n)
                 - gammaln(k + 1).sum())
        assert abs(res.log_evidence - log_z) < max(0.25, 3 * res.log_evidence_err)


# --- 2-D bimodal target: weights 0.3 / 0.7, modes 8 sd apart ---------------------------------
def bimodal():
    x = numpyro.sample("x", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
    left = dist.Normal(jnp.array([-4.0, 0.0]), 1.0).to_event(1).log_prob(x)
    right = dist.Normal(jnp.array([4.0, 0.0]), 1.0).to_event(1).log_prob(x)
    numpyro.factor("mixture", jnp.logaddexp(jnp.log(0.3) + left, jnp.log(0.7) + right))


@pytest.mark.parametrize("method", ["nested", "flowmc"])
def test_bimodal_weights(method):
    res = astroinfer.sample(bimodal, {}, method=method, seed=0, num_samples=3000, **FAST[method])
    x = res.idata.posterior["x"].values
    assert abs((x[..., 0] > 0).mean() - 0.7) < 0.05
    if method == "nested":
        # Z = int N(x; 0, 100 I) mixture(x) dx, both modes give the same factor.
        log_z = stats.norm(0, np.sqrt(101)).logpdf(4.0) + stats.norm(0, np.sqrt(101)).logpdf(0.0)
        assert abs(res.log_evidence - log_z) < max(0.25, 3 * res.log_evidence_err)


# --- same seed, same draws --------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_same_seed_gives_identical_draws(method):
    small = {
        "nuts": dict(num_warmup=100, num_chains=2),
        "nested": dict(num_live_points=100),
        "flowmc": dict(num_chains=8, num_warmup_loops=2, steps_per_loop=50, max_epochs=20),
    }[method]
    runs = [astroinfer.sample(gamma_poisson, dict(counts=jnp.asarray(COUNTS)), method=method, seed=seed,
                              num_samples=200, **small) for seed in (7, 7, 8)]
    first, again, other = (r.idata.posterior["rate"].values for r in runs)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


# --- options are validated --------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="hmc"), "unknown method"),
        (dict(method="nuts", num_samples=-5), "num_samples"),
        (dict(method="nuts", num_samples=2.5), "num_samples"),
        (dict(method="nuts", num_warmup=0), "num_warmup"),
        (dict(method="nested", num_chains=2), "unknown option"),
        (dict(method="flowmc", local_kernel="gibbs"), "local_kernel"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(astroinfer.OptionError, match=message):
        astroinfer.sample(gamma_poisson, dict(counts=jnp.asarray(COUNTS)), **kwargs)


def test_chain_method_follows_the_devices(monkeypatch):
    """A device per chain: parallel; one accelerator: vectorised; one CPU device: sequential;
    an explicit choice always wins."""
    from astroinfer.engine import nuts

    monkeypatch.setattr(nuts.jax, "local_device_count", lambda: 2)
    assert nuts.chain_method_for(2) == "parallel"
    assert nuts.chain_method_for(1) == "sequential"
    monkeypatch.setattr(nuts.jax, "local_device_count", lambda: 1)
    monkeypatch.setattr(nuts.jax, "default_backend", lambda: "gpu")
    assert nuts.chain_method_for(4) == "vectorized"
    assert nuts.chain_method_for(4, "sequential") == "sequential"
    monkeypatch.setattr(nuts.jax, "default_backend", lambda: "cpu")
    assert nuts.chain_method_for(4) == "sequential"
