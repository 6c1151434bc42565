"""Run report: training curves, before/after toxicity, quality and examples on one page.

``write_report(run_dir)`` reads what the trainer and the evaluator left in a run folder::

    RUN/config.yaml            resolved config (optional)
    RUN/metrics.jsonl          one JSON object per PPO step
    RUN/eval/before.jsonl      one record per summary, before training   (optional)
    RUN/eval/after.jsonl       one record per summary, after training    (optional)
    RUN/eval/compare.json      the headline written by detoxrl.compare   (optional)
    RUN/eval/comparison.json   paired before/after rows, by reward_diff  (optional)

and writes ``RUN/report/``: six PNG plots (:mod:`detoxrl.report_plots`), ``report.html`` and ``report.md``
(:mod:`detoxrl.report_pages`: the same content, self-contained HTML and Markdown with plots by relative
path). Whatever is missing is said on the page, never silently dropped.

The report renders; it decides nothing. Every statistic and the verdict come from :mod:`detoxrl.compare`:
``compare.json`` as written, or, when it is missing, compare's summaries of each side without intervals
(the page then says that the comparison was not run).

Command line: ``python -m detoxrl.report RUN``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from detoxrl import compare, runfiles
from detoxrl.config import DetoxConfig
from detoxrl.errors import DataError, DetoxError
from detoxrl.report_pages import Content, TableRow, Verdict, cfg_value, diff_class, is_finite, fmt, is_num
from detoxrl.report_pages import as_num, fmt_pct, squash, fmt_tox, markdown_sections as _markdown_sections
from detoxrl.report_pages import render_html, render_markdown
from detoxrl.report_plots import ALL_PLOTS, PLOT_TITLES, TOXICITY_PLOT, TRAINING_PLOTS, write_plots

__all__ = ["ALL_PLOTS", "PLOT_TITLES", "TOXICITY_PLOT", "TRAINING_PLOTS", "load_run", "markdown_sections",
           "select_examples", "write_report"]

N_EXAMPLES = 5  # most improved and most worsened rows shown

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
    config: DetoxConfig | None = None
    metrics: runfiles.MetricsLog = field(default_factory=lambda: runfiles.MetricsLog([]))
    before: list[runfiles.EvalRecord] | None = None
    after: list[runfiles.EvalRecord] | None = None
    # eval/compare.json; when it is missing, compare's summaries of each side, without intervals
    compare: runfiles.Headline | None = None
    compare_written: bool = False  # whether ``compare`` is eval/compare.json
    comparison: list[runfiles.ComparisonRow] | None = None
    checkpoint_compares: dict[int, runfiles.Headline] = field(default_factory=dict)  # eval-checkpoints/step-N
    notes: list[str] = field(default_factory=list)

    @property
    def evaluated(self) -> bool:
        return bool(self.before) or bool(self.after)


def _note_skipped(loaded: runfiles.JsonObjects, path: Path, notes: list[str]) -> Any:
    """``loaded``, after noting the lines of ``path`` it left out (a run killed mid-write)."""
    if loaded.bad_lines:
        notes.append(f"{path.name}: {len(loaded.bad_lines)} unreadable line(s) skipped")
    return loaded


def _read_json(load: Callable[[Path], Any], path: Path, notes: list[str]) -> Any:
    try:
        return load(path)
    except (OSError, json.JSONDecodeError) as exc:
        notes.append(f"{path.name} could not be read ({type(exc).__name__}: {exc}); it is left out")
        return None


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder; raise :class:`DetoxError` if it is not one."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DetoxError(f"'{run_dir}' does not exist or is not a folder; pass the --output-dir of a train run")
    paths = runfiles.RunPaths(run)
    if not paths.metrics.is_file() and not paths.final.exists():
        raise DetoxError(
            f"'{run_dir}' is not a detoxrl run folder (no metrics.jsonl); pass the --output-dir of a train run"
        )
    data = RunData(run_dir=run)
    if paths.config.is_file():
        try:
            loaded = runfiles.load_config(paths.config)
        except (OSError, yaml.YAMLError) as exc:
            data.notes.append(f"config.yaml could not be read ({type(exc).__name__}); settings are not shown")
        else:
            if loaded is None:
                data.notes.append("config.yaml is not a mapping; settings are not shown")
            else:
                data.config, problems = loaded
                data.notes += [f"config.yaml: {problem}; left out of the settings" for problem in problems]
    if paths.metrics.is_file():
        data.metrics = _note_skipped(runfiles.load_metrics(paths.metrics), paths.metrics, data.notes)
    for name in ("before", "after"):
        path = paths.eval_records(name)
        if path.is_file():
            setattr(data, name, _note_skipped(runfiles.load_eval_records(path), path, data.notes).rows)
    if paths.compare.is_file():
        data.compare = _read_json(runfiles.load_compare, paths.compare, data.notes)
        data.compare_written = data.compare is not None
    data.checkpoint_compares = runfiles.load_checkpoint_compares(run_dir)
    if paths.comparison.is_file():
        data.comparison = _read_json(runfiles.load_comparison_table, paths.comparison, data.notes)
    if data.compare is None and data.evaluated:
        data.compare = compare.summaries_without_intervals(data.before or [], data.after or [])  # type: ignore
    return data


# --------------------------------------------------------------------------------------------
# Content: the numbers each section shows, decided here and laid out by detoxrl.report_pages
# --------------------------------------------------------------------------------------------


def _values(records: list[runfiles.EvalRecord] | None, key: str) -> list[float]:
    return [float(r[key]) for r in records or [] if is_finite(r.get(key))]  # type: ignore[literal-required]


def _short_model(name: Any) -> str:
    """A model name for a table; a list of judges shows the first (the one of ``judge_toxicity``)."""
    if isinstance(name, (list, tuple)):
        if not name:
            return "–"
        return str(name[0]) + (f" (+{len(name) - 1} more judges)" if len(name) > 1 else "")
    return "–" if name in (None, "") else str(name)



def _config_rows(cfg: DetoxConfig | None, evaluated_prompts: int | None = None, kind: str = "ppo",
                 evaluated: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """The configuration table; ``evaluated``: what the evaluation that ran used (its judges, summary
    length, samples per prompt, from its own files), which wins over the config's evaluation settings."""
    if cfg is None:
        return []
    evaluated = evaluated or {}

    def join(*parts: tuple[str, Any]) -> str:
        return ", ".join(f"{label} {cfg_value(v)}".strip() for label, v in parts if v not in (None, ""))

    data, policy_cfg, reward_cfg, gen_cfg, ppo, ev_cfg = (cfg.data, cfg.policy, cfg.reward, cfg.generation,
                                                          cfg.ppo, cfg.evaluation)
    targets = policy_cfg.lora_target_modules
    lora = join(
        ("r", policy_cfg.lora_r),
        ("alpha", policy_cfg.lora_alpha),
        ("dropout", policy_cfg.lora_dropout),
        ("targets", ",".join(map(str, targets)) if isinstance(targets, list) else (targets or "default")),
    )
    policy = _short_model(policy_cfg.model)
    extras = [str(v) for v in (policy_cfg.architecture, policy_cfg.dtype) if v]
    if extras:
        policy += f" ({', '.join(extras)})"
    if policy_cfg.adapter:
        policy += f"; starting adapter {policy_cfg.adapter}"
    transform = reward_cfg.transform or "logit"
    ceiling = f" (ceiling {cfg_value(reward_cfg.logit_ceiling)})" if transform == "clipped_logit" else ""
    reward = f"{_short_model(reward_cfg.model)}; reward = {transform}{ceiling} of label '{reward_cfg.label}'"
    if reward_cfg.faithfulness_weight:
        reward += f" + {cfg_value(reward_cfg.faithfulness_weight)} × faithfulness"
    if reward_cfg.toxic_label:
        reward += f"; toxicity = P('{reward_cfg.toxic_label}')"
    if reward_cfg.input:
        reward += f"; scores the {reward_cfg.input}"
    judge = evaluated.get("judges") or ev_cfg.judge_model
    judge_s = _short_model(judge) if judge else "none configured"
    if judge and ev_cfg.judge_toxic_label and not evaluated.get("judges"):
        judge_s += f"; toxicity = P('{ev_cfg.judge_toxic_label}')"
    selected = data.min_dialogue_toxicity is not None
    data_s = join(
        ("", data.source),
        ("split", data.split),
        ("chars in", f"({data.min_chars}, {data.max_chars}]" if data.max_chars is not None else None),
        ("test fraction", data.test_fraction),
        ("max rows", data.max_rows),
        ("challenging prompts: dialogue toxicity ≥", data.min_dialogue_toxicity),
        ("scored by", data.selection_scorer if selected else None),
    )
    gen = join(
        ("do_sample", gen_cfg.do_sample),
        ("temperature", gen_cfg.temperature),
        ("top_k", gen_cfg.top_k),
        ("top_p", gen_cfg.top_p),
        ("max_new_tokens", gen_cfg.max_new_tokens),
        ("min_new_tokens", gen_cfg.min_new_tokens),
    )
    batch = join(("batch", ppo.batch_size), ("minibatch", ppo.mini_batch_size), ("PPO epochs", ppo.ppo_epochs))
    kl = join(
        ("init β", ppo.init_kl_coef),
        ("adaptive", ppo.adaptive_kl),
        ("target", ppo.target_kl if ppo.adaptive_kl else None),
        ("horizon", ppo.kl_horizon if ppo.adaptive_kl else None),
    )
    ev = join(
        ("split", ev_cfg.split),
        # what was evaluated (detoxrl evaluate --num-samples overrides the run's configuration)
        ("prompts", evaluated_prompts if evaluated_prompts else ev_cfg.num_samples),
        ("do_sample", ev_cfg.do_sample),
        ("max_new_tokens", evaluated.get("max_new_tokens") or ev_cfg.max_new_tokens),
        ("samples per prompt", evaluated.get("samples_per_prompt")),
    )
    rows = [
        ("preset", cfg.preset),
        ("policy", policy),
        ("LoRA", lora),
        ("reward model", reward),
        ("judge", judge_s),
        ("data", data_s),
        ("generation (training)", gen),
        *(_dpo_rows(cfg.dpo) if kind == "dpo" else [
            *([("algorithm", ppo.algorithm + " (no value head)")] if ppo.algorithm != "ppo" else []),  # ppo: as before
            ("steps", ppo.steps),
            ("batch", batch),
            ("learning rate", ppo.learning_rate),
            ("KL penalty", kl),
            ("clip ratio / value clip",
             f"{cfg_value(ppo.clip_ratio)} / {cfg_value(ppo.clip_value)}" if ppo.clip_ratio is not None else None)]),
        ("evaluation", ev),
        ("seed", cfg.run.seed),
    ]
    return [(k, cfg_value(v)) for k, v in rows]


def _evaluated_settings(data: RunData) -> dict[str, Any]:
    """What the run's evaluation used, from its own files: the judges of compare.json, and the summary
    length and samples per prompt of its passes' summaries (eval/after.json, after-sampled.json)."""
    eval_dir = runfiles.RunPaths(data.run_dir).eval
    greedy = runfiles.load_eval_summary(eval_dir / "after.json") or runfiles.load_eval_summary(eval_dir / "before.json") or {}
    sampled = runfiles.load_eval_summary(eval_dir / "after-sampled.json") or {}
    judges = list((data.compare or {}).get("judges") or {}) if isinstance(data.compare, dict) else []
    return {"judges": judges or None, "max_new_tokens": greedy.get("max_new_tokens"),
            "samples_per_prompt": sampled.get("samples_per_prompt")}


def _dpo_rows(d) -> list[tuple[str, Any]]:
    """The training rows of a ``detoxrl dpo`` run (its dpo section)."""
    return [("algorithm", "dpo (preference pairs of the starting policy's own summaries)"),
            ("pairs", f"{d.samples_per_prompt} samples per prompt, reward gap ≥ {cfg_value(d.min_reward_gap)}, faithfulness "
                      f"gap ≤ {cfg_value(d.max_faithfulness_gap)}"),
            ("steps", d.steps if d.steps is not None else f"{cfg_value(d.epochs)} epoch(s)"),
            ("batch", f"{d.batch_size} pairs"), ("learning rate", d.learning_rate), ("beta", d.beta)]


def _training_summary(metrics: runfiles.MetricsLog) -> tuple[list[list[str]], list[str]]:
    """Rows (metric, first, last, min, max) and notes a reviewer should see."""
    rows: list[list[str]] = []
    notes: list[str] = []
    for key, label in SUMMARY_METRICS:
        values = metrics.values(key)
        if values is None:
            continue
        finite = [v for v in values if math.isfinite(v)]
        rows.append([label, fmt(finite[0]), fmt(finite[-1]), fmt(min(finite)), fmt(max(finite))])
        if len(finite) < len(values):
            notes.append(f"{label}: {len(values) - len(finite)} step(s) not logged or not finite")
    skipped = metrics.values("ppo/skipped_minibatches")
    if skipped is not None:
        total = int(sum(v for v in skipped if not math.isnan(v)))
        rows.append(["skipped minibatches (total)", "", fmt(total), "", ""])
        if total > 0:
            notes.append(
                f"{total} minibatch(es) were skipped by the guard (non-finite loss or runaway ratio); "
                "see ppo/skipped_minibatches per step"
            )
    step_t = metrics.values("time/step_s")
    if step_t is not None:
        rows.append(["training time (total s)", "", fmt(sum(v for v in step_t if not math.isnan(v))), "", ""])
    for key, label in (("objective/kl", "KL k1"), ("objective/kl_k3", "KL k3")):
        values = metrics.values(key)
        # k3 is >= 0 for every token, so any negative mean is a bug; k1 is a one-sample estimate
        # that small batches push a little below 0 by chance while the policy is near the reference.
        floor = -1e-3 if key == "objective/kl_k3" else -0.1
        if values is not None and min(v for v in values if not math.isnan(v)) < floor:
            neg = [int(x) for x, v in zip(metrics.steps(), values) if v < floor]
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
    # (label, reduction with CI) of the extra measures
    extra_changes: list[tuple[str, dict]] = field(default_factory=list)


TOX_ROWS = (
    ("mean", "mean"),
    ("std", "std"),
    ("median", "median"),
    ("p95", "95th percentile"),
    ("ratio", "fraction ≥ 0.5"),
    ("max", "max"),
    ("n", "n"),
)


def _tox_sides(data: RunData, head: dict | None = None) -> list[ToxSide]:
    """Reward model first, then each judge, from one pass of ``data.compare`` (``head``; default the first)."""
    head = data.compare if head is None else head
    cfg = data.config
    names = [
        ("toxicity", f"reward model ({_short_model(cfg.reward.model if cfg else None)})", False),
        ("judge_toxicity", f"judge ({_short_model(cfg.evaluation.judge_model if cfg else None)})", True),
    ]
    judges = head.get("judges") if isinstance(head, dict) else None
    if isinstance(judges, dict) and judges:  # every judge under its own name (the first is judge_toxicity)
        names = names[:1] + [(("judges", spec), f"judge ({spec})", True) for spec in judges]
    sides: list[ToxSide] = []
    for key, name, is_judge in names if isinstance(head, dict) else []:
        block = head.get(key) if isinstance(key, str) else (head.get(key[0]) or {}).get(key[1])
        if not isinstance(block, dict):
            continue

        def sub(k: str, blk: dict = block) -> dict | None:
            return blk.get(k) if isinstance(blk.get(k), dict) else None

        imp = sub("percentage_improvement")  # detoxrl.compare: percent
        if imp is None and sub("improvement") is not None:  # an older compare.json: fractions
            imp = {k: float(v) * 100 if is_finite(v) else None for k, v in sub("improvement").items()}
        k = block.get("samples_per_prompt")
        k_s = f"{k} samples" if is_num(k) else "the samples"
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


def _ci_label(data: RunData) -> str:
    bootstrap = (data.compare or {}).get("bootstrap")
    ci = bootstrap.get("ci") if isinstance(bootstrap, dict) else None
    return f"{float(ci):.0%}" if is_finite(ci) and 0 < float(ci) < 1 else "95%"


def _change_text(side: ToxSide, r: dict | None = None) -> str:
    """Relative change of the mean (or of ``r``), after vs before (-23.1% = 23.1% lower after), with its interval."""
    r = side.reduction if r is None else r
    if not r or not is_finite(r.get("reduction")):
        return "–" if not r else "undefined (mean before is 0)"
    s = fmt_pct(-float(r["reduction"]), signed=True)
    if is_finite(r.get("low")) and is_finite(r.get("high")):
        s += f" [{fmt_pct(-float(r['high']), True)}, {fmt_pct(-float(r['low']), True)}]"
    return s


def _change_tone(side: ToxSide, r: dict | None = None) -> str:
    r = (side.reduction if r is None else r) or {}
    if is_finite(r.get("low")) and float(r["low"]) > 0:
        return "better"
    if is_finite(r.get("high")) and float(r["high"]) < 0:
        return "worse"
    return ""



def _tox_rows(sides: list[ToxSide], ci: str) -> list[TableRow]:
    rows: list[TableRow] = []
    for key, label in TOX_ROWS:
        cells = []
        for s in sides:
            b, a = (s.before or {}).get(key), (s.after or {}).get(key)
            if key == "n":
                cells.append((fmt(b), fmt(a), "", ""))
            else:
                change = fmt_tox(float(a) - float(b), signed=True) if is_finite(a) and is_finite(b) else "–"
                cells.append((fmt_tox(b), fmt_tox(a), change, diff_class(b, a, lower_is_better=True)))
        rows.append(TableRow(label, cells=cells))
    labels = list(dict.fromkeys(label for s in sides for label, _, _ in s.extra))
    for label in labels:
        cells = []
        for s in sides:
            b, a = next(((b, a) for lab, b, a in s.extra if lab == label), (None, None))
            change = fmt_tox(float(a) - float(b), signed=True) if is_finite(a) and is_finite(b) else "–"
            cells.append((fmt_tox(b), fmt_tox(a), change, diff_class(b, a, lower_is_better=True)))
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
            span.append((f"{fmt(imp.get('mean'), fixed=2)}% / {fmt(imp.get('std'), fixed=2)}%" if imp else "–", ""))
        label = "the notebook's “percentage improvement” of mean / std (positive = lower after)"
        rows.append(TableRow(label, span=span))
    return rows


def _diff_row(label: str, block: Any, fixed: int = 4) -> list[str] | None:
    """measure, before, after, diff, CI of the diff, from ``{"before", "after", "diff", ...}`` where
    before/after are numbers or summaries and diff is a number (CI in low/high beside it) or a
    ``{"diff", "low", "high"}`` mapping."""
    if not isinstance(block, dict):
        return None
    b, a = as_num(block.get("before")), as_num(block.get("after"))
    if b is None and a is None:
        return None
    d, low, high = block.get("diff"), block.get("low"), block.get("high")
    if isinstance(d, dict):
        d, low, high = d.get("diff"), d.get("low"), d.get("high")
    d = float(d) if is_finite(d) else (a - b if a is not None and b is not None else None)
    ci = f"[{fmt(low, True, fixed)}, {fmt(high, True, fixed)}]" if is_finite(low) and is_finite(high) else "–"
    return [label, fmt(b, fixed=fixed), fmt(a, fixed=fixed), fmt(d, True, fixed), ci]


ROUGE_LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
FAITH_LABEL = "faithfulness (summary–dialogue similarity)"


def _quality_rows(data: RunData) -> list[list[str]]:
    """Rows: measure, before, after, diff, CI of the diff."""
    if data.compare is None:
        return []
    rows: list[list[str] | None] = []
    rouge = data.compare.get("rouge")
    if isinstance(rouge, dict):
        order = list(ROUGE_LABELS)
        for k in sorted(rouge, key=lambda k: (order.index(k) if k in order else 99, k)):
            blk = rouge[k]
            label = ROUGE_LABELS.get(k, k)
            points = isinstance(blk, dict) and any((as_num(blk.get(side)) or 0.0) > 1.0 for side in ("before", "after"))
            rows.append(_diff_row(label + (" (points, F×100)" if points else ""), blk, 2 if points else 4))
    rows.append(_diff_row(FAITH_LABEL, data.compare.get("faithfulness")))
    length = data.compare.get("length_tokens", data.compare.get("length"))  # type: ignore[misc]
    rows.append(_diff_row("length (tokens)", length, fixed=2))
    return [r for r in rows if r]


def _reward_row(data: RunData) -> list[str] | None:
    if data.compare is None:
        return None
    return _diff_row("reward-model score (higher = less toxic)", data.compare.get("reward"), fixed=3)


def select_examples(rows: list[dict[str, Any]], k: int = N_EXAMPLES) -> tuple[list[dict], list[dict]]:
    """The ``k`` most improved rows (largest reward_diff first) and the ``k`` most worsened
    (smallest first), without overlap. Rows without a finite reward_diff are left out."""
    ok = [r for r in rows if is_finite(r.get("reward_diff"))]
    ok.sort(key=lambda r: float(r["reward_diff"]), reverse=True)
    n_top = min(k, (len(ok) + 1) // 2) if len(ok) < 2 * k else k
    top = ok[:n_top]
    rest = ok[n_top:]
    worst = list(reversed(rest[-k:])) if rest else []
    return top, worst


def _verdict(data: RunData, sides: list[ToxSide], quality: list[list[str]], ci: str) -> Verdict:
    """compare.json's verdict line with the key numbers beside it; the box's tone only reads the interval
    compare gave the judge's (else the reward model's) change. Without compare.json there is no verdict."""
    keynums: list[str] = []
    for side in sorted(sides, key=lambda sd: not sd.is_judge):  # the independent judge first
        b, a = as_num(side.before), as_num(side.after)
        if b is not None or a is not None:
            line = f"{side.name}: mean toxicity {fmt_tox(b)} → {fmt_tox(a)}"
            if side.reduction:
                line += f", relative change {_change_text(side)} ({ci} CI)"
            keynums.append(line)
    for row in quality:
        if row[0].startswith(("ROUGE-L", "faithfulness", "length")) and not row[0].startswith("ROUGE-Lsum"):
            ci_text = f", CI {row[4]}" if row[4] != "–" else ""
            keynums.append(f"{row[0]}: {row[1]} → {row[2]} (diff {row[3]}{ci_text})")
    if data.compare is not None and data.compare_written:
        n, prompts = data.compare.get("n"), data.compare.get("prompts")
        if n is not None:
            over = f" over {fmt(prompts)} prompts" if prompts is not None else ""
            keynums.append(f"paired summaries: {fmt(n)}{over}")
        detox = data.compare.get("detoxification") or {}
        text = detox.get("text") or data.compare.get("verdict")
        text = str(text) if text not in (None, "") else "compare.json has no verdict line"
        status = detox.get("status")
        if status is not None:  # the pre-declared verdict decides the colour, as it decides the text
            tone = {compare.LESS_TOXIC_KEPT: "good", compare.LESS_TOXIC_LOST: "bad", compare.MORE_TOXIC: "bad"}.get(status, "unclear")
        else:  # a comparison of two files (no verdict rule): the first judge's interval
            judged = [sd for sd in sides if sd.is_judge and sd.reduction] or [sd for sd in sides if sd.reduction]
            tone = {"better": "good", "worse": "bad"}.get(_change_tone(judged[0]), "unclear") if judged else "unclear"
        return Verdict(text, tone, keynums, compare.verdict_rows(detox))
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


def _template_parts(cfg: DetoxConfig | None) -> tuple[str, str]:
    """Head and tail of the prompt template around {dialogue} (whitespace squashed)."""
    template = cfg.data.template if cfg else None
    if not isinstance(template, str) or "{dialogue}" not in template:
        return "", ""
    head, tail = template.split("{dialogue}", 1)
    return squash(head), squash(tail)


def _examples(data: RunData, notes: list[str]) -> tuple[list[dict[str, Any]], str]:
    """The before/after rows to pick examples from, and where they come from."""
    if data.comparison is not None:
        return list(data.comparison), "Rows from eval/comparison.json, ordered by reward_diff (after − before)."
    if not (data.before and data.after):
        return [], ""
    try:
        rows = compare.comparison_table(compare.pair_records(data.before, data.after))
    except DataError as exc:
        rows = []
        notes.append(f"eval/before.jsonl and eval/after.jsonl do not pair, so no examples are shown: {exc}")
    return rows, "Rows paired from eval/before.jsonl and eval/after.jsonl by id (comparison.json missing)."


def _content(data: RunData, plots: dict[str, Path], missing: list[str]) -> Content:
    """Everything the HTML and Markdown pages show, from the run's files and the plots written."""
    notes = list(data.notes)
    cfg = data.config
    sides = _tox_sides(data)
    sampled = data.compare.get("sampled") if isinstance(data.compare, dict) else None
    sampled_sides = _tox_sides(data, sampled) if isinstance(sampled, dict) else []
    sampled_title = ""
    if sampled_sides and isinstance(sampled, dict):
        k, prompts = sampled.get("samples_per_prompt"), sampled.get("prompts")
        sampled_title = f"Sampled: {k} pure samples per prompt, {prompts} prompts"
    judges = (cfg.evaluation.judge_model or []) if cfg else []
    if cfg and cfg.reward.model and any(str(cfg.reward.model) == str(j).split("#")[0] for j in judges if j):
        notes.append(
            "the judge is the reward model itself: it is not independent, so a reward hack would not show up in it"
        )
    if data.evaluated and not data.compare_written:
        notes.append("eval/compare.json is missing: no confidence intervals (run detoxrl.compare on this run)")
    if data.before is not None and data.after is None:
        notes.append("eval/after.jsonl is missing: only the 'before' evaluation exists")
    if data.after is not None and data.before is None:
        notes.append("eval/before.jsonl is missing: only the 'after' evaluation exists")

    rows, source = _examples(data, notes)
    top, worst = select_examples(rows)
    if source:
        source += " Higher reward = less toxic according to the reward model. Query previews show the dialogue"
        source += " without the prompt template."

    train_rows, train_notes = _training_summary(data.metrics) if data.metrics.rows else ([], [])
    steps_planned = (cfg.dpo.steps if runfiles.kind_of(data.metrics.rows) == "dpo" else cfg.ppo.steps) if cfg else None
    if is_num(steps_planned) and data.metrics.rows and len(data.metrics.rows) < int(steps_planned):
        train_notes.insert(0, f"only {len(data.metrics.rows)} of {int(steps_planned)} planned steps were logged")

    quality = _quality_rows(data)
    ci = _ci_label(data)
    if data.compare is not None and data.compare_written:
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
        config_rows=_config_rows(cfg, len({r.get("index") for r in (data.after or data.before or [])}) or None,
                                 runfiles.kind_of(data.metrics.rows), _evaluated_settings(data)),
        train_rows=train_rows,
        train_notes=train_notes,
        plots=plots,
        missing_plots=missing,
        sides=[side.name for side in sides],
        tox_rows=_tox_rows(sides, ci),
        sampled_title=sampled_title,
        sampled_sides=[side.name for side in sampled_sides],
        sampled_rows=_tox_rows(sampled_sides, ci),
        tox_note=tox_note,
        reward_row=_reward_row(data),
        quality=quality,
        top=top,
        worst=worst,
        examples_source=source,
        template=_template_parts(cfg),
        notes=notes,
        has_metrics=bool(data.metrics.rows),
        evaluated=data.evaluated,
        steps_planned=steps_planned,
        steps_logged=len(data.metrics.rows),
    )


def _write_plots(data: RunData, out_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """The report's PNG plots into ``out_dir``: ``({name: path}, titles of the plots with nothing to plot)``."""
    cfg = data.config
    target_kl = cfg.ppo.target_kl if cfg and cfg.ppo.adaptive_kl else None
    panels = []
    if data.evaluated:
        reward_model = _short_model(cfg.reward.model if cfg else None)
        judge_model = _short_model(cfg.evaluation.judge_model if cfg else None)
        panels = [(f"reward model: {reward_model}", _values(data.before, "toxicity"), _values(data.after, "toxicity"))]
        judge_before, judge_after = _values(data.before, "judge_toxicity"), _values(data.after, "judge_toxicity")
        if judge_before or judge_after:
            panels.append((f"judge: {judge_model}", judge_before, judge_after))
    return write_plots(data.metrics, panels, float(target_kl) if is_num(target_kl) else None, out_dir,
                       frontier=frontier_points(data))


def frontier_point(step: int, head: runfiles.Headline) -> dict[str, Any] | None:
    """One point of the toxicity-quality frontier: a comparison's verdict, each primary judge's change
    (% with its interval), the greedy quality changes and the KL on the adapter's samples. None for a
    compare.json without the pre-declared verdict (from an older detoxrl)."""
    detox = head.get("detoxification") or {}
    if "primary" not in detox:
        return None
    gate = detox.get("quality_gate") or {}
    return {
        "step": step,
        "verdict": detox.get("status"),
        "primary": {m["judge"]: {"change_pct": -100 * m["reduction"], "low_pct": -100 * m["high"],
                                 "high_pct": -100 * m["low"], "p_adjusted": m["p_adjusted"]}
                    for m in detox["primary"]["measures"] if m.get("evaluated")},
        "faithfulness_diff": (gate.get("faithfulness") or {}).get("diff"),
        "rouge_l_diff_points": (gate.get("rouge_l") or {}).get("diff"),
        "kl_sampled_nats": (detox.get("kl_to_reference") or {}).get("mean"),
    }


def frontier_points(data: RunData) -> list[dict[str, Any]]:
    """The run's evaluated checkpoints (``eval-checkpoints/``) and its final adapter (``eval/``, at the last
    logged step), in step order: the points of the toxicity-quality frontier plot."""
    heads = dict(data.checkpoint_compares)
    if data.compare_written and data.compare is not None and data.metrics.rows:
        heads.setdefault(int(data.metrics.steps()[-1]), data.compare)
    points = [frontier_point(step, head) for step, head in sorted(heads.items())]
    return [p for p in points if p is not None]


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``RUN/report/`` (or ``out_dir``) and return the paths written. A folder that cannot be written
    is one line naming it and ``--output`` (a read-only run folder can be reported elsewhere).

    Keys: ``"html"``, ``"markdown"``, and one per plot written (``"training_reward"``,
    ``"training_kl"``, ``"training_returns_advantages"``, ``"training_losses"``,
    ``"training_time"``, ``"toxicity_distribution"``). A plot whose metrics were never logged is
    not written (and the report says so). Raises :class:`DetoxError` if ``run_dir`` is not a run folder.
    """
    from detoxrl.runfolder import check_writable_dir

    data = load_run(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else runfiles.RunPaths(data.run_dir).report
    check_writable_dir(out_dir, "report --output")
    out_dir.mkdir(parents=True, exist_ok=True)
    plots, missing = _write_plots(data, out_dir)
    content = _content(data, plots, missing)
    html_path = out_dir / "report.html"
    md_path = out_dir / "report.md"
    html_path.write_text(render_html(content), encoding="utf-8")
    md_path.write_text(render_markdown(content), encoding="utf-8")
    return {"html": html_path, "markdown": md_path, **plots}


def markdown_sections(run_dir: str | Path) -> dict[str, str]:
    """Sections of ``report.md`` as Markdown, without plots, for other documents (the model card of
    :mod:`detoxrl.modelcard`): ``verdict``, ``configuration``, ``toxicity`` and ``quality`` (each without
    its heading; toxicity and quality are the tables with the intervals of ``eval/compare.json``).
    Raises :class:`DetoxError` if ``run_dir`` is not a run folder."""
    return _markdown_sections(_content(load_run(run_dir), {}, []))


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
