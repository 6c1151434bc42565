"""SFT on DialogSum: ROUGE of the starting policy and of the SFT adapter on the same held-out prompts.

Two commands of the CLI, so what is measured is what a user runs:

1. ``detoxrl sft --data DATA --steps N --output-dir RUN``: supervised LoRA fine-tuning of the offline
   default (SmolLM2-135M-Instruct) on the train split's reference summaries;
2. ``detoxrl evaluate --data DATA --adapter RUN/final --num-samples M --greedy-only``: greedy summaries of
   the first M held-out prompts by the starting policy and by the adapter, ROUGE-1/2/L against the
   references, paired bootstrap 95% intervals over prompts (``RUN/eval/compare.json``).

    .venv/bin/python benchmarks/sft_rouge.py --data ../shared/data/dialogsum --steps 60 --num-samples 100 \\
        --json-out benchmarks/results/sft_rouge.json

Prints a Markdown table and writes the JSON (settings, commands, times, the table's numbers). A
finished SFT run in RUN is reused (``--fresh`` starts over); evaluate reuses its records.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DETOXRL = [sys.executable, "-m", "detoxrl.cli"]
NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}


def run(cmd: list[str], log: Path) -> float:
    return common.run_logged(cmd, log, cwd=ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/dialogsum")
    ap.add_argument("--steps", type=int, default=60, help="SFT optimizer steps (of sft.batch_size pairs, 8 by default)")
    ap.add_argument("--num-samples", type=int, default=100, help="held-out prompts evaluated before and after")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="longest greedy summary (DialogSum references: median 32, p95 62 tokens)")
    ap.add_argument("--run-dir", default="runs/sft-dialogsum")
    ap.add_argument("--json-out", default="benchmarks/results/sft_rouge.json")
    ap.add_argument("--fresh", action="store_true", help="train again even if RUN/final exists")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more settings for sft (e.g. sft.learning_rate=5e-4)")
    args = ap.parse_args()

    run_dir = ROOT / args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "benchmark.log"
    sft_cmd = [*DETOXRL, "sft", "--data", args.data, "--steps", str(args.steps), "--output-dir", args.run_dir, "--no-progress",
               *[x for s in args.set for x in ("--set", s)]]
    seconds = {}
    if args.fresh or not (run_dir / "final" / "adapter_model.safetensors").is_file():
        seconds["sft"] = run([*sft_cmd, "--overwrite"], log)
    eval_cmd = [*DETOXRL, "evaluate", "--data", args.data, "--adapter", f"{args.run_dir}/final", "--num-samples", str(args.num_samples),
                "--greedy-only", "--no-faithfulness", "--judge-model", "none", "--set", f"evaluation.max_new_tokens={args.max_new_tokens}",
                "--output", f"{args.run_dir}/eval", "--no-progress", "--json"]
    seconds["evaluate"] = run(eval_cmd, log)

    import yaml

    batch_size = yaml.safe_load((run_dir / "config.yaml").read_text())["sft"]["batch_size"]
    head = json.loads((run_dir / "eval" / "compare.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = {}
    for key, name in NAMES.items():
        block = head["rouge"][key]
        d = block["diff"]
        rows[name] = {"before": block["before"]["mean"], "after": block["after"]["mean"], "diff": d["diff"], "low": d["low"], "high": d["high"]}
    length = head["length_tokens"]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "commands": [" ".join(["detoxrl", *sft_cmd[len(DETOXRL):]]), " ".join(["detoxrl", *eval_cmd[len(DETOXRL):]])],
        "settings": {"steps": args.steps, "num_samples": args.num_samples, "max_new_tokens": args.max_new_tokens, "set": args.set},
        "n_prompts": head["prompts"],
        "bootstrap": head["bootstrap"],
        "rouge_points": rows,
        "length_tokens": {"before": length["before"]["mean"], "after": length["after"]["mean"]},
        "sft": {
            "steps": len(metrics),
            "batch_size": batch_size,
            "pairs_seen": len(metrics) * batch_size,
            "loss_first_5": sum(m["sft/loss"] for m in metrics[:5]) / max(1, len(metrics[:5])),
            "loss_last_5": sum(m["sft/loss"] for m in metrics[-5:]) / max(1, len(metrics[-5:])),
            "median_step_s": sorted(m["time/step_s"] for m in metrics)[len(metrics) // 2] if metrics else None,
        },
        "seconds": seconds,
    }
    out = ROOT / args.json_out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| n = {head['prompts']} held-out prompts, greedy | starting policy | after SFT | change [95% CI] |")
    print("| --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} (points) | {r['before']:.2f} | {r['after']:.2f} | {r['diff']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] |")
    print(f"| length (tokens) | {length['before']['mean']:.1f} | {length['after']['mean']:.1f} | |")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
