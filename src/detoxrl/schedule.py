"""What a step sees: its seeds and its batch, functions of (seed, step) alone, so that a run stopped
after step k and resumed from its checkpoint visits the same prompts and draws the same samples as a run
that never stopped (no random state is saved)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """A distinct, reproducible seed per step (so resume needs no saved RNG state)."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


def rollout_seed(seed: int, step: int, shard: int) -> int:
    """The sampling seed of rollout shard ``shard`` of ``step`` (its minibatch order uses this + 1): the
    same whichever process runs the shard. Shard 0's is :func:`step_seed`, so a one-shard run samples
    as runs did before there were shards."""
    return (step_seed(seed, step) + shard * 1_000_000_007) % (2**63 - 1)


def batch_at(items: list, step: int, batch_size: int, seed: int, shuffle: bool = True) -> list:
    """The items of ``step``: consecutive slices of per-epoch seeded permutations (file order without
    ``shuffle``); an epoch boundary may fall inside a batch. A function of (seed, step) alone, so a
    resumed run visits the same items as one that never stopped (PPO prompts, SFT pairs)."""
    n, out, perms = len(items), [], {}
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, within = divmod(pos, n)
        if not shuffle:
            out.append(items[within])
            continue
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 104_729 * epoch))
        out.append(items[int(perms[epoch][within])])
    return out
