"""The ionosphere pipeline's optional smoothing stage (a GP over time): against known truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from astroinfer.pipelines.ionosphere.smooth import smooth_screen


def _smooth_series_with_outliers(seed=0, num_series=40, num_times=200, num_outliers=50, num_flagged=30):
    rng = np.random.default_rng(seed)
    times = 5.0e9 + 10.0 * np.arange(num_times)
    t = times - times[0]
    truth = np.array([0.2 * np.sin(2 * np.pi * t / rng.uniform(800, 3000)) + rng.normal(0, 0.05)
                      for _ in range(num_series)])
    sd = rng.uniform(0.01, 0.05, truth.shape)
    observed = truth + sd * rng.normal(size=truth.shape)
    jumped = np.zeros(truth.size, bool)
    jumped[rng.choice(truth.size, num_outliers, replace=False)] = True
    jumped = jumped.reshape(truth.shape)
    observed[jumped] += rng.choice([-1, 1], num_outliers) * rng.uniform(0.3, 0.6, num_outliers)  # a wrong mode
    valid = np.ones(truth.shape, bool)
    valid.flat[rng.choice(truth.size, num_flagged, replace=False)] = False
    return times, truth, observed, sd, valid, jumped & valid


def test_smooth_screen_recovers_smooth_series_and_finds_the_jumps():
    times, truth, observed, sd, valid, jumped = _smooth_series_with_outliers()
    screen = smooth_screen(times, observed, sd, valid)
    clean = valid & ~jumped
    rms_raw = np.sqrt(np.mean((observed - truth)[clean] ** 2))
    rms_smooth = np.sqrt(np.mean((screen["mean"] - truth)[clean] ** 2))
    assert rms_smooth < 0.35 * rms_raw, (rms_raw, rms_smooth)  # measured 0.0064 vs 0.032
    # Every jump is found, and the smoothed value there is as good as elsewhere.
    assert np.all(screen["outlier"][jumped])
    assert np.sqrt(np.mean((screen["mean"] - truth)[jumped] ** 2)) < 2 * rms_smooth
    # False alarms near the Gaussian rate of |z| > 3 (0.27%), and z ~ N(0, 1) where clean.
    assert screen["outlier"][clean].mean() < 0.01
    z = screen["z"][clean]
    assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1
    # The smoothed sd is honest: 90% intervals cover the truth about 90% of the time.
    covered = np.abs(screen["mean"] - truth)[clean] < 1.645 * screen["sd"][clean]
    assert 0.85 < covered.mean() < 0.97
    # Flagged problems get a screen value but no outlier verdict.
    assert np.all(np.isfinite(screen["mean"][~valid])) and np.all(np.isnan(screen["z"][~valid]))
    assert not screen["on_grid_edge"]


def test_smooth_screen_refuses_unordered_times():
    times, _, observed, sd, valid, _ = _smooth_series_with_outliers(num_series=2, num_times=10, num_outliers=0,
                                                                    num_flagged=0)
    with pytest.raises(ValueError, match="increase"):
        smooth_screen(times[::-1], observed, sd, valid)


def test_smoothing_through_the_cli_flags_wrong_modes(tmp_path, run_cli):
    """Noise 1.2 rad makes most problems multimodal and the heaviest mode is sometimes the
    wrong one; the smoothed screen is much closer to the truth and flags those problems."""
    import astroinfer

    sim = tmp_path / "sim.h5"
    code, _, err = run_cli("simulate", "ionosphere", "-o", sim, "--seed", "3", "--num-times", "60", "--num-ants", "4",
                           "--noise", "1.2")
    assert code == 0, err
    out = tmp_path / "out.h5"
    code, stdout, err = run_cli("run", "ionosphere", sim, "-o", out, "--phase-noise", "1.2", "--smooth")
    assert code == 0, err
    assert "smoothing (GP over time)" in stdout + err
    result = astroinfer.load(out)
    truth = np.asarray(json.loads(sim.with_name("sim.truth.json").read_text())["truth"]["dtec"]).reshape(-1)
    raw = result.idata.problem_summary["dtec_mode_mean"].values[:, 0]
    screen = result.idata.smoothed_screen
    smooth, outlier = screen["dtec_smooth"].values, screen["outlier"].values > 0
    rms_raw = np.sqrt(np.mean((raw - truth) ** 2))
    rms_smooth = np.sqrt(np.mean((smooth - truth) ** 2))
    assert rms_smooth < 0.25 * rms_raw, (rms_raw, rms_smooth)
    wrong = np.abs(raw - truth) > 0.2  # a wrong mode (modes are ~0.5 TECU apart here)
    assert wrong.sum() >= 10
    assert outlier[wrong].mean() >= 0.9
    assert outlier[~wrong].mean() <= 0.02
    smoothing = result.diagnostics["smoothing"]
    assert smoothing["num_outliers"] == int(outlier.sum())
    assert smoothing["time_scale_s"] > 30.0  # smoother than the 30 s cadence
