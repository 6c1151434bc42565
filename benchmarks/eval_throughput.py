"""Evaluation throughput: ``detoxrl evaluate`` against the notebook's per-sample loop (issue 4).

    .venv/bin/python benchmarks/eval_throughput.py --workload w1 --prompts 64 --json-out benchmarks/results/eval-w1.json

Both systems summarize the same first 64 notebook prompts with the workload's policy (W1: random
T5 with flan-t5-base's configuration + LoRA; W2: SmolLM2-135M + LoRA), pure sampling, at most N new
tokens (default 64; a random T5 almost never emits EOS, so both write N tokens: the JSON has the
mean), and score each summary for toxicity with W1's random RoBERTa-base-shaped classifier on
``query + summary``, as the notebook does. Rows:

* ``notebook-loop``: ``benchmarks/eval_notebook_loop.py`` in benchmarks/.venv-trl (the notebook's
  stack), one prompt at a time.
* ``detoxrl``: ``detoxrl.evaluate.evaluate_policy`` on the starting policy (batches of
  ``--batch-size``, records written incrementally), ROUGE, faithfulness and judge off: the same work.
* ``detoxrl@64``: the same with evaluation batches of 64 (``--set evaluation.batch_size=64``): on
  this CPU a [64 x 768] matmul costs ~1.6x a [16 x 768] one, so bigger batches pay. The classifier
  keeps its own batch (``reward.batch_size``, ``--reward-batch-size``, default 16), as in ``detoxrl
  evaluate``: it sorts its texts by length, and a batch of 64 would pad them all to the longest
  (until 2026-12-07 this benchmark set it to the evaluation batch: 64 query + summary texts scored in
  27.9 s in one batch against 18.8 s in batches of 16).
* ``detoxrl+kl``: the same on the trainable adapter, which adds the KL to the reference (one more
  forward pass per batch); what ``detoxrl evaluate --run`` does for the trained side.

Each system runs as its own process; the table gives summaries per second and the ratio to the
notebook loop; the JSON holds every number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BENCH = common.BENCH_DIR
TRL_PY = BENCH / ".venv-trl" / "bin" / "python"
MAIN_PY = common.REPO_DIR / ".venv" / "bin" / "python"


def detoxrl_side(args) -> dict:
    """In this process: evaluate_policy on the first ``--prompts`` notebook prompts."""
    import torch

    torch.set_num_threads(args.threads)
    common.seed_everything(args.seed)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from detoxrl.config import load_config
    from detoxrl.config import EvalConfig
    from detoxrl.evaluate import evaluate_policy
    from detoxrl.policy import POLICY_ADAPTER, REFERENCE_ADAPTER, load_policy
    from detoxrl.prompts import build_prompts
    from detoxrl.rewards import scorer_from_config

    memory = common.PhaseMemory()
    w = common.WORKLOADS[args.workload]
    policy_dir, reward_dir = common.workload_dirs(args.workload, args.cache)
    cfg = load_config(
        "seed",
        overrides={
            "data": {
                "source": str(common.dialogsum_path(args.data)),
                "max_rows": 2 * args.prompts,
                "max_prompt_tokens": 4096,
                "use_chat_template": w["chat_template"],
                "shuffle": False,
            },
            "policy": {"model": str(policy_dir), "dtype": common.DTYPES[args.dtype], "lora_r": w["lora"]["r"], "lora_alpha": w["lora"]["lora_alpha"],
                       "lora_dropout": w["lora"]["lora_dropout"], "lora_target_modules": w["lora"]["target_modules"]},
            "reward": {"model": str(reward_dir), "label": common.REWARD_LABEL, "toxic_label": "hate", "input": "query+response", "batch_size": args.reward_batch_size},
        },
    )
    policy = load_policy(cfg.policy)
    scorer = scorer_from_config(cfg.reward)
    examples = build_prompts(cfg.data, policy.tokenizer).train[: args.prompts]
    expected = common.notebook_prompts(args.prompts, args.data)
    if [e.prompt for e in examples] != expected:
        raise SystemExit("detoxrl's prompts differ from the notebook loop's: the comparison would not be on the same work")
    adapter = POLICY_ADAPTER if args.side == "detoxrl+kl" else REFERENCE_ADAPTER
    if adapter == POLICY_ADAPTER:  # a trained adapter differs from the reference: make it so
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for name, p in policy.model.named_parameters():
                if f".{POLICY_ADAPTER}." in name and "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 1e-3)
    settings = EvalConfig(num_samples=args.prompts, do_sample=True, max_new_tokens=args.new_tokens,
                          batch_size=args.batch_size, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with common.timed({}, "evaluate_s"):
            summary = evaluate_policy(policy, examples, scorer, None, Path(tmp) / "eval.jsonl", adapter=adapter,
                                      settings=settings, rouge=False, faithfulness=False, progress=False,
                                      reward_input="query+response")
        wall = time.perf_counter() - t0
    return {
        "system": args.side,
        "workload": args.workload,
        "prompts": summary["n"],
        "batch_size": args.batch_size,
        "wall_s": wall,
        "summaries_per_s": summary["n"] / wall,
        "mean_new_tokens": summary.get("length_tokens"),
        "toxicity_mean": summary["toxicity"]["mean"],
        "peak_rss_mb": common.peak_rss_mb(),
        "peak_rss_mb_by_phase": memory.stop(),
    }


def run_system(system: str, args, out: Path) -> dict:
    shared = ["--workload", args.workload, "--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens),
              "--cache", str(args.cache), "--threads", str(args.threads), "--seed", str(args.seed), "--dtype", args.dtype]
    if args.data:
        shared += ["--data", str(args.data)]
    if system == "notebook-loop":
        if not TRL_PY.exists():
            raise SystemExit("benchmarks/.venv-trl is missing: run bash benchmarks/setup_trl_env.sh first")
        cmd = [str(TRL_PY), str(BENCH / "eval_notebook_loop.py"), *shared, "--json-out", str(out)]
    else:  # "detoxrl", "detoxrl+kl", optionally "@N" for an evaluation batch of N (default --batch-size)
        side, _, batch = system.partition("@")
        py = str(MAIN_PY) if MAIN_PY.exists() else sys.executable
        cmd = [py, __file__, "--side", side, "--batch-size", batch or str(args.batch_size),
               "--reward-batch-size", str(args.reward_batch_size), *shared, "--json-out", str(out)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    print(f"running {system} ...", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=sorted(common.WORKLOADS), default="w1")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16, help="detoxrl's evaluation batch (evaluation.batch_size)")
    ap.add_argument("--reward-batch-size", type=int, default=16,
                    help="detoxrl's classifier batch (reward.batch_size, default 16), whatever the evaluation batch")
    ap.add_argument("--systems", default="detoxrl,detoxrl@64,detoxrl+kl@64,notebook-loop",
                    help="comma-separated: notebook-loop, detoxrl, detoxrl+kl; '@N' sets detoxrl's evaluation batch")
    ap.add_argument("--cache", default=str(common.DEFAULT_CACHE))
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=common.SEED)
    ap.add_argument("--dtype", choices=sorted(common.DTYPES), default="fp32",
                    help="the policy's dtype on both sides (the classifier stays fp32); bf16 only where native")
    ap.add_argument("--json-out", required=True)
    ap.add_argument("--side", choices=["detoxrl", "detoxrl+kl"], help=argparse.SUPPRESS)  # internal: one system, in-process
    args = ap.parse_args(argv)

    if args.side:
        Path(args.json_out).write_text(json.dumps(detoxrl_side(args), indent=2))
        return 0
    if args.dtype == "bf16" and not common.native_bf16():
        print(f"evaluation throughput, workload {args.workload}, bf16: not supported on this CPU (no AVX512-BF16 or AMX)")
        doc = {"workload": args.workload, "dtype": args.dtype, "supported": False, "cpu_flags": common.cpu_flags()}
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(doc, indent=2))
        return 0
    if not common.cache_ready(args.workload, args.cache):
        common.build_cache(args.workload, args.cache, args.data)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for system in systems:
            results[system] = run_system(system, args, Path(tmp) / f"{system}.json")
    base = results.get("notebook-loop", {}).get("summaries_per_s")
    print(f"\nevaluation throughput, workload {args.workload}, policy in {args.dtype} (CPU flags: {' '.join(common.cpu_flags())}): {args.prompts} prompts, <= {args.new_tokens} sampled tokens, toxicity of query + summary\n")
    print("| system | summaries/s | wall (s) | mean new tokens | peak RSS (MB) | vs notebook loop |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        ratio = f"{r['summaries_per_s'] / base:.1f}x" if base else ""
        tokens = r.get("mean_new_tokens")
        print(f"| {name} | {r['summaries_per_s']:.3f} | {r['wall_s']:.1f} | {tokens if tokens is None else round(tokens, 1)} | {r['peak_rss_mb']:.0f} | {ratio} |")
    doc = {"workload": args.workload, "dtype": args.dtype, "supported": True, "cpu_flags": common.cpu_flags(),
           "date": time.strftime("%Y-%m-%d"), "prompts": args.prompts, "new_tokens": args.new_tokens, "batch_size": args.batch_size, "systems": results}
    if base:
        doc["speedup_vs_notebook_loop"] = {k: v["summaries_per_s"] / base for k, v in results.items()}
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
