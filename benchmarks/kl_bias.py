"""How far bf16 log-probs captured while decoding bias the KL to the reference (issue 13).

The KL penalty compares the policy's log-probs of the sampled tokens with the reference adapter's,
and the reference's always come from a teacher-forced pass. If the policy's come from the decoding
pass (``ppo.capture_logprobs=on``), in bf16 they carry the decoding pass's own rounding (one position
at a time against a KV cache), and the difference is not a KL. With ``capture_logprobs=auto`` (the
default) bf16 runs a teacher-forced pass of the policy instead.

On the real offline policy (SmolLM2-135M-Instruct, the offline preset's prompts and sampling) with a
moved adapter (a trained one with ``--adapter``, else the starting adapter plus fixed Gaussian noise
on LoRA B), for the same sampled responses:

- truth: teacher-forced policy and reference passes in float32 arithmetic on the bf16 weights;
- bf16 "captured" (before this change): log-probs recorded while decoding minus teacher-forced
  reference log-probs;
- bf16 "teacher-forced": both from teacher-forced bf16 passes over the whole rollout in chunks
  (``logprobs_and_values``: ``auto`` from 2026-12-01 morning, and the ZeRO-3 path today);
- bf16 "in generate" (``auto`` now): generate's teacher-forced passes after each decoded batch, the
  policy's on its prompt pass (the key/value cache of the prompt's first P-1 tokens) and the
  reference's on its own prompt pass made the same way.

It prints the mean per-summary KL (sum of k1 = log pi - log ref over the summary), the bias of each
bf16 estimate against the float32 truth (mean and its standard error over summaries), the largest
per-token log-prob error, and the largest |ratio - 1| the first PPO minibatch would see.

    .venv/bin/python benchmarks/kl_bias.py --json-out benchmarks/results/kl_bias.json
    .venv/bin/python benchmarks/kl_bias.py --adapter runs/demo/final
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from detoxrl.config import load_config  # noqa: E402
from detoxrl.policy import POLICY_ADAPTER, REFERENCE_ADAPTER, cpu_has_fast_bf16, load_policy  # noqa: E402
from detoxrl.rollout import shared_prompt_pass, teacher_forced_pass, forward_pass, generate  # noqa: E402
from detoxrl.preflight import preflight, tokenize_prompts  # noqa: E402


def move_adapter(policy, adapter: str | None, noise: float, seed: int) -> None:
    """The trainable adapter away from the reference: a saved adapter, or fixed noise on LoRA B."""
    if adapter:
        policy.load_adapter_weights(adapter, POLICY_ADAPTER)
        return
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(policy.model.named_parameters(), key=lambda kv: kv[0]):
            if "lora_B" in name and f".{POLICY_ADAPTER}." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * noise)


@torch.inference_mode()
def teacher_forced(policy, rollout, adapter: str, temperature: float) -> torch.Tensor:
    with policy.use_adapter(adapter):
        return forward_pass(policy, rollout, temperature=temperature, with_values=False)["logprobs"]


def in_generate(policy, rollout, adapter: str, temperature: float) -> torch.Tensor:
    """What generate(teacher_forced=True) computes for one decoded batch (the rollout is one batch)."""
    with torch.inference_mode(), policy.use_adapter(adapter):
        shared = shared_prompt_pass(policy, rollout.query_ids, rollout.query_mask, 1)
        state = shared or None  # a one-token prompt has no prompt pass to reuse
        return teacher_forced_pass(policy, rollout.query_ids, rollout.query_mask, rollout.response_ids, state,
                               [slice(0, len(rollout))], 1, temperature, False)["logprobs"]


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    return float(v.mean()), float(v.std(unbiased=True) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", help="a trained adapter folder (e.g. a run's final/); default: starting adapter + noise")
    ap.add_argument("--noise", type=float, default=0.01, help="std of the Gaussian noise on LoRA B without --adapter")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    if not cpu_has_fast_bf16() and not torch.cuda.is_available():
        print("bf16: not supported on this CPU (no AVX512-BF16/AMX): nothing to measure")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    base = ["generation.min_new_tokens=1", f"generation.max_new_tokens={args.new_tokens}"]
    cfg32 = load_config("offline", overrides=base + ["policy.dtype=float32"])
    cfg16 = load_config("offline", overrides=base + ["policy.dtype=bfloat16"])
    checked = preflight(cfg32, check_reward=False)
    policy32, policy16 = load_policy(cfg32.policy), load_policy(cfg16.policy)
    for policy in (policy32, policy16):
        move_adapter(policy, args.adapter, args.noise, args.seed)
    # The truth runs the bf16 policy's own weights in float32 arithmetic: what differs is only how
    # the passes round, not the weights (a float32 model would be another policy).
    with torch.no_grad():
        for p32, p16 in zip(policy32.model.parameters(), policy16.model.parameters()):
            p32.copy_(p16.float())
    splits = tokenize_prompts(checked, tokenizer=policy32.tokenizer)
    examples = (splits.train + splits.test)[: args.prompts]
    g = cfg16.generation
    estimates = ("captured", "teacher_forced", "in_generate")
    per_summary = {"truth": [], **{name: [] for name in estimates}}
    token_err = {name: 0.0 for name in estimates}
    ratio_dev = {name: 0.0 for name in estimates}
    log_ratio = {name: [] for name in estimates}
    lengths = []
    for start in range(0, len(examples), args.batch_size):
        chunk = examples[start : start + args.batch_size]
        torch.manual_seed(args.seed + start)
        rollout = generate(policy16, [e.input_ids for e in chunk], [e.prompt for e in chunk], g,
                           batch_size=len(chunk), capture=True, adapter=POLICY_ADAPTER)
        mask = rollout.response_mask.bool()
        lp32 = teacher_forced(policy32, rollout, POLICY_ADAPTER, g.temperature)
        ref32 = teacher_forced(policy32, rollout, REFERENCE_ADAPTER, g.temperature)
        lp16 = teacher_forced(policy16, rollout, POLICY_ADAPTER, g.temperature)
        ref16 = teacher_forced(policy16, rollout, REFERENCE_ADAPTER, g.temperature)
        cap16 = rollout.logprobs
        gen16 = in_generate(policy16, rollout, POLICY_ADAPTER, g.temperature)
        genref16 = in_generate(policy16, rollout, REFERENCE_ADAPTER, g.temperature)

        def kl_sum(lp, ref):
            return torch.where(mask, lp - ref, 0.0).sum(1)

        per_summary["truth"].append(kl_sum(lp32, ref32))
        per_summary["captured"].append(kl_sum(cap16, ref16))
        per_summary["teacher_forced"].append(kl_sum(lp16, ref16))
        per_summary["in_generate"].append(kl_sum(gen16, genref16))
        for name, lp in (("captured", cap16), ("teacher_forced", lp16), ("in_generate", gen16)):
            token_err[name] = max(token_err[name], float((lp - lp32)[mask].abs().max()))
        # The first minibatch's ratio: the update's teacher-forced pass runs on minibatches of 4 rows,
        # each cut to its own padding, against the stored old log-probs.
        minibatch = torch.zeros_like(lp16)
        for i in range(0, len(chunk), 4):
            rows_i = list(range(i, min(i + 4, len(chunk))))
            sub = rollout.select(rows_i).trimmed(policy16.is_seq2seq)
            minibatch[rows_i, : sub.response_ids.shape[1]] = teacher_forced(policy16, sub, POLICY_ADAPTER, g.temperature)
        for name, old in (("captured", cap16), ("teacher_forced", lp16), ("in_generate", gen16)):
            ratio_dev[name] = max(ratio_dev[name], float((minibatch - old)[mask].exp().sub(1).abs().max()))
            log_ratio[name].append((minibatch - old)[mask].abs())
        lengths.append(mask.sum(1))
    kl = {k: torch.cat(v) for k, v in per_summary.items()}
    length = torch.cat(lengths).double()
    rows_out = []
    truth_mean, truth_se = mean_and_se(kl["truth"])
    for name in estimates:
        bias = kl[name] - kl["truth"]
        b_mean, b_se = mean_and_se(bias)
        per_token = float((bias.double() / length).mean())
        rows_out.append(dict(estimate=name, kl_mean=float(kl[name].mean()), bias_mean=b_mean, bias_se=b_se,
                             bias_per_token=per_token, max_token_logprob_error=token_err[name],
                             max_first_ratio_deviation=ratio_dev[name],
                             mean_first_abs_log_ratio=float(torch.cat(log_ratio[name]).mean())))
    # Paired: what capturing changes in the same summaries' KL, bf16 rounding of the passes aside.
    shift_mean, shift_se = mean_and_se(kl["captured"] - kl["teacher_forced"])
    gen_mean, gen_se = mean_and_se(kl["in_generate"] - kl["teacher_forced"])
    result = dict(
        benchmark="kl_bias", date=time.strftime("%Y-%m-%d"), model="SmolLM2-135M-Instruct (offline preset)",
        adapter=args.adapter or f"starting adapter + N(0, {args.noise}) on LoRA B (seed {args.seed})",
        summaries=int(len(length)), mean_tokens=float(length.mean()), new_tokens=args.new_tokens,
        truth_kl_mean=truth_mean, truth_kl_se=truth_se, rows=rows_out,
        in_generate_minus_teacher_forced=dict(mean=gen_mean, se=gen_se),
        captured_minus_teacher_forced=dict(mean=shift_mean, se=shift_se, per_token=float(((kl["captured"] - kl["teacher_forced"]).double() / length).mean())), seconds=round(time.perf_counter() - t0, 1),
        cpu_flags=sorted({f for f in ("avx512_bf16", "amx_bf16", "avx2") if f in Path("/proc/cpuinfo").read_text()}),
    )
    print(f"KL to the reference per summary, {result['summaries']} sampled summaries of mean {result['mean_tokens']:.1f} "
          f"tokens; float32 truth {truth_mean:.4f} +- {truth_se:.4f}")
    print(f"{'bf16 policy log-probs':<26} {'KL mean':>9} {'bias':>9} {'+- se':>8} {'bias/token':>11} "
          f"{'max |dlogp|':>11} {'max |r-1|':>10} {'mean |log r|':>12}")
    for r in rows_out:
        print(f"{r['estimate']:<26} {r['kl_mean']:>9.4f} {r['bias_mean']:>+9.4f} {r['bias_se']:>8.4f} "
              f"{r['bias_per_token']:>+11.5f} {r['max_token_logprob_error']:>11.4f} {r['max_first_ratio_deviation']:>10.4f} "
              f"{r['mean_first_abs_log_ratio']:>12.5f}")
    print(f"captured - teacher_forced, paired over the same summaries: {shift_mean:+.4f} +- {shift_se:.4f} per summary")
    print(f"in_generate - teacher_forced, paired over the same summaries: {gen_mean:+.4f} +- {gen_se:.4f} per summary")
    if args.json_out:
        common.write_result(args.json_out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
