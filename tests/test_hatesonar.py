"""detoxrl.hatesonar: the ONNX TF-IDF + logistic-regression classifier of hatesonar==0.1.0 (real model)."""

import importlib.metadata
import locale
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from detoxrl.errors import ConfigError, ModelLoadError
from detoxrl.hatesonar import (
    HATESONAR_CLASSES,
    HATESONAR_LABELS,
    HateSonarScorer,
    _probabilities,
    load_session,
    patch_locale,
)
from detoxrl.packaged import HATESONAR, ONNX, ONNXRUNTIME, locate
from detoxrl.rewards import EPS, PACKAGED_LABELS, build_scorer, check_reward_labels

NEUTRAL = [
    "#Person1# asks about the train schedule.",
    "#Person2# tells #Person1# the meeting is moved to Friday.",
    "They discuss the weather and plan a picnic.",
    "#Person1# wants to buy a new laptop for work.",
    "The doctor explains the test results to #Person2#.",
]
OFFENSIVE = [
    "you are a stupid bitch, shut up",
    "shut the fuck up you idiot",
    "this retarded faggot is trash",
    "fuck you, you dumb ass hoe",
    "I hate all those immigrants, they are animals",
]
TEXTS = NEUTRAL + OFFENSIVE + ["", "!!!", "ok", "HELLO BITCH", "café 😀 naïve"]


@pytest.fixture(scope="module")
def scorer():
    return HateSonarScorer()


def test_labels_and_defaults(scorer):
    assert scorer.name == "packaged:hatesonar"
    assert scorer.labels == HATESONAR_LABELS == ["hate_speech", "offensive_language", "neither", "toxic", "non-toxic"]
    assert PACKAGED_LABELS["packaged:hatesonar"] == (HATESONAR_LABELS, "non-toxic", "toxic")
    assert (scorer.reward_label, scorer.toxic_label) == ("non-toxic", "toxic")
    # the hatesonar module itself is never imported (only its model file is read)
    assert "hatesonar" not in sys.modules


def test_probabilities_sum_to_one_and_derived_labels(scorer):
    res = scorer.score(TEXTS)
    assert len(res) == len(TEXTS)
    assert set(res.probs) == set(res.logits) == set(HATESONAR_LABELS)
    for k in HATESONAR_LABELS:
        assert res.probs[k].dtype == res.logits[k].dtype == torch.float32 and res.probs[k].shape == (len(TEXTS),)
        assert torch.isfinite(res.logits[k]).all()
    total = sum(res.probs[c].double() for c in HATESONAR_CLASSES)
    torch.testing.assert_close(total, torch.ones(len(TEXTS), dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(res.probs["toxic"], 1 - res.probs["neither"], atol=1e-6, rtol=0)
    torch.testing.assert_close(res.probs["non-toxic"], res.probs["neither"])
    # logits are the log-odds of each probability clamped to [EPS, 1-EPS]; the reward is the non-toxic one
    for k in HATESONAR_LABELS:
        p = res.probs[k].double().clamp(EPS, 1 - EPS)
        torch.testing.assert_close(torch.sigmoid(res.logits[k].double()), p, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.logits["toxic"], -res.logits["non-toxic"])
    torch.testing.assert_close(res.reward, res.logits["non-toxic"])
    torch.testing.assert_close(res.toxicity, res.probs["toxic"])
    assert res.logits["toxic"].abs().max() <= np.log((1 - EPS) / EPS) + 1e-4


def test_offensive_scores_more_toxic_than_neutral(scorer):
    res = scorer.score(["you are a stupid bitch, shut up", "#Person1# asks about the train schedule."])
    assert float(res.toxicity[0]) > 0.9 > 0.5 > float(res.toxicity[1])
    assert float(res.reward[0]) < float(res.reward[1])
    tox = scorer.score(NEUTRAL + OFFENSIVE).toxicity
    assert float(tox[5:].mean()) > float(tox[:5].mean()) + 0.4
    # a text without any known word gets the bias alone: weakly calibrated, but below the toxic ones
    empty = scorer.score([""]).probs
    assert float(empty["toxic"][0]) == pytest.approx(0.325, abs=0.01)


def test_hate_speech_as_toxic_label(scorer):
    assert check_reward_labels("packaged:hatesonar", "non-toxic", "hate_speech") == ("non-toxic", "hate_speech")
    hate = HateSonarScorer(toxic_label="hate_speech")
    assert hate.session is scorer.session  # one session per process and model file
    res = hate.score(TEXTS)
    torch.testing.assert_close(res.toxicity, res.probs["hate_speech"])
    torch.testing.assert_close(res.toxicity, scorer.score(TEXTS).probs["hate_speech"])
    assert not torch.allclose(res.toxicity, res.probs["toxic"])
    torch.testing.assert_close(res.reward, res.logits["non-toxic"])


def test_batches_keep_input_order(scorer):
    small = HateSonarScorer(batch_size=3)
    assert small.batch_size == 3 < len(TEXTS)
    together = scorer.score(TEXTS)
    batched = small.score(TEXTS, progress=True)
    one_by_one = [scorer.score([t]) for t in TEXTS]
    for k in HATESONAR_LABELS:
        torch.testing.assert_close(batched.probs[k], together.probs[k])
        torch.testing.assert_close(batched.logits[k], together.logits[k])
        torch.testing.assert_close(torch.cat([r.probs[k] for r in one_by_one]), together.probs[k])
    reversed_res = small.score(TEXTS[::-1])
    torch.testing.assert_close(reversed_res.toxicity.flip(0), together.toxicity)


def test_empty_and_bad_input(scorer):
    res = scorer.score([])
    assert len(res) == 0 and res.reward.dtype == torch.float32
    assert set(res.probs) == set(res.logits) == set(HATESONAR_LABELS)
    assert scorer.predict_proba([]).shape == (0, 3)
    with pytest.raises(TypeError, match="single string"):
        scorer.score("you idiot")
    with pytest.raises(TypeError, match="text 1 is int"):
        scorer.score(["ok", 3])


def test_build_scorer_and_label_checks():
    s = build_scorer("packaged:hatesonar", "non-toxic")
    assert isinstance(s, HateSonarScorer)
    assert (s.reward_label, s.toxic_label) == ("non-toxic", "toxic")
    assert check_reward_labels("packaged:hatesonar", "non-toxic", None) == ("non-toxic", "toxic")
    labels = "hate_speech, offensive_language, neither, toxic, non-toxic"
    with pytest.raises(ConfigError) as e:
        check_reward_labels("packaged:hatesonar", "nothate", None)
    assert f"its labels are: {labels}" in str(e.value) and "--reward-label non-toxic" in str(e.value)
    with pytest.raises(ConfigError, match=f"toxic label 'hate' is not a label of packaged:hatesonar; its labels are: {labels}"):
        build_scorer("packaged:hatesonar", "non-toxic", "hate")
    with pytest.raises(ConfigError, match="both 'toxic'"):
        HateSonarScorer("toxic", "toxic")


def test_probability_output_forms():
    zipmap = [{0: 0.1, 1: 0.2, 2: 0.7}, {0: 0.5, 1: 0.25, 2: 0.25}]
    want = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]])
    np.testing.assert_allclose(_probabilities(zipmap, 2), want)
    named = [dict(zip(HATESONAR_CLASSES, row)) for row in want.tolist()]
    np.testing.assert_allclose(_probabilities(named, 2), want)
    np.testing.assert_allclose(_probabilities(want.astype(np.float32), 2), want, atol=1e-7)
    with pytest.raises(ModelLoadError, match=r"shape \(2, 3\) for 3 texts"):
        _probabilities(want, 3)
    with pytest.raises(ModelLoadError, match="not the classes"):
        _probabilities([{"a": 1.0, "b": 0.0, "c": 0.0}], 1)


def _has_locale(name: str) -> bool:
    old = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, name)
        return True
    except locale.Error:
        return False
    finally:
        locale.setlocale(locale.LC_CTYPE, old)


def test_locale_patch():
    import onnx
    import onnxruntime as ort

    path = str(locate(HATESONAR))
    assert path.endswith("hatesonar/model/model.onnx") and os.path.getsize(path) > 100_000
    model = onnx.load(path)
    nodes = [n for n in model.graph.node if n.op_type == "StringNormalizer"]
    assert nodes and all(a.name != "locale" for n in nodes for a in n.attribute)  # ort then asks for en_US.UTF-8
    assert patch_locale(model, "C.UTF-8") == len(nodes)
    assert patch_locale(model, "C.UTF-8") == len(nodes)  # replaced, not duplicated
    for n in nodes:
        assert [onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "locale"] == [b"C.UTF-8"]
    if not _has_locale("en_US.UTF-8"):  # this machine: the shipped model cannot even be loaded
        options = ort.SessionOptions()
        options.log_severity_level = 4
        with pytest.raises(Exception, match="locale"):
            ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    session = load_session(path)
    assert session is load_session(path)
    labels, probs = session.run(None, {"text": np.array(["shut up bitch", "nice day"], dtype=object)})
    assert labels.tolist()[0] == 1 and isinstance(probs, list) and set(probs[0]) == {0, 1, 2}


def test_runs_under_the_c_locale():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_") and k != "LANG"}
    env.update(LC_ALL="C", LANG="C")
    code = (
        "from detoxrl.hatesonar import HateSonarScorer\n"
        "r = HateSonarScorer().score(['you are a stupid bitch, shut up', 'hello'])\n"
        "print(round(float(r.toxicity[0]), 3))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip()) > 0.9
    assert "locale" not in out.stderr


def test_missing_packages_name_the_pip_command(monkeypatch):
    real = importlib.metadata.distribution

    def no_hatesonar(name):
        if name == "hatesonar":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_hatesonar)
    with pytest.raises(ModelLoadError) as e:
        build_scorer("packaged:hatesonar", "non-toxic")
    msg = str(e.value)
    assert "package 'hatesonar' is not installed; run: pip install --no-deps hatesonar==0.1.0" in msg
    assert "\n" not in msg
    monkeypatch.undo()
    for module, spec in (ONNXRUNTIME, ONNX):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)  # import fails as if not installed
            with pytest.raises(ModelLoadError, match=re.escape(f"module '{module}' is not installed; run: pip install {spec}")):
                HateSonarScorer()


def test_unreadable_model_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ModelLoadError, match=r"cannot read the hatesonar ONNX model .*--force-reinstall hatesonar==0\.1\.0"):
        load_session(str(bad))


def test_falls_back_on_another_locale(monkeypatch, capfd):
    import detoxrl.hatesonar as hs

    path = str(locate(HATESONAR))
    monkeypatch.setattr(hs, "LOCALES", ("xx_XX.no-such-locale", "C"))
    session = load_session.__wrapped__(path)  # uncached: a fresh session
    assert session is not load_session(path)
    _, probs = session.run(None, {"text": np.array(["you are a stupid bitch, shut up"], dtype=object)})
    assert 1 - probs[0][2] > 0.9
    assert "no-such-locale" not in capfd.readouterr().err  # the failed try stays quiet
    monkeypatch.setattr(hs, "LOCALES", ("xx_XX.no-such-locale",))
    with pytest.raises(ModelLoadError, match="cannot construct any of the locales xx_XX.no-such-locale for the StringNormalizer.*run: pip install onnxruntime=="):
        load_session.__wrapped__(path)


def test_usable_as_judge():
    import detoxrl.rewards

    # check_judge lives in detoxrl.rewards (formerly detoxrl.evaluate)
    check_judge = getattr(detoxrl.rewards, "check_judge", None) or __import__("detoxrl.evaluate").evaluate.check_judge
    assert check_judge("packaged:hatesonar", None) == ("non-toxic", "toxic")
    assert check_judge("packaged:hatesonar", "hate_speech") == ("non-toxic", "hate_speech")
    with pytest.raises(ConfigError, match="judge label 'hate' is not a label of packaged:hatesonar"):
        check_judge("packaged:hatesonar", "hate")
