"""Inverse-CDF sampling draws torch.multinomial's distribution with one random number per row."""

from __future__ import annotations

import pytest
import torch

from detoxrl.sampling import inverse_cdf_sample, one_draw_per_row

PROBS = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])


def test_each_draw_is_the_entry_whose_cdf_interval_holds_the_uniform_number():
    # By hand: cdf = 0.1, 0.3, 0.6, 1.0, 1.0; u in [0, 0.1) -> 0, [0.1, 0.3) -> 1, [0.3, 0.6) -> 2, [0.6, 1) -> 3.
    probs = PROBS.repeat(1000, 1)
    drawn = inverse_cdf_sample(probs, torch.Generator().manual_seed(7)).squeeze(1)
    u = torch.rand(1000, 1, generator=torch.Generator().manual_seed(7)).squeeze(1)
    expected = torch.where(u < 0.1, 0, torch.where(u < 0.3, 1, torch.where(u < 0.6, 2, 3)))
    assert torch.equal(drawn, expected)


def test_frequencies_pass_a_chi_square_test_against_the_probabilities():
    n = 200_000
    drawn = inverse_cdf_sample(PROBS.repeat(n, 1), torch.Generator().manual_seed(0)).squeeze(1)
    counts = torch.bincount(drawn, minlength=5).double()
    assert counts[4] == 0  # probability 0: never drawn
    expected = PROBS[:4].double() * n
    chi2 = float(((counts[:4] - expected) ** 2 / expected).sum())
    # 3 degrees of freedom: P(chi2 > 21.11) = 1e-4 under the null; the seed is fixed, so this is not flaky.
    assert chi2 < 21.11, chi2


def test_unnormalised_rows_zero_entries_and_a_draw_at_the_top_never_pick_a_zero_probability_entry(monkeypatch):
    probs = torch.tensor([[0.0, 2.0, 0.0, 6.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 5.0]])
    drawn = inverse_cdf_sample(probs.repeat(500, 1), torch.Generator().manual_seed(3)).view(500, 2)
    assert set(drawn[:, 0].tolist()) == {1, 3} and set(drawn[:, 1].tolist()) == {5}
    # u * total rounding up to the total (forced here: a "uniform" number of exactly 1.0) takes the
    # last entry of positive probability, not the trailing zeros.
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.ones(shape, dtype=kw.get("dtype")))
    assert inverse_cdf_sample(probs).view(-1).tolist() == [3, 5]


def test_seeded_draws_repeat_and_bf16_probabilities_are_read_in_float32():
    probs = torch.softmax(torch.randn(4, 50, generator=torch.Generator().manual_seed(1)), -1)
    torch.manual_seed(11)
    a = inverse_cdf_sample(probs)
    torch.manual_seed(11)
    b = inverse_cdf_sample(probs.bfloat16())
    assert a.shape == (4, 1) and a.dtype == torch.int64
    # bf16 rounds each probability (about 3 significant digits): the draws agree except near a boundary.
    assert (a == b).float().mean() >= 0.75
    torch.manual_seed(11)
    assert torch.equal(inverse_cdf_sample(probs), a)
    with pytest.raises(ValueError, match=r"\[rows, vocab\]"):
        inverse_cdf_sample(probs[0])


def test_the_swap_lasts_only_for_the_block_and_only_for_one_draw_per_row():
    original = torch.multinomial
    probs = PROBS.repeat(3, 1)
    with one_draw_per_row():
        assert torch.multinomial is not original
        torch.manual_seed(5)
        inside = torch.multinomial(probs, 1)
        torch.manual_seed(5)
        assert torch.equal(inside, inverse_cdf_sample(probs))
        assert torch.multinomial(probs, 2).shape == (3, 2)  # any other call goes to torch's
    assert torch.multinomial is original
    with pytest.raises(RuntimeError, match="boom"), one_draw_per_row():
        raise RuntimeError("boom")
    assert torch.multinomial is original
    with one_draw_per_row("multinomial"):
        assert torch.multinomial is original
    with pytest.raises(ValueError, match="unknown sampler"), one_draw_per_row("gumbel"):
        pass
