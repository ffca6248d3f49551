"""Flow-MC: astroinfer's ``method="flowmc"`` vs the flowMC package, side by side.

Targets (the flow-MC issue's acceptance targets):

- ``bimodal``: 10-D mixture 0.3 N(-4 e1, I) + 0.7 N(4 e1, I) (modes 8 sd apart) under a
  N(0, 10^2) prior; accuracy = |weight of the x1 > 0 mode - 0.7|, target <= 0.03;
- ``banana``: five pairs u ~ N(0, 2^2), v | u ~ N(0.5 (u^2 - 4), 1); E v = 0, Var v = 9,
  Var u = 4; accuracy = relative error of Var v pooled over the pairs, target <= 0.10.

Samplers, all on the same log density (astroinfer's ``ModelBridge`` of the same NumPyro
model, which is the identity transform here, so both see exactly the same function):

- ``astroinfer``: ``astroinfer.sample(method="flowmc")`` with its defaults (the banana with
  ``local_kernel="nuts"``, the documented choice for curved targets);
- ``flowMC-quickstart``: flowMC 0.6.4's ``RQSpline_MALA_Bundle`` with the settings of
  flowMC's quickstart (10 local + 10 global steps, 3 training and 3 production loops,
  10 epochs, a 3-layer (64, 64) spline flow) and the bundle's defaults otherwise;
- ``flowMC-long``: the settings flowMC needs on the bimodal target (20 training loops of
  100 local + 100 global steps, 20 epochs each, 10 production loops; what the issue
  measured at about 500 s);
- ``astroinfer-nuts`` and ``astroinfer-nested``: astroinfer's other methods with their
  defaults, for the "which method" table of the docs (not run unless asked).

Every run is a fresh Python process (no compilation shared between runs), timed from
building the sampler to having the draws in hand, compilation included. Prints one row
per run and, per target, the wall-time ratio of each flowMC setting to astroinfer and
whether each met the accuracy target. ESS is arviz's bulk ESS, minimum over the
coordinates, from the production draws of all chains.

    python benchmarks/flowmc.py [--seeds 0 1 2] [--targets bimodal banana]
                                [--samplers astroinfer flowMC-quickstart flowMC-long
                                            astroinfer-nuts astroinfer-nested]

Needs flowMC: ``pip install -e ".[bench]"`` (flowMC 0.6.4, the newest release that
supports Python 3.11).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGETS = ("bimodal", "banana")
SAMPLERS = ("astroinfer", "flowMC-quickstart", "flowMC-long", "astroinfer-nuts", "astroinfer-nested")
NDIM = 10
NUM_CHAINS = 20
FLOWMC_SETTINGS = {
    "flowMC-quickstart": dict(n_local_steps=10, n_global_steps=10, n_training_loops=3, n_production_loops=3,
                              n_epochs=10, rq_spline_hidden_units=[64, 64], rq_spline_n_bins=8,
                              rq_spline_n_layers=3),
    "flowMC-long": dict(n_local_steps=100, n_global_steps=100, n_training_loops=20, n_production_loops=10,
                        n_epochs=20, rq_spline_hidden_units=[64, 64], rq_spline_n_bins=8, rq_spline_n_layers=4,
                        learning_rate=1e-3, batch_size=10000),
}


# -- targets -------------------------------------------------------------------------
def bimodal():
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    shift = jnp.zeros(NDIM).at[0].set(4.0)
    x = numpyro.sample("x", dist.Normal(0.0, 10.0).expand([NDIM]).to_event(1))
    left = dist.Normal(-shift, 1.0).to_event(1).log_prob(x)
    right = dist.Normal(shift, 1.0).to_event(1).log_prob(x)
    numpyro.factor("mixture", jnp.logaddexp(jnp.log(0.3) + left, jnp.log(0.7) + right))


def banana():
    import numpyro
    import numpyro.distributions as dist

    u = numpyro.sample("u", dist.Normal(0.0, 2.0).expand([NDIM // 2]).to_event(1))
    numpyro.sample("v", dist.Normal(0.5 * (u**2 - 4.0), 1.0).to_event(1))


def accuracy(target: str, draws) -> dict:
    """Accuracy of flat draws (n, 10) in the sampler's coordinates (x, or u then v)."""
    import numpy as np

    if target == "bimodal":
        weight = float(np.mean(draws[:, 0] > 0))
        return {"estimate": weight, "error": abs(weight - 0.7), "ok": abs(weight - 0.7) <= 0.03}
    v = draws[:, NDIM // 2:]
    var_v = float(np.mean(np.var(v, axis=0)))
    return {"estimate": var_v, "error": abs(var_v / 9.0 - 1), "ok": abs(var_v / 9.0 - 1) <= 0.10}


def min_ess(chains) -> float:
    """Minimum bulk ESS over coordinates; ``chains`` is (chain, draw, dim)."""
    import arviz as az
    import numpy as np

    return float(min(az.ess(np.asarray(chains[:, :, i])) for i in range(chains.shape[2])))


# -- one run (in its own process) ------------------------------------------------------
def run_one(target: str, sampler: str, seed: int) -> dict:
    import numpy as np

    model = {"bimodal": bimodal, "banana": banana}[target]
    start = time.perf_counter()
    if sampler.startswith("astroinfer"):
        import astroinfer

        method = sampler.partition("-")[2] or "flowmc"
        options = {"local_kernel": "nuts"} if target == "banana" and method == "flowmc" else {}
        result = astroinfer.sample(model, {}, method=method, seed=seed, num_samples=1000, **options)
        wall = time.perf_counter() - start
        post = result.idata.posterior
        names = ["x"] if target == "bimodal" else ["u", "v"]
        chains = np.concatenate([post[n].values for n in names], axis=-1)
        extra = {"backend_compiles": result.diagnostics["backend_compiles"],
                 "compile_s": result.diagnostics["compile_time_s"],
                 "training_loops": result.diagnostics.get("num_training_loops"),
                 "global_acceptance": result.diagnostics.get("global_acceptance")}
    else:
        chains, extra = _run_flowmc(model, FLOWMC_SETTINGS[sampler], seed)
        wall = time.perf_counter() - start
    return {"target": target, "sampler": sampler, "seed": seed, "wall_s": wall,
            "ess_min": min_ess(chains), **accuracy(target, chains.reshape(-1, NDIM)), **extra}


def _run_flowmc(model, settings: dict, seed: int):
    import jax
    import numpy as np
    from flowMC.resource_strategy_bundle.RQSpline_MALA import RQSpline_MALA_Bundle
    from flowMC.Sampler import Sampler

    from astroinfer.engine.model import ModelBridge
    from astroinfer.engine.timing import CompileTimer

    bridge = ModelBridge(model, {})
    log_density = bridge.log_density

    def logpdf(x, data):
        return log_density(x)

    key_bundle, key_init, key_sampler = jax.random.split(jax.random.PRNGKey(seed), 3)
    with CompileTimer() as timer:
        bundle = RQSpline_MALA_Bundle(rng_key=key_bundle, n_chains=NUM_CHAINS, n_dims=NDIM, logpdf=logpdf,
                                      **settings)
        sampler = Sampler(n_dim=NDIM, n_chains=NUM_CHAINS, rng_key=key_sampler, resource_strategy_bundles=bundle,
                          checkpoint_interval=0)
        # Same start as astroinfer: prior draws in the unconstrained space.
        sampler.sample(bridge.prior_draws(key_init, NUM_CHAINS), {})
        chains = np.asarray(sampler.resources["positions_production"].data)
        global_accs = np.asarray(sampler.resources["global_accs_production"].data)
        global_acc = float(np.mean(global_accs[np.isfinite(global_accs)]))  # unfilled slots are -inf
    return chains, {"backend_compiles": timer.backend_compiles, "compile_s": timer.compile_seconds,
                    "training_loops": settings["n_training_loops"], "global_acceptance": global_acc}


# -- driver ------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS[:3]))
    parser.add_argument("--one", nargs=3, metavar=("TARGET", "SAMPLER", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="FILE", help="Also write every run's row to FILE.")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], int(args.one[2]))))
        return

    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    rows = []
    header = f"{'target':8s} {'sampler':18s} {'seed':>4s} {'wall s':>8s} {'compile s':>9s} {'compiles':>8s} " \
             f"{'estimate':>9s} {'error':>7s} {'ok':>3s} {'min ESS':>8s} {'ESS/s':>8s}"
    print(header, flush=True)
    for target in args.targets:
        for seed in args.seeds:
            for sampler in args.samplers:
                proc = subprocess.run([sys.executable, __file__, "--one", target, sampler, str(seed)],
                                      capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    print(f"{target:8s} {sampler:18s} {seed:4d} FAILED: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{target:8s} {sampler:18s} {seed:4d} {row['wall_s']:8.1f} {row['compile_s']:9.1f} "
                      f"{row['backend_compiles']:8d} {row['estimate']:9.3f} {row['error']:7.3f} "
                      f"{'yes' if row['ok'] else 'no':>3s} {row['ess_min']:8.0f} {row['ess_min'] / row['wall_s']:8.1f}",
                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))

    print("\nper target: median wall time, runs within the accuracy target, median ESS/s")
    for target in args.targets:
        mine = [r for r in rows if r["target"] == target and r["sampler"] == "astroinfer"]
        base = statistics.median(r["wall_s"] for r in mine) if mine else None
        for sampler in args.samplers:
            runs = [r for r in rows if r["target"] == target and r["sampler"] == sampler]
            if not runs:
                continue
            wall = statistics.median(r["wall_s"] for r in runs)
            ok = sum(r["ok"] for r in runs)
            ess_rate = statistics.median(r["ess_min"] / r["wall_s"] for r in runs)
            ratio = f"  wall time {wall / base:5.1f}x astroinfer flowmc's" if base and sampler != "astroinfer" else ""
            print(f"{target:8s} {sampler:18s} median {wall:7.1f} s, accurate in {ok}/{len(runs)}, "
                  f"ESS/s {ess_rate:8.1f}{ratio}")


if __name__ == "__main__":
    main()
