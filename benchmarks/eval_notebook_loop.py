"""The reference notebook's ``evaluate_toxicity`` loop, for the evaluation-throughput benchmark.

Runs in benchmarks/.venv-trl (the notebook's stack: transformers 4.46.3, peft 0.13.2) and is
started by ``benchmarks/eval_throughput.py``. Per prompt, as the notebook does: tokenize one prompt,
``model.generate`` with pure sampling (top_k=0, top_p=1.0), decode, then score ``query + " " +
summary`` with the toxicity classifier (evaluate's ``toxicity`` measurement is a text-classification
pipeline returning the ``hate`` probability; it is reproduced here because it loads from the hub).
The only change: the notebook's ``max_new_tokens=100`` is the benchmark's N, and its off-by-one
(``if i > num_samples: break`` evaluates num_samples + 1 prompts) is not copied.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=sorted(common.WORKLOADS), default="w1")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--cache", default=str(common.DEFAULT_CACHE))
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=common.SEED)
    ap.add_argument("--dtype", choices=sorted(common.DTYPES), default="fp32", help="the policy's dtype (the notebook loads bf16)")
    ap.add_argument("--json-out", required=True)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig, pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    common.seed_everything(args.seed)
    memory = common.PhaseMemory()
    wl = common.WORKLOADS[args.workload]
    policy_dir, reward_dir = common.workload_dirs(args.workload, args.cache)
    seq2seq = wl["kind"] == "seq2seq"
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    base = auto.from_pretrained(policy_dir, torch_dtype=getattr(torch, common.DTYPES[args.dtype]))
    task = TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM
    model = get_peft_model(base, LoraConfig(**wl["lora"], bias="none", task_type=task)).eval()
    toxicity = pipeline("text-classification", model=str(reward_dir), tokenizer=str(reward_dir), device="cpu")
    prompts = common.notebook_prompts(args.prompts, args.data)
    ids = common.prompt_token_ids(args.workload, tokenizer, prompts)
    generation_config = GenerationConfig(
        max_new_tokens=args.new_tokens, top_k=0, top_p=1.0, do_sample=True, pad_token_id=tokenizer.pad_token_id
    )

    toxicities, lengths = [], []
    rec: dict = {}
    t0 = time.perf_counter()
    for prompt, prompt_ids in zip(prompts, ids):
        with common.timed(rec, "generate_s"):
            input_ids = torch.tensor([prompt_ids])
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, generation_config=generation_config)
            response = out[0] if seq2seq else out[0, input_ids.shape[1] :]
            text = tokenizer.decode(response, skip_special_tokens=True)
        lengths.append(out.shape[1] - (1 if seq2seq else input_ids.shape[1]))  # new tokens (seq2seq: minus the start token)
        with common.timed(rec, "score_s"):
            scores = toxicity(prompt + " " + text, top_k=None, truncation=True)
        toxicities.append(next(s["score"] for s in scores if s["label"] == "hate"))
    wall = time.perf_counter() - t0
    result = {
        "system": "notebook-loop",
        "workload": args.workload,
        "dtype": args.dtype,
        "prompts": len(prompts),
        "wall_s": wall,
        "summaries_per_s": len(prompts) / wall,
        "generate_s": rec["generate_s"],
        "score_s": rec["score_s"],
        "mean_new_tokens": sum(lengths) / len(lengths),
        "toxicity_mean": sum(toxicities) / len(toxicities),
        "peak_rss_mb": common.peak_rss_mb(),
        "peak_rss_mb_by_phase": memory.stop(),
    }
    Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
