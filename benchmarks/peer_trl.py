"""The peer system of the PPO-step benchmark: trl 0.11.4, as the reference notebook uses it.

Runs inside benchmarks/.venv-trl (bash benchmarks/setup_trl_env.sh); the models are read from the
cache that ``python benchmarks/common.py build-cache --workload w1`` (main venv) built.

    benchmarks/.venv-trl/bin/python benchmarks/peer_trl.py --workload w1 --mode notebook-loop \
        --steps 3 --new-tokens 64 --json-out /tmp/trl-nb.json

Modes:
  notebook-loop  section 3.2 of the notebook: ``ppo_trainer.generate(prompt_tensor)`` one prompt at a
                 time, the reward pipeline, ``ppo_trainer.step``.
  batched        the same, but generation through trl's batched path:
                 ``ppo_trainer.generate(list_of_tensors, batch_size=16)``.

Both force responses of exactly N tokens (min_new_tokens = max_new_tokens = N, pure sampling with
top_k=0, top_p=1.0) so that every system does the same work, and score the decoded response (special
tokens skipped) with the classifier's ``nothate`` logit, chosen by label name. Each phase of a step is
timed with perf_counter; the JSON holds every step and the medians over the steps after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SYSTEM_NAMES = {"notebook-loop": "trl-notebook-loop", "batched": "trl-batched"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="trl 0.11.4 PPO steps on a benchmark workload")
    ap.add_argument("--workload", choices=sorted(common.WORKLOADS), default="w1")
    ap.add_argument("--mode", choices=sorted(SYSTEM_NAMES), default="batched")
    ap.add_argument("--steps", type=int, default=3, help="PPO steps in all; the first is the warm-up")
    ap.add_argument("--new-tokens", type=int, default=64, help="every response has exactly this many tokens")
    ap.add_argument("--cache", default=str(common.DEFAULT_CACHE))
    ap.add_argument("--data", default=None, help="DialogSum train.csv (default: shared/ beside the repo)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=common.SEED)
    ap.add_argument("--dtype", choices=sorted(common.DTYPES), default="fp32", help="the policy's dtype (the reward stays fp32)")
    ap.add_argument("--json-out", default=None)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    torch.set_num_threads(args.threads)
    import transformers
    import peft
    import trl
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline
    from trl import (
        AutoModelForCausalLMWithValueHead,
        AutoModelForSeq2SeqLMWithValueHead,
        PPOConfig,
        PPOTrainer,
        create_reference_model,
    )

    transformers.logging.set_verbosity_error()
    wl = common.WORKLOADS[args.workload]
    policy_dir, reward_dir = common.workload_dirs(args.workload, args.cache)
    if not common.cache_ready(args.workload, args.cache):
        raise SystemExit(
            f"model cache of {args.workload} missing under {args.cache}: build it with the main venv, "
            f"python benchmarks/common.py build-cache --workload {args.workload}"
        )
    common.seed_everything(args.seed)
    loadavg_start = os.getloadavg()
    cpu_share = common.CpuShare()
    memory = common.PhaseMemory()
    t_load = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    seq2seq = wl["kind"] == "seq2seq"
    lora_config = LoraConfig(
        **wl["lora"], bias="none", task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM
    )
    # As in the notebook: base model -> PEFT model -> trl value-head wrapper -> reference copy.
    dtype = getattr(torch, common.DTYPES[args.dtype])  # the notebook loads its models in bf16
    if seq2seq:
        base = AutoModelForSeq2SeqLM.from_pretrained(policy_dir, torch_dtype=dtype)
        peft_model = get_peft_model(base, lora_config)
        ppo_model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(
            peft_model, torch_dtype=dtype, is_trainable=True
        )
    else:
        base = AutoModelForCausalLM.from_pretrained(policy_dir, torch_dtype=dtype)
        peft_model = get_peft_model(base, lora_config)
        ppo_model = AutoModelForCausalLMWithValueHead.from_pretrained(
            peft_model, torch_dtype=dtype, is_trainable=True
        )
    ref_model = create_reference_model(ppo_model)
    trainable = sum(p.numel() for p in ppo_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in ppo_model.parameters())

    config = PPOConfig(
        model_name=str(policy_dir),
        learning_rate=common.PPO_SETTINGS["learning_rate"],
        ppo_epochs=common.PPO_SETTINGS["ppo_epochs"],
        mini_batch_size=common.PPO_SETTINGS["mini_batch_size"],
        batch_size=common.PPO_SETTINGS["batch_size"],
        seed=args.seed,
    )
    ppo_trainer = PPOTrainer(config=config, model=ppo_model, ref_model=ref_model, tokenizer=tokenizer)
    reward_pipe = pipeline(
        "text-classification",
        model=str(reward_dir),
        tokenizer=str(reward_dir),
        device="cpu",
        top_k=None,
        function_to_apply="none",
        batch_size=common.PPO_SETTINGS["batch_size"],
    )
    load_s = time.perf_counter() - t_load

    bs = common.PPO_SETTINGS["batch_size"]
    prompts = common.notebook_prompts(bs * args.steps, args.data)
    batches = common.step_batches(common.prompt_token_ids(args.workload, tokenizer, prompts), bs)
    n = args.new_tokens
    generation_kwargs = dict(
        common.GENERATION,
        min_new_tokens=n,
        max_new_tokens=n,
        pad_token_id=tokenizer.pad_token_id,
    )

    per_step = []
    for step, batch in enumerate(batches):
        rec: dict = {"step": step}
        t_step = time.perf_counter()
        prompt_tensors = [torch.tensor(ids, dtype=torch.long) for ids in batch]

        with common.timed(rec, "generate_s"):
            if args.mode == "notebook-loop":
                response_tensors = []
                for prompt_tensor in prompt_tensors:
                    summary = ppo_trainer.generate(prompt_tensor, **generation_kwargs)
                    response_tensors.append(summary.squeeze()[-n:])  # the notebook's slice
            else:
                # trl keeps the decoder start token in front of a seq2seq response (its step()
                # skips it); return_prompt=False drops the prompt of a causal one.
                response_tensors = ppo_trainer.generate(
                    prompt_tensors, batch_size=bs, return_prompt=False, **generation_kwargs
                )

        with common.timed(rec, "score_s"):
            texts = [tokenizer.decode(r, skip_special_tokens=True) for r in response_tensors]
            outputs = reward_pipe(texts)
            rewards = [
                torch.tensor(next(s["score"] for s in out if s["label"] == common.REWARD_LABEL), dtype=torch.float32)
                for out in outputs
            ]

        with common.timed(rec, "update_s"):
            stats = ppo_trainer.step(prompt_tensors, list(response_tensors), rewards)

        rec["step_s"] = time.perf_counter() - t_step
        rec["prompt_tokens"] = [len(x) for x in batch]
        rec["response_tokens"] = [int(r.shape[-1]) for r in response_tensors]
        rec["response_chars"] = [len(t) for t in texts]
        rec["reward_mean"] = float(torch.stack(rewards).mean())
        rec["kl"] = float(stats["objective/kl"])
        per_step.append(rec)
        print(
            f"[{SYSTEM_NAMES[args.mode]} {args.workload}] step {step}: total {rec['step_s']:.2f}s "
            f"generate {rec['generate_s']:.2f}s score {rec['score_s']:.2f}s update {rec['update_s']:.2f}s "
            f"(reward {rec['reward_mean']:+.3f}, kl {rec['kl']:.3f})",
            flush=True,
        )

    result = {
        "system": SYSTEM_NAMES[args.mode],
        "workload": args.workload,
        "mode": args.mode,
        "dtype": args.dtype,
        "steps": args.steps,
        "warmup_steps": 1,
        "new_tokens": n,
        "threads": args.threads,
        **common.summarize_steps(per_step),
        "peak_rss_mb": common.peak_rss_mb(),
        "peak_rss_mb_by_phase": memory.stop(),
        "load_s": load_s,
        # Other processes on the machine's 2 cores skew every number: keep the load averages.
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg(),
        "cpu_share": cpu_share.stop(),
        "params": total,
        "trainable_params": trainable,
        "per_step": per_step,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "peft": peft.__version__,
        },
    }
    print(
        f"[{result['system']} {args.workload}] median over steps 1..: step {result['step_s']:.2f}s "
        f"generate {result['generate_s']:.2f}s score {result['score_s']:.2f}s update {result['update_s']:.2f}s "
        f"peak RSS {result['peak_rss_mb']:.0f} MB; other processes took "
        f"{100 * result['cpu_share'].get('others_fraction', float('nan')):.0f}% of the cores meanwhile",
        flush=True,
    )
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
