"""``packaged:hatesonar``: the TF-IDF + logistic-regression classifier that ``hatesonar==0.1.0`` ships.

The model was trained on Davidson et al.'s Twitter hate/offensive data and is shipped as ONNX
(``hatesonar/model/model.onnx``; no pickle). Its three classes, in output order, are
``hate_speech``, ``offensive_language`` and ``neither``. The ``hatesonar`` module is never imported:
the file is found through the distribution's metadata (:data:`detoxrl.packaged.HATESONAR`) and run
with ``onnxruntime``.

The graph's StringNormalizer (lower-casing) has no ``locale`` attribute, so onnxruntime asks for
``en_US.UTF-8`` and fails where that locale is not installed. Before the session is created, the model
is loaded with the ``onnx`` package and every StringNormalizer gets ``locale="C.UTF-8"`` (``"C"``
where even that is missing; the tokenizer keeps ASCII word characters only, so the locale does not
change any score).

Calibration is weak: text with no known word gets the bias alone, ``1 - P(neither) = 0.325``;
neutral summaries score around 0.25-0.35. Rank order is sensible.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from detoxrl.config import PACKAGED_HATESONAR
from detoxrl.errors import ModelLoadError
from detoxrl.packaged import HATESONAR, ONNX, ONNXRUNTIME, locate, pip_command, require_module
from detoxrl.scores import NON_TOXIC, ScoreResult, as_f32, check_texts, empty_result, log_odds, resolve_labels

# Output order of the ONNX classifier (classlabels_ints 0, 1, 2).
HATESONAR_CLASSES = ["hate_speech", "offensive_language", "neither"]
TOXIC = "toxic"  # derived: 1 - P(neither)
HATESONAR_LABELS = HATESONAR_CLASSES + [TOXIC, NON_TOXIC]
# Locales tried, in order, for the StringNormalizer; "C" exists in every C++ runtime.
LOCALES = ("C.UTF-8", "C")
INPUT_NAME = "text"


def patch_locale(model: Any, locale: str) -> int:
    """Set ``locale`` on every StringNormalizer node of the ``onnx.ModelProto`` (added where absent).

    Returns how many nodes were patched (subgraphs included)."""
    import onnx

    count = 0

    def visit(graph: Any) -> None:
        nonlocal count
        for node in graph.node:
            if node.op_type == "StringNormalizer":
                for attr in list(node.attribute):
                    if attr.name == "locale":
                        node.attribute.remove(attr)
                node.attribute.append(onnx.helper.make_attribute("locale", locale))
                count += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g)

    visit(model.graph)
    return count


def _is_locale_error(e: Exception) -> bool:
    return "locale" in str(e).lower()


@lru_cache(maxsize=2)
def load_session(path: str) -> Any:
    """An onnxruntime ``InferenceSession`` (CPU, one thread) of the locale-patched model at ``path``.

    Cached per process and path: building it costs ~0.1 s and the model is read-only."""
    ort = require_module(*ONNXRUNTIME)
    onnx = require_module(*ONNX)
    fix = pip_command(HATESONAR[0], HATESONAR[1], force_reinstall=True)
    try:
        model = onnx.load(path)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        raise ModelLoadError(f"cannot read the hatesonar ONNX model {path} ({type(e).__name__}: {first[:200]}); run: {fix}") from None
    last: Exception | None = None
    for i, locale in enumerate(LOCALES):
        patch_locale(model, locale)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # 3 = errors only; an attempt that may fall back on another locale stays quiet (4 = fatal only).
        options.log_severity_level = 3 if i == len(LOCALES) - 1 else 4
        try:
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            last = e
            if _is_locale_error(e):
                continue
            break
        names = [x.name for x in session.get_inputs()]
        if names != [INPUT_NAME] or len(session.get_outputs()) != 2:
            raise ModelLoadError(
                f"{path} takes inputs {names} and gives {len(session.get_outputs())} outputs, not the hatesonar "
                f"model ('{INPUT_NAME}' -> labels, probabilities); run: {fix}"
            )
        return session
    if last is not None and _is_locale_error(last):
        raise ModelLoadError(
            f"onnxruntime cannot construct any of the locales {', '.join(LOCALES)} for the StringNormalizer of the "
            f"hatesonar model {path}; detoxrl was tested with {ONNXRUNTIME[1]}; run: pip install {ONNXRUNTIME[1]}"
        ) from None
    first = (str(last).splitlines() or [""])[0]
    raise ModelLoadError(
        f"onnxruntime cannot load the hatesonar model {path} ({type(last).__name__}: {first[:200]}; "
        f"tested with {ONNXRUNTIME[1]}); run: {fix}"
    ) from None


def _probabilities(raw: Any, n: int) -> np.ndarray:
    """The session's probability output as float64 [n, 3] in class order.

    The shipped model ends in a ZipMap, so it is a list of dicts ``{0: p0, 1: p1, 2: p2}``; a plain
    [n, 3] array (a model exported with ``zipmap=False``) is taken too."""
    if isinstance(raw, np.ndarray):
        arr = raw.astype(np.float64, copy=False)
    else:
        rows = list(raw)
        if rows and isinstance(rows[0], dict):
            keys: Sequence[Any] = (
                range(len(HATESONAR_CLASSES)) if all(k in rows[0] for k in range(len(HATESONAR_CLASSES))) else HATESONAR_CLASSES
            )
            try:
                arr = np.array([[row[k] for k in keys] for row in rows], dtype=np.float64)
            except KeyError as e:
                raise ModelLoadError(
                    f"the hatesonar model gave probabilities keyed {sorted(map(str, rows[0]))}, not the classes "
                    f"{HATESONAR_CLASSES}; run: {pip_command(HATESONAR[0], HATESONAR[1], force_reinstall=True)}"
                ) from e
        else:
            arr = np.asarray(rows, dtype=np.float64)
    if arr.shape != (n, len(HATESONAR_CLASSES)):
        raise ModelLoadError(
            f"the hatesonar model gave probabilities of shape {arr.shape} for {n} texts, expected ({n}, 3); "
            f"run: {pip_command(HATESONAR[0], HATESONAR[1], force_reinstall=True)}"
        )
    return arr


class HateSonarScorer:
    """``packaged:hatesonar``: 3 softmax classes plus the derived ``toxic`` and ``non-toxic`` labels.

    ``probs[c]`` are the model's class probabilities; ``probs["toxic"] = 1 - P(neither)`` (hate speech
    or offensive language), ``probs["non-toxic"] = P(neither)``. ``logits[c] = log(p/(1-p))`` with p
    clamped to [1e-6, 1-1e-6]; ``logits["non-toxic"] = logits["neither"]`` and
    ``logits["toxic"] = -logits["neither"]``. Default reward label ``non-toxic``, default toxic label
    ``toxic``; ``toxic_label="hate_speech"`` reads P(hate_speech) alone.
    """

    name = PACKAGED_HATESONAR

    def __init__(self, label: str = NON_TOXIC, toxic_label: str | None = None, *, batch_size: int = 512) -> None:
        self.reward_label, self.toxic_label = resolve_labels(self.name, HATESONAR_LABELS, label, toxic_label, NON_TOXIC, TOXIC)
        self.labels = list(HATESONAR_LABELS)
        self.batch_size = max(1, int(batch_size))
        # Both modules first: a missing onnxruntime/onnx is named even when hatesonar is missing too.
        require_module(*ONNXRUNTIME)
        require_module(*ONNX)
        self.session = load_session(str(locate(HATESONAR)))

    def predict_proba(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Class probabilities, float64 [N, 3] (hate_speech, offensive_language, neither), in input order."""
        texts = check_texts(texts, type(self).__name__)
        parts = []
        with tqdm(total=len(texts), disable=not progress, desc=f"scoring {self.name}", unit="text") as bar:
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start : start + self.batch_size]
                outputs = self.session.run(None, {INPUT_NAME: np.array(chunk, dtype=object)})
                parts.append(_probabilities(outputs[1], len(chunk)))
                bar.update(len(chunk))
        if not parts:
            return np.zeros((0, len(HATESONAR_CLASSES)), dtype=np.float64)
        p = np.concatenate(parts)
        return p / p.sum(axis=1, keepdims=True)  # the model's float32 softmax, summed to 1 in float64

    def score(self, texts: list[str], progress: bool = False) -> ScoreResult:
        texts = check_texts(texts, type(self).__name__)
        if not texts:
            return empty_result(self.labels)
        p = torch.from_numpy(self.predict_proba(texts, progress=progress))
        logits = {c: log_odds(p[:, i]) for i, c in enumerate(HATESONAR_CLASSES)}
        probs = {c: as_f32(p[:, i]) for i, c in enumerate(HATESONAR_CLASSES)}
        neither = p[:, HATESONAR_CLASSES.index("neither")]
        logits[TOXIC] = -logits["neither"]
        logits[NON_TOXIC] = logits["neither"].clone()
        probs[TOXIC] = as_f32(1 - neither)
        probs[NON_TOXIC] = as_f32(neither)
        return ScoreResult(
            reward=logits[self.reward_label].clone(),
            toxicity=probs[self.toxic_label].clone(),
            logits=logits,
            probs=probs,
        )
