"""Which algorithm to pick: PPO, RLOO, GRPO and DPO on one toxicity-quality frontier, same data, same budget.

Every run trains the same LoRA adapter of the offline policy on DialogSum's challenging train dialogues
(dialogue toxicity >= 0.3) with the same reward (the BiLSTM's logit clipped at P(non-toxic) = 0.99, no
system turn) and the same sampling budget: 640 summaries sampled from the policy in all (PPO, RLOO and
GRPO: 40 steps of 4 summaries of each of 4 prompts; DPO: 4 summaries of each of 160 prompts, sampled
once from the starting policy, then 40 steps of 8 pairs; PPO with k = 8: 20 steps of 8 summaries of 4
prompts). Each run keeps a checkpoint every 10 steps; its final adapter and the checkpoints of
``--points`` are evaluated as ``detoxrl evaluate --run`` evaluates (the 145 held-out challenging
prompts, greedy and 8 pure samples per prompt, the same prompts and seeds for every run). The starting
policy is the same for every run (same model, prompts and seeds), so its records are evaluated once and
copied into the other runs' ``eval/``. Each point is read from its ``compare.json``: the pre-declared
primary measures (each judge's expected maximum over the 8 samples, Holm-corrected), the greedy ROUGE-L
and faithfulness changes, the KL on the adapter's own samples. It prints a table, writes a JSON file
and one plot (:func:`detoxrl.report_plots.plot_algorithm_frontier`).

    .venv/bin/python benchmarks/algo_frontier.py --data ../shared/data/dialogsum --jobs 2 \\
        --json-out benchmarks/results/algo_frontier.json --plot benchmarks/results/algo_frontier.png

``--dataset chitchat`` compares PPO, RLOO, GRPO and DPO on the demo's packaged data with the demo's recipe
(30 steps of 4 x 4 = 480 summaries; DPO: 5 summaries of each of the 118 train prompts, 590, then 30
steps of 8 pairs) and the demo's evaluation (the 105 held-out prompts, greedy and 4 samples; chitchat has no
references, so the quality axis is faithfulness):

    .venv/bin/python benchmarks/algo_frontier.py --dataset chitchat --jobs 2

A run whose ``final/`` exists is not trained again, an evaluation whose ``compare.json`` exists is not
run again: an interrupted benchmark continues where it stopped. ``--jobs 2`` runs two commands at once,
one thread each. Costs per run: the summaries and tokens sampled, and the seconds of its steps (and of
DPO's sampling), read from the run folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from detoxrl.config import DEMO_OVERRIDES  # noqa: E402  (import detoxrl loads no torch)

ROOT = Path(__file__).resolve().parent.parent
DETOXRL = [sys.executable, "-m", "detoxrl.cli"]

# The DialogSum recipe of the Quick start, shared by every run.
RECIPE = ["--set", "data.min_dialogue_toxicity=0.3", "--set", "data.system_prompt=null",
          "--set", "reward.logit_ceiling=4.59512"]
GROUPS_OF_4 = ["--set", "ppo.batch_size=16", "--set", "ppo.samples_per_prompt=4", "--steps", "40"]
RUNS = {  # name -> the command after `detoxrl`, without data, recipe, run and output flags
    "ppo": ["train", *GROUPS_OF_4, "--set", "ppo.reward_baseline=group"],
    "rloo": ["train", *GROUPS_OF_4, "--set", "ppo.algorithm=rloo"],
    "grpo": ["train", *GROUPS_OF_4, "--set", "ppo.algorithm=grpo"],
    "dpo": ["dpo", "--num-prompts", "160", "--samples-per-prompt", "4", "--steps", "40"],
    "ppo-k8": ["train", "--set", "ppo.batch_size=32", "--set", "ppo.samples_per_prompt=8", "--steps", "20",
               "--set", "ppo.reward_baseline=group"],
}
EVALUATION = ["--num-samples", "145", "--samples-per-prompt", "8"]

# chitchat, the demo's data: the demo's own settings (detoxrl.config.DEMO_OVERRIDES: its 118 challenging
# train prompts, 105 held out, 5 x faithfulness in the reward, the group baseline, 30 steps of 4 x 4 = 480
# summaries, the demo's evaluation) for every run, read from the one place that defines them; RLOO and GRPO
# take its PPO settings but the group baseline (they have their own). DPO samples 5 summaries of each of the
# 118 train prompts (590: a fifth more than the RL runs, from a miscount of the train prompts as 105; kept
# so that the measured run is what this reruns) and takes 30 steps of 8 pairs.
def _sets(overrides) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


DEMO_RECIPE = _sets(o for o in DEMO_OVERRIDES if not o.startswith("ppo."))
DEMO_PPO = [o for o in DEMO_OVERRIDES if o.startswith("ppo.")]
DEMO_CRITIC_FREE = _sets(o for o in DEMO_PPO if not o.startswith("ppo.reward_baseline="))
DEMO_RUNS = {
    "ppo": ["train", *_sets(DEMO_PPO)],
    "rloo": ["train", *DEMO_CRITIC_FREE, "--set", "ppo.algorithm=rloo"],
    "grpo": ["train", *DEMO_CRITIC_FREE, "--set", "ppo.algorithm=grpo"],
    "dpo": ["dpo", "--samples-per-prompt", "5", "--steps", "30"],
}


@dataclass(frozen=True)
class Frontier:
    """One data set's comparison: what every run shares, the runs, and where the results go."""

    recipe: list[str]
    runs: dict[str, list[str]]
    evaluation: list[str]
    points: list[int]  # checkpoint steps evaluated besides the final adapter
    out_root: str
    json_out: str
    plot: str
    title: str


FRONTIERS = {
    "dialogsum": Frontier(RECIPE, RUNS, EVALUATION, [10, 20], "runs/algos", "benchmarks/results/algo_frontier.json",
                          "benchmarks/results/algo_frontier.png", "DialogSum, 145 held-out challenging prompts: toxicity against "
                          "quality and KL at the same sampling budget (640 summaries)"),
    "chitchat": Frontier(DEMO_RECIPE, DEMO_RUNS, [], [10, 20], "runs/algos-chitchat",
                         "benchmarks/results/algo_frontier_chitchat.json", "benchmarks/results/algo_frontier_chitchat.png",
                         "chitchat (the demo's data), 105 held-out challenging prompts: toxicity against "
                         "faithfulness and KL at about the same sampling budget (480 summaries; DPO 590)"),
}


def train_command(frontier: Frontier, name: str, data: str, run_dir: Path, threads: int | None) -> list[str]:
    cmd = [*DETOXRL, *frontier.runs[name], "--data", data, *frontier.recipe, "--set", "run.save_every=10",
           "--set", "run.keep_checkpoints=0", "--no-progress", "--output-dir", str(run_dir)]
    return cmd + (["--set", f"run.num_threads={threads}"] if threads else [])


def evaluate_command(frontier: Frontier, run_dir: Path, step: int | None, threads: int | None) -> list[str]:
    cmd = [*DETOXRL, "evaluate", "--run", str(run_dir), *frontier.evaluation, "--no-progress"]
    cmd += ["--checkpoint", str(step)] if step is not None else []
    return cmd + (["--set", f"run.num_threads={threads}"] if threads else [])


def share_starting_policy_records(run_dirs: list[Path]) -> None:
    """The starting policy's records of the first run that has both passes, copied into the others'
    ``eval/`` (the evaluation keeps records whose signature matches: same model, prompts and seeds)."""
    donors = [r / "eval" for r in run_dirs if (r / "eval" / "before-sampled.jsonl").is_file()
              and (r / "eval" / "before.jsonl").is_file()]
    if not donors:
        return
    for run in run_dirs:
        (run / "eval").mkdir(parents=True, exist_ok=True)
        for src in donors[0].glob("before*.jsonl"):
            if not (run / "eval" / src.name).exists():
                shutil.copyfile(src, run / "eval" / src.name)


def run_costs(run_dir: Path) -> dict:
    """What a run spent: summaries and tokens sampled from the policy, seconds of its steps (DPO: and of
    its sampling), from its metrics.jsonl and (DPO) pairs.json."""
    from detoxrl.report import load_run

    data = load_run(run_dir)
    rows = data.metrics.rows
    step_seconds = sum(r.get("time/step_s", 0.0) for r in rows)
    cfg = data.config  # a DetoxConfig
    pairs_json = run_dir / "pairs.json"
    if pairs_json.is_file():  # DPO: every summary sampled once, before training
        cost = json.loads(pairs_json.read_text())
        return {"algorithm": "dpo", "steps": len(rows), "summaries_sampled": cost["samples"],
                "tokens_sampled": cost["generated_tokens"], "pairs": cost["pairs"],
                "sampling_seconds": cost["sampling_seconds"], "step_seconds": round(step_seconds, 1),
                "train_seconds": round(cost["sampling_seconds"] + step_seconds, 1)}
    batch = cfg.ppo.batch_size
    tokens = sum(r.get("env/response_length_mean", 0.0) * batch for r in rows)
    return {"algorithm": cfg.ppo.algorithm, "steps": len(rows), "summaries_sampled": batch * len(rows),
            "tokens_sampled": round(tokens), "step_seconds": round(step_seconds, 1),
            "train_seconds": round(step_seconds, 1), "threads": cfg.run.num_threads}


def table(rows: list[dict]) -> str:
    lines = ["| run | step | summaries sampled | verdict | profanity SVM, expected max | HateSonar, expected max "
             "| ROUGE-L (points) | faithfulness | KL (sampled) |", "|" + " --- |" * 9]
    for r in rows:
        for p in r["points"]:
            prim = [p["primary"].get(j) for j in ("packaged:profanity-check", "packaged:hatesonar")]
            cells = [f"{m['change_pct']:+.1f}% [{m['low_pct']:+.1f}, {m['high_pct']:+.1f}] ({m['p_adjusted']:.2g})"
                     if m else "–" for m in prim]
            rouge = "–" if p["rouge_l_diff_points"] is None else f"{p['rouge_l_diff_points']:+.1f}"
            faith = "–" if p["faithfulness_diff"] is None else f"{p['faithfulness_diff']:+.3f}"
            kl = "–" if p["kl_sampled_nats"] is None else f"{p['kl_sampled_nats']:.2f}"
            per_step = r["costs"]["summaries_sampled"] // max(1, r["costs"]["steps"])
            sampled = r["costs"]["summaries_sampled"] if r["name"] == "dpo" else per_step * p["step"]
            lines.append(f"| {r['name']} | {p['step']} | {sampled} | {p['verdict']} | {cells[0]} | {cells[1]} | {rouge} "
                         f"| {faith} | {kl} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=list(FRONTIERS), default="dialogsum",
                    help="dialogsum (its challenging dialogues, --data) or chitchat (the demo's packaged data and recipe)")
    ap.add_argument("--data", default=None,
                    help="DialogSum as CSV (default ../shared/data/dialogsum); chitchat: packaged:chitchat")
    ap.add_argument("--runs", nargs="+", default=None, choices=list(RUNS), help="default: every run of the data set")
    ap.add_argument("--points", type=int, nargs="*", default=None,
                    help="checkpoint steps evaluated besides each run's final adapter (default 10 20)")
    ap.add_argument("--out-root", default=None, help="one run folder per run: OUT_ROOT/NAME "
                    "(default runs/algos, chitchat: runs/algos-chitchat)")
    ap.add_argument("--jobs", type=int, default=1, help="commands at once (each with 2 / jobs threads)")
    ap.add_argument("--json-out", default=None, help="default benchmarks/results/algo_frontier[_chitchat].json")
    ap.add_argument("--plot", default=None, help="default benchmarks/results/algo_frontier[_chitchat].png")
    ap.add_argument("--no-run", action="store_true", help="train and evaluate nothing; collect what is there")
    args = ap.parse_args(argv)
    frontier = FRONTIERS[args.dataset]
    unknown = [n for n in args.runs or [] if n not in frontier.runs]
    if unknown:
        ap.error(f"--runs {' '.join(unknown)}: not a run of --dataset {args.dataset} (its runs: {' '.join(frontier.runs)})")
    args.runs = args.runs or list(frontier.runs)
    args.points = frontier.points if args.points is None else args.points
    args.out_root = args.out_root or frontier.out_root
    args.json_out = args.json_out or frontier.json_out
    args.plot = args.plot or frontier.plot
    if args.data is None:
        args.data = str(common.dialogsum_path()) if args.dataset == "dialogsum" else "packaged:chitchat"
    from detoxrl.checkpoint import STEP_FOLDER, list_checkpoints
    from detoxrl.report import frontier_points, load_run
    from detoxrl.report_plots import frontier_quality_axis, plot_algorithm_frontier

    out_root = (ROOT / args.out_root) if not Path(args.out_root).is_absolute() else Path(args.out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    threads = max(1, 2 // args.jobs) if args.jobs > 1 else None
    run_dirs = {name: out_root / name for name in args.runs}
    t0 = time.perf_counter()

    def run(job: tuple[list[str], Path]) -> float:
        return common.run_logged(job[0], job[1], cwd=ROOT)

    def pool_run(jobs: list[tuple[list[str], Path]]) -> None:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(run, jobs))

    if not args.no_run:
        # 1. training, 2. each run's final adapter (the starting policy's records shared), 3. checkpoints
        pool_run([(train_command(frontier, n, args.data, d, threads), out_root / f"{n}.log")
                  for n, d in run_dirs.items() if not (d / "final").is_dir()])
        first = [d for d in run_dirs.values() if not (d / "eval" / "compare.json").is_file()]
        if first and not any((d / "eval" / "before-sampled.jsonl").is_file() for d in run_dirs.values()):
            run((evaluate_command(frontier, first[0], None, None), out_root / f"{first[0].name}.log"))  # the starting policy once
        share_starting_policy_records(list(run_dirs.values()))
        pool_run([(evaluate_command(frontier, d, None, threads), out_root / f"{n}.log")
                  for n, d in run_dirs.items() if not (d / "eval" / "compare.json").is_file()])
        jobs = []
        for step in sorted(args.points, reverse=True):
            for n, d in run_dirs.items():
                kept = {int(STEP_FOLDER.fullmatch(c.name).group(1)): c.name for c in list_checkpoints(d)}
                last = int(load_run(d).metrics.steps()[-1])
                if step in kept and step != last and not (d / "eval-checkpoints" / kept[step] / "compare.json").is_file():
                    jobs.append((evaluate_command(frontier, d, step, threads), out_root / f"{n}.log"))
        pool_run(jobs)

    rows = []
    for name, d in run_dirs.items():
        if not (d / "metrics.jsonl").is_file():
            continue
        shown = d.relative_to(ROOT) if d.is_relative_to(ROOT) else Path(args.out_root) / name
        rows.append({"name": name, "run": str(shown), "command": "detoxrl " + " ".join(frontier.runs[name]),
                     "costs": run_costs(d), "points": frontier_points(load_run(d))})
    result = {"benchmark": "algo_frontier", "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/algo_frontier.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": {"native_bf16": common.native_bf16(), "cpu_flags": common.cpu_flags(), "jobs": args.jobs},
              "dataset": args.dataset, "recipe": " ".join(frontier.recipe),
              "evaluation": " ".join(frontier.evaluation) or "the run's config", "runs": rows,
              "wall_seconds": round(time.perf_counter() - t0, 1)}
    print(table(rows))
    for r in rows:
        c = r["costs"]
        print(f"{r['name']}: {c['summaries_sampled']} summaries, {c['tokens_sampled']} tokens sampled, "
              f"{c['train_seconds']:.0f} s of training" + (f" ({c['pairs']} pairs)" if "pairs" in c else ""))
    common.write_result(args.json_out, result)
    curves = {r["name"]: r["points"] for r in rows if r["points"]}
    if curves:
        from detoxrl.config import EvalConfig

        # the gate of the plot's quality axis (ROUGE-L where the data has references, else faithfulness)
        key, _ = frontier_quality_axis([p for pts in curves.values() for p in pts])
        gate = EvalConfig().max_rouge_l_drop if key == "rouge_l_diff_points" else EvalConfig().max_faithfulness_drop
        plot_algorithm_frontier(curves, Path(args.plot), frontier.title, quality_gate=-gate)
        print(f"wrote {args.json_out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
