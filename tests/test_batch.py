"""The batch engine against an independent brute-force truth.

Truth: for each simulated dTEC problem, the joint (dTEC, phi0) posterior on a dense float64
grid (6001 dTEC x 160 phi0 nodes; the phi0 sum converges like exp(-n^2 / (2 |S|))) with the von Mises likelihood written out channel by
channel and phi0 integrated *numerically* (the engine integrates it analytically with a
Bessel function), modes found by a separate loop over the marginal.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import i0e, logsumexp

import astroinfer
from astroinfer.pipelines import ionosphere as iono

FREQ = np.linspace(120e6, 168e6, 24)
DTEC_MAX = 1.0
KERNEL = "astroinfer.pipelines.ionosphere:DTEC_KERNEL"


def simulate_problems(num: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    kappa = iono.kappa_from_noise(noise)
    dtec = rng.uniform(-0.4, 0.4, num)
    phi0 = rng.uniform(-np.pi, np.pi, num)
    noise_draws = rng.vonmises(0.0, kappa, size=(num, FREQ.size))
    phase = np.angle(np.exp(1j * (iono.TEC_CONSTANT * dtec[:, None] / FREQ + phi0[:, None] + noise_draws)))
    data = {"phase": phase.astype(np.float32), "weight": np.ones_like(phase, np.float32)}
    shared = {"freq": FREQ.astype(np.float32), "kappa": np.float32(kappa), "dtec_max": np.float32(DTEC_MAX)}
    return data, shared, dtec


def brute_force(phase: np.ndarray, kappa: float, n_dtec: int = 6001, n_phi0: int = 160):
    """log-evidence, marginal mean/sd and modes (mass, location) of one problem, float64."""
    d = np.linspace(-DTEC_MAX, DTEC_MAX, n_dtec)
    p = np.linspace(-np.pi, np.pi, n_phi0, endpoint=False)  # periodic: plain mean is exact-ish
    a = iono.TEC_CONSTANT / FREQ.astype(np.float64)
    log_norm = FREQ.size * (np.log(2 * np.pi) + np.log(i0e(kappa)) + kappa)
    log_like_dp = np.empty((n_dtec, n_phi0))
    for j, phi0 in enumerate(p):
        resid = phase[None, :].astype(np.float64) - a[None, :] * d[:, None] - phi0
        log_like_dp[:, j] = kappa * np.cos(resid).sum(axis=1) - log_norm
    log_like_d = logsumexp(log_like_dp, axis=1) - np.log(n_phi0)  # mean over the uniform phi0
    h = d[1] - d[0]
    tw = np.full(n_dtec, h)
    tw[[0, -1]] *= 0.5
    log_post = log_like_d + np.log(tw) - np.log(2 * DTEC_MAX)
    log_z = logsumexp(log_post)
    w = np.exp(log_post - log_z)
    mean = np.sum(w * d)
    sd = np.sqrt(np.sum(w * (d - mean) ** 2))
    # Modes: each local maximum's basin runs to the nearest local minimum on either side.
    modes = []
    lp = log_post
    maxima = [i for i in range(n_dtec) if (i == 0 or lp[i] > lp[i - 1]) and (i == n_dtec - 1 or lp[i] >= lp[i + 1])]
    minima = [i for i in range(1, n_dtec - 1) if lp[i] <= lp[i - 1] and lp[i] < lp[i + 1]]
    for m in maxima:
        left = max([i for i in minima if i < m], default=-1)
        right = min([i for i in minima if i > m], default=n_dtec)
        mass = w[left + 1:right].sum() + (0.5 * w[left] if left >= 0 else 0) + (0.5 * w[right] if right < n_dtec else 0)
        modes.append((mass, d[m]))
    modes.sort(reverse=True)
    return log_z, mean, sd, modes


@pytest.fixture(scope="module", params=[0.3, 1.5], ids=["noise0.3", "noise1.5"])
def grid_vs_truth(request):
    noise = request.param
    data, shared, _ = simulate_problems(20, noise, seed=int(noise * 10))
    res = astroinfer.sample_batch(iono.model_dtec, data, method="grid", seed=3, shared=shared,
                                  grid_kernel=KERNEL, chunk_size=64, num_draws=200)
    truth = [brute_force(data["phase"][i], float(shared["kappa"])) for i in range(20)]
    return noise, data, shared, res, truth


def test_grid_evidence_means_and_modes_match_brute_force(grid_vs_truth):
    noise, data, shared, res, truth = grid_vs_truth
    s = res.idata.problem_summary
    log_z_true = np.array([t[0] for t in truth])
    mean_true = np.array([t[1] for t in truth])
    sd_true = np.array([t[2] for t in truth])
    err = np.abs(s.log_evidence.values - log_z_true)
    assert err.mean() <= 0.1 and err.max() < 0.01, (noise, err)
    assert np.all(np.abs(s.dtec_mean.values - mean_true) <= 0.1 * sd_true), noise
    np.testing.assert_allclose(s.dtec_sd.values, sd_true, rtol=0.02)
    multimodal = 0
    for i, (_, _, sd, modes) in enumerate(truth):
        big = [(mass, loc) for mass, loc in modes if mass > 0.05]
        multimodal += len(big) > 1
        masses = s.dtec_mode_mass.values[i]
        locs = s.dtec_mode_location.values[i]
        for mass, loc in big:  # every mode of the truth is found, with its mass
            j = int(np.nanargmin(np.abs(locs - loc)))
            assert abs(locs[j] - loc) < max(0.01, 0.5 * sd), (noise, i, loc, locs)
            assert abs(masses[j] - mass) <= 0.05, (noise, i, mass, masses[j])
    if noise == 1.5:
        assert multimodal >= 4, "the high-noise set should hold multimodal problems"
    assert np.all(s.method_code.values == 0)


def test_grid_draws_follow_the_posterior(grid_vs_truth):
    noise, data, shared, res, truth = grid_vs_truth
    draws = res.idata.posterior["dtec"].values[0]  # (draw, problem)
    mean_true = np.array([t[1] for t in truth])
    sd_true = np.array([t[2] for t in truth])
    z = (draws.mean(axis=0) - mean_true) / (sd_true / np.sqrt(draws.shape[0]))
    assert np.mean(np.abs(z) < 4) > 0.9, z


def test_generic_grid_agrees_with_the_kernel_and_results_do_not_depend_on_chunking():
    data, shared, _ = simulate_problems(40, 0.8, seed=5)
    fast = astroinfer.sample_batch(iono.model_dtec, data, method="grid", seed=1, shared=shared, grid_kernel=KERNEL,
                                   chunk_size=16, num_draws=10)
    fast2 = astroinfer.sample_batch(iono.model_dtec, data, method="grid", seed=1, shared=shared, grid_kernel=KERNEL,
                                    chunk_size=64, num_draws=10)
    generic = astroinfer.sample_batch(iono.model_dtec, data, method="grid", seed=1, shared=shared, chunk_size=32,
                                      num_draws=10)
    a, b, c = (r.idata.problem_summary for r in (fast, fast2, generic))
    np.testing.assert_allclose(a.log_evidence, c.log_evidence, atol=2e-3)
    np.testing.assert_allclose(a.dtec_mean, c.dtec_mean, atol=1e-4)
    np.testing.assert_array_equal(fast.idata.posterior["dtec"].values, fast2.idata.posterior["dtec"].values)
    # Same values to float32 rounding (a different chunk size changes the matrix product's blocking).
    np.testing.assert_allclose(a.log_evidence, b.log_evidence, rtol=1e-6)


def test_coarse_grid_is_refined_and_says_so():
    """101 nodes over +-1 TECU do not resolve a noise-0.3 posterior (sd ~ 0.01 TECU)."""
    data, shared, dtec = simulate_problems(8, 0.3, seed=9)
    res = astroinfer.sample_batch(iono.model_dtec, data, method="grid", seed=0, shared=shared, grid_kernel=KERNEL,
                                  grid_points=101, chunk_size=8, num_draws=10)
    s = res.idata.problem_summary
    assert np.all(s.method_code.values == 1), s.method_code.values
    assert res.diagnostics["problems_grid_refined"] == 8
    truth = [brute_force(data["phase"][i], float(shared["kappa"])) for i in range(8)]
    err = np.abs(s.log_evidence.values - np.array([t[0] for t in truth]))
    assert err.max() < 0.01, err
    assert np.all(np.abs(s.dtec_mean.values - np.array([t[1] for t in truth])) <= 0.1 * np.array([t[2] for t in truth]))


def test_generic_grid_on_a_two_parameter_gaussian():
    """Any NumPyro model with bounded priors: a 2-D Gaussian likelihood, analytic evidence."""
    import numpyro
    import numpyro.distributions as dist

    def model(y, sigma):
        mu = numpyro.sample("mu", dist.Uniform(-5.0, 5.0))
        log_s = numpyro.sample("log_s", dist.Uniform(-1.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, sigma * np.exp(0.0) + 0 * log_s), obs=y)

    y = np.array([[0.3], [1.2], [-2.0]], np.float32)
    res = astroinfer.sample_batch(model, {"y": y}, method="grid", seed=0, shared={"sigma": np.float32(0.5)},
                                  grid_points=201, num_draws=10, chunk_size=4)
    s = res.idata.problem_summary
    # Evidence: N(y | mu, 0.5) integrated over mu ~ U(-5, 5) (log_s has no effect): 1/10.
    np.testing.assert_allclose(s.log_evidence.values, np.log(0.1), atol=1e-3)
    np.testing.assert_allclose(s.mu_mean.values, y[:, 0], atol=1e-3)
    np.testing.assert_allclose(s.mu_sd.values, 0.5, rtol=1e-2)


@pytest.mark.slow  # compiling the vmapped nested sampler takes about a minute
def test_unresolved_problems_fall_back_to_nested_sampling_and_say_so():
    """No refinement allowed and a grid far too coarse: nested sampling takes over."""
    data, shared, _ = simulate_problems(4, 0.3, seed=21)
    res = astroinfer.sample_batch(iono.model_dtec, data, method="grid", seed=0, shared=shared, grid_kernel=KERNEL,
                                  grid_points=21, max_refinements=0, chunk_size=4, num_draws=50,
                                  nested_num_live_points=200, nested_num_delete=20)
    s = res.idata.problem_summary
    assert np.all(s.method_code.values == 2) and res.diagnostics["problems_nested"] == 4
    truth = [brute_force(data["phase"][i], float(shared["kappa"])) for i in range(4)]
    err = s.log_evidence.values - np.array([t[0] for t in truth])
    assert np.all(np.abs(err) < 4 * s.log_evidence_err.values + 0.05), (err, s.log_evidence_err.values)
    sd = np.array([t[2] for t in truth])
    assert np.all(np.abs(s.dtec_mean.values - np.array([t[1] for t in truth])) < 0.5 * sd)


def exact_marginal(phase: np.ndarray, kappa: float, n_dtec: int = 6001):
    """dTEC marginal posterior on a dense float64 grid (phi0 integrated analytically, scipy's
    i0e) and the log-evidence: nodes, normalised node masses, log Z."""
    d = np.linspace(-DTEC_MAX, DTEC_MAX, n_dtec)
    a = iono.TEC_CONSTANT / FREQ.astype(np.float64)
    s = np.abs(np.exp(-1j * np.outer(d, a)) @ (kappa * np.exp(1j * phase.astype(np.float64))))
    ll = np.log(i0e(s)) + s - FREQ.size * (np.log(2 * np.pi) + np.log(i0e(kappa)) + kappa)
    tw = np.full(n_dtec, d[1] - d[0])
    tw[[0, -1]] *= 0.5
    lp = ll + np.log(tw) - np.log(2 * DTEC_MAX)
    log_z = logsumexp(lp)
    return d, np.exp(lp - log_z), log_z


def separated_modes(x: np.ndarray, w: np.ndarray, dip: float = 0.7, cuts_only: bool = False):
    """Modes of a marginal given on nodes, merging basins whose separating minimum is not
    below ``dip`` times the lower of the two peaks (a loop, independent of the engine's
    vectorised version, which uses dip 0.7): (mass, location, sd) heaviest first."""
    n = x.size
    cuts = []
    for i in range(1, n - 1):
        if not (w[i] <= w[i - 1] and w[i] < w[i + 1]):
            continue
        peak_left = peak_right = 0.0
        j = i - 1
        while j >= 0 and w[j] >= w[i]:
            peak_left, j = max(peak_left, w[j]), j - 1
        j = i + 1
        while j < n and w[j] >= w[i]:
            peak_right, j = max(peak_right, w[j]), j + 1
        if w[i] < dip * min(peak_left, peak_right):
            cuts.append(i)
    if cuts_only:
        return cuts
    modes = []
    for lo, hi in zip([0] + cuts, cuts + [n]):
        seg_w, seg_x = w[lo:hi], x[lo:hi]
        mass = seg_w.sum()
        mean = np.sum(seg_w * seg_x) / mass
        modes.append((mass, seg_x[np.argmax(seg_w)], np.sqrt(np.sum(seg_w * (seg_x - mean) ** 2) / mass)))
    return sorted(modes, reverse=True)


NESTED_PROBLEMS = 64


@pytest.fixture(scope="module", params=[0.3, 1.5], ids=["noise0.3", "noise1.5"])
def nested_vs_truth(request):
    """The batched nested sampler on the dTEC model, 64 problems, against the exact marginal,
    with its defaults: 200 live points and the importance-sampling refinement. (The nested
    run alone would give an rms of about sqrt(1.44 H / 200) ~ 0.19 nat at noise 0.3, where
    the information H is about 5.5 nats; measured with the refinement: 0.031 at noise 0.3,
    0.023 at 1.5, dTEC means within 0.027 sd on average, mode masses within 0.042.)
    """
    noise = request.param
    data, shared, _ = simulate_problems(NESTED_PROBLEMS, noise, seed=31 + int(10 * noise))
    res = astroinfer.sample_batch(iono.model_dtec, data, method="nested", seed=2, shared=shared, num_draws=200,
                                  chunk_size=NESTED_PROBLEMS)
    truth = [exact_marginal(data["phase"][i], float(shared["kappa"])) for i in range(NESTED_PROBLEMS)]
    return noise, res, truth


def test_nested_evidence_matches_the_exact_marginal(nested_vs_truth):
    noise, res, truth = nested_vs_truth
    s = res.idata.problem_summary
    err = s.log_evidence.values - np.array([t[2] for t in truth])
    assert np.mean(np.abs(err)) <= 0.1 and np.sqrt(np.mean(err**2)) <= 0.1, (noise, err)
    assert abs(np.mean(err)) <= 0.05, (noise, np.mean(err))  # no bias beyond its standard error
    # The reported error is the actual one: standardised errors have an rms near one.
    z = err / s.log_evidence_err.values
    assert 0.6 <= np.sqrt(np.mean(z**2)) <= 1.5, (noise, np.sqrt(np.mean(z**2)))
    assert np.all(s.method_code.values == 2)


def test_nested_means_and_every_mode_match_the_exact_marginal(nested_vs_truth):
    noise, res, truth = nested_vs_truth
    s = res.idata.problem_summary
    z, mass_err, level_err, multimodal = [], [], [], 0
    for i, (x, w, _) in enumerate(truth):
        mean = np.sum(w * x)
        sd = np.sqrt(np.sum(w * (x - mean) ** 2))
        z.append((s.dtec_mean.values[i] - mean) / sd)
        assert abs(s.dtec_sd.values[i] / sd - 1) < 0.15, (noise, i, s.dtec_sd.values[i], sd)
        # Quantiles, checked on the probability scale (a quantile in the gap between two
        # modes moves far when a mode's mass shifts a little).
        levels = np.interp(s.dtec_quantiles.values[i], x, np.cumsum(w) - 0.5 * w)
        level_err.append(np.abs(levels - np.asarray(s.coords["quantile"].values)))
        # Truth modes: basins between clear dips (below half the lower peak). The engine
        # splits at dips below 0.7, so it may report a truth mode as several: compare the
        # summed mass of the engine's modes that lie in each truth basin.
        cuts = separated_modes(x, w, 0.5, cuts_only=True)
        locs, masses = s.dtec_mode_location.values[i], s.dtec_mode_mass.values[i]
        found = 0
        for lo, hi in zip([0] + cuts, cuts + [x.size]):
            mass = w[lo:hi].sum()
            if mass <= 0.05:
                continue
            found += 1
            inside = (locs >= x[lo]) & (locs <= x[hi - 1])
            assert np.any(inside), (noise, i, x[lo], x[hi - 1], locs)  # every mode is found ...
            mass_err.append(abs(masses[inside].sum() - mass))
        multimodal += found > 1
    z, mass_err, level_err = np.abs(np.array(z)), np.array(mass_err), np.array(level_err)
    # Quantiles move with the mode masses: as close on the probability scale.
    assert np.mean(level_err) <= 0.02 and np.max(level_err) <= 0.08, (noise, level_err.max(axis=1))
    assert np.mean(z) <= 0.05 and np.mean(z <= 0.1) >= 0.9 and np.max(z) <= 0.25, (noise, z)
    # ... with its mass: the mass of a mode found by n live points scatters by about
    # sqrt(p (1 - p) / n) and the histogram adds a little.
    assert np.mean(mass_err) <= 0.03 and np.mean(mass_err <= 0.05) >= 0.9, (noise, mass_err)
    if noise == 1.5:
        assert multimodal >= 15, multimodal


def test_nested_draws_follow_the_posterior(nested_vs_truth):
    noise, res, truth = nested_vs_truth
    draws = res.idata.posterior["dtec"].values[0]  # (draw, problem)
    ks = []
    for i, (x, w, _) in enumerate(truth):
        cdf = np.cumsum(w)
        u = np.interp(draws[:, i], x, cdf)  # probability integral transform: uniform if right
        ks.append(np.max(np.abs(np.sort(u) - (np.arange(u.size) + 0.5) / u.size)))
    # Kolmogorov-Smirnov distance of 200 draws: 0.096 is the 5 % critical value.
    assert np.mean(np.array(ks) > 0.096) < 0.2, (noise, ks)


def test_nested_results_do_not_depend_on_chunking():
    data, shared, _ = simulate_problems(24, 1.0, seed=8)
    kw = dict(method="nested", seed=5, shared=shared, num_draws=20, num_live_points=64)
    a = astroinfer.sample_batch(iono.model_dtec, data, chunk_size=32, **kw)
    b = astroinfer.sample_batch(iono.model_dtec, data, chunk_size=16, **kw)
    sa, sb = a.idata.problem_summary, b.idata.problem_summary
    np.testing.assert_allclose(sa.log_evidence.values, sb.log_evidence.values, rtol=0, atol=1e-5)
    np.testing.assert_allclose(sa.dtec_mean.values, sb.dtec_mean.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.idata.posterior["dtec"].values, b.idata.posterior["dtec"].values, atol=1e-6)


@pytest.mark.parametrize("noise", [0.3, 1.5])
def test_nested_with_phi0_sampled_matches_the_exact_evidence(noise):
    """dTEC and phi0 both sampled (two parameters, phi0 periodic but not declared so), with
    the defaults (200 live points and the importance-sampling refinement): the evidence
    equals the phi0-marginal one, computed exactly. The nested run alone would be off by
    about sqrt(1.44 H / 200) ~ 0.2 nat here; the refinement brings the rms under 0.1."""
    data, shared, _ = simulate_problems(48, noise, seed=41)
    res = astroinfer.sample_batch(iono.model_dtec_phi0, data, method="nested", seed=0, shared=shared, num_draws=20,
                                  chunk_size=48)
    s = res.idata.problem_summary
    truth = [exact_marginal(data["phase"][i], float(shared["kappa"])) for i in range(48)]
    log_z_true = np.array([t[2] for t in truth])
    err = s.log_evidence.values - log_z_true
    assert np.sqrt(np.mean(err**2)) <= 0.1 and abs(np.mean(err)) <= 0.05, (noise, err)
    assert 0.6 <= np.sqrt(np.mean((err / s.log_evidence_err.values) ** 2)) <= 1.5, (noise, err, s.log_evidence_err.values)
    # The importance estimate alone beats the nested one alone (which it is combined with).
    err_is = s.importance_log_evidence.values - log_z_true
    err_ns = s.nested_log_evidence.values - log_z_true
    assert np.sqrt(np.mean(err_is**2)) < np.sqrt(np.mean(err_ns**2)), (noise, err_is, err_ns)
    means = np.array([np.sum(w * x) for x, w, _ in truth])
    sds = np.array([np.sqrt(np.sum(w * (x - m) ** 2)) for (x, w, _), m in zip(truth, means)])
    z = np.abs(s.dtec_mean.values - means) / sds
    assert np.median(z) < 0.1 and np.max(z) < 0.5, (noise, z)


def test_importance_refinement_on_gaussians_with_a_known_evidence():
    """A generic model (unbounded coordinates, a normal prior; nothing of the ionosphere):
    (a, b) ~ N(0, 3^2 I_2), y ~ N((a, b), 0.5^2 I_2), so Z = N(y; 0, (9 + 0.25) I_2) and the posterior
    mean is y 9 / 9.25 exactly. The refinement's estimate is unbiased and its reported error
    is the actual one."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def gaussian_model(y):
        a = numpyro.sample("a", dist.Normal(0.0, 3.0))
        b = numpyro.sample("b", dist.Normal(0.0, 3.0))
        numpyro.sample("obs", dist.Normal(jnp.stack([a, b]), 0.5).to_event(1), obs=y)

    rng = np.random.default_rng(7)
    num = 64
    y = (rng.normal(0, 3, (num, 2)) + rng.normal(0, 0.5, (num, 2))).astype(np.float32)
    res = astroinfer.sample_batch(gaussian_model, {"y": y}, method="nested", seed=1, num_draws=20, chunk_size=num)
    s = res.idata.problem_summary
    from scipy.stats import norm

    log_z_true = norm.logpdf(y.astype(np.float64), 0, np.sqrt(9.25)).sum(axis=1)
    err = s.importance_log_evidence.values - log_z_true
    assert np.sqrt(np.mean(err**2)) <= 0.1 and abs(np.mean(err)) <= 0.03, err
    assert 0.6 <= np.sqrt(np.mean((err / s.importance_log_evidence_err.values) ** 2)) <= 1.5
    err_all = s.log_evidence.values - log_z_true
    assert np.sqrt(np.mean(err_all**2)) <= 0.1, err_all
    post_sd = np.sqrt(1 / (1 / 9 + 1 / 0.25))
    mean_err = (np.stack([s.a_mean.values, s.b_mean.values], axis=1) - y * 9 / 9.25) / post_sd
    assert np.mean(np.abs(mean_err)) <= 0.05 and np.max(np.abs(mean_err)) <= 0.3, mean_err


@pytest.mark.parametrize("option, value, message", [
    ("num_importance", -1, "num_importance must be a non-negative integer"),
    ("num_kernels", 5, r"num_kernels must be an integer >= 2 \* dimension \+ 2 \(6\)"),
    ("num_importance", 100, r"num_importance must be 0 or at least 2 \* num_kernels \(256\)"),
])
def test_bad_importance_options_are_refused(option, value, message):
    data, shared, _ = simulate_problems(2, 0.3, seed=1)
    with pytest.raises(astroinfer.OptionError, match=message):
        astroinfer.sample_batch(iono.model_dtec_phi0, data, method="nested", shared=shared, chunk_size=2,
                                **{option: value})


@pytest.mark.slow
def test_clock_model_grid_and_nested_agree():
    """dTEC + clock (phi0 marginal): the 2-D grid kernel vs batched nested sampling."""
    rng = np.random.default_rng(4)
    num, noise = 16, 0.5
    kappa = iono.kappa_from_noise(noise)
    dtec = rng.uniform(-0.3, 0.3, num)
    tau = rng.uniform(-5e-9, 5e-9, num)
    model_phase = iono.TEC_CONSTANT * dtec[:, None] / FREQ + 2 * np.pi * FREQ * tau[:, None] + rng.uniform(-3, 3, (num, 1))
    phase = np.angle(np.exp(1j * (model_phase + rng.vonmises(0, kappa, model_phase.shape)))).astype(np.float32)
    data = {"phase": phase, "weight": np.ones_like(phase)}
    shared = {"freq": FREQ.astype(np.float32), "kappa": np.float32(kappa), "dtec_max": np.float32(DTEC_MAX),
              "clock_max": np.float32(2e-8)}
    grid = astroinfer.sample_batch(iono.model_dtec_clock, data, method="grid", seed=0, shared=shared,
                                   grid_kernel="astroinfer.pipelines.ionosphere:DTEC_CLOCK_KERNEL", chunk_size=16)
    nested = astroinfer.sample_batch(iono.model_dtec_clock, data, method="nested", seed=0, shared=shared, chunk_size=16)
    g, n = grid.idata.problem_summary, nested.idata.problem_summary
    assert np.mean(np.abs(g.log_evidence.values - n.log_evidence.values)) <= 0.15
    assert np.median(np.abs(g.dtec_mean.values - n.dtec_mean.values) / g.dtec_sd.values) < 0.2
    assert np.mean(np.abs(g.dtec_mean.values - dtec) / g.dtec_sd.values < 3) > 0.8


def test_a_kernel_that_is_not_the_model_is_refused():
    import jax.numpy as jnp

    from astroinfer.engine.grid import GridKernel

    wrong = GridKernel(names=("dtec",), bounds=lambda shared: (jnp.array([-1.0]), jnp.array([1.0])),
                       log_likelihood=lambda batched, shared, axes: jnp.zeros((batched["phase"].shape[0], axes[0].size)))
    data, shared, _ = simulate_problems(4, 0.3, seed=1)
    with pytest.raises(astroinfer.ModelError, match="grid kernel disagrees"):
        astroinfer.sample_batch(iono.model_dtec, data, method="grid", shared=shared, grid_kernel=wrong)
