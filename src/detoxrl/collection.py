"""One collection path: prompts -> sampled (or greedy) summaries -> scores -> shaped rewards.

Training (:mod:`detoxrl.trainer`) and evaluation (:mod:`detoxrl.evaluate`) both call :func:`collect`, so
a summary is generated, scored and rewarded the same way in both, and the choice of where the policy's
log-probs come from is made by one rule (:func:`logprob_plan`):

- ``capture``: recorded while decoding (no extra pass), where that is exact (float32, or
  ``ppo.capture_logprobs=on``);
- ``teacher_forced``: a teacher-forced pass over each decoded batch that reuses its prompt pass, and the
  reference's log-probs by the same computation (so the KL of equal adapters is exactly 0 in bf16);
- neither, under ZeRO-3 (whose synced generation runs extra passes) or when no log-prob is needed (the
  starting policy evaluated against itself).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from detoxrl.config import GenerationConfig, RewardConfig
from detoxrl.policy import REFERENCE_ADAPTER, Policy
from detoxrl.prompts import PromptExample
from detoxrl.rewards import ScoreResult, Scorer, shape_rewards, texts_for_scoring
from detoxrl.rollout import Rollout, capture_logprobs, generate


@dataclass(frozen=True)
class LogprobPlan:
    """Where a batch's log-probs come from (the keyword arguments of :func:`detoxrl.rollout.generate`)."""

    capture: bool
    teacher_forced: bool
    reference: str | None


def logprob_plan(mode: str, policy: Policy, *, needed: bool = True, zero3: bool = False,
                 skip_equal_reference: bool = True) -> LogprobPlan:
    """The one rule for the policy's log-probs of a batch: ``mode`` is ``ppo.capture_logprobs`` (auto | on |
    off; evaluation uses auto). ``needed=False``: no log-prob at all (the reference adapter scored against
    itself). The reference's log-probs come with the teacher-forced pass, except, with
    ``skip_equal_reference`` (training), while the adapters are equal: the policy's own are then exact."""
    if not needed:
        return LogprobPlan(False, False, None)
    capture = capture_logprobs(mode, policy.compute_dtype) and not zero3
    teacher_forced = not capture and not zero3
    skip = skip_equal_reference and policy.adapters_identical()
    return LogprobPlan(capture, teacher_forced, REFERENCE_ADAPTER if teacher_forced and not skip else None)


@dataclass
class Collected:
    """A batch collected by :func:`collect`: the rollout (rows prompt-major, k per prompt), the classifier's
    scores of each summary, the shaped reward (:func:`detoxrl.rewards.shape_rewards`), faithfulness where
    it was measured, and the seconds spent decoding (without the teacher-forced passes, which
    ``rollout.pass_seconds`` counts) and scoring."""

    rollout: Rollout
    scored: ScoreResult
    shaped: torch.Tensor
    faithful: list[float] | None
    generate_seconds: float
    score_seconds: float


def collect(policy: Policy, examples: list[PromptExample], decoding: GenerationConfig, scorer: Scorer,
            reward_cfg: RewardConfig, *, plan: LogprobPlan, samples_per_prompt: int = 1, batch_size: int = 16,
            pass_batch_size: int | None = None, adapter: str | None = None, faithfulness=None,
            score_clip: float | None = None, progress: bool = False, synced_gpus: bool = False) -> Collected:
    """Generate ``samples_per_prompt`` summaries of each example with ``adapter`` (default: the trainable
    one), score them with ``scorer`` and shape the rewards with ``reward_cfg``. ``faithfulness``: a
    :class:`detoxrl.quality.FaithfulnessScorer` to measure each summary against its dialogue (None: not
    measured). The caller seeds the sampling."""
    k = samples_per_prompt
    t0 = time.perf_counter()
    rollout = generate(
        policy,
        [e.input_ids for e in examples],
        [e.prompt for e in examples],
        decoding,
        batch_size=batch_size,
        progress=progress,
        adapter=adapter,
        capture=plan.capture,
        teacher_forced=plan.teacher_forced,
        reference=plan.reference,
        pass_batch_size=pass_batch_size,
        samples_per_prompt=k,  # rows prompt-major: i*k .. i*k+k-1 answer prompt i
        synced_gpus=synced_gpus,
    )
    t1 = time.perf_counter()
    scored = scorer.score(texts_for_scoring(rollout.queries, rollout.responses, reward_cfg.input))
    dialogues = [e.dialogue for e in examples for _ in range(k)]
    faithful = faithfulness.score(rollout.responses, dialogues) if faithfulness is not None else None
    shaped = shape_rewards(scored, reward_cfg, reward_label=scorer.reward_label, ended=rollout.ended,
                           faithfulness=faithful if reward_cfg.faithfulness_weight else None, score_clip=score_clip)
    return Collected(rollout, scored, shaped, faithful, t1 - t0 - rollout.pass_seconds, time.perf_counter() - t1)
