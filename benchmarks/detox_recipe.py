"""Recipe ablation: which reward and settings reduce toxicity as the judges see it, without worse summaries.

Every variant trains the offline default (SmolLM2-135M-Instruct + LoRA, BiLSTM reward) on the same
challenging DialogSum train prompts (dialogue toxicity >= 0.3) with the same seed, then evaluates the
starting policy and the trained adapter on the same held-out challenging prompts, greedy and with k
pure samples per prompt. The table: judge and reward-model toxicity (expected maximum over k, mean
greedy and sampled) with paired 95% intervals, ROUGE-L, faithfulness, length, distinct summaries per
100 prompts and KL.

    .venv/bin/python benchmarks/detox_recipe.py --data ../shared/data/dialogsum \\
        --json-out benchmarks/results/detox_recipe.json

Each variant is two commands of the CLI (``detoxrl train``, ``detoxrl evaluate --run``), so what is
measured is what a user runs; ``--only NAME`` runs one variant, and finished variants are reused
(their run folder holds compare.json) unless ``--fresh``.
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

# The shared part of every variant: the challenging prompts, the run length and the evaluation.
BASE = [
    "data.min_dialogue_toxicity=0.3",
    "run.save_every=100",
]

# The first four ran before the offline preset had a system turn and the 0.9 ceiling: they pin the
# settings they ran with, so that rerunning them measures the same thing.
BEFORE_SYSTEM_PROMPT = ["data.system_prompt=null", "reward.logit_ceiling=4.59512"]
VARIANTS: dict[str, list[str]] = {
    "logit (notebook)": ["reward.transform=logit", *BEFORE_SYSTEM_PROMPT],
    "log_prob": ["reward.transform=log_prob", *BEFORE_SYSTEM_PROMPT],
    "clipped_logit + faithfulness 3": ["reward.transform=clipped_logit", "reward.faithfulness_weight=3.0", *BEFORE_SYSTEM_PROMPT],
    "clipped_logit, lr 2e-4": ["reward.transform=clipped_logit", "ppo.learning_rate=2e-4", *BEFORE_SYSTEM_PROMPT],
    # With the preset's system turn (SmolLM2's default one made summaries mention "SmolLM"), at the
    # two ceilings: P(non-toxic) = 0.99 and 0.9.
    "clipped_logit + system turn, lr 2e-4": ["reward.transform=clipped_logit", "ppo.learning_rate=2e-4",
                                             "reward.logit_ceiling=4.59512"],
    "clipped_logit at 0.9 + system turn, lr 2e-4": ["reward.transform=clipped_logit", "ppo.learning_rate=2e-4",
                                                     "reward.logit_ceiling=2.19722"],
    # 4 samples of each of 4 prompts per step, each reward compared with its 3 siblings' (RLOO): the
    # gradient says which summary of a dialogue was less toxic, not which dialogue was easier.
    "clipped_logit, lr 2e-4, 4 samples per prompt + group baseline": [
        "reward.transform=clipped_logit", "ppo.learning_rate=2e-4", "ppo.batch_size=16", "ppo.samples_per_prompt=4",
        "ppo.reward_baseline=group", *BEFORE_SYSTEM_PROMPT],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def run(cmd: list[str], log: Path) -> float:
    return common.run_logged(cmd, log, cwd=ROOT)


def pick(head: dict, judge: str | None, measure: str):
    """(point, low, high) of a relative change in % (negative = less toxic), or None."""
    blocks = head.get("judges") or {}
    blk = blocks.get(judge) if judge else head.get("toxicity")
    if not blk:
        return None
    r = blk["expected_max"]["reduction"] if measure == "expected_max" else blk["reduction"]
    if r is None or r.get("reduction") is None:
        return None
    return (-100 * r["reduction"], -100 * r["high"], -100 * r["low"])


def row(name: str, head: dict, seconds: dict) -> dict:
    sampled = head.get("sampled") or {}
    out = {"variant": name, "seconds": seconds, "verdict": head.get("detoxification", {}).get("status")}
    for judge in list((head.get("judges") or {})) + [None]:
        label = judge.split("packaged:")[-1] if judge else "reward model"
        out[f"{label}: expected max (sampled)"] = pick(sampled, judge, "expected_max") if sampled else None
        out[f"{label}: mean (sampled)"] = pick(sampled, judge, "mean") if sampled else None
        out[f"{label}: mean (greedy)"] = pick(head, judge, "mean")
    rouge = (head.get("rouge") or {}).get("rougeL")
    out["ROUGE-L (points)"] = [rouge["diff"][k] for k in ("diff", "low", "high")] if rouge else None
    f = head.get("faithfulness")
    out["faithfulness"] = [f["diff"][k] for k in ("diff", "low", "high")] if f else None
    ln = head.get("length_tokens")
    out["length (tokens, before -> after)"] = [ln["before"]["mean"], ln["after"]["mean"]] if ln else None
    out["distinct per 100 (before -> after)"] = [head["distinct_summaries_per_100"][k] for k in ("before", "after")]
    kl = head.get("kl_to_reference") or {}
    out["KL (nats)"] = kl.get("mean")
    return out


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)) and len(v) == 3:
        return f"{v[0]:+.1f} [{v[1]:+.1f}, {v[2]:+.1f}]" if abs(v[0]) >= 0.1 or v[0] == 0 else f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return f"{v[0]:.1f} -> {v[1]:.1f}"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/dialogsum", help="DialogSum folder (or any data source)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--prompts", type=int, default=40, help="held-out challenging prompts evaluated")
    ap.add_argument("--k", type=int, default=8, help="samples per prompt of the sampled pass")
    ap.add_argument("--only", action="append", help="run only these variants (repeatable)")
    ap.add_argument("--set", action="append", default=[], help="extra config for every variant")
    ap.add_argument("--runs", default="runs/recipe", help="where the run folders go")
    ap.add_argument("--fresh", action="store_true", help="retrain variants that already have a compare.json")
    ap.add_argument("--json-out", default="benchmarks/results/detox_recipe.json")
    args = ap.parse_args()

    rows = []
    runs = ROOT / args.runs
    runs.mkdir(parents=True, exist_ok=True)
    shared_sets = BASE + [f"ppo.learning_rate={args.lr}"] + args.set
    for name, extra in VARIANTS.items():
        if args.only and name not in args.only and slug(name) not in args.only:
            continue
        out = runs / slug(name)
        compare = out / "eval" / "compare.json"
        seconds = {}
        if args.fresh or not compare.is_file():
            sets = [a for s in shared_sets + extra for a in ("--set", s)]
            log = runs / f"{slug(name)}.log"
            seconds["train"] = run(DETOXRL + ["train", "--data", args.data, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                                              "--output-dir", str(out), "--overwrite", "--no-progress", *sets], log)
            seconds["evaluate"] = run(DETOXRL + ["evaluate", "--run", str(out), "--num-samples", str(args.prompts),
                                                 "--samples-per-prompt", str(args.k), "--no-progress", "--fresh"], log)
        head = json.loads(compare.read_text())
        rows.append(row(name, head, seconds))
        print(f"{name}: {head['detoxification']['status']}", flush=True)

    keys = [k for k in rows[0] if k not in ("variant", "seconds")] if rows else []
    print("\n| measure | " + " | ".join(r["variant"] for r in rows) + " |")
    print("| --- | " + " | ".join("---" for _ in rows) + " |")
    for k in keys:
        print(f"| {k} | " + " | ".join(fmt(r[k]) for r in rows) + " |")
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "settings": {"data": args.data, "steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.lr,
                     "prompts": args.prompts, "k": args.k, "common": shared_sets},
        "variants": VARIANTS,
        "rows": rows,
        "note": "relative changes in % of the mean (negative = less toxic) with paired bootstrap 95% intervals over prompts",
    }
    path = ROOT / args.json_out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
