"""PPO losses and the update's guard. Pure functions, no model code.

The per-token log-probs and entropy they are computed from, and ``masked_mean``, live in
:mod:`detoxrl.tokenstats` (the rollout reads them too).

Shapes: ``B`` = batch, ``T`` = response length (right padded), ``V`` = vocabulary. ``mask`` is 1
on real response tokens, 0 on padding. All arithmetic is float32 (inputs cast with ``.float()``):
the ratio exp(logp - old_logp) is where bf16 rounding would bite first (docs/performance.md, "bf16 and the KL").

References: Schulman et al. 2017 (PPO, arXiv:1707.06347); trl 0.11.4 ``PPOTrainer.loss``;
CleanRL ``ppo.py``; "The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024).
"""

from __future__ import annotations

import math

import torch

from detoxrl.tokenstats import masked_mean


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate, masked mean over response tokens.

    logprobs: [B, T] under the current policy (carries the gradient). old_logprobs: [B, T] from
    the rollout. advantages: [B, T] (already whitened). mask: [B, T]. clip_ratio: epsilon (0.2).

        ratio = exp(logp - old_logp)
        L     = mean over tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))

    Returns (loss: scalar tensor, stats): clipfrac (share of tokens whose clipped term won, so
    their gradient is zero), approxkl = 0.5 * mean((logp - old_logp)^2), ratio_mean, ratio_max.
    """
    keep = mask.bool()
    # old log-probs and advantages are constants of the rollout: no gradient may flow into them.
    # On padding the log-ratio is set to 0 before exp, so garbage there cannot overflow to inf.
    log_ratio = torch.where(keep, logprobs.float() - old_logprobs.float().detach(), 0.0)
    advantages = torch.where(keep, advantages.float().detach(), 0.0)
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
    # The pessimistic (larger) loss: once the ratio has moved past the clip in the direction the
    # advantage favours, the clipped term wins and that token stops pushing.
    loss = masked_mean(torch.max(pg_losses, pg_losses_clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_losses_clipped > pg_losses).float(), mask).item(),
            "approxkl": (0.5 * masked_mean(log_ratio**2, mask)).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
            "ratio_max": ratio[keep].max().item() if keep.any() else float("nan"),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_value: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss (trl / OpenAI baselines style), masked mean over response tokens.

    values: [B, T] from the value head now (carries the gradient). old_values: [B, T] from the
    rollout. returns: [B, T] GAE targets. clip_value: how far a prediction may move from its old
    value before its error is measured at the clip instead.

        V_clipped = old_V + clip(V - old_V, -c, c)
        L         = 0.5 * mean over tokens of max((V - R)^2, (V_clipped - R)^2)

    Returns (loss: scalar tensor, stats): vf_clipfrac (share of tokens where the clipped error
    won), value_error = mean((V - R)^2).
    """
    old_values = old_values.float().detach()
    returns = returns.float().detach()
    values = values.float()
    values_clipped = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_losses, vf_losses_clipped), mask)
    with torch.no_grad():
        stats = {
            "vf_clipfrac": masked_mean((vf_losses_clipped > vf_losses).float(), mask).item(),
            "value_error": masked_mean(vf_losses, mask).item(),
        }
    return loss, stats


def is_finite_and_sane(loss: torch.Tensor | float, ratio_mean: float, ratio_threshold: float) -> bool:
    """The update guard: True if this minibatch may be applied.

    False if the loss is NaN/inf, or the mean ratio is NaN/inf or outside
    [1 / ratio_threshold, ratio_threshold] (the policy has run away from the rollout policy).
    The update loop skips such a minibatch and counts it; it never applies it.
    """
    loss = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    ratio_mean = float(ratio_mean)
    if not (math.isfinite(loss) and math.isfinite(ratio_mean)):
        return False
    return 1.0 / ratio_threshold <= ratio_mean <= ratio_threshold
