"""line-fit: loader validation, simulation and its truth, the model's density, and inference.

The inference tests assert against independent truth: the parameters a simulation was made
with, a hand-written mixture likelihood (scipy), and agreement between the three methods
within Monte Carlo error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings

import numpy as np
import pytest
from astropy.table import Table

from astroinfer.pipeline import InputError, get_pipeline
from astroinfer.pipelines import line_fit
from astroinfer.pipelines.line_fit import PIPELINE, load, simulate, truth_path

from conftest import DEMO, DEMO_TRUTH


def _write_csv(path, text):
    path.write_text(text)
    return path


def _good_rows(n=8):
    return "x,y,sigma_y\n" + "".join(f"{i},{2 * i + 1},1.0\n" for i in range(n))


# -- loading and validation -----------------------------------------------------------
def test_load_returns_float_arrays_and_metadata(tmp_path):
    data = load(_write_csv(tmp_path / "ok.csv", _good_rows()))
    assert set(data.data) == {"x", "y", "sigma_y"}
    np.testing.assert_array_equal(data.data["y"], 2 * np.arange(8) + 1)
    assert all(v.dtype == np.float64 for v in data.data.values())
    assert data.metadata["num_rows"] == 8
    assert data.metadata["columns"] == {"x": "x", "y": "y", "sigma_y": "sigma_y"}


@pytest.mark.parametrize(
    "name, content, fragments",
    [
        ("nosig.csv", "x,y\n1,2\n2,3\n3,4\n4,5\n5,6\n", ["column 'sigma_y' is missing", "found x, y"]),
        ("neg.csv", _good_rows().replace("3,7,1.0", "3,7,-0.5"), ["'sigma_y' must be > 0", "data row 4"]),
        ("zero.csv", _good_rows().replace("3,7,1.0", "3,7,0"), ["'sigma_y' must be > 0"]),
        ("nan.csv", _good_rows().replace("2,5,1.0", "2,nan,1.0"), ["column 'y'", "non-finite", "data row 3"]),
        ("inf.csv", _good_rows().replace("2,5,1.0", "inf,5,1.0"), ["column 'x'", "non-finite"]),
        ("empty.csv", _good_rows().replace("2,5,1.0", "2,,1.0"), ["column 'y'", "empty value", "data row 3"]),
        ("text.csv", _good_rows().replace("2,5,1.0", "2,five,1.0"), ["column 'y' must be numeric"]),
        ("few.csv", _good_rows(3), ["3 data row(s)", f"at least {line_fit.MIN_ROWS}"]),
        ("onex.csv", "x,y,sigma_y\n" + "1,2,1\n" * 6, ["column 'x' has a single distinct value"]),
        ("header.csv", "x,y,sigma_y\n", ["0 data row(s)"]),
    ],
)
def test_load_refuses_bad_tables(tmp_path, name, content, fragments):
    path = _write_csv(tmp_path / name, content)
    with pytest.raises(InputError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message


def test_load_refuses_missing_folder_and_junk(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="is a folder"):
        load(tmp_path)
    junk = tmp_path / "junk.csv"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(InputError, match="junk.csv"):
        load(junk)
    png = tmp_path / "figure.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(InputError, match="figure.png: cannot read it as a table"):
        load(png)


def test_load_column_options_case_and_units(tmp_path):
    table = Table({"MJD": [1.0, 2, 3, 4, 5, 6], "Flux": [1.0, 2, 3, 4, 5, 7], "err": [10.0, 20, 10, 10, 10, 10]})
    table["Flux"].unit = "m"
    table["err"].unit = "cm"
    path = tmp_path / "units.ecsv"
    table.write(path)
    data = load(path, x="mjd", y="flux", sigma_y="err")
    np.testing.assert_allclose(data.data["sigma_y"], [0.1, 0.2, 0.1, 0.1, 0.1, 0.1])
    assert data.metadata["columns"] == {"x": "MJD", "y": "Flux", "sigma_y": "err"}
    table["err"].unit = "s"
    table.write(path, overwrite=True)
    with pytest.raises(InputError, match="unit s, which does not convert"):
        load(path, x="MJD", y="Flux", sigma_y="err")


def test_simulate_writes_table_and_truth_in_every_format(tmp_path):
    for ext in ("csv", "ecsv", "fits"):
        path = tmp_path / f"sim.{ext}"
        record = simulate(path, seed=4, num_points=30)
        assert record == json.loads(truth_path(path).read_text())
        assert truth_path(path).name == "sim.truth.json"
        data = load(path)
        assert data.metadata["num_rows"] == 30
        # The truth describes the data: inliers lie on the true line within a few sigma.
        truth = record["truth"]
        inlier = np.ones(30, bool)
        inlier[record["outlier_rows"]] = False
        resid = (data.data["y"] - truth["m"] * data.data["x"] - truth["b"]) / data.data["sigma_y"]
        assert np.all(np.abs(resid[inlier]) < 5)
        if ext == "ecsv":
            assert Table.read(path).meta["astroinfer_simulation"]["truth"] == truth
        if ext == "fits":
            assert Table.read(path).meta["M_TRUE"] == pytest.approx(truth["m"])
    # Same seed, same bytes; another seed, another table.
    simulate(tmp_path / "again.csv", seed=4, num_points=30)
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "sim.csv").read_bytes()
    simulate(tmp_path / "other.csv", seed=5, num_points=30)
    assert (tmp_path / "other.csv").read_bytes() != (tmp_path / "sim.csv").read_bytes()


def test_bundled_demo_is_made_by_simulate(tmp_path, demo_truth):
    made = tmp_path / "line_fit_demo.csv"
    record = simulate(made, PIPELINE.demo_seed)
    assert made.read_bytes() == DEMO.read_bytes()
    assert record == demo_truth
    assert PIPELINE.demo_input().resolve() == DEMO.resolve()
    assert load(DEMO).metadata["num_rows"] == 50


def test_demo_input_generated_into_cache_without_source_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROINFER_CACHE_DIR", str(tmp_path / "cache"))
    installed = dataclasses.replace(PIPELINE, module_file=str(tmp_path / "site" / "pipelines" / "line_fit.py"))
    path = installed.demo_input()
    assert path == tmp_path / "cache" / "demos" / "line_fit_demo.csv"
    assert path.read_bytes() == DEMO.read_bytes()
    assert json.loads(truth_path(path).read_text()) == json.loads(DEMO_TRUTH.read_text())


def test_registry_finds_line_fit():
    assert get_pipeline("line-fit") is PIPELINE
    assert PIPELINE.description and "\n" not in PIPELINE.description


# -- the model's density against an independent formula ------------------------------
def test_model_density_is_the_marginalised_mixture():
    from numpyro.infer.util import log_density
    from scipy import stats

    data = load(DEMO).data
    x, y, s = data["x"], data["y"], data["sigma_y"]
    params = {"m": -1.3, "b_centered": -18.5, "Q": 0.2, "Y_b": -30.0, "ln_V_b": 4.5}
    logp, trace = log_density(line_fit.model, (), dict(data), params)

    x_mean, x_sd, y_mean = x.mean(), x.std(), y.mean()
    y_sd = max(y.std(), np.median(s))
    prior = (
        stats.norm.logpdf(params["m"], 0, 5 * y_sd / x_sd)
        + stats.norm.logpdf(params["b_centered"], y_mean, 5 * y_sd)
        + stats.uniform.logpdf(params["Q"], 0, 1)
        + stats.norm.logpdf(params["Y_b"], y_mean, 5 * y_sd)
        + stats.norm.logpdf(params["ln_V_b"], 2 * np.log(y_sd), 3)
    )
    line = params["b_centered"] + params["m"] * (x - x_mean)
    v_b = math.exp(params["ln_V_b"])
    like = np.sum(np.log(
        (1 - params["Q"]) * stats.norm.pdf(y, line, s)
        + params["Q"] * stats.norm.pdf(y, params["Y_b"], np.sqrt(s**2 + v_b))
    ))
    assert float(logp) == pytest.approx(prior + like, rel=1e-5)
    assert float(trace["b"]["value"]) == pytest.approx(params["b_centered"] - params["m"] * x_mean, rel=1e-5)


# -- inference ------------------------------------------------------------------------
PARAMS = ("m", "b")
SETTINGS = {
    "nuts": dict(num_samples=1000, num_warmup=500),
    "nested": dict(num_samples=1000, num_live_points=150),
    # Small flow, few training loops: flow-MC's cost here is mostly compilation.
    "flowmc": dict(num_samples=300, num_chains=16, num_warmup_loops=3, steps_per_loop=100,
                   max_epochs=50, flow_layers=2, flow_width=16, flow_knots=6),
}


@pytest.fixture(scope="module")
def fits(simulated_line, tmp_path_factory):
    """Results on the simulated table: NUTS through ``astroinfer.run_pipeline`` (saved and
    loaded back), the other methods through ``astroinfer.sample``."""
    import astroinfer

    path, _ = simulated_line
    data = load(path)
    results = {}

    def get(method):
        if method not in results:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if method == "nuts":
                    out = tmp_path_factory.mktemp("fits") / "nuts.h5"
                    astroinfer.run_pipeline("line-fit", path, out=out, method="nuts", seed=1, **SETTINGS["nuts"])
                    results[method] = astroinfer.load(out)
                else:
                    results[method] = astroinfer.sample(line_fit.model, data.data, method=method, seed=1,
                                                        **SETTINGS[method])
        return results[method]

    return data, get


def _mean_and_mcse(result, name):
    import arviz as az

    draws = np.asarray(result.idata.posterior[name])
    mean, sd = float(draws.mean()), float(draws.std())
    if result.method == "nested":
        # Resampled draws repeat points: the weights' Kish ESS bounds their information.
        ess = result.diagnostics["ess_kish"]
        mcse = sd * math.sqrt(1.0 / ess + 1.0 / draws.size)
    else:
        mcse = float(az.mcse(result.idata.posterior[name].to_dataset(), method="mean")[name])
    return mean, sd, mcse


def test_nuts_recovers_the_simulated_line(fits, simulated_line):
    data, get = fits
    _, record = simulated_line
    result = get("nuts")
    assert result.provenance["pipeline"] == "line-fit"
    assert result.provenance["input_sha256"] == hashlib.sha256(simulated_line[0].read_bytes()).hexdigest()
    assert result.diagnostics["divergences"] == 0
    assert result.diagnostics["r_hat_max"] < 1.02
    for name in PARAMS:
        mean, sd, _ = _mean_and_mcse(result, name)
        truth = record["truth"][name]
        assert abs(mean - truth) < 4 * sd, f"{name}: posterior {mean:.3f} +- {sd:.3f}, truth {truth:.3f}"

    # Outliers far from the true line are found; true inliers are not called outliers.
    prob = line_fit.summarise(result, data)["outlier_probability"]
    truth = record["truth"]
    outlier = np.zeros(prob.size, bool)
    outlier[record["outlier_rows"]] = True
    x, y, s = data.data["x"], data.data["y"], data.data["sigma_y"]
    far = outlier & (np.abs(y - truth["m"] * x - truth["b"]) > 6 * s)
    assert far.sum() >= 3
    assert np.all(prob[far] > 0.9)
    assert np.all(prob[~outlier] < 0.5)


@pytest.mark.parametrize("method", ["nested", "flowmc"])
def test_methods_agree_with_nuts(fits, method):
    _, get = fits
    reference, other = get("nuts"), get(method)
    for name in PARAMS:
        mean_a, sd_a, mcse_a = _mean_and_mcse(reference, name)
        mean_b, sd_b, mcse_b = _mean_and_mcse(other, name)
        tolerance = 4 * math.hypot(mcse_a, mcse_b) + 0.05 * sd_a
        assert abs(mean_a - mean_b) < tolerance, (
            f"{name}: nuts {mean_a:.4f} (mcse {mcse_a:.4f}) vs {method} {mean_b:.4f} (mcse {mcse_b:.4f})"
        )
        assert sd_b == pytest.approx(sd_a, rel=0.25)
    if method == "nested":
        assert np.isfinite(other.log_evidence) and other.log_evidence_err < 1.0
