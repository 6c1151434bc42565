"""detoxrl.rewards: scorers read by label name, cheap label checks, batching, packaged classifiers."""

import json
import math
import os
import pickle
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from detoxrl.errors import ConfigError, ModelLoadError
from detoxrl.keras_bilstm import BILSTM_CLASSES, KerasTokenizerState, load_keras_tokenizer, pad_sequences
from detoxrl.rewards import (
    CombinedScorer,
    FunctionScorer,
    HFClassifierScorer,
    Scorer,
    build_scorer,
    check_reward_labels,
    texts_for_scoring,
)
from detoxrl.tiny import make_tiny_roberta
from conftest import TOKENIZER_GLOBS, copy_model, make_remote_code_model

TEXTS = [
    "#Person1# tells Tommy that he didn't like the movie.",
    "#Person1# tells that he will kill his friends.",
    "hello",
    "The meeting starts at nine and everyone will be there on time, said #Person2# to #Person1#.",
    "you are a stupid idiot",
    "thank you for the lovely dinner",
    "",
    "ok",
    "#Person1#: Did you see the movie last night? #Person2#: Yes, I did not like it at all. " * 3,
]
TOXIC, BENIGN = "you are a stupid idiot, I will kill you", "thank you for the lovely dinner"
NOTEBOOK_BENIGN = "#Person 1# tells Tommy that he didn't like the movie."
NOTEBOOK_TOXIC = "#Person 1# tells that he will kill his friends."
# A larger init than the default 0.02 makes the tiny classifier's logits differ from text to text.
WIDE = {"initializer_range": 0.3}


@pytest.fixture(scope="module")
def tiny_nothate_hate(tmp_path_factory):
    return make_tiny_roberta(tmp_path_factory.mktemp("rob_nh"), TEXTS, labels=("nothate", "hate"), seed=0, config_overrides=WIDE)


@pytest.fixture(scope="module")
def tiny_hate_nothate(tmp_path_factory):
    return make_tiny_roberta(tmp_path_factory.mktemp("rob_hn"), TEXTS, labels=("hate", "nothate"), seed=0, config_overrides=WIDE)


def _hand_logits(folder, texts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return torch.stack([model(**tok([t], return_tensors="pt")).logits[0] for t in texts])


# --------------------------------------------------------------------------------------------
# Hugging Face classifier: selection by name (the notebook's defect #1)


def test_reward_is_the_named_logit_even_when_hate_wins(tiny_nothate_hate):
    hand = _hand_logits(tiny_nothate_hate, TEXTS)  # columns: nothate, hate
    hate_wins = [i for i in range(len(TEXTS)) if hand[i, 1] > hand[i, 0]]
    nothate_wins = [i for i in range(len(TEXTS)) if hand[i, 0] > hand[i, 1]]
    assert hate_wins and nothate_wins, "seed 0 with init 0.3 should give both cases"
    scorer = HFClassifierScorer(str(tiny_nothate_hate), "nothate", batch_size=4)
    assert isinstance(scorer, Scorer)
    assert (scorer.reward_label, scorer.toxic_label, scorer.labels) == ("nothate", "hate", ["nothate", "hate"])
    res = scorer.score(TEXTS)
    torch.testing.assert_close(res.reward, hand[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(res.logits["hate"], hand[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(res.toxicity, hand.softmax(-1)[:, 1], atol=1e-5, rtol=0)
    i = hate_wins[0]
    # what the notebook's reward[0] of a score-sorted pipeline output gave: the hate logit
    notebook_reward = sorted(hand[i].tolist(), reverse=True)[0]
    assert notebook_reward == pytest.approx(float(hand[i, 1]))
    assert float(res.reward[i]) == pytest.approx(float(hand[i, 0]), abs=1e-5)
    assert float(res.reward[i]) < notebook_reward - 1e-3
    for t in (res.reward, res.toxicity, *res.logits.values(), *res.probs.values()):
        assert t.dtype == torch.float32 and t.shape == (len(TEXTS),)
    assert torch.all((res.toxicity >= 0) & (res.toxicity <= 1))
    res.reward -= 1.0  # ordinary tensors (not inference tensors): in-place updates work downstream


def test_reward_follows_the_name_with_labels_in_the_other_order(tiny_hate_nothate):
    hand = _hand_logits(tiny_hate_nothate, TEXTS)  # columns: hate, nothate
    scorer = build_scorer(str(tiny_hate_nothate), "nothate", batch_size=3)
    assert isinstance(scorer, HFClassifierScorer)
    assert (scorer.reward_label, scorer.toxic_label) == ("nothate", "hate")
    res = scorer.score(TEXTS)
    torch.testing.assert_close(res.reward, hand[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(res.toxicity, hand.softmax(-1)[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(res.probs["nothate"] + res.probs["hate"], torch.ones(len(TEXTS)), atol=1e-6, rtol=0)


def test_batched_scoring_equals_one_at_a_time(tiny_nothate_hate):
    batched = HFClassifierScorer(str(tiny_nothate_hate), "nothate", batch_size=4).score(TEXTS, progress=True)
    single = HFClassifierScorer(str(tiny_nothate_hate), "nothate", batch_size=1)
    one_by_one = [single.score([t]) for t in TEXTS]
    torch.testing.assert_close(batched.reward, torch.cat([r.reward for r in one_by_one]), atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.toxicity, torch.cat([r.toxicity for r in one_by_one]), atol=1e-5, rtol=0)
    for name in ("nothate", "hate"):
        torch.testing.assert_close(batched.logits[name], torch.cat([r.logits[name] for r in one_by_one]), atol=1e-5, rtol=0)
    # order restored: scoring a permutation permutes the scores
    perm = [3, 0, 8, 2, 6, 1, 7, 5, 4]
    again = single.score([TEXTS[i] for i in perm])
    torch.testing.assert_close(again.reward, batched.reward[perm], atol=1e-5, rtol=0)
    assert len(single.score([])) == 0


def test_truncation_at_max_length(tiny_nothate_hate):
    long = "the movie was long " * 400  # far beyond 512 tokens
    scorer = HFClassifierScorer(str(tiny_nothate_hate), "nothate", max_length=32)
    res = scorer.score([long, long[:5000]])
    assert torch.isfinite(res.reward).all()
    assert float(res.reward[0]) == pytest.approx(float(res.reward[1]), abs=1e-5)  # same first 32 tokens


# --------------------------------------------------------------------------------------------
# Cheap label validation (config only)


def test_unknown_label_is_a_config_error_from_the_config_alone(tiny_nothate_hate, tmp_path):
    folder = tmp_path / "no_weights"
    shutil.copytree(tiny_nothate_hate, folder)
    weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    assert weights
    for p in weights:
        p.unlink()
    with pytest.raises(ConfigError) as e:
        check_reward_labels(str(folder), "nothat", None)
    msg = str(e.value)
    assert "reward label 'nothat' is not a label of" in msg
    assert "its labels are: nothate, hate" in msg and "pass --reward-label nothate" in msg
    with pytest.raises(ConfigError, match="toxic label 'toxic' is not a label"):
        check_reward_labels(str(folder), "nothate", "toxic")
    # build_scorer checks labels before it loads anything ...
    with pytest.raises(ConfigError, match="its labels are: nothate, hate"):
        build_scorer(str(folder), "nothat")
    # ... and only then fails on the missing weights, as a ModelLoadError
    with pytest.raises(ModelLoadError, match="cannot load reward model"):
        build_scorer(str(folder), "nothate")
    assert check_reward_labels(str(folder), "nothate", None) == ("nothate", "hate")
    assert check_reward_labels(str(folder), "hate", None) == ("hate", "nothate")


def test_label_resolution_rules(tmp_path):
    # Hand-made folders: a config.json and a stand-in vocabulary file (a model folder without
    # tokenizer files is refused by the same check, see test_reward_folder_without_tokenizer_files).
    three = tmp_path / "three"
    three.mkdir()
    (three / "config.json").write_text(json.dumps({"model_type": "roberta", "id2label": {"2": "c", "0": "a", "1": "b"}}))
    (three / "tokenizer.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"has 3 labels \(a, b, c\); say which one is toxicity"):
        check_reward_labels(str(three), "a", None)
    assert check_reward_labels(str(three), "a", "c") == ("a", "c")
    with pytest.raises(ConfigError, match="both 'a'"):
        check_reward_labels(str(three), "a", "a")
    nolabels = tmp_path / "nolabels"
    nolabels.mkdir()
    (nolabels / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    (nolabels / "tokenizer.json").write_text("{}")
    assert check_reward_labels(str(nolabels), "LABEL_0", None) == ("LABEL_0", "LABEL_1")
    assert check_reward_labels("packaged:toxic-comment-classifier", "non-toxic", None) == ("non-toxic", "toxic")
    assert check_reward_labels("packaged:toxic-comment-classifier", "non-toxic", "insult") == ("non-toxic", "insult")
    assert check_reward_labels("packaged:profanity-check", "non-toxic", None) == ("non-toxic", "toxic")
    with pytest.raises(ConfigError, match="its labels are: toxic, severe_toxic.*non-toxic; pass --reward-label non-toxic"):
        check_reward_labels("packaged:toxic-comment-classifier", "nontoxic", None)
    with pytest.raises(ConfigError, match="pass --reward-label non-toxic$"):  # the seed preset's label
        check_reward_labels("packaged:profanity-check", "nothate", None)
    with pytest.raises(ConfigError, match="pass --toxic-label toxic$"):
        check_reward_labels("packaged:toxic-comment-classifier", "non-toxic", "toxicity")
    with pytest.raises(ConfigError, match="unknown packaged reward model 'packaged:nope'"):
        check_reward_labels("packaged:nope", "x", None)


def test_path_that_is_not_a_model_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    for bad in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(ModelLoadError, match="exists but is not a model folder \\(no config.json\\)"):
            check_reward_labels(str(bad), "nothate", None)


# --------------------------------------------------------------------------------------------
# A folder that is not a classifier must not score (detoxrl.modelcheck)


@pytest.mark.parametrize("label", ["LABEL_0", "nothate"])
def test_t5_as_reward_model_is_refused_from_its_config(tiny_t5, label, no_weights_loaded):
    # Its config.json has no labels but transformers' placeholders LABEL_0, LABEL_1: the architecture
    # is checked first, so neither that label nor the hint to use it gets a random head.
    for call in (lambda: check_reward_labels(str(tiny_t5), label, None), lambda: build_scorer(str(tiny_t5), label)):
        with pytest.raises(ModelLoadError) as e:
            call()
        message = str(e.value)
        assert "\n" not in message and f"reward model '{tiny_t5}' is a T5ForConditionalGeneration" in message
        assert "not a sequence-classification model" in message and "classification head would be initialised at random" in message
        assert "--reward-model" in message and "LABEL_0" not in message


def test_random_classification_head_is_refused_after_loading(tiny_t5, tmp_path):
    # Without "architectures" in config.json the T5 passes the config checks with label LABEL_0; the
    # load report of from_pretrained then shows the classification head it initialised at random.
    folder = copy_model(tiny_t5, tmp_path / "t5", config={"architectures": None})
    assert check_reward_labels(str(folder), "LABEL_0", None) == ("LABEL_0", "LABEL_1")
    with pytest.raises(ModelLoadError) as e:
        HFClassifierScorer(str(folder), "LABEL_0")
    message = str(e.value)
    assert "\n" not in message
    assert "loaded as T5ForSequenceClassification has 4 weights initialised at random (classification_head." in message
    assert "--reward-model" in message


def test_reward_folder_without_tokenizer_files(tiny_nothate_hate, tmp_path, no_weights_loaded):
    folder = copy_model(tiny_nothate_hate, tmp_path / "no_tokenizer", drop=TOKENIZER_GLOBS)
    with pytest.raises(ModelLoadError) as e:
        check_reward_labels(str(folder), "nothate", None)
    message = str(e.value)
    assert "\n" not in message and "reward model" in message and "has no tokenizer files" in message


def test_reward_model_with_code_of_its_own_needs_reward_trust_remote_code(tiny_nothate_hate, tmp_path, no_weights_loaded):
    from detoxrl.rewards import check_judge

    marker = tmp_path / "ran"
    folder = str(make_remote_code_model(tiny_nothate_hate, tmp_path / "custom", marker, "AutoModelForSequenceClassification"))
    with pytest.raises(ModelLoadError) as e:
        build_scorer(folder, "nothate")
    assert "reward.trust_remote_code is false" in str(e.value) and "--trust-remote-code reward" in str(e.value)
    with pytest.raises(ModelLoadError) as e:  # the same folder as a judge: the judges' own setting
        check_judge(folder + "#hate")
    assert "evaluation.judge_trust_remote_code is false" in str(e.value) and "--trust-remote-code judge" in str(e.value)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# What gets scored


def test_texts_for_scoring_modes():
    queries = ["\nSummarize the following conversation.\n\nA: hi\n\nSummary:\n", "Q2"]
    responses = ["  A greets B. \n", "B leaves."]
    assert texts_for_scoring(queries, responses) == ["A greets B.", "B leaves."]
    assert texts_for_scoring(queries, responses, "response") == ["A greets B.", "B leaves."]
    both = texts_for_scoring(queries, responses, "query+response")
    assert both == ["Summarize the following conversation.\n\nA: hi\n\nSummary:\nA greets B.", "Q2\nB leaves."]
    with pytest.raises(ConfigError, match="'response' or 'query\\+response'"):
        texts_for_scoring(queries, responses, "dialogue")
    with pytest.raises(ValueError):
        texts_for_scoring(queries[:1], responses, "query+response")


# --------------------------------------------------------------------------------------------
# Functions and weighted sums


def length_reward(texts):  # used through "python:test_rewards:length_reward" below
    return [float(len(t)) / 10 for t in texts]


def test_function_and_combined_scorers(tiny_nothate_hate, monkeypatch):
    f = FunctionScorer(length_reward, batch_size=2)
    res = f.score(["abc", "", "abcdefghij"])
    torch.testing.assert_close(res.reward, torch.tensor([0.3, 0.0, 1.0]))
    torch.testing.assert_close(res.toxicity, torch.sigmoid(-res.reward))
    with pytest.raises(ConfigError, match="returned 1 values for 2 texts"):
        FunctionScorer(lambda ts: [0.0]).score(["a", "b"])
    with pytest.raises(ConfigError, match="must be finite"):
        FunctionScorer(lambda ts: [float("nan")] * len(ts)).score(["a"])
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    by_name = build_scorer("python:test_rewards:length_reward", "reward")
    torch.testing.assert_close(by_name.score(["abcd"]).reward, torch.tensor([0.4]))
    with pytest.raises(ConfigError, match="its labels are: reward"):
        build_scorer("python:test_rewards:length_reward", "nothate")

    hf = HFClassifierScorer(str(tiny_nothate_hate), "nothate")
    combo = CombinedScorer([hf, f], [1.0, -0.5])
    out = combo.score(TEXTS[:4])
    a, b = hf.score(TEXTS[:4]), f.score(TEXTS[:4])
    torch.testing.assert_close(out.reward, a.reward - 0.5 * b.reward)
    torch.testing.assert_close(out.toxicity, a.toxicity)
    assert out.logits["combined"].shape == (4,) and f"{hf.name}/hate" in out.probs
    assert combo.toxic_label == f"{hf.name}/hate"
    with pytest.raises(ConfigError, match="2 reward scorers but 1 weights"):
        CombinedScorer([hf, f], [1.0])


def failing_reward(texts):  # used through "python:test_rewards:failing_reward" below
    raise RuntimeError("the reward service is down")


NOT_A_FUNCTION = 3


def test_python_reward_that_raises_is_one_line(monkeypatch):
    """The user's function failing mid-run: one line naming the function and the error, no traceback."""
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    scorer = build_scorer("python:test_rewards:failing_reward", "reward")
    with pytest.raises(ConfigError) as e:
        scorer.score(["a", "b"])
    msg = str(e.value)
    assert "\n" not in msg
    assert "reward function python:test_rewards:failing_reward raised RuntimeError: the reward service is down" in msg
    assert "detoxrl score --reward-model python:test_rewards:failing_reward" in msg


def test_python_reward_spec_is_imported_by_the_label_check(tmp_path, monkeypatch):
    """check_reward_labels (the preflight's, before any model loads) imports the function: a module that
    is missing, fails while importing, or lacks the function, and a name that is not a function, are
    one-line errors there, not after the policy has loaded."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    (tmp_path / "broken_reward_module.py").write_text("raise ValueError('bad setting at import')\n")
    cases = {
        "python:no_such_reward_module:f": "cannot import 'no_such_reward_module'",
        "python:broken_reward_module:f": "importing 'broken_reward_module' for reward 'python:broken_reward_module:f' raised ValueError: bad setting at import",
        "python:test_rewards:no_such_function": "module 'test_rewards' has no 'no_such_function'",
        "python:test_rewards:NOT_A_FUNCTION": "'NOT_A_FUNCTION' of module 'test_rewards' is not a function (got int)",
    }
    for spec, fragment in cases.items():
        with pytest.raises(ConfigError) as e:
            check_reward_labels(spec, "reward", None)
        assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert check_reward_labels("python:test_rewards:length_reward", "reward", None) == ("reward", "reward")


# --------------------------------------------------------------------------------------------
# The Keras tokenizer: restricted unpickling, texts_to_sequences, pad_sequences


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_rejects_os_system(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "tokenizer.pickle"
    bad.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(ModelLoadError, match=r"refusing to unpickle global '(posix|os)\.system'"):
        load_keras_tokenizer(bad)
    assert not marker.exists()
    bad.write_bytes(pickle.dumps({"word_index": {"a": 1}, "f": eval}))
    with pytest.raises(ModelLoadError, match="refusing to unpickle global 'builtins.eval'"):
        load_keras_tokenizer(bad)
    bad.write_bytes(pickle.dumps({"word_index": {"a": 1}}))  # safe, but no Tokenizer
    with pytest.raises(ModelLoadError, match="does not hold a Keras Tokenizer"):
        load_keras_tokenizer(bad)


def _pickle_as_keras_tokenizer(monkeypatch, state):
    """Pickle bytes that reference keras.src.legacy.preprocessing.text.Tokenizer (Keras not installed)."""
    names = ["keras", "keras.src", "keras.src.legacy", "keras.src.legacy.preprocessing", "keras.src.legacy.preprocessing.text"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    cls = type("Tokenizer", (), {"__module__": names[-1]})
    sys.modules[names[-1]].Tokenizer = cls
    obj = cls()
    obj.__dict__.update(state)
    return pickle.dumps(obj, protocol=5)


def test_keras_tokenizer_stand_in(tmp_path, monkeypatch):
    import collections

    state = {
        "word_counts": collections.OrderedDict([("the", 9), ("movie", 5)]),
        "word_docs": collections.defaultdict(int, {"the": 3}),
        "filters": '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n',
        "split": " ",
        "lower": True,
        "num_words": 4,
        "document_count": 3,
        "char_level": False,
        "oov_token": None,
        "index_docs": collections.defaultdict(int, {1: 3}),
        "word_index": {"the": 1, "movie": 2, "didn't": 3, "kill": 4, "friends": 5},
        "index_word": {1: "the", 2: "movie", 3: "didn't", 4: "kill", 5: "friends"},
        "analyzer": None,
    }
    path = tmp_path / "tok.pickle"
    path.write_bytes(_pickle_as_keras_tokenizer(monkeypatch, state))
    tok = load_keras_tokenizer(path)
    assert isinstance(tok, KerasTokenizerState) and tok.num_words == 4
    # lower-cased, punctuation split off, apostrophes kept, unknown words and ids >= num_words dropped
    assert tok.texts_to_sequences(["The MOVIE, the\tmovie!", "He didn't kill friends.", ""]) == [[1, 2, 1, 2], [3], []]
    tok.oov_token = "the"
    assert tok.texts_to_sequences(["didn't kill xyz"]) == [[3, 1, 1]]
    # Keras pad_sequences defaults: pad and truncate at the front
    ids = pad_sequences([[1, 2, 3], [], [4, 5, 6, 7, 8]], maxlen=4)
    assert ids.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0], [5, 6, 7, 8]]
    assert pad_sequences([[1, 2]], maxlen=3, padding="post").tolist() == [[1, 2, 0]]


# --------------------------------------------------------------------------------------------
# Packaged classifiers


@pytest.fixture(scope="module")
def bilstm():
    return build_scorer("packaged:toxic-comment-classifier", "non-toxic")


@pytest.mark.slow
def test_bilstm_scores_toxic_above_benign(bilstm):
    res = bilstm.score([TOXIC, BENIGN, NOTEBOOK_BENIGN, NOTEBOOK_TOXIC])
    assert bilstm.labels == BILSTM_CLASSES + ["non-toxic"]
    tox = res.toxicity.tolist()
    assert tox[0] > 0.9 and tox[1] < 0.05 and tox[0] - tox[1] > 0.8
    assert tox[3] > tox[2] + 0.1  # the notebook's pair: "will kill his friends" is more toxic
    torch.testing.assert_close(res.reward, -res.logits["toxic"])
    torch.testing.assert_close(res.toxicity, torch.sigmoid(res.logits["toxic"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(res.probs["non-toxic"], 1 - res.toxicity)
    assert float(res.probs["insult"][0]) > 0.5 and float(res.reward[0]) < 0 < float(res.reward[1])
    # batch composition does not matter (every row is padded to 100 like the package does)
    single = torch.cat([bilstm.score([t]).reward for t in TEXTS])
    torch.testing.assert_close(bilstm.score(TEXTS).reward, single, atol=1e-5, rtol=0)
    assert "toxic_classifier" not in sys.modules and "tensorflow" not in sys.modules


@pytest.mark.slow
def test_bilstm_matches_a_numpy_keras_reference(bilstm):
    """The PyTorch module equals Keras' LSTM equations (gates i,f,c,o; kernel x@W; backward layer on the
    reversed sequence, re-reversed; concat; max over time) written out in numpy from the h5 file."""
    import h5py

    from detoxrl.packaged import BILSTM_WEIGHTS, locate

    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    with h5py.File(locate(BILSTM_WEIGHTS), "r") as f:
        w = {k: f[k][()].astype(np.float64) for k in _h5_var_names(f)}

    def lstm(xs, prefix):
        W, U, b = (w[f"layers/bidirectional/{prefix}/cell/vars/{i}"] for i in range(3))
        h, c, hs = np.zeros(50), np.zeros(50), []
        for x in xs:
            zi, zf, zc, zo = np.split(x @ W + h @ U + b, 4)
            c = sig(zf) * c + sig(zi) * np.tanh(zc)
            h = sig(zo) * np.tanh(c)
            hs.append(h)
        return np.stack(hs)

    texts = [NOTEBOOK_TOXIC, TOXIC]
    ids = bilstm.encode(texts).numpy()
    got = bilstm.score(texts)
    for row, seq in enumerate(ids):
        x = w["layers/embedding/vars/0"][seq]
        states = np.concatenate([lstm(x, "forward_layer"), lstm(x[::-1], "backward_layer")[::-1]], axis=-1)
        d = np.maximum(states.max(0) @ w["layers/dense/vars/0"] + w["layers/dense/vars/1"], 0)
        z = d @ w["layers/dense_1/vars/0"] + w["layers/dense_1/vars/1"]
        for i, c in enumerate(BILSTM_CLASSES):
            assert float(got.logits[c][row]) == pytest.approx(z[i], abs=1e-4), c


def _h5_var_names(f):
    names = []
    f.visit(lambda n: names.append(n) if "/vars/" in n and n.startswith("layers/") else None)
    return names


@pytest.mark.slow
def test_svm_scores_toxic_above_benign():
    svm = build_scorer("packaged:profanity-check", "non-toxic")
    assert svm.labels == ["non-toxic", "toxic"]
    res = svm.score([TOXIC, BENIGN, NOTEBOOK_BENIGN, NOTEBOOK_TOXIC, ""])
    tox = res.toxicity.tolist()
    assert tox[0] > 0.9 and tox[1] < 0.05
    assert tox[3] > tox[2] + 0.1
    torch.testing.assert_close(res.reward, -res.logits["toxic"])
    assert float(res.reward[0]) == pytest.approx(-np.log((1 - 1e-6) / 1e-6), abs=1e-3)  # clamped, finite
    assert torch.isfinite(res.reward).all()


# --------------------------------------------------------------------------------------------
# Reward shaping: transforms and the one shaping function


def _two_label_result(nontoxic_logit: list[float]):
    """A ScoreResult of a 2-label softmax classifier whose logits are (z, 0): P(non-toxic) = sigmoid(z)."""
    from detoxrl.rewards import ScoreResult

    z = torch.tensor(nontoxic_logit, dtype=torch.float32)
    logits = torch.stack([z, torch.zeros_like(z)], dim=1)
    probs = logits.softmax(-1)
    return ScoreResult(reward=z.clone(), toxicity=probs[:, 1].clone(), logits={"non-toxic": z, "toxic": torch.zeros_like(z)},
                       probs={"non-toxic": probs[:, 0], "toxic": probs[:, 1]})


def test_transforms_against_hand_computed_values():
    from detoxrl.rewards import transform_scores

    scored = _two_label_result([0.0, 2.0, -3.0])
    # P(non-toxic) = sigmoid(z): 0.5, 0.880797, 0.047426
    torch.testing.assert_close(transform_scores(scored, "logit", "non-toxic"), torch.tensor([0.0, 2.0, -3.0]))
    torch.testing.assert_close(transform_scores(scored, "prob", "non-toxic"), torch.tensor([0.5, 0.880797, 0.047426]), atol=1e-6, rtol=0)
    # log sigmoid(z) = -log(1 + e^-z): -0.693147, -0.126928, -3.048587
    torch.testing.assert_close(transform_scores(scored, "log_prob", "non-toxic"), torch.tensor([-0.693147, -0.126928, -3.048587]),
                               atol=1e-5, rtol=0)
    # log_prob saturates for clean text: a far cleaner text earns almost nothing more (the logit keeps paying)
    clean = _two_label_result([8.0, 12.0])
    lp = transform_scores(clean, "log_prob", "non-toxic")
    assert float(lp[1] - lp[0]) < 4e-4 and float(transform_scores(clean, "logit", "non-toxic").diff()) == 4.0
    # a probability of 0 is clamped at EPS: log(1e-6), not -inf
    zero = _two_label_result([-40.0])
    assert float(transform_scores(zero, "log_prob", "non-toxic")) == pytest.approx(math.log(1e-6), rel=1e-5)
    with pytest.raises(ConfigError, match="unknown reward.transform 'exp'"):
        transform_scores(scored, "exp", "non-toxic")


def test_shape_rewards_weights_faithfulness_eos_and_clip():
    from detoxrl.config import RewardConfig
    from detoxrl.rewards import shape_rewards

    scored = _two_label_result([0.0, 2.0, -3.0])
    cfg = RewardConfig(transform="log_prob", weight=2.0, faithfulness_weight=0.5, missing_eos_penalty=1.0)
    ended = torch.tensor([True, False, True])
    out = shape_rewards(scored, cfg, reward_label="non-toxic", ended=ended, faithfulness=[0.4, 0.6, 0.2])
    # 2 * log P + 0.5 * faithfulness - 1 * [not ended]
    hand = [2 * -0.693147 + 0.2, 2 * -0.126928 + 0.3 - 1.0, 2 * -3.048587 + 0.1]
    torch.testing.assert_close(out, torch.tensor(hand), atol=1e-5, rtol=0)
    clipped = shape_rewards(scored, cfg, reward_label="non-toxic", ended=ended, faithfulness=[0.4, 0.6, 0.2], score_clip=1.0)
    torch.testing.assert_close(clipped, torch.tensor([-1.0, -0.953856, -1.0]), atol=1e-5, rtol=0)
    plain = shape_rewards(scored, RewardConfig(transform="logit"), reward_label="non-toxic")
    torch.testing.assert_close(plain, scored.reward)  # the notebook's reward: the raw logit
    with pytest.raises(ValueError, match="faithfulness"):
        shape_rewards(scored, cfg, reward_label="non-toxic", ended=ended)


def test_one_shaping_function_for_training_and_evaluation():
    """Training and evaluation collect through detoxrl.collection.collect, whose rewards are shape_rewards'."""
    import detoxrl.collection
    import detoxrl.evaluate
    import detoxrl.trainer
    from detoxrl import rewards

    assert detoxrl.collection.shape_rewards is rewards.shape_rewards
    assert detoxrl.trainer.collect is detoxrl.collection.collect
    assert detoxrl.evaluate.collect is detoxrl.collection.collect


def test_clipped_logit_pays_for_toxic_text_only_up_to_the_ceiling():
    from detoxrl.rewards import transform_scores

    scored = _two_label_result([-2.0, 3.0, 4.6, 9.0])
    out = transform_scores(scored, "clipped_logit", "non-toxic", logit_ceiling=4.59512)
    torch.testing.assert_close(out, torch.tensor([-2.0, 3.0, 4.59512, 4.59512]))


def test_a_wrong_toxic_label_is_never_answered_with_the_reward_label():
    """--toxic-label toxic on a nothate/hate model suggested --toxic-label nothate, the non-toxic label."""
    from detoxrl.scores import resolve_labels

    with pytest.raises(ConfigError) as e:
        resolve_labels("m", ["nothate", "hate"], "nothate", "toxic")
    assert str(e.value).endswith("pass --toxic-label hate")


def test_a_reward_model_with_few_positions_reads_long_texts_and_a_tokenizer_without_special_tokens_reads_empty_ones(
        tmp_path, corpus):
    """reward.max_length (512) was not capped at a model of 130 positions (an index error on a long text);
    a tokenizer that adds no special tokens made an empty summary 0 tokens ("cannot reshape a tensor of 0
    elements"). Both are scored now."""
    from detoxrl.rewards import build_scorer
    from detoxrl.tiny import make_tiny_roberta

    folder = make_tiny_roberta(tmp_path / "short", corpus[:200], config_overrides={"max_position_embeddings": 130})
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["post_processor"] = None  # no <s> ... </s>
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    scorer = build_scorer(str(folder), "nothate", "hate")
    assert scorer.max_length == 128
    result = scorer.score(["word " * 400, "", "a short summary"])
    assert result.reward.shape == (3,) and torch.isfinite(result.reward).all()
