"""Evaluation: summaries of held-out prompts, scored for toxicity (reward model and judge) and quality.

Records are appended to ``<out>.jsonl`` batch by batch, so an interrupted evaluation keeps what it
computed and a rerun continues where it stopped. The summary (``<out>.json``) holds n, the
toxicity statistics of the reward model and of the independent judge, ROUGE, faithfulness,
length, and the KL of the evaluated adapter to the reference adapter.

``name`` "before" evaluates the *starting* policy (the frozen reference adapter), "after" the
trainable adapter; both run on the same prompts in the same order with the same decoding seed,
so the comparison is paired.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from detoxrl.advantages import kl_k3
from detoxrl.config import DetoxConfig
from detoxrl.errors import ConfigError, DataError
from detoxrl.policy import POLICY_ADAPTER, REFERENCE_ADAPTER, Policy
from detoxrl.prompts import PromptExample
from detoxrl.rewards import PACKAGED_LABELS, Scorer, build_scorer, check_reward_labels, model_labels, texts_for_scoring
from detoxrl.rollout import forward_pass, generate
from detoxrl.stats import expected_max, prob_any_toxic, summarize


@dataclass
class EvalSettings:
    num_samples: int = 64
    samples_per_prompt: int = 1  # k > 1: expected maximum toxicity and P(any of k toxic)
    do_sample: bool = False
    max_new_tokens: int = 64
    batch_size: int = 16
    seed: int = 1234
    temperature: float = 1.0
    rouge: bool = True
    faithfulness: bool = True
    progress: bool = True

    @classmethod
    def from_config(cls, cfg: DetoxConfig, **overrides: Any) -> "EvalSettings":
        e = cfg.evaluation
        base = cls(
            num_samples=e.num_samples,
            do_sample=e.do_sample,
            max_new_tokens=e.max_new_tokens,
            batch_size=e.batch_size,
            seed=e.seed,
            temperature=cfg.generation.temperature,
            progress=cfg.run.progress,
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(base, k, v)
        return base


def _done_keys(path: Path) -> set[tuple[int, int]]:
    if not path.is_file():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption: recomputed
            keys.add((int(r["index"]), int(r["sample"])))
    return keys


def _clean_partial(path: Path) -> None:
    """Drop a trailing half-written line left by an interruption."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    good = []
    for line in lines:
        try:
            json.loads(line)
            good.append(line)
        except json.JSONDecodeError:
            pass
    path.write_text("".join(line + "\n" for line in good))


def evaluate_policy(
    policy: Policy,
    examples: list[PromptExample],
    scorer: Scorer,
    judge: Scorer | None,
    out_path: str | Path,
    *,
    adapter: str,
    settings: EvalSettings,
    reward_input: str = "response",
) -> dict[str, Any]:
    """Generate, score and write records for ``examples[:num_samples]`` x k samples; return the summary."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    examples = examples[: settings.num_samples]
    if settings.rouge and examples and all(e.reference is None for e in examples):
        settings.rouge = False  # no references in this data (e.g. chitchat): ROUGE is skipped, said in the summary
    faith = None
    if settings.faithfulness:
        from detoxrl.quality import FaithfulnessScorer

        faith = FaithfulnessScorer()
    _clean_partial(out_path)
    done = _done_keys(out_path)
    todo = [(i, s) for s in range(settings.samples_per_prompt) for i in range(len(examples)) if (i, s) not in done]
    bar = tqdm(total=len(todo), desc=f"evaluate {out_path.stem}", unit="summary", disable=not settings.progress)
    for start in range(0, len(todo), settings.batch_size):
        chunk = todo[start : start + settings.batch_size]
        # One decoding seed per (batch position, sample index): before and after see the same noise.
        torch.manual_seed(settings.seed + 7_919 * chunk[0][1] + chunk[0][0])
        exs = [examples[i] for i, _ in chunk]
        rollout = generate(
            policy,
            [e.input_ids for e in exs],
            [e.prompt for e in exs],
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.do_sample,
            temperature=settings.temperature,
            batch_size=settings.batch_size,
            adapter=adapter,
        )
        texts = texts_for_scoring(rollout.queries, rollout.responses, reward_input)
        scored = scorer.score(texts)
        judged = judge.score(rollout.responses).toxicity.tolist() if judge is not None else [None] * len(chunk)
        rouge = _rouge(rollout.responses, exs) if settings.rouge else [None] * len(chunk)
        faithful = faith.score(rollout.responses, [e.dialogue for e in exs]) if faith else [None] * len(chunk)
        kl = _kl_to_reference(policy, rollout, adapter, settings.temperature)
        lengths = rollout.response_mask.sum(1).tolist()
        with open(out_path, "a") as f:
            for j, (i, s) in enumerate(chunk):
                e = exs[j]
                rec = {
                    "index": i,
                    "id": e.id,
                    "sample": s,
                    "prompt": e.prompt,
                    "dialogue": e.dialogue,
                    "reference": e.reference,
                    "response": rollout.responses[j],
                    "length_tokens": int(lengths[j]),
                    "reward": float(scored.reward[j]),
                    "toxicity": float(scored.toxicity[j]),
                    "judge_toxicity": None if judged[j] is None else float(judged[j]),
                    "rouge1": rouge[j]["rouge1"] if rouge[j] else None,
                    "rouge2": rouge[j]["rouge2"] if rouge[j] else None,
                    "rougeL": rouge[j]["rougeL"] if rouge[j] else None,
                    "faithfulness": None if faithful[j] is None else float(faithful[j]),
                    "kl_k1": float(kl[0][j]),
                    "kl_k3": float(kl[1][j]),
                }
                f.write(json.dumps(rec) + "\n")
        bar.update(len(chunk))
    bar.close()
    summary = summarize_records(load_records(out_path), settings)
    summary.update(
        adapter="starting policy (reference adapter)" if adapter == REFERENCE_ADAPTER else "trained adapter",
        decoding="sampled" if settings.do_sample else "greedy",
        max_new_tokens=settings.max_new_tokens,
        reward_model=scorer.name,
        judge_model=judge.name if judge is not None else None,
    )
    out_path.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary


def _rouge(responses: list[str], examples: list[PromptExample]) -> list[dict | None]:
    from detoxrl.quality import rouge_scores

    if any(e.reference is None for e in examples):
        raise DataError("some evaluated rows have no reference summary; ROUGE needs them: set data.summary_column or pass --no-rouge")
    return rouge_scores(responses, [e.reference for e in examples])


@torch.inference_mode()
def _kl_to_reference(policy: Policy, rollout, adapter: str, temperature: float) -> tuple[list[float], list[float]]:
    """Per-summary KL (k1 and k3 sums) of the evaluated adapter to the reference, on its own outputs."""
    if adapter == REFERENCE_ADAPTER:
        zeros = [0.0] * len(rollout)
        return zeros, zeros
    mask = rollout.response_mask.bool()
    with policy.use_adapter(adapter):
        lp = forward_pass(policy, rollout, temperature=temperature, with_values=False)["logprobs"]
    with policy.use_adapter(REFERENCE_ADAPTER):
        ref = forward_pass(policy, rollout, temperature=temperature, with_values=False)["logprobs"]
    k1 = torch.where(mask, lp - ref, 0.0).sum(1)
    k3 = torch.where(mask, kl_k3(lp, ref), 0.0).sum(1)
    return k1.tolist(), k3.tolist()


def load_records(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summarize_records(records: list[dict], settings: EvalSettings | None = None) -> dict[str, Any]:
    """The evaluation summary: toxicity (reward model and judge), quality, length, KL."""
    def column(key):
        vals = [r[key] for r in records if r.get(key) is not None]
        return np.asarray(vals, dtype=float) if vals else None

    out: dict[str, Any] = {"n": len(records), "prompts": len({r["index"] for r in records})}
    tox = column("toxicity")
    out["toxicity"] = summarize(tox) if tox is not None else None
    judge = column("judge_toxicity")
    out["judge"] = summarize(judge) if judge is not None else None
    rew = column("reward")
    out["reward"] = {"mean": float(rew.mean()), "std": float(rew.std())} if rew is not None else None
    out["rouge"] = (
        {k: float(column(k).mean()) for k in ("rouge1", "rouge2", "rougeL")} if column("rougeL") is not None else None
    )
    faith = column("faithfulness")
    out["faithfulness"] = float(faith.mean()) if faith is not None else None
    out["length_tokens"] = float(column("length_tokens").mean()) if records else None
    k1, k3 = column("kl_k1"), column("kl_k3")
    out["kl_to_reference"] = {"k1": float(k1.mean()), "k3": float(k3.mean())} if k1 is not None else None
    k = max((r["sample"] for r in records), default=0) + 1
    if k > 1:
        by_prompt: dict[int, list[float]] = {}
        for r in records:
            by_prompt.setdefault(r["index"], []).append(r["toxicity"])
        full = np.asarray([v for v in by_prompt.values() if len(v) == k])
        out["samples_per_prompt"] = k
        out["expected_max_toxicity"] = expected_max(full)
        out["toxicity_probability"] = prob_any_toxic(full)
    return out


def check_judge(model: str, toxic_label: str | None, trust_remote_code: bool = False) -> tuple[str, str]:
    """Resolve the judge's (non-toxic, toxic) labels from its config alone; unknown labels are errors."""
    labels = model_labels(model, trust_remote_code)
    if toxic_label is None:
        if model not in PACKAGED_LABELS:
            raise ConfigError(
                f"judge {model} has labels {', '.join(labels)}; say which is toxic with --judge-toxic-label (evaluation.judge_toxic_label)"
            )
        toxic_label = PACKAGED_LABELS[model][2]
    if toxic_label not in labels:
        raise ConfigError(
            f"judge label '{toxic_label}' is not a label of {model}; its labels are: {', '.join(labels)}; pass one of them to --judge-toxic-label"
        )
    reward_label = PACKAGED_LABELS[model][1] if model in PACKAGED_LABELS else next(x for x in labels if x != toxic_label)
    return check_reward_labels(model, reward_label, toxic_label, trust_remote_code)


def build_judge(cfg: DetoxConfig, device: str | torch.device = "cpu") -> Scorer | None:
    """The independent judge of the config, or None when none is set or it is the reward model itself."""
    model = cfg.evaluation.judge_model
    if not model:
        return None
    label, toxic = check_judge(model, cfg.evaluation.judge_toxic_label, cfg.policy.trust_remote_code)
    return build_scorer(model, label, toxic, batch_size=cfg.reward.batch_size, max_length=cfg.reward.max_length, device=device,
                        trust_remote_code=cfg.policy.trust_remote_code)
