"""gaia-cluster with proper motions: reading and validating the columns, the proper-motion
terms and the model's density against scipy, memberships against brute force, membership
precision against parallax-only on simulated cones whose field motions are not the model's
own family, and Ruprecht 147 (real data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from scipy import stats

from astroinfer.pipeline import InputError
from astroinfer.pipelines import gaia_cluster as gc

from conftest import assert_one_line_error

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RUPRECHT_147 = DATA / "ruprecht_147.csv"

PM_PARAMS = {"cluster_pmra": -10.9, "cluster_pmdec": -2.9, "cluster_velocity_dispersion": 0.8,
             "field_pm_fraction": 0.7, "field_pmra": -2.0, "field_pmdec": -1.0, "field_pm_excess_ra": 3.0, "field_pm_excess_dec": 2.0,
             "field_pm_broadening": 1.5, "field_pm_corr_1": 0.3, "field_pm_corr_2": -0.2}


def _pm_table(n=60, seed=0, corr=True):
    rng = np.random.default_rng(seed)
    t = Table({"source_id": np.arange(1, n + 1, dtype=np.int64) * 1000, "ra": rng.uniform(132, 133, n),
               "dec": rng.uniform(11, 12, n), "parallax": rng.uniform(0.3, 2.5, n),
               "parallax_error": rng.uniform(0.02, 0.3, n), "pmra": rng.normal(-5, 4, n),
               "pmdec": rng.normal(-2, 3, n), "pmra_error": rng.uniform(0.02, 0.5, n),
               "pmdec_error": rng.uniform(0.02, 0.5, n)})
    if corr:
        t["pmra_pmdec_corr"] = rng.uniform(-0.5, 0.5, n)
    t["parallax"].unit = t["parallax_error"].unit = "mas"
    for name in ("pmra", "pmdec", "pmra_error", "pmdec_error"):
        t[name].unit = "mas / yr"
    return t


def _scipy_pm_terms(pm, cov, params, distance):
    """(cluster, field) log terms per star by scipy's multivariate normal."""
    disp = params["cluster_velocity_dispersion"] / (4.740470 * distance / 1000.0)
    a = gc.FIELD_PM_MIN_SD + params["field_pm_excess_ra"]
    b = gc.FIELD_PM_MIN_SD + params["field_pm_excess_dec"]
    widen = 1 + params["field_pm_broadening"]
    mean = (params["field_pmra"], params["field_pmdec"])
    comps = [(mean, a, b, params["field_pm_corr_1"]), (mean, widen * a, widen * b, params["field_pm_corr_2"])]
    log_c, log_f = [], []
    for m, (v11, v22, v12) in zip(pm, cov):
        c = np.array([[v11, v12], [v12, v22]])
        log_c.append(stats.multivariate_normal.logpdf(m, [params["cluster_pmra"], params["cluster_pmdec"]],
                                                      c + disp**2 * np.eye(2)))
        terms = [stats.multivariate_normal.logpdf(m, mu, c + np.array([[sa**2, r * sa * sb], [r * sa * sb, sb**2]]))
                 for mu, sa, sb, r in comps]
        log_f.append(np.logaddexp(np.log(params["field_pm_fraction"]) + terms[0],
                                  np.log1p(-params["field_pm_fraction"]) + terms[1]))
    return np.array(log_c), np.array(log_f)


# -- reading and validation ------------------------------------------------------------
def test_load_reads_proper_motions_converts_units_and_drops_unusable_ones(tmp_path):
    t = _pm_table()
    t["pmra"] = t["pmra"].to("arcsec / yr")  # converted back to mas/yr on reading
    t["pmdec"][4] = np.nan
    t["pmra_error"][7] = 0.0
    t.write(tmp_path / "pm.ecsv")
    data = gc.load(tmp_path / "pm.ecsv")
    d, meta = data.data, data.metadata
    np.testing.assert_allclose(d["proper_motion"][:, 0][d["proper_motion_used"] == 1],
                               np.asarray(_pm_table()["pmra"])[d["proper_motion_used"] == 1], rtol=1e-5)
    assert d["proper_motion_used"].sum() == 58 and d["proper_motion_used"][4] == 0 and d["proper_motion_used"][7] == 0
    assert meta["num_stars"] == 60  # stars without a usable proper motion are kept, on parallax alone
    assert meta["proper_motion"] == "used" and meta["proper_motion_stars"] == 58
    ex, ey, rho = (np.asarray(t[c], float) for c in ("pmra_error", "pmdec_error", "pmra_pmdec_corr"))
    np.testing.assert_allclose(d["proper_motion_cov"][0], [ex[0] ** 2, ey[0] ** 2, rho[0] * ex[0] * ey[0]], rtol=1e-5)
    # No correlation column: taken as 0; "off": parallaxes only.
    _pm_table(corr=False).write(tmp_path / "nocorr.ecsv")
    assert np.all(gc.load(tmp_path / "nocorr.ecsv").data["proper_motion_cov"][:, 2] == 0)
    off = gc.load(tmp_path / "pm.ecsv", proper_motion="off")
    assert "proper_motion" not in off.data and off.metadata["proper_motion"] == "not used"
    assert np.isnan(data.stars["pmdec"][4]) and data.stars["pmdec"][5] == pytest.approx(float(t["pmdec"][5]))
    # Columns present but empty: auto falls back to parallaxes, on is an error.
    empty = _pm_table()
    empty["pmra"] = np.nan
    empty.write(tmp_path / "empty.ecsv")
    assert gc.load(tmp_path / "empty.ecsv").metadata["proper_motion"] == "not used"
    with pytest.raises(InputError, match="no row with finite proper motions"):
        gc.load(tmp_path / "empty.ecsv", proper_motion="on")


def test_proper_motion_bad_input_exits_2_with_one_line(tmp_path, run_cli):
    t = _pm_table()
    del t["pmdec_error"]
    t.write(tmp_path / "partial.ecsv")
    # auto: a missing column means parallax-only; on: an error naming the column.
    assert "proper_motion" not in gc.load(tmp_path / "partial.ecsv").data
    code, _, err = run_cli("run", "gaia-cluster", tmp_path / "partial.ecsv", "--proper-motion", "on",
                           "-o", tmp_path / "o.h5")
    assert_one_line_error(code, err, "partial.ecsv", "proper_motion=on needs column(s) pmdec_error")
    t = _pm_table()
    t["pmra"].unit = "km / s"
    t.write(tmp_path / "unit.ecsv")
    code, _, err = run_cli("run", "gaia-cluster", tmp_path / "unit.ecsv", "-o", tmp_path / "o.h5")
    assert_one_line_error(code, err, "unit.ecsv", "column 'pmra' has unit 'km / s'", "mas/yr")
    code, _, err = run_cli("run", "gaia-cluster", "--proper-motion", "maybe", "-o", tmp_path / "o.h5")
    assert_one_line_error(code, err, "--proper-motion", "auto, on, off")
    assert not (tmp_path / "o.h5").exists()


# -- the terms and the density against scipy -------------------------------------------
def test_proper_motion_terms_match_scipy():
    import jax.numpy as jnp

    rng = np.random.default_rng(4)
    n = 30
    pm = rng.normal([-6, -2], [5, 3], size=(n, 2))
    ex, ey, rho = rng.uniform(0.02, 0.6, n), rng.uniform(0.02, 0.6, n), rng.uniform(-0.6, 0.6, n)
    cov = np.stack([ex**2, ey**2, rho * ex * ey], 1)
    used = (rng.uniform(size=n) > 0.2).astype(float)
    log_c, log_f = gc.log_pm_marginals(jnp.asarray(pm), jnp.asarray(cov), jnp.asarray(used),
                                       {k: jnp.asarray(v) for k, v in PM_PARAMS.items()}, 850.0)
    ref_c, ref_f = _scipy_pm_terms(pm, cov, PM_PARAMS, 850.0)
    np.testing.assert_allclose(np.asarray(log_c), ref_c * used, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(log_f), ref_f * used, rtol=1e-5, atol=1e-4)


def _pm_log_prior(data, params):
    centre, spread = data["pm_centre"].astype(float), data["field_pm_spread"].astype(float)
    field_centre = data["field_pm_centre"].astype(float)
    lp = (stats.norm.logpdf(params["cluster_pmra"], centre[0], 5.0) + stats.norm.logpdf(params["cluster_pmdec"], centre[1], 5.0)
          + stats.lognorm.logpdf(params["cluster_velocity_dispersion"], 0.75, scale=1.0)
          + stats.uniform.logpdf(params["field_pm_fraction"], 0, 1)
          + stats.lognorm.logpdf(params["field_pm_excess_ra"], 1.0, scale=spread[0])
          + stats.lognorm.logpdf(params["field_pm_excess_dec"], 1.0, scale=spread[1])
          + stats.lognorm.logpdf(params["field_pm_broadening"], 1.0, scale=2.0))
    lp += stats.norm.logpdf(params["field_pmra"], field_centre[0], spread[0])
    lp += stats.norm.logpdf(params["field_pmdec"], field_centre[1], spread[1])
    for k in (1, 2):
        lp += stats.uniform.logpdf(params[f"field_pm_corr_{k}"], -0.95, 1.9)
    return lp


def test_model_density_adds_the_proper_motion_terms(tmp_path):
    """log density with proper motions = the parallax-only log density + the proper-motion
    priors + sum log[q C_i e^{c_i} + (1-q) F_i e^{f_i}] - sum log[q C_i + (1-q) F_i]."""
    from numpyro.infer.util import log_density
    from scipy.special import logsumexp as np_logsumexp

    _pm_table(n=80, seed=3).write(tmp_path / "pm.ecsv")
    data = gc.load(tmp_path / "pm.ecsv", field="edsd").data
    base = {k: v for k, v in data.items() if not (k.startswith("proper_motion") or "pm_" in k)}
    params = {"cluster_distance": 840.0, "cluster_size": 12.0, "member_fraction": 0.35, "field_scale": 520.0,
              "parallax_offset": 0.005}
    lp_pm, _ = log_density(gc.model, (), dict(data), {**params, **PM_PARAMS})
    lp_base, _ = log_density(gc.model, (), base, params)
    import jax.numpy as jnp

    log_c, log_f = (np.asarray(a, float) for a in gc.log_component_marginals(
        jnp.asarray(data["parallax"]), jnp.asarray(data["parallax_error"]), distance=840.0, size=12.0, scale=520.0,
        offset=0.005, offset_in_field=False))
    pm_c, pm_f = _scipy_pm_terms(data["proper_motion"].astype(float), data["proper_motion_cov"].astype(float),
                                 PM_PARAMS, 840.0)
    a, b = np.log(0.35) + log_c, np.log(0.65) + log_f
    with_pm = np_logsumexp([a + pm_c, b + pm_f], axis=0).sum()
    without = np_logsumexp([a, b], axis=0).sum()
    expected = float(lp_base) + _pm_log_prior(data, PM_PARAMS) + with_pm - without
    assert float(lp_pm) == pytest.approx(expected, abs=0.05)


def test_memberships_include_the_proper_motion_terms(tmp_path):
    """star_conditionals' membership with proper motions, for one global draw, against
    q C e^c / (q C e^c + (1-q) F e^f) with c, f from scipy."""
    import jax.numpy as jnp

    _pm_table(n=50, seed=5).write(tmp_path / "pm.ecsv")
    data = gc.load(tmp_path / "pm.ecsv").data
    g = {"cluster_distance": 850.0, "cluster_size": 15.0, "member_fraction": 0.4, "field_scale": 480.0,
         "parallax_offset": 0.0}
    draws = {k: np.full((1, 1), v) for k, v in {**g, **PM_PARAMS}.items()}
    stars = gc.star_conditionals(draws, data["parallax"], data["parallax_error"], num_draws=1,
                                 offset_in_field=False, proper_motion=data)
    log_c, log_f = (np.asarray(a, float) for a in gc.log_component_marginals(
        jnp.asarray(data["parallax"]), jnp.asarray(data["parallax_error"]), distance=850.0, size=15.0, scale=480.0))
    pm_c, pm_f = _scipy_pm_terms(data["proper_motion"].astype(float), data["proper_motion_cov"].astype(float),
                                 PM_PARAMS, 850.0)
    a, b = np.log(0.4) + log_c + pm_c, np.log(0.6) + log_f + pm_f
    np.testing.assert_allclose(stars["membership"], np.exp(a - np.logaddexp(a, b)), atol=2e-3)


# -- membership on simulated cones ---------------------------------------------------------
def _precision_at_recall(membership, member, recall):
    order = np.argsort(-membership)
    k = int(np.searchsorted(np.cumsum(member[order]), recall * member.sum())) + 1
    return float(member[order][:k].mean())


def test_proper_motions_raise_membership_precision_at_equal_recall(tmp_path, run_cli):
    """An M67-like simulated cone (1000 stars; the field's motions are disc velocities over
    each star's distance, not the model's field mixture): with proper motions, the 90%-recall
    membership list is purer than with parallaxes alone, and the cluster's motion and
    velocity dispersion are recovered."""
    import astroinfer

    path = tmp_path / "cone.ecsv"
    truth = gc.simulate(path, seed=1, num_stars=1000, proper_motions=True)
    member = np.zeros(1000, bool)
    member[truth["member_rows"]] = True
    results = {}
    for mode in ("auto", "off"):
        out = tmp_path / f"{mode}.h5"
        code, _, err = run_cli("run", "gaia-cluster", path, "-q", "-o", out, "--proper-motion", mode)
        assert code == 0, err
        results[mode] = astroinfer.load(out)
    precision = {mode: _precision_at_recall(np.asarray(r.idata.stars["membership"]), member, 0.9)
                 for mode, r in results.items()}
    print("precision at 90% recall:", precision)
    assert precision["auto"] > 0.97
    assert precision["auto"] > precision["off"] + 0.05
    post = results["auto"].idata.posterior
    for name in ("cluster_pmra", "cluster_pmdec", "cluster_velocity_dispersion", "cluster_distance"):
        values = np.asarray(post[name])
        assert abs(values.mean() - truth["truth"][name]) < 4 * values.std(), (name, values.mean(), values.std())
    assert results["auto"].idata.stars["pmra"].attrs["units"] == "mas/yr"
    code, text, err = run_cli("show", tmp_path / "auto.h5")
    assert code == 0 and "membership from parallaxes and proper motions (1000 stars" in text, err
    code, _, err = run_cli("plot", tmp_path / "auto.h5", "--kind", "proper-motion", "-o", tmp_path / "pm.png")
    assert code == 0 and (tmp_path / "pm.png").stat().st_size > 10000, err
    code, _, err = run_cli("plot", tmp_path / "off.h5", "--kind", "proper-motion", "-o", tmp_path / "no.png")
    assert_one_line_error(code, err, "no proper motions")
    assert not (tmp_path / "no.png").exists()


# -- real data -------------------------------------------------------------------------
@pytest.mark.skipif(not RUPRECHT_147.is_file(), reason=f"real data {RUPRECHT_147} is absent")
def test_ruprecht_147_with_proper_motions(tmp_path, run_cli):
    """The 218 published members (Gaia DR2, with proper motions): every one a member, the
    cluster's motion at the error-weighted mean of the members' within 3 sd (an independent
    estimate) and an internal dispersion of an open cluster's (0.3-2 km/s)."""
    import astroinfer

    out = tmp_path / "r147.h5"
    code, text, err = run_cli("run", "gaia-cluster", RUPRECHT_147, "-o", out, "--samples", "500", "--warmup", "500")
    assert code == 0, err
    assert "membership from parallaxes and proper motions (218 stars" in text
    result = astroinfer.load(out)
    post = result.idata.posterior
    assert 295 < float(post["cluster_distance"].mean()) < 320
    assert float(result.idata.stars["membership"].min()) > 0.5
    t = Table.read(RUPRECHT_147)
    dispersion = float(post["cluster_velocity_dispersion"].mean())
    assert 0.3 < dispersion < 2.0
    sigma_mas = dispersion / (4.74047 * float(post["cluster_distance"].mean()) / 1000)
    for axis in ("pmra", "pmdec"):
        x, e = np.asarray(t[axis], float), np.asarray(t[f"{axis}_error"], float)
        weights = 1 / (e**2 + sigma_mas**2)
        mean, sd = (weights * x).sum() / weights.sum(), weights.sum() ** -0.5
        values = np.asarray(post[f"cluster_{axis}"])
        assert abs(values.mean() - mean) < 3 * np.hypot(values.std(), sd), (axis, values.mean(), mean)
    meta = result.provenance["input_metadata"]
    assert meta["proper_motion_columns"] == {c: c for c in ("pmra", "pmdec", "pmra_error", "pmdec_error")}
