"""The demo workflow: the starting policy evaluated, trained, evaluated again on the same prompts, the
verdict, the report, and the summaries that changed most, side by side.

:func:`run_demo` takes a built trainer (``detoxrl.trainer.Trainer``: it has loaded the policy, the reward
model and the prompts), so that this module needs nothing of the trainer but what it offers: ``cfg``,
``policy``, ``scorer``, ``prompts``, ``run_dir``, ``staging_dir``, ``train()`` and ``earlier_run_kept()``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from detoxrl.compare import comparison_table, format_headline, load_eval_records, pair_records
from detoxrl.errors import DetoxError
from detoxrl.evaluate import build_judges, evaluate_run
from detoxrl.modelcard import refresh_model_card


@dataclass
class DemoResult:
    run_dir: Path
    comparison: dict[str, Any]  # eval/compare.json
    report: Path  # report/report.html
    seconds: float


def demo_plan(cfg) -> str:
    """The demo's first line: what it trains, against what, judged by what, on which data, into which folder."""
    sel = cfg.data.min_dialogue_toxicity
    shaping = f" + {cfg.reward.faithfulness_weight:g} x faithfulness" if cfg.reward.faithfulness_weight else ""
    return (f"detoxrl demo: preset '{cfg.preset}', policy {cfg.policy.model}, reward {cfg.reward.model} "
            f"({cfg.reward.transform} of '{cfg.reward.label}'{shaping}), judges "
            f"{', '.join(cfg.evaluation.judge_model or ['none'])}, data {cfg.data.source}"
            + (f" (challenging: dialogue toxicity >= {sel:g})" if sel is not None else "")
            + f"; run folder {cfg.run.output_dir}")


def run_demo(trainer, *, say: Callable[[str], None] = print) -> DemoResult:
    """Evaluate the starting policy (every pass), ``trainer.train()``, evaluate the adapter on the same
    prompts with the same seeds, compare, refresh the model card and write the report. ``say`` is told
    each phase as it starts (``[3] PPO: ...``). A :class:`DetoxError` or Ctrl-C during an ``--overwrite``
    run before its first checkpoint names the earlier run, which is kept."""
    from detoxrl.report import write_report

    t_start = time.perf_counter()
    cfg = trainer.cfg  # with what the checks resolved (reward labels, rollout shards)
    judges = build_judges(cfg)
    phase = iter(range(1, 20))

    def step(text: str) -> None:
        say(f"[{next(phase)}] {text}")

    def train() -> None:
        k = cfg.ppo.samples_per_prompt
        per_step = (f"{cfg.ppo.batch_size} challenging prompts" if k == 1 else
                    f"{cfg.ppo.batch_size} summaries ({cfg.ppo.batch_size // k} challenging prompts x {k} samples)")
        step(f"{cfg.ppo.algorithm.upper()}: {cfg.ppo.steps} steps of {per_step}")
        trainer.train()

    try:
        # The evaluation folder is looked up when each part starts: an --overwrite run moves into place as it trains.
        done = evaluate_run(trainer.policy, trainer.prompts.test, trainer.scorer, judges,
                            lambda: trainer.run_dir / "eval", cfg=cfg, train=train,
                            on_phase=lambda text: step("toxicity of the " + text))
    except DetoxError as e:  # train() names the earlier run itself; the evaluation before it does not
        if trainer.staging_dir is None or "--overwrite: the earlier run" in str(e):
            raise
        raise type(e)(f"{e}; {trainer.earlier_run_kept()}") from e
    refresh_model_card(trainer.run_dir)
    step("report")
    paths = write_report(trainer.run_dir)
    html = paths.get("html") if isinstance(paths, dict) else paths
    return DemoResult(trainer.run_dir, done["comparison"], Path(html), time.perf_counter() - t_start)


def closing_lines(result: DemoResult, n: int = 3) -> list[str]:
    """What the demo prints at the end: every classifier before -> after, the verdict and its table, the
    greedy summaries that the reward model saw improve most and worsen most (both judges' view), and
    where the report and the tables are."""
    eval_dir = result.run_dir / "eval"
    lines = [""] + list(format_headline(result.comparison))
    before, after = load_eval_records(eval_dir / "before.jsonl"), load_eval_records(eval_dir / "after.jsonl")
    rows = comparison_table(pair_records(before, after))

    def tox(r, side):
        j = r.get(f"judge_toxicity_{side}")
        return f"toxicity {r[f'toxicity_{side}']:.3f}" + (f", judge {j:.3f}" if j is not None else "")

    for title, chosen in (("most improved (largest reward gain)", rows[:n]),
                          ("most worsened (largest reward loss)", rows[::-1][:n])):
        lines += ["", f"{title}:"]
        for r in chosen:
            lines += ["-" * 100, "dialogue: " + clip(r["query"], 300),
                      f"before ({tox(r, 'before')}): {clip(r['response_before'], 300)}",
                      f"after  ({tox(r, 'after')}): {clip(r['response_after'], 300)}"]
    lines.append("-" * 100)
    sampled_table = eval_dir / "comparison-sampled.csv"  # written only when a sampled pass ran
    lines += ["", f"report: {result.report}",
              f"tables: {eval_dir / 'comparison.csv'}" + (f", {sampled_table}" if sampled_table.exists() else "")]
    return lines


def clip(text: str, n: int) -> str:
    """``text`` on one line, cut to ``n`` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."
