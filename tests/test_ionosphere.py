"""The ionosphere pipeline: h5parm in and out, truth recovery, real LOFAR data, bad input,
resume after SIGKILL, and Dask."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import _subprocess_env, assert_one_line_error

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lofar_phases_dirtest1.h5"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from astroinfer.pipelines.ionosphere import simulate

    path = tmp_path_factory.mktemp("iono") / "sim.h5"
    record = simulate(path, seed=7, num_times=12, num_ants=5, num_pols=2, noise=0.3)
    return path, record


def _copy_h5parm(src: Path, dst: Path, edit) -> Path:
    """Copy an h5parm and apply ``edit(file)`` to the copy."""
    import shutil

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def test_simulated_truth_is_recovered_and_h5parm_written(sim, tmp_path, run_cli):
    path, record = sim
    out = tmp_path / "run.h5"
    code, stdout, err = run_cli("run", "ionosphere", path, "-o", out)
    assert code == 0, err
    import astroinfer

    res = astroinfer.load(out)
    s = res.idata.problem_summary
    truth = np.asarray(record["truth"]["dtec"]).reshape(-1)  # (time, ant, dir, pol) order, like the problems
    z = (s["dtec_mode_mean"].values[:, 0] - truth) / s["dtec_sd"].values
    assert np.mean(np.abs(z) < 3) > 0.95 and np.all(np.abs(z) < 6), z
    for name in ("time", "ant", "dir", "pol"):
        assert s[name].sizes["problem"] == truth.size
    assert res.idata.posterior["dtec"].dims == ("chain", "draw", "problem")
    assert "residual phase rms" in stdout
    tec = out.with_name("run.tec.h5")
    with h5py.File(tec, "r") as f:
        val = f["sol000/tec000/val"]
        assert val.attrs["AXES"].decode() == "time,ant,dir,pol"
        assert val.shape == (12, 5, 1, 2) and f["sol000/tec000/weight"].shape == val.shape
        np.testing.assert_allclose(val[()].reshape(-1), s["dtec_mode_mean"].values[:, 0], rtol=1e-6)
        assert 0 < f["sol000/tec000/weight"][()].min() <= f["sol000/tec000/weight"][()].max() == 1.0
        assert f["sol000/tec000"].attrs["TITLE"].decode() == "tec"
    code, shown, err = run_cli("show", out)
    assert code == 0 and "multimodal" in shown and "SIM000HBA" in shown
    code, _, err = run_cli("plot", out, "--kind", "dtec", "-o", tmp_path / "dtec.png")
    assert code == 0 and (tmp_path / "dtec.png").stat().st_size > 1000


def test_axes_order_is_read_not_assumed(sim, tmp_path):
    """The same phases stored as (pol, ant, freq, dir, time) give the same problems."""
    from astroinfer.pipelines.ionosphere import load

    path, _ = sim
    ref = load(path)

    def permute(f):
        g = f["sol000/phase000"]
        for name in ("val", "weight"):
            data = g[name][()]  # time, freq, ant, dir, pol
            del g[name]
            g.create_dataset(name, data=np.transpose(data, (4, 2, 1, 3, 0)))
            g[name].attrs["AXES"] = b"pol,ant,freq,dir,time"

    other = load(_copy_h5parm(path, tmp_path / "perm.h5", permute))
    np.testing.assert_array_equal(ref.data["phase"], other.data["phase"])
    np.testing.assert_array_equal(ref.data["weight"], other.data["weight"])


def test_phases_slightly_outside_are_rewrapped_and_nan_flagged(sim, tmp_path, run_cli):
    from astroinfer.pipelines.ionosphere import load

    path, _ = sim
    ref = load(path)

    def nudge(f):
        val = f["sol000/phase000/val"][()]
        val[0, 0, 0, 0, 0] = np.pi + 1e-6  # just outside (-pi, pi]
        val[0, 1, 0, 0, 0] = -np.pi - 1e-6
        val[1, :3, 1, 0, 0] = np.nan
        f["sol000/phase000/val"][()] = val

    edited = _copy_h5parm(path, tmp_path / "edge.h5", nudge)
    loaded = load(edited)
    assert loaded.metadata["num_rewrapped_phases"] == 2
    assert loaded.metadata["num_nan_phases"] == 3
    phase = loaded.data["phase"]
    assert np.all(phase > -np.pi) and np.all(phase <= np.pi)
    # problem index of (time 0, ant 0, dir 0, pol 0) is 0; the nudged channels are 0 and 1.
    np.testing.assert_allclose(phase[0, :2], np.float32([-np.pi + 1e-6, np.pi - 1e-6]), atol=1e-6)
    # (time 1, ant 1, dir 0, pol 0) is problem 1 * 10 + 1 * 2 = 12; NaN channels flagged.
    assert np.all(loaded.data["weight"][12, :3] == 0) and np.all(np.isfinite(phase))
    assert np.array_equal(loaded.data["weight"][13], ref.data["weight"][13])
    code, _, err = run_cli("run", "ionosphere", edited, "-o", tmp_path / "edge_run.h5", "-q")
    assert code == 0, err


# -- bad input: exit 2, one line, no output file -----------------------------------------
def _no_amplitude_phase(f):
    del f["sol000/phase000"]


def _no_axes(f):
    del f["sol000/phase000/val"].attrs["AXES"]


def _axes_inconsistent(f):
    f["sol000/phase000/val"].attrs["AXES"] = b"time,freq,ant,pol"


def _axes_swapped(f):
    f["sol000/phase000/val"].attrs["AXES"] = b"freq,time,ant,dir,pol"  # lengths no longer match


def _no_freq(f):
    del f["sol000/phase000/freq"]


def _bad_freq(f):
    freq = f["sol000/phase000/freq"][()]
    freq[3] = -1.0
    f["sol000/phase000/freq"][()] = freq


def _all_flagged(f):
    f["sol000/phase000/weight"][()] = 0.0


def _all_nan(f):
    f["sol000/phase000/val"][()] = np.nan


BAD = {
    "no_phase_soltab": (_no_amplitude_phase, "no phase soltab"),
    "axes_missing": (_no_axes, "no AXES attribute"),
    "axes_wrong_count": (_axes_inconsistent, "names 4 axes but the data have 5"),
    "axes_wrong_lengths": (_axes_swapped, "AXES inconsistent with the shape"),
    "freq_missing": (_no_freq, "frequencies missing"),
    "freq_not_positive": (_bad_freq, "frequencies must be finite and positive"),
    "all_weights_zero": (_all_flagged, "all weights are zero"),
    "all_phases_nan": (_all_nan, "all weights are zero"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_h5parm_is_refused(case, sim, tmp_path, run_cli):
    path, _ = sim
    edit, fragment = BAD[case]
    bad = _copy_h5parm(path, tmp_path / f"{case}.h5", edit)
    out = tmp_path / "out.h5"
    code, _, err = run_cli("run", "ionosphere", bad, "-o", out)
    assert_one_line_error(code, err, str(bad), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{case}.h5"]


def test_not_hdf5_is_refused(tmp_path, run_cli):
    bad = tmp_path / "phases.h5"
    bad.write_text("time,freq,phase\n1,2,3\n")
    code, _, err = run_cli("run", "ionosphere", bad, "-o", tmp_path / "out.h5")
    assert_one_line_error(code, err, str(bad), "not an HDF5 file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phases.h5"]


def test_resume_against_a_different_run_is_refused(sim, tmp_path, run_cli):
    from astroinfer.batch_store import BatchStore

    path, _ = sim
    out = tmp_path / "out.h5"
    BatchStore(out, {"input_sha256": "something else", "seed": 99}, 3, resume=False)  # an interrupted other run
    code, _, err = run_cli("run", "ionosphere", path, "-o", out, "--resume", "-q")
    assert_one_line_error(code, err, "--resume refused", "different")
    assert not out.exists() and not out.with_name("out.tec.h5").exists()


# -- resume after SIGKILL -----------------------------------------------------------------
def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path, run_cli):
    from astroinfer.pipelines.ionosphere import simulate

    import astroinfer

    src = tmp_path / "big.h5"
    simulate(src, seed=3, num_times=80, num_ants=32, num_pols=2, num_freqs=24, noise=0.5)  # 5120 problems
    args = ["run", "ionosphere", str(src), "--chunk-size", "256", "--draws", "5"]
    full = tmp_path / "full.h5"
    code, _, err = run_cli(*args, "-o", full, "-q")
    assert code == 0, err

    killed = tmp_path / "killed.h5"
    parts = killed.with_name("killed.h5.parts")
    proc = subprocess.Popen([sys.executable, "-m", "astroinfer.cli", *args, "-o", str(killed), "-q"],
                            env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("chunk-*.npz"))) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(parts.glob("chunk-*.npz")))
    assert 3 <= done_before < 20 and not killed.exists()

    code, _, err = run_cli(*args, "-o", killed, "--resume", "-q")
    assert code == 0, err
    a, b = astroinfer.load(full), astroinfer.load(killed)
    assert b.diagnostics["chunks_resumed"] == done_before
    assert b.diagnostics["chunks_computed"] + done_before == b.diagnostics["chunks_total"] == 20
    sa, sb = a.idata.problem_summary, b.idata.problem_summary
    np.testing.assert_array_equal(sb["problem_index"].values, np.arange(5120))  # each problem once, in place
    for name in sa.data_vars:
        np.testing.assert_array_equal(sa[name].values, sb[name].values, err_msg=name)
    np.testing.assert_array_equal(a.idata.posterior["dtec"].values, b.idata.posterior["dtec"].values)
    assert not parts.exists()


# -- Dask ------------------------------------------------------------------------------------
def test_dask_local_cluster_gives_the_in_process_values():
    pytest.importorskip("distributed")
    import astroinfer
    from astroinfer.pipelines import ionosphere as iono
    from test_batch import KERNEL, simulate_problems

    data, shared, _ = simulate_problems(600, 1.0, seed=2)
    kwargs = dict(method="grid", seed=4, shared=shared, grid_kernel=KERNEL, chunk_size=256, num_draws=20)
    here = astroinfer.sample_batch(iono.model_dtec, data, **kwargs)
    there = astroinfer.sample_batch(iono.model_dtec, data, scheduler="local", **kwargs)
    for name in ("log_evidence", "dtec_mean", "dtec_sd", "dtec_mode_mass", "dtec_quantiles"):
        np.testing.assert_array_equal(here.idata.problem_summary[name].values,
                                      there.idata.problem_summary[name].values, err_msg=name)
    np.testing.assert_array_equal(here.idata.posterior["dtec"].values, there.idata.posterior["dtec"].values)


# -- real LOFAR data -----------------------------------------------------------------------
def test_real_lofar_h5parm_end_to_end(tmp_path, run_process):
    if not REAL.exists():
        pytest.skip(f"real data not found at {REAL} (see ../shared/data/README.md)")
    out = tmp_path / "lofar.h5"
    code, stdout, err = run_process("run", "ionosphere", REAL, "-o", out)
    assert code == 0, err
    assert "RS106HBA" in stdout and "residual phase rms" in stdout
    with h5py.File(out.with_name("lofar.tec.h5"), "r") as f:
        val = f["sol000/tec000/val"]
        assert val.attrs["AXES"].decode() == "time,ant,dir,pol" and val.shape == (48, 29, 1, 2)
        assert np.all(np.isfinite(val[()])) and f["sol000/tec000/weight"].shape == (48, 29, 1, 2)
    import astroinfer

    res = astroinfer.load(out)
    rms = res.idata["station_summary"]["residual_phase_rms"].values
    assert rms.shape == (29,) and np.all(rms < 0.6), rms
    assert res.idata.problem_summary.sizes["problem"] == 2784


def test_reference_station_is_subtracted(sim, tmp_path, run_cli):
    from astroinfer.pipelines.ionosphere import load

    path, _ = sim
    plain = load(path)
    ref = load(path, ref_ant="SIM001HBA")
    # problems are (time, ant, dir, pol) with 5 stations, 1 dir, 2 pols: ant 1 of time 0 is problems 2, 3.
    np.testing.assert_allclose(ref.data["phase"][2:4], 0.0, atol=1e-6)
    expected = np.angle(np.exp(1j * (plain.data["phase"][0].astype(np.float64) - plain.data["phase"][2])))
    np.testing.assert_allclose(ref.data["phase"][0], expected, atol=1e-5)
    code, _, err = run_cli("run", "ionosphere", path, "--ref-ant", "NOPE", "-o", tmp_path / "out.h5")
    assert_one_line_error(code, err, "--ref-ant NOPE", "SIM000HBA")
    assert not (tmp_path / "out.h5").exists()
