"""gaia-cluster's report: the selection printed before a run, the globals table (``show``,
``summarise``) and the parallax figure with the posterior predictive.

numpy only at import (matplotlib where the figure is drawn): the package imports this
module when the CLI lists the pipelines.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from astroinfer.pipeline import PipelineData

from .options import GLOBALS, LIKELY_MEMBER, NAME, PM_GLOBALS
from .simulation import _draw_cluster_distances

if TYPE_CHECKING:
    from astroinfer.result import Result


def _print_selection(metadata: dict[str, Any]) -> None:
    """The selection's counts, the dropped rows and the zero point, on stderr before a run."""
    steps = metadata.get("selection", [])
    print(f"{NAME}: " + "; ".join(f"{s['step']}: {s['kept']}" for s in steps), file=sys.stderr)
    dropped = {k: v for k, v in metadata.get("dropped", {}).items() if v}
    if dropped:
        print(f"{NAME}: dropped " + ", ".join(f"{v} ({k.replace('_', ' ')})" for k, v in dropped.items()),
              file=sys.stderr)
    if metadata.get("duplicate_rows_kept"):
        print(f"{NAME}: kept {metadata['duplicate_rows_kept']} rows with duplicated source_id", file=sys.stderr)
    if metadata.get("zero_point") != "none":
        print(f"{NAME}: Lindegren et al. (2021) zero point applied (median {metadata['zero_point_median_mas']:.4f} "
              f"mas; {metadata.get('zero_point_outside_calibration', 0)} star(s) outside its calibrated G/colour "
              f"range, at its edge values)", file=sys.stderr)


def _globals_table(result: "Result") -> list[str]:
    posterior = result.idata.posterior
    units = {"cluster_distance": "pc", "cluster_size": "pc", "member_fraction": "", "field_scale": "pc",
             "parallax_offset": "mas", **{k: "mas/yr" for k in PM_GLOBALS}}
    units["cluster_velocity_dispersion"] = "km/s"
    units["field_pm_fraction"] = units["field_pm_broadening"] = units["field_pm_corr_1"] = units["field_pm_corr_2"] = ""
    lines = []
    for name in GLOBALS + PM_GLOBALS:
        if name in posterior:
            values = np.asarray(posterior[name]).reshape(-1)
            lo, hi = np.quantile(values, [0.05, 0.95])
            lines.append(f"  {name:21s} {values.mean():10.4g} +- {values.std():<9.3g} {units[name]:6s}"
                         f" 90% [{lo:.4g}, {hi:.4g}]")
    return lines


def show(result: "Result") -> str:
    """The globals with 90% intervals and the number of likely members."""
    lines = ["globals (mean +- sd):", *_globals_table(result)]
    if "stars" in result.idata.groups():
        membership = np.asarray(result.idata.stars["membership"])
        likely = int((membership > LIKELY_MEMBER).sum())
        lines.append(f"likely members (membership > {LIKELY_MEMBER}): {likely} of {membership.size} stars "
                     f"(expected number {membership.sum():.1f})")
    meta = result.provenance.get("input_metadata", {})
    if meta:
        lines.append(f"profile: {meta.get('profile')}; zero point: {meta.get('zero_point')}; "
                     f"parallax offset: {meta.get('offset', 'fit' if meta.get('fit_offset') else 'off')}")
        if meta.get("proper_motion") == "used":
            lines.append(f"membership from parallaxes and proper motions ({meta.get('proper_motion_stars')} stars "
                         "with a usable proper motion)")
        else:
            lines.append("membership from parallaxes only (no proper-motion columns used)")
    inside = result.diagnostics.get("field_table_draws_inside")
    if inside is not None:
        low, high = result.diagnostics["field_table_scale_range_pc"]
        lines.append(f"field term tabulated for field_scale {low:.0f}-{high:.0f} pc: {100 * inside:.0f}% of draws "
                     "inside" + ("" if inside > 0.5 else " (the rest used the slower quadrature)"))
    return "\n".join(lines)


def summarise(result: "Result", data: PipelineData) -> dict[str, Any]:
    """A text block of the globals and the likely members."""
    return {"globals": show(result)}


def _posterior_predictive(result: "Result", num: int = 50, seed: int = 0):
    """Replicated parallaxes of every star for ``num`` global draws, with their component."""
    rng = np.random.default_rng(seed)
    post = result.idata.posterior
    stars = result.idata.stars
    s = np.asarray(stars["parallax_error"])
    total = post.sizes["chain"] * post.sizes["draw"]
    pick = rng.choice(total, size=min(num, total), replace=False)
    g = {k: np.asarray(post[k]).reshape(-1)[pick] for k in GLOBALS if k in post}
    meta = result.provenance.get("input_metadata", {})
    profile = meta.get("profile", "lognormal")
    members_only = meta.get("offset") == "systematic"  # the offset shifts the members' parallaxes only
    reps, members = [], []
    for j in range(pick.size):
        member = rng.uniform(size=s.size) < g["member_fraction"][j]
        r = _draw_cluster_distances(rng, profile, g["cluster_distance"][j], g["cluster_size"][j], s.size)
        r_field = rng.gamma(3.0, g["field_scale"][j], size=s.size)
        r = np.where(member, r, r_field)
        offset = g["parallax_offset"][j] if "parallax_offset" in g else 0.0
        offset = np.where(member, offset, 0.0) if members_only else offset
        reps.append(1000.0 / r + offset + s * rng.normal(size=s.size))
        members.append(member)
    return np.array(reps), np.array(members)


def parallax_figure(result: "Result"):
    """Histogram of the parallaxes used, with the fitted mixture (cluster and field parts)
    and the posterior predictive (median and 90% band of replicated histograms)."""
    # matplotlib here, not at the top: the package imports this module at CLI start-up.
    import matplotlib.pyplot as plt

    w = np.asarray(result.idata.stars["parallax"])
    reps, members = _posterior_predictive(result)
    lo, hi = np.quantile(w, [0.002, 0.998])
    bins = np.linspace(lo, hi, 80)
    width = bins[1] - bins[0]
    counts = np.array([np.histogram(r, bins)[0] for r in reps])
    cluster = np.array([np.histogram(r[m], bins)[0] for r, m in zip(reps, members)]).mean(0)
    fieldc = np.array([np.histogram(r[~m], bins)[0] for r, m in zip(reps, members)]).mean(0)
    centres = 0.5 * (bins[1:] + bins[:-1])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist(w, bins, color="0.8", label=f"data ({w.size} stars)")
    ax.hist(w, bins, histtype="step", color="k", lw=1.2)
    band = np.quantile(counts, [0.05, 0.5, 0.95], axis=0)
    ax.fill_between(centres, band[0], band[2], step="mid", color="C0", alpha=0.3, label="posterior predictive 90%")
    ax.step(centres, band[1], where="mid", color="C0", label="posterior predictive median")
    ax.plot(centres, cluster, color="C3", label="fitted mixture: cluster")
    ax.plot(centres, fieldc, color="C2", label="fitted mixture: field")
    ax.plot(centres, cluster + fieldc, color="k", lw=1, label="fitted mixture: total")
    ax.set(xlabel="parallax (mas)", ylabel=f"stars per {width:.3g} mas", title="gaia-cluster: parallaxes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def proper_motion_figure(result: "Result"):
    """The stars' proper motions coloured by membership probability, with the fitted
    cluster motion and its 2-sigma internal dispersion (at the posterior mean distance);
    left the whole catalog, right a zoom on the cluster."""
    # matplotlib here, not at the top: the package imports this module at CLI start-up.
    import matplotlib.pyplot as plt

    from astroinfer.errors import InputError

    from .options import KM_S_PER_MAS_YR_KPC

    stars = result.idata.stars
    if "pmra" not in stars:
        raise InputError("this result has no proper motions (the catalog had no pmra, pmdec, pmra_error, "
                         "pmdec_error columns, or the run used --proper-motion off)")
    used = np.asarray(stars["proper_motion_used"]).astype(bool)
    x, y = np.asarray(stars["pmra"])[used], np.asarray(stars["pmdec"])[used]
    p = np.asarray(stars["membership"])[used]
    post = result.idata.posterior
    centre = float(post["cluster_pmra"].mean()), float(post["cluster_pmdec"].mean())
    dispersion = float(post["cluster_velocity_dispersion"].mean()) / (
        KM_S_PER_MAS_YR_KPC * float(post["cluster_distance"].mean()) / 1000.0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    order = np.argsort(p)  # members drawn last, on top
    lo, hi = np.quantile(np.stack([x, y], 1), [0.01, 0.99], axis=0)
    zoom = max(10 * dispersion, 1.0)
    for ax, (xlim, ylim) in zip(axes, [((lo[0], hi[0]), (lo[1], hi[1])),
                                       ((centre[0] - zoom, centre[0] + zoom), (centre[1] - zoom, centre[1] + zoom))]):
        points = ax.scatter(x[order], y[order], c=p[order], s=4, cmap="viridis", vmin=0, vmax=1)
        ax.add_patch(plt.Circle(centre, 2 * dispersion, fill=False, color="C3", lw=1.2))
        ax.plot(*centre, "+", color="C3", ms=10, label="cluster motion, 2-sigma internal dispersion")
        ax.set(xlim=xlim, ylim=ylim, xlabel="pmra (mas/yr)", ylabel="pmdec (mas/yr)")
        ax.set_aspect("equal", adjustable="box")  # the dispersion circle drawn round
    axes[0].set_title(f"gaia-cluster: proper motions ({used.sum()} stars)")
    axes[1].set_title("around the cluster")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.colorbar(points, ax=axes, label="membership probability")
    return fig
