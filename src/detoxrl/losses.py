"""The update's losses (PPO's clipped surrogate and value loss, GRPO's KL term, DPO's preference loss)
and its guard. Pure functions, no model code.

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


def kl_penalty_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's KL term: the k3 estimate of KL(pi || pi_ref) per token, masked mean over response tokens.

    logprobs: [B, T] under the current policy (carries the gradient). ref_logprobs: [B, T] of the frozen
    reference, a constant. k3 = exp(ref - logp) - (ref - logp) - 1 is >= 0 for every token and unbiased for
    the KL when the tokens are the policy's own samples (Schulman 2020); its gradient pulls logp toward
    ref_logprob. The trainer adds beta times this loss to the clipped surrogate (Shao et al. 2024).
    Returns (loss, {"kl_k3": the loss's value}).
    """
    keep = mask.bool()
    log_r = torch.where(keep, ref_logprobs.float().detach() - logprobs.float(), 0.0)  # 0 on padding: k3 = 0 there
    loss = masked_mean(torch.expm1(log_r) - log_r, mask)
    return loss, {"kl_k3": float(loss.detach())}


def dpo_loss(
    chosen_logprobs: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    ref_chosen_logprobs: torch.Tensor,
    ref_rejected_logprobs: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO's loss over a batch of preference pairs (Rafailov et al. 2023, arXiv:2305.18290).

    Each argument is [N]: a summary's log-probability (its tokens' log-probs summed) under the policy
    (chosen, rejected: carrying the gradient) and under the frozen reference (constants).

        margin = beta * ((logp_c - ref_c) - (logp_r - ref_r))
        L      = mean over pairs of -log sigmoid(margin)

    Returns (loss, stats): ``reward_chosen`` and ``reward_rejected``, the mean implicit rewards
    beta * (logp - ref); ``margin`` their mean difference; ``accuracy``, the share of pairs whose
    chosen summary has the larger implicit reward (0.5 counts for a tie, as at the start).
    """
    chosen = beta * (chosen_logprobs.float() - ref_chosen_logprobs.float().detach())
    rejected = beta * (rejected_logprobs.float() - ref_rejected_logprobs.float().detach())
    margin = chosen - rejected
    loss = -torch.nn.functional.logsigmoid(margin).mean()
    with torch.no_grad():
        stats = {
            "reward_chosen": float(chosen.mean()),
            "reward_rejected": float(rejected.mean()),
            "margin": float(margin.mean()),
            "accuracy": float(((margin > 0).float() + 0.5 * (margin == 0).float()).mean()),
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
