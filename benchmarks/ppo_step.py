"""One PPO step, detoxrl against trl 0.11.4 on identical work (issue 4).

    python benchmarks/ppo_step.py --workload w1 --steps 3 --json-out benchmarks/results/w1.json
    python benchmarks/ppo_step.py --workload w1 --dtype bf16 --json-out benchmarks/results/w1-bf16.json
    python benchmarks/ppo_step.py --workload w2 --steps 3 --systems detoxrl,trl-batched
    python benchmarks/ppo_step.py --workload w1 --dtype bf16 --systems detoxrl,detoxrl@micro2,trl-batched

``detoxrl@microN`` is detoxrl with ``ppo.micro_batch_size=N``: the update's minibatch of 4 in
forward/backward passes of N rows (the same gradients, less activation memory).

Run it with the main venv (.venv): it builds the model cache once (benchmarks/.cache, gitignored),
creates benchmarks/.venv-trl when a trl system is asked for and missing, measures the machine's fp32
matmul peak, counts the update phase's FLOPs, then runs every system as its own process, rotating the
order on every repetition, and prints a table and writes JSON:

    {"workload": "w1",
     "systems": {"detoxrl": {"step_s", "generate_s", "score_s", "update_s", "peak_rss_mb", ...},
                 "trl-notebook-loop": {...}, "trl-batched": {...}},
     "dtype": "fp32" | "bf16",         # the policies' dtype (every system the same; reward fp32)
     "cpu_flags": [...], "supported": bool,   # bf16 only where native; else every system "not supported"
     "matmul_peak_gflops": float,      # GFLOP/s, 2048x2048 matmul in that dtype, 2 threads, best of 10
     "update_gflops": float}           # GFLOP of one update phase (median over the measured steps)

Every time is the median over the steps after the first (warm-up) step of a run, then the median
over repetitions; peak RSS is the largest over repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BENCH = common.BENCH_DIR
REPO = common.REPO_DIR
TRL_VENV = BENCH / ".venv-trl"
MAIN_VENV = REPO / ".venv"

DEFAULT_SYSTEMS = ("detoxrl", "trl-notebook-loop", "trl-batched")
MICRO_SYSTEMS = ("detoxrl@micro2", "detoxrl@micro1")  # ppo.micro_batch_size = 2, 1
SYSTEMS = ("detoxrl", *MICRO_SYSTEMS, "trl-notebook-loop", "trl-batched")
PEERS = ("trl-notebook-loop", "trl-batched")
PHASES = ("generate_s", "score_s", "update_s", "step_s")


def is_detoxrl(system: str) -> bool:
    """detoxrl itself or one of its micro-batch variants."""
    return system == "detoxrl" or system in MICRO_SYSTEMS


def venv_python(venv: Path) -> str:
    py = venv / "bin" / "python"
    return str(py) if py.exists() else sys.executable


def system_command(system: str, args, json_out: Path) -> list[str]:
    common_args = [
        "--workload", args.workload,
        "--steps", str(args.steps),
        "--new-tokens", str(args.new_tokens),
        "--cache", str(args.cache),
        "--threads", str(args.threads),
        "--seed", str(args.seed),
        "--dtype", args.dtype,
        "--json-out", str(json_out),
    ]
    if args.data:
        common_args += ["--data", str(args.data)]
    if is_detoxrl(system):
        micro = ["--micro-batch-size", system.removeprefix("detoxrl@micro")] if system in MICRO_SYSTEMS else []
        return [venv_python(MAIN_VENV), str(BENCH / "run_detoxrl.py"), *common_args, *micro]
    mode = {"trl-notebook-loop": "notebook-loop", "trl-batched": "batched"}[system]
    return [str(TRL_VENV / "bin" / "python"), str(BENCH / "peer_trl.py"), "--mode", mode, *common_args]


def ensure_trl_env() -> None:
    stamp = TRL_VENV / ".trl-env-installed"
    if stamp.exists():
        return
    print(f"creating the trl environment ({TRL_VENV}) ...", flush=True)
    subprocess.run(["bash", str(BENCH / "setup_trl_env.sh")], check=True)


def run_system(system: str, args, rep: int, raw_dir: Path) -> dict:
    if args.wait_idle > 0:
        busy = common.wait_until_idle(args.wait_idle)
        if busy is not None and busy >= 0.15:
            print(f"warning: the cores are still {100 * busy:.0f}% busy with other processes; running anyway", flush=True)
    json_out = raw_dir / f"{args.workload}-{args.dtype}-{system}-rep{rep}.json"
    json_out.unlink(missing_ok=True)
    cmd = system_command(system, args, json_out)
    print(f"\n=== {system} (repetition {rep + 1}/{args.repeats}) ===\n$ {' '.join(cmd)}", flush=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, timeout=args.timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t0
    if rc != 0 or not json_out.exists():
        return {"error": f"exit {rc} after {wall:.0f} s (no result)", "wall_s": wall}
    result = json.loads(json_out.read_text())
    result["wall_s"] = wall
    return result


def aggregate(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"] if runs else "not run"}
    out = {k: common.median(r[k] for r in ok) for k in PHASES}
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    out["repetitions"] = len(ok)
    others = [r["cpu_share"]["others_fraction"] for r in ok if "others_fraction" in r.get("cpu_share", {})]
    if others:
        out["others_cpu_fraction"] = max(others)
    for key in ("versions", "params", "trainable_params", "loadavg_start", "loadavg_end"):
        if key in ok[-1]:
            out[key] = ok[-1][key]
    return out


def fmt(x, spec=".2f") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return format(x, spec)


def print_table(result: dict) -> None:
    systems = result["systems"]
    names = [s for s in SYSTEMS if s in systems and "error" not in systems[s]]
    peers = [p for p in PEERS if p in names]
    ours = [s for s in names if is_detoxrl(s)]
    cols = names + [f"{d}/{p}" for d in ours for p in peers]
    width = max([14] + [len(c) + 2 for c in cols])
    print(f"\nPPO step, workload {result['workload']} ({common.WORKLOADS[result['workload']]['description']}), "
          f"policy in {result['dtype']}; CPU flags: {' '.join(result['cpu_flags']) or '-'}")
    if not result.get("supported", True):
        for s in systems:
            print(f"{s:<22}{result['dtype']}: not supported on this CPU (no AVX512-BF16 or AMX: bf16 would be emulated)")
        return
    print(f"batch {common.PPO_SETTINGS['batch_size']}, {result['new_tokens']} new tokens, "
          f"medians over steps 2..{result['steps']} (step 1 is warm-up)\n")
    print("".ljust(22) + "".join(c.rjust(width) for c in cols))
    rows = [("generate (s)", "generate_s"), ("score (s)", "score_s"), ("update (s)", "update_s"),
            ("step (s)", "step_s"), ("peak RSS (MB)", "peak_rss_mb")]
    if any("others_cpu_fraction" in systems[s] for s in names):
        rows.append(("others' CPU share", "others_cpu_fraction"))
    for label, key in rows:
        line = label.ljust(22)
        for s in names:
            line += fmt(systems[s].get(key), ".0f" if key == "peak_rss_mb" else ".2f").rjust(width)
        if key != "others_cpu_fraction":
            for d in ours:
                for p in peers:
                    a, b = systems[d].get(key), systems[p].get(key)
                    line += (fmt(a / b, ".3f") if a and b else "-").rjust(width)
        print(line)
    if result.get("update_gflops"):
        detoxrl_note = (": no old-policy pass" if result["dtype"] == "fp32" else
                        ": in bf16 its old-policy pass is teacher-forced on the prompt pass decoding made, the response"
                        " positions only (ppo.capture_logprobs=auto); it runs right after decoding and is timed in the update")
        line = "update GFLOP/s".ljust(22)
        for s in names:
            line += fmt(systems[s].get("update_gflop_per_s"), ".1f").rjust(width)
        print(line)
        line = "  % of matmul peak".ljust(22)
        for s in names:
            line += fmt(100 * systems[s].get("update_fraction_of_peak", float("nan")), ".1f").rjust(width)
        print(line)
        print(f"\nupdate phase: {result['update_gflops']:.0f} GFLOP (analytic, see benchmarks/common.py; detoxrl executes "
              f"{result['update_gflops_detoxrl']:.0f} of them{detoxrl_note}); "
              f"{result['dtype']} matmul peak {result['matmul_peak_gflops']:.1f} GFLOP/s (2048x2048, {result['threads']} threads)")
    for s, v in systems.items():
        if "error" in v:
            print(f"{s}: {v['error']}")
    print("ratio columns: detoxrl time / peer time (below 1: detoxrl is faster)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="PPO step benchmark: detoxrl vs trl 0.11.4 (issue 4)")
    ap.add_argument("--workload", choices=sorted(common.WORKLOADS), default="w1")
    ap.add_argument("--steps", type=int, default=3, help="PPO steps per run; the first is the warm-up")
    ap.add_argument("--new-tokens", type=int, default=64, help="every response is forced to exactly N tokens")
    ap.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help=f"comma-separated subset of {', '.join(SYSTEMS)}")
    ap.add_argument("--repeats", type=int, default=1, help="runs per system; the order rotates every repetition")
    ap.add_argument("--cache", default=str(common.DEFAULT_CACHE))
    ap.add_argument("--data", default=None, help="DialogSum train.csv (default: shared/ beside the repo)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=sorted(common.DTYPES), default="fp32",
                    help="the policies' dtype, the same for every system (the reward stays fp32); bf16 runs only "
                         "where it is native (a GPU, or a CPU with AVX512-BF16/AMX)")
    ap.add_argument("--seed", type=int, default=common.SEED)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per system run")
    ap.add_argument("--raw-dir", default=str(BENCH / "results" / "raw"), help="where each run's JSON goes")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="before each run, wait up to SECONDS for other processes to leave the cores idle")
    ap.add_argument("--no-flops", action="store_true", help="skip the matmul peak and FLOP count")
    args = ap.parse_args(argv)

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        ap.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    args.cache = Path(args.cache).resolve()
    raw_dir = Path(args.raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)

    supported = args.dtype == "fp32" or common.native_bf16()
    if supported and not common.cache_ready(args.workload, args.cache):
        print(f"building the {args.workload} model cache in {args.cache} ...", flush=True)
        common.build_cache(args.workload, args.cache, args.data)
    if supported and any(s in PEERS for s in systems):
        ensure_trl_env()

    load = os.getloadavg()
    if load[0] > 0.5:
        print(f"warning: load average {load[0]:.2f} before the benchmark: other processes share the cores "
              "and will slow every system", flush=True)

    result: dict = {
        "workload": args.workload,
        "dtype": args.dtype,
        "cpu_flags": common.cpu_flags(),
        "supported": supported,
        "steps": args.steps,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "repeats": args.repeats,
        "systems": {},
        "matmul_peak_gflops": None,
        "update_gflops": None,
        "loadavg_start": load,
    }
    if not result["supported"]:
        result["systems"] = {s: {"error": "not supported on this CPU"} for s in systems}
        print_table(result)
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.json_out}")
        return 0
    torch_dtype = common.DTYPES[args.dtype]
    per_step_flops = []
    if not args.no_flops:
        if args.wait_idle > 0:
            common.wait_until_idle(args.wait_idle)
        result["matmul_peak_gflops"] = common.measure_matmul_peak_gflops(threads=args.threads, dtype=torch_dtype)
        print(f"{args.dtype} matmul peak: {result['matmul_peak_gflops']:.1f} GFLOP/s", flush=True)
        per_step_flops = common.workload_update_flops(args.workload, args.cache, args.steps, args.new_tokens, args.data)
        measured_flops = common.measured(per_step_flops)
        result["update_gflops"] = common.median(f["total"] for f in measured_flops) / 1e9
        # detoxrl skips the old-policy pass where it captures log-probs while decoding (fp32); in bf16
        # (ppo.capture_logprobs=auto) its old-policy pass is teacher-forced on decoding's prompt pass
        # (response positions only); the trainer times it with the update, as trl's.
        detoxrl_key = "total_without_old_pass" if args.dtype == "fp32" else "total_old_pass_on_response"
        result["update_gflops_detoxrl"] = common.median(f[detoxrl_key] for f in measured_flops) / 1e9
        result["update_flops_per_step"] = per_step_flops
        print(f"update phase: {result['update_gflops']:.0f} GFLOP per step (median of the measured steps)", flush=True)

    runs: dict[str, list[dict]] = {s: [] for s in systems}
    for rep in range(args.repeats):
        k = rep % len(systems)
        order = systems[k:] + systems[:k]  # rotate: each system takes each position in turn
        for s in order:
            runs[s].append(run_system(s, args, rep, raw_dir))

    for s in systems:
        agg = aggregate(runs[s])
        if "error" not in agg and result["update_gflops"]:
            # per-run: FLOPs of each measured step / its update time, then the median
            rates = []
            for r in runs[s]:
                if "error" in r:
                    continue
                steps = common.measured(r["per_step"])
                # each system's rate counts the FLOPs it executes: detoxrl skips the old-policy pass
                key = detoxrl_key if is_detoxrl(s) else "total"
                rates += [per_step_flops[st["step"]][key] / 1e9 / st["update_s"] for st in steps
                          if st["step"] < len(per_step_flops)]
            agg["update_gflop_per_s"] = common.median(rates)
        result["systems"][s] = agg
    if not args.no_flops:
        # measured again after the runs: the better of the two is the machine's peak (a busy
        # machine only lowers it)
        after = common.measure_matmul_peak_gflops(threads=args.threads, dtype=torch_dtype)
        result["matmul_peak_gflops_before_after"] = [result["matmul_peak_gflops"], after]
        result["matmul_peak_gflops"] = max(result["matmul_peak_gflops"], after)
        for s in systems:
            if "update_gflop_per_s" in result["systems"][s]:
                result["systems"][s]["update_fraction_of_peak"] = (
                    result["systems"][s]["update_gflop_per_s"] / result["matmul_peak_gflops"])
    result["loadavg_end"] = os.getloadavg()
    result["runs"] = runs

    print_table(result)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0 if all("error" not in result["systems"][s] for s in systems) else 1


if __name__ == "__main__":
    sys.exit(main())
