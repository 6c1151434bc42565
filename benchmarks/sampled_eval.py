"""k samples per prompt: one shared pass over each prompt against re-reading it k times.

    .venv/bin/python benchmarks/sampled_eval.py --json-out benchmarks/results/sampled_eval.json

The sampled pass of ``detoxrl evaluate`` (expected maximum toxicity over k samples) draws k pure
samples of every held-out prompt. A summary is short (32-48 tokens) and a dialogue long (100-350
tokens), so reading the prompt is a large part of each sample's cost. Rows, on the offline policy
(SmolLM2-135M-Instruct + LoRA, ``policy.dtype=auto``) and the first ``--prompts`` challenging
chitchat test prompts, ``--k`` samples each, at most ``--new-tokens`` new tokens, batches of
``--batch-size`` generated rows:

* ``shared prompt pass``: ``detoxrl.rollout.generate(samples_per_prompt=k)``, what evaluate does
  since 2026-11-30: the prompt's KV cache is computed once and repeated k times.
* ``prompt repeated k times``: the same function given each prompt k times (what evaluate did before).
* ``transformers num_return_sequences``: ``model.generate(num_return_sequences=k)``, the library's
  own way, which repeats the prompt before its forward pass.

Each row is the median of ``--repeats`` timed runs after one warm-up run, in this one process
(same weights, same threads); the table gives samples per second and the speed-up over the
transformers row; the JSON holds every number.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16, help="generated rows per batch (evaluation.batch_size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", required=True)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from detoxrl.config import GenerationConfig, load_config
    from detoxrl.policy import POLICY_ADAPTER, load_policy
    from detoxrl.rollout import hf_generation_config, generate
    from detoxrl.preflight import preflight, tokenize_prompts

    cfg = load_config("offline", overrides=["data.min_dialogue_toxicity=0.3"])
    checked = preflight(cfg, check_reward=False)
    policy = load_policy(checked.cfg.policy)
    examples = tokenize_prompts(checked, tokenizer=policy.tokenizer).test[: args.prompts]
    ids, texts = [e.input_ids for e in examples], [e.prompt for e in examples]
    k, n = args.k, len(examples)
    per_batch = max(1, args.batch_size // k)

    decoding = GenerationConfig(max_new_tokens=args.new_tokens)  # pure sampling at temperature 1

    def shared():
        generate(policy, ids, texts, decoding, batch_size=args.batch_size, samples_per_prompt=k, adapter=POLICY_ADAPTER)

    def repeated():
        generate(policy, [i for i in ids for _ in range(k)], [t for t in texts for _ in range(k)], decoding,
                 batch_size=args.batch_size, adapter=POLICY_ADAPTER)

    def library():
        gen_cfg = hf_generation_config(policy, decoding)
        gen_cfg.num_return_sequences = k
        order = sorted(range(n), key=lambda i: len(ids[i]))
        with torch.inference_mode(), policy.use_adapter(POLICY_ADAPTER):
            for start in range(0, n, per_batch):
                enc = policy.tokenizer.pad({"input_ids": [ids[i] for i in order[start : start + per_batch]]}, return_tensors="pt")
                policy.model.generate(**enc, generation_config=gen_cfg)

    systems = {"shared prompt pass": shared, "prompt repeated k times": repeated, "transformers num_return_sequences": library}
    results: dict[str, dict] = {}
    for name, fn in systems.items():
        torch.manual_seed(0)
        fn()  # warm-up
        times = []
        for r in range(args.repeats):
            torch.manual_seed(r)
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        results[name] = {"seconds": times, "median_s": med, "samples_per_s": n * k / med}
        print(f"{name}: {med:.1f} s", flush=True)

    peer = results["transformers num_return_sequences"]["median_s"]
    print(f"\n{n} prompts x {k} samples, <= {args.new_tokens} new tokens, batches of {args.batch_size} rows, "
          f"prompt tokens {min(map(len, ids))}-{max(map(len, ids))}, {args.threads} threads, dtype {policy.model.dtype}")
    print("| system | median s | samples/s | speed-up vs transformers |\n| --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['median_s']:.1f} | {r['samples_per_s']:.2f} | {peer / r['median_s']:.2f}x |")
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None},
        "settings": vars(args) | {"prompt_tokens": [len(i) for i in ids], "dtype": str(policy.model.dtype)},
        "systems": results,
    }
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
