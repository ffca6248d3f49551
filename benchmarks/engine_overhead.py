"""Engine overhead: ``astroinfer.sample(method="nuts")`` vs NumPyro's ``MCMC`` called directly.

Same model, data, kernel settings, seeds and chain method; runs are paired and their order
alternates, so drifts in machine load hit both sides alike. Both sides include compilation
(each builds a fresh MCMC, as a user's script would). Prints each pair and the median
wall-time ratio, which the foundation issue requires to be <= 1.03.

    python benchmarks/engine_overhead.py [--pairs 7] [--samples 2000] [--warmup 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpyro

# Like the CLI: one XLA host device per core, so the two chains run in parallel.
numpyro.set_host_device_count(2)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402
from numpyro.infer.initialization import init_to_median  # noqa: E402

import astroinfer  # noqa: E402
from astroinfer.engine.nuts import chain_method_for  # noqa: E402


def regression(x, y, sigma):
    """Robust linear regression with a Student-t likelihood: a typical small science model."""
    slope = numpyro.sample("slope", dist.Normal(0.0, 5.0))
    intercept = numpyro.sample("intercept", dist.Normal(0.0, 5.0))
    scatter = numpyro.sample("scatter", dist.HalfNormal(2.0))
    nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
    scale = jnp.sqrt(sigma**2 + scatter**2)
    numpyro.sample("y", dist.StudentT(nu, slope * x + intercept, scale), obs=y)


def make_data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, n)
    sigma = rng.uniform(0.2, 0.6, n)
    y = 1.3 * x - 0.4 + rng.standard_t(4, n) * np.sqrt(sigma**2 + 0.3**2)
    return {k: jnp.asarray(v, jnp.float32) for k, v in dict(x=x, y=y, sigma=sigma).items()}


def direct(data, seed, samples, warmup, chains):
    mcmc = MCMC(
        NUTS(regression, init_strategy=init_to_median(num_samples=15)),
        num_warmup=warmup, num_samples=samples, num_chains=chains,
        chain_method=chain_method_for(chains), progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), **data)
    return mcmc.get_samples(group_by_chain=True)


def engine(data, seed, samples, warmup, chains):
    return astroinfer.sample(regression, data, method="nuts", seed=seed, num_samples=samples,
                             num_warmup=warmup, num_chains=chains)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(jax.tree.leaves(out.idata.posterior["slope"].values if hasattr(out, "idata") else out))
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=2)
    args = parser.parse_args()
    data = make_data()
    print(f"devices: {jax.local_device_count()}, chain method: {chain_method_for(args.chains)}")
    timed(direct, data, 0, 50, 50, args.chains)  # warm imports and first-use costs for both sides
    timed(engine, data, 0, 50, 50, args.chains)
    ratios = []
    for pair in range(args.pairs):
        order = [("direct", direct), ("astroinfer", engine)]
        if pair % 2:
            order.reverse()
        times, draws = {}, {}
        for name, fn in order:
            times[name], out = timed(fn, data, pair + 1, args.samples, args.warmup, args.chains)
            draws[name] = np.asarray(out.idata.posterior["slope"].values if name == "astroinfer" else out["slope"])
        # Same kernel and seed: the engine must return NumPyro's draws exactly.
        assert np.array_equal(draws["direct"], draws["astroinfer"]), "engine draws differ from NumPyro's"
        ratios.append(times["astroinfer"] / times["direct"])
        print(f"pair {pair + 1}: direct {times['direct']:.2f} s, astroinfer {times['astroinfer']:.2f} s, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    print(f"median wall-time ratio astroinfer/direct over {args.pairs} pairs: {statistics.median(ratios):.3f} "
          f"(bar: <= 1.03)")


if __name__ == "__main__":
    main()
