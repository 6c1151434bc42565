"""Tests of detoxrl.compare on small synthetic evaluations."""

import csv
import json
import warnings

import pytest

from detoxrl.compare import (
    TABLE_COLUMNS,
    comparison_table,
    compare_files,
    headline,
    load_eval_records,
    pair_records,
    write_comparison,
)
from detoxrl.errors import DataError


def rec(index, tox, reward, *, sample=0, judge=None, rougeL=None, faith=None, id_=None, response=None):
    return {
        "index": index,
        "id": id_ if id_ is not None else f"test_{index}",
        "sample": sample,
        "prompt": f"Summarize {index}",
        "dialogue": f"dialogue {index}",
        "reference": None if rougeL is None else f"reference {index}",
        "response": response if response is not None else f"summary {index}.{sample}",
        "length_tokens": 10 + index,
        "reward": reward,
        "toxicity": tox,
        "judge_toxicity": judge,
        "rouge1": rougeL,
        "rouge2": rougeL,
        "rougeL": rougeL,
        "faithfulness": faith,
    }


def write_jsonl(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_table_columns_and_order():
    before = [rec(0, 0.1, 2.0), rec(1, 0.2, 1.0), rec(2, 0.3, 0.5)]
    after = [rec(0, 0.1, 1.5, response="a0"), rec(1, 0.1, 3.0, response="a1"), rec(2, 0.2, 0.5, response="a2")]
    rows = comparison_table(pair_records(before, after))
    assert list(rows[0]) == list(TABLE_COLUMNS)
    assert list(TABLE_COLUMNS[:6]) == [
        "query", "response_before", "response_after", "reward_before", "reward_after", "reward_diff"
    ]
    # reward_diff: index 0 -> -0.5, index 1 -> +2.0, index 2 -> 0.0; sorted descending
    assert [r["index"] for r in rows] == [1, 2, 0]
    assert [r["reward_diff"] for r in rows] == pytest.approx([2.0, 0.0, -0.5])
    assert rows[0]["query"] == "dialogue 1"
    assert rows[0]["response_before"] == "summary 1.0" and rows[0]["response_after"] == "a1"
    assert (rows[0]["toxicity_before"], rows[0]["toxicity_after"]) == (0.2, 0.1)


def test_pairing_on_index_and_sample():
    before = [rec(0, 0.1, 1.0, sample=1), rec(0, 0.2, 1.0, sample=0)]
    after = [rec(0, 0.3, 1.0, sample=0), rec(0, 0.4, 1.0, sample=1)]
    pairs = pair_records(before, after)
    assert [(b["toxicity"], a["toxicity"]) for b, a in pairs] == [(0.2, 0.3), (0.1, 0.4)]


def test_pairing_mismatch_errors():
    base = [rec(i, 0.1, 1.0) for i in range(4)]
    with pytest.raises(DataError, match="different prompts.*evaluate both with the same --num-samples and data"):
        pair_records(base, base[:3])
    with pytest.raises(DataError, match=r"different prompts \(index 2: id 'test_2' before, 'other' after\)"):
        pair_records(base, [rec(i, 0.1, 1.0, id_="other" if i == 2 else None) for i in range(4)])
    two_samples = [rec(i, 0.1, 1.0, sample=s) for i in range(4) for s in range(2)]
    with pytest.raises(DataError, match="4 prompts x 1 samples.*4 prompts x 2 samples"):
        pair_records(base, two_samples)
    with pytest.raises(DataError, match="two records"):
        pair_records(base + base[:1], base)


def test_headline_shape_and_significant_reduction():
    n = 60
    before = [rec(i, 0.4 + 0.005 * (i % 10), 1.0, judge=0.30, rougeL=0.40, faith=0.6) for i in range(n)]
    after = [rec(i, 0.2 + 0.005 * (i % 7), 2.0, judge=0.30, rougeL=0.40, faith=0.6) for i in range(n)]
    h = headline(pair_records(before, after), n_boot=300)
    assert h["n"] == n and h["prompts"] == n and h["samples_per_prompt"] == 1
    tox = h["toxicity"]
    assert set(tox) >= {"before", "after", "reduction", "percentage_improvement"}
    assert tox["reduction"]["low"] > 0.4  # about 50% lower, tight interval
    assert tox["percentage_improvement"]["mean"] == pytest.approx(100 * tox["reduction"]["reduction"])
    assert h["reward"]["diff"]["diff"] == pytest.approx(1.0)
    assert h["rouge"]["rougeL"]["before"]["mean"] == pytest.approx(40.0)  # points
    assert h["rouge"]["rougeL"]["diff"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "n": n, "p": 1.0}
    assert h["length_tokens"]["diff"]["diff"] == 0.0
    v = h["verdict"]
    assert v.startswith("judge toxicity: no significant change (+0.0% [95% CI +0.0%, +0.0%] (n=60))")
    assert "reward-model toxicity -" in v and "reward-model toxicity: no significant" not in v
    assert "ROUGE-L: no significant change (+0.0 points" in v
    assert "faithfulness: no significant change" in v
    json.dumps(h, allow_nan=False)


def test_headline_without_judge_or_references_and_k_samples():
    before = [rec(i, 0.6 if s == 0 else 0.1, 0.0, sample=s) for i in range(5) for s in range(3)]
    after = [rec(i, 0.1, 0.0, sample=s) for i in range(5) for s in range(3)]
    h = headline(pair_records(before, after), n_boot=100)
    assert h["judge_toxicity"] is None and h["rouge"] is None and h["faithfulness"] is None
    assert h["samples_per_prompt"] == 3 and h["prompts"] == 5 and h["n"] == 15
    em = h["toxicity"]["expected_max"]
    assert (em["before"], em["after"]) == (pytest.approx(0.6), pytest.approx(0.1))
    pa = h["toxicity"]["prob_any_toxic"]
    assert (pa["before"], pa["after"]) == (1.0, 0.0)
    assert h["verdict"].startswith("reward-model toxicity -")


def test_write_comparison_and_load(tmp_path):
    before = [rec(i, 0.3, float(i), judge=0.2) for i in range(5)]
    after = [rec(i, 0.1, float(5 - i), judge=0.2) for i in range(5)]
    bp = write_jsonl(tmp_path / "before.jsonl", before)
    ap = write_jsonl(tmp_path / "after.jsonl", after, tail='{"index": 5, "id": "te')  # interrupted write
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert len(load_eval_records(ap)) == 5
    assert any("incomplete last record" in str(x.message) for x in w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = compare_files(bp, ap, tmp_path / "cmp", n_boot=50)
    out = tmp_path / "cmp"
    assert json.loads((out / "compare.json").read_text()) == head
    table = json.loads((out / "comparison.json").read_text())
    assert [r["index"] for r in table] == [0, 1, 2, 3, 4]  # reward_diff 5, 3, 1, -1, -3
    with open(out / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(TABLE_COLUMNS) and len(rows) == 5
    assert write_comparison(pair_records(before, after), out, n_boot=50) == head


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="no evaluation records"):
        load_eval_records(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"index": 0\n' + json.dumps(rec(1, 0.1, 1.0)) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1 is not valid JSON"):
        load_eval_records(bad)
    bad.write_text(json.dumps({"index": 0, "response": "x"}) + "\n")
    with pytest.raises(DataError, match="lacks sample, reward, toxicity"):
        load_eval_records(bad)


# --------------------------------------------------------------------------------------------
# The detoxification measures: expected maximum and toxicity probability with paired intervals


def sampled(index, values, judges=None):
    """k records of one prompt, one per sample value, decoded by sampling."""
    out = []
    for s, v in enumerate(values):
        r = rec(index, v, 0.0, sample=s)
        r["decoding"] = "sampled"
        r["judges"] = {name: vals[s] for name, vals in (judges or {}).items()}
        out.append(r)
    return out


def test_expected_max_and_toxicity_probability_with_paired_intervals():
    # 4 prompts x 2 samples. Maxima before: 0.8, 0.6, 0.4, 0.2 (mean 0.5); after: 0.4, 0.3, 0.2, 0.1 (mean 0.25).
    before = sampled(0, [0.8, 0.1]) + sampled(1, [0.2, 0.6]) + sampled(2, [0.4, 0.4]) + sampled(3, [0.2, 0.0])
    after = sampled(0, [0.4, 0.1]) + sampled(1, [0.3, 0.3]) + sampled(2, [0.0, 0.2]) + sampled(3, [0.1, 0.1])
    h = headline(pair_records(before, after), n_boot=500)
    em = h["toxicity"]["expected_max"]
    assert (em["before"], em["after"]) == (pytest.approx(0.5), pytest.approx(0.25))
    # every prompt's maximum halves: the relative reduction is 0.5 in every bootstrap replicate
    assert em["reduction"]["reduction"] == pytest.approx(0.5)
    assert em["reduction"]["low"] == pytest.approx(0.5) and em["reduction"]["high"] == pytest.approx(0.5)
    assert em["reduction"]["n"] == 4  # resampled by prompt, not by sample
    pa = h["toxicity"]["prob_any_toxic"]
    assert (pa["before"], pa["after"]) == (0.5, 0.0)  # prompts 0 and 1 had a sample >= 0.5 before
    assert pa["diff"]["diff"] == pytest.approx(-0.5) and pa["diff"]["high"] <= 0.0 and pa["diff"]["low"] >= -1.0
    assert pa["reduction"]["reduction"] == pytest.approx(1.0)


def test_a_sampled_evaluation_is_not_compared_with_a_greedy_one():
    before = sampled(0, [0.1]) + sampled(1, [0.2])
    after = [rec(0, 0.1, 0.0), rec(1, 0.2, 0.0)]
    for r in after:
        r["decoding"] = "greedy"
    with pytest.raises(DataError) as info:
        pair_records(before, after)
    assert "cannot be compared with a greedy one" in str(info.value) and "\n" not in str(info.value)
    # k samples against one summary per prompt: different (index, sample) sets
    with pytest.raises(DataError, match="1 prompts x 3 samples"):
        pair_records(sampled(0, [0.1, 0.2, 0.3]), sampled(0, [0.1]))


def test_compare_run_decides_on_the_primary_judges_expected_max(tmp_path):
    """End to end on records: judge A's expected maximum falls from 0.6 to 0.2 in every prompt (bootstrap p = 2/201),
    judge B's does not move (p = 1): Holm multiplies A's p by 2 -> 4/201 < 0.05: less toxic, quality kept."""
    from detoxrl.compare import compare_run

    def write(name, recs):
        write_jsonl(tmp_path / f"{name}.jsonl", recs)

    judges_b = {"A": [0.6, 0.5], "B": [0.3, 0.3]}
    judges_a = {"A": [0.2, 0.1], "B": [0.3, 0.3]}
    before = [r for i in range(12) for r in sampled(i, [0.5, 0.4], judges_b)]
    after = [r for i in range(12) for r in sampled(i, [0.1, 0.1], judges_a)]
    greedy_b = [dict(rec(i, 0.3, 0.0, faith=0.5), decoding="greedy", judges={"A": 0.4, "B": 0.3}) for i in range(12)]
    greedy_a = [dict(rec(i, 0.3, 0.0, faith=0.5), decoding="greedy", judges={"A": 0.4, "B": 0.3}) for i in range(12)]
    write("before", greedy_b), write("after", greedy_a), write("before-sampled", before), write("after-sampled", after)
    head = compare_run(tmp_path, n_boot=200)
    d = head["detoxification"]
    assert d["status"] == "less toxic, quality kept" and d["reductions"] == ["A"] and not d["increases"]
    a, b = d["primary"]["measures"]
    assert (a["judge"], b["judge"]) == ("A", "B") and d["primary"]["correction"] == "holm"
    assert a["p"] == pytest.approx(2 / 201) and a["p_adjusted"] == pytest.approx(4 / 201) and a["significant"]
    assert b["p"] == 1.0 and b["p_adjusted"] == 1.0 and not b["significant"]
    assert d["quality_gate"]["passed"] and d["quality_gate"]["rouge_l"] is None  # no references: not gated
    assert head["verdict"] == d["text"] and d["text"].startswith(
        "less toxic, quality kept (expected maximum toxicity over the 2 samples of a prompt, Holm-corrected across 2 judges): A -66.7% [-66.7, -66.7], adjusted p 0.0199; B +0.0%")
    assert head["sampled"]["judges"]["A"]["expected_max"]["before"] == pytest.approx(0.6)
    assert head["kl_to_reference"] is None  # greedy summaries are not samples: no KL from them
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["verdict"] == head["verdict"] and (tmp_path / "comparison-sampled.csv").is_file()
    # judge A's greedy mean (a secondary measure) doubling in every prompt does not move the verdict
    write("after", [dict(rec(i, 0.3, 0.0, faith=0.5), decoding="greedy", judges={"A": 0.8, "B": 0.3}) for i in range(12)])
    flipped = compare_run(tmp_path, n_boot=200)["detoxification"]
    assert flipped["status"] == "less toxic, quality kept" and flipped["primary"] == d["primary"]
    secondary = {m["name"]: m for m in flipped["secondary"]}["judge A mean toxicity (greedy)"]
    assert secondary["reduction"] == pytest.approx(-1.0) and secondary["p"] == pytest.approx(2 / 201)
    write("after", greedy_a)
    # judge B's expected maximum rising in every prompt turns the verdict, whatever judge A says
    after_worse = [r for i in range(12) for r in sampled(i, [0.1, 0.1], {"A": [0.2, 0.1], "B": [0.5, 0.6]})]
    write("after-sampled", after_worse)
    d = compare_run(tmp_path, n_boot=200)["detoxification"]
    assert d["status"] == "more toxic" and d["increases"] == ["B"] and d["reductions"] == ["A"]


# --------------------------------------------------------------------------------------------
# The pre-declared verdict on headlines built by hand (compare.detox_verdict)


def reduction(r, low, high, p, n=50):
    return {"reduction": r, "low": low, "high": high, "n": n, "p": p}


def verdict_heads(expected_max, *, greedy_means=None, rouge_l=None, faithfulness=0.0, kl=1.5):
    """A greedy and a sampled headline: ``expected_max`` {judge: reduction dict} in the sampled pass,
    ``greedy_means`` {judge: reduction dict} in the greedy one; quality diffs of the greedy pass."""
    quiet = reduction(0.0, -0.1, 0.1, 1.0)
    greedy = {
        "decoding": "greedy",
        "judges": {spec: {"reduction": (greedy_means or {}).get(spec, quiet)} for spec in expected_max},
        "toxicity": {"reduction": quiet},
        "rouge": None if rouge_l is None else {"rougeL": {"diff": {"diff": rouge_l, "low": rouge_l - 1, "high": rouge_l + 1, "n": 50}}},
        "faithfulness": {"diff": {"diff": faithfulness, "low": faithfulness - 0.03, "high": faithfulness + 0.03, "n": 50}},
        "kl_to_reference": None,
    }
    sampled_head = {
        "decoding": "sampled",
        "samples_per_prompt": 8,
        "judges": {spec: {"reduction": quiet, "expected_max": {"reduction": r}} for spec, r in expected_max.items()},
        "toxicity": {"reduction": reduction(0.4, 0.2, 0.6, 0.001), "expected_max": {"reduction": reduction(0.5, 0.3, 0.7, 0.001)}},
        "kl_to_reference": {"n": 400, "mean": kl},
    }
    return greedy, sampled_head


def test_holm_adjusted_p_values_by_hand():
    """p = 0.01, 0.03 (two judges): sorted, 0.01 x 2 = 0.02 and 0.03 x 1 = 0.03 -> both below 0.05."""
    from detoxrl.compare import detox_verdict

    greedy, sampled_head = verdict_heads({"svm": reduction(0.30, 0.10, 0.50, 0.03), "hs": reduction(0.08, 0.03, 0.13, 0.01)})
    d = detox_verdict(greedy, sampled_head)
    svm, hs = d["primary"]["measures"]
    assert svm["p_adjusted"] == pytest.approx(0.03) and hs["p_adjusted"] == pytest.approx(0.02)
    assert d["status"] == "less toxic, quality kept" and d["reductions"] == ["svm", "hs"]
    assert d["kl_to_reference"] == {"n": 400, "mean": 1.5}  # the sampled pass's: the adapter's own samples
    # p = 0.03 and 0.04: each alone is below 0.05, but Holm's step-down gives 0.03 x 2 = 0.06, then
    # max(0.06, 0.04 x 1) = 0.06: neither is significant as a family, so no change is claimed.
    greedy, sampled_head = verdict_heads({"svm": reduction(0.30, 0.02, 0.50, 0.04), "hs": reduction(0.08, 0.01, 0.13, 0.03)})
    d = detox_verdict(greedy, sampled_head)
    assert [m["p_adjusted"] for m in d["primary"]["measures"]] == [pytest.approx(0.06), pytest.approx(0.06)]
    assert d["status"] == "no significant change" and d["reductions"] == [] and d["increases"] == []
    assert d["text"].startswith("no significant change (expected maximum toxicity over the 8 samples of a prompt, "
                                "Holm-corrected across 2 judges): svm -30.0% [-50.0, -2.0], adjusted p 0.06; hs -8.0%")


def test_a_secondary_measure_that_flips_does_not_move_the_verdict():
    from detoxrl.compare import detox_verdict

    primaries = {"svm": reduction(0.30, 0.10, 0.50, 0.004), "hs": reduction(0.02, -0.03, 0.07, 0.40)}
    base = detox_verdict(*verdict_heads(primaries))
    # The SVM's greedy mean rises 40% with p = 0.001 (it would have made the old verdict "more toxic").
    flipped = detox_verdict(*verdict_heads(primaries, greedy_means={"svm": reduction(-0.40, -0.70, -0.10, 0.001)}))
    assert base["status"] == flipped["status"] == "less toxic, quality kept"
    assert base["primary"] == flipped["primary"]
    secondary = {m["name"]: m for m in flipped["secondary"]}
    assert secondary["judge svm mean toxicity (greedy)"]["p"] == 0.001  # reported, uncorrected, deciding nothing
    assert "reward model expected max toxicity" in secondary  # the reward model is never a judge


def test_the_four_outcomes_and_the_quality_gate():
    from detoxrl.compare import detox_verdict

    down = reduction(0.30, 0.10, 0.50, 0.002)
    flat = reduction(0.01, -0.05, 0.07, 0.70)
    up = reduction(-0.25, -0.45, -0.05, 0.004)
    assert detox_verdict(*verdict_heads({"svm": down, "hs": flat}, rouge_l=-1.0, faithfulness=-0.02))["status"] == "less toxic, quality kept"
    lost_faith = detox_verdict(*verdict_heads({"svm": down, "hs": flat}, faithfulness=-0.021))
    assert lost_faith["status"] == "less toxic, quality lost"
    assert lost_faith["quality_gate"]["faithfulness"]["min"] == -0.02 and not lost_faith["quality_gate"]["faithfulness"]["passed"]
    assert detox_verdict(*verdict_heads({"svm": down, "hs": flat}, rouge_l=-1.1))["status"] == "less toxic, quality lost"
    assert detox_verdict(*verdict_heads({"svm": flat, "hs": flat}))["status"] == "no significant change"
    more = detox_verdict(*verdict_heads({"svm": down, "hs": up}))
    assert more["status"] == "more toxic" and more["increases"] == ["hs"]
    # no sampled pass: the expected maximum was not evaluated, so there is no verdict, and it says why
    greedy, _ = verdict_heads({"svm": down})
    none = detox_verdict(greedy, None)
    assert none["status"] == "no verdict" and "samples_per_prompt" in none["text"]


def test_the_rule_names_the_primary_measure_and_judges():
    from detoxrl.compare import VerdictRule, detox_verdict, one_spec_per_model
    from detoxrl.config import load_config

    assert one_spec_per_model(["svm", "packaged:hatesonar", "packaged:hatesonar#hate_speech"]) == ["svm", "packaged:hatesonar"]
    greedy, sampled_head = verdict_heads({"svm": reduction(0.01, -0.1, 0.1, 0.9), "hs": reduction(0.01, -0.1, 0.1, 0.9)},
                                         greedy_means={"hs": reduction(0.20, 0.10, 0.30, 0.002)})
    d = detox_verdict(greedy, sampled_head, VerdictRule(primary="greedy_mean", judges=("hs",)))
    assert d["status"] == "less toxic, quality kept" and d["primary"]["judges"] == ["hs"]
    assert d["primary"]["measures"][0]["p_adjusted"] == 0.002  # one test: no correction to make
    rule = VerdictRule.from_config(load_config("offline", overrides=["evaluation.max_faithfulness_drop=0.05"]).evaluation)
    assert rule == VerdictRule("expected_max", None, 0.05, 1.0, 0.05)


def test_summaries_without_intervals_are_each_side_summarized_on_its_own():
    """What the report shows when compare.json is missing: stats.summarize of every record of each side
    (no pairing: the sides may differ in length), None where a side has no value, no interval or verdict."""
    from detoxrl.compare import summaries_without_intervals
    from detoxrl.stats import summarize

    before = [rec(i, 0.1 * i, float(i), judge=0.2, rougeL=0.3) for i in range(4)]
    after = [rec(i, 0.05 * i, float(i) + 1, rougeL=0.4) for i in range(3)]
    after[1]["toxicity"] = float("nan")  # not finite: left out, as the report always did
    out = summaries_without_intervals(before, after)
    assert set(out) == {"toxicity", "judge_toxicity", "reward", "rouge", "faithfulness", "length_tokens"}
    assert out["toxicity"] == {"before": summarize([0.0, 0.1, 0.2, 0.30000000000000004]),
                               "after": summarize([0.0, 0.1])}
    assert out["judge_toxicity"] == {"before": summarize([0.2] * 4), "after": None}
    assert out["reward"]["after"] == summarize([1.0, 2.0, 3.0])
    assert out["rouge"]["rougeL"]["after"]["mean"] == pytest.approx(0.4) and out["rouge"]["rougeLsum"] is None
    assert out["faithfulness"] is None  # neither side has it
    assert summaries_without_intervals([], [])["toxicity"] is None


def test_pairing_refuses_a_record_that_is_not_an_evaluation_record():
    base = [rec(i, 0.1, 1.0) for i in range(3)]
    broken = [dict(r) for r in base]
    del broken[1]["reward"]
    with pytest.raises(DataError, match="after evaluation holds a record without reward"):
        pair_records(base, broken)
