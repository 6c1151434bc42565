"""Drawing one token per row from a categorical distribution with one random number per row.

``torch.multinomial(probs, 1)``, which transformers' ``generate`` calls at every sampled step, draws one
exponential random number per vocabulary entry (32,128 for T5, 49,152 for SmolLM2) for every row: on a
2-core CPU that is 37 ms per step for 32 rows of SmolLM2, more than the decoder's own step for a model of
this size. Inverse-CDF sampling draws the same distribution with one uniform number per row: the index
of the first entry of the float32 cumulative sum that exceeds ``u * total``.

:func:`one_draw_per_row` installs it for the duration of a ``generate`` call; ``generation.sampler:
multinomial`` keeps torch's (the sampler of runs made before 2026-12-07; the two draw the same
distribution but different tokens for one seed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

SAMPLERS = ("inverse_cdf", "multinomial")


def inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``probs`` ([rows, vocab], non-negative, rows need not sum to exactly 1),
    drawn with probability ``probs[r, i] / probs[r].sum()``; returns [rows, 1] like
    ``torch.multinomial(probs, 1)``.

    The cumulative sum is float32 (or float64 for float64 input), so the probability of an entry is
    exact up to the rounding of that sum (about 1e-7 relative to the row's total). An entry of
    probability 0 is never drawn: ``searchsorted(right=True)`` skips runs of equal cumulative values, and
    a draw that rounds up to the total lands on the last entry of positive probability.
    """
    if probs.dim() != 2:
        raise ValueError(f"inverse_cdf_sample takes [rows, vocab] probabilities, got shape {tuple(probs.shape)}")
    work = probs if probs.dtype == torch.float64 else probs.float()
    cdf = work.cumsum(dim=-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, dtype=cdf.dtype, device=cdf.device, generator=generator) * total
    # The first entry whose cumulative sum exceeds u: its probability is positive, unless u * total rounded
    # up to the total itself (index = vocab), the rare case sent to the last entry of positive probability.
    index = torch.searchsorted(cdf, u, right=True).clamp_max(work.shape[-1] - 1)
    at_zero = work.gather(-1, index) <= 0
    if at_zero.any():
        positive = (work > 0).to(torch.int64)
        last_positive = work.shape[-1] - 1 - positive.flip(-1).argmax(dim=-1, keepdim=True)
        index = torch.where(at_zero, last_positive, index)
    return index


def _multinomial_one_per_row(original):
    def multinomial(input, num_samples, replacement=False, *, generator=None, out=None):
        # Only the call generate makes (one sample per row of a 2-D tensor) is replaced; any other goes to torch.
        if num_samples == 1 and out is None and isinstance(input, torch.Tensor) and input.dim() == 2:
            return inverse_cdf_sample(input, generator)
        return original(input, num_samples, replacement, generator=generator, out=out)

    return multinomial


@contextlib.contextmanager
def one_draw_per_row(sampler: str = "inverse_cdf") -> Iterator[None]:
    """Within the block, ``torch.multinomial(probs, 1)`` on a [rows, vocab] tensor is
    :func:`inverse_cdf_sample` (``sampler="inverse_cdf"``); ``"multinomial"`` leaves torch's in place.

    transformers' ``generate`` has no hook for the sampler itself (a logits processor runs before the draw),
    so the block swaps the function it calls and restores it on exit, exceptions included. Decoding runs on
    the calling thread only; the swap is not meant for code running concurrently in other threads.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if sampler == "multinomial":
        yield
        return
    original = torch.multinomial
    torch.multinomial = _multinomial_one_per_row(original)
    try:
        yield
    finally:
        torch.multinomial = original
