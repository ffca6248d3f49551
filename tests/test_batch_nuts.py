"""Batched NUTS (``sample_batch(method="nuts")``) against independent truths.

Truths: the normal-gamma conjugate posterior (analytic means, sds, quantiles of a location
and a positive precision, per problem); ArviZ's R-hat and bulk ESS on the same chains; the
exact grid (``method="grid"``) on the ionosphere dTEC model in the low-noise regime.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import astroinfer
from astroinfer.engine.batch import nuts as batch_nuts

NUM = 48  # problems
NOBS = 8  # observations per problem
PRIOR = {"m0": 0.0, "k0": 0.1, "a0": 2.0, "b0": 2.0}


def normal_gamma(y, m0, k0, a0, b0):
    """y_i ~ N(mu, 1/tau), mu | tau ~ N(m0, 1/(k0 tau)), tau ~ Gamma(a0, rate b0)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    tau = numpyro.sample("tau", dist.Gamma(a0, b0))
    mu = numpyro.sample("mu", dist.Normal(m0, 1.0 / jnp.sqrt(k0 * tau)))
    numpyro.sample("y", dist.Normal(mu, 1.0 / jnp.sqrt(tau)), obs=y)


def analytic(y: np.ndarray):
    """Posterior of each problem (rows of y): mean and sd of mu (Student t) and tau (gamma)."""
    y = np.asarray(y, np.float64)
    n = y.shape[1]
    ybar = y.mean(axis=1)
    m0, k0, a0, b0 = PRIOR["m0"], PRIOR["k0"], PRIOR["a0"], PRIOR["b0"]
    kn, an = k0 + n, a0 + n / 2
    mn = (k0 * m0 + n * ybar) / kn
    bn = b0 + 0.5 * ((y - ybar[:, None]) ** 2).sum(axis=1) + k0 * n * (ybar - m0) ** 2 / (2 * kn)
    t = stats.t(df=2 * an, loc=mn, scale=np.sqrt(bn / (an * kn)))
    g = stats.gamma(an, scale=1 / bn)
    return {"mu": (mn, np.sqrt(bn / (kn * (an - 1))), t), "tau": (an / bn, np.sqrt(an) / bn, g)}


def simulate(num: int = NUM, seed: int = 7):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-5, 5, num)
    sigma = rng.uniform(0.5, 2.0, num)
    y = rng.normal(mu[:, None], sigma[:, None], (num, NOBS)).astype(np.float32)
    return {"y": y}, {k: np.float32(v) for k, v in PRIOR.items()}


def run(data, shared, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", astroinfer.ConvergenceWarning)  # none expected: unimodal, well mixed
        return astroinfer.sample_batch(normal_gamma, data, method="nuts", seed=11, shared=shared,
                                       num_draws=200, **kw)


@pytest.fixture(scope="module")
def conjugate():
    data, shared = simulate()
    return data, shared, run(data, shared, chunk_size=NUM)


def test_means_sds_and_quantiles_match_the_conjugate_posterior(conjugate):
    data, shared, res = conjugate
    s = res.idata.problem_summary
    truth = analytic(data["y"])
    for name in ("mu", "tau"):
        mean_true, sd_true, dist = truth[name]
        ess = s[f"{name}_ess_bulk"].values
        assert np.all(ess > 150), (name, ess.min())
        z = (s[f"{name}_mean"].values - mean_true) / (sd_true / np.sqrt(ess))
        assert np.all(np.abs(z) < 4.5), (name, z)
        assert 0.4 < np.mean(z**2) < 2.0, (name, np.mean(z**2))  # MCSE from the ESS is right, too
        rel = s[f"{name}_sd"].values / sd_true - 1
        assert np.all(np.abs(rel) < 4 * 0.9 / np.sqrt(ess)), (name, rel)
        assert abs(rel.mean()) < 0.03, (name, rel.mean())  # no bias in the spread
        q = s[f"{name}_quantiles"].values  # (problem, quantile)
        q_true = dist.ppf(np.asarray(s.coords["quantile"].values)[:, None]).T
        middle = slice(1, 4)  # 0.16, 0.5, 0.84: the tails' MC error is larger
        assert np.all(np.abs(q[:, middle] - q_true[:, middle]) < 0.35 * sd_true[:, None]), name
        # One mode per problem, holding (nearly) every draw, with the marginal's mean and sd.
        assert np.all(s[f"{name}_num_modes"].values == 1)
        assert np.all(s[f"{name}_mode_mass"].values[:, 0] > 0.99)
        assert np.all(np.abs(s[f"{name}_mode_mean"].values[:, 0] - s[f"{name}_mean"].values) < 0.05 * sd_true)
    # The draws kept in the posterior group follow the same posterior.
    draws = res.idata.posterior["mu"].values[0]  # (draw, problem)
    assert draws.shape == (200, NUM)
    z = (draws.mean(axis=0) - truth["mu"][0]) / (truth["mu"][1] / np.sqrt(np.minimum(200, s.mu_ess_bulk.values)))
    assert np.mean(np.abs(z) < 4) > 0.9


def test_result_layout_and_diagnostics(conjugate):
    _, _, res = conjugate
    s = res.idata.problem_summary
    assert res.method == "batch-nuts"
    assert np.all(s.method_code.values == 4) and res.diagnostics["problems_nuts"] == NUM
    assert np.all(np.isnan(s.log_evidence.values)) and np.all(np.isnan(s.log_evidence_err.values))
    for key in ("mu_r_hat", "tau_r_hat", "mu_ess_bulk", "divergences", "acceptance_rate", "step_size"):
        assert s[key].dims == ("problem",), key
    assert np.all(s.mu_r_hat.values < 1.05) and np.all(s.tau_r_hat.values < 1.05)
    assert res.diagnostics["divergences"] == int(s.divergences.values.sum())
    assert 1.0 <= res.diagnostics["r_hat_max"] < 1.05
    assert 0.6 < float(s.acceptance_rate.values.mean()) < 0.98


def test_results_do_not_depend_on_chunking(conjugate):
    data, shared, whole = conjugate
    chunked = run(data, shared, chunk_size=20)  # chunks of 20, 20, 8 problems; groups padded
    a, b = whole.idata.problem_summary, chunked.idata.problem_summary
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    np.testing.assert_array_equal(whole.idata.posterior["mu"].values, chunked.idata.posterior["mu"].values)


def test_rhat_and_bulk_ess_equal_arviz():
    """The vectorised diagnostics against ArviZ, problem by problem, on AR(1) chains with
    positive and negative autocorrelation and on chains stuck apart."""
    import arviz as az

    rng = np.random.default_rng(3)
    chains = []
    for phi, shift in ((0.0, 0.0), (0.6, 0.0), (0.95, 0.0), (-0.5, 0.0), (0.3, 2.0), (0.0, 0.3)):
        x = np.zeros((2, 301))
        e = rng.normal(size=x.shape)
        for t in range(1, x.shape[1]):
            x[:, t] = phi * x[:, t - 1] + e[:, t]
        x[1] += shift
        chains.append(x)
    chains = np.stack(chains)  # (problem, chain, draw)
    r_hat, ess = batch_nuts.split_rhat(chains), batch_nuts.ess_bulk(chains)
    for i, x in enumerate(chains):  # ArviZ takes one (chain, draw) array at a time
        assert r_hat[i] == pytest.approx(float(az.rhat(x)), rel=1e-9)
        assert ess[i] == pytest.approx(float(az.ess(x, method="bulk")), rel=1e-9)
    assert r_hat[4] > 1.3 and r_hat[0] < 1.02  # chains stuck apart are flagged


def ionosphere_problems(num: int, noise: float, seed: int = 5):
    """Simulated dTEC problems (24 channels, 120-168 MHz; phi0 uniform), as the pipeline's model takes them."""
    from astroinfer.pipelines import ionosphere as iono

    freq = np.linspace(120e6, 168e6, 24)
    rng = np.random.default_rng(seed)
    kappa = iono.kappa_from_noise(noise)
    dtec = rng.uniform(-0.4, 0.4, num)
    phase = np.angle(np.exp(1j * (iono.TEC_CONSTANT * dtec[:, None] / freq + rng.uniform(-np.pi, np.pi, (num, 1))
                                  + rng.vonmises(0.0, kappa, (num, freq.size)))))
    data = {"phase": phase.astype(np.float32), "weight": np.ones_like(phase, np.float32)}
    shared = {"freq": freq.astype(np.float32), "kappa": np.float32(kappa), "dtec_max": np.float32(1.0)}
    return data, shared


def test_ionosphere_low_noise_agrees_with_the_exact_grid():
    """dTEC with phi0 marginalised, noise 0.3 rad: unimodal posteriors (sd ~ 0.005 TECU) in a
    likelihood with side lobes; every problem's NUTS mean within 4 MCSE of the grid's."""
    from astroinfer.pipelines import ionosphere as iono

    num = 32
    data, shared = ionosphere_problems(num, 0.3)
    grid = astroinfer.sample_batch(iono.model_dtec, data, method="grid", seed=0, shared=shared, num_draws=10,
                                   grid_kernel="astroinfer.pipelines.ionosphere:DTEC_KERNEL", chunk_size=num)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", astroinfer.ConvergenceWarning)
        nuts = astroinfer.sample_batch(iono.model_dtec, data, method="nuts", seed=0, shared=shared, num_draws=10)
    g, n = grid.idata.problem_summary, nuts.idata.problem_summary
    assert np.all(g.method_code.values == 0) and np.all(g.dtec_num_modes.values == 1)
    mcse = g.dtec_sd.values / np.sqrt(n.dtec_ess_bulk.values)
    err = n.dtec_mean.values - g.dtec_mean.values
    assert np.all(np.abs(err) < 4 * mcse), err / mcse
    assert np.median(np.abs(err) / g.dtec_sd.values) < 0.1
    np.testing.assert_allclose(n.dtec_sd.values, g.dtec_sd.values, rtol=0.2)
    assert np.all(n.dtec_r_hat.values < 1.05) and np.all(n.dtec_num_modes.values == 1)
    assert int(n.divergences.values.sum()) == 0


@pytest.mark.parametrize("options, message", [
    ({"num_chains": 0}, "num_chains must be an integer >= 1"),
    ({"num_samples": 2.5}, "num_samples must be an integer >= 4"),
    ({"num_warmup": -1}, "num_warmup must be an integer >= 1"),
    ({"target_accept_prob": 1.5}, r"target_accept_prob must be a number in \(0, 1\)"),
    ({"max_tree_depth": 20}, "max_tree_depth must be at most 15"),
    ({"group_size": True}, "group_size must be an integer >= 1"),
    ({"init_candidates": 0}, "init_candidates must be an integer >= 1"),
    ({"mode_min_mass": 1.0}, r"mode_min_mass must be a number in \[0, 1\)"),
    ({"num_live_points": 100}, "unknown option.*'nuts': num_live_points"),
    ({"num_samples": 10, "num_chains": 2, "num_draws": 50}, r"num_draws \(50\) exceeds"),
])
def test_bad_options_are_refused(options, message):
    data, shared = simulate(4)
    options = dict(options)
    num_draws = options.pop("num_draws", 10)
    with pytest.raises(astroinfer.OptionError, match=message) as info:
        astroinfer.sample_batch(normal_gamma, data, method="nuts", shared=shared, num_draws=num_draws, **options)
    assert "\n" not in str(info.value)


def test_vector_latent_sites_are_refused():
    import numpyro
    import numpyro.distributions as dist

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0).expand([2]))
        numpyro.sample("y", dist.Normal(mu.sum(), 1.0), obs=y)

    with pytest.raises(astroinfer.ModelError, match="site 'mu' has shape"):
        astroinfer.sample_batch(model, {"y": np.zeros((3, 4), np.float32)}, method="nuts")


def test_improper_priors_are_refused():
    import numpyro
    import numpyro.distributions as dist

    def model(y):
        x = numpyro.sample("x", dist.ImproperUniform(dist.constraints.real, (), ()))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=y)

    with pytest.raises(astroinfer.ModelError, match="prior cannot be sampled"):
        astroinfer.sample_batch(model, {"y": np.zeros((3, 4), np.float32)}, method="nuts")


@pytest.mark.slow  # compiles the model again in a process with two devices (about a minute)
def test_results_do_not_depend_on_the_number_of_devices(conjugate, tmp_path):
    data, shared, whole = conjugate
    script = tmp_path / "two_devices.py"
    script.write_text(
        "import sys, warnings, numpy as np, jax\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import test_batch_nuts as t\n"
        "assert len(jax.devices()) == 2\n"
        "data, shared = t.simulate()\n"
        "res = t.run(data, shared, chunk_size=t.NUM)\n"
        "np.save(sys.argv[2], res.idata.posterior['mu'].values)\n")
    out = tmp_path / "mu.npy"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, str(script), str(Path(__file__).parent), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(np.load(out), whole.idata.posterior["mu"].values)


@pytest.mark.slow  # starts a Dask LocalCluster whose two workers each compile (about a minute)
def test_dask_workers_give_the_same_results_as_in_process():
    """Workers are processes with one device each, given the spec and their data slice."""
    from astroinfer.pipelines import ionosphere as iono

    data, shared = ionosphere_problems(32, 0.3, seed=8)
    kw = dict(method="nuts", seed=2, shared=shared, num_draws=10, chunk_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", astroinfer.ConvergenceWarning)
        local = astroinfer.sample_batch(iono.model_dtec, data, **kw)
        dask = astroinfer.sample_batch(iono.model_dtec, data, scheduler="local", **kw)
    np.testing.assert_array_equal(local.idata.posterior["dtec"].values, dask.idata.posterior["dtec"].values)
    for name in local.idata.problem_summary.data_vars:
        np.testing.assert_array_equal(local.idata.problem_summary[name].values, dask.idata.problem_summary[name].values,
                                      err_msg=name)


@pytest.mark.slow  # a second compilation, for the new data shape
def test_data_of_another_shape_compiles_again(conjugate):
    data, shared, _ = conjugate
    fewer = {"y": data["y"][:8, :5]}  # 5 observations per problem instead of 8
    res = run(fewer, shared)
    truth = analytic(fewer["y"])
    s = res.idata.problem_summary
    z = (s.mu_mean.values - truth["mu"][0]) / (truth["mu"][1] / np.sqrt(s.mu_ess_bulk.values))
    assert np.all(np.abs(z) < 4.5), z


@pytest.mark.slow
def test_chains_stuck_in_different_modes_are_flagged():
    """Two narrow, far-apart modes: where a problem's two chains start in different modes
    they never meet, and its R-hat says so (with a ConvergenceWarning for the run)."""
    import numpyro
    import numpyro.distributions as dist

    def two_modes(centre):
        x = numpyro.sample("x", dist.Uniform(-10.0, 10.0))
        numpyro.factor("like", numpyro.distributions.MixtureSameFamily(
            dist.Categorical(probs=np.array([0.5, 0.5], np.float32)),
            dist.Normal(np.array([-5.0, 5.0], np.float32) + centre, 0.1)).log_prob(x))

    data = {"centre": np.linspace(-0.5, 0.5, 32).astype(np.float32)}
    with pytest.warns(astroinfer.ConvergenceWarning, match=r"R-hat > 1\.05"):
        res = astroinfer.sample_batch(two_modes, data, method="nuts", seed=1, num_draws=20, init_candidates=1)
    s = res.idata.problem_summary
    split = s.x_mode_mass.values[:, 1] > 0.2  # both modes visited: each by one chain
    assert 3 <= split.sum() <= 29, split.sum()
    assert np.all(s.x_r_hat.values[split] > 1.5)
    assert np.all(s.x_r_hat.values[~split] < 1.05)
    assert np.all(s.x_num_modes.values[split] == 2)
    assert res.diagnostics["problems_r_hat_above_1_05"] >= split.sum()
