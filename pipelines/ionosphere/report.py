"""What the ionosphere pipeline reports: the text ``show`` prints (problems, methods, dTEC,
smoothing, the station table), ``summarise`` and the dTEC-against-time plot."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from astroinfer.pipeline import PipelineData

if TYPE_CHECKING:
    from astroinfer.result import Result

__all__ = ["show", "summarise", "plot_dtec"]


def _station_text(result: "Result") -> str:
    st = result.idata["station_summary"] if "station_summary" in result.idata.groups() else None
    if st is None:
        return ""
    lines = ["station          residual phase rms (rad)   multimodal problems"]
    for name, rms, multi in zip(st["station"].values, st["residual_phase_rms"].values, st["num_multimodal"].values):
        lines.append(f"{str(name):16s} {rms:10.3f}                 {int(multi)}")
    return "\n".join(lines)


def show(result: "Result") -> str:
    s = result.idata.problem_summary
    diag = result.diagnostics
    num = s.sizes["problem"]
    multi = int(np.sum(s["dtec_num_modes"].values > 1))
    flagged = int(np.sum(s["flagged"].values > 0)) if "flagged" in s else 0
    codes = s["method_code"].values
    lines = [
        f"{num} problems (time x ant x dir x pol); {flagged} flagged (no unflagged channel)",
        f"multimodal dTEC posteriors (more than one mode above 0.1% mass): {multi}",
        f"methods: grid {int(np.sum(codes == 0))}, refined grid {int(np.sum(codes == 1))}, "
        f"nested {int(np.sum(codes == 2))}, unresolved {int(np.sum(codes == 3))}",
        f"dTEC: median posterior sd {np.nanmedian(s['dtec_sd'].values):.4g} TECU, "
        f"range of means {np.nanmin(s['dtec_mean'].values):.3f} to {np.nanmax(s['dtec_mean'].values):.3f} TECU",
    ]
    if diag.get("h5parm_out"):
        lines.append(f"solutions h5parm: {diag['h5parm_out']} (sol000/tec000)")
    sm = diag.get("smoothing")
    if sm:
        lines.append(f"smoothing (GP over time): amplitude {sm['amplitude_tecu']:.3g} TECU, time scale "
                     f"{sm['time_scale_s']:.3g} s; {sm['num_outliers']} outlier(s) (|leave-one-out z| > 3; "
                     f"{sm['num_multimodal_outliers']} multimodal), median change "
                     f"{sm['median_change_at_outliers_tecu']:.3g} TECU there, "
                     f"{sm['median_change_elsewhere_tecu']:.3g} TECU elsewhere (group smoothed_screen)")
    text = _station_text(result)
    return "\n".join(lines + ([text] if text else []))


def summarise(result: "Result", data: PipelineData) -> dict[str, Any]:
    diag = result.diagnostics
    rate = diag.get("problems_per_s")
    head = f"{diag.get('num_problems')} problems" + (f" at {rate:,.0f} problems/s" if rate else "")
    return {"overview": head + "\n" + show(result)}


def plot_dtec(result: "Result"):
    """dTEC (heaviest mode's mean, +- posterior sd) against time, one line per station."""
    # Imported here, not at the top: the package imports this module (for show and summarise)
    # when the CLI lists the pipelines, which must not load matplotlib.
    import matplotlib.pyplot as plt

    s = result.idata.problem_summary
    times = np.asarray(s["time"].values, np.float64)
    ants = np.asarray(s["ant"].values).astype(str)
    pols = np.asarray(s["pol"].values).astype(str)
    dirs = np.asarray(s["dir"].values).astype(str)
    keep = (pols == pols[0]) & (dirs == dirs[0])
    fig, ax = plt.subplots(figsize=(9, 5))
    t0 = np.nanmin(times)
    for name in dict.fromkeys(ants[keep]):
        sel = keep & (ants == name)
        t = (times[sel] - t0) / 60.0
        y = s["dtec_mode_mean"].values[sel, 0]
        e = s["dtec_sd"].values[sel]
        ax.plot(t, y, lw=1, label=name)
        ax.fill_between(t, y - e, y + e, alpha=0.2)
    ax.set_xlabel("time since start (min)")
    ax.set_ylabel("dTEC (TECU)")
    ax.set_title(f"dTEC per station (pol {pols[0]}, dir {dirs[0]})")
    if len(set(ants[keep])) <= 30:
        ax.legend(fontsize=6, ncol=3)
    return fig
