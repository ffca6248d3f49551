"""Every method honours the protocol of astroinfer.engine.method, as blackjax tests its kernels:
declared defaults and checks, ``build`` once, ``run`` on new data; the data are an argument
of the compiled code, so a second run on new data of the same shapes compiles nothing."""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

import astroinfer
from astroinfer.engine import METHODS, method_defaults
from astroinfer.engine.method import Method, build_for, merge_data, split_data
from astroinfer.engine.model import ModelBridge
from astroinfer.engine.timing import CompileTimer

# --- a 2-D Gaussian mean: prior N(0, S0^2 I), N_OBS observations y_i ~ N(mu, S^2 I) -----------
N_OBS, S0, S = 10, 3.0, 1.0
FAST = {
    "nuts": dict(num_warmup=300),
    "nested": dict(num_live_points=300),
    "flowmc": dict(num_chains=16, num_warmup_loops=4),
}


def gaussian_mean(y, prior_sd, likelihood="normal"):
    # prior_sd (a Python float) and likelihood (a string) are static structure; y is traced.
    assert likelihood == "normal"
    mu = numpyro.sample("mu", dist.Normal(0.0, prior_sd).expand([2]).to_event(1))
    numpyro.deterministic("mu_sum", mu.sum())
    numpyro.sample("y", dist.Normal(mu, S).to_event(1), obs=y)


def problem(shift: float, seed: int) -> dict:
    y = np.random.default_rng(seed).normal(size=(N_OBS, 2)) * S + shift
    return {"y": jnp.asarray(y, jnp.float32), "prior_sd": S0, "likelihood": "normal"}


def truth(data: dict) -> tuple[np.ndarray, float, float]:
    """Posterior mean, posterior sd and log-evidence of ``gaussian_mean`` on ``data``."""
    y = np.asarray(data["y"], dtype=np.float64)
    precision = 1 / S0**2 + N_OBS / S**2
    mean = y.sum(0) / S**2 / precision
    cov = S0**2 * np.ones((N_OBS, N_OBS)) + S**2 * np.eye(N_OBS)
    log_z = sum(stats.multivariate_normal(np.zeros(N_OBS), cov).logpdf(y[:, j]) for j in range(2))
    return mean, 1 / np.sqrt(precision), log_z


@pytest.mark.parametrize("name", list(METHODS))
def test_declares_defaults_and_checks_options(name):
    method = METHODS[name]
    assert isinstance(method, Method) and method.name == name
    assert dict(method.defaults) == method_defaults(name)
    assert method.check({}) == method_defaults(name)
    for option, allowed in method.choices.items():
        assert method.defaults[option] in allowed
    with pytest.raises(astroinfer.OptionError, match=f"unknown option.*method '{name}'"):
        method.check({"no_such_option": 1})


@pytest.fixture(scope="module", params=list(METHODS))
def built(request):
    name = request.param
    method = METHODS[name]
    return name, method.build(ModelBridge(gaussian_mean, problem(1.0, 0)), method.check(FAST[name]))


@pytest.mark.parametrize("shift, seed", [(1.0, 0), (-2.0, 1)])
def test_posterior_and_evidence_match_analytic(built, shift, seed):
    """One build, two problems: the second run sees its own data, not the first's."""
    name, functions = built
    data = problem(shift, seed)
    run = METHODS[name].run(functions, data, seed=seed, num_samples=1500)
    mean, sd, log_z = truth(data)
    draws = run.posterior["mu"].reshape(-1, 2)
    assert np.all(np.abs(draws.mean(0) - mean) < 0.15 * sd), (name, draws.mean(0), mean, sd)
    assert np.all(np.abs(draws.std(0) / sd - 1) < 0.12), (name, draws.std(0), sd)
    np.testing.assert_allclose(run.posterior["mu_sum"].reshape(-1), draws.sum(1), rtol=1e-4, atol=1e-4)
    if name == "nested":
        assert abs(run.log_evidence - log_z) < max(0.25, 3 * run.log_evidence_err), (run.log_evidence, log_z)
    else:
        assert run.log_evidence is None


def bounded_mean(y, upper):
    # A support set by the (traced) data, behind to_event (which numpyro does not inspect
    # for data-set bounds), and no deterministic site: numpyro's own postprocessing would
    # then keep the bounds of the data the method was built with.
    a = numpyro.sample("a", dist.Uniform(0.0, upper).expand([1]).to_event(1))
    numpyro.sample("y", dist.Normal(a, 1.0).to_event(1), obs=y[:, None])


def bounded_problem(upper: float, centre: float) -> dict:
    y = centre + np.random.default_rng(0).normal(size=5)
    return {"y": jnp.asarray(y, jnp.float32), "upper": np.float32(upper)}


@pytest.mark.parametrize("name", list(METHODS))
def test_draws_of_new_data_lie_in_that_datas_support(name):
    """Built on data with upper = 1, run on data with upper = 10 and observations near 7: the
    draws follow the second problem's posterior (a normal truncated to (0, 10)), not draws
    squeezed into the first problem's (0, 1)."""
    method = METHODS[name]
    functions = method.build(ModelBridge(bounded_mean, bounded_problem(1.0, 0.5)), method.check(FAST[name]))
    data = bounded_problem(10.0, 7.0)
    draws = method.run(functions, data, seed=0, num_samples=1500).posterior["a"].reshape(-1)
    ybar, sd = float(np.mean(np.asarray(data["y"], dtype=np.float64))), 1 / np.sqrt(5)
    posterior = stats.truncnorm((0 - ybar) / sd, (10 - ybar) / sd, loc=ybar, scale=sd)
    assert abs(draws.mean() - posterior.mean()) < 0.15 * sd, (name, draws.mean(), posterior.mean())
    assert abs(draws.std() / posterior.std() - 1) < 0.12, (name, draws.std(), posterior.std())


# A fixed iteration budget for nested sampling (both runs stop at max_iterations): the dead
# points then have the same count, so even the evidence and resampling steps see one shape.
REUSE = {
    "nuts": dict(num_warmup=100),
    "nested": dict(num_live_points=100, steps_per_chunk=10, max_iterations=30),
    "flowmc": dict(num_chains=8, num_warmup_loops=2, steps_per_loop=50, max_epochs=20),
}


@pytest.mark.parametrize("name, options", [
    ("nested", {}), ("nuts", {}), ("nuts", {"chain_method": "vectorized"}), ("flowmc", {}),
])
def test_second_run_on_new_data_compiles_nothing(name, options):
    method = METHODS[name]
    functions = method.build(ModelBridge(gaussian_mean, problem(1.0, 0)), method.check({**REUSE[name], **options}))
    first = method.run(functions, problem(1.0, 0), seed=0, num_samples=100)
    with CompileTimer() as timer:
        second = method.run(functions, problem(-2.0, 1), seed=0, num_samples=100)
    assert timer.backend_compiles == 0
    assert not np.array_equal(first.posterior["mu"], second.posterior["mu"])


def test_build_for_builds_once_per_structure():
    nested = METHODS["nested"]
    first = build_for(nested, gaussian_mean, problem(1.0, 0), REUSE["nested"])
    assert build_for(nested, gaussian_mean, problem(-2.0, 1), REUSE["nested"]) is first
    assert build_for(nested, gaussian_mean, {**problem(1.0, 0), "prior_sd": 2.0}, REUSE["nested"]) is not first
    assert build_for(nested, gaussian_mean, problem(1.0, 0), {**REUSE["nested"], "num_delete": 20}) is not first


def test_data_as_constants_is_what_sample_runs():
    """engine.sample compiles the data in: the same draws as the protocol's run with
    data_as_constants=True."""
    data = problem(1.0, 0)
    method = METHODS["nested"]
    options = {"num_live_points": 100}
    functions = method.build(ModelBridge(gaussian_mean, data), method.check(options))
    run = method.run(functions, data, seed=3, num_samples=200, data_as_constants=True)
    res = astroinfer.sample(gaussian_mean, data, method="nested", seed=3, num_samples=200, **options)
    np.testing.assert_array_equal(res.idata.posterior["mu"].values, run.posterior["mu"])


def test_data_of_another_structure_is_refused():
    method = METHODS["nested"]
    functions = method.build(ModelBridge(gaussian_mean, problem(1.0, 0)), method.check(REUSE["nested"]))
    with pytest.raises(astroinfer.ModelError, match="structure"):
        method.run(functions, {**problem(1.0, 0), "prior_sd": 2.0}, seed=0, num_samples=10)


def test_split_data_keeps_arrays_dynamic_and_the_rest_static():
    data = {"y": np.ones(3), "n": 2, "name": "a", "off": None, "pair": (1.5, np.zeros(2)), "s": np.float32(1)}
    structure, arrays = split_data(data)
    assert len(arrays) == 3  # y, the array in pair, the NumPy scalar
    assert sorted(map(repr, dict(structure.static).values())) == ["'a'", "1.5", "2"]
    assert split_data({**data, "y": np.zeros(3)})[0] == structure
    assert split_data({**data, "n": 3})[0] != structure
    back = merge_data(structure, arrays)
    assert back["name"] == "a" and back["off"] is None and back["pair"][0] == 1.5 and back["n"] == 2
    assert back["y"] is data["y"]


# --- the batch methods (sample_batch): the same protocol for many problems at once ----------
def batch_gaussian(y, sigma):
    # One scalar mean per problem, on a bounded prior (the grid needs a box).
    mu = numpyro.sample("mu", dist.Uniform(-5.0, 5.0))
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def batch_problems(seed: int, num: int = 32, n_obs: int = 8):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(-2.0, 2.0, num)
    y = (truth[:, None] + rng.normal(size=(num, n_obs))).astype(np.float32)
    return {"y": y}, {"sigma": np.float32(1.0)}


BATCH_FAST = {"grid": {}, "nested": {"num_live_points": 64, "num_importance": 0}, "nuts": {"num_warmup": 200}}


@pytest.mark.parametrize("name", ["grid", "nested", "nuts"])
def test_batch_methods_declare_defaults_and_checks(name):
    from astroinfer.engine.batch import METHODS as BATCH, BatchMethod, method_defaults as batch_defaults

    method = BATCH[name]
    assert isinstance(method, BatchMethod) and method.name == name
    assert dict(method.defaults) == batch_defaults(name)
    data, shared = batch_problems(0)
    assert method.latent_names(batch_gaussian, {**shared, "y": data["y"][0]}) == ("mu",)
    with pytest.raises(astroinfer.OptionError, match=f"unknown option.*batch method '{name}'"):
        astroinfer.sample_batch(batch_gaussian, data, method=name, shared=shared, no_such_option=1)


@pytest.mark.parametrize("name", ["grid", "nested", "nuts"])
def test_batch_second_run_on_new_data_compiles_nothing_and_matches_the_posterior(name):
    """Each problem's posterior is N(ybar, 1/n) (truncated far out by the prior box): the
    means must match, and new problems of the same shapes reuse the compiled chunk."""
    runs = []
    for seed in (1, 2):
        data, shared = batch_problems(seed)
        with CompileTimer() as timer:
            res = astroinfer.sample_batch(batch_gaussian, data, method=name, seed=0, shared=shared, num_draws=50,
                                          chunk_size=32, **BATCH_FAST[name])
        runs.append(timer.backend_compiles)
        mean = res.idata.problem_summary["mu_mean"].values
        ybar, sd = data["y"].mean(axis=1), 1 / np.sqrt(data["y"].shape[1])
        assert np.sqrt(np.mean(((mean - ybar) / sd) ** 2)) < 0.15, name
    assert runs[0] > 0 and runs[1] == 0, runs
