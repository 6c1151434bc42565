"""Tests of detoxrl.losses: each loss against numbers worked out by hand, gradients checked with
autograd (a clipped token gets exactly zero gradient), padding invariance, the update guard."""

import math

import pytest
import torch

from detoxrl.losses import (
    dpo_loss,
    is_finite_and_sane,
    kl_penalty_loss,
    policy_loss,
    value_loss,
)
from detoxrl.tokenstats import entropy_from_logits, logprobs_from_logits

LN2 = math.log(2.0)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------
# policy_loss
# --------------------------------------------------------------------------------------------


def _four_tokens():
    # clip_ratio 0.2, so clip(ratio) lies in [0.8, 1.2]. Four real tokens and one padded one.
    #   a: A=+1, ratio 1.5 -> -A*r = -1.5, clipped -1.2 -> max = -1.2 (clipped wins: grad 0)
    #   b: A=+1, ratio 0.5 -> -0.5,        clipped -0.8 -> max = -0.5 (unclipped)
    #   c: A=-1, ratio 0.5 ->  0.5,        clipped  0.8 -> max =  0.8 (clipped wins: grad 0)
    #   d: A=-1, ratio 1.5 ->  1.5,        clipped  1.2 -> max =  1.5 (unclipped)
    # loss = (-1.2 - 0.5 + 0.8 + 1.5) / 4 = 0.6 / 4 = 0.15
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0, -1.0]])
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.0]])
    logp = (old + ratios.log()).clone().requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    return logp, old, adv, mask


def test_policy_loss_by_hand():
    logp, old, adv, mask = _four_tokens()
    loss, stats = policy_loss(logp, old, adv, mask, clip_ratio=0.2)
    close(loss, 0.15)
    # clipfrac: tokens a and c took the clipped term -> 2 / 4
    assert stats["clipfrac"] == pytest.approx(0.5)
    # approxkl = 0.5 * mean(log_ratio^2); log 1.5 = 0.405465, log 0.5 = -0.693147
    #   = 0.5 * (0.164402 + 0.480453 + 0.480453 + 0.164402) / 4 = 0.5 * 0.322428 = 0.161214
    assert stats["approxkl"] == pytest.approx(0.5 * (2 * math.log(1.5) ** 2 + 2 * LN2**2) / 4, rel=1e-5)
    assert stats["approxkl"] == pytest.approx(0.161214, abs=1e-6)
    # ratio_mean = (1.5 + 0.5 + 0.5 + 1.5) / 4 = 1.0; ratio_max = 1.5 (the padded token is not counted)
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert stats["ratio_max"] == pytest.approx(1.5, abs=1e-6)
    assert set(stats) == {"clipfrac", "approxkl", "ratio_mean", "ratio_max"}
    assert all(isinstance(v, float) for v in stats.values())


def test_policy_loss_gradient_is_zero_for_clipped_tokens():
    # d loss / d logp_i = (1/4) * d(-A_i * ratio_i)/d logp_i = -A_i * ratio_i / 4 where unclipped:
    #   a: clipped -> 0;  b: -(+1)(0.5)/4 = -0.125;  c: clipped -> 0;  d: -(-1)(1.5)/4 = 0.375
    #   padded token: 0
    logp, old, adv, mask = _four_tokens()
    loss, _ = policy_loss(logp, old, adv, mask, clip_ratio=0.2)
    loss.backward()
    close(logp.grad, [[0.0, -0.125, 0.0, 0.375, 0.0]])


def test_policy_loss_no_gradient_into_old_logprobs_or_advantages():
    logp, old, adv, mask = _four_tokens()
    old = old.clone().requires_grad_(True)
    adv = adv.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, old, adv, mask, clip_ratio=0.2)
    loss.backward()
    assert old.grad is None and adv.grad is None


def test_policy_loss_on_policy_is_minus_mean_advantage():
    # At the first minibatch logp == old: ratio 1 everywhere, nothing clipped,
    # loss = -mean(A) = -(0.5 - 1.5 + 2.5) / 3 = -0.5, approxkl 0.
    logp = torch.tensor([[-0.3, -2.0, -1.1]])
    adv = torch.tensor([[0.5, -1.5, 2.5]])
    loss, stats = policy_loss(logp, logp.clone(), adv, torch.ones(1, 3), 0.2)
    close(loss, -0.5)
    assert stats["clipfrac"] == 0.0 and stats["approxkl"] == 0.0 and stats["ratio_mean"] == 1.0


def test_policy_loss_padding_invariance():
    g = torch.Generator().manual_seed(0)
    logp0 = torch.randn(3, 4, generator=g)
    old = logp0 + 0.3 * torch.randn(3, 4, generator=g)
    adv = torch.randn(3, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])

    logp = logp0.clone().requires_grad_(True)
    base_loss, base_stats = policy_loss(logp, old, adv, mask, 0.2)
    base_loss.backward()

    # Padding carries garbage that would overflow exp() or poison a product if it leaked.
    logp_pad = torch.cat([logp0, torch.full((3, 3), 200.0)], 1).requires_grad_(True)
    old_pad = torch.cat([old, torch.full((3, 3), -200.0)], 1)
    adv_pad = torch.cat([adv, torch.full((3, 3), float("nan"))], 1)
    mask_pad = torch.cat([mask, torch.zeros(3, 3, dtype=mask.dtype)], 1)
    loss, stats = policy_loss(logp_pad, old_pad, adv_pad, mask_pad, 0.2)
    loss.backward()
    close(loss, base_loss.detach())
    for k in base_stats:
        assert stats[k] == pytest.approx(base_stats[k], abs=1e-6)
    close(logp_pad.grad[:, :4], logp.grad)
    close(logp_pad.grad[:, 4:], torch.zeros(3, 3))


def test_policy_loss_computes_in_float32_from_bf16():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.bfloat16)
    loss, _ = policy_loss(logp, logp.clone(), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2), 0.2)
    assert loss.dtype == torch.float32


# --------------------------------------------------------------------------------------------
# value_loss
# --------------------------------------------------------------------------------------------


def _three_values():
    # clip_value 0.2.
    #   1: old 0.0, V 0.5, R 1.0: V_clip = 0.2; (0.5-1)^2 = 0.25, (0.2-1)^2 = 0.64 -> 0.64 (clipped wins)
    #   2: old 0.0, V 0.5, R 0.0: V_clip = 0.2; (0.5-0)^2 = 0.25, (0.2-0)^2 = 0.04 -> 0.25
    #   3: old 1.0, V 1.1, R 2.0: |1.1 - 1.0| < 0.2, V_clip = V; both (1.1-2)^2 = 0.81
    #   4: padding
    # loss = 0.5 * (0.64 + 0.25 + 0.81) / 3 = 0.5 * 1.7 / 3 = 0.283333
    values = torch.tensor([[0.5, 0.5, 1.1, 9.0]], requires_grad=True)
    old = torch.tensor([[0.0, 0.0, 1.0, -9.0]])
    returns = torch.tensor([[1.0, 0.0, 2.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    return values, old, returns, mask


def test_value_loss_by_hand():
    values, old, returns, mask = _three_values()
    loss, stats = value_loss(values, old, returns, mask, clip_value=0.2)
    close(loss, 0.5 * 1.7 / 3)
    # vf_clipfrac: only token 1 (token 3 ties, and a tie is not clipping) -> 1/3
    assert stats["vf_clipfrac"] == pytest.approx(1 / 3)
    # value_error = mean((V - R)^2) = (0.25 + 0.25 + 0.81) / 3 = 0.436667
    assert stats["value_error"] == pytest.approx(1.31 / 3, abs=1e-6)
    assert set(stats) == {"vf_clipfrac", "value_error"}


def test_value_loss_gradient_is_zero_for_clipped_tokens():
    # dL/dV_i = 0.5 * (1/3) * 2 * (V_i - R_i) where the unclipped term is used:
    #   1: clipped -> 0;  2: (0.5 - 0)/3 = 0.166667;  3: (1.1 - 2)/3 = -0.3;  pad: 0
    values, old, returns, mask = _three_values()
    loss, _ = value_loss(values, old, returns, mask, clip_value=0.2)
    loss.backward()
    close(values.grad, [[0.0, 0.5 / 3, -0.3, 0.0]])


def test_value_loss_padding_invariance():
    g = torch.Generator().manual_seed(1)
    v, old, ret = (torch.randn(2, 3, generator=g) for _ in range(3))
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    base, base_stats = value_loss(v, old, ret, mask, 0.2)
    garbage = torch.full((2, 2), float("inf"))
    loss, stats = value_loss(
        torch.cat([v, garbage], 1), torch.cat([old, -garbage], 1), torch.cat([ret, garbage], 1),
        torch.cat([mask, torch.zeros(2, 2, dtype=mask.dtype)], 1), 0.2,
    )
    close(loss, base)
    assert stats == pytest.approx(base_stats)


# --------------------------------------------------------------------------------------------
# entropy_from_logits / logprobs_from_logits
# --------------------------------------------------------------------------------------------


def test_entropy_by_hand():
    # logits [0, 0]: uniform over 2 -> H = log 2 = 0.693147
    # logits [log 1, log 3]: p = [0.25, 0.75] ->
    #   H = -(0.25 log 0.25 + 0.75 log 0.75) = 0.25*1.386294 + 0.75*0.287682 = 0.562335
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]])
    close(entropy_from_logits(logits), [[LN2, 0.562335]])


def test_entropy_is_numerically_stable():
    # Huge logits (naive exp overflows) and -inf logits (a filtered vocabulary: 0 * -inf = NaN naively).
    logits = torch.tensor([[1000.0, 1000.0], [0.0, float("-inf")]])
    close(entropy_from_logits(logits), [LN2, 0.0])
    logits4 = torch.tensor([[5.0, float("-inf"), float("-inf"), 5.0]])
    close(entropy_from_logits(logits4), [LN2])


def test_entropy_gradient_is_finite_with_filtered_vocabulary():
    # An entropy bonus must not turn a -inf logit into a NaN gradient. For p = softmax([0, -inf, 1])
    # dH/dz_i = -p_i (z_i - sum_j p_j z_j): p = [1/(1+e), 0, e/(1+e)] = [0.268941, 0, 0.731059],
    # sum p z = 0.731059 -> dH/dz_0 = -0.268941 * (0 - 0.731059) = 0.196612 and dH/dz_2 = -0.196612.
    logits = torch.tensor([[0.0, float("-inf"), 1.0]], requires_grad=True)
    entropy_from_logits(logits).sum().backward()
    close(logits.grad, [[0.196612, 0.0, -0.196612]])


def test_entropy_from_bf16_is_float32():
    out = entropy_from_logits(torch.zeros(2, 3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    close(out, torch.full((2, 3), math.log(8.0)))


def test_logprobs_from_logits_by_hand():
    # logits [0, log 3]: softmax = [0.25, 0.75]; label 1 -> log 0.75 = -0.287682, label 0 -> log 0.25
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])  # [B=1, T=2, V=2]
    labels = torch.tensor([[1, 0]])
    close(logprobs_from_logits(logits, labels), [[math.log(0.75), math.log(0.25)]])


def test_logprobs_from_logits_matches_log_softmax_gather():
    g = torch.Generator().manual_seed(2)
    logits = 10 * torch.randn(3, 5, 50, generator=g)
    labels = torch.randint(0, 50, (3, 5), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    close(logprobs_from_logits(logits, labels), expected, atol=1e-5)


def test_logprobs_from_bf16_logits_are_computed_in_float32():
    # With bf16 logits the result must be float32 and equal to the float32 computation on the same
    # (bf16-rounded) values; log_softmax done in bf16 would round the result itself to 8 bits.
    g = torch.Generator().manual_seed(3)
    logits = (5 * torch.randn(2, 4, 1000, generator=g)).to(torch.bfloat16)
    labels = torch.randint(0, 1000, (2, 4), generator=g)
    out = logprobs_from_logits(logits, labels)
    assert out.dtype == torch.float32
    close(out, logprobs_from_logits(logits.float(), labels))
    in_bf16 = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1).float()
    assert (out - in_bf16).abs().max() > 1e-3  # the fp32 path really differs from a bf16 one


# --------------------------------------------------------------------------------------------
# The update guard
# --------------------------------------------------------------------------------------------


def test_is_finite_and_sane():
    assert is_finite_and_sane(0.5, 1.0, 10.0)
    assert is_finite_and_sane(torch.tensor(0.5, requires_grad=True), 1.0, 10.0)
    assert is_finite_and_sane(0.5, 10.0, 10.0) and is_finite_and_sane(0.5, 0.1, 10.0)  # bounds included
    assert not is_finite_and_sane(float("nan"), 1.0, 10.0)
    assert not is_finite_and_sane(torch.tensor(float("inf")), 1.0, 10.0)
    assert not is_finite_and_sane(-float("inf"), 1.0, 10.0)
    assert not is_finite_and_sane(0.5, 11.0, 10.0)  # ratio ran away upward
    assert not is_finite_and_sane(0.5, 0.05, 10.0)  # ... or downward (below 1/10)
    assert not is_finite_and_sane(0.5, float("nan"), 10.0)
    assert not is_finite_and_sane(0.5, float("inf"), 10.0)


def test_guard_catches_a_runaway_policy_loss():
    # log-ratio 100 on a real token: exp overflows float32 -> ratio inf; the guard must refuse it.
    logp = torch.tensor([[0.0, 100.0]])
    loss, stats = policy_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), 0.2)
    assert not is_finite_and_sane(loss, stats["ratio_mean"], 10.0)


def test_kl_penalty_loss_by_hand():
    """k3 per token: log r = ref - logp = 0 and 1 -> 0 and e - 2; masked mean (e - 2) / 2. Its gradient
    with respect to logp is (1 - exp(ref - logp)) / n: 0 and (1 - e) / 2; padding (a wild value) adds nothing."""
    logp = torch.tensor([[-1.0, -2.0, 40.0]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0, -40.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = kl_penalty_loss(logp, ref, mask)
    assert math.isclose(loss.item(), (math.e - 2) / 2, rel_tol=1e-6)
    assert math.isclose(stats["kl_k3"], (math.e - 2) / 2, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[0.0, (1 - math.e) / 2, 0.0]]))


def test_kl_penalty_loss_is_zero_at_the_reference():
    logp = torch.tensor([[-0.3, -2.5]])
    loss, _ = kl_penalty_loss(logp, logp.clone(), torch.ones(1, 2))
    assert loss.item() == 0.0


def test_dpo_loss_by_hand():
    """Two pairs, beta 0.5. Pair 1: (logp_c - ref_c) - (logp_r - ref_r) = (-3 + 4) - (-5 + 4) = 2 -> margin 1;
    pair 2: (-2 + 2) - (-2 + 2) = 0 -> margin 0. Loss = (-log sigmoid(1) - log sigmoid(0)) / 2 =
    (0.313262 + 0.693147) / 2. d loss / d logp_c of pair 1 = -beta * (1 - sigmoid(1)) / 2."""
    logp_c = torch.tensor([-3.0, -2.0], requires_grad=True)
    logp_r = torch.tensor([-5.0, -2.0], requires_grad=True)
    loss, stats = dpo_loss(logp_c, logp_r, torch.tensor([-4.0, -2.0]), torch.tensor([-4.0, -2.0]), beta=0.5)
    assert math.isclose(loss.item(), (math.log1p(math.exp(-1.0)) + math.log(2.0)) / 2, rel_tol=1e-6)
    assert stats["margin"] == pytest.approx(0.5) and stats["accuracy"] == pytest.approx(0.75)  # one win, one tie
    assert stats["reward_chosen"] == pytest.approx(0.25) and stats["reward_rejected"] == pytest.approx(-0.25)
    loss.backward()
    sig1 = 1 / (1 + math.exp(-1.0))
    assert logp_c.grad[0].item() == pytest.approx(-0.5 * (1 - sig1) / 2, rel=1e-6)
    assert logp_r.grad[0].item() == pytest.approx(0.5 * (1 - sig1) / 2, rel=1e-6)
    assert logp_c.grad[1].item() == pytest.approx(-0.5 * 0.5 / 2, rel=1e-6)
