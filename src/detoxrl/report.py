"""Run report: training curves, before/after toxicity, quality and examples on one page.

``write_report(run_dir)`` reads what the trainer and the evaluator left in a run folder::

    RUN/config.yaml            resolved config (optional)
    RUN/metrics.jsonl          one JSON object per PPO step
    RUN/eval/before.jsonl      one record per summary, before training   (optional)
    RUN/eval/after.jsonl       one record per summary, after training    (optional)
    RUN/eval/compare.json      the headline written by detoxrl.compare   (optional)
    RUN/eval/comparison.json   paired before/after rows, by reward_diff  (optional)

and writes ``RUN/report/``: six PNG plots, ``report.html`` (self-contained: plots embedded as
data URIs, inline CSS, a Content-Security-Policy that forbids anything external or scripted) and
``report.md`` (the same content, plots by relative path). Whatever is missing is said on the page,
never silently dropped. All text from the run is HTML-escaped, in the Markdown file too.

Command line: ``python -m detoxrl.report RUN``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure

from detoxrl import runfiles
from detoxrl.errors import DetoxError

TRAINING_PLOTS = (  # the order of the page: two per row, the three-panel losses plot full width
    "training_reward",
    "training_kl",
    "training_returns_advantages",
    "training_time",
    "training_losses",
)
TOXICITY_PLOT = "toxicity_distribution"
ALL_PLOTS = TRAINING_PLOTS + (TOXICITY_PLOT,)

PLOT_TITLES = {
    "training_reward": "Reward per PPO step (batch mean ± std)",
    "training_kl": "KL to the reference policy and KL coefficient",
    "training_returns_advantages": "Returns and advantages",
    "training_losses": "Losses and clip fractions",
    "training_time": "Time per PPO step",
    TOXICITY_PLOT: "Toxicity before vs after (ECDF)",
}

QUALITY_HEADER = ["measure", "before", "after", "diff (after − before)", "CI of the diff"]
N_EXAMPLES = 5  # most improved and most worsened rows shown
QUERY_PREVIEW_CHARS = 220
DPI = 100
BEFORE_COLOR = "#e0711c"  # orange
AFTER_COLOR = "#1f77b4"  # blue

# Rows of the training summary table: (metric key, label).
SUMMARY_METRICS = (
    ("env/reward_mean", "reward mean"),
    ("env/reward_std", "reward std"),
    ("objective/kl", "KL (k1)"),
    ("objective/kl_k3", "KL (k3)"),
    ("objective/kl_coef", "KL coefficient"),
    ("objective/entropy", "entropy"),
    ("env/response_length_mean", "response length (tokens)"),
    ("ppo/policy/approxkl", "approx. KL (policy update)"),
    ("ppo/policy/clipfrac", "policy clip fraction"),
    ("ppo/val/clipfrac", "value clip fraction"),
    ("ppo/loss/value", "value loss"),
    ("time/step_s", "step time (s)"),
)


# --------------------------------------------------------------------------------------------
# Reading the run folder
# --------------------------------------------------------------------------------------------


@dataclass
class RunData:
    """Everything the report needs, read from a run folder; ``notes`` lists what was off."""

    run_dir: Path
    config: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    before: list[dict[str, Any]] | None = None
    after: list[dict[str, Any]] | None = None
    compare: dict[str, Any] | None = None
    comparison: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def evaluated(self) -> bool:
        return bool(self.before) or bool(self.after)


def _read_jsonl(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Read JSON Lines; unreadable lines (a run killed mid-write) are skipped and counted."""
    rows: list[dict[str, Any]] = []
    bad = 0
    for line in runfiles.read_jsonl(path):
        if line.ok and isinstance(line.value, dict):
            rows.append(line.value)
        else:
            bad += 1
    if bad:
        notes.append(f"{path.name}: {bad} unreadable line(s) skipped")
    return rows


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        notes.append(f"{path.name} could not be read ({type(exc).__name__}: {exc}); it is left out")
        return None


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder; raise :class:`DetoxError` if it is not one."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DetoxError(f"'{run_dir}' does not exist or is not a folder; pass the --output-dir of a train run")
    paths = runfiles.RunPaths(run)
    metrics_path = paths.metrics
    if not metrics_path.is_file() and not paths.final.exists():
        raise DetoxError(
            f"'{run_dir}' is not a detoxrl run folder (no metrics.jsonl); pass the --output-dir of a train run"
        )
    data = RunData(run_dir=run)
    cfg_path = paths.config
    if cfg_path.is_file():
        try:
            cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
            data.config = cfg if isinstance(cfg, dict) else None
            if data.config is None:
                data.notes.append("config.yaml is not a mapping; settings are not shown")
        except (OSError, yaml.YAMLError) as exc:
            data.notes.append(f"config.yaml could not be read ({type(exc).__name__}); settings are not shown")
    if metrics_path.is_file():
        data.metrics = _read_jsonl(metrics_path, data.notes)
    ev = paths.eval
    for name in ("before", "after"):
        p = paths.eval_records(name)
        if p.is_file():
            setattr(data, name, _read_jsonl(p, data.notes))
    if paths.compare.is_file():
        obj = _read_json(paths.compare, data.notes)
        data.compare = obj if isinstance(obj, dict) else None
    if (ev / runfiles.COMPARISON).is_file():
        obj = _read_json(ev / runfiles.COMPARISON, data.notes)
        data.comparison = [r for r in obj if isinstance(r, dict)] if isinstance(obj, list) else None
    return data


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _num(x: Any) -> float | None:
    """A number, or the ``mean`` of a summary dict; None for anything else."""
    if isinstance(x, dict):
        x = x.get("mean")
    return float(x) if _is_num(x) else None


def _finite(x: Any) -> bool:
    return _is_num(x) and math.isfinite(float(x))


def _fmt(x: Any, signed: bool = False, fixed: int | None = None) -> str:
    """A number for a table: ``fixed`` decimals when given, else 4 significant digits."""
    if x is None:
        return "–"
    if isinstance(x, bool) or not _is_num(x):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    sign = "+" if signed else ""
    if fixed is not None:
        return f"{x:{sign}.{fixed}f}"
    if x.is_integer() and abs(x) < 1e6:
        return f"{int(x):{sign}d}"
    if 1e4 <= abs(x) < 1e9:
        return f"{x:{sign},.0f}"
    return f"{x:{sign}#.4g}".rstrip(".")


def _tox(x: Any, signed: bool = False) -> str:
    """A probability (toxicity): four decimals, so before/after columns line up."""
    return _fmt(x, signed=signed, fixed=4)


def _cfg(x: Any) -> str:
    if x is None or x == "":
        return "–"
    if isinstance(x, float):
        return f"{x:g}"
    return str(x)


def _pct(x: Any, signed: bool = False) -> str:
    if not _finite(x):
        return "–"
    return f"{float(x) * 100:+.1f}%" if signed else f"{float(x) * 100:.1f}%"


def _get(cfg: dict[str, Any] | None, dotted: str) -> Any:
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _series(metrics: list[dict[str, Any]], key: str) -> np.ndarray | None:
    """Values of ``key`` per step (NaN where absent); None when no step has a number for it."""
    vals = [float(m[key]) if _is_num(m.get(key)) else math.nan for m in metrics]
    if not any(math.isfinite(v) for v in vals):
        return None
    return np.asarray(vals, dtype=float)


def _steps(metrics: list[dict[str, Any]]) -> np.ndarray:
    steps = [m.get("step") for m in metrics]
    if all(_is_num(s) for s in steps):
        return np.asarray(steps, dtype=float)
    return np.arange(1, len(metrics) + 1, dtype=float)


def _values(records: list[dict[str, Any]] | None, key: str) -> np.ndarray:
    if not records:
        return np.zeros(0)
    return np.asarray([float(r[key]) for r in records if _finite(r.get(key))], dtype=float)


def simple_summary(values: np.ndarray) -> dict[str, Any] | None:
    """Plain summary (no confidence interval), used when compare.json was not written."""
    if values.size == 0:
        return None
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "ratio": float((values >= 0.5).mean()),
        "max": float(values.max()),
    }


# --------------------------------------------------------------------------------------------
# Plots (object-oriented matplotlib with the Agg canvas: no pyplot state, no backend switching)
# --------------------------------------------------------------------------------------------


def _new_fig(ncols: int = 1, width: float = 7.0, height: float = 4.2) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, list(axes)


def _marker(n: int) -> str | None:
    return "o" if n <= 50 else None


def _no_data(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\nnot logged", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_reward(metrics: list[dict[str, Any]], path: Path) -> bool:
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
    ax.set_xlabel("PPO step")
    ax.set_ylabel("reward (reward-model score)")
    ax.legend(loc="best")
    fig.savefig(path, dpi=DPI, facecolor="white")
    return True


def _plot_kl(metrics: list[dict[str, Any]], path: Path, target_kl: float | None) -> bool:
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
    ax.set_xlabel("PPO step")
    ax.set_ylabel("KL (nats per response)")
    if coef is not None:
        ax2 = ax.twinx()
        ax2.spines[["top"]].set_visible(False)
        lines += ax2.plot(x, coef, color="#2ca02c", ls="--", lw=2, label="KL coefficient (right axis)")
        ax2.set_ylabel("KL coefficient β")
    ax.set_title(PLOT_TITLES["training_kl"])
    ax.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=9)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return True


def _plot_returns(metrics: list[dict[str, Any]], path: Path) -> bool:
    ret = _series(metrics, "ppo/returns/mean")
    adv = _series(metrics, "ppo/policy/advantages_mean")
    if ret is None and adv is None:
        return False
    x = _steps(metrics)
    m = _marker(len(x))
    fig, (a1, a2) = _new_fig(ncols=2)
    if ret is not None:
        a1.plot(x, ret, color=AFTER_COLOR, marker=m, lw=2)
        a1.set_title("Returns (batch mean)", fontsize=10)
        a1.set_xlabel("PPO step")
        a1.set_ylabel("return")
    else:
        _no_data(a1, "ppo/returns/mean")
    if adv is not None:
        a2.plot(x, adv, color="#8c564b", marker=m, lw=2)
        a2.axhline(0.0, color="0.3", lw=0.8)
        a2.set_title("Advantages (mean; ≈0 if whitened)", fontsize=10)
        a2.set_xlabel("PPO step")
        a2.set_ylabel("advantage")
    else:
        _no_data(a2, "ppo/policy/advantages_mean")
    fig.suptitle(PLOT_TITLES["training_returns_advantages"])
    fig.savefig(path, dpi=DPI, facecolor="white")
    return True


def _plot_losses(metrics: list[dict[str, Any]], path: Path) -> bool:
    vl = _series(metrics, "ppo/loss/value")
    pl = _series(metrics, "ppo/loss/policy")
    pc = _series(metrics, "ppo/policy/clipfrac")
    vc = _series(metrics, "ppo/val/clipfrac")
    if all(s is None for s in (vl, pl, pc, vc)):
        return False
    x = _steps(metrics)
    m = _marker(len(x))
    fig, (a1, a2, a3) = _new_fig(ncols=3, width=11.0, height=3.8)
    if vl is not None:
        a1.plot(x, vl, color="#17becf", marker=m, lw=2)
        a1.set_title("Value loss")
        a1.set_ylabel("loss")
    else:
        _no_data(a1, "ppo/loss/value")
    if pl is not None:
        a2.plot(x, pl, color="#d62728", marker=m, lw=2)
        a2.axhline(0.0, color="0.3", lw=0.8)
        a2.set_title("Policy loss")
        a2.set_ylabel("loss")
    else:
        _no_data(a2, "ppo/loss/policy")
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
        ax.set_xlabel("PPO step")
    fig.suptitle(PLOT_TITLES["training_losses"])
    fig.savefig(path, dpi=DPI, facecolor="white")
    return True


def _plot_time(metrics: list[dict[str, Any]], path: Path) -> bool:
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
    ax.set_xlabel("PPO step")
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


# --------------------------------------------------------------------------------------------
# Content: the numbers each section shows, shared by the HTML and Markdown writers
# --------------------------------------------------------------------------------------------


def _short_model(name: Any) -> str:
    """A model name for a table; a list of judges shows the first (the one of ``judge_toxicity``)."""
    if isinstance(name, (list, tuple)):
        if not name:
            return "–"
        return str(name[0]) + (f" (+{len(name) - 1} more judges)" if len(name) > 1 else "")
    return "–" if name in (None, "") else str(name)


def _config_rows(cfg: dict[str, Any] | None, evaluated_prompts: int | None = None) -> list[tuple[str, str]]:
    if cfg is None:
        return []

    def g(k: str) -> Any:
        return _get(cfg, k)

    def join(*parts: tuple[str, Any]) -> str:
        return ", ".join(f"{label} {_cfg(v)}".strip() for label, v in parts if v not in (None, ""))

    targets = g("policy.lora_target_modules")
    lora = join(
        ("r", g("policy.lora_r")),
        ("alpha", g("policy.lora_alpha")),
        ("dropout", g("policy.lora_dropout")),
        ("targets", ",".join(map(str, targets)) if isinstance(targets, list) else (targets or "default")),
    )
    policy = _short_model(g("policy.model"))
    extras = [str(v) for v in (g("policy.architecture"), g("policy.dtype")) if v]
    if extras:
        policy += f" ({', '.join(extras)})"
    if g("policy.adapter"):
        policy += f"; starting adapter {g('policy.adapter')}"
    transform = g("reward.transform") or "logit"
    ceiling = f" (ceiling {_cfg(g('reward.logit_ceiling'))})" if transform == "clipped_logit" else ""
    reward = f"{_short_model(g('reward.model'))}; reward = {transform}{ceiling} of label '{g('reward.label')}'"
    if g("reward.faithfulness_weight"):
        reward += f" + {_cfg(g('reward.faithfulness_weight'))} × faithfulness"
    if g("reward.toxic_label"):
        reward += f"; toxicity = P('{g('reward.toxic_label')}')"
    if g("reward.input"):
        reward += f"; scores the {g('reward.input')}"
    judge = g("evaluation.judge_model")
    judge_s = _short_model(judge) if judge else "none configured"
    if judge and g("evaluation.judge_toxic_label"):
        judge_s += f"; toxicity = P('{g('evaluation.judge_toxic_label')}')"
    data = join(
        ("", g("data.source")),
        ("split", g("data.split")),
        ("chars in", f"({g('data.min_chars')}, {g('data.max_chars')}]" if g("data.max_chars") is not None else None),
        ("test fraction", g("data.test_fraction")),
        ("max rows", g("data.max_rows")),
        ("challenging prompts: dialogue toxicity ≥", g("data.min_dialogue_toxicity")),
        ("scored by", g("data.selection_scorer") if g("data.min_dialogue_toxicity") is not None else None),
    )
    gen = join(
        ("do_sample", g("generation.do_sample")),
        ("temperature", g("generation.temperature")),
        ("top_k", g("generation.top_k")),
        ("top_p", g("generation.top_p")),
        ("max_new_tokens", g("generation.max_new_tokens")),
        ("min_new_tokens", g("generation.min_new_tokens")),
    )
    batch = join(
        ("batch", g("ppo.batch_size")),
        ("minibatch", g("ppo.mini_batch_size")),
        ("PPO epochs", g("ppo.ppo_epochs")),
    )
    kl = join(
        ("init β", g("ppo.init_kl_coef")),
        ("adaptive", g("ppo.adaptive_kl")),
        ("target", g("ppo.target_kl") if g("ppo.adaptive_kl") else None),
        ("horizon", g("ppo.kl_horizon") if g("ppo.adaptive_kl") else None),
    )
    ev = join(
        ("split", g("evaluation.split")),
        # what was evaluated (detoxrl evaluate --num-samples overrides the run's configuration)
        ("prompts", evaluated_prompts if evaluated_prompts else g("evaluation.num_samples")),
        ("do_sample", g("evaluation.do_sample")),
        ("max_new_tokens", g("evaluation.max_new_tokens")),
    )
    rows = [
        ("preset", g("preset")),
        ("policy", policy),
        ("LoRA", lora),
        ("reward model", reward),
        ("judge", judge_s),
        ("data", data),
        ("generation (training)", gen),
        ("steps", g("ppo.steps")),
        ("batch", batch),
        ("learning rate", g("ppo.learning_rate")),
        ("KL penalty", kl),
        ("clip ratio / value clip", f"{_cfg(g('ppo.clip_ratio'))} / {_cfg(g('ppo.clip_value'))}"
         if g("ppo.clip_ratio") is not None else None),
        ("evaluation", ev),
        ("seed", g("run.seed")),
    ]
    return [(k, _cfg(v)) for k, v in rows]


def _training_summary(metrics: list[dict[str, Any]]) -> tuple[list[list[str]], list[str]]:
    """Rows (metric, first, last, min, max) and notes a reviewer should see."""
    rows: list[list[str]] = []
    notes: list[str] = []
    for key, label in SUMMARY_METRICS:
        s = _series(metrics, key)
        if s is None:
            continue
        fin = s[np.isfinite(s)]
        rows.append([label, _fmt(fin[0]), _fmt(fin[-1]), _fmt(fin.min()), _fmt(fin.max())])
        if fin.size < s.size:
            notes.append(f"{label}: {s.size - fin.size} step(s) not logged or not finite")
    skipped = _series(metrics, "ppo/skipped_minibatches")
    if skipped is not None:
        total = int(np.nansum(skipped))
        rows.append(["skipped minibatches (total)", "", _fmt(total), "", ""])
        if total > 0:
            notes.append(
                f"{total} minibatch(es) were skipped by the guard (non-finite loss or runaway ratio); "
                "see ppo/skipped_minibatches per step"
            )
    step_t = _series(metrics, "time/step_s")
    if step_t is not None:
        rows.append(["training time (total s)", "", _fmt(float(np.nansum(step_t))), "", ""])
    for key, label in (("objective/kl", "KL k1"), ("objective/kl_k3", "KL k3")):
        s = _series(metrics, key)
        # k3 is >= 0 for every token, so any negative mean is a bug; k1 is a one-sample estimate
        # that small batches push a little below 0 by chance while the policy is near the reference.
        floor = -1e-3 if key == "objective/kl_k3" else -0.1
        if s is not None and np.nanmin(s) < floor:
            neg = [int(x) for x, v in zip(_steps(metrics), s) if v < floor]
            notes.append(
                f"{label} is negative at step(s) {', '.join(map(str, neg[:10]))}"
                + ("…" if len(neg) > 10 else "")
                + ": the estimate is off (forced minimum length? sampling settings differ from the log-prob pass?)"
            )
    return rows, notes


@dataclass
class ToxSide:
    """One scorer's before/after numbers (reward model or judge)."""

    name: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reduction: dict[str, Any] | None = None  # {"reduction", "low", "high", "n"}, fractions
    improvement_pct: dict[str, Any] | None = None  # the notebook's percentage improvement, in percent
    extra: list[tuple[str, Any, Any]] = field(default_factory=list)  # (label, before, after)
    is_judge: bool = False
    extra_changes: list[tuple[str, dict]] = field(default_factory=list)  # (label, reduction with CI) of the extra measures


TOX_ROWS = (
    ("mean", "mean"),
    ("std", "std"),
    ("median", "median"),
    ("p95", "95th percentile"),
    ("ratio", "fraction ≥ 0.5"),
    ("max", "max"),
    ("n", "n"),
)


def _tox_sides(data: RunData, compare: dict | None = None) -> list[ToxSide]:
    """Reward model first, then each judge; from compare.json (``compare``: one pass of it, default
    the first), else plain summaries of the records."""
    compare = data.compare if compare is None else compare
    names = [
        ("toxicity", f"reward model ({_short_model(_get(data.config, 'reward.model'))})", False),
        ("judge_toxicity", f"judge ({_short_model(_get(data.config, 'evaluation.judge_model'))})", True),
    ]
    judges = compare.get("judges") if isinstance(compare, dict) else None
    if isinstance(judges, dict) and judges:  # every judge under its own name (the first is judge_toxicity)
        names = names[:1] + [(("judges", spec), f"judge ({spec})", True) for spec in judges]
    sides: list[ToxSide] = []
    if compare is not None:
        for key, name, is_judge in names:
            block = compare.get(key) if isinstance(key, str) else (compare.get(key[0]) or {}).get(key[1])
            if not isinstance(block, dict):
                continue

            def sub(k: str, blk: dict = block) -> dict | None:
                return blk.get(k) if isinstance(blk.get(k), dict) else None

            imp = sub("percentage_improvement")  # detoxrl.compare: percent
            if imp is None and sub("improvement") is not None:  # fractions
                imp = {k: float(v) * 100 if _finite(v) else None for k, v in sub("improvement").items()}
            k = block.get("samples_per_prompt")
            k_s = f"{k} samples" if _is_num(k) else "the samples"
            extra = []
            extra_changes = []
            for ek, label, short in (("expected_max", f"expected max over {k_s} of a prompt", "expected max"),
                                     ("prob_any_toxic", f"P(any of {k_s} of a prompt ≥ 0.5)", "toxicity probability")):
                if sub(ek) is not None:
                    extra.append((label, sub(ek).get("before"), sub(ek).get("after")))
                    if isinstance(sub(ek).get("reduction"), dict):
                        extra_changes.append((f"relative change of the {short}", sub(ek)["reduction"]))
            sides.append(ToxSide(name, sub("before"), sub("after"), sub("reduction"), imp, extra, is_judge, extra_changes))
        return sides
    for key, name, is_judge in names:
        b = simple_summary(_values(data.before, key))
        a = simple_summary(_values(data.after, key))
        if b is not None or a is not None:
            sides.append(ToxSide(name, b, a, is_judge=is_judge))
    return sides


def _ci_label(data: RunData) -> str:
    ci = _get(data.compare, "bootstrap.ci")
    return f"{float(ci):.0%}" if _finite(ci) and 0 < float(ci) < 1 else "95%"


def _change_text(side: ToxSide, r: dict | None = None) -> str:
    """Relative change of the mean (or of ``r``), after vs before (-23.1% = 23.1% lower after), with its interval."""
    r = side.reduction if r is None else r
    if not r or not _finite(r.get("reduction")):
        return "–" if not r else "undefined (mean before is 0)"
    s = _pct(-float(r["reduction"]), signed=True)
    if _finite(r.get("low")) and _finite(r.get("high")):
        s += f" [{_pct(-float(r['high']), True)}, {_pct(-float(r['low']), True)}]"
    return s


def _change_tone(side: ToxSide, r: dict | None = None) -> str:
    r = (side.reduction if r is None else r) or {}
    if _finite(r.get("low")) and float(r["low"]) > 0:
        return "better"
    if _finite(r.get("high")) and float(r["high"]) < 0:
        return "worse"
    return ""


@dataclass
class TableRow:
    """A row of the toxicity table: per side (before, after, change, css class of change), or one
    text per side spanning the three columns."""

    label: str
    cells: list[tuple[str, str, str, str]] | None = None
    span: list[tuple[str, str]] | None = None
    strong: bool = False


def _tox_rows(sides: list[ToxSide], ci: str) -> list[TableRow]:
    rows: list[TableRow] = []
    for key, label in TOX_ROWS:
        cells = []
        for s in sides:
            b, a = (s.before or {}).get(key), (s.after or {}).get(key)
            if key == "n":
                cells.append((_fmt(b), _fmt(a), "", ""))
            else:
                change = _tox(float(a) - float(b), signed=True) if _finite(a) and _finite(b) else "–"
                cells.append((_tox(b), _tox(a), change, _diff_class(b, a, lower_is_better=True)))
        rows.append(TableRow(label, cells=cells))
    labels = list(dict.fromkeys(label for s in sides for label, _, _ in s.extra))
    for label in labels:
        cells = []
        for s in sides:
            b, a = next(((b, a) for lab, b, a in s.extra if lab == label), (None, None))
            change = _tox(float(a) - float(b), signed=True) if _finite(a) and _finite(b) else "–"
            cells.append((_tox(b), _tox(a), change, _diff_class(b, a, lower_is_better=True)))
        rows.append(TableRow(label, cells=cells))
    if any(s.reduction for s in sides):
        rows.append(
            TableRow(
                f"relative change of the mean, after vs before [paired bootstrap {ci} CI]",
                span=[(_change_text(s), _change_tone(s)) for s in sides],
                strong=True,
            )
        )
    for label in dict.fromkeys(label for s in sides for label, _ in s.extra_changes):
        span = []
        for s in sides:
            r = next((r for lab, r in s.extra_changes if lab == label), None)
            span.append((_change_text(s, r), _change_tone(s, r)) if r else ("–", ""))
        rows.append(TableRow(f"{label}, after vs before [paired bootstrap {ci} CI]", span=span, strong=True))
    if any(s.improvement_pct for s in sides):
        span = []
        for s in sides:
            imp = s.improvement_pct or {}
            span.append((f"{_fmt(imp.get('mean'), fixed=2)}% / {_fmt(imp.get('std'), fixed=2)}%" if imp else "–", ""))
        rows.append(TableRow("the notebook's “percentage improvement” of mean / std (positive = lower after)", span=span))
    return rows


def _diff_row(label: str, block: Any, fixed: int = 4) -> list[str] | None:
    """measure, before, after, diff, CI of the diff, from ``{"before", "after", "diff", ...}`` where
    before/after are numbers or summaries and diff is a number (CI in low/high beside it) or a
    ``{"diff", "low", "high"}`` mapping."""
    if not isinstance(block, dict):
        return None
    b, a = _num(block.get("before")), _num(block.get("after"))
    if b is None and a is None:
        return None
    d, low, high = block.get("diff"), block.get("low"), block.get("high")
    if isinstance(d, dict):
        d, low, high = d.get("diff"), d.get("low"), d.get("high")
    d = float(d) if _finite(d) else (a - b if a is not None and b is not None else None)
    ci = f"[{_fmt(low, True, fixed)}, {_fmt(high, True, fixed)}]" if _finite(low) and _finite(high) else "–"
    return [label, _fmt(b, fixed=fixed), _fmt(a, fixed=fixed), _fmt(d, True, fixed), ci]


ROUGE_LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
FAITH_LABEL = "faithfulness (summary–dialogue similarity)"


def _quality_rows(data: RunData) -> list[list[str]]:
    """Rows: measure, before, after, diff, CI of the diff."""
    rows: list[list[str] | None] = []
    if data.compare is not None:
        rouge = data.compare.get("rouge")
        if isinstance(rouge, dict):
            order = list(ROUGE_LABELS)
            for k in sorted(rouge, key=lambda k: (order.index(k) if k in order else 99, k)):
                blk = rouge[k]
                label = ROUGE_LABELS.get(k, k)
                points = isinstance(blk, dict) and any(
                    (_num(blk.get(side)) or 0.0) > 1.0 for side in ("before", "after")
                )
                rows.append(_diff_row(label + (" (points, F×100)" if points else ""), blk, 2 if points else 4))
        rows.append(_diff_row(FAITH_LABEL, data.compare.get("faithfulness")))
        length = data.compare.get("length_tokens", data.compare.get("length"))
        rows.append(_diff_row("length (tokens)", length, fixed=2))
        return [r for r in rows if r]
    for key, label in (*ROUGE_LABELS.items(), ("faithfulness", FAITH_LABEL), ("length_tokens", "length (tokens)")):
        b, a = _values(data.before, key), _values(data.after, key)
        if b.size or a.size:
            means = {"before": float(b.mean()) if b.size else None, "after": float(a.mean()) if a.size else None}
            rows.append(_diff_row(label, means, fixed=2 if key == "length_tokens" else 4))
    return [r for r in rows if r]


def _reward_row(data: RunData) -> list[str] | None:
    if data.compare is not None:
        return _diff_row("reward-model score (higher = less toxic)", data.compare.get("reward"), fixed=3)
    b, a = _values(data.before, "reward"), _values(data.after, "reward")
    if not (b.size or a.size):
        return None
    means = {"before": float(b.mean()) if b.size else None, "after": float(a.mean()) if a.size else None}
    return _diff_row("reward-model score (higher = less toxic)", means, fixed=3)


def _pair_rows(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Comparison rows built from before/after records (when comparison.json was not written)."""

    def key(r: dict[str, Any]) -> Any:
        return (r.get("id") if r.get("id") is not None else r.get("index"), r.get("sample"))

    after_by = {key(r): r for r in after}
    rows = []
    for b in before:
        a = after_by.get(key(b))
        if a is None:
            continue
        rb, ra = _num(b.get("reward")), _num(a.get("reward"))
        rows.append(
            {
                "query": b.get("dialogue") or b.get("prompt") or "",
                "response_before": b.get("response", ""),
                "response_after": a.get("response", ""),
                "reward_before": rb,
                "reward_after": ra,
                "reward_diff": ra - rb if rb is not None and ra is not None else None,
                "toxicity_before": b.get("toxicity"),
                "toxicity_after": a.get("toxicity"),
                "judge_toxicity_before": b.get("judge_toxicity"),
                "judge_toxicity_after": a.get("judge_toxicity"),
            }
        )
    return rows


def select_examples(rows: list[dict[str, Any]], k: int = N_EXAMPLES) -> tuple[list[dict], list[dict]]:
    """The ``k`` most improved rows (largest reward_diff first) and the ``k`` most worsened
    (smallest first), without overlap. Rows without a finite reward_diff are left out."""
    ok = [r for r in rows if _finite(r.get("reward_diff"))]
    ok.sort(key=lambda r: float(r["reward_diff"]), reverse=True)
    n_top = min(k, (len(ok) + 1) // 2) if len(ok) < 2 * k else k
    top = ok[:n_top]
    rest = ok[n_top:]
    worst = list(reversed(rest[-k:])) if rest else []
    return top, worst


@dataclass
class Verdict:
    text: str
    tone: str  # good | bad | unclear | none
    keynums: list[str]


def _verdict(data: RunData, sides: list[ToxSide], quality: list[list[str]], ci: str) -> Verdict:
    keynums: list[str] = []
    for side in sorted(sides, key=lambda sd: not sd.is_judge):  # the independent judge first
        b, a = _num(side.before), _num(side.after)
        if b is not None or a is not None:
            line = f"{side.name}: mean toxicity {_tox(b)} → {_tox(a)}"
            if side.reduction:
                line += f", relative change {_change_text(side)} ({ci} CI)"
            keynums.append(line)
    for row in quality:
        if row[0].startswith(("ROUGE-L", "faithfulness", "length")) and not row[0].startswith("ROUGE-Lsum"):
            keynums.append(f"{row[0]}: {row[1]} → {row[2]} (diff {row[3]}{', CI ' + row[4] if row[4] != '–' else ''})")
    if data.compare is not None:
        n, prompts = data.compare.get("n"), data.compare.get("prompts")
        if n is not None:
            keynums.append(f"paired summaries: {_fmt(n)}" + (f" over {_fmt(prompts)} prompts" if prompts is not None else ""))
        text = data.compare.get("verdict")
        text = str(text) if text not in (None, "") else "compare.json has no verdict line"
        judged = [sd for sd in sides if sd.is_judge and sd.reduction] or [sd for sd in sides if sd.reduction]
        tone = {"better": "good", "worse": "bad"}.get(_change_tone(judged[0]), "unclear") if judged else "unclear"
        return Verdict(text, tone, keynums)
    if data.evaluated:
        return Verdict(
            "No verdict: the before/after comparison was not run (eval/compare.json is missing). "
            "The tables below are plain means without confidence intervals.",
            "none",
            keynums,
        )
    return Verdict(
        "No verdict: this run was not evaluated (no eval/before.jsonl or eval/after.jsonl).", "none", keynums
    )


@dataclass
class Content:
    run_name: str
    generated: str
    verdict: Verdict
    config_rows: list[tuple[str, str]]
    train_rows: list[list[str]]
    train_notes: list[str]
    plots: dict[str, Path]
    missing_plots: list[str]
    sides: list[ToxSide]
    tox_rows: list[TableRow]
    sampled_title: str
    sampled_sides: list[ToxSide]
    sampled_rows: list[TableRow]
    tox_note: str
    reward_row: list[str] | None
    quality: list[list[str]]
    top: list[dict[str, Any]]
    worst: list[dict[str, Any]]
    examples_source: str
    template: tuple[str, str]  # prompt template head/tail, left out of the query previews
    notes: list[str]
    has_metrics: bool
    evaluated: bool
    steps_planned: Any
    steps_logged: int


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

CSS = """
*{box-sizing:border-box}
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;margin:0;color:#1d2430;
background:#f4f6f9;line-height:1.45;font-size:15px}
header{background:#1d2430;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:24px}
header .sub{margin:4px 0 0;color:#c5cbd6;font-size:13px}
nav{margin-top:10px}
nav a{color:#9cc7ff;margin-right:16px;text-decoration:none;font-size:14px}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 22px;margin:18px 0}
h2{margin:0 0 10px;font-size:20px}
h3{font-size:16px;margin:16px 0 8px}
#verdict{border-left:8px solid #8a94a6}
#verdict.good{border-left-color:#2e9e44;background:#f1faf3}
#verdict.bad{border-left-color:#d03b3b;background:#fdf2f2}
#verdict.unclear{border-left-color:#e0a21c;background:#fffaf0}
#verdict .verdict-line{font-size:19px;font-weight:600;margin:4px 0 10px}
ul.keynums{margin:6px 0;padding-left:20px}
ul.notes li,p.note{color:#8a4b00}
table{border-collapse:collapse;width:100%;margin:8px 0;font-size:14px}
th,td{border-bottom:1px solid #e3e7ee;padding:6px 8px;text-align:left;vertical-align:top}
thead th{background:#eef1f6;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even) td{background:#fafbfd}
table.config td:first-child{font-weight:600;white-space:nowrap;width:190px}
tr.group th{background:#dfe6f1;font-size:14px}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(540px,1fr));gap:14px}
figure{margin:0}
figure img{width:100%;height:auto;border:1px solid #e3e7ee;border-radius:4px;display:block}
figure.wide{grid-column:1/-1}
figcaption{font-size:13px;color:#555;margin-top:4px}
.text{white-space:pre-wrap;word-break:break-word;max-width:360px}
details summary{cursor:pointer;color:#2b5fab}
.better{color:#1d7a31;font-weight:600}
.worse{color:#b32626;font-weight:600}
.muted{color:#777}
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _img_tag(path: Path, alt: str) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" alt="{_e(alt)}">'


def _html_table(header: list[str], rows: list[list[str]], num_from: int = 1, cls: str = "") -> str:
    out = [f'<table class="{cls}">' if cls else "<table>", "<thead><tr>"]
    out += [f'<th class="{"num" if i >= num_from else ""}">{_e(h)}</th>' for i, h in enumerate(header)]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="{"num" if i >= num_from else ""}">{_e(c)}</td>' for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _diff_class(before: Any, after: Any, lower_is_better: bool) -> str:
    b, a = _num(before), _num(after)
    if b is None or a is None or a == b:
        return ""
    better = (a < b) if lower_is_better else (a > b)
    return "better" if better else "worse"


def _html_tox_table(sides: list[ToxSide], rows: list[TableRow]) -> str:
    head = ['<table class="tox"><thead><tr><th rowspan="2">measure</th>']
    head += [f'<th colspan="3">{_e(s.name)}</th>' for s in sides]
    head.append("</tr><tr>")
    head += ['<th class="num">before</th><th class="num">after</th><th class="num">change</th>' for _ in sides]
    head.append("</tr></thead><tbody>")
    body = []
    for row in rows:
        label = f"<b>{_e(row.label)}</b>" if row.strong else _e(row.label)
        cells = [f"<td>{label}</td>"]
        for b, a, ch, cls in row.cells or []:
            cells.append(f'<td class="num">{_e(b)}</td><td class="num">{_e(a)}</td><td class="num {cls}">{_e(ch)}</td>')
        for text, cls in row.span or []:
            cells.append(f'<td class="num {cls}" colspan="3">{_e(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(head) + "".join(body) + "</tbody></table>"


def _preview(text: Any, n: int = QUERY_PREVIEW_CHARS) -> str:
    s = "" if text is None else " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 1].rstrip() + "…"


def _squash(text: Any) -> str:
    return " ".join(str(text or "").split())


def _template_parts(cfg: dict[str, Any] | None) -> tuple[str, str]:
    """Head and tail of the prompt template around {dialogue} (whitespace squashed)."""
    template = _get(cfg, "data.template")
    if not isinstance(template, str) or "{dialogue}" not in template:
        return "", ""
    head, tail = template.split("{dialogue}", 1)
    return _squash(head), _squash(tail)


def _query_preview(r: dict[str, Any], template: tuple[str, str]) -> str:
    """The query without the prompt template around the dialogue, shortened."""
    q = _squash(r.get("query"))
    head, tail = template
    if head and q.startswith(head):
        q = q[len(head):].lstrip()
    if tail and q.endswith(tail):
        q = q[: -len(tail)].rstrip()
    return _preview(q)


def _html_example_rows(rows: list[dict[str, Any]], title: str, template: tuple[str, str]) -> str:
    out = [f'<tbody><tr class="group"><th colspan="6">{_e(title)}</th></tr>']
    if not rows:
        out.append('<tr><td colspan="6" class="muted">none</td></tr>')
    for r in rows:
        q = "" if r.get("query") is None else str(r.get("query"))
        qcell = f'<details><summary>{_e(_query_preview(r, template))}</summary><div class="text">{_e(q)}</div></details>'
        rew = (
            f'{_e(_fmt(r.get("reward_before"), fixed=3))} → {_e(_fmt(r.get("reward_after"), fixed=3))}'
            f'<br><span class="{_diff_class(r.get("reward_before"), r.get("reward_after"), False)}">'
            f'Δ {_e(_fmt(r.get("reward_diff"), True, 3))}</span>'
        )
        tox = (
            f'<span class="{_diff_class(r.get("toxicity_before"), r.get("toxicity_after"), True)}">'
            f'{_e(_tox(r.get("toxicity_before")))} → {_e(_tox(r.get("toxicity_after")))}</span>'
        )
        judge = (
            f'<span class="{_diff_class(r.get("judge_toxicity_before"), r.get("judge_toxicity_after"), True)}">'
            f'{_e(_tox(r.get("judge_toxicity_before")))} → {_e(_tox(r.get("judge_toxicity_after")))}</span>'
        )
        out.append(
            '<tr class="example">'
            f"<td>{qcell}</td>"
            f'<td><div class="text">{_e(r.get("response_before"))}</div></td>'
            f'<td><div class="text">{_e(r.get("response_after"))}</div></td>'
            f'<td class="num">{rew}</td><td class="num">{tox}</td><td class="num">{judge}</td>'
            "</tr>"
        )
    out.append("</tbody>")
    return "".join(out)


def _render_html(c: Content) -> str:
    p: list[str] = []
    p.append(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>detoxrl report: {_e(c.run_name)}</title><style>{CSS}</style></head><body>"
    )
    p.append(
        f"<header><h1>detoxrl report: {_e(c.run_name)}</h1>"
        f'<p class="sub">generated {_e(c.generated)}</p><nav>'
        + "".join(
            f'<a href="#{s}">{s}</a>' for s in ("verdict", "config", "training", "toxicity", "quality", "examples")
        )
        + "</nav></header><main>"
    )
    # Verdict
    v = c.verdict
    p.append(f'<section id="verdict" class="{v.tone}"><h2>Verdict</h2><p class="verdict-line">{_e(v.text)}</p>')
    if v.keynums:
        p.append('<ul class="keynums">' + "".join(f"<li>{_e(k)}</li>" for k in v.keynums) + "</ul>")
    if v.tone != "none":
        p.append(
            '<p class="muted">Box colour: green when the CI of the change of mean toxicity lies below 0, red when '
            "above 0, amber when it contains 0 (the judge's CI where there is a judge, else the reward model's).</p>"
        )
    if c.notes:
        p.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in c.notes) + "</ul>")
    p.append("</section>")
    # Config
    p.append('<section id="config"><h2>Configuration</h2>')
    if c.config_rows:
        p.append('<table class="config"><tbody>')
        p += [f"<tr><td>{_e(k)}</td><td>{_e(val)}</td></tr>" for k, val in c.config_rows]
        p.append("</tbody></table>")
    else:
        p.append('<p class="note">config.yaml not found: the settings of this run are unknown.</p>')
    p.append("</section>")
    # Training
    p.append('<section id="training"><h2>Training</h2>')
    if c.has_metrics:
        p.append(
            f"<p>{c.steps_logged} PPO step(s) logged"
            + (f" of {_e(_fmt(c.steps_planned))} planned" if c.steps_planned is not None else "")
            + ".</p>"
        )
        if c.train_notes:
            p.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in c.train_notes) + "</ul>")
        p.append('<div class="plots">')
        for name in TRAINING_PLOTS:
            if name in c.plots:
                wide = ' class="wide"' if name in ("training_losses",) else ""
                p.append(
                    f"<figure{wide}>{_img_tag(c.plots[name], PLOT_TITLES[name])}"
                    f"<figcaption>{_e(PLOT_TITLES[name])}</figcaption></figure>"
                )
        p.append("</div>")
        if c.missing_plots:
            p.append(f'<p class="note">Not logged, so not plotted: {_e(", ".join(c.missing_plots))}.</p>')
        if c.train_rows:
            p.append("<h3>Training summary</h3>")
            p.append(_html_table(["metric", "first", "last", "min", "max"], c.train_rows))
    else:
        p.append('<p class="note">No metrics.jsonl in this run folder: no training curves.</p>')
    p.append("</section>")
    # Toxicity
    p.append('<section id="toxicity"><h2>Toxicity before vs after</h2>')
    if c.sides:
        p.append("<h3>Greedy summaries</h3>" if c.sampled_sides else "")
        p.append(_html_tox_table(c.sides, c.tox_rows))
        if c.sampled_sides:
            p.append(f"<h3>{_e(c.sampled_title)}</h3>")
            p.append(_html_tox_table(c.sampled_sides, c.sampled_rows))
        if c.tox_note:
            p.append(f'<p class="muted">{_e(c.tox_note)}</p>')
        if c.reward_row:
            p.append(_html_table(QUALITY_HEADER, [c.reward_row]))
        if TOXICITY_PLOT in c.plots:
            p.append(
                f'<figure>{_img_tag(c.plots[TOXICITY_PLOT], PLOT_TITLES[TOXICITY_PLOT])}'
                f"<figcaption>{_e(PLOT_TITLES[TOXICITY_PLOT])}</figcaption></figure>"
            )
    else:
        p.append('<p class="note">Not evaluated: no toxicity numbers.</p>')
    p.append("</section>")
    # Quality
    p.append('<section id="quality"><h2>Summary quality</h2>')
    if c.quality:
        p.append(_html_table(QUALITY_HEADER, c.quality))
    else:
        p.append('<p class="note">No quality measures (no ROUGE, faithfulness or length in the evaluation).</p>')
    p.append("</section>")
    # Examples
    p.append('<section id="examples"><h2>Examples</h2>')
    if c.top or c.worst:
        p.append(f'<p class="muted">{_e(c.examples_source)} Click a query for the full prompt.</p>')
        p.append(
            '<table class="examples"><thead><tr><th>query</th><th>response before</th><th>response after</th>'
            '<th class="num">reward</th><th class="num">toxicity (reward model)</th>'
            '<th class="num">toxicity (judge)</th></tr></thead>'
        )
        p.append(_html_example_rows(c.top, f"{len(c.top)} most improved (largest reward gain)", c.template))
        p.append(_html_example_rows(c.worst, f"{len(c.worst)} most worsened (largest reward loss)", c.template))
        p.append("</table>")
    else:
        p.append('<p class="note">No paired before/after summaries to show.</p>')
    p.append("</section></main></body></html>\n")
    return "".join(p)


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _md(x: Any) -> str:
    """Escape for a Markdown table cell: HTML-escaped (renderers pass raw HTML), no pipes/newlines."""
    s = html.escape("" if x is None else str(x), quote=False)
    s = s.replace("|", "\\|").replace("\r", "")
    return "<br>".join(part for part in s.split("\n"))


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _render_md(c: Content) -> str:
    out: list[str] = [f"# detoxrl report: {_md(c.run_name)}", "", f"_generated {_md(c.generated)}_", ""]
    out += ["## Verdict", ""] + _md_verdict(c)
    out += ["", "## Configuration", ""] + _md_config(c)
    out += ["", "## Training", ""] + _md_training(c)
    out += ["", "## Toxicity before vs after", ""] + _md_toxicity(c)
    out += ["", "## Summary quality", ""] + _md_quality(c)
    out += ["", "## Examples", ""] + _md_examples(c)
    return "\n".join(out).rstrip() + "\n"


def _md_verdict(c: Content) -> list[str]:
    out = [f"**{_md(c.verdict.text)}**", ""]
    out += [f"- {_md(k)}" for k in c.verdict.keynums]
    out += [f"- ⚠ {_md(n)}" for n in c.notes]
    return out


def _md_config(c: Content) -> list[str]:
    if c.config_rows:
        return [_md_table(["setting", "value"], [list(r) for r in c.config_rows])]
    return ["config.yaml not found: the settings of this run are unknown."]


def _md_training(c: Content) -> list[str]:
    out: list[str] = []
    if c.has_metrics:
        planned = f" of {_fmt(c.steps_planned)} planned" if c.steps_planned is not None else ""
        out += [f"{c.steps_logged} PPO step(s) logged{planned}.", ""]
        out += [f"- ⚠ {_md(n)}" for n in c.train_notes]
        if c.train_notes:
            out.append("")
        for name in TRAINING_PLOTS:
            if name in c.plots:
                out += [f"![{PLOT_TITLES[name]}]({c.plots[name].name})", ""]
        if c.missing_plots:
            out += [f"Not logged, so not plotted: {_md(', '.join(c.missing_plots))}.", ""]
        if c.train_rows:
            out += ["### Training summary", "", _md_table(["metric", "first", "last", "min", "max"], c.train_rows)]
    else:
        out.append("No metrics.jsonl in this run folder: no training curves.")
    return out


def _md_toxicity(c: Content) -> list[str]:
    out: list[str] = []
    if c.sides:
        tables = [("Greedy summaries" if c.sampled_sides else "", c.sides, c.tox_rows)]
        if c.sampled_sides:
            tables.append((c.sampled_title, c.sampled_sides, c.sampled_rows))
        for title, sides, tox_rows in tables:
            if title:
                out += [f"### {title}", ""]
            header = ["measure"]
            for s in sides:
                header += [f"{s.name} before", "after", "change"]
            rows = []
            for trow in tox_rows:
                row = [f"**{trow.label}**" if trow.strong else trow.label]
                for cell in trow.cells or []:
                    row += list(cell[:3])
                for text, _ in trow.span or []:
                    row += ["", "", text]
                rows.append(row)
            out.append(_md_table(header, rows))
            out.append("")
        if c.tox_note:
            out += ["", f"_{_md(c.tox_note)}_"]
        if c.reward_row:
            out += ["", _md_table(QUALITY_HEADER, [c.reward_row])]
        if TOXICITY_PLOT in c.plots:
            out += ["", f"![{PLOT_TITLES[TOXICITY_PLOT]}]({c.plots[TOXICITY_PLOT].name})"]
    else:
        out.append("Not evaluated: no toxicity numbers.")
    return out


def _md_quality(c: Content) -> list[str]:
    if c.quality:
        return [_md_table(QUALITY_HEADER, c.quality)]
    return ["No quality measures (no ROUGE, faithfulness or length in the evaluation)."]


def _md_examples(c: Content) -> list[str]:
    out: list[str] = []
    if c.top or c.worst:
        out += [f"_{_md(c.examples_source)}_", ""]
        for title, rows in (("Most improved (largest reward gain)", c.top), ("Most worsened (largest reward loss)", c.worst)):
            out += [f"### {title}", ""]
            table = []
            for r in rows:
                table.append(
                    [
                        _query_preview(r, c.template),
                        r.get("response_before"),
                        r.get("response_after"),
                        f"{_fmt(r.get('reward_before'), fixed=3)} → {_fmt(r.get('reward_after'), fixed=3)} "
                        f"(Δ {_fmt(r.get('reward_diff'), True, 3)})",
                        f"{_tox(r.get('toxicity_before'))} → {_tox(r.get('toxicity_after'))}",
                        f"{_tox(r.get('judge_toxicity_before'))} → {_tox(r.get('judge_toxicity_after'))}",
                    ]
                )
            hdr = ["query", "response before", "response after", "reward", "toxicity (reward model)", "toxicity (judge)"]
            out += [_md_table(hdr, table) if table else "none", ""]
    else:
        out.append("No paired before/after summaries to show.")
    return out


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Write ``RUN/report/`` and return the paths written.

    Keys: ``"html"``, ``"markdown"``, and one per plot written (``"training_reward"``,
    ``"training_kl"``, ``"training_returns_advantages"``, ``"training_losses"``,
    ``"training_time"``, ``"toxicity_distribution"``). A plot whose metrics were never logged is
    not written (and the report says so). Raises :class:`DetoxError` if ``run_dir`` is not a run folder.
    """
    data = load_run(run_dir)
    out_dir = runfiles.RunPaths(data.run_dir).report
    out_dir.mkdir(parents=True, exist_ok=True)
    plots, missing = _write_plots(data, out_dir)
    content = _content(data, plots, missing)
    html_path = out_dir / "report.html"
    md_path = out_dir / "report.md"
    html_path.write_text(_render_html(content), encoding="utf-8")
    md_path.write_text(_render_md(content), encoding="utf-8")
    return {"html": html_path, "markdown": md_path, **plots}


def markdown_sections(run_dir: str | Path) -> dict[str, str]:
    """Sections of ``report.md`` as Markdown, without plots, for other documents (the model card of
    :mod:`detoxrl.modelcard`): ``verdict``, ``configuration``, ``toxicity`` and ``quality`` (each without
    its heading; toxicity and quality are the tables with the intervals of ``eval/compare.json``).
    Raises :class:`DetoxError` if ``run_dir`` is not a run folder."""
    c = _content(load_run(run_dir), {}, [])
    return {"verdict": _md_lines(_md_verdict(c)), "configuration": _md_lines(_md_config(c)),
            "toxicity": _md_lines(_md_toxicity(c)), "quality": _md_lines(_md_quality(c))}


def _md_lines(lines: list[str]) -> str:
    return "\n".join(lines).strip() + "\n"


def _write_plots(data: RunData, out_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """The report's PNG plots into ``out_dir``: ``({name: path}, titles of the plots with nothing to plot)``."""
    plots: dict[str, Path] = {}
    missing: list[str] = []
    if data.metrics:
        target_kl = _get(data.config, "ppo.target_kl") if _get(data.config, "ppo.adaptive_kl") else None
        target_kl = float(target_kl) if _is_num(target_kl) else None
        makers = {
            "training_reward": lambda p: _plot_reward(data.metrics, p),
            "training_kl": lambda p: _plot_kl(data.metrics, p, target_kl),
            "training_returns_advantages": lambda p: _plot_returns(data.metrics, p),
            "training_losses": lambda p: _plot_losses(data.metrics, p),
            "training_time": lambda p: _plot_time(data.metrics, p),
        }
        for name, make in makers.items():
            path = out_dir / f"{name}.png"
            if make(path):
                plots[name] = path
            else:
                missing.append(PLOT_TITLES[name])
    if data.evaluated:
        reward_model = _short_model(_get(data.config, "reward.model"))
        judge_model = _short_model(_get(data.config, "evaluation.judge_model"))
        panels = [(f"reward model: {reward_model}", _values(data.before, "toxicity"), _values(data.after, "toxicity"))]
        jb, ja = _values(data.before, "judge_toxicity"), _values(data.after, "judge_toxicity")
        if jb.size or ja.size:
            panels.append((f"judge: {judge_model}", jb, ja))
        path = out_dir / f"{TOXICITY_PLOT}.png"
        if _plot_toxicity(panels, path):
            plots[TOXICITY_PLOT] = path
    # A plot left over from an earlier report of this run must not pass for a current one.
    for name in ALL_PLOTS:
        if name not in plots:
            (out_dir / f"{name}.png").unlink(missing_ok=True)
    return plots, missing


def _content(data: RunData, plots: dict[str, Path], missing: list[str]) -> Content:
    """Everything the HTML and Markdown pages show, from the run's files and the plots written."""
    notes = list(data.notes)
    sides = _tox_sides(data)
    sampled = data.compare.get("sampled") if isinstance(data.compare, dict) else None
    sampled_sides = _tox_sides(data, sampled) if isinstance(sampled, dict) else []
    sampled_title = (f"Sampled: {sampled.get('samples_per_prompt')} pure samples per prompt, {sampled.get('prompts')} prompts"
                     if sampled_sides else "")
    reward_model, judge_model = _get(data.config, "reward.model"), _get(data.config, "evaluation.judge_model")
    judge_list = judge_model if isinstance(judge_model, (list, tuple)) else [judge_model]
    if reward_model and any(str(reward_model) == str(j).split("#")[0] for j in judge_list if j):
        notes.append(
            "the judge is the reward model itself: it is not independent, so a reward hack would not show up in it"
        )
    if data.evaluated and data.compare is None:
        notes.append("eval/compare.json is missing: no confidence intervals (run detoxrl.compare on this run)")
    if data.before is not None and data.after is None:
        notes.append("eval/after.jsonl is missing: only the 'before' evaluation exists")
    if data.after is not None and data.before is None:
        notes.append("eval/before.jsonl is missing: only the 'after' evaluation exists")

    if data.comparison is not None:
        rows, source = data.comparison, "Rows from eval/comparison.json, ordered by reward_diff (after − before)."
    elif data.before and data.after:
        rows = _pair_rows(data.before, data.after)
        source = "Rows paired from eval/before.jsonl and eval/after.jsonl by id (comparison.json missing)."
    else:
        rows, source = [], ""
    top, worst = select_examples(rows)
    if source:
        source += " Higher reward = less toxic according to the reward model. Query previews show the dialogue"
        source += " without the prompt template."

    train_rows, train_notes = _training_summary(data.metrics) if data.metrics else ([], [])
    steps_planned = _get(data.config, "ppo.steps")
    if _is_num(steps_planned) and data.metrics and len(data.metrics) < int(steps_planned):
        train_notes.insert(0, f"only {len(data.metrics)} of {int(steps_planned)} planned steps were logged")

    quality = _quality_rows(data)
    ci = _ci_label(data)
    if data.compare is not None:
        boot = data.compare.get("bootstrap") if isinstance(data.compare.get("bootstrap"), dict) else {}
        tox_note = (
            "Change = after − before; the relative change and the CIs come from eval/compare.json"
            + (f" (bootstrap: {boot.get('n_boot')} resamples of {boot.get('resampled')})" if boot.get("n_boot") else "")
            + ". Toxicity is P(toxic) per summary; green = lower after, red = higher after."
        )
    else:
        tox_note = "Plain summaries of eval/before.jsonl and eval/after.jsonl: no confidence intervals."
    return Content(
        run_name=data.run_dir.resolve().name,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        verdict=_verdict(data, sides, quality, ci),
        config_rows=_config_rows(data.config, len({r.get("index") for r in (data.after or data.before or [])}) or None),
        train_rows=train_rows,
        train_notes=train_notes,
        plots=plots,
        missing_plots=missing,
        sides=sides,
        tox_rows=_tox_rows(sides, ci),
        sampled_title=sampled_title,
        sampled_sides=sampled_sides,
        sampled_rows=_tox_rows(sampled_sides, ci),
        tox_note=tox_note,
        reward_row=_reward_row(data),
        quality=quality,
        top=top,
        worst=worst,
        examples_source=source,
        template=_template_parts(data.config),
        notes=notes,
        has_metrics=bool(data.metrics),
        evaluated=data.evaluated,
        steps_planned=steps_planned,
        steps_logged=len(data.metrics),
    )


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m detoxrl.report", description="Write RUN/report/ for a run folder.")
    ap.add_argument("run_dir", help="the --output-dir of a train run")
    args = ap.parse_args(argv)
    try:
        paths = write_report(args.run_dir)
    except DetoxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(paths["html"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
