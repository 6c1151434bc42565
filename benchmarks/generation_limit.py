"""Generation against its small-matrix limit (issue 13).

A decoding step multiplies B rows (one new token per sequence) by every weight matrix of the decoder
and by the output layer: small-M products, far below the machine's large-matmul peak. This script
measures, for one workload and dtype, on the same threads:

* the **large-matmul peak** (2048 x 2048 x 2048);
* the **small-M limit**: the FLOP rate of the decoding step's own products at M = B, each timed
  alone with ``torch.nn.functional.linear`` (best of 20) and weighted by its FLOPs: what decoding
  would reach if it were nothing but those products;
* **detoxrl's generation**: ``rollout.generate`` of the first B notebook prompts, exactly N new
  tokens (pure sampling), median of 3 after a warm-up; its useful FLOPs are the analytic forward
  FLOPs of prompt + response (``common.t5_forward_flops`` / ``llama_forward_flops``: the prompt
  pass is large-M work, the N decoding steps small-M work);
* the **weight-streaming bound**: a decoding step reads every decoder weight and the output layer
  once; at the memory bandwidth measured here (a 512 MiB copy, read + write) that takes a time no
  small-M product loop can beat, since the products above were timed with their weight in cache;
* with ``--profile K``: one more generation under ``torch.profiler``, its K operators of largest
  self CPU time (the profiler's own overhead inflates the many small ones).

    .venv/bin/python benchmarks/generation_limit.py --workload w1 --dtype bf16 --json-out benchmarks/results/gen-limit-w1-bf16.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def decode_shapes(workload: str, cfg: dict) -> list[tuple[str, int, int, int]]:
    """(name, in, out, count per decoding step) of every weight product of one decoding step."""
    if workload == "w1":
        d, f, V = cfg["d_model"], cfg["d_ff"], cfg["vocab_size"]
        a = cfg["num_heads"] * cfg["d_kv"]
        L = cfg.get("num_decoder_layers") or cfg["num_layers"]
        return [("self q,k,v + cross q", d, a, 4 * L), ("self o + cross o", a, d, 2 * L),
                ("ff wi_0, wi_1", d, f, 2 * L), ("ff wo", f, d, L), ("lm_head", d, V, 1)]
    h, f, V, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    aq, akv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    return [("q", h, aq, L), ("k, v", h, akv, 2 * L), ("o", aq, h, L), ("gate, up", h, f, 2 * L),
            ("down", f, h, L), ("lm_head", h, V, 1)]


def time_linear(m: int, k: int, n: int, dtype, repeats: int = 20) -> float:
    import torch
    import torch.nn.functional as F

    x, w = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
    for _ in range(3):
        F.linear(x, w)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        F.linear(x, w)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_bandwidth_gbs(repeats: int = 5) -> float:
    """Memory bandwidth of a 512 MiB copy (bytes read + written per second), best of ``repeats``."""
    import torch

    src = torch.ones(512 * 2**20, dtype=torch.uint8)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() / best / 1e9


def profile_generation(run, top: int) -> list[dict]:
    """The ``top`` operators of largest self CPU time in one call of ``run``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [dict(op=e.key, calls=e.count, self_s=e.self_cpu_time_total / 1e6, share=e.self_cpu_time_total / total)
            for e in events[:top]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=sorted(common.WORKLOADS), default="w1")
    ap.add_argument("--dtype", choices=sorted(common.DTYPES), default="bf16")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=str(common.DEFAULT_CACHE))
    ap.add_argument("--profile", type=int, default=0, metavar="K",
                    help="profile one more generation and list its K operators of largest self CPU time")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    if args.dtype == "bf16" and not common.native_bf16():
        print("bf16: not supported on this CPU (no AVX512-BF16 or AMX)")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    common.seed_everything()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from detoxrl import runtime
    from detoxrl.config import GenerationConfig, load_config
    from detoxrl.policy import load_policy
    from detoxrl.rollout import generate

    dtype = getattr(torch, common.DTYPES[args.dtype])
    w = common.WORKLOADS[args.workload]
    if not common.cache_ready(args.workload, args.cache):
        common.build_cache(args.workload, args.cache)
    policy_dir, _ = common.workload_dirs(args.workload, args.cache)
    model_cfg = json.loads((Path(policy_dir) / "config.json").read_text())
    B, N = args.batch, args.new_tokens

    peak = common.measure_matmul_peak_gflops(threads=args.threads, dtype=common.DTYPES[args.dtype])
    shapes = []
    for name, k, n, count in decode_shapes(args.workload, model_cfg):
        t = time_linear(B, k, n, dtype)
        shapes.append(dict(name=name, m=B, k=k, n=n, count=count, gflop_per_s=2 * B * k * n / t / 1e9, seconds=t))
    step_flops = sum(2 * B * s["k"] * s["n"] * s["count"] for s in shapes)
    step_time = sum(s["seconds"] * s["count"] for s in shapes)
    small_m_limit = step_flops / step_time / 1e9
    bandwidth = measure_bandwidth_gbs()
    step_weight_bytes = sum(s["k"] * s["n"] * s["count"] for s in shapes) * torch.finfo(dtype).bits // 8
    streaming_step_s = step_weight_bytes / (bandwidth * 1e9)

    cfg = load_config("seed", overrides={
        "policy": {"model": str(policy_dir), "dtype": common.DTYPES[args.dtype], "lora_r": w["lora"]["r"],
                   "lora_alpha": w["lora"]["lora_alpha"], "lora_target_modules": w["lora"]["target_modules"]},
        "data": {"use_chat_template": w["chat_template"]}})
    runtime.return_freed_memory()  # as the CLI does
    policy = load_policy(cfg.policy)
    prompts = common.notebook_prompts(B)
    ids = common.prompt_token_ids(args.workload, policy.tokenizer, prompts)
    decoding = GenerationConfig(max_new_tokens=N, min_new_tokens=N, top_k=0, top_p=1.0)
    generate(policy, ids[:2], prompts[:2], GenerationConfig(max_new_tokens=4, min_new_tokens=4), batch_size=2)
    times = []
    for rep in range(4):
        torch.manual_seed(rep)
        t0 = time.perf_counter()
        generate(policy, ids, prompts, decoding, batch_size=B, capture=dtype == torch.float32)
        times.append(time.perf_counter() - t0)
    gen_s = statistics.median(times[1:])
    ops = []
    if args.profile:
        torch.manual_seed(0)
        ops = profile_generation(lambda: generate(policy, ids, prompts, decoding, batch_size=B,
                                                  capture=dtype == torch.float32), args.profile)
    if args.workload == "w1":
        per = [common.t5_forward_flops(model_cfg, len(x), N, w["lora"]["r"]) for x in ids]
    else:
        per = [common.llama_forward_flops(model_cfg, len(x) + N, N, w["lora"]["r"]) for x in ids]
    gen_flops = sum(p["linear"] + p["attn"] + p["lora"] for p in per)
    decode_flops = step_flops * N  # the small-M part of that work
    prompt_flops = gen_flops - decode_flops
    ideal_s = decode_flops / (small_m_limit * 1e9) + max(prompt_flops, 0) / (peak * 1e9)
    result = dict(
        benchmark="generation_limit", date=time.strftime("%Y-%m-%d"), workload=args.workload, dtype=args.dtype,
        cpu_flags=common.cpu_flags(), threads=args.threads, batch=B, new_tokens=N,
        matmul_peak_gflops=peak, small_m_limit_gflops=small_m_limit, shapes=shapes,
        generate_s=gen_s, generate_runs_s=times, gen_gflop=gen_flops / 1e9, decode_gflop=decode_flops / 1e9,
        achieved_gflops=gen_flops / gen_s / 1e9, ideal_s=ideal_s, fraction_of_ideal=ideal_s / gen_s,
        bandwidth_gbs=bandwidth, step_weight_mb=step_weight_bytes / 1e6, streaming_step_s=streaming_step_s,
        decoding_steps_at_streaming_bound_s=streaming_step_s * N, profile=ops,
    )
    print(f"generation, workload {args.workload}, {args.dtype}, {B} prompts x {N} tokens, {args.threads} threads "
          f"(CPU flags: {' '.join(result['cpu_flags'])})")
    print(f"{'decoding-step product':<24}{'[M x K] x [K x N]':>22}{'per step':>10}{'GFLOP/s':>10}")
    for s in shapes:
        product = "[{} x {}] x [{} x {}]".format(B, s["k"], s["k"], s["n"])
        print(f"{s['name']:<24}{product:>22}{s['count']:>10}{s['gflop_per_s']:>10.1f}")
    print(f"small-M limit (FLOP-weighted): {small_m_limit:.1f} GFLOP/s; large-matmul peak {peak:.1f} GFLOP/s")
    print(f"detoxrl generate: {gen_s:.2f} s for {gen_flops / 1e9:.0f} GFLOP ({decode_flops / 1e9:.0f} of them in decoding "
          f"steps) = {result['achieved_gflops']:.1f} GFLOP/s; at the limits it would take {ideal_s:.2f} s "
          f"({100 * result['fraction_of_ideal']:.0f}% of that speed reached)")
    print(f"weight streaming: {step_weight_bytes / 1e6:.0f} MB of weights per decoding step at {bandwidth:.1f} GB/s = "
          f"{1e3 * streaming_step_s:.1f} ms per step, {streaming_step_s * N:.2f} s for {N} steps "
          f"(the small-M products alone: {1e3 * step_time:.1f} ms per step)")
    if ops:
        print(f"profile of one more generation (self CPU time, {args.profile} largest operators):")
        for o in ops:
            print(f"  {o['op']:<40}{o['calls']:>8} calls{o['self_s']:>9.2f} s{100 * o['share']:>6.1f}%")
    if args.json_out:
        common.write_result(args.json_out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
