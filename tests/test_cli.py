"""The ``astroinfer`` command line: runs, result files, show/plot/simulate, and bad input.

Runs that matter go through a real process (``python -m astroinfer.cli``), so stderr,
exit status and the absence of tracebacks are those a user sees; the long list of bad
inputs also runs in-process through ``astroinfer.cli.main`` to stay quick.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import DEMO, assert_one_line_error

FAST = ("--samples", "300", "--warmup", "300")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def nuts_run(workdir, run_process):
    """``astroinfer run line-fit -o out.h5`` (short chains) on the bundled demo."""
    code, out, err = run_process("run", "line-fit", "-o", "out.h5", *FAST, cwd=workdir)
    return workdir / "out.h5", code, out, err


@pytest.fixture(scope="module")
def nested_run(workdir, run_process):
    """``astroinfer run line-fit --method nested -o ev.h5`` with a small config, quietly."""
    (workdir / "nested.toml").write_text("seed = 3\n[nested]\nnum_live_points = 100\n")
    code, out, err = run_process("run", "line-fit", "--method", "nested", "--config", "nested.toml",
                                 "--samples", "500", "--quiet", "-o", "ev.h5", cwd=workdir)
    return workdir / "ev.h5", code, out, err


# -- successful runs ------------------------------------------------------------------
def test_pipelines_lists_line_fit(run_cli):
    code, out, err = run_cli("pipelines")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("line-fit"))
    assert "outlier" in line


def test_help_is_one_screen_and_fast(run_process):
    code, out, err = run_process("--help")
    assert code == 0 and err == ""
    for command in ("pipelines", "run", "show", "plot", "simulate"):
        assert command in out


def test_run_writes_a_result(nuts_run):
    path, code, out, err = nuts_run
    assert code == 0, err
    assert "Traceback" not in err
    assert path.is_file()
    assert "wrote out.h5" in err
    assert re.search(r"^m\s+-?\d", out, re.M), out  # the pipeline's parameter table
    for line in err.splitlines():
        if "warning" in line:
            assert line.startswith("astroinfer: warning: ")
    # No temporary files are left in the folder.
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".out.h5")]


def test_result_loads_with_arviz_in_a_fresh_process_without_warnings(nuts_run):
    path = nuts_run[0]
    code = (
        "import warnings\n"
        "warnings.simplefilter('error')\n"
        "import arviz\n"
        f"idata = arviz.from_netcdf({str(path)!r})\n"
        "assert {'posterior', 'sample_stats', 'observed_data'} <= set(idata.groups())\n"
        "print(idata.posterior.sizes['chain'], idata.posterior.sizes['draw'], float(idata.posterior['m'].mean()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    chains, draws, m_mean = proc.stdout.split()
    assert (int(chains), int(draws)) == (2, 300)
    assert np.isfinite(float(m_mean))


def test_provenance_records_versions_options_seed_and_input_hash(nuts_run):
    import astroinfer

    path = nuts_run[0]
    result = astroinfer.load(path)
    prov = result.provenance
    assert prov["pipeline"] == "line-fit"
    assert prov["method"] == "nuts"
    assert prov["seed"] == 0
    assert prov["options"]["num_samples"] == 300
    assert prov["options"]["num_warmup"] == 300
    assert prov["options"]["num_chains"] == 2
    assert prov["input_sha256"] == hashlib.sha256(DEMO.read_bytes()).hexdigest()
    assert os.path.samefile(prov["input_path"], DEMO)
    for package in ("astroinfer", "jax", "numpyro", "arviz"):
        assert prov["versions"][package] not in (None, "", "not installed")
    assert "run line-fit" in prov["command_line"]
    assert prov["input_metadata"]["num_rows"] == 50
    assert result.idata.posterior.sizes["draw"] == 300


def test_chains_run_in_parallel_on_two_cores(nuts_run):
    import astroinfer

    if (os.cpu_count() or 1) < 2 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        pytest.skip("needs 2 cores and no user-set device count")
    assert astroinfer.load(nuts_run[0]).diagnostics["chain_method"] == "parallel"


def test_nested_run_restores_the_log_evidence(nested_run, run_cli):
    import astroinfer
    import h5py

    path, code, out, err = nested_run
    assert code == 0, err
    # --quiet: no progress, no summary; only warnings may appear.
    assert out == ""
    assert all(line.startswith("astroinfer: warning: ") for line in err.splitlines()), err
    result = astroinfer.load(path)
    assert result.method == "nested"
    assert math.isfinite(result.log_evidence) and 0 < result.log_evidence_err < 1
    assert result.provenance["seed"] == 3  # from the config file
    assert result.provenance["options"]["num_live_points"] == 100
    with h5py.File(path, "r") as handle:
        assert np.ravel(handle.attrs["log_evidence"])[0] == result.log_evidence
    code, out, err = run_cli("show", path)
    assert code == 0, err
    shown = re.search(r"log-evidence: (\S+) \+- (\S+)", out)
    assert shown, out
    assert float(shown.group(1)) == pytest.approx(result.log_evidence, abs=1e-6)
    assert float(shown.group(2)) == pytest.approx(result.log_evidence_err, abs=1e-6)


def test_show_prints_summary_diagnostics_and_provenance(nuts_run, run_cli):
    path = nuts_run[0]
    code, out, err = run_cli("show", path)
    assert code == 0, err
    for text in ("posterior summary", "mean", "r_hat", "diagnostics:", "divergences", "warnings",
                 "provenance:", "input_sha256", "versions:", "seed: 0"):
        assert text in out
    for name in ("m", "b", "Q", "Y_b", "V_b"):
        assert re.search(rf"^{name}\s+-?\d", out, re.M), name
    assert "log-evidence" not in out
    code, out, err = run_cli("show", path, "--var", "m")
    assert code == 0 and re.search(r"^m\s", out, re.M) and not re.search(r"^Q\s", out, re.M)


@pytest.mark.parametrize("kind", ["corner", "trace"])
def test_plot_writes_png(nuts_run, run_cli, kind):
    path = nuts_run[0]
    figure = path.parent / f"{kind}.png"
    code, out, err = run_cli("plot", path, "--kind", kind, "-o", figure)
    assert code == 0, err
    data = figure.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_simulate_writes_the_input_and_its_truth(tmp_path, run_cli):
    import astroinfer.pipelines.line_fit as line_fit

    target = tmp_path / "sim.ecsv"
    code, out, err = run_cli("simulate", "line-fit", "-o", target, "--seed", "7")
    assert code == 0, err
    record = json.loads((tmp_path / "sim.truth.json").read_text())
    assert record["seed"] == 7 and set(record["truth"]) == {"m", "b", "Q", "Y_b", "V_b"}
    assert json.loads(out[out.index("{"):]) == record["truth"]
    assert line_fit.load(target).metadata["num_rows"] == 50
    # The same seed through the Python API gives the same data.
    line_fit.simulate(tmp_path / "again.ecsv", seed=7)
    assert (tmp_path / "again.ecsv").read_bytes() == target.read_bytes()


# -- bad input: one line, exit 2, no traceback, no output file ------------------------
@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "nosigma.csv").write_text("x,y\n" + "".join(f"{i},{i}\n" for i in range(10)))
    (tmp_path / "junk.csv").write_bytes(bytes(range(256)) * 16)
    (tmp_path / "figure.png").write_bytes(PNG_MAGIC + bytes(range(256)) * 4)
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "broken.toml").write_text("[nuts\nnum_warmup = 5\n")
    (tmp_path / "unknown.toml").write_text("[nuts]\nnum_warmup = 50\nnum_leaves = 3\n")
    (tmp_path / "toplevel.toml").write_text("samples = 50\n")
    (tmp_path / "badmethod.toml").write_text('method = "mcmc"\n')
    (tmp_path / "pipeline.toml").write_text("[pipeline]\nlines = 2\n")
    (tmp_path / "notes.txt").write_text("not a result\n")
    return tmp_path


BAD_RUNS = [
    (["run", "no-such-pipeline"], ["unknown pipeline 'no-such-pipeline'", "line-fit"]),
    (["run", "line-fit", "--method", "gibbs"], ["--method", "gibbs"]),
    (["run", "line-fit", "{d}/missing.csv"], ["missing.csv: no such file"]),
    (["run", "line-fit", "{d}/folder.csv"], ["folder.csv: is a folder"]),
    (["run", "line-fit", "{d}/junk.csv"], ["junk.csv", "cannot read it"]),
    (["run", "line-fit", "{d}/figure.png"], ["figure.png", "cannot read it as a table"]),
    (["run", "line-fit", "{d}/nosigma.csv"], ["nosigma.csv: column 'sigma_y' is missing"]),
    (["run", "line-fit", "--samples", "-5"], ["--samples", "-5"]),
    (["run", "line-fit", "--samples", "0"], ["--samples"]),
    (["run", "line-fit", "--chains", "1.5"], ["--chains", "1.5"]),
    (["run", "line-fit", "--warmup", "ten"], ["--warmup", "ten"]),
    (["run", "line-fit", "--seed", "-1"], ["--seed"]),
    (["run", "line-fit", "--method", "nested", "--chains", "4"], ["--chains does not apply to method 'nested'"]),
    (["run", "line-fit", "--method", "flowmc", "--warmup", "4"], ["--warmup does not apply to method 'flowmc'"]),
    (["run", "line-fit", "--config", "{d}/broken.toml"], ["broken.toml: invalid TOML"]),
    (["run", "line-fit", "--config", "{d}/unknown.toml"], ["unknown.toml", "num_leaves"]),
    (["run", "line-fit", "--config", "{d}/toplevel.toml"], ["toplevel.toml: unknown key 'samples'"]),
    (["run", "line-fit", "--config", "{d}/badmethod.toml"], ["badmethod.toml", "mcmc"]),
    (["run", "line-fit", "--config", "{d}/pipeline.toml"],
     ["pipeline.toml: [pipeline] unknown option(s) lines for pipeline 'line-fit'"]),
    (["run", "line-fit", "--config", "{d}/missing.toml"], ["missing.toml: no such file"]),
    (["run", "line-fit", "--config", "{d}/junk.csv"], ["junk.csv: not a text file"]),
    (["run", "line-fit", "-o", "{d}/no/such/folder/out.h5"], ["does not exist"]),
    (["run", "line-fit", "--bogus"], ["--bogus"]),
    (["run", "line-fit", "--scheduler", "local"], ["--scheduler applies only to batch pipelines"]),
    (["run", "line-fit", "--resume"], ["--resume applies only to batch pipelines"]),
    (["run", "line-fit", "--retrain"], ["--retrain applies to method 'flowmc' only"]),
    (["simulate", "line-fit", "-o", "{d}/sim.csv", "--noise", "2"], ["--noise", "line-fit"]),
    (["show", "{d}/notes.txt"], ["notes.txt: not an astroinfer result file"]),
    (["show", "{d}/missing.h5"], ["missing.h5: no such file"]),
    (["show", "{d}/junk.csv"], ["junk.csv: not an astroinfer result file"]),
    (["plot", "{d}/notes.txt", "-o", "{d}/fig.png"], ["notes.txt: not an astroinfer result file"]),
    (["plot", "{d}/missing.h5", "--kind", "ribbon"], ["--kind", "ribbon"]),
    (["simulate", "no-such-pipeline", "-o", "{d}/sim.csv"], ["unknown pipeline"]),
    (["simulate", "line-fit", "-o", "{d}/sim.xlsx"], ["sim.xlsx", ".csv"]),
    (["simulate", "line-fit"], ["-o"]),
]


@pytest.mark.parametrize("args, fragments", BAD_RUNS, ids=[" ".join(a) for a, _ in BAD_RUNS])
def test_bad_input_is_one_line_exit_2(inputs, run_cli, monkeypatch, args, fragments):
    monkeypatch.chdir(inputs)
    before = sorted(p.name for p in inputs.iterdir())
    code, out, err = run_cli(*[a.format(d=inputs) for a in args])
    assert_one_line_error(code, err, *fragments)
    # No result, figure or table was left behind (the default output name included).
    assert sorted(p.name for p in inputs.iterdir()) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files without read permission")
def test_unreadable_input(inputs, run_cli):
    path = inputs / "secret.csv"
    path.write_text("x,y,sigma_y\n" + "1,1,1\n" * 6)
    path.chmod(0)
    code, out, err = run_cli("run", "line-fit", path, "-o", inputs / "out.h5")
    assert_one_line_error(code, err, "secret.csv: cannot read the file")
    assert not (inputs / "out.h5").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "no-such-pipeline"], "unknown pipeline"),
        (["run", "line-fit", "missing.csv"], "missing.csv: no such file"),
        (["run", "line-fit", "junk.csv"], "junk.csv"),
        (["run", "line-fit", "--samples", "-5"], "--samples"),
        (["run", "line-fit", "--config", "broken.toml"], "invalid TOML"),
        (["show", "notes.txt"], "not an astroinfer result file"),
    ],
)
def test_bad_input_in_a_real_process(inputs, run_process, args, fragment):
    code, out, err = run_process(*args, cwd=inputs)
    assert_one_line_error(code, err, fragment)
    assert not list(inputs.glob("*.h5"))


def test_failing_run_keeps_an_existing_output_file(inputs, run_cli):
    target = inputs / "precious.h5"
    target.write_bytes(b"an earlier result that must survive")
    code, out, err = run_cli("run", "line-fit", inputs / "nosigma.csv", "-o", target)
    assert_one_line_error(code, err, "column 'sigma_y' is missing")
    # A run that fails inside the engine (after the input was read) keeps it too.
    (inputs / "late.toml").write_text("[nested]\nnum_live_points = 10\nnum_delete = 20\n")
    code, out, err = run_cli("run", "line-fit", "--method", "nested", "--config", inputs / "late.toml",
                             "-q", "-o", target)
    assert code in (1, 2)
    assert target.read_bytes() == b"an earlier result that must survive"
    assert not [p for p in inputs.iterdir() if p.name.startswith(".precious.h5")]


def test_output_may_not_overwrite_the_input(inputs, run_cli):
    table = inputs / "table.csv"
    table.write_bytes(DEMO.read_bytes())
    code, out, err = run_cli("run", "line-fit", table, "-o", table)
    assert_one_line_error(code, err, "is the input file")
    assert table.read_bytes() == DEMO.read_bytes()


def test_configure_jax_devices_respects_the_user():
    from astroinfer.cli import configure_jax_devices

    env = {}
    configure_jax_devices(env)
    expected = min(2, os.cpu_count() or 1)
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count={expected}"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --foo"}
    configure_jax_devices(env)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 --foo"
    env = {"XLA_FLAGS": "--foo"}
    configure_jax_devices(env)
    assert env["XLA_FLAGS"].startswith("--foo --xla_force_host_platform_device_count=")


def test_flow_plot_needs_a_flowmc_result(nuts_run, run_cli):
    path = nuts_run[0]
    figure = path.parent / "flow.png"
    code, out, err = run_cli("plot", path, "--kind", "flow", "-o", figure)
    assert code == 2 and "needs a flowmc result" in err and len(err.strip().splitlines()) == 1
    assert not figure.exists()


def test_pipelines_name_describes_one_pipeline(run_cli):
    code, out, _ = run_cli("pipelines", "line-fit")
    assert code == 0
    assert out.startswith("line-fit: ") and "plot kinds: corner, trace, flow" in out


def test_pipeline_options_parse_from_command_words():
    from astroinfer.pipeline import PipelineError, PipelineOption, parse_option_args

    def positive(text):
        value = float(text)
        if not value > 0:
            raise ValueError(f"expected a positive number, got {text}")
        return value

    options = (PipelineOption("parallax_min", "lower cut (mas)", parse=positive),
               PipelineOption("keep_duplicates", "keep repeated source_id", flag=True))
    words = ["--parallax-min", "0.2", "--keep-duplicates"]
    assert parse_option_args("p", options, words) == {"parallax_min": 0.2, "keep_duplicates": True}
    assert parse_option_args("p", options, ["--parallax-min=3"]) == {"parallax_min": 3.0}
    for bad, fragment in ((["--parallax-min", "-1"], "--parallax-min: expected a positive number"),
                          (["--parallax-min"], "requires a value"),
                          (["--keep-duplicates=yes"], "takes no value"),
                          (["--nope"], "its own options are --keep-duplicates, --parallax-min")):
        with pytest.raises(PipelineError, match=fragment):
            parse_option_args("p", options, bad)


def test_flowmc_rerun_into_the_same_file_reuses_its_flow(tmp_path, run_cli):
    from astroinfer import load

    out = tmp_path / "flow.h5"
    args = ("run", "line-fit", "--method", "flowmc", "--samples", "200", "--chains", "8", "-o", out)
    code, _, err = run_cli(*args)
    assert code == 0, err
    first = load(out)
    assert first.diagnostics["num_training_loops"] >= 1 and not first.diagnostics["flow_reused"]
    code, _, err = run_cli(*args, "--seed", "1")
    assert code == 0, err
    assert f"reusing the flow stored in {out}" in err
    again = load(out)
    assert again.diagnostics["flow_reused"] and again.diagnostics["num_training_loops"] == 0
    assert again.provenance["options"]["reuse_flow"] == str(out)
    code, _, err = run_cli(*args, "--retrain")
    assert code == 0, err
    assert "reusing" not in err and load(out).diagnostics["num_training_loops"] >= 1
    # Other data: the stored flow does not fit, so a new one is trained without a word.
    other = tmp_path / "other.csv"
    from astroinfer.pipelines.line_fit import simulate

    simulate(other, seed=5)
    code, _, err = run_cli("run", "line-fit", other, *args[2:])
    assert code == 0, err
    assert "reusing" not in err and load(out).diagnostics["num_training_loops"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["line-fit", "gaia-cluster", "spectral-lines"])
def test_every_single_problem_pipeline_runs_with_flowmc(name, tmp_path, run_cli):
    """`--method flowmc` works for every pipeline that fits one model (on its demo input)."""
    from astroinfer import load

    out = tmp_path / f"{name}.h5"
    code, _, err = run_cli("run", name, "--method", "flowmc", "--samples", "300", "-o", out, "-q")
    assert code == 0, err
    result = load(out)
    assert result.method == "flowmc" and result.provenance["pipeline"] == name
    assert result.diagnostics["global_acceptance"] > 0.05  # the flow was trained and used


def test_batch_pipeline_refuses_flowmc(run_cli, tmp_path):
    out = tmp_path / "ion.h5"
    code, _, err = run_cli("run", "ionosphere", "--method", "flowmc", "-o", out)
    assert_one_line_error(code, err, "--method flowmc is not available for pipeline 'ionosphere'")
    assert not out.exists()
