"""The report's plots: PNG charts of a run's training log and of its toxicity before and after.

Object-oriented matplotlib with the Agg canvas: no pyplot state, no backend switching. Each plot is
written only when its metrics were logged; :func:`write_plots` says which were not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from detoxrl.runfiles import MetricsLog

TRAINING_PLOTS = (  # the order of the page: two per row, the three-panel losses plot full width
    "training_reward",
    "training_kl",
    "training_returns_advantages",
    "training_time",
    "training_losses",
)
TOXICITY_PLOT = "toxicity_distribution"
ALL_PLOTS = TRAINING_PLOTS + (TOXICITY_PLOT,)
#: Drawn only for a run whose checkpoints were evaluated (``detoxrl evaluate --run RUN --checkpoint N``).
FRONTIER_PLOT = "toxicity_frontier"

PLOT_TITLES = {
    "training_reward": "Reward per PPO step (batch mean ± std)",
    "training_kl": "KL to the reference policy and KL coefficient",
    "training_returns_advantages": "Returns and advantages",
    "training_losses": "Losses and clip fractions",
    "training_time": "Time per PPO step",
    TOXICITY_PLOT: "Toxicity before vs after (ECDF)",
    FRONTIER_PLOT: "Toxicity against KL and quality over training (each checkpoint vs the starting policy)",
}

DPI = 100
BEFORE_COLOR = "#e0711c"  # orange
AFTER_COLOR = "#1f77b4"  # blue

#: One panel of the toxicity plot: (title, values before, values after).
ToxicityPanel = tuple[str, Sequence[float], Sequence[float]]


def _series(metrics: MetricsLog, key: str) -> np.ndarray | None:
    """Values of ``key`` per step (NaN where absent); None when no step has a number for it."""
    values = metrics.values(key)
    return None if values is None else np.asarray(values, dtype=float)


def _steps(metrics: MetricsLog) -> np.ndarray:
    return np.asarray(metrics.steps(), dtype=float)


def _new_fig(ncols: int = 1, width: float = 7.0, height: float = 4.2) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, list(axes)


def _marker(n: int) -> str | None:
    return "o" if n <= 50 else None


def _step_axis(ax: Any) -> None:
    """An x axis of PPO steps: whole numbers only (not 1.0, 1.2, 1.4 on a two-step run), never an offset."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    ax.set_xlabel("PPO step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(ScalarFormatter(useOffset=False))


def _no_data(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\nnot logged", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_reward(metrics: MetricsLog, path: Path) -> bool:
    mean = _series(metrics, "env/reward_mean")
    if mean is None:
        return False
    x = _steps(metrics)
    std = _series(metrics, "env/reward_std")
    fig, (ax,) = _new_fig()
    if std is not None:
        ax.fill_between(x, mean - std, mean + std, color=AFTER_COLOR, alpha=0.2, label="± std over the batch")
    ax.plot(x, mean, color=AFTER_COLOR, marker=_marker(len(x)), lw=2, label="reward mean")
    ax.set_title(PLOT_TITLES["training_reward"])
    _step_axis(ax)
    ax.set_ylabel("reward (reward-model score)")
    ax.legend(loc="best")
    fig.savefig(path, dpi=DPI, facecolor="white")
    return True


def _plot_kl(metrics: MetricsLog, path: Path, target_kl: float | None) -> bool:
    k1 = _series(metrics, "objective/kl")
    k3 = _series(metrics, "objective/kl_k3")
    coef = _series(metrics, "objective/kl_coef")
    if k1 is None and k3 is None and coef is None:
        return False
    x = _steps(metrics)
    m = _marker(len(x))
    fig, (ax,) = _new_fig()
    lines = []
    if k1 is not None:
        lines += ax.plot(x, k1, color="#d62728", marker=m, lw=2, label="KL k1 (in the reward)")
    if k3 is not None:
        lines += ax.plot(x, k3, color="#9467bd", marker=m, lw=2, ls="-.", label="KL k3 (low variance)")
    if target_kl is not None and (k1 is not None or k3 is not None):
        lines.append(ax.axhline(target_kl, color="0.5", ls=":", lw=1.5, label=f"target KL {target_kl:g}"))
    ax.axhline(0.0, color="0.3", lw=0.8)
    _step_axis(ax)
    ax.set_ylabel("KL (nats per response)")
    if coef is not None:
        ax2 = ax.twinx()
        ax2.spines[["top"]].set_visible(False)
        lines += ax2.plot(x, coef, color="#2ca02c", ls="--", lw=2, label="KL coefficient (right axis)")
        ax2.set_ylabel("KL coefficient β")
        # From 0: a coefficient that moves by 1e-5 (the adaptive controller over a short run) reads as flat,
        # not as "1e-5 + 1.9999e-1" on an axis zoomed onto its rounding.
        ax2.set_ylim(0, 1.25 * float(np.nanmax(coef)) if np.nanmax(coef) > 0 else 1.0)
    ax.set_title(PLOT_TITLES["training_kl"])
    ax.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=9)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return True


def _line_panel(ax: Any, x: np.ndarray, y: np.ndarray | None, key: str, color: str, title: str, ylabel: str,
                *, zero_line: bool = False, **title_kw: Any) -> bool:
    """One metric as a line on ``ax``, or a "not logged" note naming ``key``; whether it had a line."""
    if y is None:
        _no_data(ax, key)
        return False
    ax.plot(x, y, color=color, marker=_marker(len(x)), lw=2)
    if zero_line:
        ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set_title(title, **title_kw)
    ax.set_ylabel(ylabel)
    return True


def _plot_returns(metrics: MetricsLog, path: Path) -> bool:
    ret = _series(metrics, "ppo/returns/mean")
    adv = _series(metrics, "ppo/policy/advantages_mean")
    if ret is None and adv is None:
        return False
    x = _steps(metrics)
    fig, (a1, a2) = _new_fig(ncols=2)
    if _line_panel(a1, x, ret, "ppo/returns/mean", AFTER_COLOR, "Returns (batch mean)", "return", fontsize=10):
        _step_axis(a1)
    if _line_panel(a2, x, adv, "ppo/policy/advantages_mean", "#8c564b", "Advantages (mean; ≈0 if whitened)",
                   "advantage", zero_line=True, fontsize=10):
        _step_axis(a2)
    fig.suptitle(PLOT_TITLES["training_returns_advantages"])
    fig.savefig(path, dpi=DPI, facecolor="white")
    return True


def _plot_losses(metrics: MetricsLog, path: Path) -> bool:
    vl = _series(metrics, "ppo/loss/value")
    pl = _series(metrics, "ppo/loss/policy")
    pc = _series(metrics, "ppo/policy/clipfrac")
    vc = _series(metrics, "ppo/val/clipfrac")
    if all(s is None for s in (vl, pl, pc, vc)):
        return False
    x = _steps(metrics)
    m = _marker(len(x))
    fig, (a1, a2, a3) = _new_fig(ncols=3, width=11.0, height=3.8)
    _line_panel(a1, x, vl, "ppo/loss/value", "#17becf", "Value loss", "loss")
    _line_panel(a2, x, pl, "ppo/loss/policy", "#d62728", "Policy loss", "loss", zero_line=True)
    if pc is not None or vc is not None:
        if pc is not None:
            a3.plot(x, pc, color="#d62728", marker=m, lw=2, label="policy clipfrac")
        if vc is not None:
            a3.plot(x, vc, color="#17becf", marker=m, lw=2, ls="--", label="value clipfrac")
        a3.set_title("Clip fractions")
        a3.set_ylabel("fraction of tokens clipped")
        a3.set_ylim(bottom=0)
        a3.legend(loc="best", fontsize=9)
    else:
        _no_data(a3, "clip fractions")
    for ax in (a1, a2, a3):
        _step_axis(ax)
    fig.suptitle(PLOT_TITLES["training_losses"])
    fig.savefig(path, dpi=DPI, facecolor="white")
    return True


def _plot_time(metrics: MetricsLog, path: Path) -> bool:
    parts = [
        ("time/generate_s", "generate", "#1f77b4"),
        ("time/score_s", "score", "#ff7f0e"),
        ("time/update_s", "update", "#2ca02c"),
    ]
    series = [(_series(metrics, k), label, c) for k, label, c in parts]
    series = [(np.nan_to_num(s), label, c) for s, label, c in series if s is not None]
    total = _series(metrics, "time/step_s")
    if not series and total is None:
        return False
    x = _steps(metrics)
    fig, (ax,) = _new_fig()
    width = 0.8 * (float(np.min(np.diff(x))) if len(x) > 1 else 1.0)
    bottom = np.zeros(len(x))
    for s, label, c in series:
        ax.bar(x, s, width, bottom=bottom, color=c, label=label)
        bottom = bottom + s
    if total is not None:
        other = np.clip(np.nan_to_num(total) - bottom, 0.0, None)
        if series and other.max() > 0.01 * max(float(np.nanmax(total)), 1e-9):
            ax.bar(x, other, width, bottom=bottom, color="0.75", label="other")
        ax.plot(x, total, color="black", marker=_marker(len(x)), ms=3, lw=1, label="step total")
    ax.set_title(PLOT_TITLES["training_time"])
    _step_axis(ax)
    ax.set_ylabel("seconds")
    top = max(float(np.nanmax(total)) if total is not None else 0.0, float(bottom.max()))
    ax.set_ylim(0, 1.3 * top if top > 0 else 1.0)  # headroom for the legend above the bars
    ax.legend(loc="upper center", ncol=5, fontsize=9, frameon=False)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return True


def _ecdf(ax: Any, values: np.ndarray, color: str, label: str) -> None:
    v = np.sort(values)
    y = np.arange(1, v.size + 1) / v.size
    ax.step(np.concatenate([[v[0]], v]), np.concatenate([[0.0], y]), where="post", color=color, lw=2, label=label)
    ax.axvline(float(v.mean()), color=color, ls="--", lw=1)


def _plot_toxicity(panels: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> bool:
    panels = [p for p in panels if p[1].size or p[2].size]
    if not panels:
        return False
    fig, axes = _new_fig(ncols=len(panels), width=5.2 * len(panels) + 0.6, height=4.2)
    for ax, (name, before, after) in zip(axes, panels):
        if before.size:
            _ecdf(ax, before, BEFORE_COLOR, f"before (mean {before.mean():.4f}, n={before.size})")
        if after.size:
            _ecdf(ax, after, AFTER_COLOR, f"after (mean {after.mean():.4f}, n={after.size})")
        ax.set_title(name)
        ax.set_xlabel("toxicity = P(toxic)")
        ax.set_ylabel("fraction of summaries ≤ x")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(left=0)
        ax.legend(loc="lower right", fontsize=9)
    fig.suptitle(PLOT_TITLES[TOXICITY_PLOT] + "; dashed lines: means; a curve further left/up is less toxic")
    fig.savefig(path, dpi=DPI, facecolor="white")
    return True


def write_plots(
    metrics: MetricsLog | None, toxicity: list[ToxicityPanel], target_kl: float | None, out_dir: Path,
    frontier: list[dict] | None = None,
) -> tuple[dict[str, Path], list[str]]:
    """The PNG plots into ``out_dir``: ``({name: path}, titles of the training plots with nothing to plot)``.

    ``metrics``: the training log (None: no training plots); ``toxicity``: the panels of the toxicity plot
    (none: no toxicity plot); ``target_kl``: drawn on the KL plot (None: not drawn); ``frontier``: the
    points of :func:`plot_frontier` (fewer than two: no plot). A plot of an earlier
    report that is not written again is removed: it must not pass for a current one."""
    plots: dict[str, Path] = {}
    missing: list[str] = []
    if metrics is not None and metrics.rows:
        makers: dict[str, Callable[[Path], bool]] = {
            "training_reward": lambda p: _plot_reward(metrics, p),
            "training_kl": lambda p: _plot_kl(metrics, p, target_kl),
            "training_returns_advantages": lambda p: _plot_returns(metrics, p),
            "training_losses": lambda p: _plot_losses(metrics, p),
            "training_time": lambda p: _plot_time(metrics, p),
        }
        for name, make in makers.items():
            path = out_dir / f"{name}.png"
            if make(path):
                plots[name] = path
            else:
                missing.append(PLOT_TITLES[name])
    if toxicity:
        panels = [(title, np.asarray(b, dtype=float), np.asarray(a, dtype=float)) for title, b, a in toxicity]
        path = out_dir / f"{TOXICITY_PLOT}.png"
        if _plot_toxicity(panels, path):
            plots[TOXICITY_PLOT] = path
    if frontier and len(frontier) >= 2:
        path = out_dir / f"{FRONTIER_PLOT}.png"
        plot_frontier(frontier, path)
        plots[FRONTIER_PLOT] = path
    for name in (*ALL_PLOTS, FRONTIER_PLOT):
        if name not in plots:
            (out_dir / f"{name}.png").unlink(missing_ok=True)
    return plots, missing


def frontier_quality_axis(points: list[dict]) -> tuple[str, str]:
    """The quality axis of a frontier plot: (the key of :func:`detoxrl.report.frontier_point`, its label).
    ROUGE-L where any point has it (the data has references), else faithfulness."""
    if any(p.get("rouge_l_diff_points") is not None for p in points):
        return "rouge_l_diff_points", "ROUGE-L change (points, greedy)"
    return "faithfulness_diff", "faithfulness change (greedy)"


def plot_frontier(points: list[dict], path: Path, title: str | None = None) -> None:
    """Each evaluated checkpoint's primary measure (change of each primary judge's measure, with its 95%
    interval) against the KL to the reference (left) and against the greedy summaries' quality change
    (right: ROUGE-L where the data has references, else faithfulness), each point labelled by its step.
    ``points``: ``{"step", "primary": {judge: {"change_pct", "low_pct", "high_pct"}}, "kl_sampled_nats",
    "rouge_l_diff_points", "faithfulness_diff"}`` (:func:`detoxrl.report.frontier_points`)."""
    judges = list(dict.fromkeys(j for p in points for j in p["primary"]))
    quality_key, quality_name = frontier_quality_axis(points)
    fig, axes = _new_fig(2, width=11.0)
    for judge in judges:
        pts = [p for p in points if judge in p["primary"] and p.get("kl_sampled_nats") is not None]
        y = [p["primary"][judge]["change_pct"] for p in pts]
        err = [[p["primary"][judge]["change_pct"] - p["primary"][judge]["low_pct"] for p in pts],
               [p["primary"][judge]["high_pct"] - p["primary"][judge]["change_pct"] for p in pts]]
        for ax, key in ((axes[0], "kl_sampled_nats"), (axes[1], quality_key)):
            x = [p.get(key) if p.get(key) is not None else np.nan for p in pts]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=judge.split(":")[-1])
            for xi, yi, p in zip(x, y, pts):
                ax.annotate(str(p["step"]), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for ax, xlabel in ((axes[0], "KL to the reference (nats per summary, sampled)"), (axes[1], quality_name)):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("primary measure, change (%)")
        ax.grid(alpha=0.3)
    axes[1].axvline(0, color="grey", lw=0.8)
    axes[0].legend(title="judge (95% CI)", fontsize=8)
    fig.suptitle(title or PLOT_TITLES[FRONTIER_PLOT], fontsize=10)
    fig.savefig(path, dpi=DPI, facecolor="white")


def plot_algorithm_frontier(curves: dict[str, list[dict]], path: Path, title: str | None = None,
                            quality_gate: float | None = None) -> None:
    """Several runs on one frontier, e.g. one per algorithm: a row per primary judge, its measure's change
    (with the 95% interval) against the greedy quality change (left: ROUGE-L where the data has references,
    else faithfulness) and against the KL to the reference (right); one line per run through its points in
    step order, each labelled by its step; ``quality_gate`` (e.g. -1 ROUGE-L point) is drawn as a dashed
    line on the quality axis. ``curves``: run name -> :func:`detoxrl.report.frontier_points`."""
    points = [p for pts in curves.values() for p in pts]
    judges = list(dict.fromkeys(j for p in points for j in p["primary"]))
    quality_key, quality_name = frontier_quality_axis(points)
    fig = Figure(figsize=(11.0, 3.8 * max(1, len(judges))), dpi=DPI, layout="constrained")
    axes = fig.subplots(max(1, len(judges)), 2, squeeze=False)
    colors = {name: f"C{i}" for i, name in enumerate(curves)}
    for row, judge in enumerate(judges):
        for col, (key, xlabel) in enumerate(((quality_key, quality_name),
                                             ("kl_sampled_nats", "KL to the reference (nats per summary, sampled)"))):
            ax = axes[row][col]
            for name, pts in curves.items():
                pts = [p for p in pts if judge in p["primary"] and p.get(key) is not None]
                if not pts:
                    continue
                x = [p[key] for p in pts]
                y = [p["primary"][judge]["change_pct"] for p in pts]
                err = [[p["primary"][judge]["change_pct"] - p["primary"][judge]["low_pct"] for p in pts],
                       [p["primary"][judge]["high_pct"] - p["primary"][judge]["change_pct"] for p in pts]]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colors[name], label=name, alpha=0.85)
                for xi, yi, p in zip(x, y, pts):
                    ax.annotate(str(p["step"]), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.axhline(0, color="grey", lw=0.8)
            if col == 0:
                ax.axvline(0, color="grey", lw=0.8)
                if quality_gate is not None:
                    ax.axvline(quality_gate, color="firebrick", lw=1.0, ls="--", label="quality gate")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{judge.split(':')[-1]}: primary measure, change (%)")
            ax.grid(alpha=0.3)
            ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].legend(title="run (step; 95% CI)", fontsize=8)
    fig.suptitle(title or "toxicity against quality and KL, one line per run", fontsize=10)
    fig.savefig(path, dpi=DPI, facecolor="white")
