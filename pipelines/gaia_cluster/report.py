"""gaia-cluster's report: the selection printed before a run, the globals table (``show``,
``summarise``), the posterior predictive check of the parallaxes (stored with the result)
and the parallax figure with the posterior predictive and its residuals.

numpy only at import (matplotlib where the figure is drawn): the package imports this
module when the CLI lists the pipelines.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from astroinfer.pipeline import PipelineData

from .options import FIELD_SCALES_PC, FIELD_WEIGHTS, GLOBALS, LIKELY_MEMBER, NAME, OFFSET_FIELD, PM_GLOBALS
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
    if FIELD_WEIGHTS in posterior:
        lines.extend(_field_weights_lines(np.asarray(posterior[FIELD_WEIGHTS])))
    for name in GLOBALS + PM_GLOBALS:
        if name in posterior:
            values = np.asarray(posterior[name]).reshape(-1)
            lo, hi = np.quantile(values, [0.05, 0.95])
            lines.append(f"  {name:21s} {values.mean():10.4g} +- {values.std():<9.3g} {units[name]:6s}"
                         f" 90% [{lo:.4g}, {hi:.4g}]")
    return lines


def _field_weights_lines(weights: np.ndarray) -> list[str]:
    """The mixture field's weights (posterior means) per group, in percent, by component scale."""
    mean = weights.reshape((-1,) + weights.shape[2:]).mean(0)
    head = " ".join(f"{scale / 1000:>5.3g}" for scale in FIELD_SCALES_PC)
    lines = [f"  field mixture weights, % (rows: groups by parallax error; columns: L in kpc {head})"]
    lines += [f"    group {g}: {' '.join(f'{100 * x:5.1f}' for x in row)}" for g, row in enumerate(mean)]
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
                     f"parallax offset: {meta.get('offset', 'fit' if meta.get('fit_offset') else 'off')}; "
                     + (f"field: mixture, {meta.get('field_groups')} group(s)" if meta.get("field") == "mixture"
                        else "field: edsd (one r^2 exp(-r/L) density)"))
        if meta.get("systematics") == "gp":
            lines.append(f"parallax offset: a Gaussian-process field over the sky (Maiz Apellaniz et al. 2021 "
                         f"covariance; {meta.get('offset_field_rank')} basis vectors on "
                         f"{meta.get('offset_field_nodes')} nodes); parallax_offset is its value at the stars' "
                         f"mean position")
        if meta.get("proper_motion") == "used":
            lines.append(f"membership from parallaxes and proper motions ({meta.get('proper_motion_stars')} stars "
                         "with a usable proper motion)")
        else:
            lines.append("membership from parallaxes only (no proper-motion columns used)")
    if "predictive_chi2" in result.diagnostics:
        d = result.diagnostics
        lines.append(f"posterior predictive check of the parallaxes: chi^2 {d['predictive_chi2']:.0f} over "
                     f"{d['predictive_bins']} bins (p = {d['predictive_p']:.2g})")
    inside = result.diagnostics.get("field_table_draws_inside")
    if inside is not None:
        low, high = result.diagnostics["field_table_scale_range_pc"]
        lines.append(f"field term tabulated for field_scale {low:.0f}-{high:.0f} pc: {100 * inside:.0f}% of draws "
                     "inside" + ("" if inside > 0.5 else " (the rest used the slower quadrature)"))
    return "\n".join(lines)


def summarise(result: "Result", data: PipelineData) -> dict[str, Any]:
    """A text block of the globals and the likely members."""
    return {"globals": show(result)}


#: Bins of the posterior predictive check: equal numbers of stars per bin, and replicated
#: catalogs (one per posterior draw) to take the predicted counts' mean and sd from.
PREDICTIVE_BINS = 40
PREDICTIVE_REPLICATES = 200
#: Posterior predictive p-value below which the check stores a warning.
PREDICTIVE_P_LIMIT = 1e-3


def _field_distances(rng, g, j, group):
    """Field distances for replicate ``j`` of stars in ``group`` (their field groups): the
    single density or each star's mixture."""
    if FIELD_WEIGHTS not in g:
        return rng.gamma(3.0, g["field_scale"][j], size=group.size)
    weights = g[FIELD_WEIGHTS][j][group]  # (stars, components)
    cumulative = np.cumsum(weights / weights.sum(1, keepdims=True), axis=1)
    component = np.minimum((rng.uniform(size=(group.size, 1)) > cumulative).sum(1), len(FIELD_SCALES_PC) - 1)
    return rng.gamma(3.0, np.asarray(FIELD_SCALES_PC)[component])


#: Rounds of redrawing the replicated parallaxes that fall outside the run's parallax window;
#: a star whose predictive so rarely lands inside is left out of that replicate (NaN).
MAX_WINDOW_REDRAWS = 100


def _replicate(rng, g, j, profile, members_only, error, group, offset_basis=None):
    """One replicated parallax and membership per star (errors ``error``) for draw ``j``;
    with ``offset_basis`` (those stars' rows) each member's offset is the draw's offset field."""
    member = rng.uniform(size=error.size) < g["member_fraction"][j]
    r = _draw_cluster_distances(rng, profile, g["cluster_distance"][j], g["cluster_size"][j], error.size)
    r = np.where(member, r, _field_distances(rng, g, j, group))
    offset = g["parallax_offset"][j] if "parallax_offset" in g else 0.0
    if offset_basis is not None:
        offset = offset_basis @ g[OFFSET_FIELD][j]
    offset = np.where(member, offset, 0.0) if members_only else offset
    return 1000.0 / r + offset + error * rng.normal(size=error.size), member


def _posterior_predictive(result: "Result", num: int = 50, seed: int = 0, metadata: dict | None = None):
    """Replicated parallaxes of every star for ``num`` global draws, with their component;
    the run's settings from ``metadata`` (the loaded catalog's), else the result's provenance.

    A catalog cut to a parallax window (``--parallax-min/--parallax-max``) is compared with
    replicates through the same window: each star's replicate is redrawn (member or field,
    distance and parallax) until it lands inside, a draw from the predictive given that the
    star was selected. Without this a cut catalog fails the check however well it fits
    (demo cut to 0.6-1.6 mas, same fit: chi^2 367 with the window ignored, 34 through it)."""
    rng = np.random.default_rng(seed)
    post = result.idata.posterior
    stars = result.idata.stars
    s = np.asarray(stars["parallax_error"])
    group = np.asarray(stars["field_group"]) if "field_group" in stars else np.zeros(s.size, int)
    total = post.sizes["chain"] * post.sizes["draw"]
    pick = rng.choice(total, size=min(num, total), replace=False)
    g = {k: (lambda v: v.reshape((-1,) + v.shape[2:])[pick])(np.asarray(post[k]))
         for k in GLOBALS + (FIELD_WEIGHTS, OFFSET_FIELD) if k in post}
    basis = np.asarray(stars["offset_basis"], dtype=np.float64) if "offset_basis" in stars else None
    meta = result.provenance.get("input_metadata", {}) if metadata is None else metadata
    profile = meta.get("profile", "lognormal")
    members_only = meta.get("offset") == "systematic"  # the offset shifts the members' parallaxes only
    lo, hi = [(-np.inf, np.inf)[k] if bound is None else bound
              for k, bound in enumerate(meta.get("parallax_window_mas", [None, None]))]
    reps, members = np.full((pick.size, s.size), np.nan), np.zeros((pick.size, s.size), bool)
    for j in range(pick.size):
        todo = np.arange(s.size)
        for _ in range(MAX_WINDOW_REDRAWS):
            w, member = _replicate(rng, g, j, profile, members_only, s[todo], group[todo],
                                   None if basis is None else basis[todo])
            inside = (w > lo) & (w < hi)
            reps[j, todo[inside]], members[j, todo[inside]] = w[inside], member[inside]
            todo = todo[~inside]
            if not todo.size:
                break
    return reps, members


def _predictive_counts(result: "Result", metadata: dict | None = None):
    """Bin edges (equal data counts), the data's counts and the replicated counts (replicates, bins)."""
    w = np.asarray(result.idata.stars["parallax"])
    reps, _ = _posterior_predictive(result, num=PREDICTIVE_REPLICATES, seed=1, metadata=metadata)
    edges = np.quantile(w, np.linspace(0.0, 1.0, PREDICTIVE_BINS + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    return edges, np.histogram(w, edges)[0], np.array([np.histogram(r[np.isfinite(r)], edges)[0] for r in reps])


def field_predictive_check(result: "Result", metadata: dict | None = None) -> dict[str, float]:
    """The posterior predictive check of the parallax histogram: over PREDICTIVE_BINS bins
    of equal data counts, chi^2 = sum ((data - mean) / sd)^2 with the mean and sd of the
    replicated counts, and its p-value (chi^2 with bins - 1 degrees of freedom: the total
    is fixed). Stored in ``result.diagnostics`` (``predictive_chi2``, ``predictive_bins``,
    ``predictive_p``); a p-value under PREDICTIVE_P_LIMIT adds a warning."""
    from scipy.stats import chi2  # SciPy here, not at the top: the CLI imports this module at start-up

    _, observed, replicated = _predictive_counts(result, metadata)
    mean, sd = replicated.mean(0), replicated.std(0, ddof=1)
    statistic = float(np.sum(((observed - mean) / np.maximum(sd, 1.0)) ** 2))
    dof = PREDICTIVE_BINS - 1
    check = {"predictive_chi2": statistic, "predictive_bins": PREDICTIVE_BINS,
             "predictive_p": float(chi2.sf(statistic, dof))}
    result.diagnostics.update(check)
    if check["predictive_p"] < PREDICTIVE_P_LIMIT:
        result.diagnostics.setdefault("warnings", []).append(
            f"the posterior predictive parallax histogram misses the data: chi^2 {statistic:.0f} over "
            f"{PREDICTIVE_BINS} bins of equal counts (p = {check['predictive_p']:.1g}); the field or cluster model "
            "does not fit this catalog (see the residuals in `astroinfer plot RESULT.h5 --kind parallax`)")
    return check


def parallax_figure(result: "Result"):
    """Histogram of the parallaxes used, with the fitted mixture (cluster and field parts)
    and the posterior predictive (median and 90% band of replicated histograms); below, the
    residuals (data - predictive mean) / predictive sd in bins of equal data counts, the
    bins of the stored chi^2 check."""
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
    fig, (ax, res_ax) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, height_ratios=(3, 1.3))
    ax.hist(w, bins, color="0.8", label=f"data ({w.size} stars)")
    ax.hist(w, bins, histtype="step", color="k", lw=1.2)
    band = np.quantile(counts, [0.05, 0.5, 0.95], axis=0)
    ax.fill_between(centres, band[0], band[2], step="mid", color="C0", alpha=0.3, label="posterior predictive 90%")
    ax.step(centres, band[1], where="mid", color="C0", label="posterior predictive median")
    ax.plot(centres, cluster, color="C3", label="fitted mixture: cluster")
    ax.plot(centres, fieldc, color="C2", label="fitted mixture: field")
    ax.plot(centres, cluster + fieldc, color="k", lw=1, label="fitted mixture: total")
    ax.set(ylabel=f"stars per {width:.3g} mas", title="gaia-cluster: parallaxes")
    ax.legend(fontsize=8)
    edges, observed, replicated = _predictive_counts(result)
    z = (observed - replicated.mean(0)) / np.maximum(replicated.std(0, ddof=1), 1.0)
    inner = np.clip(edges, lo, hi)  # the open end bins drawn at the plot's edges
    res_ax.bar(0.5 * (inner[1:] + inner[:-1]), z, width=np.diff(inner), color="C0", edgecolor="k", lw=0.4)
    for level in (-2, 2):
        res_ax.axhline(level, color="0.5", lw=0.8, ls="--")
    res_ax.axhline(0, color="k", lw=0.8)
    res_ax.set(xlabel="parallax (mas)", ylabel="(data - pred.) / sd",
               title=f"residuals, {PREDICTIVE_BINS} bins of equal counts: chi^2 {np.sum(z**2):.0f}", xlim=(lo, hi))
    res_ax.title.set_fontsize(9)
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
