"""spectral-lines benchmarks, side by side in one run (the machine is shared: quote ratios).

1. The pipeline's fit of the JAX/NumPyro tutorial's 20 000-pixel two-Gaussian spectrum vs the
   tutorial's reparameterised NumPyro model (two uniforms q1, q2 ordering the centres, dense
   mass matrix), same warmup/draws/chains: bulk ESS per second (minimum over the line
   parameters), ratio pipeline / tutorial (target >= 1). Each side runs in its own fresh
   process, alternating (``--repeats``), over several NUTS seeds (``--seeds``), with the JAX
   CPU devices the astroinfer CLI sets up (``--devices``; ``1`` is a plain Python session);
   the wall time in each denominator is the fit call with compilation (see ``bench_tutorial``).
2. Lines + quasiseparable GP continuum fitted with the pipeline at N = 20 000 and 100 000
   pixels: wall time (target: under 2 minutes for 100 000 pixels on 2 cores).
3. GP likelihood value + gradient, quasiseparable (tinygp ``kernels.quasisep.Matern32``) vs
   dense (``kernels.Matern32``, Cholesky) at N = 2 000.

    python benchmarks/spectral_lines.py                  # all three
    python benchmarks/spectral_lines.py --only gp-cost   # one: tutorial, gp-fit, gp-cost, model-cost
    python benchmarks/spectral_lines.py --gp-sizes 20000 --samples 300 --warmup 300
    python benchmarks/spectral_lines.py --only tutorial --repeats 3
    python benchmarks/spectral_lines.py --only tutorial --devices 1 cli --seeds 0 1 2
    python benchmarks/spectral_lines.py --only calibration --per-k 20   # --lines auto calibration
    python benchmarks/spectral_lines.py --only calibration --per-k 20 --continuum gp
    python benchmarks/spectral_lines.py --only start    # GP-continuum start vs greedy peaks

The tutorial model is reconstructed from its description (x in [-5, 5], 20 000 points,
amplitudes 2 and 1.5, centres -0.5 and 0.6, widths 0.6 and 0.9, noise 0.3, seed 0; centres
ordered through q1, q2 ~ Uniform(0, 1); NUTS with a dense mass matrix).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def tutorial_model(x, y=None):
    """The tutorial's reparameterised two-Gaussian model: x0 < x1 from q1, q2 ~ U(0, 1)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    lo, hi = -5.0, 5.0
    q1 = numpyro.sample("q1", dist.Uniform(0.0, 1.0))
    q2 = numpyro.sample("q2", dist.Uniform(0.0, 1.0))
    # the smaller of two uniform positions, then the larger one above it: uniform on x0 < x1
    x0 = numpyro.deterministic("x0", lo + (hi - lo) * (1.0 - jnp.sqrt(1.0 - q1)))
    x1 = numpyro.deterministic("x1", x0 + (hi - x0) * q2)
    a0 = numpyro.sample("a0", dist.Uniform(0.0, 5.0))
    a1 = numpyro.sample("a1", dist.Uniform(0.0, 5.0))
    w0 = numpyro.sample("w0", dist.Uniform(0.05, 2.5))
    w1 = numpyro.sample("w1", dist.Uniform(0.05, 2.5))
    sigma = numpyro.sample("sigma", dist.Exponential(1.0))
    mu = a0 * jnp.exp(-0.5 * ((x - x0) / w0) ** 2) + a1 * jnp.exp(-0.5 * ((x - x1) / w1) ** 2)
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def _ess_min(idata, names):
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ess = az.ess(idata, var_names=names, method="bulk")
    return float(min(float(np.min(ess[n].values)) for n in names))


def _tutorial_side(side: str, samples: int, warmup: int, chains: int, seed: int) -> dict:
    """One side of the tutorial comparison, timed from the fit call to posterior draws.

    Runs in its own fresh process (``--tutorial-side``), so neither side reuses executables
    the other compiled (and no persistent compilation cache is configured on either side);
    imports and writing the input file are outside the timed block.
    """
    import arviz as az
    import jax
    from astropy.table import Table

    import astroinfer
    from astroinfer.engine.timing import CompileTimer
    from astroinfer.pipelines.spectral_lines import tutorial_spectrum

    x, y, _ = tutorial_spectrum(seed=0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tutorial.csv"
        Table({"x": x, "flux": y}).write(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if side == "pipeline":
                with CompileTimer() as timer:
                    res = astroinfer.run_pipeline(
                        "spectral-lines", path, method="nuts", seed=seed, num_samples=samples, num_warmup=warmup,
                        num_chains=chains, load_options=PIPELINE_OPTIONS)
                idata = res.idata
                names = ["line_center", "line_fwhm", "line_amplitude"]
                steps = res.diagnostics["mean_leapfrog_steps"]
                nuts_s = res.diagnostics["wall_time_s"]
                chain_method = res.diagnostics["chain_method"]
            else:
                from numpyro.infer import MCMC, NUTS

                with CompileTimer() as timer:
                    # NumPyro's default chain_method ("parallel"): it draws the chains one after
                    # another when JAX has fewer devices than chains, as the pipeline's engine does
                    mcmc = MCMC(NUTS(tutorial_model, dense_mass=True), num_warmup=warmup, num_samples=samples,
                                num_chains=chains, progress_bar=False)
                    mcmc.run(jax.random.PRNGKey(seed), x=x, y=y, extra_fields=("num_steps",))
                    idata = az.from_dict(posterior={k: np.asarray(v) for k, v in
                                                    mcmc.get_samples(group_by_chain=True).items()})
                names = ["x0", "x1", "a0", "a1", "w0", "w1"]
                steps = float(np.mean(np.asarray(mcmc.get_extra_fields()["num_steps"])))
                nuts_s = timer.wall_seconds
                chain_method = mcmc.chain_method
            rhat = az.rhat(idata, var_names=names)
    return {"wall_s": timer.wall_seconds, "compile_s": timer.compile_seconds, "nuts_s": nuts_s,
            "ess_min": _ess_min(idata, names), "steps": steps, "chain_method": chain_method,
            "devices": jax.local_device_count(),
            "r_hat_max": float(max(float(np.max(rhat[n].values)) for n in names))}


# What the pipeline side is given: the options a user passes for this spectrum (two lines,
# no continuum: the tutorial's data have none; the table's column names).
PIPELINE_OPTIONS = {"lines": 2, "continuum": "none", "columns": "x,flux"}


def _child_environment(devices: str) -> dict:
    """The environment of a side's process: ``cli`` gives JAX the host devices that
    ``astroinfer`` (the CLI) asks for (``astroinfer.cli.configure_jax_devices``); a number
    gives that many."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f)
    env["XLA_FLAGS"] = flags
    if devices == "cli":
        from astroinfer.cli import configure_jax_devices

        configure_jax_devices(env)
    else:
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={int(devices)}".strip()
    return env


def bench_tutorial(samples: int, warmup: int, chains: int, seeds: list[int], repeats: int = 1,
                   devices: list[str] = ("cli",)) -> None:
    """ESS/s of the pipeline vs the tutorial's model; each side in a fresh process, alternating.

    ESS/s = minimum bulk ESS over the line parameters (centres, widths, amplitudes: bulk ESS
    is rank-based, so FWHM vs sigma does not matter) divided by the wall time of the fit call:
    pipeline: ``run_pipeline`` (read the file, start point, compile, NUTS warmup + draws,
    derived quantities, InferenceData); tutorial: ``MCMC(NUTS(...))`` construction, compile,
    warmup + draws and the InferenceData of its draws. Same chains, warmup, draws and JAX
    devices on both sides, default chain method on both (parallel chains when JAX has a
    device per chain, else one after another), compile time included on both sides.

    The minimum ESS of one run varies by ~+-20% with the seed (and any change of the start
    point or of floating-point order changes the chains), so the comparison runs several
    seeds: the ratio is that of the two sides' median ESS/s over all their runs.
    """
    import json
    import subprocess
    import sys

    options = ", ".join(f"{k}={v}" for k, v in PIPELINE_OPTIONS.items())
    for device_setting in devices:
        env = _child_environment(device_setting)
        rows = {"pipeline": [], "tutorial": []}
        for seed in seeds:
            for _ in range(repeats):
                for side in ("pipeline", "tutorial"):
                    out = subprocess.run([sys.executable, __file__, "--tutorial-side", side, "--samples", str(samples),
                                          "--warmup", str(warmup), "--chains", str(chains), "--seed", str(seed)],
                                         check=True, capture_output=True, text=True, env=env).stdout
                    rows[side].append({"seed": seed, **json.loads(out.strip().splitlines()[-1])})
        count = rows["pipeline"][0]["devices"]
        print(f"tutorial spectrum, N = 20000, {chains} chains x {warmup} warmup + {samples} draws, JAX CPU devices: "
              f"{count} ({'as the astroinfer CLI sets them' if device_setting == 'cli' else 'set'}), seeds "
              f"{', '.join(map(str, seeds))}; {repeats} alternating run(s) per seed and side, each in a fresh "
              f"process; pipeline options: {options}")
        for side, runs in rows.items():
            for r in runs:
                print(f"  {side:8s} seed {r['seed']}: wall {r['wall_s']:6.1f} s (compile {r['compile_s']:5.1f} s, "
                      f"NUTS call {r['nuts_s']:5.1f} s), min bulk ESS {r['ess_min']:6.1f}, ESS/s "
                      f"{r['ess_min'] / r['wall_s']:6.2f}, leapfrog steps per draw {r['steps']:5.1f}, r_hat_max "
                      f"{r['r_hat_max']:.4f}, chains {r['chain_method']}")
        rate = {side: [r["ess_min"] / r["wall_s"] for r in runs] for side, runs in rows.items()}
        wall = {side: float(np.median([r["wall_s"] for r in runs])) for side, runs in rows.items()}
        ess = {side: float(np.median([r["ess_min"] for r in runs])) for side, runs in rows.items()}
        pairs = [(p["ess_min"] / p["wall_s"]) / (t["ess_min"] / t["wall_s"])
                 for p, t in zip(rows["pipeline"], rows["tutorial"])]
        print(f"  medians: wall pipeline {wall['pipeline']:.1f} s, tutorial {wall['tutorial']:.1f} s; min bulk ESS "
              f"pipeline {ess['pipeline']:.0f}, tutorial {ess['tutorial']:.0f}")
        print(f"  ESS/s ratio pipeline / tutorial: {np.median(rate['pipeline']) / np.median(rate['tutorial']):.2f} "
              f"(median ESS/s over the runs of each side); run by run (each with the tutorial run after it): "
              f"{', '.join(f'{r:.2f}' for r in pairs)}")


def bench_gp_fit(sizes: list[int], samples: int, warmup: int, chains: int, seed: int,
                 modes: tuple[str, ...] = ("sample",), snr: float | None = None) -> None:
    """Fit a 2-line spectrum simulated with a GP continuum at each size.

    By default the lines are equally strong at every size (a line of a given width has the
    same peak height, on the same continuum model and per-pixel noise): line SNR 30 at
    20 000 pixels, growing as sqrt(N / 20 000) when the same window is sampled more finely.
    A fixed ``snr`` instead makes the lines of a longer spectrum fainter against the
    continuum: at 100 000 pixels and SNR 30 their peaks are about 0.13 against the
    continuum's 0.5, and in 5 of 10 simulated spectra the two-line posterior's densest
    mode put a line on a continuum bump rather than on a simulated line.
    """
    import jax

    import astroinfer
    from astroinfer.pipelines.spectral_lines import simulate

    print(f"lines + GP continuum fits: {jax.local_device_count()} JAX CPU device(s)")
    for n, mode in [(n, m) for n in sizes for m in modes]:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "spec.ecsv"
            line_snr = 30.0 * math.sqrt(n / 20_000) if snr is None else snr
            record = simulate(path, seed=1, lines=2, num_pixels=n, snr=line_snr, continuum="gp")
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = astroinfer.run_pipeline("spectral-lines", path, method="nuts", seed=seed, num_samples=samples,
                                              num_warmup=warmup, num_chains=chains,
                                              load_options={"lines": 2, "continuum": "gp",
                                                            "gp_hyperparameters": mode})
            wall = time.perf_counter() - started
        d = res.diagnostics
        r_hat = "n/a (one chain)" if d.get("r_hat_max") is None else f"{d['r_hat_max']:.3f}"
        ess = "n/a" if d.get("ess_bulk_min") is None else f"{d['ess_bulk_min']:.0f}"
        print(f"lines + GP continuum, N = {n:6d}, line SNR {line_snr:.0f}, GP hyperparameters {mode}: wall {wall:7.1f} s (compile {d['compile_time_s']:.1f} s, "
              f"sampling {d['run_time_s']:.1f} s), {chains} chains x {warmup}+{samples}, "
              f"{d['likelihood_evaluations']} gradient evaluations while sampling, r_hat_max {r_hat}, "
              f"min bulk ESS {ess}")
        post = res.idata.posterior
        for k, line in enumerate(record["truth"]["lines"]):
            parts = []
            for name, key in (("line_center", "center"), ("line_flux", "flux")):
                draws = np.asarray(post[name].isel(line=k)).ravel()
                parts.append(f"{key} {draws.mean():.3f} +- {draws.std():.3f} (truth {line[key]:.3f}, "
                             f"{(draws.mean() - line[key]) / draws.std():+.1f} sd)")
            print(f"    line {k}: " + "; ".join(parts))


def bench_model_cost(sizes: list[int], repeats: int = 7) -> None:
    """Value + gradient of the pipeline's lines + GP potential (what each NUTS step pays)."""
    import jax
    from numpyro.infer.initialization import init_to_value
    from numpyro.infer.util import initialize_model

    from astroinfer.pipelines import spectral_lines as sl

    for n in sizes:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "spec.ecsv"
            sl.simulate(path, seed=1, lines=2, num_pixels=n, snr=30.0)
            data = sl.load(path, lines=2, continuum="gp").data
        info = initialize_model(jax.random.PRNGKey(0), sl.model, model_kwargs=data,
                                init_strategy=init_to_value(values=sl.initial_values(data)))
        f = jax.jit(jax.value_and_grad(info.potential_fn))
        z = info.param_info.z
        jax.block_until_ready(f(z))
        per = []
        for i in range(repeats):
            started = time.perf_counter()
            jax.block_until_ready(f(jax.tree.map(lambda v: v + 1e-3 * i, z)))
            per.append(time.perf_counter() - started)
        print(f"lines + GP potential value+gradient, N = {n}: {np.median(per) * 1e3:.1f} ms (median of {repeats})")


def bench_gp_cost(n: int, repeats: int) -> None:
    import jax
    import jax.numpy as jnp
    from tinygp import GaussianProcess, kernels

    rng = np.random.default_rng(0)
    x = jnp.asarray(np.sort(rng.uniform(0, 10, n)), dtype=jnp.float32)
    y = jnp.asarray(np.sin(np.asarray(x)) + 0.1 * rng.normal(size=n), dtype=jnp.float32)

    def make(kind):
        def loglike(p):
            if kind == "quasisep":
                kernel = kernels.quasisep.Matern32(scale=jnp.exp(p[0]), sigma=jnp.exp(p[1]))
            else:
                kernel = jnp.exp(2 * p[1]) * kernels.Matern32(scale=jnp.exp(p[0]))
            return GaussianProcess(kernel, x, diag=0.01 + jnp.exp(p[2])).log_probability(y - p[3])
        return jax.jit(jax.value_and_grad(loglike))

    p = jnp.array([0.0, 0.0, -3.0, 0.1])
    times = {}
    values = {}
    for kind in ("quasisep", "dense"):
        f = make(kind)
        values[kind] = float(f(p)[0])
        per = []
        for i in range(repeats):
            started = time.perf_counter()
            jax.block_until_ready(f(p + 1e-3 * i))
            per.append(time.perf_counter() - started)
        times[kind] = float(np.median(per))
    print(f"GP likelihood value+gradient at N = {n}: quasiseparable {times['quasisep'] * 1e3:.2f} ms, dense "
          f"{times['dense'] * 1e3:.2f} ms (medians of {repeats}); dense / quasiseparable = "
          f"{times['dense'] / times['quasisep']:.1f}; log-likelihoods agree to "
          f"{abs(values['dense'] - values['quasisep']):.2e}")


def bench_start(sizes: list[int], seeds: int, lines: int) -> None:
    """How often the start of a GP-continuum fit misplaces a line (more than 2 sigma from the
    truth): the greedy peaks (``initial_values``) against ``gp_continuum_start``, on spectra
    simulated with a GP continuum (line SNR drawn in [10, 30] up to 5 000 pixels; above, as
    strong as ``--only gp-fit`` makes them)."""
    from astroinfer.pipelines import spectral_lines as sl

    for n in sizes:
        misplaced = {"greedy": 0, "searched": 0}
        seconds = []
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for seed in range(seeds):
                path = Path(folder) / f"spec{seed}.ecsv"
                snr = None if n <= 5000 else 30.0 * math.sqrt(n / 20_000)
                record = sl.simulate(path, seed=seed, lines=lines, num_pixels=n, continuum="gp", snr=snr)
                loaded = sl.load(path, lines=lines, continuum="gp")
                standard = loaded.metadata["standardisation"]
                truth = np.array([line["center"] for line in record["truth"]["lines"]])
                sigma = np.array([line["sigma"] for line in record["truth"]["lines"]])
                started = time.perf_counter()
                searched = sl.gp_continuum_start(loaded.data)
                seconds.append(time.perf_counter() - started)
                for name, values in (("greedy", sl.initial_values(loaded.data)), ("searched", searched)):
                    centres = standard["x_mid"] + standard["x_half"] * sl.line_centres_np(values["center_q"])
                    misplaced[name] += bool(np.any(np.abs(centres - truth) > 2.0 * sigma))
        print(f"GP-continuum start, {lines} lines, N = {n}, seeds 0-{seeds - 1}: a line misplaced in "
              f"{misplaced['greedy']} (greedy peaks) and {misplaced['searched']} (gp_continuum_start) of {seeds}; "
              f"gp_continuum_start median {np.median(seconds):.1f} s (first, with compilation, {seconds[0]:.1f} s)")


MIXED_SHAPES = ("poly", "curved", "wavy", "gp")


def _calibrate_one(k: int, i: int, seed: int, num_pixels: int, max_lines: int, continuum: str,
                   folder: str) -> dict:
    """Simulate spectrum i with k lines, fit it with --lines auto; the choice, the evidences and
    whether each line's 90% intervals (centre, flux) hold the truth when the right K is chosen.

    ``continuum`` poly or gp: simulated and fitted with that continuum, the chosen K's draws from
    nested sampling. ``mixed``: the shape cycles through poly, curved, wavy and gp with the
    spectrum, and the fit uses the pipeline's defaults (``--continuum auto``, NUTS)."""
    import astroinfer
    from astroinfer.pipelines.spectral_lines import simulate

    path = Path(folder) / f"k{k}_{i}.ecsv"
    shape = MIXED_SHAPES[i % len(MIXED_SHAPES)] if continuum == "mixed" else continuum
    record = simulate(path, seed=seed + 1000 * k + i, lines=k, num_pixels=num_pixels, continuum=shape)
    options = {"lines": "auto", "max_lines": max_lines}
    run_options = {}
    if continuum != "mixed":
        options["continuum"] = continuum
        run_options["method"] = "nested"
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = astroinfer.run_pipeline("spectral-lines", path, seed=seed + i, num_samples=1000,
                                      load_options=options, **run_options)
    comp = res.idata.model_comparison
    chosen = int(comp.attrs["chosen_num_lines"])
    covered = {"center": [], "flux": []}
    if chosen == k and k > 0:
        post = res.idata.posterior
        for name, key in (("line_center", "center"), ("line_flux", "flux")):
            draws = np.asarray(post[name]).reshape(-1, k)
            lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
            truth = np.array([line[key] for line in record["truth"]["lines"]])
            covered[key] = ((lo <= truth) & (truth <= hi)).tolist()
    degree = int(res.idata.continuum_comparison.attrs["chosen_degree"]) if continuum == "mixed" else None
    return {"k": k, "i": i, "chosen": chosen, "log_z": comp["log_evidence_by_k"].values.tolist(),
            "covered": covered, "seconds": time.perf_counter() - started, "shape": shape, "degree": degree}


def calibration(per_k: int, max_lines: int, num_pixels: int, seed: int, continuum: str = "poly",
                workers: int = 1) -> dict:
    """Simulate ``per_k`` spectra for each K in 0..max_lines (line SNR drawn in [10, 30]), fit
    each with --lines auto, and count how often the true K is chosen; for the spectra where
    it is, count how often the 90% interval of each line's centre and flux holds the truth.
    ``workers`` > 1 fits spectra in that many processes (each problem's seed is fixed, so the
    result does not depend on it)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    picked = {k: {} for k in range(max_lines + 1)}
    covered = {"center": {}, "flux": {}}
    shapes: dict[str, list[bool]] = {}
    started = time.perf_counter()
    jobs = [(k, i) for i in range(per_k) for k in range(max_lines + 1)]
    with tempfile.TemporaryDirectory() as folder:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_calibrate_one, k, i, seed, num_pixels, max_lines, continuum, folder)
                       for k, i in jobs]
            for future in as_completed(futures):
                one = future.result()
                k, i = one["k"], one["i"]
                picked[k][i] = one["chosen"]
                shapes.setdefault(one["shape"], []).append(one["chosen"] == k)
                for key in covered:
                    covered[key][(k, i)] = one["covered"][key]
                print(f"  K = {k}, spectrum {i} ({one['shape']} continuum"
                      + (f", degree {one['degree']} chosen" if one["degree"] is not None else "")
                      + f"): chose {one['chosen']}; log Z by K "
                      f"{np.round(one['log_z'], 2).tolist()} ({one['seconds']:.0f} s; "
                      f"{time.perf_counter() - started:.0f} s so far)", flush=True)
    hits = {key: [h for (k, i) in sorted(v) for h in v[(k, i)]] for key, v in covered.items()}
    total = sum(len(v) for v in picked.values())
    right = sum(sum(1 for c in v.values() if c == k) for k, v in picked.items())
    summary = {
        "fraction_true_k": right / total,
        "true_k_by_k": {k: sum(1 for c in v.values() if c == k) / len(v) for k, v in picked.items()},
        "coverage_center_90": float(np.mean(hits["center"])) if hits["center"] else float("nan"),
        "coverage_flux_90": float(np.mean(hits["flux"])) if hits["flux"] else float("nan"),
        "num_intervals": len(hits["center"]),
        "true_k_by_shape": {name: float(np.mean(v)) for name, v in sorted(shapes.items())},
    }
    print(f"calibration: {per_k} spectra per K in 0..{max_lines}, {num_pixels} pixels, {continuum} continuum, "
          f"{workers} worker(s): true K chosen in {summary['fraction_true_k']:.0%} ({summary['true_k_by_k']}); "
          f"90% interval coverage centres {summary['coverage_center_90']:.0%}, fluxes "
          f"{summary['coverage_flux_90']:.0%} over {summary['num_intervals']} lines; true K by continuum shape "
          f"{summary['true_k_by_shape']}; "
          f"{time.perf_counter() - started:.0f} s")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("tutorial", "gp-fit", "gp-cost", "model-cost", "calibration", "start"),
                        action="append")
    parser.add_argument("--per-k", type=int, default=20, help="calibration: spectra per number of lines")
    parser.add_argument("--max-lines", type=int, default=3)
    parser.add_argument("--pixels", type=int, default=150, help="calibration: pixels per spectrum")
    parser.add_argument("--continuum", default="poly", choices=("poly", "gp", "mixed"),
                        help="calibration continuum: poly or gp (simulated and fitted), or mixed (poly, curved, "
                             "wavy and gp shapes, fitted with the defaults)")
    parser.add_argument("--workers", type=int, default=1, help="calibration: spectra fitted in this many processes")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--gp-samples", type=int, default=300)
    parser.add_argument("--gp-warmup", type=int, default=300)
    parser.add_argument("--gp-sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--gp-hyperparameters", nargs="+", default=["sample"], choices=("sample", "fixed"),
                        help="gp-fit: the pipeline's gp_hyperparameters option(s), each run in turn")
    parser.add_argument("--gp-snr", type=float, default=None,
                        help="gp-fit: the lines' SNR at every size (default: 30 at 20 000 pixels, the same lines "
                             "at other sizes)")
    parser.add_argument("--start-sizes", type=int, nargs="+", default=[400, 2000, 100_000])
    parser.add_argument("--start-seeds", type=int, default=10)
    parser.add_argument("--start-lines", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="tutorial: alternating runs per seed and side")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="tutorial: NUTS seeds (both sides)")
    parser.add_argument("--devices", nargs="+", default=["cli"],
                        help="tutorial: JAX CPU devices of both sides, 'cli' (what the astroinfer CLI sets: "
                             "min(2, cores)) or a number; several values run the comparison for each")
    parser.add_argument("--tutorial-side", choices=("pipeline", "tutorial"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tutorial_side:  # one side of the tutorial comparison (a child process)
        import json

        print(json.dumps(_tutorial_side(args.tutorial_side, args.samples, args.warmup, args.chains, args.seed)))
        return
    which = args.only or ["gp-cost", "model-cost", "tutorial", "gp-fit"]
    if "gp-fit" in which:  # the CLI's JAX CPU devices (min(2, cores)): chains in parallel, as `astroinfer run`
        from astroinfer.cli import configure_jax_devices

        configure_jax_devices()
    if "gp-cost" in which:
        bench_gp_cost(2000, repeats=20)
    if "model-cost" in which:
        bench_model_cost(args.gp_sizes)
    if "tutorial" in which:
        bench_tutorial(args.samples, args.warmup, args.chains, args.seeds, args.repeats, args.devices)
    if "gp-fit" in which:
        bench_gp_fit(args.gp_sizes, args.gp_samples, args.gp_warmup, args.chains, args.seed,
                     tuple(args.gp_hyperparameters), args.gp_snr)
    if "start" in which:
        bench_start(args.start_sizes, args.start_seeds, args.start_lines)
    if "calibration" in which:
        calibration(args.per_k, args.max_lines, args.pixels, args.seed, args.continuum, args.workers)


if __name__ == "__main__":
    main()
