"""Toxicity against quality over training: each kept checkpoint of a run, evaluated as the run was.

For every checkpoint of RUN (train with ``--set run.keep_checkpoints=0`` to keep them all) this runs
``detoxrl evaluate --run RUN --checkpoint STEP`` (the starting policy's records of RUN/eval reused, so
every point is paired with the same before-summaries), then reads each comparison: the primary measure
of each primary judge (its relative change with the 95% interval), the greedy summaries' ROUGE-L and
faithfulness change, and the KL to the reference on the adapter's own samples. It writes a table, a
JSON file and a two-panel plot: the primary measure against the KL, and against the quality change.

    .venv/bin/python benchmarks/detox_frontier.py runs/seeds/seed-1 \\
        --json-out benchmarks/results/detox_frontier.json --plot docs/detox_frontier.png

RUN/eval must hold the run's own evaluation (``detoxrl evaluate --run RUN``, or the demo's); its final
adapter is the last point. Finished checkpoint evaluations are reused.
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


def point(step: int | str, head: dict) -> dict:
    detox = head["detoxification"]
    gate = detox.get("quality_gate") or {}
    kl = detox.get("kl_to_reference") or {}
    return {
        "step": step,
        "verdict": detox["status"],
        "primary": {m["judge"]: {"change_pct": -100 * m["reduction"], "low_pct": -100 * m["high"], "high_pct": -100 * m["low"],
                                 "p_adjusted": m["p_adjusted"]}
                    for m in detox["primary"]["measures"] if m.get("evaluated")},
        "faithfulness_diff": (gate.get("faithfulness") or {}).get("diff"),
        "rouge_l_diff_points": (gate.get("rouge_l") or {}).get("diff"),
        "kl_sampled_nats": kl.get("mean"),
    }


def plot(points: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judges = list(dict.fromkeys(j for p in points for j in p["primary"]))
    quality_key = "rouge_l_diff_points" if any(p["rouge_l_diff_points"] is not None for p in points) else "faithfulness_diff"
    quality_name = "ROUGE-L change (points, greedy)" if quality_key == "rouge_l_diff_points" else "faithfulness change (greedy)"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for judge in judges:
        pts = [p for p in points if judge in p["primary"]]
        y = [p["primary"][judge]["change_pct"] for p in pts]
        err = [[p["primary"][judge]["change_pct"] - p["primary"][judge]["low_pct"] for p in pts],
               [p["primary"][judge]["high_pct"] - p["primary"][judge]["change_pct"] for p in pts]]
        for ax, key in ((axes[0], "kl_sampled_nats"), (axes[1], quality_key)):
            x = [p[key] for p in pts]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=judge.split(":")[-1])
            for xi, yi, p in zip(x, y, pts):
                ax.annotate(str(p["step"]), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for ax, xlabel in ((axes[0], "KL to the reference (nats per summary, sampled)"), (axes[1], quality_name)):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("expected max toxicity, change (%)")
        ax.grid(alpha=0.3)
    axes[1].axvline(0, color="grey", lw=0.8)
    axes[0].legend(title="judge (95% CI)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder with checkpoints and its own evaluation in RUN/eval")
    ap.add_argument("--json-out", default="benchmarks/results/detox_frontier.json")
    ap.add_argument("--plot", default="docs/detox_frontier.png")
    args = ap.parse_args(argv)
    from detoxrl.checkpoint import STEP_FOLDER, list_checkpoints

    run = Path(args.run)
    log = run / "frontier.log"
    final = json.loads((run / "eval" / "compare.json").read_text())
    steps = [int(STEP_FOLDER.fullmatch(p.name).group(1)) for p in list_checkpoints(run)]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    points = []
    t0 = time.perf_counter()
    for step in steps:
        if step == last:
            continue  # final/ is the last checkpoint's adapter: the run's own evaluation
        out = run / "eval-checkpoints" / f"step-{step:06d}"
        if not (out / "compare.json").is_file():
            common.run_logged([*DETOXRL, "evaluate", "--run", str(run), "--checkpoint", str(step), "--no-progress"], log, cwd=ROOT)
        points.append(point(step, json.loads((out / "compare.json").read_text())))
    points.append(point(last, final))
    result = {"benchmark": "detox_frontier", "date": time.strftime("%Y-%m-%d"), "run": str(run),
              "command": "python benchmarks/detox_frontier.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": {"native_bf16": common.native_bf16()}, "points": points,
              "wall_seconds": round(time.perf_counter() - t0, 1)}
    for p in points:
        prim = "; ".join(f"{j.split(':')[-1]} {v['change_pct']:+.1f}% [{v['low_pct']:+.1f}, {v['high_pct']:+.1f}]"
                         for j, v in p["primary"].items())
        faith = "–" if p["faithfulness_diff"] is None else f"{p['faithfulness_diff']:+.3f}"
        kl = "–" if p["kl_sampled_nats"] is None else f"{p['kl_sampled_nats']:.2f}"
        print(f"step {p['step']:>4}: {p['verdict']:<26} {prim}; faithfulness {faith}; KL {kl}")
    common.write_result(args.json_out, result)
    plot(points, Path(args.plot), f"{run.name}: toxicity against KL and quality over training")
    print(f"wrote {args.json_out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
