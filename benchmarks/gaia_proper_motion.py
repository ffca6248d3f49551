"""gaia-cluster membership with proper motions against parallaxes alone, on simulated cones.

Each cone is ``astroinfer simulate gaia-cluster --proper-motions`` (1000 stars, 40%
members at 850 pc; the field's proper motions are disc velocities over each star's
distance, not the model's field mixture), fitted with the defaults twice, with proper
motions (``--proper-motion auto``) and without (``off``). Two kinds of cone:

- ``m67``: the cluster moves as M67 does, about 9 mas/yr from the field's median;
- ``comoving``: the cluster moves at the field's median motion, the hard case.

Printed per cone and as medians: the membership list's precision at 80%, 90% and 95%
recall (stars ranked by membership probability), the precision and recall of the
membership > 0.5 list, the cluster distance's error in posterior sds, and the wall time of
each fit::

    python benchmarks/gaia_proper_motion.py                 # 3 cones of each kind
    python benchmarks/gaia_proper_motion.py --cones 10

The machine's cores are shared: the times are for orientation only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

KINDS = {"m67": {}, "comoving": {"cluster_pmra": -2.5, "cluster_pmdec": -1.0}}
RECALLS = (0.8, 0.9, 0.95)


def precision_at_recall(membership: np.ndarray, member: np.ndarray, recall: float) -> float:
    """Precision of the shortest list, ranked by membership, that holds ``recall`` of the members."""
    order = np.argsort(-membership)
    k = int(np.searchsorted(np.cumsum(member[order]), recall * member.sum())) + 1
    return float(member[order][:k].mean())


def fit(path: Path, out: Path, mode: str) -> tuple[dict, float]:
    from astroinfer.pipeline import run_pipeline

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_pipeline("gaia-cluster", path, out, load_options={"proper_motion": mode})
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cones", type=int, default=3, help="cones of each kind")
    parser.add_argument("--stars", type=int, default=1000)
    args = parser.parse_args()
    from astroinfer.pipelines import gaia_cluster as gc

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, truth in KINDS.items():
            for cone in range(args.cones):
                path = Path(tmp) / f"{kind}{cone}.ecsv"
                record = gc.simulate(path, seed=100 + cone, num_stars=args.stars, proper_motions=True, truth=truth)
                member = np.zeros(args.stars, bool)
                member[record["member_rows"]] = True
                for mode in ("auto", "off"):
                    result, seconds = fit(path, Path(tmp) / f"{kind}{cone}{mode}.h5", mode)
                    p = np.asarray(result.idata.stars["membership"])
                    d = np.asarray(result.idata.posterior["cluster_distance"])
                    z = (d.mean() - record["truth"]["cluster_distance"]) / d.std()
                    listed = p > 0.5
                    row = {"kind": kind, "cone": cone, "mode": "pm+parallax" if mode == "auto" else "parallax",
                           **{f"P@R{r}": precision_at_recall(p, member, r) for r in RECALLS},
                           "P(>0.5)": float(member[listed].mean()) if listed.any() else float("nan"),
                           "R(>0.5)": float(listed[member].mean()), "distance z": float(z), "seconds": seconds,
                           "dropped chains": len(result.diagnostics.get("dropped_chains", []))}
                    rows.append(row)
                    print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                          flush=True)
    print("\nmedians over cones:")
    for kind in KINDS:
        for mode in ("pm+parallax", "parallax"):
            sel = [r for r in rows if r["kind"] == kind and r["mode"] == mode]
            stats = {k: float(np.median([r[k] for r in sel])) for k in sel[0] if k not in ("kind", "cone", "mode")}
            print(f"  {kind:9s} {mode:12s} " + "  ".join(f"{k} {v:.3f}" for k, v in stats.items()))


if __name__ == "__main__":
    main()
