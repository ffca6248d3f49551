"""Figures of a run that arviz does not draw."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from astroinfer.result import Result

__all__ = ["flow_training_figure"]


def flow_training_figure(result: "Result") -> "Figure":
    """Flow-MC warmup: the flow's training and held-out loss per epoch (loops joined end to
    end, a dotted line between loops) and the local and global acceptance per loop."""
    import matplotlib.pyplot as plt

    diag = result.diagnostics
    curves = diag.get("flow_loss") or []
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    start = 0
    for loop, curve in enumerate(curves):
        epochs = range(start, start + len(curve["train"]))
        loss_ax.plot(epochs, curve["train"], color="C0", label="training" if loop == 0 else None)
        loss_ax.plot(epochs, curve["val"], color="C1", label="held out" if loop == 0 else None)
        start += len(curve["train"])
        loss_ax.axvline(start, color="0.7", linestyle=":")
    loss_ax.set(xlabel="epoch (all training loops)", ylabel="negative log-likelihood",
                title=f"flow training: {len(curves)} loop(s)" + (" (reused flow)" if diag.get("flow_reused") else ""))
    if curves:
        loss_ax.legend()
    local = diag.get("warmup_local_acceptance") or []
    global_ = diag.get("warmup_global_acceptance") or []
    acc_ax.plot(range(1, len(local) + 1), local, "o-", label="local moves")
    # Global proposals start once a flow exists: after the first loop, or at once when reused.
    offset = len(local) - len(global_)
    acc_ax.plot(range(offset + 1, offset + len(global_) + 1), global_, "s-", label="global (flow) proposals")
    acc_ax.set(xlabel="warmup loop", ylabel="acceptance", ylim=(0, 1),
               title=f"production: local {diag.get('local_acceptance', float('nan')):.2f}, "
                     f"global {diag.get('global_acceptance') or 0:.2f}")
    acc_ax.legend()
    figure.tight_layout()
    return figure
