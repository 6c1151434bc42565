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
    backward=None,
    clip_grad_norm=None,
) -> dict[str, float]:
    """Run ``epochs`` passes of shuffled minibatches; return mean statistics over applied minibatches.

    ``backward`` and ``clip_grad_norm`` default to plain torch; the trainer passes accelerate's.
    """
    backward = backward or (lambda loss: loss.backward())
    clip_grad_norm = clip_grad_norm or torch.nn.utils.clip_grad_norm_
    params = policy.trainable_parameters()
    n = len(batch.rollout)
    sums: dict[str, float] = {}
    applied = skipped = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, mini_batch_size):
            idx = perm[start : start + mini_batch_size]
            sub = batch.rollout.select(idx)
            mask = sub.response_mask.float()
            out = forward_pass(policy, sub, temperature=temperature, with_values=True)
            pg_loss, pg_stats = policy_loss(out["logprobs"], batch.old_logprobs[idx], batch.advantages[idx], mask, clip_ratio)
            vf_loss, vf_stats = value_loss(out["values"], batch.old_values[idx], batch.returns[idx], mask, clip_value)
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


def _grad_norm(params) -> torch.Tensor:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.tensor(0.0)
