"""gaia-cluster on M67: the marginalised pipeline model against the full-latent reference.

Side by side in one run, on ``../shared/data/m67.fits.gz`` with the zero point off and
0.2 < parallax < 3 mas (4300 stars), both NumPyro NUTS with init_to_median, 2 chains:

1. minimum bulk ESS per second over the globals (cluster_distance, cluster_size,
   member_fraction, field_scale), over the sampling phase's run time (after warmup; the
   compile of the sampling loop, measured from JAX's compile events, is excluded and
   printed, with the ratio it would give if counted), and the posterior means/sds of both
   with MCSEs;
2. the CLI's end-to-end wall time (process start, load, compile, sample, per-star draws,
   result file) with an empty JAX compilation cache and again with the warm cache, against
   the reference's load-to-draws time.

ESS/s is a rate, so the reference may run with fewer draws than the pipeline (the full
reference at 1000 warmup + 2000 draws takes most of an hour on 2 cores)::

    python benchmarks/gaia_cluster.py                       # defaults below
    python benchmarks/gaia_cluster.py --ref-warmup 1000 --ref-samples 2000
    python benchmarks/gaia_cluster.py --skip-cli            # only the ESS/s comparison
    python benchmarks/gaia_cluster.py --only-cli            # only the end-to-end CLI times

The machine's cores are shared: quote ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

ROOT = Path(__file__).resolve().parents[1]
M67 = ROOT.parent / "shared" / "data" / "m67.fits.gz"
NAMES = ("cluster_distance", "cluster_size", "member_fraction", "field_scale")
SELECTION = dict(zero_point="off", offset="off", parallax_min=0.2, parallax_max=3.0)


def run_nuts(model, data, *, seed, warmup, samples, settings):
    """Warmup, then sampling, each waited for (JAX dispatches asynchronously, so without the
    wait the warmup's tail would be counted as sampling). Returns the draws, the warmup's
    wall time, the sampling phase's run time and compile time (JAX's compile events, the
    sampling loop is compiled anew after warmup), and leapfrog steps per draw."""
    import jax
    from numpyro.infer import MCMC, NUTS, init_to_median

    from astroinfer.engine.timing import CompileTimer

    mcmc = MCMC(NUTS(model, init_strategy=init_to_median(num_samples=15), **settings),
                num_warmup=warmup, num_samples=samples, num_chains=2, chain_method="parallel", progress_bar=False)
    key = jax.random.PRNGKey(seed)
    with CompileTimer() as warm:
        mcmc.warmup(key, extra_fields=("num_steps",), **data)
        jax.block_until_ready(mcmc.post_warmup_state)
    with CompileTimer() as sampling:
        mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps",), **data)
        jax.block_until_ready(mcmc.get_samples())
    steps = float(mcmc.get_extra_fields()["num_steps"].mean())
    return mcmc.get_samples(group_by_chain=True), warm.wall_seconds, sampling, steps


def intro_model(parallax, parallax_error, **_):
    """The full-latent model as the NumPyro introduction for astronomers sets it up: its own
    wide priors (log L ~ N(log 370, 2), log D ~ N(log 920, 2), log sigma ~ N(0, 2) with
    sigma the cluster's width in log distance, Q ~ U(0, 1)), one latent distance per star
    from the cluster + field mixture. The globals are recorded under the pipeline's names
    (cluster_size = D sigma, its approximate width in pc). Its priors differ from the
    pipeline's, so it is the speed reference only; agreement is checked against
    ``reference_model``, which has the pipeline's priors."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    log_l = numpyro.sample("log_L", dist.Normal(math.log(370.0), 2.0))
    log_d = numpyro.sample("log_D", dist.Normal(math.log(920.0), 2.0))
    log_sigma = numpyro.sample("log_sigma", dist.Normal(0.0, 2.0))
    fraction = numpyro.sample("member_fraction", dist.Uniform(0.0, 1.0))
    numpyro.deterministic("cluster_distance", jnp.exp(log_d))
    numpyro.deterministic("cluster_size", jnp.exp(log_sigma + log_d))
    scale = numpyro.deterministic("field_scale", jnp.exp(log_l))
    w = jnp.asarray(parallax)
    with numpyro.plate("star", w.shape[0]):
        mixing = dist.Categorical(probs=jnp.stack([fraction, 1.0 - fraction]))
        components = [dist.LogNormal(log_d, jnp.exp(log_sigma)), dist.Gamma(3.0, 1.0 / scale)]
        r = numpyro.sample("star_distance", dist.MixtureGeneral(mixing, components))
        numpyro.sample("parallax", dist.Normal(1000.0 / r, jnp.asarray(parallax_error)), obs=w)


def summarise(name, draws, sampling, warmup_s, steps):
    """Per global: mean, sd, bulk ESS, MCSE, R-hat; ESS/s over the sampling phase's run time
    (its compile excluded, as a rate should be) and, for comparison, its wall time."""
    import arviz as az
    import numpy as np

    rows = {}
    for var in NAMES:
        x = np.asarray(draws[var])
        rows[var] = dict(mean=float(x.mean()), sd=float(x.std()), ess=float(az.ess(x, method="bulk")),
                         mcse=float(az.mcse(x, method="mean")), rhat=float(az.rhat(x)))
    min_ess = min(r["ess"] for r in rows.values())
    run_s = sampling.run_seconds
    print(f"\n{name}: warmup {warmup_s:.1f} s, sampling {sampling.wall_seconds:.1f} s of which compile "
          f"{sampling.compile_seconds:.1f} s, {steps:.1f} leapfrog steps per draw")
    for var, r in rows.items():
        print(f"  {var:17s} {r['mean']:10.4f} +- {r['sd']:8.4f}  mcse {r['mcse']:.4f}  ess {r['ess']:7.0f}  "
              f"ess/s {r['ess'] / run_s:8.2f}  r_hat {r['rhat']:.3f}")
    print(f"  min ESS/s over the globals: {min_ess / run_s:.3f} (compile included: {min_ess / sampling.wall_seconds:.3f})")
    return rows, min_ess / run_s, min_ess / sampling.wall_seconds


def cli_time(cache: str, out: Path) -> float:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache)
    env.pop("XLA_FLAGS", None)
    command = [sys.executable, "-m", "astroinfer.cli", "run", "gaia-cluster", str(M67), "-q", "-o", str(out),
               "--zero-point", "off", "--offset", "off", "--parallax-min", "0.2", "--parallax-max", "3"]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=1000, help="pipeline warmup per chain")
    parser.add_argument("--samples", type=int, default=2000, help="pipeline draws per chain")
    parser.add_argument("--ref-warmup", type=int, default=500, help="reference warmup per chain")
    parser.add_argument("--ref-samples", type=int, default=500, help="reference draws per chain")
    parser.add_argument("--skip-cli", action="store_true", help="skip the end-to-end CLI timings")
    parser.add_argument("--only-cli", action="store_true", help="only the end-to-end CLI timings")
    parser.add_argument("--reference", choices=("matched", "intro"), default="matched",
                        help="matched: the full-latent model with the pipeline's priors (also checks agreement); "
                             "intro: the NumPyro introduction's own full-latent model and priors (speed only)")
    args = parser.parse_args()
    if not M67.is_file():
        sys.exit(f"{M67} is absent; this benchmark needs the real M67 catalog")

    if args.only_cli:
        return print_cli_times()

    import numpy as np

    from astroinfer.pipelines import gaia_cluster as gc

    start = time.perf_counter()
    data = gc.load(M67, **SELECTION).data
    data.pop("parallax_window")  # the reference has no selection term: both models without it
    load_s = time.perf_counter() - start
    print(f"M67: {data['parallax'].size} stars after 0.2 < parallax < 3 mas, zero point off, no offset "
          f"(load {load_s:.1f} s)")
    print(f"pipeline: {args.warmup} warmup + {args.samples} draws x 2 chains; reference: {args.ref_warmup} warmup + "
          f"{args.ref_samples} draws x 2 chains")

    # What the pipeline samples on CPU: the model with every star's field term tabulated.
    start = time.perf_counter()
    tabled = gc.with_field_table(data)
    print(f"field table (pilot field_scale, Chebyshev series per star): {time.perf_counter() - start:.1f} s, "
          f"compile included; spans field_scale {np.exp(tabled['field_table_domain'][0] - gc.FIELD_TABLE_HALF_WIDTH):.0f}-"
          f"{np.exp(tabled['field_table_domain'][0] + gc.FIELD_TABLE_HALF_WIDTH):.0f} pc")

    # The pipeline runs before and after the reference and its rate is the mean of the two,
    # so a change of load on the shared cores during the long reference run moves both sides.
    def pipeline_run(seed):
        d, w_s, s_s, steps = run_nuts(gc.model, tabled, seed=seed, warmup=args.warmup, samples=args.samples,
                                      settings=gc.NUTS_SETTINGS)
        return (d, *summarise(f"pipeline, seed {seed} (distances integrated out, NUTS {gc.NUTS_SETTINGS})",
                              d, s_s, w_s, steps))

    d, rows_m, rate_1, wall_rate_1 = pipeline_run(0)
    ref_start = time.perf_counter()
    reference = gc.reference_model if args.reference == "matched" else intro_model
    d_ref, w_r, s_r, steps_r = run_nuts(reference, data, seed=1, warmup=args.ref_warmup,
                                        samples=args.ref_samples, settings={})
    ref_total = time.perf_counter() - ref_start + load_s
    rows_r, rate_r, wall_rate_r = summarise(f"reference ({args.reference}: full latent, one distance per star, "
                                            "NumPyro's default NUTS)", d_ref, s_r, w_r, steps_r)
    _, _, rate_2, wall_rate_2 = pipeline_run(2)
    rate_m, wall_rate_m = (rate_1 + rate_2) / 2, (wall_rate_1 + wall_rate_2) / 2
    print(f"\nmin ESS/s ratio pipeline / reference: {rate_m / rate_r:.0f} (pipeline runs alone: "
          f"{rate_1 / rate_r:.0f} and {rate_2 / rate_r:.0f}; with each sampling phase's compile counted: "
          f"{wall_rate_m / wall_rate_r:.0f})")
    print("\nagreement (difference in units of the combined MCSE; sd ratio)"
          + ("" if args.reference == "matched" else "; other priors, and the intro's cluster_size is D sigma, "
             "so only a rough check") + ":")
    for var in NAMES:
        a, b = rows_m[var], rows_r[var]
        z = (a["mean"] - b["mean"]) / np.hypot(a["mcse"], b["mcse"])
        print(f"  {var:17s} {z:+6.2f} MCSE   sd ratio {a['sd'] / b['sd']:.3f}")

    if args.skip_cli:
        return
    print_cli_times()
    print(f"  reference, load to draws ({args.ref_warmup} warmup + {args.ref_samples} draws): {ref_total:.1f} s; "
          f"at the CLI's 1000 + 1000 draws about {w_r * 1000 / args.ref_warmup + s_r.wall_seconds * 1000 / args.ref_samples:.0f} s")


def print_cli_times() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "jax-cache")
        cold = cli_time(cache, Path(tmp) / "cold.h5")
        warm = cli_time(cache, Path(tmp) / "warm.h5")
    print("\nCLI end to end on M67 (1000 warmup + 1000 draws x 2 chains, per-star draws, result file):")
    print(f"  cold compilation cache: {cold:.1f} s;  warm cache: {warm:.1f} s")


if __name__ == "__main__":
    main()
