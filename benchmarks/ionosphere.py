"""Ionosphere batch benchmark: inferences per second, memory, accuracy, and reference samplers.

    python benchmarks/ionosphere.py                      # 10^4 and 10^5 problems, all methods
    python benchmarks/ionosphere.py --sizes 10000        # quicker
    python benchmarks/ionosphere.py --reference-python /work/refvenv/bin/python

Problems: the dTEC model of the ionosphere pipeline, 24 channels 120-168 MHz, phase noise
drawn per problem uniformly in 0.3-1.5 rad, dTEC uniform in +-0.4 TECU, prior +-1 TECU.
Each configuration runs in a fresh process (so its peak memory, the resident-set high-water
mark, is its own) with JAX given two CPU devices, as the CLI does. The problems are read
chunk by chunk from an HDF5 file and the results written chunk by chunk (as a pipeline run
does), so memory should not grow with the number of problems. Compile time is excluded
from the rate (a warm-up chunk runs first) and reported apart.

Batched nested sampling (``--nested-sizes``, default 10^3 and 10^4 problems) runs on the dTEC
model with phi0 integrated analytically (``dtec``: one sampled parameter, the model the
pipeline uses) and with phi0 sampled (``dtec_phi0``: two parameters); rates are given per
wall-clock second and per CPU-second (problems / process CPU time, both cores counted), with
the sampler's defaults or the options given as JSON with ``--nested-options`` (e.g.
``'{"num_importance": 0, "num_live_points": 600}'``: no importance-sampling refinement).

Accuracy: log-evidence against a float64 quadrature with 20001 dTEC nodes (phi0 analytic,
scipy's i0e) on the first 200 problems. Reference samplers (jaxns 3.0 and dynesty 3.1 need
their own virtual environment: their pins conflict with astroinfer's) run sequentially on a
100-problem subset of the 2-parameter model (dTEC, phi0 sampled) through
``--reference-python``; if that interpreter lacks them, the table says so.

The machine is shared: timings are noisy; compare numbers of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEC = -8.4479745e9
FREQ = np.linspace(120e6, 168e6, 24)
DTEC_MAX = 1.0
PROBLEMS_TARGET = 2_900_000
SIM_CHUNK = 50_000


def kappa_of(sigma):
    from scipy.optimize import brentq
    from scipy.special import i0e, i1e

    target = np.exp(-0.5 * sigma**2)
    return brentq(lambda k: i1e(k) / i0e(k) - target, 1e-9, 1e9)


def simulate(path: Path, num: int, seed: int = 0, clock: bool = False) -> None:
    """Phases, weights and per-problem kappa into an HDF5 file, chunk by chunk."""
    import h5py

    rng = np.random.default_rng(seed)
    sig_grid = np.linspace(0.3, 1.5, 121)
    kap_grid = np.array([kappa_of(s) for s in sig_grid])
    with h5py.File(path, "w") as f:
        ph = f.create_dataset("phase", (num, FREQ.size), np.float32, chunks=(min(4096, num), FREQ.size))
        wt = f.create_dataset("weight", (num, FREQ.size), np.float32, chunks=(min(4096, num), FREQ.size))
        kp = f.create_dataset("kappa", (num,), np.float64)
        for lo in range(0, num, SIM_CHUNK):
            n = min(SIM_CHUNK, num - lo)
            sigma = rng.uniform(0.3, 1.5, n)
            kappa = np.interp(sigma, sig_grid, kap_grid)
            dtec = rng.uniform(-0.4, 0.4, n)
            tau = rng.uniform(-5e-9, 5e-9, n) if clock else np.zeros(n)
            model = TEC * dtec[:, None] / FREQ + 2 * np.pi * FREQ * tau[:, None] + rng.uniform(-np.pi, np.pi, (n, 1))
            noise = rng.vonmises(0.0, kappa[:, None], (n, FREQ.size))
            ph[lo:lo + n] = np.angle(np.exp(1j * (model + noise)))
            wt[lo:lo + n] = 1.0
            kp[lo:lo + n] = kappa


def exact_log_z(phase: np.ndarray, kappa: float) -> float:
    from scipy.special import i0e, logsumexp

    d = np.linspace(-DTEC_MAX, DTEC_MAX, 20001)
    a = TEC / FREQ
    z = kappa * np.exp(1j * phase.astype(np.float64))
    s = np.abs(np.exp(-1j * np.outer(d, a)) @ z)
    ll = np.log(i0e(s)) + s - FREQ.size * (np.log(2 * np.pi) + np.log(i0e(kappa)) + kappa)
    w = np.full(d.size, d[1] - d[0])
    w[[0, -1]] *= 0.5
    return float(logsumexp(ll + np.log(w)) - np.log(2 * DTEC_MAX))


class _Rows:
    """The first ``num`` rows of an HDF5 dataset, read only when sliced (bounded memory)."""

    def __init__(self, dataset, num: int):
        self.dataset, self.num = dataset, num
        self.shape = (num,) + dataset.shape[1:]
        self.ndim = dataset.ndim

    def __getitem__(self, index):
        if isinstance(index, slice):
            lo, hi, _ = index.indices(self.num)
            return self.dataset[lo:hi]
        if not -self.num <= index < self.num:
            raise IndexError(index)
        return self.dataset[index % self.num]


# -- one configuration, in its own process --------------------------------------------------
def worker(model_name: str, method: str, num: int, data_file: str, out: str, nested_options: str = "{}") -> None:
    import resource

    import h5py

    from astroinfer.batch_store import BatchStore
    from astroinfer.engine.batch import iter_results, make_spec
    from astroinfer.pipelines import ionosphere as iono

    with h5py.File(data_file, "r") as f:
        kappas = f["kappa"][:num]
        # One kappa per run (shared): group problems by noise level would be the production
        # way; here the benchmark uses the median kappa for the model and the true per-problem
        # kappa only for the simulation, so the accuracy check uses the same median kappa.
        kappa = float(np.median(kappas))
        shared = {"freq": FREQ.astype(np.float32), "kappa": np.float32(kappa), "dtec_max": np.float32(DTEC_MAX)}
        if model_name == "dtec_clock":
            shared["clock_max"] = np.float32(2e-8)
        batched = {"phase": _Rows(f["phase"], num), "weight": _Rows(f["weight"], num)}
        model = {"dtec": iono.model_dtec, "dtec_phi0": iono.model_dtec_phi0, "dtec_clock": iono.model_dtec_clock}[model_name]
        options = json.loads(nested_options) if method == "nested" else {}
        if method == "grid":
            kernel = "DTEC_CLOCK_KERNEL" if model_name == "dtec_clock" else "DTEC_KERNEL"
            options = {"grid_kernel": f"astroinfer.pipelines.ionosphere:{kernel}", "nested_fallback": False}
        chunk = {"grid": 8192 if model_name == "dtec" else 1024, "nested": 256}[method]
        chunk = min(chunk, num)
        # Warm-up: compile on one chunk of the same shape (excluded from the rate).
        t0 = time.perf_counter()
        warm = {k: v[:chunk] for k, v in batched.items()}
        spec_w = make_spec(model, warm, shared, method, 0, 10, chunk, dict(options))
        list(iter_results(spec_w, warm, shared, [0]))
        compile_s = time.perf_counter() - t0
        spec = make_spec(model, batched, shared, method, 0, 10, chunk, dict(options))
        with tempfile.TemporaryDirectory() as tmp:
            store = BatchStore(Path(tmp) / "bench.h5", spec.fingerprint(), spec.num_chunks, resume=False)
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            log_z = np.zeros(min(num, 200))
            codes = np.zeros(4, np.int64)
            for index, part in iter_results(spec, batched, shared, range(spec.num_chunks)):
                store.write_chunk(index, part)
                codes += np.bincount(part["method_code"], minlength=4)[:4]
                idx = part["problem_index"]
                sel = idx < log_z.size
                log_z[idx[sel]] = part["log_evidence"][sel]
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
        truth = None
        if model_name in ("dtec", "dtec_phi0"):  # phi0 sampled or integrated: the same evidence
            truth = np.array([exact_log_z(f["phase"][i], kappa) for i in range(log_z.size)])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    err = (log_z - truth) if truth is not None else None
    record = {"model": model_name, "method": method, "options": options, "problems": num, "wall_s": wall, "cpu_s": cpu,
              "compile_s": compile_s, "rate": num / wall, "rate_per_cpu_s": num / max(cpu, 1e-9),
              "peak_rss_mb": peak_mb, "extrapolated_2.9M_s": PROBLEMS_TARGET / (num / wall),
              "method_codes": codes.tolist(), "chunk": chunk,
              "log_z_err_mean_abs": None if err is None else float(np.mean(np.abs(err))),
              "log_z_err_rms": None if err is None else float(np.sqrt(np.mean(err**2))),
              "log_z_err_max": None if err is None else float(np.max(np.abs(err))),
              "log_z_first": log_z.tolist()}
    Path(out).write_text(json.dumps(record))


# -- reference samplers (run with another interpreter) --------------------------------------
def reference(sampler: str, data_npz: str, out: str) -> None:
    """dynesty or jaxns on the 2-parameter (dTEC, phi0) von Mises model, one problem at a time."""
    from scipy.special import i0e

    z = np.load(data_npz)
    phases, kappa = z["phase"], float(z["kappa"])
    a = TEC / FREQ
    norm = FREQ.size * (np.log(2 * np.pi) + np.log(i0e(kappa)) + kappa)
    results = []
    if sampler == "dynesty":
        import dynesty

        for i, phase in enumerate(phases):
            def loglike(x, phase=phase):
                return float(kappa * np.sum(np.cos(phase - a * x[0] - x[1])) - norm)

            def transform(u):
                return np.array([(2 * u[0] - 1) * DTEC_MAX, (2 * u[1] - 1) * np.pi])

            t0 = time.perf_counter()
            s = dynesty.NestedSampler(loglike, transform, 2, nlive=500, rstate=np.random.default_rng(i))
            s.run_nested(print_progress=False, dlogz=0.01)
            results.append({"log_z": float(s.results.logz[-1]), "log_z_err": float(s.results.logzerr[-1]),
                            "seconds": time.perf_counter() - t0})
    elif sampler == "jaxns":
        # jaxns 3: the prior model realises the priors and returns the log-likelihood; one
        # compiled program, reused for every problem (the data are arguments). Defaults
        # otherwise (its own stopping rule and sampler).
        import jax
        import jax.numpy as jnp
        import tensorflow_probability.substrates.jax as tfp
        from jaxns.core import NestedSampler
        from jaxns.model import Model
        from jaxns.priors import Prior

        tfpd = tfp.distributions
        a_j = jnp.asarray(a)

        def prior_model(phase):
            dtec = Prior(tfpd.Uniform(-DTEC_MAX, DTEC_MAX), name="dtec").realise()
            phi0 = Prior(tfpd.Uniform(-jnp.pi, jnp.pi), name="phi0").realise()
            return kappa * jnp.sum(jnp.cos(phase - a_j * dtec - phi0)) - norm

        sampler_obj = NestedSampler(Model(prior_model))
        t0 = time.perf_counter()
        sampler_obj.run(jax.random.PRNGKey(10_000), args=(jnp.asarray(phases[0], jnp.float64),))
        compile_s = time.perf_counter() - t0
        for i, phase in enumerate(phases):
            t0 = time.perf_counter()
            state = sampler_obj.run(jax.random.PRNGKey(i), args=(jnp.asarray(phase, jnp.float64),))
            log_z = float(state.expected_log_Z_mean)
            results.append({"log_z": log_z, "log_z_err": float(state.expected_log_Z_uncert),
                            "seconds": time.perf_counter() - t0, "compile_s": compile_s})
    Path(out).write_text(json.dumps(results))


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000],
                        help="problem counts for the dTEC grid (none: skip)")
    parser.add_argument("--clock-size", type=int, default=10_000, help="problems for the dTEC + clock grid (0: skip)")
    parser.add_argument("--nested-sizes", type=int, nargs="*", default=[1000, 10_000],
                        help="problem counts for the batched nested sampler (none: skip)")
    parser.add_argument("--nested-models", nargs="*", default=["dtec", "dtec_phi0"], choices=["dtec", "dtec_phi0"],
                        help="models for the batched nested sampler: dTEC with phi0 integrated analytically "
                             "(1 sampled parameter) and/or phi0 sampled (2 parameters)")
    parser.add_argument("--nested-options", default="{}",
                        help='options of the batched nested sampler as JSON, e.g. \'{"num_importance": 0, '
                             '"num_live_points": 600}\' (default: its defaults)')
    parser.add_argument("--reference-python", default=None, help="interpreter with jaxns and dynesty installed")
    parser.add_argument("--subset", type=int, default=100, help="problems for the reference samplers (0: skip)")
    parser.add_argument("--reference-timeout", type=float, default=1500)
    args = parser.parse_args()

    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        biggest = max(args.sizes + list(args.nested_sizes) + [args.subset])
        data = tmp / "problems.h5"
        simulate(data, biggest, seed=0)
        plan = [("dtec", "grid", n, data) for n in args.sizes]
        if args.clock_size:
            clock_data = tmp / "clock.h5"
            simulate(clock_data, args.clock_size, seed=1, clock=True)
            plan.append(("dtec_clock", "grid", args.clock_size, clock_data))
        for model_name in args.nested_models:
            plan.extend(("dtec" if model_name == "dtec" else "dtec_phi0", "nested", n, data) for n in args.nested_sizes)
        for model_name, method, num, file in plan:
            out = tmp / f"{model_name}-{method}-{num}.json"
            proc = subprocess.run([sys.executable, __file__, "_worker", model_name, method, str(num), str(file), str(out),
                                   args.nested_options],
                                  env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{model_name} {method} {num}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(out.read_text())
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "log_z_first"}), flush=True)

        print("\nmodel       method  problems  problems/s  per CPU-s  2.9M extrapolated  peak RSS  compile  "
              "logZ err mean|.| / rms / max (first 200)")
        for r in rows:
            err = ("n/a" if r["log_z_err_mean_abs"] is None else
                   f"{r['log_z_err_mean_abs']:.2e} / {r['log_z_err_rms']:.2e} / {r['log_z_err_max']:.2e}")
            print(f"{r['model']:11s} {r['method']:7s} {r['problems']:8d} {r['rate']:11.1f} {r['rate_per_cpu_s']:10.1f} "
                  f"{r['extrapolated_2.9M_s'] / 60:14.1f} min {r['peak_rss_mb']:7.0f} MB {r['compile_s']:6.1f} s  {err}")
        if args.nested_options != "{}" and args.nested_sizes:
            print(f"(batched nested options: {args.nested_options})")

        # Reference samplers on a subset: sequential, one problem after another.
        if not args.subset:
            return
        import h5py

        with h5py.File(data, "r") as f:
            phase = f["phase"][:args.subset]
            kappa = float(np.median(f["kappa"][:biggest]))
        npz = tmp / "subset.npz"
        np.savez(npz, phase=phase, kappa=kappa)
        truth = np.array([exact_log_z(p, kappa) for p in phase])
        print(f"\nreference samplers on {args.subset} problems (2 parameters: dTEC and phi0 sampled), sequential, "
              "one process each:")
        for sampler in ("dynesty", "jaxns"):
            if args.reference_python is None:
                print(f"  {sampler}: not run (give --reference-python, an interpreter with jaxns 3.0 and dynesty 3.1)")
                continue
            out = tmp / f"ref-{sampler}.json"
            try:
                proc = subprocess.run([args.reference_python, __file__, "_reference", sampler, str(npz), str(out)],
                                      capture_output=True, text=True, timeout=args.reference_timeout)
            except subprocess.TimeoutExpired:
                print(f"  {sampler}: did not finish {args.subset} problems in {args.reference_timeout:.0f} s")
                continue
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"  {sampler}: unavailable or failed: {last}")
                continue
            res = json.loads(out.read_text())
            secs = np.array([r["seconds"] for r in res])
            if not res:
                continue
            err = np.array([r["log_z"] for r in res]) - truth[:len(res)]
            extra = f" (after a {res[0]['compile_s']:.0f} s compile)" if "compile_s" in res[0] else ""
            print(f"  {sampler}: {np.median(secs):.2f} s per problem (median){extra}, {len(res) / secs.sum():.2f} problems/s, "
                  f"2.9M extrapolated {PROBLEMS_TARGET * np.median(secs) / 86400:.1f} days; "
                  f"logZ err mean|.| {np.mean(np.abs(err)):.3f}, rms {np.sqrt(np.mean(err**2)):.3f}, "
                  f"max {np.max(np.abs(err)):.3f}")


        # The batched nested sampler on the same subset (its rows above ran these problems first).
        for r in rows:
            # Same model only where the run's kappa (median over its problems) is the subset's.
            if r["method"] == "nested" and r["problems"] == biggest and len(r["log_z_first"]) >= args.subset:
                err = np.array(r["log_z_first"][:args.subset]) - truth
                print(f"  batched nested ({r['model']}, {r['problems']} problems run): {1 / r['rate_per_cpu_s']:.4f} "
                      f"CPU-s per problem; logZ err mean|.| {np.mean(np.abs(err)):.3f}, rms {np.sqrt(np.mean(err**2)):.3f}, "
                      f"max {np.max(np.abs(err)):.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker(*sys.argv[2:4], int(sys.argv[4]), *sys.argv[5:8])
    elif len(sys.argv) > 1 and sys.argv[1] == "_reference":
        reference(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
