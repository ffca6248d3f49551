"""The run layer owns the run: ``run_pipeline`` and ``astroinfer run`` with the same settings
(TOML config included) write the same result file, and both reuse a flow stored in it.

Same file means: every array of every group bitwise equal, and the diagnostics and
provenance equal apart from times (when the run started and finished, how long each part
took) and the input path as written on the command line (both resolve to the same file).
"""

from __future__ import annotations

import numpy as np
import pytest

from astroinfer import load, run_pipeline

# Times and costs, which differ between any two runs.
_TIMES = {"started", "finished", "started_utc", "finished_utc", "compile_time_s", "run_time_s", "wall_time_s", "backend_compiles",
          "training_time_s", "sampling_time_s", "warmup_time_s"}


def _without_times(record: dict) -> dict:
    return {k: (_without_times(v) if isinstance(v, dict) else v) for k, v in record.items()
            if k not in _TIMES and not k.endswith("_time_s")}


def _assert_same_file(a, b) -> None:
    ra, rb = load(a), load(b)
    assert ra.method == rb.method and ra.log_evidence == rb.log_evidence
    assert set(ra.idata.groups()) == set(rb.idata.groups())
    for group in ra.idata.groups():
        da, db = ra.idata[group], rb.idata[group]
        assert set(da.data_vars) == set(db.data_vars), group
        for name in da.data_vars:
            np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=f"{group}/{name}")
    assert _without_times(ra.diagnostics) == _without_times(rb.diagnostics)
    assert _without_times(ra.provenance) == _without_times(rb.provenance)


def test_run_pipeline_and_the_cli_write_the_same_file(tmp_path, run_cli):
    config = tmp_path / "run.toml"
    config.write_text("seed = 5\nnum_samples = 300\n[nested]\nnum_live_points = 120\n")
    code, _, err = run_cli("run", "line-fit", "--method", "nested", "--config", config, "--quiet",
                           "-o", tmp_path / "cli.h5")
    assert code == 0, err
    api = run_pipeline("line-fit", out=tmp_path / "api.h5", method="nested", config=config)
    assert api.provenance["seed"] == 5 and api.provenance["options"]["num_live_points"] == 120
    _assert_same_file(tmp_path / "cli.h5", tmp_path / "api.h5")


@pytest.mark.slow
def test_run_pipeline_reuses_a_stored_flow_as_the_cli_does(tmp_path, run_cli):
    settings = {"num_samples": 200, "num_chains": 8}
    out = tmp_path / "flow.h5"
    first = run_pipeline("line-fit", out=out, method="flowmc", **settings)
    assert not first.diagnostics["flow_reused"] and first.diagnostics["num_training_loops"] >= 1
    # The CLI, then run_pipeline, each rerun into the same file with the same settings: both
    # reuse the stored flow and write the same file.
    code, _, err = run_cli("run", "line-fit", "--method", "flowmc", "--seed", "1", "--samples", "200",
                           "--chains", "8", "--quiet", "-o", out)
    assert code == 0, err
    cli_copy = tmp_path / "flow_cli.h5"
    cli_copy.write_bytes(out.read_bytes())
    again = run_pipeline("line-fit", out=out, method="flowmc", seed=1, **settings)
    assert again.diagnostics["flow_reused"] and again.diagnostics["num_training_loops"] == 0
    assert load(cli_copy).diagnostics["flow_reused"]
    _assert_same_file(cli_copy, out)
