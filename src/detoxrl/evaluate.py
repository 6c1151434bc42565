"""Evaluation: summaries of held-out prompts, scored for toxicity (reward model and judge) and quality.

Records are appended to ``<out>.jsonl`` batch by batch, so an interrupted evaluation keeps what it
computed and a rerun continues where it stopped. Batches are fixed (the same prompts, in the same
order, with the same seed whatever was done before), so a resumed evaluation writes the same
records as one that never stopped, sampled or greedy. Each record carries a ``signature`` of what
produced it (adapter weights, decoding settings, scorers); a rerun recomputes records whose
signature, prompt or position no longer matches the request. The summary (``<out>.json``) holds n, the
toxicity statistics of the reward model and of the independent judge, ROUGE, faithfulness,
length, and the KL of the evaluated adapter to the reference adapter.

``name`` "before" evaluates the *starting* policy (the frozen reference adapter), "after" the
trainable adapter; both run on the same prompts in the same order with the same decoding seed,
so the comparison is paired.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from detoxrl import runfiles
from detoxrl.advantages import kl_k1, kl_k3, sequence_kl
from detoxrl.collection import Collected, collect, logprob_plan
from detoxrl.config import DetoxConfig, EvalConfig, GenerationConfig, RewardConfig, check_eval_pass
from detoxrl.errors import DataError, DetoxError
from detoxrl.policy import POLICY_ADAPTER, REFERENCE_ADAPTER, Policy
from detoxrl.prompts import PromptExample, check_pinned_split
from detoxrl.rewards import Scorer, build_judge_scorer, check_judge
from detoxrl.rollout import forward_pass
from detoxrl.stats import expected_max, prob_any_toxic, summarize

logger = logging.getLogger(__name__)


def adapter_fingerprint(policy: Policy, adapter: str) -> str:
    """A short hash of what adapter ``adapter`` computes: its LoRA weights and scaling.

    An adapter whose ``lora_B`` weights are all zero (a fresh LoRA) is the base model itself,
    whatever its random ``lora_A``: it is fingerprinted "identity" so that reloading the policy in a
    new process (new random ``lora_A``) does not invalidate records of the starting policy.
    """
    tag = f".{adapter}."
    params = sorted((n, p) for n, p in policy.model.named_parameters() if "lora_" in n and tag in n)
    if not params:
        return "no-adapter"
    if policy.adapter_is_identity(adapter):
        return "identity"
    h = hashlib.sha256()
    lora_cfg = policy.model.peft_config.get(adapter)
    h.update(f"{getattr(lora_cfg, 'r', None)}/{getattr(lora_cfg, 'lora_alpha', None)}".encode())
    for name, p in params:
        h.update(name.replace(tag, ".").encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


Judges = dict[str, Scorer]


def as_judges(judge: Scorer | Judges | None) -> Judges:
    """A judge, a ``{spec: scorer}`` mapping or None -> ``{spec: scorer}`` (in order)."""
    if judge is None:
        return {}
    if isinstance(judge, dict):
        return dict(judge)
    return {judge.name: judge}


def eval_signature(policy: Policy, adapter: str, settings: EvalConfig, scorer: Scorer, judge: Scorer | Judges | None,
                   reward_input: str, rouge: bool, reward_cfg: RewardConfig | None = None, *,
                   samples_per_prompt: int = 1, temperature: float = 1.0, faithfulness: bool = True) -> str:
    """What makes a record: model, adapter weights, decoding and scoring settings (a short hash)."""
    judges = as_judges(judge)
    parts = {
        "policy": str(policy.source),
        "adapter": adapter_fingerprint(policy, adapter),
        "do_sample": settings.do_sample,
        "max_new_tokens": settings.max_new_tokens,
        # Sampled outputs also depend on the noise: the seed, the temperature and the batching.
        "sampling": [settings.seed, temperature, settings.batch_size] if settings.do_sample else None,
        "reward": [scorer.name, getattr(scorer, "reward_label", None), getattr(scorer, "toxic_label", None), reward_input],
        "judge": [[spec, getattr(j, "toxic_label", None)] for spec, j in judges.items()] or None,
        "rouge": rouge,
        "faithfulness": faithfulness,
        "shaping": None if reward_cfg is None else [reward_cfg.transform, reward_cfg.weight, reward_cfg.faithfulness_weight,
                                                    reward_cfg.missing_eos_penalty, reward_cfg.logit_ceiling],
    }
    if samples_per_prompt > 1:
        # Since 2026-11-30 the k samples of a prompt are drawn together (prompt-major batches, one
        # shared prompt pass): other noise than the earlier sample-major batches, so those are redone.
        parts["layout"] = "prompt-major"
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _resume_records(path: Path, wanted: dict[tuple[int, int], str], signature: str) -> set[tuple[int, int]]:
    """Keep the records of ``path`` that answer this request; return their keys.

    ``wanted`` maps each requested ``(index, sample)`` to the id of its prompt. Dropped (and
    recomputed): a half-written line left by an interruption, a duplicate, a record outside the
    request (e.g. from a run with more --num-samples), for another prompt, or with another signature.
    The file is rewritten with the kept records in their order.
    """
    if not path.is_file():
        return set()
    kept, done, stale = [], set(), 0
    for line in runfiles.read_jsonl(path):
        if not line.ok:
            continue  # a line cut by an interruption
        r = line.value
        try:
            key = (int(r["index"]), int(r["sample"]))
        except (KeyError, TypeError, ValueError):
            continue
        if key in done:
            continue
        if wanted.get(key, None) != r.get("id") or r.get("signature") != signature:
            stale += key in wanted
            continue
        kept.append(line)
        done.add(key)
    if stale:
        logger.warning("%s: %d earlier records were made with other settings, adapter or prompts; recomputing them", path, stale)
    path.write_text(runfiles.lines_text(kept))
    return done


def evaluate_policy(
    policy: Policy,
    examples: list[PromptExample],
    scorer: Scorer,
    judge: Scorer | Judges | None,
    out_path: str | Path,
    *,
    adapter: str,
    settings: EvalConfig,
    samples_per_prompt: int = 1,
    temperature: float = 1.0,
    rouge: bool = True,
    faithfulness: bool = True,
    progress: bool = True,
    reward_input: str = "response",
    reward_cfg: RewardConfig | None = None,
    faithfulness_scorer: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Generate, score and write records for ``examples[:num_samples]`` x k samples; return the summary.

    ``settings``: the evaluation settings (number of prompts, batch size, decoding, seed); this pass
    draws ``samples_per_prompt`` summaries per prompt (k > 1: expected maximum toxicity and P(any of k
    toxic); ``settings.samples_per_prompt`` is what :func:`evaluate_run` reads to add a sampled pass)
    at ``temperature``. ``rouge``, ``faithfulness``: measure them (``evaluate --no-rouge`` and
    ``--no-faithfulness`` turn them off); ``progress``: a progress bar.

    ``judge`` is one scorer or ``{spec: scorer}`` (every judge is recorded; the first is also
    ``judge_toxicity``). With ``reward_cfg``, each record's ``reward`` is the shaped reward that
    training maximises (:func:`detoxrl.rewards.shape_rewards`: transform, weight, faithfulness term,
    EOS penalty), and ``score_logit`` the classifier's raw logit. ``faithfulness_scorer``: a function
    giving the :class:`detoxrl.quality.FaithfulnessScorer` to use, called only when there is something
    to measure (the passes of :func:`evaluate_run` share one, which embeds each dialogue once); None: a
    new one for this pass.
    """
    check_eval_pass(settings, samples_per_prompt)
    judges = as_judges(judge)
    if reward_cfg is not None:
        reward_input = reward_cfg.input
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    examples = examples[: settings.num_samples]
    if not examples:
        raise DataError("there are no prompts to evaluate (the split is empty); raise data.max_rows or widen the data.min_chars/max_chars filter")
    # No references in this data (e.g. chitchat): ROUGE is skipped (rouge is null in the summary).
    rouge_on = rouge and not all(e.reference is None for e in examples)
    k = samples_per_prompt
    # Prompt-major: the k samples of a prompt lie in one batch and share one pass over the prompt
    # (rollout.generate's samples_per_prompt); a batch holds max(1, batch_size // k) prompts.
    keys = [(i, s) for i in range(len(examples)) for s in range(k)]
    signature = eval_signature(policy, adapter, settings, scorer, judges, reward_input, rouge_on, reward_cfg,
                               samples_per_prompt=k, temperature=temperature, faithfulness=faithfulness)
    done = _resume_records(out_path, {key: examples[key[0]].id for key in keys}, signature)
    # Fixed batches of the full request: a resumed evaluation regenerates a partly written batch
    # whole (same prompts, same seed) and writes only its missing records.
    rows_per_batch = max(1, settings.batch_size // k) * k
    batches = [keys[start : start + rows_per_batch] for start in range(0, len(keys), rows_per_batch)]
    batches = [b for b in batches if any(k not in done for k in b)]
    faith = None
    if (faithfulness or (reward_cfg is not None and reward_cfg.faithfulness_weight)) and batches:
        faith = (faithfulness_scorer or dialogue_faithfulness_scorer)()
    # The KL to the reference is measured on the adapter's own samples only: over greedy summaries the
    # log-ratio sums estimate nothing (they can be negative), and they cost two teacher-forced passes.
    measure_kl = settings.do_sample
    # Pure sampling (no top-k/top-p) when sampled, at this pass's temperature.
    decoding = GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample, temperature=temperature)
    bar = tqdm(total=len(keys) - len(done), desc=f"evaluate {out_path.stem}", unit="summary", disable=not progress)
    for chunk in batches:
        # One decoding seed per batch of the request: before and after see the same noise.
        torch.manual_seed(settings.seed + 7_919 * chunk[0][1] + chunk[0][0])
        exs = [examples[i] for i, _ in chunk]
        prompts_here = exs[::k]  # chunk is prompt-major: every k-th row starts a prompt
        # The adapter's log-probs for the KL, by collection's rule: none for the starting policy against
        # itself, none for greedy summaries (not samples of the policy: their log-ratio is no KL).
        got = collect(policy, prompts_here, decoding, scorer, reward_cfg or RewardConfig(input=reward_input, transform="logit"),
                      plan=logprob_plan("auto", policy, needed=measure_kl and adapter != REFERENCE_ADAPTER,
                                        skip_equal_reference=False),
                      samples_per_prompt=k, batch_size=len(chunk), adapter=adapter, faithfulness=faith,
                      pass_batch_size=16)  # the KL passes in chunks: a [rows, T, vocab] logits tensor each
        rollout = got.rollout
        columns = _measure_batch(policy, got, exs, judges, adapter, rouge_on=rouge_on, faithfulness=faithfulness,
                                 kl=measure_kl)
        decoded = "sampled" if settings.do_sample else "greedy"
        records = [_record(i, s, exs[j], rollout.responses[j], decoded, {key: col[j] for key, col in columns.items()}, signature)
                   for j, (i, s) in enumerate(chunk) if (i, s) not in done]
        runfiles.append_jsonl(out_path, records)
        bar.update(sum(k not in done for k in chunk))
    bar.close()
    summary = summarize_records(load_records(out_path))
    summary.update(
        adapter="starting policy (reference adapter)" if adapter == REFERENCE_ADAPTER else "trained adapter",
        decoding="sampled" if settings.do_sample else "greedy",
        max_new_tokens=settings.max_new_tokens,
        samples_per_prompt=k,
        reward_model=scorer.name,
        judge_model=next(iter(judges)) if judges else None,
        judge_models=list(judges),
    )
    out_path.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary


def dialogue_faithfulness_scorer():
    """An evaluation's faithfulness scorer: it embeds each distinct dialogue once and reuses it."""
    from detoxrl.quality import FaithfulnessScorer

    return FaithfulnessScorer(remember_dialogues=True)


def _measure_batch(policy: Policy, got: Collected, exs: list[PromptExample], judges: Judges, adapter: str, *,
                   rouge_on: bool, faithfulness: bool, kl: bool) -> dict[str, list]:
    """Every measure of one collected batch, as columns (one value per row): the reward model's toxicity,
    raw logit and shaped reward, every judge, ROUGE, faithfulness, length and, with ``kl`` (a sampled
    pass), the KL to the reference (None otherwise)."""
    rollout, scored = got.rollout, got.scored
    judged = {spec: j.score(rollout.responses).toxicity.tolist() for spec, j in judges.items()}
    n = len(rollout.responses)
    rouge = _rouge(rollout.responses, exs) if rouge_on else [None] * n
    faithful = got.faithful if got.faithful is not None else [None] * n
    rewards = got.shaped.tolist()
    k1, k3 = _kl_to_reference(policy, rollout, adapter) if kl else ([None] * n, [None] * n)
    return {
        "length_tokens": [int(x) for x in rollout.response_mask.sum(1).tolist()],
        "reward": [float(x) for x in rewards],
        "score_logit": [float(x) for x in scored.reward],
        "toxicity": [float(x) for x in scored.toxicity],
        "judges": [{spec: float(values[j]) for spec, values in judged.items()} for j in range(n)],
        "rouge": rouge,
        "faithfulness": [None if (f is None or not faithfulness) else float(f) for f in faithful],
        "kl_k1": k1,
        "kl_k3": k3,
    }


def _record(index: int, sample: int, e: PromptExample, response: str, decoding: str, row: dict, signature: str) -> dict:
    """One line of an evaluation file (:data:`detoxrl.runfiles.EVAL_REQUIRED_KEYS` and the rest)."""
    rouge, judges = row["rouge"], row["judges"]
    return {
        "index": index,
        "id": e.id,
        "sample": sample,
        "prompt": e.prompt,
        "dialogue": e.dialogue,
        "reference": e.reference,
        "response": response,
        "length_tokens": row["length_tokens"],
        "decoding": decoding,
        "reward": row["reward"],
        "score_logit": row["score_logit"],
        "toxicity": row["toxicity"],
        "judge_toxicity": next(iter(judges.values())) if judges else None,
        "judges": judges,
        "rouge1": rouge["rouge1"] if rouge else None,
        "rouge2": rouge["rouge2"] if rouge else None,
        "rougeL": rouge["rougeL"] if rouge else None,
        "faithfulness": row["faithfulness"],
        "kl_k1": row["kl_k1"],
        "kl_k3": row["kl_k3"],
        "signature": signature,
    }


def _rouge(responses: list[str], examples: list[PromptExample]) -> list[dict | None]:
    from detoxrl.quality import rouge_scores

    if any(e.reference is None for e in examples):
        raise DataError("some evaluated rows have no reference summary; ROUGE needs them: set data.summary_column or pass --no-rouge")
    return rouge_scores(responses, [e.reference for e in examples])


@torch.inference_mode()
def _kl_to_reference(policy: Policy, rollout, adapter: str) -> tuple[list[float], list[float]]:
    """Per-summary KL (k1 and k3 sums) of the evaluated adapter to the reference, on its own outputs."""
    if adapter == REFERENCE_ADAPTER:
        zeros = [0.0] * len(rollout)
        return zeros, zeros
    mask = rollout.response_mask.bool()
    lp = rollout.logprobs  # recorded by generate with ``adapter`` (captured or teacher-forced)
    if lp is None:
        with policy.use_adapter(adapter):
            lp = forward_pass(policy, rollout, with_values=False)["logprobs"]
    ref = rollout.ref_logprobs  # by the same computation as ``lp`` (generate's teacher-forced passes)
    if ref is None:
        with policy.use_adapter(REFERENCE_ADAPTER):
            ref = forward_pass(policy, rollout, with_values=False)["logprobs"]
    k1 = sequence_kl(lp, ref, mask, kl_k1)
    k3 = sequence_kl(lp, ref, mask, kl_k3)
    return [float(x) for x in k1.tolist()], [float(x) for x in k3.tolist()]


def load_records(path: str | Path) -> list[dict]:
    """All records of an evaluation file; an unreadable line raises :class:`json.JSONDecodeError`."""
    return runfiles.strict_values(runfiles.read_jsonl(path))


def summarize_records(records: list[dict]) -> dict[str, Any]:
    """The evaluation summary: toxicity (reward model and every judge), quality, length, KL."""
    def column(key):
        vals = [r[key] for r in records if r.get(key) is not None]
        return np.asarray(vals, dtype=float) if vals else None

    out: dict[str, Any] = {"n": len(records), "prompts": len({r["index"] for r in records})}
    tox = column("toxicity")
    out["toxicity"] = summarize(tox) if tox is not None else None
    judge = column("judge_toxicity")
    out["judge"] = summarize(judge) if judge is not None else None
    specs = list(dict.fromkeys(spec for r in records for spec in (r.get("judges") or {})))
    out["judges"] = {spec: summarize([r["judges"][spec] for r in records if spec in (r.get("judges") or {})]) for spec in specs}
    rew = column("reward")
    out["reward"] = {"mean": float(rew.mean()), "std": float(rew.std())} if rew is not None else None
    out["rouge"] = (
        {k: float(column(k).mean()) for k in ("rouge1", "rouge2", "rougeL")} if column("rougeL") is not None else None
    )
    faith = column("faithfulness")
    out["faithfulness"] = float(faith.mean()) if faith is not None else None
    out["length_tokens"] = float(column("length_tokens").mean()) if records else None
    k1, k3 = column("kl_k1"), column("kl_k3")
    # Over the adapter's own samples these sums estimate its KL to the reference; greedy summaries are
    # not samples (records before 2026-12-07 hold their log-ratio sums, which estimate nothing).
    sampled = any(r.get("decoding") == "sampled" for r in records)
    out["kl_to_reference"] = {"k1": float(k1.mean()), "k3": float(k3.mean())} if sampled and k1 is not None else None
    k = max((r["sample"] for r in records), default=0) + 1
    if k > 1:
        def by_prompt(get) -> np.ndarray:
            groups: dict[int, list[float]] = {}
            for r in records:
                groups.setdefault(r["index"], []).append(get(r))
            return np.asarray([v for v in groups.values() if len(v) == k])

        out["samples_per_prompt"] = k
        full = by_prompt(lambda r: r["toxicity"])
        out["expected_max_toxicity"] = expected_max(full)
        out["toxicity_probability"] = prob_any_toxic(full)
        out["judges_expected_max"] = {}
        for spec in specs:
            values = by_prompt(lambda r: (r.get("judges") or {}).get(spec, np.nan))
            if values.size and np.isfinite(values).all():
                out["judges_expected_max"][spec] = {"expected_max": expected_max(values), "toxicity_probability": prob_any_toxic(values)}
    return out


def judge_specs(cfg: DetoxConfig) -> list[str]:
    """The configured judges, in order (``MODEL`` or ``MODEL#TOXIC_LABEL``)."""
    return list(cfg.evaluation.judge_model or [])


def check_judges(cfg: DetoxConfig) -> list[tuple[str, str]]:
    """Resolve every judge's labels from its config alone: an unknown judge or label is an error
    before any model loads."""
    return [check_judge(spec, cfg.evaluation.judge_toxic_label, cfg.evaluation.judge_trust_remote_code) for spec in judge_specs(cfg)]


def build_judges(cfg: DetoxConfig, device: str | torch.device = "cpu") -> Judges:
    """``{spec: scorer}`` for every configured judge, in order (empty when none is set).

    A judge may be the reward model itself (the seed preset has no independent classifier); it is
    built as given."""
    return {
        spec: build_judge_scorer(spec, cfg.evaluation.judge_toxic_label, batch_size=cfg.reward.batch_size,
                                 max_length=cfg.reward.max_length, device=device,
                                 trust_remote_code=cfg.evaluation.judge_trust_remote_code)
        for spec in judge_specs(cfg)
    }


def build_judge(cfg: DetoxConfig, device: str | torch.device = "cpu") -> Scorer | None:
    """The first configured judge, or None."""
    judges = build_judges(cfg, device)
    return next(iter(judges.values())) if judges else None


#: Files of one evaluation folder: greedy pass ``before/after.jsonl``, sampled pass ``*-sampled.jsonl``.
SAMPLED_SUFFIX = "-sampled"


def evaluation_passes(cfg: DetoxConfig, samples_per_prompt: int | None = None) -> list[tuple[str, EvalConfig, int]]:
    """The passes of an evaluation, as ``(file suffix, settings, samples per prompt)``: the configured
    decoding (``cfg.evaluation``, one summary per prompt), then, when ``samples_per_prompt`` (default
    ``evaluation.samples_per_prompt``) is >= 1, k pure samples per prompt (as in training)."""
    k = cfg.evaluation.samples_per_prompt if samples_per_prompt is None else samples_per_prompt
    passes = [("", cfg.evaluation, 1)]
    if k >= 1:
        passes.append((SAMPLED_SUFFIX, dataclasses.replace(cfg.evaluation, do_sample=True), k))
    return passes


def evaluate_run(
    policy: Policy,
    examples: list[PromptExample],
    scorer: Scorer,
    judges: Judges,
    out_dir: str | Path | Callable[[], Path],
    *,
    cfg: DetoxConfig,
    with_after: bool = True,
    train: Callable[[], Any] | None = None,
    samples_per_prompt: int | None = None,
    rouge: bool = True,
    faithfulness: bool = True,
    progress: bool | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The before -> (train) -> after -> compare sequence of ``evaluate``, ``demo`` and any future command.

    The starting policy (reference adapter) and, with ``with_after``, the trained adapter, on the same
    prompts, in every pass of :func:`evaluation_passes`: first with the configured decoding
    (``before.jsonl``/``after.jsonl``), then, when ``samples_per_prompt`` (default
    ``cfg.evaluation.samples_per_prompt``) is >= 1, with k pure samples per prompt
    (``before-sampled.jsonl``/``after-sampled.jsonl``), at ``generation.temperature``. Then
    :func:`detoxrl.compare.compare_run` writes ``compare.json``. Returns ``{"passes": {name: summary},
    "comparison": headline | None}``. ``rouge``, ``faithfulness``: as :func:`evaluate_policy`;
    ``progress`` (default ``run.progress``): progress bars.

    With ``train`` (``demo``), the starting policy is evaluated first (every pass), then ``train()``
    trains the adapter, then every pass runs again: the starting policy's from its records, the trained
    adapter's anew. ``out_dir`` may be a function giving the folder when each part starts (a run folder
    that training moves into place). ``on_phase(text)`` is told what starts next (for progress lines).
    """
    folder = out_dir if callable(out_dir) else (lambda: Path(out_dir))
    options = dict(rouge=rouge, faithfulness=faithfulness, progress=cfg.run.progress if progress is None else progress)
    if train is not None:
        _evaluate_passes(policy, examples, scorer, judges, folder(), cfg=cfg, with_after=False,
                         samples_per_prompt=samples_per_prompt, on_phase=on_phase, **options)
        train()
    out = Path(folder())
    summaries = _evaluate_passes(policy, examples, scorer, judges, out, cfg=cfg, with_after=with_after,
                                 samples_per_prompt=samples_per_prompt, on_phase=on_phase, **options)
    comparison = None
    if with_after:
        from detoxrl.compare import VerdictRule, compare_run

        comparison = compare_run(out, rule=VerdictRule.from_config(cfg.evaluation))
    return {"passes": summaries, "comparison": comparison}


def _evaluate_passes(policy: Policy, examples: list[PromptExample], scorer: Scorer, judges: Judges, out_dir: Path, *,
                     cfg: DetoxConfig, with_after: bool, samples_per_prompt: int | None,
                     on_phase: Callable[[str], None] | None, **options: bool) -> dict[str, Any]:
    """Every pass of the starting policy and, ``with_after``, of the trained adapter: ``{name: summary}``."""
    summaries: dict[str, Any] = {}
    shared_faithfulness = functools.cache(dialogue_faithfulness_scorer)  # loaded once, if any pass needs it
    for suffix, settings, k in evaluation_passes(cfg, samples_per_prompt):
        what = f"{'sampled, ' + str(k) + ' per prompt' if settings.do_sample else 'greedy'}"
        sides = [("before", REFERENCE_ADAPTER)] + ([("after", POLICY_ADAPTER)] if with_after else [])
        for name, adapter in sides:
            if on_phase:
                who = "starting policy" if adapter == REFERENCE_ADAPTER else "trained adapter"
                on_phase(f"{who}, {what}, on {len(examples[: settings.num_samples])} held-out prompts")
            summaries[name + suffix] = evaluate_policy(
                policy, examples, scorer, judges, out_dir / f"{name}{suffix}.jsonl", adapter=adapter, settings=settings,
                samples_per_prompt=k, temperature=cfg.generation.temperature, reward_cfg=cfg.reward,
                faithfulness_scorer=shared_faithfulness, **options
            )
    return summaries


def result_lines(result: dict) -> list[str]:
    """What ``detoxrl evaluate`` prints: each side's toxicity by the reward model and the first judge, the
    notebook's percentage improvement, the comparison (:func:`detoxrl.compare.format_headline`: every
    classifier, the verdict and its table), ROUGE and faithfulness."""
    from detoxrl.compare import format_headline

    def line(name: str, s: dict | None) -> str:
        if not s:
            return f"{name}: n/a"
        return (f"{name}: mean {s['mean']:.4f}  std {s['std']:.4f}  p95 {s['p95']:.4f}  toxic>=0.5 {s['ratio']:.3f}  "
                f"max {s['max']:.4f}")

    out = [f"evaluated {result['n']} summaries ({result.get('decoding')}); records in {result.get('output')}"]
    if "before" in result:
        b = result["before"]
        out.append("before  " + line("toxicity", b["toxicity"]) + "  | " + line("judge", b.get("judge")))
        out.append("after   " + line("toxicity", result["toxicity"]) + "  | " + line("judge", result.get("judge")))
        imp = result["improvement"]
        pct = {k: "n/a" if imp.get(k) is None else f"{imp[k]:.2f}%" for k in ("mean", "std")}  # None: 0 before
        out.append(f"notebook's percentage improvement: mean {pct['mean']}  std {pct['std']}")
        out += list(format_headline(result["comparison"]))
    else:
        out += [line("toxicity", result["toxicity"]), line("judge", result.get("judge"))]
    if result.get("rouge"):
        out.append("ROUGE: " + ", ".join(f"{k} {v:.4f}" for k, v in result["rouge"].items()))
    if result.get("faithfulness") is not None:
        out.append(f"faithfulness (MiniLM cosine to the dialogue): {result['faithfulness']:.4f}")
    return out


def checkpoint_to_evaluate(run_dir: Path | None, step: int) -> tuple[str, Path]:
    """``evaluate --run RUN --checkpoint STEP``: the checkpoint's adapter folder and its default output folder."""
    from detoxrl.checkpoint import checkpoint_dir, list_checkpoints

    if run_dir is None:
        raise DetoxError("--checkpoint names a checkpoint of a run: pass --run DIR with it")
    ckpt = checkpoint_dir(run_dir, step)
    if not (ckpt / "adapter_model.safetensors").is_file():
        kept = [p.name for p in list_checkpoints(run_dir)]
        raise DetoxError(f"run '{run_dir}' has no checkpoint of step {step} (kept: {', '.join(kept) or 'none'}); "
                         "pass one of those steps, or train with --set run.keep_checkpoints=0 to keep every checkpoint")
    return str(ckpt), run_dir / "eval-checkpoints" / ckpt.name


@dataclasses.dataclass(frozen=True)
class EvaluationTarget:
    """What ``evaluate`` compares with the starting policy (None: the starting policy alone) and where."""

    adapter_dir: str | None
    out_dir: Path
    run_dir: Path | None
    step: int | None  # a checkpoint of the run


def evaluation_target(source, *, checkpoint: int | None, output: str | None, default: Path) -> EvaluationTarget:
    """The adapter and output folder of ``evaluate`` for ``source`` (a :class:`detoxrl.trained.TrainedWeights`
    or None). An adapter of a run is evaluated as part of its run: ``final/`` into ``RUN/eval``, a checkpoint
    (``--checkpoint STEP``, or ``--adapter RUN/checkpoints/step-N``) into ``RUN/eval-checkpoints/step-N``
    with the run's starting-policy records reused; an adapter of no run needs ``output``. Takes the run's
    lock when the output is inside it."""
    from detoxrl.runfolder import lock_folder

    run_dir = source.run_dir if source is not None else None
    adapter_dir = str(source.adapter_dir) if source is not None else None
    step, out = checkpoint, default
    name = source.adapter_dir.name if source is not None else ""
    if run_dir is not None and source.adapter_dir.parent.name == "checkpoints" and name[5:].isdigit():
        step = int(name[5:])  # --adapter RUN/checkpoints/step-N: as --run RUN --checkpoint N
    if step is not None:
        adapter_dir, out = checkpoint_to_evaluate(run_dir, step)
    elif run_dir is not None:
        out = run_dir / "eval"
    elif source is not None and not output:
        raise DetoxError(f"--adapter '{source.adapter_dir}' belongs to no detoxrl run: say where its evaluation goes "
                         "with --output DIR")
    out = Path(output) if output else out
    if run_dir is not None and out.resolve().is_relative_to(run_dir.resolve()):
        lock_folder(run_dir, "evaluate")  # not while a train or another evaluate writes the run
    if step is not None:
        reuse_starting_policy_records(run_dir / "eval", out)
    return EvaluationTarget(adapter_dir, out, run_dir, step)


def reuse_starting_policy_records(run_eval: Path, out_dir: Path) -> None:
    """The starting policy's records of the run's own evaluation, copied into a checkpoint's output folder:
    the same prompts, seeds and model, so the evaluation keeps them (their signature matches) and runs the
    checkpoint alone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted(run_eval.glob("before*.jsonl")) if run_eval.is_dir() else []:
        if not (out_dir / src.name).exists():
            shutil.copyfile(src, out_dir / src.name)


def evaluate_adapter(cfg: DetoxConfig, out_dir: str | Path, *, adapter_dir: str | Path | None, rouge: bool = True,
                     faithfulness: bool = True, progress: bool | None = None, fresh: bool = False,
                     on_phase: Callable[[str], None] | None = None, run_dir: Path | None = None) -> dict[str, Any]:
    """``detoxrl evaluate``: every cheap check (the output folder, the data, the models' folders and
    labels, the judges, the adapter's LoRA settings, the prompts' lengths) before any weights load;
    then the policy (with the adapter ``adapter_dir``, if any), the reward model and the judges; then
    :func:`evaluate_run` on the held-out split (or the train split, ``evaluation.split=train``) into
    ``out_dir``. ``fresh`` first removes earlier records there. With ``run_dir`` (the run the adapter
    belongs to), the split must be the one it trained with (its split.json: :func:`check_pinned_split`).
    Returns what :func:`evaluate_run` does."""
    from detoxrl.policy import load_policy
    from detoxrl.rewards import scorer_from_config
    from detoxrl.preflight import preflight, resolve_settings, tokenize_prompts
    from detoxrl.runfolder import check_writable_dir

    out_dir = Path(out_dir)
    check_writable_dir(out_dir, "--output")
    on_train = cfg.evaluation.split == "train"
    checked = preflight(cfg, require_train=on_train)  # resolves the reward labels (once)
    if run_dir is not None:
        check_pinned_split(runfiles.load_split(run_dir), checked.split, cfg.data.source, str(run_dir))
    check_judges(checked.cfg)
    if adapter_dir and not checked.cfg.policy.adapter:  # the evaluated adapter's LoRA settings, so its weights fit
        lora, _ = resolve_settings(checked.cfg, check_reward=False, adapter_dir=adapter_dir)
        checked = dataclasses.replace(checked, cfg=lora)
    cfg = checked.cfg
    prompts = tokenize_prompts(checked)  # before the weights load
    policy = load_policy(cfg.policy)
    if adapter_dir:
        policy.load_adapter_weights(adapter_dir)
    examples = prompts.train if on_train else prompts.test
    scorer = scorer_from_config(cfg.reward)
    judges = build_judges(cfg)
    if fresh:
        for path in out_dir.glob("*.json*"):
            if path.stem.startswith(("before", "after")):
                path.unlink()
    return evaluate_run(policy, examples, scorer, judges, out_dir, cfg=cfg, with_after=bool(adapter_dir), rouge=rouge,
                        faithfulness=faithfulness, progress=progress, on_phase=on_phase)
