"""From rewards to advantages: masked statistics, KL estimators, per-token rewards, GAE, KL control.

Pure tensor functions, no model code. Shapes: ``B`` = batch, ``T`` = response length (right
padded). ``mask`` is 1 on real response tokens and 0 on padding; it may be bool, int or float.
Every computation is done in float32 (inputs are cast with ``.float()``), because log-prob
ratios, KL and advantages are the statistics that bf16 rounding would change (docs/performance.md, "bf16 and the KL").

Padding is ignored with ``torch.where`` rather than multiplication, so that whatever sits on
padded positions (garbage log-probs, even inf or NaN) cannot leak into a result.

References: trl 0.11.4 ``core.py`` / ``ppo_trainer.py`` (masked_whiten, compute_rewards,
compute_advantages, AdaptiveKLController); Ziegler et al. 2019 (adaptive KL, arXiv:1909.08593);
Ahmadian et al. 2024 (RLOO, arXiv:2402.14740); Shao et al. 2024 (GRPO, arXiv:2402.03300);
Schulman et al. 2016 (GAE, arXiv:1506.02438); Schulman 2020, "Approximating KL divergence" (k1, k3).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from detoxrl.tokenstats import masked_mean


# --------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the masked elements (all of them together), as a scalar.

    x, mask: same shape. unbiased=True applies Bessel's correction n/(n-1), like trl's masked_var.
    """
    n = mask.bool().sum()
    if n == 0 or (unbiased and n == 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} unmasked elements, got {int(n)}")
    mean = masked_mean(x, mask)
    variance = masked_mean((x.float() - mean) ** 2, mask)
    if unbiased:
        variance = variance * n / (n - 1)  # Bessel's correction
    return variance


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whiten ``x`` with the mean and (unbiased) variance of its masked elements.

    x, mask: same shape; returns float32, same shape, 0 where mask == 0. shift_mean=False adds
    the mean back (trl whitens rewards that way: rescale without moving the mean).
    """
    x = x.float()
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)  # 1e-8 as in trl: a constant batch gives 0, not NaN
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0.0)


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(count, sum, sum of squares)`` of the masked elements of ``x``, as a float64 tensor [3].

    Moments of several shards add up (an all-reduce sum across processes, or a plain sum of the shards
    of one process) to the moments of all their elements together: :func:`whiten_with_moments` then
    whitens each shard with the statistics of the whole batch. float64, so that the one-pass variance
    below loses nothing to the sum of squares (float32 would keep 7 digits of it).
    """
    keep = mask.bool()
    x = torch.where(keep, x.double(), 0.0)
    return torch.stack([keep.sum().double(), x.sum(), (x * x).sum()])


def whiten_with_moments(x: torch.Tensor, mask: torch.Tensor, moments: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """:func:`masked_whiten` of one shard with the statistics of the whole batch.

    ``moments`` = (n, S1, S2): the count, sum and sum of squares of the masked elements of every shard
    (:func:`masked_moments`, summed over shards). Mean m = S1 / n, unbiased variance
    (S2 - n m^2) / (n - 1), as :func:`masked_var`; whitened = (x - m) / sqrt(var + 1e-8). Whitening the
    shards of a batch one by one with their summed moments equals whitening the concatenated batch
    (up to float rounding). Returns float32, 0 where mask == 0.
    """
    n, s1, s2 = (float(v) for v in moments)
    if n < 2:
        raise ValueError(f"whiten_with_moments needs at least 2 unmasked elements over all shards, got {n:g}")
    mean = s1 / n
    variance = max((s2 - n * mean * mean) / (n - 1), 0.0)  # max: rounding can leave a constant batch at -1e-17
    whitened = (x.double() - mean) / math.sqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened.float(), 0.0)


# --------------------------------------------------------------------------------------------
# KL estimators (per token; the caller masks)
# --------------------------------------------------------------------------------------------


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(a) - log pi_ref(a) per sampled token. [B, T] -> [B, T].

    Unbiased for KL(pi || pi_ref) with a ~ pi, but single samples can be negative. This is the
    estimator that enters the reward (as trl's kl_penalty="kl").
    """
    return logprobs.float() - ref_logprobs.float()


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = pi_ref(a) / pi(a), per sampled token. [B, T] -> [B, T].

    Unbiased for KL(pi || pi_ref) (E_pi[r] = 1) and >= 0 for every sample since log r <= r - 1;
    lower variance than k1. Reported beside k1.
    """
    log_r = ref_logprobs.float() - logprobs.float()
    return torch.expm1(log_r) - log_r  # expm1: exact for r close to 1, where k3 ~ (log r)^2 / 2


def sequence_kl(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> torch.Tensor:
    """KL of each response to the reference: ``estimator`` (:func:`kl_k1` or :func:`kl_k3`) summed over
    its real tokens. [B, T] -> [B]. The trainer logs it and evaluation records it per summary."""
    return torch.where(mask.bool(), estimator(logprobs, ref_logprobs), 0.0).sum(1)


# --------------------------------------------------------------------------------------------
# Rewards
# --------------------------------------------------------------------------------------------


def token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: a KL penalty on every response token, the score on the last one.

    scores: [B] sequence scores from the reward model. logprobs, ref_logprobs, mask: [B, T],
    right padded. kl_coef: beta (the KL controller's current value).

    Returns (rewards [B, T], kl [B, T]): rewards = -beta * k1 on real tokens, plus score at the
    last real token of each row (index = mask.sum(1) - 1 for right padding); kl = k1 on real
    tokens. Both are 0 on padding.
    """
    keep = mask.bool()
    if not keep.any(dim=1).all():
        # The score would have no token to sit on; the rollout must give every row >= 1 token (EOS).
        raise ValueError("token_rewards: a row of the response mask has no real token")
    kl = torch.where(keep, kl_k1(logprobs, ref_logprobs), 0.0)
    rewards = -kl_coef * kl
    # Last real token of each row: the highest index whose mask is set. For a right-padded mask
    # this is mask.sum(1) - 1; taking the last set index (as trl's mask.nonzero()[-1]) also holds
    # if a mask ever has a hole.
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(keep)
    last = torch.where(keep, positions, -1).max(dim=1).values  # [B]
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += scores.float()
    return rewards, kl


def _grouped(scores: torch.Tensor, group_size: int, who: str) -> torch.Tensor:
    """[B] scores as float32 [B / k, k], one row per prompt; groups of fewer than 2 are an error."""
    k = int(group_size)
    if k < 2:
        raise ValueError(f"{who} needs groups of >= 2 responses, got {k}")
    if scores.dim() != 1 or scores.shape[0] % k:
        raise ValueError(f"{who}: {tuple(scores.shape)} scores do not form groups of {k}")
    return scores.float().reshape(-1, k)


def leave_one_out_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each score minus the mean of the other ``group_size - 1`` scores of its group (RLOO).

    scores: [B], grouped consecutively (rows ``i*k .. i*k+k-1`` are the k responses to prompt i),
    B divisible by k = group_size >= 2. Returns float32 [B]: s_j - (sum_g - s_j) / (k - 1), which
    equals k / (k - 1) * (s_j - mean_g). A group whose scores are all equal gives 0 to every one of
    its rows: no prompt-level difficulty (a dialogue that is easy or hard to summarize cleanly) reaches
    the advantage, only the differences between summaries of the same dialogue. Ahmadian et al. 2024,
    "Back to Basics: Revisiting REINFORCE Style Optimization for RLHF" (arXiv:2402.14740).
    """
    grouped = _grouped(scores, group_size, "leave_one_out_baseline")
    k = grouped.shape[1]
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)
    return (grouped - others).reshape(-1)


def group_normalized(scores: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Each score's distance from its group's mean in units of the group's standard deviation (GRPO).

    scores: [B], grouped consecutively as in :func:`leave_one_out_baseline`, k = group_size >= 2.
    Returns float32 [B]: (s_j - mean_g) / (std_g + eps), std_g the unbiased (n - 1) standard deviation
    of the group, as DeepSeekMath's GRPO (Shao et al. 2024, arXiv:2402.03300) and trl's GRPOTrainer;
    ``eps`` keeps a uniform group at 0 instead of 0/0. Unlike RLOO's baseline this rescales each group,
    so a group whose summaries differ little gets advantages as large as one whose summaries differ a lot.
    """
    grouped = _grouped(scores, group_size, "group_normalized")
    mean, std = grouped.mean(dim=1, keepdim=True), grouped.std(dim=1, keepdim=True)  # torch's std: unbiased
    return ((grouped - mean) / (std + eps)).reshape(-1)


def rloo_sequence_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                          kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO's reward of each whole response: its score minus beta times its KL to the reference (k1 summed
    over its real tokens), as in Ahmadian et al. 2024 (arXiv:2402.14740) and trl's RLOOTrainer.

    scores: [B]; logprobs, ref_logprobs, mask: [B, T]. Returns (rewards [B], kl [B, T]): kl is k1 on real
    tokens and 0 on padding (what the KL controller and the logs read, as :func:`token_rewards`'s)."""
    kl = torch.where(mask.bool(), kl_k1(logprobs, ref_logprobs), 0.0)
    return scores.float() - kl_coef * kl.sum(1), kl


def per_token(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A per-response advantage [B] on every real token of its response: [B, T], 0 on padding. The
    critic-free algorithms give every token of a summary the advantage of the whole summary."""
    return torch.where(mask.bool(), advantages.float()[:, None], 0.0)


# --------------------------------------------------------------------------------------------
# Generalized advantage estimation
# --------------------------------------------------------------------------------------------


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the response tokens (Schulman et al. 2016).

    rewards, values, mask: [B, T], right padded. Going backwards in time:
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
    with V_{t+1} = 0 and A_{t+1} = 0 after the last real token (the episode ends there).

    Returns (advantages [B, T], returns [B, T]), returns = advantages + values (the value-head
    target). Both 0 on padding. Advantages are not whitened here: the caller whitens them over
    the whole batch (masked_whiten), as trl does after computing returns.
    """
    keep = mask.bool()
    rewards = torch.where(keep, rewards.float(), 0.0)
    values = torch.where(keep, values.float(), 0.0)
    T = rewards.shape[1]
    advantages_reversed = []
    next_value = torch.zeros_like(values[:, 0])  # V after the last token: 0 (terminal)
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        # On padding nothing flows: A_t = 0 there, and the next real token to the left sees
        # V_{t+1} = 0 and A_{t+1} = 0, i.e. it is terminal.
        advantage = torch.where(keep[:, t], advantage, 0.0)
        advantages_reversed.append(advantage)
        next_value, next_advantage = values[:, t], advantage
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = advantages + values
    return advantages, returns


# --------------------------------------------------------------------------------------------
# One step's advantages, by algorithm
# --------------------------------------------------------------------------------------------


def step_advantages(
    algorithm: str,
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float,
    group_size: int = 1,
    group_baseline: bool = False,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The advantages of a batch of responses under ``algorithm``: ``(advantages [B, T], returns [B, T] or
    None, kl [B, T])``, before whitening; ``kl`` is k1 on real tokens (what the KL controller reads).

    - ``ppo``: the KL penalty on every token and the score (minus its siblings' mean with
      ``group_baseline``, :func:`leave_one_out_baseline`) on the last (:func:`token_rewards`), then
      :func:`gae` with the critic's ``values``; returns are the value targets.
    - ``rloo``: :func:`rloo_sequence_rewards` (score - beta x the response's KL) minus the mean of the
      other k - 1 of its group, on every token (:func:`per_token`); no returns (no critic).
    - ``grpo``: the score normalised within its group (:func:`group_normalized`) on every token; the KL
      is not in the advantage (the update adds beta x k3 to the loss); no returns.

    scores: [B], grouped consecutively by prompt in groups of ``group_size``; logprobs, ref_logprobs,
    values, mask: [B, T]."""
    if algorithm == "ppo":
        if group_baseline:
            scores = leave_one_out_baseline(scores, group_size)
        rewards, kl = token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)
        advantages, returns = gae(rewards, values, mask, gamma, lam)
        return advantages, returns, kl
    if algorithm == "rloo":
        rewards, kl = rloo_sequence_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)
        return per_token(leave_one_out_baseline(rewards, group_size), mask), None, kl
    if algorithm == "grpo":
        kl = torch.where(mask.bool(), kl_k1(logprobs, ref_logprobs), 0.0)
        return per_token(group_normalized(scores, group_size), mask), None, kl
    raise ValueError(f"unknown algorithm '{algorithm}' (ppo, rloo or grpo)")


# --------------------------------------------------------------------------------------------
# KL coefficient controllers (the only classes here: they carry state across steps)
# --------------------------------------------------------------------------------------------


class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: beta stays fixed."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive beta of Ziegler et al. 2019 (arXiv:1909.08593), exactly as trl 0.11.4.

    After each step with measured KL ``current_kl`` over ``n_steps`` samples (trl passes the batch
    size): e = clip(current_kl / target - 1, -0.2, 0.2); beta *= 1 + e * n_steps / horizon.
    The clip bounds how fast beta moves whatever one noisy batch measured.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            # A NaN would stick in beta forever (NaN * anything); say so instead of training on.
            raise ValueError(f"AdaptiveKLController.update: current_kl is {current_kl}")
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        mult = 1.0 + proportional_error * n_steps / self.horizon
        self.value *= mult

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])
