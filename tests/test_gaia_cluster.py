"""gaia-cluster: loading and validation (through the CLI for every bad input), the
quadrature against brute-force integrals, the per-star conditionals against brute force,
the marginalised model against the full-latent reference, the demo, the zero point, and
(slow) M67 agreement and simulation-based calibration.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from scipy import stats
from scipy.special import logsumexp

from astroinfer.pipeline import InputError, get_pipeline
from astroinfer.pipelines import gaia_cluster as gc

from conftest import REPO, assert_one_line_error

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
M67 = DATA / "m67.fits.gz"
DEMO = REPO / "catalogs" / "gaia_cluster_demo.ecsv"
DEMO_TRUTH = REPO / "catalogs" / "gaia_cluster_demo.truth.json"
needs_m67 = pytest.mark.skipif(not M67.is_file(), reason=f"real Gaia data {M67} is absent")


def _table(n=40, seed=0, **columns):
    rng = np.random.default_rng(seed)
    cols = {
        "source_id": np.arange(1, n + 1, dtype=np.int64) * 1000,
        "ra": rng.uniform(132, 133, n),
        "dec": rng.uniform(11, 12, n),
        "parallax": rng.uniform(0.3, 2.5, n),
        "parallax_error": rng.uniform(0.02, 0.3, n),
    }
    cols.update(columns)
    table = Table(cols)
    table["parallax"].unit = "mas"
    table["parallax_error"].unit = "mas"
    return table


# -- load and validate ---------------------------------------------------------------
def test_load_counts_cuts_and_keeps_them(tmp_path):
    t = _table(60)
    t["parallax"][:3] = np.nan
    t["parallax_error"][3:5] = 0.0
    t["parallax"][5:15] = 0.1  # below the window
    t["phot_g_mean_mag"] = np.linspace(10, 20, 60)
    path = tmp_path / "cat.ecsv"
    t.write(path)
    data = gc.load(path, parallax_min=0.2, parallax_max=3.0, g_max=19.0)
    steps = {s["step"]: s["kept"] for s in data.metadata["selection"]}
    assert steps["rows read"] == 60
    assert steps["finite parallax and parallax_error"] == 57
    assert steps["parallax_error > 0"] == 55
    assert steps["parallax > 0.2 mas"] == 45
    g_kept = int(np.sum((t["phot_g_mean_mag"] < 19.0) & (np.arange(60) >= 15)))
    assert steps["G < 19 mag"] == g_kept == data.metadata["num_stars"]
    assert data.metadata["dropped"] == {"non_finite_parallax_or_error": 3, "non_positive_error": 2}
    assert data.metadata["zero_point"] == "none"
    assert data.data["parallax"].shape == (g_kept,)
    assert data.stars["source_id"].dtype == np.int64


def test_load_converts_angular_units_and_reads_every_format(tmp_path):
    t = _table(30)
    expected = np.asarray(t["parallax"], dtype=np.float32)
    t["parallax"] = t["parallax"] / 1000.0
    t["parallax"].unit = "arcsec"
    for name, fmt in (("cat.ecsv", "ascii.ecsv"), ("cat.fits", "fits"), ("cat.vot", "votable"),
                      ("cat.csv", "ascii.csv")):
        t.write(tmp_path / name, format=fmt, overwrite=True)
        data = gc.load(tmp_path / name)
        assert data.metadata["num_stars"] == 30
        # CSV carries no units: its parallax is taken as given (arcsec values read as mas).
        scale = 1000.0 if name == "cat.csv" else 1.0
        np.testing.assert_allclose(data.data["parallax"] * scale, expected, rtol=1e-5)


def test_load_keeps_duplicates_only_when_asked(tmp_path):
    t = _table(30)
    t["source_id"][5] = t["source_id"][4]
    path = tmp_path / "dup.fits"
    t.write(path)
    with pytest.raises(InputError, match="repeats 1 id"):
        gc.load(path)
    data = gc.load(path, keep_duplicates=True)
    assert data.metadata["num_stars"] == 30 and data.metadata["duplicate_rows_kept"] == 2


def test_ruwe_cut_applies_when_the_column_is_present(tmp_path):
    t = _table(30, ruwe=np.r_[np.full(10, 2.0), np.full(20, 1.0)])
    t.write(tmp_path / "ruwe.ecsv")
    data = gc.load(tmp_path / "ruwe.ecsv")
    assert data.metadata["num_stars"] == 20
    assert gc.load(tmp_path / "ruwe.ecsv", ruwe_max=3.0).metadata["num_stars"] == 30


def _bad_inputs(tmp_path):
    cases = {}
    t = _table()
    del t["parallax_error"]
    t.write(tmp_path / "missing.ecsv")
    cases["missing column"] = (tmp_path / "missing.ecsv", ["column 'parallax_error' is missing"])
    t = _table()
    t["parallax"].unit = "pc"
    t.write(tmp_path / "unit.ecsv")
    cases["wrong unit"] = (tmp_path / "unit.ecsv", ["column 'parallax' has unit 'pc'", "mas"])
    t = _table()
    t["parallax"] = np.nan
    t.write(tmp_path / "nan.fits")
    cases["all non-finite"] = (tmp_path / "nan.fits", ["'parallax' has no finite value"])
    t = _table()
    t["parallax_error"] = -np.abs(t["parallax_error"])
    t["parallax_error"][:3] = 0.0
    t.write(tmp_path / "errors.csv")
    cases["errors <= 0"] = (tmp_path / "errors.csv", ["'parallax_error' must be > 0", "<= 0"])
    t = _table()
    t.write(tmp_path / "far.ecsv")
    cases["nothing after cuts"] = (tmp_path / "far.ecsv", ["0 star(s) left after the cuts", "parallax > 5 mas: 0"])
    (tmp_path / "junk.fits").write_bytes(bytes(range(256)) * 8)
    cases["not a table"] = (tmp_path / "junk.fits", ["junk.fits: cannot read it as fits"])
    (tmp_path / "text.csv").write_text("just some words\n")
    cases["not a table (text)"] = (tmp_path / "text.csv", ["column 'source_id' is missing"])
    t = _table()
    t["source_id"][7] = t["source_id"][3]
    t.write(tmp_path / "dup.ecsv")
    cases["duplicated source_id"] = (tmp_path / "dup.ecsv", ["repeats 1 id(s)", "--keep-duplicates"])
    return cases


CASES = ["missing column", "wrong unit", "all non-finite", "errors <= 0", "nothing after cuts", "not a table",
         "not a table (text)", "duplicated source_id"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_and_no_file(tmp_path, run_cli, case):
    path, fragments = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out.h5"
    extra = ["--parallax-min", "5"] if case == "nothing after cuts" else []
    code, _, err = run_cli("run", "gaia-cluster", path, *extra, "-o", out)
    line = assert_one_line_error(code, err, str(path), *fragments)
    assert "\n" not in line
    assert not out.exists()
    assert not list(tmp_path.glob(".out.h5.*"))


def test_bad_option_values_exit_2(tmp_path, run_cli):
    code, _, err = run_cli("run", "gaia-cluster", "--profile", "king", "-o", tmp_path / "o.h5")
    assert_one_line_error(code, err, "--profile", "lognormal, gaussian, student")
    code, _, err = run_cli("run", "gaia-cluster", "--zero-point", "on", "-o", tmp_path / "o.h5")
    assert_one_line_error(code, err, "zero_point=on needs column(s)")
    assert not (tmp_path / "o.h5").exists()


# -- the quadrature against brute force ------------------------------------------------
def _brute_marginals(w, s, profile, distance, size, scale, offset):
    """Dense trapezoid-free Riemann sums in u = log parallax over 1e-4..150 mas (float64)."""
    u = np.linspace(-9.2, 5.0, 40001)
    du = u[1] - u[0]
    r = 1000 * np.exp(-u)
    if profile == "lognormal":
        lp = stats.norm.logpdf(u, np.log(1000 / distance), size / distance)
    elif profile == "gaussian":
        lp = stats.norm.logpdf(r, distance, size) + np.log(r)
    else:
        sc = gc._halo_scales()
        lp = logsumexp([stats.norm.logpdf(r, distance, size * k) for k in sc], axis=0) - np.log(sc.size) + np.log(r)
    lf = stats.gamma.logpdf(r, 3, scale=scale) + np.log(r)
    ll = stats.norm.logpdf(w[:, None] - offset, np.exp(u)[None], s[:, None])
    return logsumexp(ll + lp, axis=1) + np.log(du), logsumexp(ll + lf, axis=1) + np.log(du), (u, ll + lp, ll + lf)


def _hard_stars(n=200, seed=3):
    """Stars spanning what catalogs hold: precise and poor, negative, near and far."""
    rng = np.random.default_rng(seed)
    g = rng.uniform(8, 21, n)
    s = gc.gaia_parallax_error(g)
    truth = np.where(rng.uniform(size=n) < 0.4, 1000 / rng.normal(850, 20, n), 1000 / rng.gamma(3, 500, n))
    w = truth + s * rng.normal(size=n)
    w[:5] = [-0.5, 0.0, 0.01, 12.0, 1.18]
    s[:5] = [0.4, 0.3, 1.5, 0.02, 0.01]
    return w, s


GLOBAL_SETS = [dict(distance=850.0, size=15.0, scale=480.0, offset=0.0),
               dict(distance=600.0, size=40.0, scale=1500.0, offset=0.02),
               dict(distance=2000.0, size=5.0, scale=300.0, offset=-0.01)]


@pytest.mark.parametrize("profile", gc.PROFILES)
def test_quadrature_matches_brute_force_integral(profile):
    import jax

    w, s = _hard_stars()
    for params in GLOBAL_SETS:
        with jax.enable_x64(True):
            lc, lf = (np.asarray(a) for a in gc.log_component_marginals(w, s, profile=profile, **params))
        bc, bf, _ = _brute_marginals(w, s, profile, params["distance"], params["size"], params["scale"],
                                     params["offset"])
        # The per-star mixture likelihood is what the posterior sees.
        for q in (0.1, 0.5, 0.9):
            mix = np.logaddexp(np.log(q) + lc, np.log1p(-q) + lf)
            brute = np.logaddexp(np.log(q) + bc, np.log1p(-q) + bf)
            assert np.max(np.abs(mix - brute)) < 0.05, (profile, params, q)
            assert abs(np.sum(mix - brute)) < 0.25, (profile, params, q)
        # Each component where it matters (within 30 nats of the star's best component).
        relevant = np.maximum(bc, bf) - 30
        assert np.max(np.abs(lc - bc)[bc > relevant]) < 0.05
        assert np.max(np.abs(lf - bf)[bf > relevant]) < 0.05


@pytest.mark.parametrize("profile", gc.PROFILES)
def test_compact_cluster_term_is_right_in_float32(profile):
    """A cluster far thinner than the parallax errors: its term tends to the likelihood at
    the cluster's parallax. In float32 the profile is then narrower than u resolves; with
    the nodes in u the term came out ~1 nat per star too high (+112 nats on a 300-star
    catalog at size 2e-5 pc, found by importance sampling an SBC posterior)."""
    import jax.numpy as jnp

    w, s = _hard_stars()
    for size in (1e-2, 1e-4, 1e-6):
        lc, _ = gc.log_component_marginals(jnp.asarray(w, jnp.float32), jnp.asarray(s, jnp.float32),
                                           profile=profile, distance=850.0, size=size, scale=480.0)
        limit = stats.norm.logpdf(w, 1000.0 / 850.0, s)
        near = np.abs(w - 1000.0 / 850.0) < 10 * s  # where the cluster term can matter
        assert near.sum() > 50
        assert np.max(np.abs(np.asarray(lc, dtype=np.float64) - limit)[near]) < 0.01, (profile, size)


@pytest.mark.parametrize("fit_offset", [False, True])
def test_field_table_reproduces_the_quadrature(fit_offset):
    """The tabulated field term (what NUTS uses on CPU) against the same quadrature in
    float64, per star, at random globals inside the table's domain."""
    import jax
    import jax.numpy as jnp

    w, s = _hard_stars()
    table = gc.field_table(w, s, scale_centre=480.0, fit_offset=fit_offset)
    coef, domain = jnp.asarray(table["field_table"]), jnp.asarray(table["field_table_domain"])
    assert float(domain[2]) == pytest.approx(gc.OFFSET_TABLE_HALF_WIDTH if fit_offset else 0.0)
    rng = np.random.default_rng(1)
    for _ in range(12):
        log_scale, offset = domain[0] + rng.uniform(-1, 1) * domain[1], rng.uniform(-1, 1) * domain[2]
        fast = np.asarray(gc._field_from_table(coef, domain, log_scale, offset), dtype=np.float64)
        with jax.enable_x64(True):
            _, exact = gc.log_component_marginals(w, s, distance=850.0, size=10.0, scale=float(np.exp(log_scale)),
                                                  offset=float(offset))
        exact = np.asarray(exact)
        # float32 resolution of terms down to -1e4 nat (stars far out in the field's tail)
        assert np.max(np.abs(fast - exact) / np.maximum(1.0, np.abs(exact))) < 3e-5, (log_scale, offset)
        assert abs(np.sum(fast - exact)) < 2e-3


def test_model_with_field_table_keeps_its_density_and_gradient():
    """Inside the table's domain the model's density and gradient match the quadrature
    model's; outside it the model falls back to the quadrature (same to float32 rounding)."""
    import jax
    from numpyro.infer.util import log_density

    data = gc.load(DEMO, offset="fit", field="edsd").data
    tabled = gc.with_field_table(data)
    centre, half = np.exp(tabled["field_table_domain"][0]), tabled["field_table_domain"][1]
    assert abs(np.log(centre / json.loads(DEMO_TRUTH.read_text())["truth"]["field_scale"])) < half / 2

    def density(d, scale, offset):
        def f(x):
            params = {"cluster_distance": x[0], "cluster_size": x[1], "member_fraction": x[2], "field_scale": x[3],
                      "parallax_offset": x[4]}
            return log_density(gc.model, (), d, params)[0]
        return jax.value_and_grad(f)(np.array([840.0, 12.0, 0.35, scale, offset], dtype=np.float32))

    for scale, offset in ((centre, 0.0), (centre * np.exp(0.3), 0.04), (centre * np.exp(-0.35), -0.05)):
        (a, ga), (b, gb) = density(tabled, scale, offset), density(data, scale, offset)
        assert float(a) == pytest.approx(float(b), abs=2e-3)
        np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=2e-3, atol=1e-3)
    for scale, offset in ((centre * np.exp(0.5), 0.0), (centre, 0.07)):
        (a, ga), (b, gb) = density(tabled, scale, offset), density(data, scale, offset)
        assert float(a) == pytest.approx(float(b), abs=1e-4)
        np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=1e-5, atol=1e-5)


def _log_prior(data, params):
    """The globals' log prior (scipy), for the model's density tests."""
    return (stats.lognorm.logpdf(params["cluster_distance"], data["distance_width"], scale=data["distance_centre"])
            + stats.lognorm.logpdf(params["cluster_size"], 1.0, scale=10.0)
            + stats.lognorm.logpdf(params["field_scale"], 1.0, scale=1000.0)
            + stats.norm.logpdf(params["parallax_offset"], 0, gc.OFFSET_PRIOR_SD))


def test_model_density_is_prior_plus_quadrature_likelihood():
    from numpyro.infer.util import log_density

    data = gc.load(DEMO, offset="fit", field="edsd").data
    params = {"cluster_distance": 840.0, "cluster_size": 12.0, "member_fraction": 0.35, "field_scale": 520.0,
              "parallax_offset": 0.005}
    logp, _ = log_density(gc.model, (), dict(data), params)
    w, s = data["parallax"].astype(float), data["parallax_error"].astype(float)
    bc, bf, _ = _brute_marginals(w, s, "lognormal", 840.0, 12.0, 520.0, 0.005)
    like = np.sum(np.logaddexp(np.log(0.35) + bc, np.log(0.65) + bf))
    assert float(logp) == pytest.approx(_log_prior(data, params) + like, abs=0.05)


def test_systematic_offset_shifts_the_members_parallaxes_only():
    """The default --offset systematic: the cluster term sees parallax - offset, the field
    term the measured parallax (brute force), with and without the field table (which then
    has no offset axis)."""
    from numpyro.infer.util import log_density

    data = gc.load(DEMO, field="edsd").data
    assert data["fit_offset"] and not data["offset_in_field"]
    tabled = gc.with_field_table(data)
    assert float(tabled["field_table_domain"][2]) == 0.0 and tabled["field_table"].shape[1] == 1
    offset = 0.1  # enough to move the likelihood by many nats
    params = {"cluster_distance": 840.0, "cluster_size": 12.0, "member_fraction": 0.35, "field_scale": 520.0,
              "parallax_offset": offset}
    w, s = data["parallax"].astype(float), data["parallax_error"].astype(float)
    bc, bf_shifted, _ = _brute_marginals(w, s, "lognormal", 840.0, 12.0, 520.0, offset)
    _, bf, _ = _brute_marginals(w, s, "lognormal", 840.0, 12.0, 520.0, 0.0)
    like = np.sum(np.logaddexp(np.log(0.35) + bc, np.log(0.65) + bf))
    assert abs(np.sum(np.logaddexp(np.log(0.35) + bc, np.log(0.65) + bf_shifted)) - like) > 0.5
    for d in (data, tabled):
        logp, _ = log_density(gc.model, (), dict(d), params)
        assert float(logp) == pytest.approx(_log_prior(data, params) + like, abs=0.05)

    # Per star: membership from the members-shifted cluster term and the unshifted field term.
    w12, s12 = _hard_stars(12, seed=8)
    from astroinfer.pipelines.gaia_cluster.stars import _field_parts

    field = _field_parts(w12.astype(np.float32), s12.astype(np.float32), np.array([480.0], np.float32))  # unshifted
    member, _, _ = (np.asarray(a) for a in gc._star_moments(
        w12.astype(np.float32), s12.astype(np.float32), "lognormal", 850.0, 15.0, 0.4, field, np.zeros(1), offset))
    bc, _, _ = _brute_marginals(w12, s12, "lognormal", 850.0, 15.0, 480.0, offset)
    _, bf, _ = _brute_marginals(w12, s12, "lognormal", 850.0, 15.0, 480.0, 0.0)
    a, b = np.log(0.4) + bc, np.log(0.6) + bf
    np.testing.assert_allclose(member, np.exp(a - np.logaddexp(a, b)), atol=2e-3)


def test_star_conditionals_match_brute_force():
    """Membership probability, distance mean/sd and the distance draws of single stars given
    one global draw, against the dense integral (float64 numpy)."""
    import jax

    w, s = _hard_stars(12, seed=8)
    g = dict(distance=850.0, size=15.0, fraction=0.4, scale=480.0, offset=0.0)
    for profile in gc.PROFILES:
        from astroinfer.pipelines.gaia_cluster.stars import _field_parts

        field = _field_parts(w.astype(np.float32), s.astype(np.float32), np.array([g["scale"]], np.float32))
        member, m1, m2 = (np.asarray(a) for a in gc._star_moments(
            w.astype(np.float32), s.astype(np.float32), profile, g["distance"], g["size"], g["fraction"],
            field, np.zeros(1), g["offset"]))
        bc, bf, (u, tc, tf) = _brute_marginals(w, s, profile, g["distance"], g["size"], g["scale"], 0.0)
        a, b = np.log(0.4) + bc, np.log(0.6) + bf
        p = np.exp(a - np.logaddexp(a, b))
        np.testing.assert_allclose(member, p, atol=2e-3)
        post = p[:, None] * np.exp(tc - bc[:, None]) + (1 - p)[:, None] * np.exp(tf - bf[:, None])
        post /= post.sum(1, keepdims=True)
        r = 1000 * np.exp(-u)
        mean = (post * r).sum(1)
        sd = np.sqrt((post * r**2).sum(1) - mean**2)
        np.testing.assert_allclose(m1, mean, rtol=2e-3)
        np.testing.assert_allclose(np.sqrt(np.maximum(m2 - m1**2, 0)), sd, rtol=0.03, atol=0.5)

        # Draws: 2000 per star for four stars, Kolmogorov-Smirnov against the brute-force CDF.
        keys = jax.random.split(jax.random.PRNGKey(1), 2000)
        draws = jax.vmap(lambda k: gc._star_draw(k, w.astype(np.float32), s.astype(np.float32), profile,
                                                  g["distance"], g["size"], g["fraction"], field, np.zeros(1), 0.0,
                                                  scales=np.array([g["scale"]], np.float32))[1])(keys)
        draws = np.asarray(draws)
        for i in (5, 6, 7, 8):
            order = np.argsort(r)
            cdf = np.cumsum(post[i][order])
            p_value = stats.kstest(draws[:, i], lambda x: np.interp(x, r[order], cdf)).pvalue
            assert p_value > 1e-3, (profile, i, p_value)


# -- the marginalised model against the full-latent reference -------------------------
def _nuts(model, data, seed, num_warmup, num_samples, dense):
    import jax
    from numpyro.infer import MCMC, NUTS, init_to_median

    mcmc = MCMC(NUTS(model, dense_mass=dense, init_strategy=init_to_median(num_samples=15)),
                num_warmup=num_warmup, num_samples=num_samples, num_chains=2, chain_method="sequential",
                progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), **data)
    return mcmc.get_samples(group_by_chain=True)


def _agreement(marginal, reference, names, sd_tol=0.10):
    import arviz as az

    for name in names:
        a, b = np.asarray(marginal[name]), np.asarray(reference[name])
        mcse = math.hypot(float(az.mcse(a, method="mean")), float(az.mcse(b, method="mean")))
        assert abs(a.mean() - b.mean()) < 3 * mcse, f"{name}: {a.mean():.4g} vs {b.mean():.4g} (3 MCSE = {3 * mcse:.3g})"
        ratio = a.std() / b.std()
        assert abs(ratio - 1) < sd_tol, f"{name}: sd {a.std():.4g} vs {b.std():.4g}"


def test_marginal_model_matches_full_latent_reference_on_a_simulated_catalog(tmp_path):
    path = tmp_path / "sim.ecsv"
    gc.simulate(path, seed=5, num_stars=250, truth={"cluster_distance": 700.0, "cluster_size": 20.0})
    data = gc.load(path, offset="off", field="edsd").data
    marginal = _nuts(gc.model, gc.with_field_table(data), 0, 500, 1500, True)
    reference = _nuts(gc.reference_model, data, 1, 600, 1500, False)
    _agreement(marginal, reference, ("cluster_distance", "cluster_size", "member_fraction", "field_scale"),
               sd_tol=0.15)


@pytest.mark.slow
@needs_m67
def test_m67_agrees_with_full_latent_reference():
    """The acceptance check: zero point off, 0.2 < parallax < 3 mas (4300 stars); the
    reference with 500 warmup + 1000 draws x 2 chains (its ESS sets the tolerance)."""
    data = gc.load(M67, zero_point="off", offset="off", parallax_min=0.2, parallax_max=3.0, field="edsd").data
    data.pop("parallax_window")  # the reference has no selection term: both models without it
    marginal = _nuts(gc.model, gc.with_field_table(data), 0, 1000, 2000, True)
    reference = _nuts(gc.reference_model, data, 1, 500, 1000, False)
    _agreement(marginal, reference, ("cluster_distance", "cluster_size", "member_fraction", "field_scale"))


# -- simulation, demo, CLI -------------------------------------------------------------
def test_bundled_demo_is_made_by_simulate(tmp_path):
    made = tmp_path / "gaia_cluster_demo.ecsv"
    record = gc.simulate(made, gc.PIPELINE.demo_seed)
    assert made.read_bytes() == DEMO.read_bytes()
    assert record == json.loads(DEMO_TRUTH.read_text())
    assert get_pipeline("gaia-cluster").demo_input().resolve() == DEMO.resolve()
    data = gc.load(DEMO)
    assert data.metadata["num_stars"] == 500
    # The truth describes the data: members' parallaxes sit at the cluster within a few errors.
    members = np.zeros(500, bool)
    members[record["member_rows"]] = True
    pull = (data.data["parallax"] - 1000 / record["truth"]["cluster_distance"]) / np.hypot(
        data.data["parallax_error"], 1000 * 15 / 850**2)
    assert np.mean(np.abs(pull[members]) < 3) > 0.97


def test_demo_run_recovers_truth_and_writes_star_table(tmp_path, run_cli):
    out = tmp_path / "demo.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, stdout, err = run_cli("run", "gaia-cluster", "-o", out, "--samples", "500", "--warmup", "400",
                                    "--star-draws", "20")
    assert code == 0, err
    assert "likely members" in stdout
    assert "rows read: 500" in err
    import astroinfer

    result = astroinfer.load(out)
    truth = json.loads(DEMO_TRUTH.read_text())["truth"]
    post = result.idata.posterior
    for name in ("cluster_distance", "cluster_size", "member_fraction"):
        values = np.asarray(post[name])
        assert abs(values.mean() - truth[name]) < 4 * values.std(), name
    assert "parallax_offset" in post and post["field_weights"].shape[2:] == (1, len(gc.FIELD_SCALES_PC))
    # The demo's field is one r^2 exp(-r/L) density: the mixture's mean distance matches its 3 L.
    weights = np.asarray(post["field_weights"]).reshape(-1, len(gc.FIELD_SCALES_PC)).mean(0)
    mean_distance = 3 * np.sum(weights * np.asarray(gc.FIELD_SCALES_PC))
    assert abs(np.log(mean_distance / (3 * truth["field_scale"]))) < 0.2, mean_distance
    assert result.diagnostics["predictive_p"] > 1e-3
    stars = result.idata.stars
    assert stars.sizes["star"] == 500 and stars["source_id"].dtype == np.int64
    assert set(["distance", "membership", "distance_sd", "distance_q05", "distance_q95"]) <= set(stars.data_vars)
    # Membership separates the simulated members from the field.
    members = np.zeros(500, bool)
    members[json.loads(DEMO_TRUTH.read_text())["member_rows"]] = True
    p = np.asarray(stars["membership"])
    assert p[members].mean() > 0.7 and p[~members].mean() < 0.3
    assert result.idata.star_draws["distance"].shape == (20, 500)
    # show, parallax plot and the generic corner plot.
    code, text, err = run_cli("show", out)
    assert code == 0 and "likely members (membership > 0.5)" in text and "cluster_distance" in text
    code, _, err = run_cli("plot", out, "--kind", "parallax", "-o", tmp_path / "p.png")
    assert code == 0 and (tmp_path / "p.png").stat().st_size > 10000, err
    code, _, err = run_cli("plot", out, "--kind", "corner", "-o", tmp_path / "c.png")
    assert code == 0 and (tmp_path / "c.png").stat().st_size > 10000, err


# -- the Lindegren et al. (2021) zero point ------------------------------------------
# Published coefficients (Lindegren et al. 2021, A&A 649, A4, Table 9: 5-parameter
# solutions, micro-arcsec): G node -> (q00, q01, q02).
TABLE9 = {6.0: (-26.98, -9.62, 27.40), 10.8: (-27.23, -3.07, 23.04), 12.9: (-19.53, -1.64, 15.86),
          15.9: (-38.33, 5.61, 15.42), 17.5: (-29.18, -0.09, 2.41), 20.0: (-12.65, -4.57, -7.46)}


def test_zero_point_reproduces_published_coefficients():
    # At nu_eff = 1.48 every colour term vanishes, so Z5 = q00 + q01 sin(b) + q02 (sin^2(b) - 1/3).
    for g, (q00, q01, q02) in TABLE9.items():
        for beta in (0.0, 30.0, -60.0):
            sb = math.sin(math.radians(beta))
            expected = (q00 + q01 * sb + q02 * (sb**2 - 1 / 3)) / 1000
            got = gc.lindegren_zero_point([g + 1e-9 if g == 6.0 else g], [1.48], [np.nan], [beta], [31])[0]
            assert got == pytest.approx(expected, abs=2e-6), (g, beta)
    # Undefined (NaN) for a 2-parameter solution or a missing colour; beyond the calibrated
    # colour range the recipe holds its edge value (its colour basis functions saturate).
    out = gc.lindegren_zero_point([15.0, 15.0, 15.0], [1.5, np.nan, 1.5], [np.nan, np.nan, 1.5], [10, 10, 10], [3, 31, 95])
    assert np.isnan(out[0]) and np.isnan(out[1]) and np.isfinite(out[2])
    edge, beyond = gc.lindegren_zero_point([15.0, 15.0], [np.nan] * 2, [1.72 - 1e-9, 1.9], [10, 10], [95, 95])
    assert beyond == pytest.approx(edge, abs=1e-9)
    assert not gc.zero_point_in_range([15.0], [np.nan], [1.9], [95])[0]


@needs_m67
def test_zero_point_on_m67():
    data = gc.load(M67, parallax_min=0.2, parallax_max=3.0)
    assert data.metadata["zero_point"] == "lindegren2021"
    # The correction is -0.02 to -0.04 mas for G = 12-19 stars at ecliptic latitude -5 deg.
    assert -0.045 < data.metadata["zero_point_median_mas"] < -0.02
    # Every M67 row is a 5p or 6p solution; one in the 0.2-3 mas window has no G magnitude.
    assert data.metadata["dropped"]["zero_point_unavailable"] == 1
    off = gc.load(M67, zero_point="off", parallax_min=0.2, parallax_max=3.0)
    assert off.metadata["num_stars"] == 4300
    assert off.metadata["zero_point"] == "none"


# -- simulation-based calibration ------------------------------------------------------
# 200 catalogs, not the 100 the issue asks at least: with 100 the 84-96% window on each
# of three coverages is only +-2 binomial sd, so a correct posterior fails about one run
# in six; with 200 it is +-2.8 sd. The first seed tried (2024, 100 catalogs) gave a
# distance coverage of 0.78, and the exact one-parameter grid posterior on those same
# catalogs gave 0.80 (test below): the catalogs, not the inference, were unusual.
SBC_CATALOGS = 200
SBC_STARS = 300
SBC_SEED = 2026


def _prior_draw(rng, prior):
    """Globals drawn from the model's prior (``prior_settings``), no parallax offset."""
    return {"cluster_distance": float(np.exp(rng.normal(np.log(prior["distance_centre"]), prior["distance_width"]))),
            "cluster_size": float(np.exp(rng.normal(np.log(prior["size_centre"]), prior["size_width"]))),
            "member_fraction": float(rng.uniform()),
            "field_scale": float(np.exp(rng.normal(np.log(prior["field_centre"]), prior["field_width"])))}


def _sbc_fits(num_catalogs, num_stars, warmup=300, draws=300, seed=2024):
    """Truths drawn from the model's prior (centre 800 pc, no offset), a catalog simulated
    from each, and NUTS (BlackJAX, dense mass matrix, window adaptation) on the pipeline
    model's density for each (with its field table, as the pipeline runs it on CPU), all in
    one compiled loop over catalogs."""
    import functools

    import blackjax
    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import potential_energy

    prior = gc.prior_settings(800.0)
    model = functools.partial(gc.model, profile="lognormal", fit_offset=False, **prior)
    rng = np.random.default_rng(seed)
    names = ("cluster_distance", "cluster_size", "member_fraction", "field_scale")
    truths, ws, ss = [], [], []
    for _ in range(num_catalogs):
        truth = _prior_draw(rng, prior)
        stars = gc.simulate_catalog(rng, num_stars, truth)
        truths.append(truth)
        ws.append(stars["parallax"])
        ss.append(stars["parallax_error"])

    # Start each chain where the pipeline starts it: the cluster distance at the parallax
    # peak (the pipeline centres its prior there; here the prior stays fixed, as SBC needs,
    # and only the starting point uses the data), the rest at the prior medians.
    peaks = np.log([gc._distance_peak(w, s) for w, s in zip(ws, ss)])
    # The density the pipeline samples on CPU: field term tabulated around each catalog's pilot.
    tables = [gc.with_field_table({"parallax": w, "parallax_error": s, "fit_offset": False, **prior})
              for w, s in zip(ws, ss)]
    table = jnp.asarray(np.array([t["field_table"] for t in tables]))
    domain = jnp.asarray(np.array([t["field_table_domain"] for t in tables]))

    def fit(key, w, s, log_peak, table, domain):
        def logdensity(x):  # potential_energy: unconstrained values in, Jacobians included
            data = {"parallax": w, "parallax_error": s, "field_table": table, "field_table_domain": domain}
            return -potential_energy(model, (), data, dict(zip(names, x)))

        start = [log_peak, jnp.log(prior["size_centre"]), jnp.zeros(()), jnp.log(prior["field_centre"])]
        k1, k2 = jax.random.split(key)
        warm = blackjax.window_adaptation(blackjax.nuts, lambda v: logdensity(list(v)), is_mass_matrix_diagonal=False)
        (state, params), _ = warm.run(k1, jnp.stack(start), num_steps=warmup)
        kernel = blackjax.nuts(lambda v: logdensity(list(v)), **params)

        def step(st, k):
            st, info = kernel.step(k, st)
            return st, (st.position, info.is_divergent)

        _, (xs, divergent) = jax.lax.scan(step, state, jax.random.split(k2, draws))
        return xs, divergent.sum()

    keys = jax.random.split(jax.random.PRNGKey(seed), num_catalogs)
    run = jax.jit(lambda *args: jax.lax.map(lambda a: fit(*a), args, batch_size=4))
    xs, divergences = run(keys, jnp.asarray(np.array(ws), jnp.float32), jnp.asarray(np.array(ss), jnp.float32),
                          jnp.asarray(peaks, jnp.float32), table, domain)
    xs = np.asarray(xs, dtype=np.float64)
    draws = {"cluster_distance": np.exp(xs[..., 0]), "cluster_size": np.exp(xs[..., 1]),
             "member_fraction": 1 / (1 + np.exp(-xs[..., 2])), "field_scale": np.exp(xs[..., 3])}
    return truths, draws, np.asarray(divergences)


def _conditional_distance_coverage(num_catalogs, seed):
    """For catalogs simulated from prior draws, the exact posterior of the cluster distance
    given the other three truths, on a 801-point grid in log distance (no sampler), and
    whether its 90% central interval covers the truth; also (mean - truth) / sd."""
    import jax
    import jax.numpy as jnp

    prior = gc.prior_settings(800.0)

    @jax.jit
    def log_likelihood(w, s, distances, size, fraction, scale):
        def one(distance):
            log_c, log_f = gc.log_component_marginals(w, s, distance=distance, size=size, scale=scale)
            return jnp.sum(jnp.logaddexp(jnp.log(fraction) + log_c, jnp.log1p(-fraction) + log_f))
        return jax.lax.map(one, distances)

    rng = np.random.default_rng(seed)
    covered, z = [], []
    for _ in range(num_catalogs):
        truth = _prior_draw(rng, prior)
        stars = gc.simulate_catalog(rng, SBC_STARS, truth)
        members = int(stars["member"].sum())
        if members < 5:  # no cluster to speak of: the posterior reaches past any local grid
            continue
        log_true = np.log(truth["cluster_distance"])
        half = 12 * truth["cluster_size"] / truth["cluster_distance"] / np.sqrt(members) + 0.01
        log_d = log_true + np.linspace(-half, half, 801)
        ll = np.asarray(log_likelihood(jnp.asarray(stars["parallax"], jnp.float32),
                                       jnp.asarray(stars["parallax_error"], jnp.float32),
                                       jnp.asarray(np.exp(log_d), jnp.float32), truth["cluster_size"],
                                       truth["member_fraction"], truth["field_scale"]), dtype=np.float64)
        log_post = ll - 0.5 * ((log_d - np.log(prior["distance_centre"])) / prior["distance_width"]) ** 2
        p = np.exp(log_post - log_post.max())
        p /= p.sum()
        cdf = np.cumsum(p)
        covered.append(log_d[np.searchsorted(cdf, 0.05)] < log_true < log_d[np.searchsorted(cdf, 0.95)])
        mean = (p * log_d).sum()
        z.append((mean - log_true) / np.sqrt((p * (log_d - mean) ** 2).sum()))
    return np.array(covered), np.array(z)


@pytest.mark.slow
def test_exact_conditional_distance_posterior_is_calibrated():
    """The simulator and the quadrature likelihood as a pair, with no sampler in between:
    over 300 catalogs the grid posterior of the distance given the other truths covers the
    truth in 90% +- 3.5% of cases, and (mean - truth)/sd has sd 1 +- 0.12. On the 100
    catalogs of seed 2024 it gives 0.80 (measured), the same as the full four-parameter SBC
    with NUTS did on them; on seeds 1, 2, 3 and 7, 0.88-0.93."""
    covered, z = _conditional_distance_coverage(300, seed=5)
    print("conditional distance coverage", covered.mean(), "z mean", z.mean(), "z sd", z.std(), "of", covered.size)
    assert covered.size > 280
    assert 0.865 <= covered.mean() <= 0.935
    assert abs(z.mean()) < 0.15
    assert 0.88 <= z.std() <= 1.12


@pytest.mark.slow
@pytest.mark.long
def test_simulation_based_calibration():
    """Rank statistics uniform (chi-square over 10 bins, p > 0.01) and 90% central intervals
    covering the truth in 84-96% of 200 catalogs of 300 stars, for distance, size, fraction.
    Draws are thinned by 3 (99 per catalog) so that ranks are nearly independent draws."""
    truths, draws, divergences = _sbc_fits(SBC_CATALOGS, SBC_STARS, seed=SBC_SEED)
    report = {}
    for name in ("cluster_distance", "cluster_size", "member_fraction"):
        thinned = draws[name][:, 2::3][:, :99]
        truth = np.array([t[name] for t in truths])
        ranks = (thinned < truth[:, None]).sum(1)  # 0..99: 100 values, 10 per bin
        counts = np.bincount(ranks // 10, minlength=10)
        p_value = stats.chisquare(counts).pvalue
        lo, hi = np.quantile(draws[name], [0.05, 0.95], axis=1)
        coverage = np.mean((truth > lo) & (truth < hi))
        report[name] = (p_value, coverage, counts.tolist())
        import arviz as az

        ess = np.array([float(az.ess(d[None, :], method="bulk")) for d in draws[name]])
        print(name, "ESS per catalog: min", ess.min().round(0), "median", np.median(ess).round(0),
              "coverage where ESS > 100:", np.mean(((truth > lo) & (truth < hi))[ess > 100]).round(3))
        z = (draws[name].mean(1) - truth) / draws[name].std(1)
        print(name, "worst |mean - truth| / sd:", np.round(np.sort(np.abs(z))[-5:], 1))
    print("SBC:", report, "divergent catalogs:", int((divergences > 0).sum()))
    for name, (p_value, coverage, counts) in report.items():
        assert p_value > 0.01, (name, p_value, counts)
        assert 0.84 <= coverage <= 0.96, (name, coverage)


# Ruprecht 147 (a members-only catalog with proper motions): tests/test_gaia_proper_motion.py.
