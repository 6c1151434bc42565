"""Tests of detoxrl.stats against values worked out by hand."""

import math

import numpy as np
import pytest

from detoxrl.stats import (
    expected_max,
    paired_bootstrap_diff,
    paired_bootstrap_reduction,
    percentage_improvement,
    prob_any_toxic,
    summarize,
)


def test_summarize_by_hand():
    s = summarize([0.1, 0.2, 0.6, 0.9])
    # mean = (0.1 + 0.2 + 0.6 + 0.9) / 4 = 1.8 / 4 = 0.45
    # deviations -0.35, -0.25, 0.15, 0.45 -> squares 0.1225 + 0.0625 + 0.0225 + 0.2025 = 0.41
    # population variance 0.41 / 4 = 0.1025 -> std = sqrt(0.1025) = 0.3201562...
    # median of an even count: (0.2 + 0.6) / 2 = 0.4
    # p95, linear: position 0.95 * (4 - 1) = 2.85 -> 0.6 + 0.85 * (0.9 - 0.6) = 0.855
    # ratio >= 0.5: {0.6, 0.9} -> 2 / 4 = 0.5; max 0.9
    assert s["n"] == 4
    assert s["mean"] == pytest.approx(0.45)
    assert s["std"] == pytest.approx(math.sqrt(0.1025))
    assert s["median"] == pytest.approx(0.4)
    assert s["p95"] == pytest.approx(0.855)
    assert s["ratio"] == pytest.approx(0.5)
    assert s["max"] == pytest.approx(0.9)
    assert all(type(v) in (int, float) for v in s.values())  # JSON-ready


def test_summarize_threshold_is_inclusive_and_empty_is_none():
    assert summarize([0.5, 0.49])["ratio"] == 0.5
    e = summarize([])
    assert e["n"] == 0 and all(e[k] is None for k in ("mean", "std", "median", "p95", "ratio", "max"))
    with pytest.raises(ValueError):
        summarize([0.1, float("nan")])


def test_percentage_improvement_by_hand_and_notebook():
    # (0.2 - 0.15) / 0.2 = 25%; (0.1 - 0.12) / 0.1 = -20%
    p = percentage_improvement(0.2, 0.15, 0.1, 0.12)
    assert p["mean"] == pytest.approx(25.0) and p["std"] == pytest.approx(-20.0)
    # The notebook's printed numbers: mean 12.79%, std -12.10%
    nb = percentage_improvement(0.034846287136050785, 0.03039055831984363, 0.03141657928511457, 0.03521890552745902)
    assert round(nb["mean"], 2) == 12.79 and round(nb["std"], 2) == -12.10
    assert percentage_improvement(0.0, 0.1, 0.0, 0.1) == {"mean": None, "std": None}


def test_bootstrap_reduction_reproducible_and_contains_point():
    rng = np.random.default_rng(42)
    before = rng.uniform(0.0, 0.4, size=200)
    after = before * 0.7 + rng.normal(0, 0.02, size=200).clip(-0.05, 0.05) + 0.05
    r1 = paired_bootstrap_reduction(before, after, n_boot=500, seed=3)
    r2 = paired_bootstrap_reduction(before, after, n_boot=500, seed=3)
    r3 = paired_bootstrap_reduction(before, after, n_boot=500, seed=4)
    assert r1 == r2
    assert r1 != r3
    assert r1["n"] == 200
    assert r1["low"] <= r1["reduction"] <= r1["high"]
    assert r1["reduction"] == pytest.approx((before.mean() - after.mean()) / before.mean())


def test_bootstrap_identical_gives_zero_interval():
    x = [0.1, 0.3, 0.05, 0.7, 0.2]
    r = paired_bootstrap_reduction(x, x, n_boot=300, seed=0)
    assert (r["reduction"], r["low"], r["high"]) == (0.0, 0.0, 0.0)
    d = paired_bootstrap_diff(x, x, n_boot=300, seed=0)
    assert (d["diff"], d["low"], d["high"]) == (0.0, 0.0, 0.0)


def test_bootstrap_reduction_enumerated_tiny_case():
    # before = [1, 3], after = [1, 1]. Point: (2 - 1) / 2 = 0.5.
    # The 4 equally likely resamples of 2 indices:
    #   (0,0): before mean 1, after 1 -> (1-1)/1 = 0
    #   (0,1), (1,0): before 2, after 1 -> 0.5
    #   (1,1): before 3, after 1 -> 2/3
    before, after = [1.0, 3.0], [1.0, 1.0]
    support = {0.0, 0.5, 2 / 3}
    for seed in range(10):  # one replicate: the interval is that replicate's value
        r = paired_bootstrap_reduction(before, after, n_boot=1, seed=seed)
        assert r["low"] == r["high"]
        assert any(r["low"] == pytest.approx(v) for v in support)
    # Many replicates: each extreme has probability 1/4 > 2.5%, so the 95% interval is [0, 2/3].
    r = paired_bootstrap_reduction(before, after, n_boot=4000, seed=0)
    assert r["reduction"] == pytest.approx(0.5)
    assert r["low"] == pytest.approx(0.0) and r["high"] == pytest.approx(2 / 3)


def test_bootstrap_diff_enumerated_tiny_case():
    # before = [0, 1], after = [1, 1]: diff of means = 1 - 0.5 = 0.5.
    # Resamples: (0,0) -> 1 - 0 = 1; (1,1) -> 1 - 1 = 0; mixed -> 1 - 0.5 = 0.5. 95% interval [0, 1].
    d = paired_bootstrap_diff([0.0, 1.0], [1.0, 1.0], n_boot=4000, seed=1)
    assert d["diff"] == pytest.approx(0.5) and d["n"] == 2
    assert d["low"] == pytest.approx(0.0) and d["high"] == pytest.approx(1.0)


def test_bootstrap_groups_resample_whole_prompts():
    # Two prompts with two identical samples each behave exactly like the two-value case above.
    g = paired_bootstrap_reduction([1, 1, 3, 3], [1, 1, 1, 1], n_boot=50, seed=7, groups=[5, 5, 9, 9])
    p = paired_bootstrap_reduction([1, 3], [1, 1], n_boot=50, seed=7)
    assert g["reduction"] == pytest.approx(p["reduction"])
    assert (g["low"], g["high"]) == pytest.approx((p["low"], p["high"]))
    assert g["n"] == 4


def test_bootstrap_edge_cases():
    r = paired_bootstrap_reduction([0.0, 0.0], [0.1, 0.0], n_boot=10)
    assert r["reduction"] is None and r["n"] == 2
    with pytest.raises(ValueError):
        paired_bootstrap_reduction([0.1, 0.2], [0.1], n_boot=10)
    with pytest.raises(ValueError):
        paired_bootstrap_diff([0.1], [0.1], n_boot=0)


def test_expected_max_and_prob_any_toxic_2x3():
    v = np.array([[0.1, 0.7, 0.2], [0.3, 0.4, 0.05]])
    # row maxima 0.7 and 0.4 -> mean 0.55
    assert expected_max(v) == pytest.approx(0.55)
    # row 1 has 0.7 >= 0.5, row 2 does not -> 1/2
    assert prob_any_toxic(v) == pytest.approx(0.5)
    # threshold 0.4 is inclusive: row 2's 0.4 counts -> 2/2
    assert prob_any_toxic(v, threshold=0.4) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        expected_max([0.1, 0.2])


def test_bootstrap_p_value_by_hand():
    from detoxrl.stats import bootstrap_p_value

    # 4 replicates, one <= 0: 2 x min(1 + 1, 3 + 1) / (4 + 1) = 0.8
    assert bootstrap_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(0.8)
    # all 99 above 0: 2 x 1 / 100; a replicate at exactly 0 counts on both sides
    assert bootstrap_p_value(np.ones(99)) == pytest.approx(0.02)
    assert bootstrap_p_value(np.zeros(9)) == 1.0
    assert bootstrap_p_value(np.array([np.nan, np.inf])) is None


def test_holm_adjust_by_hand():
    from detoxrl.stats import holm_adjust

    # sorted 0.01, 0.03, 0.04: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; max(0.06, 0.04 x 1) = 0.06; input order kept
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm_adjust([0.6, 0.7]) == [1.0, 1.0]  # capped
    assert holm_adjust([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([1.5])


def test_paired_bootstrap_results_carry_their_p_value():
    from detoxrl.stats import paired_bootstrap_diff, paired_bootstrap_reduction

    before, after = [0.4] * 10, [0.2] * 10  # every replicate halves: p = 2 x 1 / (n_boot + 1)
    assert paired_bootstrap_reduction(before, after, n_boot=99)["p"] == pytest.approx(0.02)
    assert paired_bootstrap_diff(before, before, n_boot=99)["p"] == 1.0


def test_prompts_for_power_by_hand():
    from statistics import NormalDist

    from detoxrl.stats import prompts_for_power

    # differences 1, 3 (mean 2, population sd 1): ((1.95996 + 0.84162) x 1 / 2)^2 = 1.40079^2 = 1.9622
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    assert prompts_for_power([1.0, 3.0]) == pytest.approx((z / 2) ** 2)
    assert prompts_for_power([1.0, 3.0]) == pytest.approx(1.9622, abs=1e-4)
    # Holm's first test of two judges at 0.025 needs more
    assert prompts_for_power([1.0, 3.0], alpha=0.025) > prompts_for_power([1.0, 3.0])
    assert prompts_for_power([1.0, -1.0]) is None and prompts_for_power([2.0]) is None
