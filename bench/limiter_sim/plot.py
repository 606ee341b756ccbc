"""The picture in docs/limiter.md: capacity, limiter rate, learned limit, hold line, goodput.

One panel per run (replica count), with the controller's decisions marked along the top
and, underneath, the upstream 429 ratio (3-s averages) against the 5% and 2% lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .analysis import SMOOTH_SECONDS, smoothed_goodput, smoothed_ratio
from .run import RunResult

MARKERS = {
    "decrease": ("v", "tab:red"),
    "increase": ("^", "tab:green"),
    "probe": ("^", "tab:purple"),
}


def _steps(times: Sequence[float], values: Sequence[float | None]) -> tuple[list, list]:
    xs, ys = [], []
    for t, v in zip(times, values, strict=True):
        xs.append(t)
        ys.append(float("nan") if v is None else v)
    return xs, ys


def _capacity(run: RunResult, t: float) -> float | None:
    for phase in run.config.phases:
        if phase.start <= t < phase.end:
            return phase.accepts
    return None


def plot(runs: Sequence[RunResult], path: Path, hold_margin: float) -> None:
    """Draw every run into one PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2 * len(runs), 1, figsize=(11, 4.6 * len(runs)), sharex=True,
        gridspec_kw={"height_ratios": [3, 1] * len(runs)}, squeeze=False,
    )  # fmt: skip
    for n, run in enumerate(runs):
        top, bottom = axes[2 * n][0], axes[2 * n + 1][0]
        samples = run.samples
        times = [s.t for s in samples]
        series = run.series
        capacity = [_capacity(run, s.t) for s in samples]
        top.step(*_steps(times, capacity), where="post", color="black",
                 lw=1.6, ls="--", label="capacity (hidden limit)")  # fmt: skip
        top.step(*_steps(times, [s.rate for s in samples]), where="post", color="tab:blue",
                 lw=1.4, label="limiter rate")  # fmt: skip
        top.step(*_steps(times, [s.ceiling for s in samples]), where="post",
                 color="tab:orange", lw=1.2, label="learned limit")  # fmt: skip
        holds = [None if s.ceiling is None else s.ceiling * (1 - hold_margin) for s in samples]
        top.step(*_steps(times, holds), where="post", color="tab:orange", lw=0.9, ls=":",
                 label=f"hold line (learned x {1 - hold_margin:g})")  # fmt: skip
        last = len(series.seconds) - SMOOTH_SECONDS + 1
        centres = [a + SMOOTH_SECONDS / 2 for a in range(last)]
        top.plot(centres, [smoothed_goodput(series, a) for a in range(last)], color="tab:green",
                 lw=1.0, alpha=0.8, label="goodput (3-s average)")  # fmt: skip
        ymax = max([p.accepts for p in run.config.phases] + [1.0]) * 1.35
        top.set_ylim(0, ymax)
        for decision in run.decisions:
            if decision.decision in MARKERS:
                marker, color = MARKERS[decision.decision]
                top.plot(decision.t, ymax * 0.96, marker=marker, color=color, ms=6, ls="none")
        for phase in run.config.phases[1:]:
            top.axvline(phase.start, color="grey", lw=0.6)
            bottom.axvline(phase.start, color="grey", lw=0.6)
        for phase in run.config.phases:
            if phase.warmup:
                top.axvspan(phase.start, phase.end, color="grey", alpha=0.08, lw=0, zorder=0)
                top.text(phase.start + 1, ymax * 0.05, "warm-up (cold start)", fontsize=8,
                         color="dimgrey")  # fmt: skip
        top.set_ylabel("requests/s")
        plural = "s" if run.config.replicas > 1 else ""
        title = f"{run.config.scenario}, {run.config.replicas} replica{plural}"
        top.set_title(
            f"{title}: offered {run.config.offered:g} req/s; markers: "
            "▼ decrease, ▲ increase (green) / probe (purple)", fontsize=10,
        )  # fmt: skip
        top.legend(loc="upper left", bbox_to_anchor=(0.0, 0.93), fontsize=8, ncol=3)
        top.grid(alpha=0.3)
        ratios = [100 * smoothed_ratio(series, a) for a in range(last)]
        bottom.plot(centres, ratios, color="tab:red", lw=1.0, label="upstream 429 ratio (3-s)")
        bottom.axhline(5, color="tab:red", lw=0.6, ls="--")
        bottom.axhline(2, color="tab:red", lw=0.6, ls=":")
        bottom.set_ylim(0, 60)
        bottom.set_ylabel("429 %")
        bottom.legend(loc="upper left", fontsize=8)
        bottom.grid(alpha=0.3)
    axes[-1][0].set_xlabel("seconds since the simulator started")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
