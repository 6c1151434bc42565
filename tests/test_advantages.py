"""Tests of detoxrl.advantages: every function against numbers worked out by hand, plus properties
(padding invariance, variable-length batches, k3 >= 0, controller resume)."""

import math

import pytest
import torch

from detoxrl.advantages import (
    group_normalized,
    leave_one_out_baseline,
    per_token,
    rloo_sequence_rewards,
    step_advantages,
    AdaptiveKLController,
    FixedKLController,
    gae,
    kl_k1,
    kl_k3,
    masked_var,
    masked_whiten,
    sequence_kl,
    token_rewards,
)
from detoxrl.tokenstats import masked_mean

LN2 = math.log(2.0)  # 0.693147...


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------
# masked_mean / masked_var / masked_whiten
# --------------------------------------------------------------------------------------------


def test_masked_mean_by_hand():
    # [1, 2, 3, pad=100]: (1 + 2 + 3) / 3 = 2; the 100 on padding is ignored.
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    close(masked_mean(x, mask), 2.0)
    # Per row (dim=1): row 0 = (1 + 2) / 2 = 1.5, row 1 = 4 / 1 = 4.
    x2 = torch.tensor([[1.0, 2.0, 7.0], [4.0, 9.0, 9.0]])
    m2 = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(masked_mean(x2, m2, dim=1), [1.5, 4.0])
    # All six masked elements at once: (1 + 2 + 4) / 3 = 7/3.
    close(masked_mean(x2, m2), 7.0 / 3.0)


def test_masked_mean_ignores_nonfinite_padding_and_accepts_bool_mask():
    x = torch.tensor([[1.0, 2.0, 3.0, float("nan"), float("inf")]])
    mask = torch.tensor([[True, True, True, False, False]])
    close(masked_mean(x, mask), 2.0)


def test_masked_mean_of_empty_mask_is_nan_not_zero():
    assert torch.isnan(masked_mean(torch.ones(1, 3), torch.zeros(1, 3)))


def test_masked_var_by_hand():
    # [1, 2, 3, pad]: mean 2, squared deviations 1, 0, 1 (sum 2).
    # biased = 2 / 3; unbiased (Bessel, n / (n - 1) = 3/2) = 2 / 2 = 1.
    x = torch.tensor([[1.0, 2.0, 3.0, -50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    close(masked_var(x, mask), 1.0)
    close(masked_var(x, mask, unbiased=False), 2.0 / 3.0)


def test_masked_var_needs_enough_elements():
    x = torch.tensor([[5.0, 1.0]])
    with pytest.raises(ValueError):
        masked_var(x, torch.tensor([[1, 0]]))  # n = 1: n / (n - 1) would divide by zero
    with pytest.raises(ValueError):
        masked_var(x, torch.tensor([[0, 0]]), unbiased=False)
    close(masked_var(x, torch.tensor([[1, 0]]), unbiased=False), 0.0)


def test_masked_whiten_by_hand():
    # [1, 2, 3, pad]: mean 2, unbiased var 1, so (x - 2) / sqrt(1 + 1e-8) = [-1, 0, 1]; pad -> 0.
    x = torch.tensor([[1.0, 2.0, 3.0, 42.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    close(masked_whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]])
    # shift_mean=False adds the mean back: [-1, 0, 1] + 2 = [1, 2, 3]; pad still 0.
    close(masked_whiten(x, mask, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]])


def test_masked_whiten_two_rows_whitens_over_the_whole_batch():
    # Rows [2, 4, pad] and [6, pad, pad]: one pool {2, 4, 6}, mean 4, unbiased var (4+0+4)/2 = 4,
    # std 2 -> [-1, 0, pad] and [1, pad, pad].
    x = torch.tensor([[2.0, 4.0, 0.0], [6.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(masked_whiten(x, mask), [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])


def test_masked_whiten_constant_input_gives_zeros_not_nan():
    out = masked_whiten(torch.full((2, 3), 7.0), torch.ones(2, 3))
    close(out, torch.zeros(2, 3))


def test_masked_whiten_padding_invariance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    base = masked_whiten(x, mask)
    # Append 4 padded columns of garbage: the real positions do not move, the new ones are 0.
    x_pad = torch.cat([x, 1e6 * torch.randn(3, 4, generator=g)], dim=1)
    mask_pad = torch.cat([mask, torch.zeros(3, 4, dtype=mask.dtype)], dim=1)
    out = masked_whiten(x_pad, mask_pad)
    close(out[:, :5], base)
    close(out[:, 5:], torch.zeros(3, 4))
    # And the whitened real values have mean 0 and unbiased variance 1.
    close(masked_mean(out, mask_pad), 0.0, atol=1e-5)
    close(masked_var(out, mask_pad), 1.0, atol=1e-5)


def test_masked_stats_compute_in_float32_from_bf16():
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.bfloat16)
    mask = torch.ones(1, 3)
    assert masked_mean(x, mask).dtype == torch.float32
    assert masked_whiten(x, mask).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# KL estimators
# --------------------------------------------------------------------------------------------


def test_kl_k1_and_k3_by_hand():
    # Token 1: pi = 0.5, pi_ref = 0.25.
    #   k1 = log 0.5 - log 0.25 = log 2 = 0.693147
    #   r = pi_ref / pi = 0.5;  k3 = (r - 1) - log r = -0.5 + log 2 = 0.193147
    # Token 2: pi = 0.2, pi_ref = 0.4.
    #   k1 = log 0.2 - log 0.4 = -log 2 = -0.693147   (a single k1 sample can be negative)
    #   r = 2;  k3 = (2 - 1) - log 2 = 0.306853
    logp = torch.log(torch.tensor([[0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.25, 0.4]]))
    close(kl_k1(logp, ref), [[LN2, -LN2]])
    close(kl_k3(logp, ref), [[-0.5 + LN2, 1.0 - LN2]])


def test_k3_is_nonnegative_and_zero_where_policies_agree():
    g = torch.Generator().manual_seed(1)
    logp = 5 * torch.randn(64, 32, generator=g)
    ref = 5 * torch.randn(64, 32, generator=g)
    assert (kl_k3(logp, ref) >= 0).all()
    close(kl_k3(logp, logp), torch.zeros(64, 32))
    close(kl_k1(logp, logp), torch.zeros(64, 32))


def test_k1_and_k3_are_unbiased_for_the_exact_kl():
    # Take expectations over a 3-token vocabulary exactly (weights pi), not by sampling:
    # E_pi[k1] = sum pi log(pi / ref) = KL(pi || ref), and E_pi[k3] = E_pi[r] - 1 + KL = KL
    # because E_pi[r] = sum pi * ref / pi = sum ref = 1.
    pi = torch.tensor([0.5, 0.2, 0.3])
    ref = torch.tensor([0.25, 0.4, 0.35])
    kl = (pi * (pi.log() - ref.log())).sum()
    close((pi * kl_k1(pi.log(), ref.log())).sum(), kl)
    close((pi * kl_k3(pi.log(), ref.log())).sum(), kl)


def test_kl_estimators_return_float32_from_bf16():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.bfloat16)
    ref = torch.tensor([[-1.5, -2.0]], dtype=torch.bfloat16)
    assert kl_k1(logp, ref).dtype == torch.float32
    assert kl_k3(logp, ref).dtype == torch.float32


def test_sequence_kl_sums_the_estimator_over_real_tokens_only():
    # The two tokens of test_kl_k1_and_k3_by_hand in row 0, the first of them alone in row 1;
    # the padded position holds -inf log-probs, which must not reach the sum.
    logp = torch.log(torch.tensor([[0.5, 0.2], [0.5, 0.0]]))
    ref = torch.log(torch.tensor([[0.25, 0.4], [0.25, 0.0]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    close(sequence_kl(logp, ref, mask, kl_k1), [0.0, LN2])
    close(sequence_kl(logp, ref, mask), [0.5, -0.5 + LN2])  # k3 by default


# --------------------------------------------------------------------------------------------
# token_rewards
# --------------------------------------------------------------------------------------------


def test_token_rewards_by_hand():
    # beta = 0.5. Row 0 has 3 real tokens with k1 = [0.1, 0.2, 0.3], score 1.0.
    # Row 1 has 2 real tokens with k1 = [0.4, 0.5] then padding (k1 there is garbage), score 2.0.
    #   row 0: -0.5 * [0.1, 0.2, 0.3] = [-0.05, -0.10, -0.15]; + 1.0 at index 2 -> [-0.05, -0.1, 0.85]
    #   row 1: -0.5 * [0.4, 0.5]      = [-0.20, -0.25];        + 2.0 at index 1 -> [-0.2, 1.75, 0]
    ref = torch.full((2, 3), -1.0)
    k1 = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 123.0]])
    logp = ref + k1
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    scores = torch.tensor([1.0, 2.0])
    rewards, kl = token_rewards(scores, logp, ref, mask, kl_coef=0.5)
    close(rewards, [[-0.05, -0.10, 0.85], [-0.20, 1.75, 0.0]])
    close(kl, [[0.1, 0.2, 0.3], [0.4, 0.5, 0.0]])


def test_token_rewards_score_lands_at_mask_sum_minus_one_for_variable_lengths():
    g = torch.Generator().manual_seed(2)
    B, T = 6, 7
    lengths = torch.tensor([1, 7, 3, 5, 2, 4])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # right padded
    logp = torch.randn(B, T, generator=g)
    ref = torch.randn(B, T, generator=g)
    scores = torch.randn(B, generator=g)
    rewards, kl = token_rewards(scores, logp, ref, mask, kl_coef=0.1)
    for i in range(B):
        n = int(lengths[i])
        expected = -0.1 * (logp[i, :n] - ref[i, :n])
        expected[n - 1] += scores[i]  # index = mask.sum(1) - 1
        close(rewards[i, :n], expected)
        close(rewards[i, n:], torch.zeros(T - n))
        close(kl[i, n:], torch.zeros(T - n))
        # Each row alone, unpadded, gives the same numbers (variable-length batch = rows alone).
        alone, _ = token_rewards(scores[i : i + 1], logp[i : i + 1, :n], ref[i : i + 1, :n], mask[i : i + 1, :n], 0.1)
        close(rewards[i : i + 1, :n], alone)


def test_token_rewards_padding_invariance():
    g = torch.Generator().manual_seed(3)
    logp, ref = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    scores = torch.tensor([0.3, -0.7])
    base_r, base_kl = token_rewards(scores, logp, ref, mask, 0.2)
    garbage = torch.full((2, 3), float("nan"))
    r, kl = token_rewards(
        scores,
        torch.cat([logp, garbage], 1),
        torch.cat([ref, -garbage], 1),
        torch.cat([mask, torch.zeros(2, 3, dtype=mask.dtype)], 1),
        0.2,
    )
    close(r[:, :4], base_r)
    close(kl[:, :4], base_kl)
    close(r[:, 4:], torch.zeros(2, 3))


def test_token_rewards_rejects_a_row_without_tokens():
    with pytest.raises(ValueError):
        token_rewards(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]), 0.1)


# --------------------------------------------------------------------------------------------
# GAE
# --------------------------------------------------------------------------------------------


def test_gae_1x3_by_hand():
    # gamma = 1, lam = 0.95, rewards [0, 0, 1], values [0.5, 0.6, 0.7]; V after the end = 0.
    #   t=2: delta = 1 + 1*0   - 0.7 = 0.3;  A2 = 0.3
    #   t=1: delta = 0 + 1*0.7 - 0.6 = 0.1;  A1 = 0.1 + 0.95*0.3   = 0.385
    #   t=0: delta = 0 + 1*0.6 - 0.5 = 0.1;  A0 = 0.1 + 0.95*0.385 = 0.46575
    # returns = A + V = [0.96575, 0.985, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    close(adv, [[0.46575, 0.385, 0.3]])
    close(ret, [[0.96575, 0.985, 1.0]])


def test_gae_lam0_is_one_step_td_with_discount():
    # gamma = 0.5, lam = 0: A_t = delta_t = r_t + 0.5 V_{t+1} - V_t
    #   t=0: 0 + 0.5*0.6 - 0.5 = -0.2;  t=1: 0 + 0.5*0.7 - 0.6 = -0.25;  t=2: 1 + 0 - 0.7 = 0.3
    adv, _ = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), gamma=0.5, lam=0.0)
    close(adv, [[-0.2, -0.25, 0.3]])


def test_gae_lam1_gamma1_returns_are_reward_to_go():
    # lam = gamma = 1: the values telescope away, returns_t = sum of rewards from t on.
    # rewards [0.1, -0.2, 0.3, 1.0] -> reward-to-go [1.2, 1.1, 1.3, 1.0], whatever the values.
    rewards = torch.tensor([[0.1, -0.2, 0.3, 1.0]])
    values = torch.tensor([[3.0, -1.0, 0.25, 7.0]])
    _, ret = gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    close(ret, [[1.2, 1.1, 1.3, 1.0]], atol=1e-5)


def test_gae_padding_invariance_and_zero_on_padding():
    # Same 1x3 example with 2 padded positions of garbage appended: the real positions are the
    # hand-computed ones (V after the last real token is still 0), the padded ones are 0.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0, float("nan")]])
    values = torch.tensor([[0.5, 0.6, 0.7, -9.0, float("inf")]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    close(adv, [[0.46575, 0.385, 0.3, 0.0, 0.0]])
    close(ret, [[0.96575, 0.985, 1.0, 0.0, 0.0]])


def test_gae_variable_length_batch_equals_rows_alone():
    g = torch.Generator().manual_seed(4)
    B, T = 5, 6
    lengths = torch.tensor([6, 1, 4, 2, 5])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    rewards = torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g)
    adv, ret = gae(rewards, values, mask, gamma=0.99, lam=0.95)
    for i in range(B):
        n = int(lengths[i])
        a_i, r_i = gae(rewards[i : i + 1, :n], values[i : i + 1, :n], mask[i : i + 1, :n], gamma=0.99, lam=0.95)
        close(adv[i : i + 1, :n], a_i)
        close(ret[i : i + 1, :n], r_i)
        close(adv[i, n:], torch.zeros(T - n))


def test_gae_matches_the_textbook_sum_form():
    # A_t = sum_l (gamma*lam)^l delta_{t+l}, written out independently of the recursion.
    g = torch.Generator().manual_seed(5)
    T, gamma, lam = 5, 0.9, 0.8
    r, v = torch.randn(1, T, generator=g), torch.randn(1, T, generator=g)
    v_next = torch.cat([v[:, 1:], torch.zeros(1, 1)], 1)
    delta = r + gamma * v_next - v
    expected = torch.tensor([[sum((gamma * lam) ** l * delta[0, t + l] for l in range(T - t)) for t in range(T)]])
    adv, _ = gae(r, v, torch.ones(1, T), gamma=gamma, lam=lam)
    close(adv, expected, atol=1e-5)


# --------------------------------------------------------------------------------------------
# KL controllers
# --------------------------------------------------------------------------------------------


def test_adaptive_kl_controller_one_step_above_target_by_hand():
    # init 0.2, target 6, horizon 10000; measured KL 9 after a batch of 16:
    #   error = clip(9/6 - 1, -0.2, 0.2) = clip(0.5) = 0.2
    #   mult  = 1 + 0.2 * 16 / 10000 = 1.00032;  value = 0.2 * 1.00032 = 0.200064
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=16)
    assert ctl.value == pytest.approx(0.200064, rel=1e-12)


def test_adaptive_kl_controller_below_target_unclipped_by_hand():
    # KL 5.4 < target 6: error = 5.4/6 - 1 = -0.1 (inside the clip);
    # mult = 1 - 0.1 * 16 / 10000 = 0.99984; value = 0.2 * 0.99984 = 0.199968
    ctl = AdaptiveKLController(0.2, 6.0, 10000)
    ctl.update(5.4, 16)
    assert ctl.value == pytest.approx(0.199968, rel=1e-12)
    # Far below target the error is clipped at -0.2: mult = 1 - 0.2 * 16 / 10000 = 0.99968
    ctl2 = AdaptiveKLController(0.2, 6.0, 10000)
    ctl2.update(0.0, 16)
    assert ctl2.value == pytest.approx(0.2 * 0.99968, rel=1e-12)


def test_adaptive_kl_controller_rejects_nan_kl():
    ctl = AdaptiveKLController(0.2, 6.0, 10000)
    with pytest.raises(ValueError):
        ctl.update(float("nan"), 16)
    assert ctl.value == 0.2


def test_fixed_kl_controller_never_moves():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 16)
    assert ctl.value == 0.05


def test_controllers_resume_exactly_from_state_dict():
    ctl = AdaptiveKLController(0.2, 6.0, 10000)
    for kl in [9.0, 7.0, 3.0]:
        ctl.update(kl, 16)
    resumed = AdaptiveKLController(0.2, 6.0, 10000)  # as a new run would build it from the config
    resumed.load_state_dict(ctl.state_dict())
    for kl in [8.0, 2.0]:
        ctl.update(kl, 16)
        resumed.update(kl, 16)
    assert resumed.value == ctl.value  # bit for bit
    fixed = FixedKLController(0.1)
    other = FixedKLController(0.3)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.1


# --------------------------------------------------------------------------------------------
# Leave-one-out (RLOO) baseline


def test_leave_one_out_baseline_by_hand():
    # Group 1 (k = 3): 1, 2, 6 -> others' means 4, 3.5, 1.5 -> -3, -1.5, 4.5. Group 2: all 0.5 -> 0.
    out = leave_one_out_baseline(torch.tensor([1.0, 2.0, 6.0, 0.5, 0.5, 0.5]), 3)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([-3.0, -1.5, 4.5, 0.0, 0.0, 0.0]))
    # = k / (k - 1) * (s - group mean); each group sums to 0.
    assert torch.allclose(out[:3], 1.5 * (torch.tensor([1.0, 2.0, 6.0]) - 3.0))


def test_leave_one_out_baseline_pairs_and_bf16():
    # k = 2: each score minus the other one.
    out = leave_one_out_baseline(torch.tensor([0.25, -1.0, 3.0, 3.0], dtype=torch.bfloat16), 2)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([1.25, -1.25, 0.0, 0.0]))


@pytest.mark.parametrize("scores,k,fragment", [(torch.zeros(6), 1, ">= 2"), (torch.zeros(5), 2, "groups of 2"), (torch.zeros(2, 2), 2, "groups")])
def test_leave_one_out_baseline_rejects_bad_groups(scores, k, fragment):
    with pytest.raises(ValueError, match=fragment):
        leave_one_out_baseline(scores, k)


# --------------------------------------------------------------------------------------------
# The critic-free algorithms: RLOO and GRPO


def test_group_normalized_by_hand():
    # Group 1: 1, 2, 6 -> mean 3, unbiased std sqrt((4 + 1 + 9) / 2) = sqrt(7) -> -2, -1, 3 over sqrt(7).
    # Group 2: all 0.5 -> std 0 -> 0 / (0 + eps) = 0.
    out = group_normalized(torch.tensor([1.0, 2.0, 6.0, 0.5, 0.5, 0.5]), 3, eps=0.0 + 1e-12)
    root7 = math.sqrt(7.0)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([-2 / root7, -1 / root7, 3 / root7, 0.0, 0.0, 0.0]), atol=1e-6)
    # The default eps 1e-4 (trl's): k = 2, scores 1 and 2 -> mean 1.5, std sqrt(0.5) -> -/+ 0.5 / (0.70711 + 1e-4)
    pair = group_normalized(torch.tensor([1.0, 2.0]), 2)
    assert torch.allclose(pair, torch.tensor([-0.5, 0.5]) / (math.sqrt(0.5) + 1e-4), atol=1e-7)


@pytest.mark.parametrize("scores,k,fragment", [(torch.zeros(6), 1, ">= 2"), (torch.zeros(5), 2, "groups of 2")])
def test_group_normalized_rejects_bad_groups(scores, k, fragment):
    with pytest.raises(ValueError, match=fragment):
        group_normalized(scores, k)


# Two responses of one prompt: the first with 2 tokens, the second with 1 (then padding).
LOGP = torch.tensor([[-1.0, -2.0], [-1.0, 7.0]])  # 7.0 sits on padding: it must not leak
REF = torch.tensor([[-1.5, -1.0], [-2.0, -50.0]])
MASK = torch.tensor([[1, 1], [1, 0]])


def test_rloo_sequence_rewards_by_hand():
    # k1 = logp - ref: row 0: 0.5, -1 (sum -0.5); row 1: 1 (sum 1). beta 0.1: 1 + 0.05 = 1.05, 2 - 0.1 = 1.9.
    rewards, kl = rloo_sequence_rewards(torch.tensor([1.0, 2.0]), LOGP, REF, MASK, 0.1)
    assert torch.allclose(rewards, torch.tensor([1.05, 1.9]))
    assert torch.equal(kl, torch.tensor([[0.5, -1.0], [1.0, 0.0]]))


def test_per_token_puts_the_response_advantage_on_its_real_tokens():
    assert torch.equal(per_token(torch.tensor([-0.85, 0.85]), MASK), torch.tensor([[-0.85, -0.85], [0.85, 0.0]]))


def test_step_advantages_rloo_by_hand():
    # Rewards 1.05 and 1.9 (above); each minus the other (k = 2): -0.85 and +0.85, on every real token.
    adv, returns, kl = step_advantages("rloo", torch.tensor([1.0, 2.0]), LOGP, REF, torch.zeros(2, 2), MASK,
                                       kl_coef=0.1, group_size=2)
    assert returns is None
    assert torch.allclose(adv, torch.tensor([[-0.85, -0.85], [0.85, 0.0]]))
    assert torch.equal(kl, torch.tensor([[0.5, -1.0], [1.0, 0.0]]))


def test_step_advantages_grpo_by_hand():
    # Scores 1 and 2: -/+ 0.5 / (sqrt(0.5) + 1e-4) on every real token; the KL is not in the advantage.
    adv, returns, kl = step_advantages("grpo", torch.tensor([1.0, 2.0]), LOGP, REF, torch.zeros(2, 2), MASK,
                                       kl_coef=123.0, group_size=2)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert returns is None
    assert torch.allclose(adv, torch.tensor([[-a, -a], [a, 0.0]]))
    assert torch.equal(kl, torch.tensor([[0.5, -1.0], [1.0, 0.0]]))


@pytest.mark.parametrize("group_baseline", [False, True])
def test_step_advantages_ppo_is_token_rewards_then_gae(group_baseline):
    scores, values = torch.tensor([1.0, 2.0]), torch.tensor([[0.3, -0.2], [0.1, 9.0]])
    adv, returns, kl = step_advantages("ppo", scores, LOGP, REF, values, MASK, kl_coef=0.1, group_size=2,
                                       group_baseline=group_baseline, gamma=1.0, lam=0.95)
    rewards, kl_ref = token_rewards(leave_one_out_baseline(scores, 2) if group_baseline else scores, LOGP, REF, MASK, 0.1)
    adv_ref, returns_ref = gae(rewards, values, MASK, 1.0, 0.95)
    assert torch.equal(adv, adv_ref) and torch.equal(returns, returns_ref) and torch.equal(kl, kl_ref)


def test_step_advantages_names_an_unknown_algorithm():
    with pytest.raises(ValueError, match="unknown algorithm 'dpo'"):
        step_advantages("dpo", torch.zeros(2), LOGP, REF, torch.zeros(2, 2), MASK, kl_coef=0.1, group_size=2)
