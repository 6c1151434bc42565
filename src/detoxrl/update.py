"""The update stage: the clipped surrogate over minibatches and epochs (PPO with its critic, RLOO and GRPO
without one), with a guard against bad steps.

A minibatch whose loss is not finite, or whose mean probability ratio leaves
[1/ratio_threshold, ratio_threshold], is skipped and counted, never applied (trl 0.11.4 skipped
the whole batch on ratio; here only the offending minibatch is).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch

from detoxrl.config import PPOConfig
from detoxrl.losses import is_finite_and_sane, kl_penalty_loss, policy_loss, value_loss
from detoxrl.policy import Policy
from detoxrl.rollout import Rollout, forward_pass
from detoxrl.tokenstats import masked_mean


@dataclass
class UpdateBatch:
    """Everything the update needs, computed once per step under no_grad."""

    rollout: Rollout
    old_logprobs: torch.Tensor  # [B, T]
    old_values: torch.Tensor | None  # [B, T]; None: no critic (rloo, grpo), no value loss
    advantages: torch.Tensor  # [B, T] (whitened if configured)
    returns: torch.Tensor | None  # [B, T] value targets; None with old_values
    ref_logprobs: torch.Tensor | None = None  # [B, T]: the reference's, for a KL term in the loss (grpo)


@dataclass
class UpdateHooks:
    """How the update reaches the model when accelerate (DDP, DeepSpeed) runs it; None: plain torch, one process.

    - ``backward(loss)`` and ``clip_grad_norm(params, max_norm)``: the trainer passes accelerate's.
      ``clip_grad_norm`` may return None (DeepSpeed clips and steps inside its backward): the norm is
      then not checked and is logged as NaN.
    - ``forward(sub_rollout)``: the update's pass (default :func:`forward_pass` of the policy); the
      trainer passes the model that accelerate prepared, whose forward DDP synchronises.
    - ``no_sync()``: a context for the passes of every shard but the last of this process, so that DDP
      averages once per step (accelerate's ``no_sync``); the step then runs one backward of their mean.
    - ``all_agree(ok)``: True when every process may apply the step (default: ``ok``). A step whose loss,
      ratio or gradient norm fails the guard on any shard is skipped by every process, so none waits.
    """

    backward: Callable[[torch.Tensor], None] | None = None
    clip_grad_norm: Callable | None = None
    forward: Callable[[Rollout], dict[str, torch.Tensor]] | None = None
    no_sync: Callable[[], ContextManager] | None = None
    all_agree: Callable[[bool], bool] | None = None


def ppo_update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    batch: UpdateBatch | Sequence[UpdateBatch],
    ppo: PPOConfig,
    *,
    generator: torch.Generator | Sequence[torch.Generator],
    mini_batch_size: int | None = None,
    hooks: UpdateHooks | None = None,
    kl_coef: float = 0.0,
) -> dict[str, float]:
    """Run ``ppo.ppo_epochs`` passes of shuffled minibatches; return mean statistics over applied minibatches.

    The loss of a minibatch is the clipped surrogate (:func:`policy_loss`), plus ``ppo.vf_coef`` times the
    clipped value loss when the batch has value targets (PPO's critic), plus ``kl_coef`` times the k3 KL to
    the reference (:func:`kl_penalty_loss`) when ``kl_coef`` > 0 (GRPO; the batch then carries the
    reference's log-probs). The same loop serves ppo, rloo and grpo.

    ``ppo`` gives the update's settings: ``ppo_epochs``, ``clip_ratio``, ``clip_value``, ``vf_coef``,
    ``max_grad_norm``, ``ratio_threshold`` and ``group_by_length``. The default forward pass divides the
    logits by the temperature each minibatch's rollout was sampled at.

    Each minibatch's forward pass is cut to its own padding; ``group_by_length`` puts rows of
    similar length together so that little padding is left (see :func:`minibatch_indices`).

    Micro-batches (``ppo.micro_batch_size`` = N): a minibatch's rows go through passes of at most N rows,
    each pass's loss weighted by its share of the minibatch's response tokens and its backward run right
    after its forward (every pass but the step's last inside ``no_sync``), so that the step applies the
    minibatch's gradient while one pass's activations are alive. The guard then judges the minibatch
    after its backwards: a step it stops has its gradients cleared, as one whose norm is not finite.

    Rollout shards (``ppo.rollout_shards``): ``batch`` may be a list of shards, the rows of each shard
    with its own ``generator`` for its minibatches, ``mini_batch_size`` then counting rows of one shard
    (``ppo.mini_batch_size`` divided by the number of shards; default ``ppo.mini_batch_size``).
    A gradient step takes minibatch j of every shard and minimises the mean of the shards' losses (each
    a masked mean over its own tokens). With one shard per process, DDP averaging the processes'
    gradients computes exactly that over all shards of the batch, so one process running the shards one
    after another and W processes running one each take the same steps (``hooks``: :class:`UpdateHooks`).
    """
    shards = [batch] if isinstance(batch, UpdateBatch) else list(batch)
    generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if len(generators) != len(shards):
        raise ValueError(f"ppo_update: {len(shards)} shards but {len(generators)} generators")
    mini_batch_size = ppo.mini_batch_size if mini_batch_size is None else mini_batch_size
    micro = rows_per_pass(ppo, mini_batch_size)
    max_grad_norm, ratio_threshold = ppo.max_grad_norm, ppo.ratio_threshold
    hooks = hooks or UpdateHooks()
    backward = hooks.backward or (lambda loss: loss.backward())
    clip_grad_norm = hooks.clip_grad_norm or torch.nn.utils.clip_grad_norm_
    forward = hooks.forward or (lambda sub: forward_pass(policy, sub, with_values=True))
    no_sync = hooks.no_sync or contextlib.nullcontext
    all_agree = hooks.all_agree or (lambda ok: ok)
    params = policy.trainable_parameters()
    sums: dict[str, float] = {}
    applied = skipped = 0
    lengths = [(b.rollout.query_mask.sum(1) + b.rollout.response_mask.sum(1)).cpu() for b in shards]
    for _ in range(ppo.ppo_epochs):
        plans = [minibatch_indices(n, mini_batch_size, g, ppo.group_by_length) for n, g in zip(lengths, generators)]
        if len({len(plan) for plan in plans}) > 1:
            raise ValueError(f"ppo_update: shards of {[len(n) for n in lengths]} rows give different numbers of minibatches")
        for step_rows in zip(*plans):  # minibatch j of every shard
            optimizer.zero_grad(set_to_none=True)
            passes = [(s, b, idx[start : start + micro]) for s, (b, idx) in enumerate(zip(shards, step_rows))
                      for start in range(0, len(idx), micro)]
            if len(passes) == len(shards):  # one pass per shard: one backward of their mean, after the guard
                parts = []
                for s, b, idx in passes:
                    with no_sync() if s < len(shards) - 1 else contextlib.nullcontext():
                        parts.append(_pass_loss(forward, b, idx, policy.is_seq2seq, ppo, kl_coef))
                shard_parts = [[part] for part in parts]
                ok = all(is_finite_and_sane(part.loss, part.pg_stats["ratio_mean"], ratio_threshold) for part in parts)
                if not all_agree(ok):
                    skipped += 1
                    continue
                backward(_mean([part.loss for part in parts]))
            else:  # micro-batches: each pass's backward right after its forward frees its activations
                shard_parts, ok = _accumulate(passes, shards, step_rows, forward, policy.is_seq2seq, ppo, kl_coef,
                                              backward, no_sync)
                if not all_agree(ok):
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                    continue
            grad_norm = clip_grad_norm(params, max_grad_norm) if max_grad_norm else _grad_norm(params)
            if not all_agree(grad_norm is None or bool(torch.isfinite(torch.as_tensor(grad_norm)))):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.step()
            applied += 1
            stats = _step_stats(shard_parts, grad_norm)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
    result = {k: v / applied for k, v in sums.items()} if applied else {}
    result["ppo/applied_minibatches"] = applied
    result["ppo/skipped_minibatches"] = skipped
    return result


def rows_per_pass(ppo: PPOConfig, mini_batch_size: int) -> int:
    """Rows per pass of the model, with or without gradient: ``ppo.micro_batch_size``, at most a minibatch
    of ``mini_batch_size`` rows (of one shard); the whole minibatch when it is not set."""
    return min(ppo.micro_batch_size or mini_batch_size, mini_batch_size)


@dataclass
class _PassLoss:
    """One forward pass's loss over rows of one shard, and its statistics (see :func:`minibatch_loss`)."""

    pg_loss: torch.Tensor
    loss: torch.Tensor
    pg_stats: dict[str, float]
    extra: dict[str, float]
    weight: float = 1.0  # its share of its shard's minibatch tokens


def _pass_loss(forward, b: UpdateBatch, idx: torch.Tensor, seq2seq: bool, ppo: PPOConfig, kl_coef: float) -> _PassLoss:
    sub = b.rollout.select(idx).trimmed(seq2seq)
    return _PassLoss(*minibatch_loss(forward(sub), b, idx, sub.response_mask.float(), ppo, kl_coef))


def _accumulate(passes, shards, step_rows, forward, seq2seq: bool, ppo: PPOConfig, kl_coef: float, backward,
                no_sync) -> tuple[list[list[_PassLoss]], bool]:
    """One gradient step's micro-batch passes: forward, then the backward of the pass's loss weighted by its share
    of its shard's tokens (divided by the number of shards), every pass but the last inside ``no_sync``.
    Returns each shard's passes (losses detached) and whether the guard lets every shard's minibatch apply."""
    shard_parts: list[list[_PassLoss]] = [[] for _ in shards]
    tokens = [float(b.rollout.response_mask[idx].sum()) for b, idx in zip(shards, step_rows)]
    for j, (s, b, idx) in enumerate(passes):
        with no_sync() if j < len(passes) - 1 else contextlib.nullcontext():
            part = _pass_loss(forward, b, idx, seq2seq, ppo, kl_coef)
            # the minibatch's loss is the token-weighted mean of its passes' masked means
            part.weight = float(b.rollout.response_mask[idx].sum()) / tokens[s]
            backward(part.loss * (part.weight / len(shards)))
        part.loss, part.pg_loss = part.loss.detach(), part.pg_loss.detach()
        shard_parts[s].append(part)
    ok = all(is_finite_and_sane(sum(p.weight * p.loss for p in sp), _weighted(sp, lambda p: p.pg_stats["ratio_mean"]),
                                ppo.ratio_threshold) for sp in shard_parts)
    return shard_parts, ok


def _weighted(parts: list[_PassLoss], value: Callable[[_PassLoss], float]) -> float:
    """The token-weighted mean of ``value`` over one shard's passes; of a single pass, its value itself."""
    return value(parts[0]) if len(parts) == 1 else sum(p.weight * value(p) for p in parts)


def _step_stats(shard_parts: list[list[_PassLoss]], grad_norm) -> dict[str, float]:
    """A gradient step's statistics: each shard's token-weighted mean over its passes, then the shards' mean."""
    def per_shard(value: Callable[[_PassLoss], float]) -> float:
        return _mean([_weighted(sp, value) for sp in shard_parts])

    return {
        "ppo/loss/policy": per_shard(lambda p: float(p.pg_loss.detach())),
        "ppo/loss/total": per_shard(lambda p: float(p.loss.detach())),
        "ppo/policy/clipfrac": per_shard(lambda p: p.pg_stats["clipfrac"]),
        "ppo/policy/approxkl": per_shard(lambda p: p.pg_stats["approxkl"]),
        "ppo/policy/ratio_mean": per_shard(lambda p: p.pg_stats["ratio_mean"]),
        **{key: per_shard(lambda p, key=key: p.extra[key]) for key in shard_parts[0][0].extra},  # value loss, KL term
        "ppo/grad_norm": float("nan") if grad_norm is None else float(grad_norm),
    }


def minibatch_loss(out: dict[str, torch.Tensor], b: UpdateBatch, idx: torch.Tensor, mask: torch.Tensor, ppo: PPOConfig,
                   kl_coef: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float], dict[str, float]]:
    """The loss of rows ``idx`` of shard ``b`` from their forward pass ``out`` (cut to ``mask``'s length):
    ``(policy loss, total loss, policy stats, the value and KL terms' stats)``. The clipped surrogate, plus
    ``ppo.vf_coef`` x the clipped value loss when ``b`` has value targets, plus ``kl_coef`` x the k3 KL."""
    T = mask.shape[1]
    pg_loss, pg_stats = policy_loss(out["logprobs"], b.old_logprobs[idx, :T], b.advantages[idx, :T], mask, ppo.clip_ratio)
    loss, extra = pg_loss, {}
    if b.returns is not None:
        vf_loss, vf_stats = value_loss(out["values"], b.old_values[idx, :T], b.returns[idx, :T], mask, ppo.clip_value)
        loss = loss + ppo.vf_coef * vf_loss
        extra = {"ppo/loss/value": float(vf_loss.detach()), "ppo/val/clipfrac": vf_stats["vf_clipfrac"],
                 "ppo/val/error": vf_stats["value_error"], "ppo/val/mean": float(masked_mean(out["values"].detach(), mask))}
    if kl_coef:
        kl_loss, kl_stats = kl_penalty_loss(out["logprobs"], b.ref_logprobs[idx, :T], mask)
        loss = loss + kl_coef * kl_loss
        extra["ppo/loss/kl"] = kl_stats["kl_k3"]
    return pg_loss, loss, pg_stats, extra


def _mean(values: list):
    """The mean of one shard's value is that value itself, bit for bit (no division by 1)."""
    return values[0] if len(values) == 1 else sum(values) / len(values)


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
