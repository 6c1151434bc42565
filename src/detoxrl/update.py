"""The update stage: clipped PPO over minibatches and epochs, with a guard against bad steps.

A minibatch whose loss is not finite, or whose mean probability ratio leaves
[1/ratio_threshold, ratio_threshold], is skipped and counted, never applied (trl 0.11.4 skipped
the whole batch on ratio; here only the offending minibatch is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detoxrl.advantages import masked_mean
from detoxrl.losses import is_finite_and_sane, policy_loss, value_loss
from detoxrl.policy import Policy
from detoxrl.rollout import Rollout, forward_pass


@dataclass
class UpdateBatch:
    """Everything the update needs, computed once per step under no_grad."""

    rollout: Rollout
    old_logprobs: torch.Tensor  # [B, T]
    old_values: torch.Tensor  # [B, T]
    advantages: torch.Tensor  # [B, T] (whitened if configured)
    returns: torch.Tensor  # [B, T]


def ppo_update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    batch: UpdateBatch,
    *,
    epochs: int,
    mini_batch_size: int,
    clip_ratio: float,
    clip_value: float,
    vf_coef: float,
    max_grad_norm: float | None,
    ratio_threshold: float,
    temperature: float,
    generator: torch.Generator,
    group_by_length: bool = False,
    backward=None,
    clip_grad_norm=None,
) -> dict[str, float]:
    """Run ``epochs`` passes of shuffled minibatches; return mean statistics over applied minibatches.

    Each minibatch's forward pass is cut to its own padding; ``group_by_length`` puts rows of
    similar length together so that little padding is left (see :func:`minibatch_indices`).
    ``backward`` and ``clip_grad_norm`` default to plain torch; the trainer passes accelerate's.
    """
    backward = backward or (lambda loss: loss.backward())
    clip_grad_norm = clip_grad_norm or torch.nn.utils.clip_grad_norm_
    params = policy.trainable_parameters()
    n = len(batch.rollout)
    sums: dict[str, float] = {}
    applied = skipped = 0
    lengths = (batch.rollout.query_mask.sum(1) + batch.rollout.response_mask.sum(1)).cpu()
    for _ in range(epochs):
        for idx in minibatch_indices(lengths, mini_batch_size, generator, group_by_length):
            sub = batch.rollout.select(idx).trimmed(policy.is_seq2seq)
            T = sub.response_ids.shape[1]
            mask = sub.response_mask.float()
            out = forward_pass(policy, sub, temperature=temperature, with_values=True)
            pg_loss, pg_stats = policy_loss(out["logprobs"], batch.old_logprobs[idx, :T], batch.advantages[idx, :T], mask, clip_ratio)
            vf_loss, vf_stats = value_loss(out["values"], batch.old_values[idx, :T], batch.returns[idx, :T], mask, clip_value)
            loss = pg_loss + vf_coef * vf_loss
            if not is_finite_and_sane(loss, pg_stats["ratio_mean"], ratio_threshold):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.zero_grad(set_to_none=True)
            backward(loss)
            grad_norm = clip_grad_norm(params, max_grad_norm) if max_grad_norm else _grad_norm(params)
            if not torch.isfinite(torch.as_tensor(grad_norm)):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.step()
            applied += 1
            stats = {
                "ppo/loss/policy": float(pg_loss.detach()),
                "ppo/loss/value": float(vf_loss.detach()),
                "ppo/loss/total": float(loss.detach()),
                "ppo/policy/clipfrac": pg_stats["clipfrac"],
                "ppo/policy/approxkl": pg_stats["approxkl"],
                "ppo/policy/ratio_mean": pg_stats["ratio_mean"],
                "ppo/val/clipfrac": vf_stats["vf_clipfrac"],
                "ppo/val/error": vf_stats["value_error"],
                "ppo/val/mean": float(masked_mean(out["values"].detach(), mask)),
                "ppo/grad_norm": float(grad_norm),
            }
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
    result = {k: v / applied for k, v in sums.items()} if applied else {}
    result["ppo/applied_minibatches"] = applied
    result["ppo/skipped_minibatches"] = skipped
    return result


def minibatch_indices(lengths: torch.Tensor, mini_batch_size: int, generator: torch.Generator, group_by_length: bool) -> list[torch.Tensor]:
    """One epoch's minibatches: a random permutation cut into consecutive slices.

    With ``group_by_length`` the permutation is first sorted (stably) by ``lengths``, so rows of
    similar length share a minibatch and each pass carries little padding; equal lengths keep
    their random order and the minibatches are visited in random order.
    """
    n = len(lengths)
    perm = torch.randperm(n, generator=generator)
    if group_by_length:
        perm = perm[torch.argsort(lengths[perm], stable=True)]
    batches = [perm[start : start + mini_batch_size] for start in range(0, n, mini_batch_size)]
    if group_by_length:
        batches = [batches[int(j)] for j in torch.randperm(len(batches), generator=generator)]
    return batches


def _grad_norm(params) -> torch.Tensor:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.tensor(0.0)
