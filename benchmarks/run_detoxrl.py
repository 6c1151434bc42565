"""TODO (lead): the detoxrl side of the PPO-step benchmark (issue 4). NOT WIRED YET.

This stub exits with an error until detoxrl's trainer exists. ``benchmarks/ppo_step.py`` runs it as

    .venv/bin/python benchmarks/run_detoxrl.py --workload w1 --steps 3 --new-tokens 64 \
        --cache benchmarks/.cache --json-out FILE [--data train.csv] [--threads 2] [--seed 42]

and expects FILE to hold the same JSON as ``benchmarks/peer_trl.py`` writes:

    {"system": "detoxrl", "workload": "w1", "steps": 3, "warmup_steps": 1, "new_tokens": 64,
     "step_s": ..., "generate_s": ..., "score_s": ..., "update_s": ...,   # medians over steps 1..
     "peak_rss_mb": common.peak_rss_mb(),
     "per_step": [{"step": 0, "step_s", "generate_s", "score_s", "update_s", ...}, ...]}

so that the two systems do identical work:

- the models are the cache folders, by path: ``policy, reward = common.workload_dirs(workload, cache)``;
- the prompts are ``common.prompt_token_ids(workload, tokenizer, common.notebook_prompts(16 * steps))``
  taken in order, 16 per step (the same ids trl gets);
- fp32, LoRA r=32 alpha=32 dropout 0.05 on ``common.WORKLOADS[w]["lora"]["target_modules"]``;
  batch 16, minibatch 4, 1 PPO epoch, lr 1.41e-5 (``common.PPO_SETTINGS``);
- generation: top_k=0, top_p=1.0, do_sample, min_new_tokens = max_new_tokens = N;
- reward: the ``nothate`` logit of the reward folder's classifier on the decoded response;
- ``torch.set_num_threads(args.threads)`` and ``common.seed_everything(args.seed)``.

A sketch of the wiring (config keys as in detoxrl.config; adjust to the trainer's final API):

    from detoxrl.config import load_config
    from detoxrl.trainer import Trainer
    cfg = load_config("seed", overrides={
        "data": {"source": str(common.dialogsum_path(args.data)), "max_rows": 16 * args.steps,
                 "use_chat_template": common.WORKLOADS[w]["chat_template"]},
        "policy": {"model": str(policy), "dtype": "float32", "lora_r": 32, "lora_alpha": 32,
                   "lora_dropout": 0.05, "lora_target_modules": common.WORKLOADS[w]["lora"]["target_modules"]},
        "reward": {"model": str(reward), "label": "nothate", "input": "response"},
        "generation": {"min_new_tokens": N, "max_new_tokens": N, "top_k": 0, "top_p": 1.0},
        "ppo": {"steps": args.steps, "batch_size": 16, "mini_batch_size": 4, "ppo_epochs": 1,
                "learning_rate": 1.41e-5},
        "run": {"seed": args.seed, "num_threads": args.threads, "output_dir": tmpdir, "progress": False},
    })
    t = Trainer(cfg)
    for step in range(args.steps):
        t0 = time.perf_counter(); stats = t.step(); step_s = time.perf_counter() - t0
        per_step.append({"step": step, "step_s": step_s, "generate_s": stats["time/generate_s"],
                         "score_s": stats["time/score_s"], "update_s": stats["time/update_s"]})
    result = {..., **common.summarize_steps(per_step), "peak_rss_mb": common.peak_rss_mb()}
"""

from __future__ import annotations

import sys


def main() -> int:
    print(
        "run_detoxrl.py: TODO - the detoxrl side of the benchmark is not wired yet "
        "(waits for detoxrl.trainer.Trainer); see this file's docstring.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
