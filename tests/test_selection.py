"""Challenging-prompt selection: which rows it keeps, where it happens, and its score cache."""

from __future__ import annotations

import sys

import pytest

from detoxrl import selection
from detoxrl.config import DEMO_OVERRIDES, load_config
from detoxrl.errors import ConfigError, DataError
from detoxrl.prompts import split_and_select, split_rows
from detoxrl.rewards import FunctionScorer
from detoxrl.selection import CachedDialogueToxicity, scorer_specs


def rows_with_toxicity(values: list[float]) -> list[dict]:
    """One row per value; the dialogue text carries its toxicity ("tox=0.35 ...") for the fixture scorer."""
    return [{"id": f"r{i}", "dialogue": f"tox={v:.2f} " + "words " * 60, "summary": None} for i, v in enumerate(values)]


def toxicity_of(dialogues):
    return [float(d.split()[0].split("=")[1]) for d in dialogues]


@pytest.fixture
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "cache_dir", lambda: tmp_path / "selection-cache")
    return tmp_path / "selection-cache"


def data_cfg(tmp_path, threshold=0.3, **extra):
    overrides = [f"data.source={tmp_path / 'd.csv'}", f"data.min_dialogue_toxicity={threshold}"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config("offline", overrides=overrides)


def test_selection_keeps_exactly_the_rows_at_or_above_the_threshold_within_each_split(tmp_path):
    values = [0.1, 0.3, 0.29, 0.9, 0.0, 0.5, 0.31, 0.05, 0.7, 0.2]  # 8 train, 2 test (ceil(0.2 * 10))
    rows = rows_with_toxicity(values)
    cfg = data_cfg(tmp_path)
    train, test, n_rows, n_kept, counts = split_and_select(cfg.data, rows, toxicity_of)
    whole_train, whole_test = split_rows(rows, 0.2)
    # the split is the unshuffled split of all rows; the selection happens within each part
    assert [r["id"] for r in train] == [r["id"] for r in whole_train if toxicity_of([r["dialogue"]])[0] >= 0.3]
    assert [r["id"] for r in train] == ["r1", "r3", "r5", "r6"]
    assert [r["id"] for r in test] == ["r8"]  # r9 (0.2) is held out but not challenging
    assert {r["id"] for r in test} <= {r["id"] for r in whole_test}  # no held-out row moves into training
    assert counts == {"threshold": 0.3, "scorer": "max", "train_before": 8, "test_before": 2, "train": 4, "test": 1}
    assert (n_rows, n_kept) == (10, 10)


def test_a_threshold_that_empties_a_split_is_one_line_with_the_counts(tmp_path):
    rows = rows_with_toxicity([0.9] * 8 + [0.1, 0.1])
    with pytest.raises(DataError) as info:
        split_and_select(data_cfg(tmp_path, 0.5).data, rows, toxicity_of)
    msg = str(info.value)
    assert "keeps 8 of 8 train and 0 of 2 test" in msg and "lower the threshold" in msg and "\n" not in msg
    # evaluation of a whole file (no train part) only needs test rows
    train, test, *_ = split_and_select(data_cfg(tmp_path, 0.5, **{"data.test_fraction": 1.0}).data, rows, toxicity_of,
                                       require_train=False)
    assert train == [] and len(test) == 8


def test_no_threshold_means_no_selection(tmp_path):
    rows = rows_with_toxicity([0.0] * 10)
    cfg = load_config("offline", overrides=[f"data.source={tmp_path / 'd.csv'}"])
    train, test, *_, counts = split_and_select(cfg.data, rows, None)
    assert (len(train), len(test), counts) == (8, 2, None)


def test_cache_is_used_on_the_second_run_and_invalidated_by_new_text_or_scorer(tmp_path, cache_in_tmp):
    calls = []

    def tox(texts):  # a FunctionScorer: toxicity = sigmoid(-reward); reward 0 -> toxicity 0.5
        calls.append(len(texts))
        return [0.0 if "tox=0.9" in t else 10.0 for t in texts]

    cfg = data_cfg(tmp_path)
    specs = [("python:fixture:tox", "reward", "reward")]
    dialogues = [r["dialogue"] for r in rows_with_toxicity([0.9, 0.1, 0.9, 0.2])]
    first = CachedDialogueToxicity(cfg, specs, scorers=[FunctionScorer(tox)])
    assert first(dialogues) == pytest.approx([0.5, 4.54e-5, 0.5, 4.54e-5], rel=1e-2)
    assert calls == [3]  # two identical dialogues are scored once
    again = CachedDialogueToxicity(cfg, specs, scorers=[FunctionScorer(tox)])
    assert again(dialogues) == first(dialogues) and calls == [3]  # read from the cache file
    assert again.scored_last_call == 0 and again.path.is_file()
    changed = dialogues[:3] + ["tox=0.9 a dialogue that was edited in the file"]
    assert again(changed)[3] == pytest.approx(0.5) and calls == [3, 1]  # only the changed row is rescored
    other_scorer = CachedDialogueToxicity(cfg, [("python:fixture:other", "reward", "reward")], scorers=[FunctionScorer(tox)])
    assert other_scorer.path != again.path
    other_scorer(dialogues)
    assert calls == [3, 1, 3]  # another scorer: another cache


def test_the_maximum_over_the_scorers_is_the_dialogue_toxicity(tmp_path, cache_in_tmp):
    low = FunctionScorer(lambda texts: [5.0] * len(texts))  # toxicity sigmoid(-5) = 0.0067
    high = FunctionScorer(lambda texts: [-1.0] * len(texts))  # toxicity sigmoid(1) = 0.731
    score = CachedDialogueToxicity(data_cfg(tmp_path), [("a", "reward", "reward"), ("b", "reward", "reward")], scorers=[low, high])
    assert score(["#Person1#: hi there"]) == pytest.approx([0.7311], abs=1e-4)


def test_scorer_specs_by_mode(tmp_path):
    def specs(mode):
        return scorer_specs(data_cfg(tmp_path, **{"data.selection_scorer": mode}))

    assert specs("reward") == [("packaged:toxic-comment-classifier", "non-toxic", "toxic")]
    assert specs("judge") == [("packaged:profanity-check", "non-toxic", "toxic")]  # the first judge
    assert specs("max") == specs("reward") + specs("judge")
    assert specs("packaged:hatesonar#hate_speech") == [("packaged:hatesonar", "non-toxic", "hate_speech")]
    with pytest.raises(ConfigError, match="unknown data.selection_scorer 'maxx'"):
        specs("maxx")
    no_judge = load_config("offline", overrides=["data.min_dialogue_toxicity=0.3", "evaluation.judge_model=none",
                                                 "data.selection_scorer=judge"])
    with pytest.raises(ConfigError, match="no judge is configured"):
        scorer_specs(no_judge)


def test_a_language_model_as_selection_scorer_is_refused_from_its_config(tmp_path, tiny_t5, no_weights_loaded):
    from detoxrl.errors import ModelLoadError

    with pytest.raises(ModelLoadError) as info:
        scorer_specs(data_cfg(tmp_path, **{"data.selection_scorer": f"{tiny_t5}#LABEL_1"}))
    msg = str(info.value)
    assert f"selection scorer '{tiny_t5}' is a T5ForConditionalGeneration" in msg and "data.selection_scorer" in msg


def test_a_python_function_can_select(tmp_path, cache_in_tmp, monkeypatch):
    (tmp_path / "seltox.py").write_text("def reward(texts):\n    return [-3.0 if 'fight' in t else 3.0 for t in texts]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("seltox", None)
    rows = [{"id": f"r{i}", "dialogue": ("a fight " if i % 2 else "a chat ") + "x " * 120, "summary": None} for i in range(10)]
    cfg = data_cfg(tmp_path, 0.5, **{"data.selection_scorer": "python:seltox:reward"})
    train, test, *_ = split_and_select(cfg.data, rows, selection.dialogue_toxicity_for(cfg))
    assert [r["id"] for r in train] == ["r1", "r3", "r5", "r7"] and [r["id"] for r in test] == ["r9"]


def test_the_demo_selects_challenging_prompts():
    cfg = load_config("offline", overrides=DEMO_OVERRIDES)
    assert cfg.data.min_dialogue_toxicity == 0.3 and cfg.data.selection_scorer == "max"
    assert selection.dialogue_toxicity_for(cfg) is not None
    assert selection.dialogue_toxicity_for(load_config("offline")) is None  # prepare/train select only when asked
