"""Result files: round trip, one-line loading, provenance, atomic writes under SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import arviz as az
import h5py
import numpy as np
import pytest

import astroinfer
from astroinfer.result import Result
from astroinfer.store import ResultFileError, provenance, utc_now


def _result(n_draws=50, log_z=-3.25, extra=0):
    rng = np.random.default_rng(0)
    idata = az.from_dict(
        posterior={"a": rng.normal(size=(2, n_draws)), "v": rng.normal(size=(2, n_draws, 3 + extra))},
        sample_stats={"diverging": np.zeros((2, n_draws), bool), "lp": rng.normal(size=(2, n_draws))},
        observed_data={"y": rng.normal(size=7)},
    )
    return Result(
        idata=idata,
        method="nested",
        log_evidence=log_z,
        log_evidence_err=0.07,
        diagnostics={"r_hat_max": 1.001, "warnings": [], "ess_bulk": {"a": 90.0}},
        provenance=provenance(method="nested", options={"num_live_points": 500}, seed=11,
                              started=utc_now(), finished=utc_now(), input_path=__file__),
    )


def test_round_trip(tmp_path):
    path = tmp_path / "run.h5"
    original = _result()
    original.save(path)
    loaded = astroinfer.load(path)
    assert loaded.method == "nested"
    assert loaded.log_evidence == pytest.approx(-3.25) and loaded.log_evidence_err == pytest.approx(0.07)
    np.testing.assert_array_equal(loaded.idata.posterior["v"].values, original.idata.posterior["v"].values)
    assert loaded.idata.sample_stats["diverging"].values.dtype == bool
    assert loaded.diagnostics["ess_bulk"] == {"a": 90.0}
    prov = loaded.provenance
    assert prov["seed"] == 11 and prov["options"] == {"num_live_points": 500}
    import hashlib

    assert prov["input_sha256"] == hashlib.sha256(open(__file__, "rb").read()).hexdigest()
    assert prov["versions"]["numpyro"] and prov["versions"]["jax"]


def test_file_opens_with_arviz_xarray_h5py_without_warning(tmp_path):
    path = tmp_path / "run.h5"
    _result().save(path)
    code = textwrap.dedent(f"""
        import warnings
        warnings.simplefilter("error")
        import arviz, xarray, h5py
        idata = arviz.from_netcdf({str(path)!r})
        assert idata.posterior["a"].shape == (2, 50)
        assert xarray.open_dataset({str(path)!r}, group="posterior", engine="h5netcdf")["v"].shape == (2, 50, 3)
        with h5py.File({str(path)!r}) as f:
            assert f.attrs["astroinfer_format"] == "astroinfer-result"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_load_refuses_other_files(tmp_path):
    with pytest.raises(ResultFileError, match="no such file"):
        astroinfer.load(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(ResultFileError, match="not an astroinfer result"):
        astroinfer.load(junk)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(ResultFileError, match="not an astroinfer result"):
        astroinfer.load(plain)


_WRITER = textwrap.dedent("""
    import sys, arviz as az
    sys.path.insert(0, {tests!r})
    from test_store import _result
    result = _result(n_draws=200_000, extra=20)
    original = az.InferenceData.to_netcdf
    def announced(self, *args, **kwargs):
        print("writing", flush=True)
        return original(self, *args, **kwargs)
    az.InferenceData.to_netcdf = announced
    result.save({path!r})
    print("saved", flush=True)
""")


@pytest.mark.parametrize("pre_existing", [False, True])
def test_sigkill_while_saving_leaves_no_partial_file(tmp_path, pre_existing):
    path = tmp_path / "run.h5"
    if pre_existing:
        _result(log_z=-1.5).save(path)
    script = _WRITER.format(tests=os.path.dirname(__file__), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.3)  # well inside the write of ~40 MB of compressed draws
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    if pre_existing:
        # The earlier result under that name is untouched.
        assert astroinfer.load(path).log_evidence == pytest.approx(-1.5)
    else:
        assert not path.exists()
    # Whatever was half written carries a temporary name only.
    assert {p.name for p in tmp_path.iterdir()} <= {"run.h5"} | {p.name for p in tmp_path.glob(".run.h5.*.partial")}


def test_provenance_is_json_in_file(tmp_path):
    path = tmp_path / "run.h5"
    _result().save(path)
    with h5py.File(path) as f:
        prov = json.loads(f.attrs["provenance"])
        diag = json.loads(f.attrs["diagnostics"])
    assert prov["method"] == "nested" and "command_line" in prov and "started_utc" in prov
    assert diag["r_hat_max"] == pytest.approx(1.001)
