"""Stuck chains: found by their mean log density, dropped from a NUTS result with the
diagnostics recomputed on the rest and a stored warning."""

from __future__ import annotations

import numpy as np

from astroinfer.engine.stuck_chains import STUCK_GAP, drop_stuck_chains, stuck_chains


def test_stuck_chains_rule():
    rng = np.random.default_rng(0)
    lp = rng.normal(-100.0, 3.0, size=(4, 500))
    assert stuck_chains(lp) == []
    lp[2] -= STUCK_GAP + 40.0  # far below, beyond 10 sds too
    assert stuck_chains(lp) == [2]
    wide = rng.normal(-100.0, 30.0, size=(2, 500))
    wide[1] -= STUCK_GAP + 10.0  # below by more than the gap but not by 10 sds
    assert stuck_chains(wide) == []


def test_drop_stuck_chains_recomputes_the_diagnostics():
    import numpyro
    import numpyro.distributions as dist

    from astroinfer.engine import sample

    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    result = sample(model, {}, method="nuts", seed=0, num_samples=300, num_warmup=200, num_chains=3)
    # Chain 1 made to look stuck: its draws moved to 8 and its log density 500 nats lower.
    posterior = result.idata.posterior
    x = np.asarray(posterior["x"]).copy()
    x[1] += 8.0
    result.idata.posterior["x"] = (("chain", "draw"), x)
    lp = np.asarray(result.idata.sample_stats["lp"]).copy()
    lp[1] -= 500.0
    result.idata.sample_stats["lp"] = (("chain", "draw"), lp)
    assert drop_stuck_chains(result, model, {}) == [1]
    assert result.idata.posterior.sizes["chain"] == 2
    assert abs(float(result.idata.posterior["x"].mean())) < 0.3
    assert result.diagnostics["num_chains"] == 2 and result.diagnostics["r_hat_max"] < 1.05
    assert result.diagnostics["dropped_chains"] == [1]
    assert any("dropped 1 chain(s) stuck in a minor mode: chain 1 (500 nats below)" in m
               for m in result.diagnostics["warnings"])
    assert drop_stuck_chains(result, model, {}) == []  # nothing more to drop
