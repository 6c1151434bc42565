"""Offline preference optimisation (``detoxrl dpo``): pairs from the policy's own samples, then DPO.

trl's DPO trainer no longer takes encoder-decoder models; this one takes the policies ``train`` takes
(seq2seq and causal, LoRA), with the same run folder, checkpoints, ``--resume``, ``evaluate``, ``report``
and ``export``.

1. **Sampling.** The starting policy writes ``dpo.samples_per_prompt`` summaries of each train prompt
   (the challenging ones with ``data.min_dialogue_toxicity``), in one pass over each prompt
   (:func:`detoxrl.collection.collect`, the collection path of ``train``), at ``generation``'s settings.
   The reward model scores them and :func:`detoxrl.rewards.shape_rewards` shapes the score as training
   would; MiniLM measures each summary's faithfulness to its dialogue.
2. **Pairs.** :func:`pick_pair` keeps, per prompt, the pair with the largest reward gap among those whose
   gap is at least ``dpo.min_reward_gap`` and whose faithfulness differs by at most
   ``dpo.max_faithfulness_gap``, so that a pair teaches toxicity, not blandness or length. The pairs go
   into ``RUN/pairs.jsonl`` (a resume reads them back), what they cost into ``RUN/pairs.json``.
3. **DPO.** :func:`detoxrl.losses.dpo_loss` against the starting adapter, frozen as the reference
   (Rafailov et al. 2023, arXiv:2305.18290): the reference's log-probabilities of every pair are computed
   once, by the forward pass that training uses, so the first step's margins are 0 up to rounding.
   AdamW on the LoRA weights, dropout off (as trl's ``disable_dropout``), gradient clipping; the batch of
   a step derives from ``(run.seed, step)``, so a resumed run equals one that never stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from detoxrl import checkpoint as ckpt_lib
from detoxrl import runtime
from detoxrl import runfiles
from detoxrl.collection import collect, logprob_plan
from detoxrl.config import DPO_RESUME_FREE_SETTINGS, DetoxConfig
from detoxrl.errors import ConfigError, DataError, TrainingError
from detoxrl.losses import dpo_loss
from detoxrl.policy import REFERENCE_ADAPTER, Policy, forward_pass, load_policy, load_tokenizer
from detoxrl.preflight import preflight, tokenize_prompts
from detoxrl.prompts import PromptExample
from detoxrl.rewards import Scorer, scorer_from_config
from detoxrl.runfolder import (NEW_RUN_DIR, RunFolder, atomic_write, check_resume_settings, check_resumed_split,
                               existing_run, find_resume_point, prepare_output_dir, start_run)
from detoxrl.schedule import batch_at, seed_everything, step_seed
from detoxrl.sft import SFTPair, pairs_as_rollout, total_steps


@dataclass
class PreferencePair:
    """One pair: the prompt, the summary the reward model preferred and the one it did not (token ids
    and text), their shaped rewards and faithfulness, and their log-probabilities under the reference."""

    id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen: str
    rejected: str
    reward_chosen: float
    reward_rejected: float
    faithfulness_chosen: float | None
    faithfulness_rejected: float | None
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0


def pick_pair(rewards: Sequence[float], faithfulness: Sequence[float] | None, *, min_reward_gap: float,
              max_faithfulness_gap: float | None) -> tuple[tuple[int, int] | None, str | None]:
    """The (chosen, rejected) indices among one prompt's summaries, or None and why: ``"no gap"`` (no
    two rewards ``min_reward_gap`` apart) or ``"faithfulness"`` (every such pair differs in faithfulness
    by more than ``max_faithfulness_gap``). Of the pairs allowed, the one with the largest reward gap;
    ties go to the lower indices. Pure."""
    best, found_gap = None, False
    for i, ri in enumerate(rewards):
        for j, rj in enumerate(rewards):
            gap = ri - rj
            if i == j or not gap >= min_reward_gap or gap <= 0:
                continue
            found_gap = True
            if (max_faithfulness_gap is not None and faithfulness is not None
                    and abs(faithfulness[i] - faithfulness[j]) > max_faithfulness_gap):
                continue
            if best is None or gap > best[0]:
                best = (gap, i, j)
    if best is not None:
        return (best[1], best[2]), None
    return None, ("faithfulness" if found_gap else "no gap")


def sample_pairs(policy: Policy, examples: list[PromptExample], cfg: DetoxConfig, scorer: Scorer, faithfulness, *,
                 progress: bool = False) -> tuple[list[PreferencePair], dict[str, Any]]:
    """Sample, score and pair (steps 1 and 2 of the module's docstring): ``(pairs, what it cost)``."""
    k, d = cfg.dpo.samples_per_prompt, cfg.dpo
    per_batch = max(1, cfg.evaluation.batch_size // k)  # prompts per generate call: its k samples share one prompt pass
    pairs: list[PreferencePair] = []
    dropped = {"no gap": 0, "faithfulness": 0}
    tokens, t0 = 0, time.perf_counter()
    bar = tqdm(total=len(examples), desc="dpo: sampling", unit="prompt", disable=not progress)
    for b, start in enumerate(range(0, len(examples), per_batch)):
        chunk = examples[start : start + per_batch]
        torch.manual_seed(step_seed(cfg.run.seed, b))  # the samples of batch b, the same on a rerun
        got = collect(policy, chunk, cfg.generation, scorer, cfg.reward, plan=logprob_plan("auto", policy, needed=False),
                      samples_per_prompt=k, batch_size=len(chunk) * k, faithfulness=faithfulness)
        rollout, rewards = got.rollout, got.shaped.tolist()
        lengths = rollout.response_mask.sum(1).tolist()
        tokens += int(sum(lengths))
        for i, e in enumerate(chunk):
            rows = list(range(i * k, (i + 1) * k))
            faith = [got.faithful[r] for r in rows] if got.faithful is not None else None
            picked, why = pick_pair([rewards[r] for r in rows], faith, min_reward_gap=d.min_reward_gap,
                                    max_faithfulness_gap=d.max_faithfulness_gap)
            if picked is None:
                dropped[why] += 1
                continue
            c, r = rows[picked[0]], rows[picked[1]]
            pairs.append(PreferencePair(
                e.id, list(e.input_ids), rollout.response_ids[c, : int(lengths[c])].tolist(),
                rollout.response_ids[r, : int(lengths[r])].tolist(), rollout.responses[c], rollout.responses[r],
                rewards[c], rewards[r], None if faith is None else faith[picked[0]], None if faith is None else faith[picked[1]]))
        bar.update(len(chunk))
    bar.close()
    cost = {"prompts": len(examples), "samples": len(examples) * k, "generated_tokens": tokens, "pairs": len(pairs),
            "dropped_no_reward_gap": dropped["no gap"], "dropped_faithfulness_gap": dropped["faithfulness"],
            "sampling_seconds": round(time.perf_counter() - t0, 1)}
    return pairs, cost


def pair_logprobs(policy: Policy, pairs: Sequence[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] log-probabilities of the chosen and of the rejected summaries under the active adapter (summed
    over their tokens, EOS included when sampled), by one teacher-forced pass over the 2N sequences."""
    targets = ([SFTPair(p.id, p.prompt_ids, p.chosen_ids) for p in pairs]
               + [SFTPair(p.id, p.prompt_ids, p.rejected_ids) for p in pairs])
    rollout = pairs_as_rollout(targets, policy)
    logprobs = forward_pass(policy, rollout, with_values=False)["logprobs"]
    sums = torch.where(rollout.response_mask.bool(), logprobs, 0.0).sum(1)
    return sums[: len(pairs)], sums[len(pairs) :]


@torch.no_grad()
def add_reference_logprobs(policy: Policy, pairs: list[PreferencePair], batch_size: int) -> None:
    """Each pair's log-probabilities under the frozen reference (the starting adapter), in batches."""
    with policy.use_adapter(REFERENCE_ADAPTER):
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            chosen, rejected = pair_logprobs(policy, batch)
            for p, c, r in zip(batch, chosen.tolist(), rejected.tolist()):
                p.ref_chosen, p.ref_rejected = c, r


class PreferenceTrainer(RunFolder):
    """DPO of a LoRA adapter on pairs of the starting policy's own summaries (the module's docstring).

    Arguments as :class:`detoxrl.sft.SupervisedTrainer`'s; ``scorer`` replaces the configured reward model.
    Every check of the data and the settings comes before a model loads; the pairs are sampled once, when
    the run starts, and read back by a resume."""

    def __init__(self, cfg: DetoxConfig, *, resume: bool = False, resume_from: str = "auto", allow_config_change: bool = False,
                 scorer: Scorer | None = None, policy: Policy | None = None):
        from accelerate import Accelerator

        if not cfg.generation.do_sample:
            raise ConfigError("detoxrl dpo pairs several sampled summaries per prompt: generation.do_sample must be true")
        self.start_one_process(cfg, "dpo")
        try:  # the cheap checks: a bad input leaves no folder behind, and no lock held
            point = find_resume_point(cfg, resume_from, kind="dpo") if resume else None
            self.out_dir = Path(cfg.run.output_dir) if resume else prepare_output_dir(cfg, False, clear=False)
            checked = preflight(cfg, check_reward=scorer is None)
            self.cfg = cfg = checked.cfg
            self.resume_plan = (check_resume_settings(cfg, point, allow_config_change=allow_config_change,
                                                      free=DPO_RESUME_FREE_SETTINGS) if resume else None)
            if resume:
                check_resumed_split(self.out_dir, checked.split, cfg)
            self.staging_dir = self.out_dir / NEW_RUN_DIR if not resume and existing_run(self.out_dir) else None
            self.run_dir = self.staging_dir or self.out_dir
            self.prompts = tokenize_prompts(checked, tokenizer=policy.tokenizer if policy else load_tokenizer(cfg.policy))
        except BaseException:
            self.folder_lock.abandon()
            raise
        seed_everything(cfg.run.seed)
        self.accelerator = Accelerator(cpu=runtime.accelerate_cpu_flag(), log_with=cfg.run.log_with or None, project_dir=str(self.run_dir))
        self.policy = policy or load_policy(cfg.policy, device=self.accelerator.device, value_head=False)
        self.params = self.policy.adapter_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.dpo.learning_rate, weight_decay=0.0)
        self.step_idx = 0
        if resume:
            self.pairs = [PreferencePair(**row) for row in runfiles.strict_values(runfiles.read_jsonl(self.out_dir / runfiles.PAIRS))]
            self.resume_from_checkpoint()
        else:
            start_run(self.run_dir, cfg, checked.split)
            self.pairs = self._make_pairs(scorer)
        self.total_steps = total_steps(cfg.dpo, len(self.pairs))

    def _make_pairs(self, scorer: Scorer | None) -> list[PreferencePair]:
        cfg = self.cfg
        n = min(cfg.dpo.num_prompts or len(self.prompts.train), len(self.prompts.train))
        examples = batch_at(self.prompts.train, 0, n, cfg.run.seed, cfg.data.shuffle)  # the first n of training's order
        faith = None
        if cfg.dpo.max_faithfulness_gap is not None or cfg.reward.faithfulness_weight:
            from detoxrl.quality import FaithfulnessScorer

            faith = FaithfulnessScorer()
        pairs, cost = sample_pairs(self.policy, examples, cfg, scorer or scorer_from_config(cfg.reward), faith,
                                   progress=cfg.run.progress)
        if not pairs:
            raise DataError(f"no preference pair among {cost['prompts']} prompts x {cfg.dpo.samples_per_prompt} samples "
                            f"({cost['dropped_no_reward_gap']} without a reward gap of dpo.min_reward_gap="
                            f"{cfg.dpo.min_reward_gap:g}, {cost['dropped_faithfulness_gap']} beyond dpo.max_faithfulness_gap); "
                            "lower dpo.min_reward_gap, raise dpo.samples_per_prompt, or use more challenging prompts")
        add_reference_logprobs(self.policy, pairs, cfg.dpo.batch_size)
        runfiles.append_jsonl(self.run_dir / runfiles.PAIRS, [asdict(p) for p in pairs])
        atomic_write(self.run_dir / runfiles.PAIRS_SUMMARY, json.dumps(cost, indent=1) + "\n")
        return pairs

    def step(self) -> dict[str, Any]:
        """One optimizer step over ``dpo.batch_size`` pairs."""
        d, step = self.cfg.dpo, self.step_idx
        t0 = time.perf_counter()
        pairs = batch_at(self.pairs, step, d.batch_size, self.cfg.run.seed, self.cfg.data.shuffle)
        self.optimizer.zero_grad(set_to_none=True)
        chosen, rejected = pair_logprobs(self.policy, pairs)
        loss, stats = dpo_loss(chosen, rejected, torch.tensor([p.ref_chosen for p in pairs], device=chosen.device),
                               torch.tensor([p.ref_rejected for p in pairs], device=chosen.device), d.beta)
        self.accelerator.backward(loss)
        norm = torch.nn.utils.clip_grad_norm_(self.params, d.max_grad_norm if d.max_grad_norm else math.inf)
        finite = math.isfinite(float(loss.detach())) and math.isfinite(float(norm))
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = {"step": step + 1, "dpo/loss": float(loss.detach()), **{f"dpo/{k}": v for k, v in stats.items()},
                   "dpo/grad_norm": float(norm), "dpo/epoch": (step + 1) * d.batch_size / len(self.pairs),
                   "time/step_s": time.perf_counter() - t0}
        self.step_idx += 1
        self._log(metrics)
        if not finite:
            raise TrainingError(f"DPO step {step + 1} had a non-finite loss or gradient, so it was not applied; lower "
                                f"dpo.learning_rate (metrics: {self.run_dir / 'metrics.jsonl'})")
        return metrics

    def train(self, steps: int | None = None) -> Path:
        """Run to ``dpo.steps`` (or ``dpo.epochs`` over the pairs), checkpointing; return ``final/``."""
        stop = min(steps, self.total_steps) if steps is not None else self.total_steps
        return self.offline_loop("dpo", stop, self.total_steps,
                                 lambda m: {"loss": f"{m['dpo/loss']:.3f}", "acc": f"{m['dpo/accuracy']:.2f}"})

    def save_checkpoint(self) -> Path:
        state = {"kind": "dpo", "seed": self.cfg.run.seed, "config": self.cfg.to_dict()}
        return ckpt_lib.save_checkpoint(self.run_dir, self.step_idx, self.policy, self.optimizer, state,
                                        keep=self.cfg.run.keep_checkpoints)
