"""Per-token statistics of a batch of responses, shared by the rollout, the losses and the advantages.

Pure tensor functions, no model code, importing nothing of detoxrl: :mod:`detoxrl.rollout` reads
log-probs and entropy from logits with them without depending on the losses, and
:mod:`detoxrl.advantages` and :mod:`detoxrl.losses` average over response tokens with
:func:`masked_mean`. Shapes: ``B`` = batch, ``T`` = response length (right padded), ``V`` =
vocabulary; ``mask`` is 1 on real response tokens, 0 on padding. Results are float32.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is set.

    x, mask: same shape (e.g. [B, T]). dim=None gives a scalar; dim=d reduces that dimension only
    (e.g. dim=1 gives a per-sequence mean [B]). An all-padding slice gives NaN (0/0), on purpose:
    a silent 0 would hide an empty batch.
    """
    keep = mask.bool()
    x = torch.where(keep, x.float(), 0.0)  # where, not x*mask: inf/NaN on padding must not leak
    n = keep.float()
    if dim is None:
        return x.sum() / n.sum()
    return x.sum(dim=dim) / n.sum(dim=dim)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position, in float32. [..., V] -> [...].

    H = logsumexp(z) - sum_i p_i z_i, which never takes the log of an underflowed probability.
    The logits are first shifted by their max (H does not change): with z ~ 1000 the two terms
    would otherwise cancel in float32 and lose ~1e-4. Logits of -inf (filtered vocabulary) have
    p_i = 0 and contribute nothing (no 0 * inf = NaN).
    """
    logits = logits.float()
    z = logits - logits.max(dim=-1, keepdim=True).values.detach()
    p = torch.softmax(z, dim=-1)
    finite_z = torch.where(torch.isfinite(z), z, 0.0)
    return torch.logsumexp(z, dim=-1) - (p * finite_z).sum(dim=-1)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] per position, in float32 even if logits are bf16.

    logits: [B, T, V]; labels: [B, T] token ids (valid indices: map ignore-index/padding ids to
    any real id first and mask the result). Returns [B, T].

    Computed as z[label] - logsumexp(z): the same as gathering from log_softmax, without a
    second [B, T, V] tensor.
    """
    logits = logits.float()
    picked = torch.gather(logits, dim=-1, index=labels.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)
