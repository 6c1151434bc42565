"""Supervised fine-tuning (``detoxrl sft``): a LoRA adapter learns the reference summaries.

The reference notebook starts PPO from an adapter that the lab before it trained by supervised
fine-tuning (FLAN-T5 + LoRA on DialogSum's dialogue -> summary pairs). This module makes that adapter,
for seq2seq and causal policies alike; ``detoxrl train --adapter RUN/final`` continues from it, and
it is then PPO's frozen reference.

- **Data**: PPO's, step for step: the rows, length filter, unshuffled split and challenging-prompt
  selection of :func:`detoxrl.preflight.preflight`, the prompts (template, chat template, system turn)
  of :func:`detoxrl.prompts.build_prompts`, the train part only. A prompt's target is its row's
  reference summary (``data.summary_column``), tokenized without special tokens, then EOS: the token
  that ends a sampled summary, so the adapter learns to stop.
- **Loss**: the mean negative log-likelihood of the target tokens given the prompt (teacher forcing)
  over all target tokens of the optimizer step's batch, whatever its micro-batches. The log-probs
  come from :func:`detoxrl.rollout.forward_pass`, the pass PPO's update uses, with the reference
  summary in place of a sampled response (:func:`pairs_as_rollout`): for a causal model the
  sequence is ``[left-padded prompt][target][right padding]`` and only target positions are scored,
  which is what transformers' labels of -100 on prompt and padding compute (tests/test_sft.py checks
  it against ``model(labels=...)``).
- **Optimizer**: AdamW on the LoRA weights, gradient-norm clipping, a linear (or constant) learning
  rate with optional warm-up, dropout on (the model's and LoRA's, as transformers' Trainer trains).
- **Run folder, checkpoints, --resume, --overwrite**: those of PPO (:mod:`detoxrl.trainer`,
  :mod:`detoxrl.checkpoint`): ``config.yaml``, ``metrics.jsonl`` (one line per step),
  ``checkpoints/step-N/`` with checksums (``trainer_state.json`` says ``"kind": "sft"``), ``final/``.
  The batch of a step and its dropout noise derive from ``(run.seed, step)``
  (:func:`detoxrl.schedule.batch_at`, :func:`detoxrl.schedule.step_seed`), so a resumed run equals one
  that never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from detoxrl import checkpoint as ckpt_lib
from detoxrl import runtime
from detoxrl.config import SFT_RESUME_FREE_SETTINGS, DetoxConfig, SFTConfig
from detoxrl.errors import DataError, TrainingError
from detoxrl.policy import Policy, load_policy, load_tokenizer
from detoxrl.prompts import PromptExample
from detoxrl.rollout import Rollout, forward_pass
from detoxrl.preflight import preflight, tokenize_prompts
from detoxrl.runfolder import (NEW_RUN_DIR, RunFolder, check_resume_settings, check_resumed_split, existing_run,
                               find_resume_point, flat_hparams, prepare_output_dir, start_run)
from detoxrl.schedule import batch_at, seed_everything, step_seed


@dataclass
class SFTPair:
    """One training pair: the prompt PPO would sample from, and the reference summary + EOS."""

    id: str
    prompt_ids: list[int]
    target_ids: list[int]


# --------------------------------------------------------------------------------------------
# Data: checks before any model loads


def check_references(cfg: DetoxConfig, train: list[dict]) -> list[dict]:
    """The train rows (PPO's split, as the preflight made it), each with a reference summary; else one line.

    Runs before the tokenizer loads: a data set without summaries (chitchat, a file without the
    column) or with empty ones is refused in a second.
    """
    column = cfg.data.summary_column
    empty = [r for r in train if not (r.get("summary") or "").strip()]
    if len(empty) == len(train):
        raise DataError(
            f"'{cfg.data.source}' has no reference summaries: column '{column}' is missing or empty in all {len(train)} train rows; "
            f"sft learns dialogue -> summary pairs: name the summary column with --set data.summary_column=NAME, or pass data "
            f"that has one (e.g. DialogSum)"
        )
    if empty:
        raise DataError(
            f"{len(empty)} of {len(train)} train rows of '{cfg.data.source}' have an empty reference summary in column '{column}' "
            f"(the first: row '{empty[0]['id']}'); fill them in or remove those rows, sft cannot learn an empty summary"
        )
    return train


def summary_targets(tokenizer: Any, summaries: Sequence[str]) -> list[list[int]]:
    """Token ids of each summary (stripped, no special tokens), then EOS: what a policy that writes
    that summary samples, and where it stops."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the policy's tokenizer has no EOS token, so a summary could not end; use a policy whose tokenizer has one")
    ids = tokenizer([s.strip() for s in summaries], add_special_tokens=False)["input_ids"] if summaries else []
    return [list(x) + [eos] for x in ids]


def build_pairs(examples: Sequence[PromptExample], tokenizer: Any, max_target_tokens: int) -> list[SFTPair]:
    """The training pairs of ``examples`` (the train prompts); a target above ``max_target_tokens``
    is one line saying how many there are and the fix."""
    targets = summary_targets(tokenizer, [e.reference or "" for e in examples])
    long = [(len(t), e.id) for e, t in zip(examples, targets) if len(t) > max_target_tokens]
    if long:
        longest, row = max(long)
        raise DataError(
            f"{len(long)} of {len(examples)} reference summaries are longer than sft.max_target_tokens={max_target_tokens} tokens "
            f"(with EOS; the longest, row '{row}', has {longest}); raise the limit with --set sft.max_target_tokens={longest}, "
            f"or shorten or remove those rows"
        )
    return [SFTPair(e.id, list(e.input_ids), t) for e, t in zip(examples, targets)]


def total_steps(sft: SFTConfig, n_pairs: int) -> int:
    """Optimizer steps of the run: ``sft.steps``, else ``ceil(sft.epochs * pairs / sft.batch_size)``."""
    if sft.steps is not None:
        return sft.steps
    return max(1, math.ceil(round(sft.epochs * n_pairs / sft.batch_size, 9)))


def lr_factor(step: int, total: int, schedule: str = "linear", warmup: int = 0) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a fraction of ``sft.learning_rate``.

    ``linear`` is transformers' ``get_linear_schedule_with_warmup`` (the Trainer's default): ``step /
    warmup`` during the warm-up, then down to 0 at ``total``; ``constant`` stays at 1 after the warm-up.
    """
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


# --------------------------------------------------------------------------------------------
# The loss


def pairs_as_rollout(pairs: Sequence[SFTPair], policy: Policy) -> Rollout:
    """The pairs laid out as a PPO rollout whose responses are the reference summaries.

    Prompts are padded as :func:`detoxrl.rollout.generate` pads them (left for causal models, so every
    target starts at the same column and the position ids come from the mask; right for seq2seq),
    targets on the right; the response mask is 1 on each target token, EOS included.
    """
    pad = policy.pad_token_id
    n = len(pairs)
    P = max(len(p.prompt_ids) for p in pairs)
    T = max(len(p.target_ids) for p in pairs)
    query_ids = torch.full((n, P), pad, dtype=torch.long)
    query_mask = torch.zeros((n, P), dtype=torch.long)
    response_ids = torch.full((n, T), pad, dtype=torch.long)
    response_mask = torch.zeros((n, T), dtype=torch.long)
    for i, p in enumerate(pairs):
        q = slice(0, len(p.prompt_ids)) if policy.is_seq2seq else slice(P - len(p.prompt_ids), P)
        query_ids[i, q] = torch.tensor(p.prompt_ids)
        query_mask[i, q] = 1
        response_ids[i, : len(p.target_ids)] = torch.tensor(p.target_ids)
        response_mask[i, : len(p.target_ids)] = 1
    device = policy.device
    return Rollout(query_ids.to(device), query_mask.to(device), response_ids.to(device), response_mask.to(device),
                   torch.ones(n, dtype=torch.bool, device=device), [""] * n, [""] * n)


def target_nll(policy: Policy, pairs: Sequence[SFTPair]) -> torch.Tensor:
    """Summed negative log-likelihood of the pairs' target tokens under the active adapter (a scalar
    with a gradient); divide by the number of target tokens for the mean."""
    rollout = pairs_as_rollout(pairs, policy)
    logprobs = forward_pass(policy, rollout, with_values=False)["logprobs"]
    return -torch.where(rollout.response_mask.bool(), logprobs, 0.0).sum()


# --------------------------------------------------------------------------------------------
# The run


class SupervisedTrainer(RunFolder):
    """Supervised LoRA fine-tuning on the train split's (prompt, reference summary) pairs.

    Arguments as :class:`detoxrl.trainer.Trainer`'s: with ``resume``, ``resume_from`` names the
    checkpoint and ``allow_config_change`` lets settings that affect the result differ from the
    checkpoint's (:data:`detoxrl.config.SFT_RESUME_FREE_SETTINGS` may differ anyway). ``policy``
    replaces the configured one (tests). ``cfg.policy.adapter`` continues from an existing adapter.
    Every check of the data (summaries present, non-empty, not too long) comes before the policy loads.
    """

    def __init__(self, cfg: DetoxConfig, *, resume: bool = False, resume_from: str = "auto", allow_config_change: bool = False,
                 policy: Policy | None = None):
        from accelerate import Accelerator

        self.cfg = cfg
        self.start_one_process(cfg, "sft")
        try:  # the cheap checks: a bad input leaves no folder behind, and no lock held
            point = find_resume_point(cfg, resume_from, kind="sft") if resume else None
            self.out_dir = Path(cfg.run.output_dir) if resume else prepare_output_dir(cfg, False, clear=False)
            checked = preflight(cfg, check_reward=False)
            self.cfg = cfg = checked.cfg  # with the LoRA settings of the adapter it starts from, if any
            check_references(cfg, checked.split.train)
            self.resume_plan = (check_resume_settings(cfg, point, allow_config_change=allow_config_change, free=SFT_RESUME_FREE_SETTINGS)
                                if resume else None)
            if resume:
                check_resumed_split(self.out_dir, checked.split, cfg)
            split = checked.split
            self.staging_dir = self.out_dir / NEW_RUN_DIR if not resume and existing_run(self.out_dir) else None
            self.run_dir = self.staging_dir or self.out_dir
            tokenizer = policy.tokenizer if policy else load_tokenizer(cfg.policy)
            self.prompts = tokenize_prompts(checked, tokenizer=tokenizer)
            self.pairs = build_pairs(self.prompts.train, tokenizer, cfg.sft.max_target_tokens)
            self.total_steps = total_steps(cfg.sft, len(self.pairs))
        except BaseException:
            self.folder_lock.abandon()
            raise
        seed_everything(cfg.run.seed)
        self.accelerator = Accelerator(cpu=runtime.accelerate_cpu_flag(), log_with=cfg.run.log_with or None, project_dir=str(self.run_dir))
        self.policy = policy or load_policy(cfg.policy, device=self.accelerator.device)
        self.params = self.policy.adapter_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.sft.learning_rate, weight_decay=cfg.sft.weight_decay)
        self.step_idx = 0
        if resume:
            self.resume_from_checkpoint()
        else:
            start_run(self.run_dir, cfg, split)
        if cfg.run.log_with:
            self.accelerator.init_trackers("detoxrl-sft", config=flat_hparams(cfg.to_dict()))

    def batch_pairs(self, step: int) -> list[SFTPair]:
        """The pairs of ``step``: consecutive slices of per-epoch seeded permutations, as PPO's prompts."""
        return batch_at(self.pairs, step, self.cfg.sft.batch_size, self.cfg.run.seed, self.cfg.data.shuffle)

    def step(self) -> dict[str, Any]:
        """One optimizer step over ``sft.batch_size`` pairs, in micro-batches of similar length."""
        s, step = self.cfg.sft, self.step_idx
        t0 = time.perf_counter()
        pairs = self.batch_pairs(step)
        lr = s.learning_rate * lr_factor(step, self.total_steps, s.lr_schedule, s.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n_target = sum(len(p.target_ids) for p in pairs)
        n_tokens = n_target + sum(len(p.prompt_ids) for p in pairs)
        by_length = sorted(pairs, key=lambda p: len(p.prompt_ids) + len(p.target_ids))  # stable: little padding per micro-batch
        torch.manual_seed(step_seed(self.cfg.run.seed, step))  # the dropout noise of this step
        self.optimizer.zero_grad(set_to_none=True)
        self.policy.model.train()
        nll = 0.0
        try:
            micro = s.micro_batch_size or len(by_length)
            for start in range(0, len(by_length), micro):
                loss = target_nll(self.policy, by_length[start : start + micro])
                self.accelerator.backward(loss / n_target)
                nll += float(loss.detach())
        finally:
            self.policy.model.eval()
        if s.max_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm))
        else:
            grads = [p.grad.detach().float().norm() for p in self.params if p.grad is not None]
            grad_norm = float(torch.stack(grads).norm()) if grads else 0.0
        finite = math.isfinite(nll) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        metrics = {
            "step": step + 1,
            "sft/loss": nll / n_target,
            "sft/learning_rate": lr,
            "sft/grad_norm": grad_norm,
            "sft/target_tokens": n_target,
            "sft/tokens": n_tokens,
            "sft/epoch": (step + 1) * s.batch_size / len(self.pairs),
            "time/step_s": dt,
            "time/tokens_per_s": n_tokens / dt if dt > 0 else None,
        }
        self.step_idx += 1
        self._log(metrics)
        if not finite:
            raise TrainingError(
                f"SFT step {step + 1} had a non-finite loss or gradient, so it was not applied; lower sft.learning_rate "
                f"(--set sft.learning_rate=...) or check the data (metrics: {self.run_dir / 'metrics.jsonl'})"
            )
        return metrics

    def train(self, steps: int | None = None) -> Path:
        """Run to the end of the schedule (or stop after step ``steps``), checkpointing; return ``final/``.

        An --overwrite run takes the earlier run's place at its first checkpoint, as PPO's does.
        """
        stop = min(steps, self.total_steps) if steps is not None else self.total_steps
        final = self.offline_loop("sft", stop, self.total_steps, lambda m: {
            "loss": f"{m['sft/loss']:.3f}", "lr": f"{m['sft/learning_rate']:.2e}", "tok_s": f"{m['time/tokens_per_s'] or 0:.0f}"})
        if self.cfg.run.log_with:
            self.accelerator.end_training()
        return final

    def save_checkpoint(self) -> Path:
        state = {"kind": "sft", "seed": self.cfg.run.seed, "total_steps": self.total_steps, "config": self.cfg.to_dict()}
        return ckpt_lib.save_checkpoint(self.run_dir, self.step_idx, self.policy, self.optimizer, state, keep=self.cfg.run.keep_checkpoints)
