"""Toxicity against quality over training: each kept checkpoint of a run, evaluated as the run was.

For every checkpoint of RUN (train with ``--set run.keep_checkpoints=0`` to keep them all) this runs
``detoxrl evaluate --run RUN --checkpoint STEP`` (the starting policy's records of RUN/eval reused, so
every point is paired with the same before-summaries), then reads each comparison: the primary measure
of each primary judge (its relative change with the 95% interval), the greedy summaries' ROUGE-L and
faithfulness change, and the KL to the reference on the adapter's own samples. It writes a table, a
JSON file and the two-panel plot of the run's report (detoxrl.report_plots.plot_frontier): the primary measure
against the KL, and against the quality change. ``detoxrl report RUN`` draws the same plot.

    .venv/bin/python benchmarks/detox_frontier.py runs/seeds/seed-1 \\
        --json-out benchmarks/results/detox_frontier.json --plot docs/detox_frontier.png

RUN/eval must hold the run's own evaluation (``detoxrl evaluate --run RUN``, or the demo's); its final
adapter is the last point. Finished checkpoint evaluations are reused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DETOXRL = [sys.executable, "-m", "detoxrl.cli"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder with checkpoints and its own evaluation in RUN/eval")
    ap.add_argument("--json-out", default="benchmarks/results/detox_frontier.json")
    ap.add_argument("--plot", default="docs/detox_frontier.png")
    args = ap.parse_args(argv)
    from detoxrl.checkpoint import STEP_FOLDER, list_checkpoints
    from detoxrl.report import frontier_points, load_run
    from detoxrl.report_plots import plot_frontier

    run = Path(args.run)
    log = run / "frontier.log"
    last = load_run(run).metrics.steps()[-1]
    t0 = time.perf_counter()
    for ckpt in list_checkpoints(run):
        step = int(STEP_FOLDER.fullmatch(ckpt.name).group(1))
        if step == last:
            continue  # final/ is the last checkpoint's adapter: the run's own evaluation (RUN/eval)
        if not (run / "eval-checkpoints" / ckpt.name / "compare.json").is_file():
            common.run_logged([*DETOXRL, "evaluate", "--run", str(run), "--checkpoint", str(step), "--no-progress"], log, cwd=ROOT)
    points = frontier_points(load_run(run))
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
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    plot_frontier(points, Path(args.plot), f"{run.name}: toxicity against KL and quality over training")
    print(f"wrote {args.json_out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
