"""The detoxrl side of the PPO-step benchmark (issue 4).

``benchmarks/ppo_step.py`` runs it as

    .venv/bin/python benchmarks/run_detoxrl.py --workload w1 --steps 3 --new-tokens 64 \
        --cache benchmarks/.cache --json-out FILE [--data train.csv] [--threads 2] [--seed 42]

and reads FILE, shaped like what ``benchmarks/peer_trl.py`` writes. The work is the peer's:
the same cache folders by path, the first 16*steps notebook prompts in file order (16 per step),
the policy in --dtype (fp32 or bf16; the reward in fp32), LoRA r=32 alpha=32 dropout 0.05 on the workload's modules, batch 16 / minibatch 4 / 1 epoch /
lr 1.41e-5, pure sampling with min_new_tokens = max_new_tokens = N, reward = the ``nothate`` logit
of the reward folder's classifier on the decoded response.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=sorted(common.WORKLOADS), required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--cache", default=str(common.DEFAULT_CACHE))
    ap.add_argument("--data", default=None, help="DialogSum train.csv (default: ../shared/data/dialogsum/train.csv)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=common.SEED)
    ap.add_argument("--dtype", choices=sorted(common.DTYPES), default="fp32", help="the policy's dtype (the reward stays fp32)")
    ap.add_argument("--micro-batch-size", type=int, default=None,
                    help="ppo.micro_batch_size: rows per forward/backward pass of the update (default: the minibatch)")
    ap.add_argument("--json-out", required=True)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    common.seed_everything(args.seed)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import detoxrl.collection as collection_mod
    import detoxrl.trainer as trainer_mod
    from detoxrl.config import load_config
    from detoxrl.trainer import Trainer

    memory = common.PhaseMemory()
    # Attribute the step's memory to its phases (the trainer times them itself; these wrappers
    # only label what the RSS sampler sees).
    for module, name, phase in ((collection_mod, "generate", "generate_s"), (trainer_mod, "logprobs_and_values", "update_s"),
                                (trainer_mod, "ppo_update", "update_s")):
        setattr(module, name, _labelled(getattr(module, name), phase))

    w = common.WORKLOADS[args.workload]
    policy, reward = common.workload_dirs(args.workload, args.cache)
    n = args.new_tokens
    per_step = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            "seed",
            overrides={
                # The notebook's split is unshuffled and its first 80% is train: 2*16*steps kept
                # rows leave >= 16*steps train prompts, visited in file order (data.shuffle false).
                "data": {
                    "source": str(common.dialogsum_path(args.data)),
                    "max_rows": 2 * 16 * args.steps,
                    "max_prompt_tokens": 4096,
                    "use_chat_template": w["chat_template"],
                    "shuffle": False,
                },
                "policy": {
                    "model": str(policy),
                    "dtype": common.DTYPES[args.dtype],
                    "lora_r": w["lora"]["r"],
                    "lora_alpha": w["lora"]["lora_alpha"],
                    "lora_dropout": w["lora"]["lora_dropout"],
                    "lora_target_modules": w["lora"]["target_modules"],
                },
                "reward": {"model": str(reward), "label": common.REWARD_LABEL, "toxic_label": "hate", "input": "response", "batch_size": 16},
                "generation": {"min_new_tokens": n, "max_new_tokens": n, "top_k": 0, "top_p": 1.0, "do_sample": True},
                "ppo": {"steps": args.steps, **common.PPO_SETTINGS, "micro_batch_size": args.micro_batch_size},
                "run": {"seed": args.seed, "num_threads": args.threads, "output_dir": tmp, "progress": False, "overwrite": True},
            },
        )
        trainer = Trainer(cfg)
        trainer.scorer.score = _labelled(trainer.scorer.score, "score_s")
        for step in range(args.steps):
            t0 = time.perf_counter()
            stats = trainer.step()
            per_step.append(
                {
                    "step": step,
                    "step_s": time.perf_counter() - t0,
                    "generate_s": stats["time/generate_s"],
                    "score_s": stats["time/score_s"],
                    "update_s": stats["time/update_s"],
                    "response_tokens": stats["env/response_length_mean"],
                    "reward_mean": stats["env/reward_mean"],
                    "kl": stats["objective/kl"],
                }
            )
            print(f"detoxrl {args.workload} step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in per_step[-1].items() if k != "step"), file=sys.stderr, flush=True)
    result = {
        "system": "detoxrl",
        "workload": args.workload,
        "dtype": args.dtype,
        "steps": args.steps,
        "warmup_steps": 1,
        "new_tokens": n,
        "micro_batch_size": args.micro_batch_size,
        **common.summarize_steps(per_step),
        "peak_rss_mb": common.peak_rss_mb(),
        "peak_rss_mb_by_phase": memory.stop(),
        "per_step": per_step,
    }
    Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


def _labelled(fn, phase: str):
    def wrapper(*args, **kwargs):
        with common.timed({}, phase):
            return fn(*args, **kwargs)

    return wrapper


if __name__ == "__main__":
    sys.exit(main())
