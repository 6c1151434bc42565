"""Does the demo's verdict hold across seeds? ``detoxrl demo`` on N seeds, one table, one JSON.

Each seed is one run of the command a new user runs first (``detoxrl demo``), with its training seed
(``--seed S``) and its evaluation seed (``evaluation.seed = 1234 + S``: other samples, before and
after alike) both changed. For each seed the table gives the pre-declared verdict, the primary measures
(each primary judge's expected maximum toxicity over the sampled pass's k samples, with its paired
bootstrap 95% interval and its Holm-adjusted p-value), the greedy summaries' faithfulness and ROUGE-L
change (ROUGE-L only where the data has reference summaries), the KL to the reference on the adapter's
own samples and the wall time. Then a pooled estimate: per held-out prompt, the maximum over its k
samples averaged over the seeds, before and after, with a paired bootstrap over prompts.

    .venv/bin/python benchmarks/detox_seeds.py --json-out benchmarks/results/detox_seeds.json

A seed whose run folder already holds ``eval/compare.json`` is not run again (``--fresh`` reruns it);
its verdict is recomputed from its records with this detoxrl (``detoxrl compare --run``), so a change
of the verdict rule needs no new training. ``--jobs 2`` runs two seeds at once, one thread each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DETOXRL = [sys.executable, "-m", "detoxrl.cli"]
EVAL_SEED = 1234  # the evaluation.seed default; seed S evaluates with EVAL_SEED + S


def demo_command(seed: int, run_dir: Path, threads: int | None, extra: list[str]) -> list[str]:
    cmd = [*DETOXRL, "demo", "--seed", str(seed), "--set", f"evaluation.seed={EVAL_SEED + seed}",
           "--output-dir", str(run_dir), "--no-progress", "--overwrite"]
    if threads:
        cmd += ["--set", f"run.num_threads={threads}"]
    for setting in extra:
        cmd += ["--set", setting]
    return cmd


def run_seed(seed: int, out_root: Path, threads: int | None, extra: list[str], fresh: bool) -> dict:
    run_dir = out_root / f"seed-{seed}"
    compare_json = run_dir / "eval" / "compare.json"
    log = out_root / f"seed-{seed}.log"
    seconds = None
    if fresh or not compare_json.is_file():
        out_root.mkdir(parents=True, exist_ok=True)
        seconds = common.run_logged(demo_command(seed, run_dir, threads, extra), log, cwd=ROOT)
        (run_dir / "demo_seconds.json").write_text(json.dumps({"seconds": seconds, "threads": threads}))
    elif (run_dir / "demo_seconds.json").is_file():
        seconds = json.loads((run_dir / "demo_seconds.json").read_text())["seconds"]
    # The verdict of this detoxrl, from the run's records and its config's verdict rule.
    common.run_logged([*DETOXRL, "compare", "--run", str(run_dir)], log, cwd=ROOT)
    return row(seed, run_dir, json.loads(compare_json.read_text()), seconds)


def _interval(d: dict | None, scale: float, digits: int) -> dict | None:
    if not d or d.get("diff") is None:
        return None
    return {k: round(scale * d[k], digits) for k in ("diff", "low", "high")}


def row(seed: int, run_dir: Path, head: dict, seconds: float | None) -> dict:
    detox = head["detoxification"]
    gate = detox.get("quality_gate") or {}
    primary = [
        {"judge": m["judge"], "change_pct": round(-100 * m["reduction"], 2), "low_pct": round(-100 * m["high"], 2),
         "high_pct": round(-100 * m["low"], 2), "p": m["p"], "p_adjusted": m["p_adjusted"], "significant": m["significant"]}
        for m in detox["primary"]["measures"] if m.get("evaluated")
    ]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_s = sum(float(m.get("time/step_s", 0.0) or 0.0) for m in metrics)
    kl = detox.get("kl_to_reference") or {}
    return {
        "seed": seed,
        "evaluation_seed": EVAL_SEED + seed,
        "verdict": detox["status"],
        "primary_measure": detox["primary"]["measure"],
        "primary": primary,
        "faithfulness": _interval(gate.get("faithfulness"), 1.0, 4),
        "rouge_l_points": _interval(gate.get("rouge_l"), 1.0, 2),
        "quality_gate_passed": gate.get("passed"),
        "kl_sampled_nats": None if kl.get("mean") is None else round(kl["mean"], 3),
        "prompts": head.get("prompts"),
        "samples_per_prompt": (head.get("sampled") or {}).get("samples_per_prompt"),
        "demo_seconds": None if seconds is None else round(seconds, 1),
        "training_seconds": round(train_s, 1),
        "run_dir": _shown(run_dir),
    }


def _shown(path: Path) -> str:
    """A path as the JSON records it: relative to the repository when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _maxima(path: Path, judge: str) -> dict[int, float]:
    """Per prompt index, the judge's maximum over the prompt's samples in one sampled evaluation file."""
    out: dict[int, float] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            v = (r.get("judges") or {}).get(judge)
            if v is not None:
                out[r["index"]] = max(out.get(r["index"], float("-inf")), float(v))
    return out


def pooled(rows: list[dict]) -> dict:
    """Per primary judge: each prompt's expected-maximum term averaged over the seeds, before and after,
    then the paired bootstrap of the relative change over prompts (detoxrl.stats); and the per-seed spread."""
    from detoxrl.stats import paired_bootstrap_reduction, prompts_for_power

    out = {}
    judges = list(dict.fromkeys(p["judge"] for r in rows for p in r["primary"]))
    for judge in judges:
        before, after = [], []
        for r in rows:
            ev = ROOT / r["run_dir"] / "eval"  # ROOT / an absolute path is that path
            before.append(_maxima(ev / "before-sampled.jsonl", judge))
            after.append(_maxima(ev / "after-sampled.jsonl", judge))
        prompts = sorted(set.intersection(*(set(d) for d in before + after)))
        b = np.asarray([np.mean([d[i] for d in before]) for i in prompts])
        a = np.asarray([np.mean([d[i] for d in after]) for i in prompts])
        red = paired_bootstrap_reduction(b, a, n_boot=2000, seed=0)
        per_seed = [p["change_pct"] for r in rows for p in r["primary"] if p["judge"] == judge]
        # What one demo would need: prompts for 80% power at Holm's first level (0.05 / judges), from the
        # per-prompt differences of every seed's own evaluation (one seed's spread, the seeds' mean change).
        diffs = np.concatenate([[bs[i] - af[i] for i in prompts] for bs, af in zip(before, after)])
        needed = prompts_for_power(diffs, alpha=0.05 / len(judges), power=0.8)
        out[judge] = {
            "expected_max_before": round(float(b.mean()), 5),
            "expected_max_after": round(float(a.mean()), 5),
            "change_pct": round(-100 * red["reduction"], 2),
            "low_pct": round(-100 * red["high"], 2),
            "high_pct": round(-100 * red["low"], 2),
            "p": red["p"],
            "prompts": len(prompts),
            "per_seed_change_pct": {"mean": round(float(np.mean(per_seed)), 2), "min": min(per_seed), "max": max(per_seed)},
            "prompts_for_80pct_power": None if needed is None else round(needed),
        }
    faith = [r["faithfulness"]["diff"] for r in rows if r["faithfulness"]]
    kl = [r["kl_sampled_nats"] for r in rows if r["kl_sampled_nats"] is not None]
    return {"expected_max": out, "faithfulness_diff_mean": round(float(np.mean(faith)), 4) if faith else None,
            "kl_sampled_mean": round(float(np.mean(kl)), 3) if kl else None}


def table(rows: list[dict]) -> str:
    judges = list(dict.fromkeys(p["judge"] for r in rows for p in r["primary"]))
    head = ["seed", "verdict", *[f"{j.split(':')[-1]} exp. max % [CI] (p adj.)" for j in judges], "faithfulness", "KL", "demo s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        by = {p["judge"]: p for p in r["primary"]}
        cells = [str(r["seed"]), r["verdict"]]
        for j in judges:
            p = by.get(j)
            cells.append("–" if p is None else f"{p['change_pct']:+.1f} [{p['low_pct']:+.1f}, {p['high_pct']:+.1f}] ({p['p_adjusted']:.3g})")
        f = r["faithfulness"]
        cells.append("–" if f is None else f"{f['diff']:+.3f} [{f['low']:+.3f}, {f['high']:+.3f}]")
        cells.append("–" if r["kl_sampled_nats"] is None else f"{r['kl_sampled_nats']:.2f}")
        cells.append("–" if r["demo_seconds"] is None else f"{r['demo_seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out-root", default="runs/seeds", help="one run folder per seed: OUT_ROOT/seed-S")
    ap.add_argument("--json-out", default="benchmarks/results/detox_seeds.json")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once (each with 2 / jobs threads)")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting added to every seed's demo (the recipe under test)")
    ap.add_argument("--fresh", action="store_true", help="rerun seeds whose run folder is complete")
    ap.add_argument("--keep-checkpoints", action="store_true",
                    help="keep every checkpoint (run.keep_checkpoints=0: changes nothing computed) for detox_frontier.py")
    args = ap.parse_args(argv)
    out_root = (ROOT / args.out_root) if not Path(args.out_root).is_absolute() else Path(args.out_root)
    threads = max(1, 2 // args.jobs) if args.jobs > 1 else None
    extra = args.extra + (["run.keep_checkpoints=0"] if args.keep_checkpoints else [])
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda s: run_seed(s, out_root, threads, extra, args.fresh), args.seeds))
    counts = {v: sum(r["verdict"] == v for r in rows) for v in dict.fromkeys(r["verdict"] for r in rows)}
    result = {
        "benchmark": "detox_seeds",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/detox_seeds.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"native_bf16": common.native_bf16(), "cpu_flags": common.cpu_flags(), "jobs": args.jobs},
        "recipe": "detoxrl demo" + "".join(f" --set {s}" for s in args.extra),
        "seeds": rows,
        "verdicts": counts,
        "pooled": pooled(rows),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    print(table(rows))
    print(f"verdicts: {counts}")
    for judge, p in result["pooled"]["expected_max"].items():
        print(f"pooled {judge}: expected max {p['expected_max_before']:.4f} -> {p['expected_max_after']:.4f}, "
              f"{p['change_pct']:+.1f}% [{p['low_pct']:+.1f}, {p['high_pct']:+.1f}] (p {p['p']:.3g}, {p['prompts']} prompts); "
              f"one demo would need {p['prompts_for_80pct_power']} prompts for 80% power at Holm's level")
    common.write_result(args.json_out, result)
    print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
