"""Flow-MC on the geometries it is for: correlated, multimodal and curved targets."""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import astroinfer

COV4 = np.array([[1.0, 0.8, 0.3, 0.0], [0.8, 1.0, 0.5, 0.2], [0.3, 0.5, 1.0, 0.6], [0.0, 0.2, 0.6, 1.0]]) * 4.0
MEAN4 = np.array([1.0, -2.0, 0.5, 3.0])


def correlated_gaussian():
    numpyro.sample("x", dist.MultivariateNormal(jnp.asarray(MEAN4), jnp.asarray(COV4)))


def bimodal(dim):
    shift = jnp.zeros(dim).at[0].set(4.0)

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 10.0).expand([dim]).to_event(1))
        left = dist.Normal(-shift, 1.0).to_event(1).log_prob(x)
        right = dist.Normal(shift, 1.0).to_event(1).log_prob(x)
        numpyro.factor("mixture", jnp.logaddexp(jnp.log(0.3) + left, jnp.log(0.7) + right))

    return model


def banana():
    """Five pairs u ~ N(0, 2^2), v | u ~ N(0.5 (u^2 - 4), 1): E v = 0, Var v = 0.25 Var(u^2) + 1 = 9."""
    u = numpyro.sample("u", dist.Normal(0.0, 2.0).expand([5]).to_event(1))
    numpyro.sample("v", dist.Normal(0.5 * (u**2 - 4.0), 1.0).to_event(1))


@pytest.mark.parametrize("kernel", ["mala", "hmc", "nuts"])
def test_correlated_gaussian_means(kernel):
    res = astroinfer.sample(correlated_gaussian, {}, method="flowmc", seed=0, num_samples=500,
                            local_kernel=kernel, num_chains=10, num_warmup_loops=3)
    draws = res.idata.posterior["x"].values.reshape(-1, 4)
    sd = np.sqrt(np.diag(COV4))
    assert np.all(np.abs(draws.mean(0) - MEAN4) < 0.1 * sd), (draws.mean(0), MEAN4)
    assert np.all(np.abs(draws.std(0) / sd - 1) < 0.1)
    assert res.diagnostics["local_kernel"] == kernel


def test_compilations_do_not_grow_with_loops_or_draws():
    short = astroinfer.sample(bimodal(3), {}, method="flowmc", seed=0, num_samples=100, num_chains=8,
                              num_warmup_loops=2, target_global_acceptance=1.0, max_epochs=30)
    long = astroinfer.sample(bimodal(3), {}, method="flowmc", seed=0, num_samples=600, num_chains=8,
                             num_warmup_loops=5, target_global_acceptance=1.0, max_epochs=30)
    assert long.diagnostics["num_training_loops"] == 4 > short.diagnostics["num_training_loops"] == 1
    assert long.diagnostics["backend_compiles"] <= short.diagnostics["backend_compiles"]


def test_stored_flow_is_reused_and_skips_training(tmp_path):
    model = bimodal(2)
    first = astroinfer.sample(model, {}, method="flowmc", seed=0, num_samples=500, num_chains=16)
    assert first.diagnostics["num_training_loops"] >= 1
    path = first.save(tmp_path / "first.h5")
    from astroinfer.cli import main

    figure = tmp_path / "flow.png"
    assert main(["plot", str(path), "--kind", "flow", "-o", str(figure)]) == 0
    assert figure.stat().st_size > 10_000
    again = astroinfer.sample(model, {}, method="flowmc", seed=1, num_samples=2000, num_chains=16,
                              reuse_flow=str(path))
    assert again.diagnostics["flow_reused"] and again.diagnostics["num_training_loops"] == 0
    assert again.diagnostics["global_acceptance"] > 0.3
    x = again.idata.posterior["x"].values
    assert abs((x[..., 0] > 0).mean() - 0.7) < 0.05
    assert again.diagnostics["mode_switches"] > 100


def test_stored_flow_of_another_model_is_refused(tmp_path):
    first = astroinfer.sample(bimodal(2), {}, method="flowmc", seed=0, num_samples=100, num_chains=8,
                              num_warmup_loops=2, max_epochs=20)
    path = first.save(tmp_path / "first.h5")
    with pytest.raises(ValueError, match="another model"):
        astroinfer.sample(correlated_gaussian, {}, method="flowmc", seed=0, num_samples=100, reuse_flow=str(path))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_bimodal_10d_weight(seed):
    res = astroinfer.sample(bimodal(10), {}, method="flowmc", seed=seed, num_samples=1000)
    x = res.idata.posterior["x"].values
    assert abs((x[..., 0] > 0).mean() - 0.7) < 0.03


@pytest.mark.slow
def test_banana_10d_moments():
    res = astroinfer.sample(banana, {}, method="flowmc", seed=0, num_samples=2000, local_kernel="nuts")
    v = res.idata.posterior["v"].values.reshape(-1, 5)
    u = res.idata.posterior["u"].values.reshape(-1, 5)
    assert abs(v.var(0).mean() / 9.0 - 1) < 0.10
    assert abs(u.var(0).mean() / 4.0 - 1) < 0.10
    assert abs(v.mean()) < 0.3
