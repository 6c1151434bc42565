"""Does a compiled decoding step pay on this CPU? Eager decoding against ``torch.compile`` with a static KV cache.

    .venv/bin/python benchmarks/compiled_decode.py --json-out benchmarks/results/compiled_decode.json

The policy is the demo's (the offline preset: SmolLM2-135M-Instruct + LoRA r=16, in the dtype
``policy.dtype: auto`` picks here), its prompts are the first ``--prompts`` held-out chitchat prompts, and
each call decodes exactly ``--new-tokens`` tokens greedily (``min_new_tokens`` = ``max_new_tokens``, so
both sides do the same number of steps) with plain ``model.generate``:

* ``eager``: the dynamic KV cache detoxrl decodes with;
* ``compiled``: ``cache_implementation="static"`` with transformers' own compilation of the decoding step
  (``CompileConfig``, inductor, ``mode="default"``: CUDA graphs do not exist on a CPU), allowed on CPU.

Reported: the first compiled call (compilation included) and the steady-state seconds of each side
(median of ``--repeats`` calls after the first), the compile overhead, the break-even number of generated
tokens (the overhead over the per-token saving; none when compiled decoding is not faster), and whether
the greedy tokens are equal (bf16 kernels of another shape round differently, so some may not be).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", default="benchmarks/results/compiled_decode.json")
    args = ap.parse_args()

    import torch
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import CompileConfig

    from detoxrl.config import load_config
    from detoxrl.policy import load_policy
    from detoxrl.prompts import build_prompts

    torch.set_num_threads(args.threads)
    cfg = load_config("offline")
    policy = load_policy(cfg.policy, value_head=False)
    examples = build_prompts(cfg.data, policy.tokenizer).test[: args.prompts]
    enc = policy.tokenizer.pad({"input_ids": [e.input_ids for e in examples]}, return_tensors="pt")
    model = policy.model
    model.eval()

    def generation_config(compiled: bool) -> GenerationConfig:
        kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                      pad_token_id=policy.pad_token_id, eos_token_id=policy.eos_token_id)
        if compiled:
            compiling = CompileConfig(fullgraph=False, dynamic=False, mode="default")
            compiling._compile_all_devices = True  # transformers (not detoxrl) compiles on GPUs only unless told
            kwargs.update(cache_implementation="static", compile_config=compiling)
        return GenerationConfig(**kwargs)

    def calls(compiled: bool, n: int) -> tuple[list[float], torch.Tensor]:
        config = generation_config(compiled)
        seconds, out = [], None
        for _ in range(n):
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], generation_config=config)
            seconds.append(time.perf_counter() - t0)
        return seconds, out[:, enc["input_ids"].shape[1]:]

    eager_s, eager_tokens = calls(False, 1 + args.repeats)
    compiled_s, compiled_tokens = calls(True, 1 + args.repeats)
    eager, compiled = statistics.median(eager_s[1:]), statistics.median(compiled_s[1:])
    overhead = compiled_s[0] - compiled
    tokens_per_call = args.prompts * args.new_tokens
    saving_per_token = (eager - compiled) / tokens_per_call
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu_flags": common.cpu_flags(),
        "dtype": str(policy.compute_dtype).replace("torch.", ""),
        "threads": args.threads,
        "prompts": args.prompts,
        "new_tokens": args.new_tokens,
        "prompt_tokens_max": int(enc["input_ids"].shape[1]),
        "eager_s": eager_s,
        "compiled_s": compiled_s,
        "eager_median_s": eager,
        "compiled_median_s": compiled,
        "speedup": eager / compiled,
        "compile_overhead_s": overhead,
        "break_even_tokens": overhead / saving_per_token if saving_per_token > 0 else None,
        "greedy_tokens_equal_fraction": float((eager_tokens == compiled_tokens).float().mean()),
    }
    print("| side | first call (s) | steady state (s, median) | tokens per s |")
    print("| --- | --- | --- | --- |")
    print(f"| eager, dynamic cache | {eager_s[0]:.1f} | {eager:.2f} | {tokens_per_call / eager:.0f} |")
    print(f"| compiled, static cache | {compiled_s[0]:.1f} | {compiled:.2f} | {tokens_per_call / compiled:.0f} |")
    be = result["break_even_tokens"]
    print(f"speed-up {result['speedup']:.2f}x; compile overhead {overhead:.0f} s; break-even "
          f"{'never (not faster)' if be is None else f'{be:.0f} generated tokens'}; greedy tokens equal: "
          f"{result['greedy_tokens_equal_fraction']:.1%}")
    common.write_result(args.json_out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
