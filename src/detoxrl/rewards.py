"""The reward stage: classifiers that score summaries, chosen and read by label name.

A :class:`Scorer` turns texts into a :class:`ScoreResult`: ``reward`` (the value PPO maximises: the
raw logit of the chosen non-toxic label) and ``toxicity`` (the probability of the toxic label),
plus every label's logit and probability. Scorers:

- :class:`HFClassifierScorer`: any Hugging Face sequence classifier (hub id or local folder), e.g.
  Meta's RoBERTa hate-speech model of the notebook. Scores are picked by label name through
  ``config.id2label`` -- never by position in a sorted list (the notebook's defect #1).
- :class:`BiLSTMScorer` (``packaged:toxic-comment-classifier``): the Keras BiLSTM that the PyPI
  package ``toxic-comment-classifier`` ships, re-implemented in PyTorch in :mod:`detoxrl.keras_bilstm`
  (weights read with h5py, the pickled Keras tokenizer read with a restricted unpickler).
- :class:`SVMScorer` (``packaged:profanity-check``): alt-profanity-check's calibrated linear SVM.
- :class:`FunctionScorer`: a Python callable ``texts -> rewards``.
- :class:`CombinedScorer`: a weighted sum of several scorers.

:func:`check_reward_labels` validates a (model, label) pair from the model's config alone, before
any weights load. :func:`texts_for_scoring` picks what is scored: the response (default) or the
query and the response (what the notebook did, defect #4).
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from detoxrl.config import PACKAGED_BILSTM, PACKAGED_HATESONAR, PACKAGED_SVM
from detoxrl.errors import ConfigError, DetoxError, ModelLoadError
from detoxrl.modelcheck import JUDGE, REWARD, Role, check_load_report, check_model_folder, check_tokenizer
from detoxrl.keras_bilstm import BILSTM_CLASSES, BILSTM_MAXLEN, KerasBiLSTM, KerasTokenizerState, load_keras_tokenizer, pad_sequences
from detoxrl.packaged import BILSTM_TOKENIZER, BILSTM_WEIGHTS, PROFANITY_CHECK, locate, require_module
from detoxrl.scores import (  # noqa: F401 - EPS, MAX_LOGIT, Scorer: part of this module's interface
    EPS,
    MAX_LOGIT,
    NON_TOXIC,
    ScoreResult,
    Scorer,
    as_f32,
    check_texts,
    empty_result,
    log_odds,
    resolve_labels,
)

BILSTM_LABELS = BILSTM_CLASSES + [NON_TOXIC]
SVM_LABELS = [NON_TOXIC, "toxic"]
PYTHON_PREFIX = "python:"  # "python:package.module:function" -> FunctionScorer

# Static label lists of the packaged scorers: (labels, default reward label, default toxic label).
PACKAGED_LABELS: dict[str, tuple[list[str], str, str]] = {
    PACKAGED_BILSTM: (BILSTM_LABELS, NON_TOXIC, "toxic"),
    PACKAGED_SVM: (SVM_LABELS, NON_TOXIC, "toxic"),
    PACKAGED_HATESONAR: (["hate_speech", "offensive_language", "neither", "toxic", NON_TOXIC], NON_TOXIC, "toxic"),
}


# --------------------------------------------------------------------------------------------
# Results and the scorer interface


def texts_for_scoring(queries: Sequence[str], responses: Sequence[str], mode: str = "response") -> list[str]:
    """What the classifier reads: the response alone (default) or the query followed by the response.

    ``responses`` are decoded already (no special tokens); stray whitespace is stripped. The notebook
    scored ``query + response``, so the dialogue dominated the score (defect #4); that stays available
    as ``mode="query+response"`` (query and response joined by a newline).
    """
    if mode not in ("response", "query+response"):
        raise ConfigError(f"reward input mode must be 'response' or 'query+response', got '{mode}'")
    if mode == "response":
        return [str(r).strip() for r in responses]
    if len(queries) != len(responses):
        raise ValueError(f"{len(queries)} queries but {len(responses)} responses")
    return [f"{str(q).strip()}\n{str(r).strip()}".strip() for q, r in zip(queries, responses)]


# --------------------------------------------------------------------------------------------
# Label validation (cheap: config only)


def _read_hf_labels(model: str, trust_remote_code: bool = False, role: Role = REWARD) -> list[str]:
    """Label names in id order, from the config.json of a local folder or hub id (no weights, no code).

    The model is first checked for its role (:func:`detoxrl.modelcheck.check_model_folder`): a
    sequence classifier, no code of its own unless trusted, tokenizer files in a folder. A T5 or
    another language model has no labels but transformers' placeholders LABEL_0, LABEL_1: it is
    refused here, before those placeholders could be offered as a fix.
    """
    cfg = check_model_folder(model, role, trusted=trust_remote_code)
    id2label = cfg.get("id2label")
    if not id2label:
        n = int(cfg.get("num_labels") or 2)
        return [f"LABEL_{i}" for i in range(n)]
    try:
        pairs = sorted((int(k), str(v)) for k, v in id2label.items())
    except (AttributeError, TypeError, ValueError):
        raise ModelLoadError(f"the config.json of {role.name} '{model}': id2label keys must be integers; re-save the model") from None
    return [v for _, v in pairs]


def model_labels(model: str, trust_remote_code: bool = False, role: Role = REWARD) -> list[str]:
    """The label names of ``model`` (packaged sentinel, local folder or hub id), without loading weights.

    ``role`` (reward model, judge, selection scorer) names the model in the messages."""
    if model in PACKAGED_LABELS:
        return list(PACKAGED_LABELS[model][0])
    if model.startswith("packaged:"):
        raise ConfigError(
            f"unknown packaged reward model '{model}'; choose one of: {', '.join(PACKAGED_LABELS)}"
        )
    if model.startswith(PYTHON_PREFIX):
        return ["reward"]
    return _read_hf_labels(model, trust_remote_code, role)


def check_reward_labels(
    model: str, label: str, toxic_label: str | None, trust_remote_code: bool = False, role: Role = REWARD
) -> tuple[str, str]:
    """Validate the reward and toxic labels against the model's labels, before any weights load.

    Returns the resolved ``(reward_label, toxic_label)``. ``toxic_label=None`` means: for a 2-label
    model the other label; for a packaged classifier its toxic label; otherwise an error asking for it.
    """
    if model.startswith(PYTHON_PREFIX):
        load_function(model)  # imported now: a missing module or function is reported before any model loads
    labels = model_labels(model, trust_remote_code, role)
    _, default_label, default_toxic = PACKAGED_LABELS.get(model, (labels, None, None))
    if model.startswith(PYTHON_PREFIX):  # one output, the reward itself: no toxic label to resolve
        if label not in labels:
            raise ConfigError(f"reward label '{label}' is not a label of {model}; its labels are: {', '.join(labels)}; "
                              f"pass --reward-label {labels[0]}")
        return label, "reward"
    return resolve_labels(model, labels, label, toxic_label, default_label, default_toxic)


# --------------------------------------------------------------------------------------------
# Hugging Face sequence classifiers


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        out = getattr(torch, str(dtype))
    except AttributeError:
        out = None
    if not isinstance(out, torch.dtype):
        raise ConfigError(f"unknown dtype '{dtype}'; use float32 or bfloat16")
    return out


class HFClassifierScorer:
    """A transformers sequence classifier; the reward is the raw logit of ``label``, picked by name.

    Texts are tokenized once (truncated at ``max_length``), sorted by length so that batches carry
    little padding, scored in batches of ``batch_size`` in eval mode under ``torch.inference_mode``,
    and returned in the order given.
    """

    def __init__(
        self,
        model: str,
        label: str,
        toxic_label: str | None = None,
        *,
        batch_size: int = 16,
        max_length: int = 512,
        dtype: torch.dtype | str = torch.float32,
        device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
        role: Role = REWARD,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.reward_label, self.toxic_label = check_reward_labels(model, label, toxic_label, trust_remote_code, role)
        if batch_size <= 0 or max_length <= 0:
            raise ConfigError("reward.batch_size and reward.max_length must be positive")
        self.name = model
        self.batch_size = batch_size
        self.device = torch.device(device)

        def load_error(e: Exception) -> ModelLoadError:
            first = (str(e).splitlines() or [""])[0]
            return ModelLoadError(
                f"cannot load {role.name} '{model}' ({type(e).__name__}: {first[:200]}); it needs config.json, "
                f"weights and a tokenizer (save_pretrained of model and tokenizer), or use {PACKAGED_BILSTM}"
            )

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        except Exception as e:
            raise load_error(e) from None
        check_tokenizer(self.tokenizer, model, role)  # before the weights: a tokenizer without a vocabulary
        try:
            self.model, loading_info = AutoModelForSequenceClassification.from_pretrained(
                model, dtype=_as_dtype(dtype), trust_remote_code=trust_remote_code, output_loading_info=True
            )
        except DetoxError:
            raise
        except Exception as e:
            raise load_error(e) from None
        # A checkpoint without a trained classification head (a T5, a bare encoder) gets a random
        # one: its "toxicity" would be noise. transformers only warns; here it is an error.
        check_load_report(loading_info, model, role, type(self.model).__name__)
        self.model.to(self.device).eval()
        id2label = self.model.config.id2label
        self.labels = [id2label[i] for i in range(self.model.config.num_labels)]
        if self.reward_label not in self.labels or self.toxic_label not in self.labels:  # config changed on load
            raise ModelLoadError(f"labels of {model} changed on load ({', '.join(self.labels)}); re-save the model")
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ModelLoadError(f"the tokenizer of {model} has neither a pad nor an eos token; set pad_token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        limit = getattr(self.tokenizer, "model_max_length", None)
        self.max_length = min(max_length, limit) if isinstance(limit, int) and 0 < limit < 1_000_000 else max_length
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 2:  # the model's own limit (RoBERTa's first 2 positions are offsets)
            self.max_length = min(self.max_length, positions - 2)
        self._reward_index = self.labels.index(self.reward_label)
        self._toxic_index = self.labels.index(self.toxic_label)

    def score(self, texts: list[str], progress: bool = False) -> ScoreResult:
        texts = check_texts(texts, type(self).__name__)
        if not texts:
            return empty_result(self.labels)
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False)["input_ids"]
        # A tokenizer that adds no special tokens makes an empty summary 0 tokens, which no model can read:
        # it is read as one padding token (attended), the nearest to nothing a classifier can score.
        filler = next(t for t in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, self.tokenizer.unk_token_id, 0)
                      if t is not None)
        encoded = [ids if len(ids) else [filler] for ids in encoded]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]), reverse=True)
        logits = torch.empty(len(texts), len(self.labels), dtype=torch.float32)
        with torch.inference_mode(), tqdm(
            total=len(texts), disable=not progress, desc=f"scoring {self.name}", unit="text"
        ) as bar:
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer.pad(
                    {"input_ids": [encoded[i] for i in idx]}, padding=True, return_tensors="pt"
                ).to(self.device)
                out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                logits[torch.tensor(idx)] = out.float().cpu()
                bar.update(len(idx))
        logits = as_f32(logits)
        probs = logits.softmax(dim=-1)
        return ScoreResult(
            reward=logits[:, self._reward_index].clone(),
            toxicity=probs[:, self._toxic_index].clone(),
            logits={name: logits[:, i].clone() for i, name in enumerate(self.labels)},
            probs={name: probs[:, i].clone() for i, name in enumerate(self.labels)},
        )


@lru_cache(maxsize=2)
def _load_bilstm(weights: str, tokenizer: str) -> tuple[KerasBiLSTM, KerasTokenizerState]:
    return KerasBiLSTM.from_h5(weights), load_keras_tokenizer(tokenizer)


class BiLSTMScorer:
    """``packaged:toxic-comment-classifier``: 6 sigmoid outputs plus a derived ``non-toxic`` label.

    Preprocessing is the package's ``classify``: Keras ``texts_to_sequences`` (lower-case, strip the
    filter characters, split on spaces, keep the 19,999 most frequent words, drop the rest) then
    ``pad_sequences(maxlen=100)`` with pre-padding and pre-truncation (the last 100 words count).
    The package's ``utils.clean_text`` is not applied, as ``classify`` does not apply it.

    ``logits[c]`` are the pre-sigmoid outputs clamped to +-log((1-eps)/eps), eps=1e-6;
    ``logits["non-toxic"] = -logits["toxic"]`` and ``probs["non-toxic"] = 1 - probs["toxic"]``.
    """

    name = PACKAGED_BILSTM

    def __init__(
        self,
        label: str = NON_TOXIC,
        toxic_label: str | None = None,
        *,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ) -> None:
        self.reward_label, self.toxic_label = check_reward_labels(self.name, label, toxic_label)
        self.labels = list(BILSTM_LABELS)
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device)
        model, self.tokenizer = _load_bilstm(str(locate(BILSTM_WEIGHTS)), str(locate(BILSTM_TOKENIZER)))
        self.model = model if self.device.type == "cpu" else KerasBiLSTM.from_h5(locate(BILSTM_WEIGHTS)).to(self.device)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [N, 100] exactly as the package feeds its Keras model."""
        return pad_sequences(self.tokenizer.texts_to_sequences(texts), BILSTM_MAXLEN)

    def score(self, texts: list[str], progress: bool = False) -> ScoreResult:
        texts = check_texts(texts, type(self).__name__)
        if not texts:
            return empty_result(self.labels)
        ids = self.encode(texts)
        chunks = []
        with torch.inference_mode(), tqdm(
            total=len(texts), disable=not progress, desc=f"scoring {self.name}", unit="text"
        ) as bar:
            for start in range(0, len(texts), self.batch_size):
                chunks.append(self.model(ids[start : start + self.batch_size].to(self.device)).float().cpu())
                bar.update(min(self.batch_size, len(texts) - start))
        z = as_f32(torch.cat(chunks)).clamp(-MAX_LOGIT, MAX_LOGIT)
        p = torch.sigmoid(z)
        logits = {c: z[:, i].clone() for i, c in enumerate(BILSTM_CLASSES)}
        probs = {c: p[:, i].clone() for i, c in enumerate(BILSTM_CLASSES)}
        logits[NON_TOXIC] = -logits["toxic"]
        probs[NON_TOXIC] = 1 - probs["toxic"]
        return ScoreResult(
            reward=logits[self.reward_label].clone(),
            toxicity=probs[self.toxic_label].clone(),
            logits=logits,
            probs=probs,
        )


# --------------------------------------------------------------------------------------------
# alt-profanity-check


class SVMScorer:
    """``packaged:profanity-check``: alt-profanity-check's calibrated linear SVM on TF-IDF.

    ``toxicity = p = predict_prob(text)``; ``logits["toxic"] = log(p/(1-p))`` with p clamped to
    [1e-6, 1-1e-6]; the reward (``non-toxic``) is its negative.
    """

    name = PACKAGED_SVM

    def __init__(self, label: str = NON_TOXIC, toxic_label: str | None = None, *, batch_size: int = 1024) -> None:
        self.reward_label, self.toxic_label = check_reward_labels(self.name, label, toxic_label)
        self.labels = list(SVM_LABELS)
        self.batch_size = max(1, int(batch_size))
        module, spec = PROFANITY_CHECK
        self._predict_prob = require_module(module, spec).predict_prob

    def score(self, texts: list[str], progress: bool = False) -> ScoreResult:
        texts = check_texts(texts, type(self).__name__)
        if not texts:
            return empty_result(self.labels)
        parts = []
        with tqdm(total=len(texts), disable=not progress, desc=f"scoring {self.name}", unit="text") as bar:
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start : start + self.batch_size]
                parts.append(torch.as_tensor(self._predict_prob(chunk), dtype=torch.float64).reshape(-1))
                bar.update(len(chunk))
        p = torch.cat(parts).clamp(EPS, 1 - EPS)
        toxic_logit = log_odds(p)
        logits = {NON_TOXIC: -toxic_logit, "toxic": toxic_logit.clone()}
        probs = {NON_TOXIC: as_f32(1 - p), "toxic": as_f32(p)}
        return ScoreResult(
            reward=logits[self.reward_label].clone(),
            toxicity=probs[self.toxic_label].clone(),
            logits=logits,
            probs=probs,
        )


# --------------------------------------------------------------------------------------------
# A Python function, and weighted sums


#: A reward function: the summaries of a batch -> one float each, higher for a better (less toxic) one.
#: ``FunctionScorer(fn)`` makes it a scorer; ``--reward-model python:module:function`` names one.
RewardFunction = Callable[[list[str]], Sequence[float]]


class FunctionScorer:
    """Wraps ``fn(texts) -> list[float]`` (one reward per text, higher is better).

    A function gives no toxicity, so ``toxicity = sigmoid(-reward)`` stands in for one (a monotone
    map of the reward into [0, 1], not a calibrated probability); label ``reward`` carries both.
    """

    def __init__(self, fn: RewardFunction, name: str | None = None, batch_size: int | None = None):
        if not callable(fn):
            raise ConfigError(f"a reward function must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or f"{PYTHON_PREFIX}{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
        self.labels = ["reward"]
        self.reward_label = "reward"
        self.toxic_label = "reward"
        self.batch_size = batch_size

    def score(self, texts: list[str], progress: bool = False) -> ScoreResult:
        texts = check_texts(texts, type(self).__name__)
        if not texts:
            return empty_result(self.labels)
        step = self.batch_size or len(texts)
        values: list[float] = []
        with tqdm(total=len(texts), disable=not progress, desc=f"scoring {self.name}", unit="text") as bar:
            for start in range(0, len(texts), step):
                chunk = texts[start : start + step]
                try:
                    out = self.fn(chunk)
                except Exception as e:  # the user's code: one line naming it, not a traceback mid-run
                    detail = (str(e).strip().splitlines() or [""])[0][:200]
                    raise ConfigError(
                        f"reward function {self.name} raised {type(e).__name__}: {detail} (on a batch of {len(chunk)} texts); "
                        f"fix the function, and try it with: detoxrl score --reward-model {self.name} TEXT"
                    ) from e
                try:
                    out = [float(v) for v in (out.tolist() if hasattr(out, "tolist") else out)]
                except (TypeError, ValueError):
                    raise ConfigError(f"reward function {self.name} must return one float per text, got {type(out).__name__}") from None
                if len(out) != len(chunk):
                    raise ConfigError(f"reward function {self.name} returned {len(out)} values for {len(chunk)} texts; return one per text")
                values.extend(out)
                bar.update(len(chunk))
        reward = torch.tensor(values, dtype=torch.float32)
        if not torch.isfinite(reward).all():
            bad = int((~torch.isfinite(reward)).nonzero()[0])
            raise ConfigError(f"reward function {self.name} returned {values[bad]} for text {bad}; rewards must be finite")
        return ScoreResult(
            reward=reward.clone(),
            toxicity=torch.sigmoid(-reward),
            logits={"reward": reward.clone()},
            probs={"reward": torch.sigmoid(reward)},
        )


def load_function(spec: str) -> Callable[[list[str]], Sequence[float]]:
    """``python:package.module:function`` -> the function (imported)."""
    target = spec[len(PYTHON_PREFIX) :] if spec.startswith(PYTHON_PREFIX) else spec
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"reward model '{spec}' must look like python:package.module:function")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import '{module_name}' for reward '{spec}' ({e}); put it on PYTHONPATH") from None
    except Exception as e:  # the module itself fails while importing (SyntaxError, an error at top level)
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"importing '{module_name}' for reward '{spec}' raised {type(e).__name__}: {detail}; fix the module") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module '{module_name}' has no '{attr}' (reward '{spec}')")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"'{attr}' of module '{module_name}' is not a function (got {type(obj).__name__}); name a function in reward '{spec}'")
    return obj


class CombinedScorer:
    """``reward = sum_i weight_i * reward_i``; toxicity (and ``toxic_label``) from the first scorer.

    ``logits``/``probs`` hold every scorer's labels as ``"<scorer name>/<label>"`` plus ``"combined"``
    (the weighted reward; its prob is sigmoid of it).
    """

    def __init__(self, scorers: Sequence[Scorer], weights: Sequence[float] | None = None, name: str | None = None):
        if not scorers:
            raise ConfigError("a combined reward needs at least one scorer")
        weights = [1.0] * len(scorers) if weights is None else [float(w) for w in weights]
        if len(weights) != len(scorers):
            raise ConfigError(f"{len(scorers)} reward scorers but {len(weights)} weights; give one weight each")
        self.scorers = list(scorers)
        self.weights = weights
        self.name = name or " + ".join(f"{w:g}*{s.name}" for s, w in zip(self.scorers, weights))
        self.labels = [f"{s.name}/{lab}" for s in self.scorers for lab in s.labels] + ["combined"]
        self.reward_label = "combined"
        self.toxic_label = f"{self.scorers[0].name}/{self.scorers[0].toxic_label}"

    def score(self, texts: list[str], progress: bool = False) -> ScoreResult:
        texts = check_texts(texts, type(self).__name__)
        results = [s.score(texts, progress=progress) for s in self.scorers]
        reward = sum(w * r.reward for w, r in zip(self.weights, results))
        if not isinstance(reward, torch.Tensor):
            reward = torch.zeros(len(texts))
        reward = as_f32(reward)
        logits, probs = {}, {}
        for s, r in zip(self.scorers, results):
            logits.update({f"{s.name}/{k}": v for k, v in r.logits.items()})
            probs.update({f"{s.name}/{k}": v for k, v in r.probs.items()})
        logits["combined"] = reward.clone()
        probs["combined"] = torch.sigmoid(reward)
        return ScoreResult(reward=reward, toxicity=results[0].toxicity.clone(), logits=logits, probs=probs)


# --------------------------------------------------------------------------------------------
# Construction


def build_scorer(
    model: str,
    label: str,
    toxic_label: str | None = None,
    *,
    batch_size: int = 16,
    max_length: int = 512,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    role: Role = REWARD,
) -> Scorer:
    """A scorer for ``model``: ``packaged:toxic-comment-classifier`` (BiLSTM), ``packaged:profanity-check``
    (SVM), ``python:module:function`` (FunctionScorer), else a Hugging Face hub id or local folder.
    Labels and the model's fitness for ``role`` are checked (config only) before any weights load."""
    check_reward_labels(model, label, toxic_label, trust_remote_code, role)
    if model == PACKAGED_BILSTM:
        return BiLSTMScorer(label, toxic_label, batch_size=max(batch_size, 1), device=device)
    if model == PACKAGED_SVM:
        return SVMScorer(label, toxic_label)
    if model == PACKAGED_HATESONAR:
        from detoxrl.hatesonar import HateSonarScorer  # imports this module: lazily, no cycle

        return HateSonarScorer(label, toxic_label)
    if model.startswith(PYTHON_PREFIX):
        return FunctionScorer(load_function(model), name=model, batch_size=batch_size)
    return HFClassifierScorer(
        model,
        label,
        toxic_label,
        batch_size=batch_size,
        max_length=max_length,
        dtype=dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        role=role,
    )


def scorer_from_config(reward_cfg, *, dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu") -> Scorer:
    """``build_scorer`` from a :class:`detoxrl.config.RewardConfig` (its own ``trust_remote_code``)."""
    return build_scorer(
        reward_cfg.model,
        reward_cfg.label,
        reward_cfg.toxic_label,
        batch_size=reward_cfg.batch_size,
        max_length=reward_cfg.max_length,
        dtype=dtype,
        device=device,
        trust_remote_code=reward_cfg.trust_remote_code,
    )


# --------------------------------------------------------------------------------------------
# Reward shaping: the one place where a classifier's scores become the reward


def transform_scores(scored: ScoreResult, transform: str, label: str | None = None, *, logit_ceiling: float | None = None) -> torch.Tensor:
    """The classifier's opinion of each text as a reward, before weights and penalties ([N] float32).

    - ``logit``: the raw logit of the reward label (the notebook's reward). It keeps rising as text
      gets more generic, well past "clearly clean", so it pays for blandness.
    - ``log_prob``: ``log P(label)``. At most 0, and within a hair of 0 for any clean text: once a
      summary is clean, only its toxicity can still cost reward.
    - ``prob``: ``P(label)``, bounded in [0, 1].
    - ``clipped_logit``: ``min(logit, logit_ceiling)``: the logit's signal wherever the text is
      toxic at all, and no reward for being cleaner than ``sigmoid(logit_ceiling)``.

    ``label`` defaults to the scorer's reward label, i.e. the key whose logit is ``scored.reward``.
    """
    if transform == "logit":
        return scored.reward.float().clone()
    if transform == "clipped_logit":
        if logit_ceiling is None:
            raise ValueError("the clipped_logit transform needs logit_ceiling")
        return scored.reward.float().clamp(max=float(logit_ceiling))
    probs = scored.probs.get(label) if label is not None else None
    if probs is None:  # a scorer without that label's probability: the logistic of its reward logit
        probs = torch.sigmoid(scored.reward.float())
    probs = probs.double()
    if transform == "log_prob":
        return torch.log(probs.clamp(min=EPS)).float()
    if transform == "prob":
        return probs.float().clone()
    from detoxrl.config import REWARD_TRANSFORMS

    raise ConfigError(f"unknown reward.transform '{transform}'; choose one of: {', '.join(REWARD_TRANSFORMS)}")


def shape_rewards(
    scored: ScoreResult,
    reward_cfg,
    *,
    reward_label: str | None = None,
    ended: torch.Tensor | None = None,
    faithfulness: Sequence[float] | torch.Tensor | None = None,
    score_clip: float | None = None,
) -> torch.Tensor:
    """The reward of each summary, as training maximises it and evaluation records it.

    ``reward = weight * transform(scores) + faithfulness_weight * faithfulness
    - missing_eos_penalty * [summary never ended]``, then clipped to ``[-score_clip, score_clip]``.

    ``reward_cfg`` is a :class:`detoxrl.config.RewardConfig` (``transform``, ``weight``,
    ``faithfulness_weight``, ``missing_eos_penalty``); ``faithfulness`` is the MiniLM cosine of each
    summary to its dialogue (needed when ``faithfulness_weight`` > 0); ``ended`` is a bool [N]
    tensor (needed when a missing-EOS penalty is set). Returns float32 [N] on the CPU.
    """
    out = transform_scores(scored, reward_cfg.transform, reward_label, logit_ceiling=reward_cfg.logit_ceiling) * float(reward_cfg.weight)
    if reward_cfg.faithfulness_weight:
        if faithfulness is None:
            raise ValueError("reward.faithfulness_weight is set: shape_rewards needs the faithfulness of each summary")
        f = torch.as_tensor(faithfulness, dtype=torch.float32).reshape(-1).cpu()
        if f.shape != out.shape:
            raise ValueError(f"{f.numel()} faithfulness values for {out.numel()} scores")
        out = out + float(reward_cfg.faithfulness_weight) * f
    if reward_cfg.missing_eos_penalty:
        if ended is None:
            raise ValueError("reward.missing_eos_penalty is set: shape_rewards needs which summaries ended")
        out = out - float(reward_cfg.missing_eos_penalty) * (~ended.bool().cpu()).float()
    if score_clip:
        out = out.clamp(-score_clip, score_clip)
    return out


# --------------------------------------------------------------------------------------------
# Judges: independent classifiers named MODEL or MODEL#TOXIC_LABEL


def parse_judge_spec(spec: str) -> tuple[str, str | None]:
    """``"MODEL#LABEL"`` -> ``(MODEL, LABEL)``; ``"MODEL"`` -> ``(MODEL, None)``."""
    model, sep, label = spec.strip().partition("#")
    if not model or (sep and not label):
        raise ConfigError(f"judge '{spec}' must look like MODEL or MODEL#TOXIC_LABEL, e.g. packaged:hatesonar#hate_speech")
    return model, (label or None)


def check_judge(spec: str, toxic_label: str | None = None, trust_remote_code: bool = False, role: Role = JUDGE) -> tuple[str, str]:
    """Resolve a judge's (non-toxic, toxic) labels from its config alone; unknown labels are errors.

    ``spec`` is MODEL or MODEL#TOXIC_LABEL; a label in the spec wins over ``toxic_label``. The
    model is checked for ``role`` (a judge, or a selection scorer) before its labels are read."""
    model, named = parse_judge_spec(spec)
    toxic_label = named or toxic_label
    if model.startswith(PYTHON_PREFIX):  # a Python function has the one label "reward" (toxicity = sigmoid(-reward))
        return check_reward_labels(model, "reward", None)
    labels = model_labels(model, trust_remote_code, role)
    if toxic_label is None:
        if model not in PACKAGED_LABELS:
            raise ConfigError(
                f"judge {model} has labels {', '.join(labels)}; say which is toxic with --judge-toxic-label "
                f"(evaluation.judge_toxic_label) or write it as {model}#LABEL"
            )
        toxic_label = PACKAGED_LABELS[model][2]
    if toxic_label not in labels:
        raise ConfigError(
            f"judge label '{toxic_label}' is not a label of {model}; its labels are: {', '.join(labels)}; "
            "pass one of them to --judge-toxic-label (or MODEL#LABEL)"
        )
    default_reward = PACKAGED_LABELS[model][1] if model in PACKAGED_LABELS else None
    reward_label = default_reward if default_reward not in (None, toxic_label) else next(x for x in labels if x != toxic_label)
    return check_reward_labels(model, reward_label, toxic_label, trust_remote_code, role)


def build_judge_scorer(spec: str, toxic_label: str | None = None, *, batch_size: int = 16, max_length: int = 512,
                       device: str | torch.device = "cpu", trust_remote_code: bool = False) -> Scorer:
    """A scorer for judge ``spec`` (MODEL or MODEL#TOXIC_LABEL), labels checked first."""
    label, toxic = check_judge(spec, toxic_label, trust_remote_code)
    model, _ = parse_judge_spec(spec)
    return build_scorer(model, label, toxic, batch_size=batch_size, max_length=max_length, device=device,
                        trust_remote_code=trust_remote_code, role=JUDGE)
