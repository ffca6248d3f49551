"""Batched NUTS (``sample_batch(method="nuts")``): problems per second and accuracy.

Two workloads, each measured side by side in one process:

1. ``normal-gamma``: B two-parameter problems (a location and a positive precision, 8
   observations each) with an analytic posterior. Batched NUTS against
   ``astroinfer.sample(method="nuts")`` called problem after problem on a subset (same
   warmup, draws and chains; each call builds a new NumPyro ``MCMC``, which compiles again,
   as a loop over problems in a user's script would); accuracy as the error of each
   posterior mean in units of its Monte Carlo standard error (sd / sqrt(bulk ESS)) and of
   the posterior sd.
2. ``ionosphere``: the dTEC model (phi0 marginalised) at noise 0.3 and 1.5 rad, against the
   exact batched grid (``method="grid"`` with the ionosphere kernel) on the same problems;
   at 1.5 rad most posteriors are multimodal, which NUTS does not handle (shown, not hidden).

Compilation is timed separately (a first call on a small batch). Like the CLI, the script
asks XLA for two host devices (``--devices``), so both cores work.

    python benchmarks/batch_nuts.py [--problems 1000] [--sequential 10] [--devices 2]
                                    [--group-sizes 32] [--skip-ionosphere] [--skip-conjugate]
                                    [--noises 0.3,1.5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--sequential", type=int, default=10, help="problems run one by one with astroinfer.sample")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--group-sizes", default="32", help="comma-separated group_size values to time")
    parser.add_argument("--skip-ionosphere", action="store_true")
    parser.add_argument("--skip-conjugate", action="store_true", help="skip the normal-gamma workload")
    parser.add_argument("--noises", default="0.3,1.5", help="ionosphere phase noise levels (rad)")
    args = parser.parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()

    import jax
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import astroinfer
    from test_batch_nuts import analytic, ionosphere_problems, normal_gamma, simulate

    warnings.simplefilter("ignore", astroinfer.ConvergenceWarning)
    print(f"devices: {len(jax.devices())} ({jax.devices()[0].platform}); cores: {os.cpu_count()}")
    B = args.problems
    data, shared = simulate(B, seed=1)
    truth = analytic(data["y"])
    settings = dict(num_warmup=500, num_samples=500, num_chains=2)

    if not args.skip_conjugate:
        print(f"\n== normal-gamma: {B} problems, 2 parameters, {settings}")
    for group in [] if args.skip_conjugate else [int(g) for g in args.group_sizes.split(",")]:
        opts = dict(settings, group_size=group)
        t0 = time.perf_counter()
        first = group * len(jax.devices())  # one group per device: every device compiles
        astroinfer.sample_batch(normal_gamma, {"y": data["y"][:first]}, method="nuts", seed=0, shared=shared,
                                num_draws=100, **opts)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = astroinfer.sample_batch(normal_gamma, data, method="nuts", seed=0, shared=shared, num_draws=100, **opts)
        wall = time.perf_counter() - t0
        s = res.idata.problem_summary
        print(f"group_size {group}: first call (compile + {first} problems) {compile_s:.1f} s; "
              f"{B} problems {wall:.1f} s = {B / wall:.0f} problems/s")
        for name in ("mu", "tau"):
            mean_true, sd_true, _ = truth[name]
            z = (s[f"{name}_mean"].values - mean_true) / (sd_true / np.sqrt(s[f"{name}_ess_bulk"].values))
            err_sd = np.abs(s[f"{name}_mean"].values - mean_true) / sd_true
            rel_sd = s[f"{name}_sd"].values / sd_true - 1
            print(f"  {name}: |mean err|/MCSE median {np.median(np.abs(z)):.2f}, max {np.abs(z).max():.2f} "
                  f"(rms {np.sqrt(np.mean(z**2)):.2f}); |mean err|/sd median {np.median(err_sd):.3f}, "
                  f"max {err_sd.max():.3f}; sd rel. err mean {rel_sd.mean():+.3f}, max |.| {np.abs(rel_sd).max():.3f}; "
                  f"bulk ESS median {np.median(s[f'{name}_ess_bulk'].values):.0f}; "
                  f"problems with a spurious second mode: {int(np.sum(s[f'{name}_num_modes'].values > 1))}")
        d = res.diagnostics
        print(f"  R-hat max {d['r_hat_max']:.3f}, problems with R-hat > 1.01: {d['problems_r_hat_above_1_01']}, "
              f"> 1.05: {d['problems_r_hat_above_1_05']}, "
              f"divergences {d['divergences']}")
    if args.sequential and not args.skip_conjugate:
        batched_rate = B / wall
        n = args.sequential
        one = {"y": data["y"][0], **shared}
        astroinfer.sample(normal_gamma, one, method="nuts", seed=0, num_samples=500, num_warmup=500,
                          num_chains=2)  # compile
        t0 = time.perf_counter()
        sampling = 0.0
        for i in range(n):
            r = astroinfer.sample(normal_gamma, {"y": data["y"][i], **shared}, method="nuts", seed=i,
                                  num_samples=500, num_warmup=500, num_chains=2)
            sampling += r.diagnostics["run_time_s"]
        seq_rate = n / (time.perf_counter() - t0)
        print(f"astroinfer.sample(method='nuts') one problem at a time: {seq_rate:.2f} problems/s ({n} problems; "
              f"NumPyro's MCMC compiles again for each call); batched / sequential = {batched_rate / seq_rate:.0f}x. "
              f"Without its compilation (run_time_s only): {n / sampling:.1f} problems/s; batched / that = "
              f"{batched_rate / (n / sampling):.1f}x")

    if not args.skip_ionosphere:
        from astroinfer.pipelines import ionosphere as iono

        kernel = "astroinfer.pipelines.ionosphere:DTEC_KERNEL"
        for noise in [float(x) for x in args.noises.split(",")]:
            idata, ishared = ionosphere_problems(B, noise, seed=2)
            print(f"\n== ionosphere dTEC (phi0 marginalised), noise {noise} rad: {B} problems")
            runs = {}
            for method, extra in (("grid", {"grid_kernel": kernel}), ("nuts", settings)):
                small = {k: v[:64] for k, v in idata.items()}
                astroinfer.sample_batch(iono.model_dtec, small, method=method, seed=0, shared=ishared, num_draws=10,
                                        **extra)  # compile (64 problems: a group on each of two devices)
                t0 = time.perf_counter()
                runs[method] = astroinfer.sample_batch(iono.model_dtec, idata, method=method, seed=0, shared=ishared,
                                                       num_draws=10, **extra)
                wall = time.perf_counter() - t0
                print(f"{method}: {B / wall:.0f} problems/s")
            g, n = runs["grid"].idata.problem_summary, runs["nuts"].idata.problem_summary
            err = np.abs(n.dtec_mean.values - g.dtec_mean.values) / g.dtec_sd.values
            mcse = 1 / np.sqrt(n.dtec_ess_bulk.values)
            multi = np.sum(g.dtec_mode_mass.values > 0.05, axis=1) > 1
            flagged = n.dtec_r_hat.values > 1.05
            off = err > 0.1
            print(f"grid: problems with two or more modes of mass > 0.05: {int(multi.sum())}")
            print(f"nuts vs grid: |mean err|/sd median {np.median(err):.3f}, max {np.max(err):.3f}; "
                  f"|mean err|/MCSE max {np.max(err / mcse):.2f}; means off by > 0.1 sd: {int(off.sum())} "
                  f"(R-hat > 1.05 flags {int(np.sum(off & flagged))} of them); R-hat > 1.05 in all: "
                  f"{int(flagged.sum())}; nuts problems with two or more modes: {int(np.sum(n.dtec_num_modes.values > 1))}")

if __name__ == "__main__":
    main()
