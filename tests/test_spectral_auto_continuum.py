"""spectral-lines ``--continuum auto``: the Legendre continuum with its coefficients integrated
out, its degree chosen by evidence, and ``--lines auto`` on continua that are not straight.

Truths: a dense float64 Gaussian marginal likelihood (scipy), the closed-form evidence and
degree posterior of a spectrum without lines (a linear Gaussian model), and simulated spectra
whose continua (two sinusoids, a cubic) are outside the fitted polynomial family.
"""

from __future__ import annotations

import math
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from astropy.table import Table
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import astroinfer
from astroinfer.pipelines import spectral_lines as sl
from pipelines.spectral_lines import auto_continuum
from pipelines.spectral_lines.legendre import (
    integrated_log_likelihood, integrated_log_likelihood_jitter, legendre_design, legendre_series, marginal_basis,
)


def _dense_log_likelihood(residual, variance, degree):
    design = legendre_design(np.linspace(-1.0, 1.0, residual.size), degree)
    cov = np.diag(variance) + sl.COEF_SD ** 2 * design @ design.T
    return multivariate_normal(np.zeros(residual.size), cov).logpdf(residual)


def test_legendre_series_is_numpys_and_a_line_at_degree_one():
    x = np.linspace(-1.0, 1.0, 101)
    coef = np.random.default_rng(0).normal(size=9)
    ours = np.asarray(legendre_series(jnp.asarray(x), jnp.asarray(coef)))
    np.testing.assert_allclose(ours, np.polynomial.legendre.legval(x, coef), atol=2e-5)
    np.testing.assert_allclose(np.asarray(legendre_series(jnp.asarray(x), jnp.asarray([0.5, -2.0]))),
                               0.5 - 2.0 * x, atol=1e-6)


@pytest.mark.parametrize("noise", ["errors", "fitted", "jitter"])
def test_integrated_likelihood_equals_the_dense_gaussian(noise):
    rng = np.random.default_rng(3)
    n, max_degree = 300, 12
    x = np.linspace(-1.0, 1.0, n)
    sigma = rng.uniform(0.1, 0.3, n)
    lines = 0.8 * np.exp(-0.5 * ((x - 0.2) / 0.03) ** 2)
    flux = 1.5 + 0.6 * np.sin(5.0 * x) + lines + sigma * rng.normal(size=n)
    f32 = jnp.float32
    for degree in (0, 1, 4, 12):
        if noise == "errors":
            basis = marginal_basis(x, flux, sigma, max_degree)
            ours = integrated_log_likelihood(jnp.asarray(lines, f32), jnp.asarray(sigma, f32), degree, basis, 1.0)
            variance = sigma ** 2
        elif noise == "fitted":
            basis = marginal_basis(x, flux, None, max_degree)
            ours = integrated_log_likelihood(jnp.asarray(lines, f32), None, degree, basis, f32(0.25))
            variance = np.full(n, 0.25 ** 2)
        else:
            ours = integrated_log_likelihood_jitter(jnp.asarray(flux - lines, f32), jnp.asarray(sigma, f32), degree,
                                                    jnp.asarray(legendre_design(x, max_degree), f32),
                                                    f32(math.log(0.1)))
            variance = sigma ** 2 + 0.1 ** 2
        dense = _dense_log_likelihood(flux - lines, variance, degree)
        assert abs(float(ours) - dense) < 2e-3 * max(1.0, abs(dense)) ** 0.5, (degree, float(ours), dense)


def test_evidence_and_degree_posterior_without_lines_match_the_closed_form():
    """K = 0 with known errors is a linear Gaussian model for every degree: Z(d) is a
    Gaussian density, the auto evidence is their mean over d = 0..D, and the degree's
    posterior is proportional to Z(d)."""
    rng = np.random.default_rng(5)
    n, max_degree = 200, 6
    x = np.linspace(-1.0, 1.0, n)
    sigma = np.full(n, 0.05)
    flux = legendre_design(x, 3) @ np.array([0.2, 0.5, -0.4, 0.15]) + sigma * rng.normal(size=n)
    data = {"x": x.astype(np.float32), "flux": flux.astype(np.float32), "sigma": sigma.astype(np.float32),
            "num_lines": 0, "profile": "gaussian", "continuum": "auto", "degree": max_degree, "kernel": "matern32",
            "jitter": False, "sign": "emission", "amp_max": 5.0, "width_min": 0.01, "width_max": 0.25}
    log_z_d = np.array([_dense_log_likelihood(flux, sigma ** 2, d) for d in range(max_degree + 1)])
    exact = logsumexp(log_z_d) - math.log(max_degree + 1)
    exact_probability = np.exp(log_z_d - logsumexp(log_z_d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sl.nested_fit(data, seed=0, num_samples=2000)
    assert abs(fit["log_evidence"] - exact) < 4.0 * fit["log_evidence_err"] + 0.05, (fit["log_evidence"], exact)
    assert int(np.argmax(fit["degree_probability"])) == int(np.argmax(exact_probability)) == 3
    assert 0.5 * np.abs(fit["degree_probability"] - exact_probability).sum() < 0.1


def _wavy_spectrum(path, num_pixels, seed=0):
    """The issue's acceptance spectrum: 6500-6620 Angstrom, continuum 10 + 0.8 sin(w/9) +
    0.5 cos(w/23), one line (amplitude 4, sigma 2.5 Angstrom at 6563), noise 0.3."""
    rng = np.random.default_rng(seed)
    w = np.linspace(6500.0, 6620.0, num_pixels)
    flux = (10.0 + 0.8 * np.sin(w / 9.0) + 0.5 * np.cos(w / 23.0)
            + 4.0 * np.exp(-0.5 * ((w - 6563.0) / 2.5) ** 2) + 0.3 * rng.normal(size=w.size))
    Table({"wavelength": w, "flux": flux, "error": np.full(w.size, 0.3)}).write(path, overwrite=True)
    return path


def _fit(path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return astroinfer.run_pipeline("spectral-lines", path, load_options={"lines": "auto", **options})


def _check_one_line_recovered(result):
    assert int(result.idata.model_comparison.attrs["chosen_num_lines"]) == 1
    post = result.idata.posterior
    centre = np.asarray(post["line_center"]).ravel()
    fwhm = np.asarray(post["line_fwhm"]).ravel()
    assert abs(centre.mean() - 6563.0) < 3.0 * centre.std()
    assert abs(fwhm.mean() - 2.5 * sl.GAUSS_FWHM) < 3.0 * fwhm.std()
    assert result.idata.continuum_comparison.attrs["chosen_degree"] >= 5  # two periods need a high degree


def test_lines_auto_on_a_wavy_continuum_finds_the_one_line(tmp_path):
    """A shorter version of the issue's spectrum (600 pixels, up to 2 lines): the default
    continuum chooses one line; a straight continuum invents more for the wiggles."""
    path = _wavy_spectrum(tmp_path / "wavy.csv", 600)
    _check_one_line_recovered(_fit(path, max_lines=2))
    straight = _fit(path, max_lines=2, continuum="poly")
    assert int(straight.idata.model_comparison.attrs["chosen_num_lines"]) == 2


@pytest.mark.slow
def test_the_issues_wavy_spectrum_with_the_defaults(tmp_path):
    """3000 pixels, --lines auto (K = 0..3) with every default: one line, centre and FWHM
    within 3 sd of the truth."""
    _check_one_line_recovered(_fit(_wavy_spectrum(tmp_path / "wavy.csv", 3000)))


def test_fixed_k_with_auto_continuum_chooses_the_degree(tmp_path):
    path = _wavy_spectrum(tmp_path / "wavy.csv", 600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = astroinfer.run_pipeline("spectral-lines", path, load_options={"lines": 1})
    comparison = result.idata.continuum_comparison
    assert comparison.attrs["chosen_degree"] == int(np.argmax(comparison["degree_probability"].values))
    assert result.idata.constant_data.attrs["degree"] == comparison.attrs["chosen_degree"]
    assert result.idata.constant_data.attrs["continuum"] == "poly"
    centre = np.asarray(result.idata.posterior["line_center"]).ravel()
    assert abs(centre.mean() - 6563.0) < 3.0 * centre.std()
    assert "model_comparison" not in result.idata.groups()


def test_auto_model_data_whitens_by_the_errors_and_keeps_the_structure():
    x = np.linspace(-1.0, 1.0, 50, dtype=np.float32)
    data = {"x": x, "flux": np.ones(50, np.float32), "sigma": np.full(50, 0.5, np.float32), "num_lines": 1,
            "profile": "gaussian", "continuum": "auto", "degree": 4, "kernel": "matern32", "jitter": False,
            "sign": "emission", "amp_max": 5.0, "width_min": 0.01, "width_max": 0.25}
    out = auto_continuum.model_data(data, 4)
    assert out["basis"].q.shape == (50, 5) and "continuum" not in out and "design" not in out
    np.testing.assert_allclose(out["basis"].q.T @ out["basis"].q, np.eye(5), atol=1e-5)
    jittered = auto_continuum.model_data({**data, "jitter": True}, 4)
    assert "basis" not in jittered and jittered["design"].shape == (50, 5)
