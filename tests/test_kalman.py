"""The Matern-3/2 Kalman-filter log-likelihood against tinygp and a dense Cholesky."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from conftest import matern32_covariance


@pytest.mark.parametrize("amp, scale", [(0.3, 0.05), (1.0, 0.4), (4.0, 3.0)])
def test_matches_a_dense_gaussian_process(amp, scale):
    import jax.numpy as jnp

    from astroinfer.kalman import matern32_log_likelihood

    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(-1.0, 1.0, 80))  # irregular spacing
    variance = rng.uniform(0.01, 0.09, x.size)  # one noise variance per point
    cov = matern32_covariance(x, amp, scale)
    residual = rng.multivariate_normal(np.zeros(x.size), cov) + np.sqrt(variance) * rng.normal(size=x.size)
    value = matern32_log_likelihood(jnp.asarray(x, jnp.float32), jnp.asarray(residual, jnp.float32),
                                    jnp.asarray(variance, jnp.float32), amp, scale)
    truth = multivariate_normal(np.zeros(x.size), cov + np.diag(variance)).logpdf(residual)
    assert float(value) == pytest.approx(truth, abs=2e-3 * max(1.0, abs(truth)) ** 0.5)


def test_agrees_with_tinygp_for_many_hyperparameters_at_once():
    import jax
    import jax.numpy as jnp
    from tinygp import GaussianProcess, kernels

    from astroinfer.kalman import matern32_log_likelihood

    rng = np.random.default_rng(4)
    x = jnp.asarray(np.sort(rng.uniform(0.0, 10.0, 300)), jnp.float32)
    residual = jnp.asarray(rng.normal(size=300), jnp.float32)
    amps = jnp.asarray(rng.uniform(0.1, 3.0, 16), jnp.float32)
    scales = jnp.asarray(rng.uniform(0.1, 5.0, 16), jnp.float32)

    def reference(amp, scale):
        gp = GaussianProcess(kernels.quasisep.Matern32(scale=scale, sigma=amp), x, diag=0.2)
        return gp.log_probability(residual)

    ours = jax.vmap(lambda a, s: matern32_log_likelihood(x, residual, 0.2, a, s))(amps, scales)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(jax.vmap(reference)(amps, scales)), rtol=2e-5)
