"""The Keras BiLSTM of the PyPI package ``toxic-comment-classifier`` (0.3.0), ported to PyTorch.

The package ships a Keras 3 model (``model.weights.h5``) and a pickled Keras ``Tokenizer``. Neither Keras
nor TensorFlow is needed here: :class:`KerasBiLSTM` reads the weights with h5py into the same network,
and :func:`load_keras_tokenizer` reads the pickle with :class:`RestrictedUnpickler`, which maps the
Tokenizer class to :class:`KerasTokenizerState` (a re-implementation of its ``texts_to_sequences``) and
refuses every other global, so a tampered file cannot run code. :func:`pad_sequences` is Keras'.

The scorer that uses them, with its labels and clamping, is :class:`detoxrl.rewards.BiLSTMScorer`.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from detoxrl.errors import DetoxError, ModelLoadError
from detoxrl.packaged import BILSTM_TOKENIZER, BILSTM_WEIGHTS, pip_command

BILSTM_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
BILSTM_MAXLEN = 100  # toxic_classifier/model.py: MAXLEN
BILSTM_VOCAB = 20000  # VOCAB_SIZE
BILSTM_EMBED = 50  # EMBEDDING_DIM
BILSTM_UNITS = 50  # LSTM(50)
BILSTM_DENSE = 50  # Dense(50, relu)

# Class paths under which Keras versions pickled their Tokenizer (all map to KerasTokenizerState).
KERAS_TOKENIZER_CLASSES = {
    ("keras.src.legacy.preprocessing.text", "Tokenizer"),  # Keras 3 (the one the package ships)
    ("keras.src.preprocessing.text", "Tokenizer"),  # Keras 2.13-2.15
    ("keras.preprocessing.text", "Tokenizer"),  # Keras 2.6-2.12
    ("keras_preprocessing.text", "Tokenizer"),  # Keras-Preprocessing 1.x
}
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "int"): int,  # defaultdict(int) of word_docs / index_docs
}
KERAS_DEFAULT_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


class KerasTokenizerState:
    """Stand-in for the pickled Keras ``Tokenizer``: keeps its ``__dict__`` and reproduces
    ``texts_to_sequences`` (Keras 3 ``keras.src.legacy.preprocessing.text``) for word-level tokenizers."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def text_to_word_sequence(self, text: str) -> list[str]:
        filters = getattr(self, "filters", KERAS_DEFAULT_FILTERS)
        split = getattr(self, "split", " ")
        if getattr(self, "lower", True):
            text = text.lower()
        text = text.translate(str.maketrans({c: split for c in filters}))
        return [w for w in text.split(split) if w]

    def texts_to_sequences(self, texts: Sequence[str]) -> list[list[int]]:
        if getattr(self, "char_level", False) or getattr(self, "analyzer", None) is not None:
            raise ModelLoadError("the pickled Keras tokenizer is char-level or has a custom analyzer; detoxrl reads word-level ones only")
        word_index: dict[str, int] = self.word_index
        num_words = getattr(self, "num_words", None)
        oov = getattr(self, "oov_token", None)
        oov_index = word_index.get(oov) if oov is not None else None
        out = []
        for text in texts:
            vect = []
            for w in self.text_to_word_sequence(text):
                i = word_index.get(w)
                if i is not None:
                    if num_words and i >= num_words:
                        if oov_index is not None:
                            vect.append(oov_index)
                    else:
                        vect.append(i)
                elif oov is not None:
                    vect.append(oov_index)
            out.append(vect)
        return out


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references something a Keras tokenizer never needs."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a Keras Tokenizer and nothing else: its class maps to :class:`KerasTokenizerState`,
    plus OrderedDict, defaultdict and int; any other global (``os.system``...) raises."""

    def find_class(self, module: str, name: str):
        if (module, name) in KERAS_TOKENIZER_CLASSES:
            return KerasTokenizerState
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        raise UnsafePickleError(f"refusing to unpickle global '{module}.{name}': a Keras tokenizer never needs it")


def load_keras_tokenizer(path: str | Path) -> KerasTokenizerState:
    """Read a pickled Keras Tokenizer with :class:`RestrictedUnpickler`; anything unexpected is a ModelLoadError."""
    dist, version, _ = BILSTM_TOKENIZER
    fix = pip_command(dist, version, force_reinstall=True)
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f).load()
    except UnsafePickleError as e:
        raise ModelLoadError(f"{path}: {e}; the file is not the tokenizer that was shipped; run: {fix}") from None
    except Exception as e:
        raise ModelLoadError(f"cannot read the Keras tokenizer {path} ({type(e).__name__}: {e}); run: {fix}") from None
    if not isinstance(obj, KerasTokenizerState) or not isinstance(getattr(obj, "word_index", None), dict):
        raise ModelLoadError(f"{path} does not hold a Keras Tokenizer with a word_index; run: {fix}")
    return obj


def pad_sequences(
    sequences: Sequence[Sequence[int]], maxlen: int, padding: str = "pre", truncating: str = "pre", value: int = 0
) -> torch.Tensor:
    """Keras ``pad_sequences`` (defaults ``padding="pre"``, ``truncating="pre"``: keep the last tokens)."""
    out = torch.full((len(sequences), maxlen), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if not len(seq):
            continue
        trunc = list(seq[-maxlen:]) if truncating == "pre" else list(seq[:maxlen])
        if padding == "pre":
            out[row, maxlen - len(trunc) :] = torch.tensor(trunc, dtype=torch.long)
        else:
            out[row, : len(trunc)] = torch.tensor(trunc, dtype=torch.long)
    return out


class KerasBiLSTM(nn.Module):
    """``Embedding(20000, 50) -> Bidirectional(LSTM(50, return_sequences)) -> GlobalMaxPooling1D ->
    Dense(50, relu) -> Dense(6)`` (sigmoid left out: ``forward`` returns the 6 logits).

    Keras' LSTM gates (i, f, c, o) are in PyTorch's order (i, f, g, o); the kernel is transposed, the
    Keras bias goes to ``bias_ih`` and ``bias_hh`` is zero. Keras masks nothing here (no
    ``mask_zero``), so the pre-padding zeros run through the LSTM, as in the original. Dropout is
    inactive at inference and omitted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(BILSTM_VOCAB, BILSTM_EMBED)
        self.lstm = nn.LSTM(BILSTM_EMBED, BILSTM_UNITS, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(2 * BILSTM_UNITS, BILSTM_DENSE)
        self.out = nn.Linear(BILSTM_DENSE, len(BILSTM_CLASSES))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embedding(ids))  # [B, T, 100]: forward and time-aligned backward states
        pooled = h.max(dim=1).values  # GlobalMaxPooling1D over all timesteps
        return self.out(torch.relu(self.dense(pooled)))

    @classmethod
    def from_h5(cls, path: str | Path) -> "KerasBiLSTM":
        """Load a Keras 3 ``model.weights.h5`` (layers/<name>/vars/<i>) into PyTorch."""
        import h5py

        fix = pip_command(BILSTM_WEIGHTS[0], BILSTM_WEIGHTS[1], force_reinstall=True)
        model = cls()
        try:
            with h5py.File(path, "r") as f:

                def var(name: str, shape: tuple[int, ...]) -> torch.Tensor:
                    if name not in f:
                        raise ModelLoadError(f"{path} has no '{name}' (not the BiLSTM weights); run: {fix}")
                    arr = f[name][()]
                    if tuple(arr.shape) != shape:
                        raise ModelLoadError(f"{path}: '{name}' has shape {arr.shape}, expected {shape}; run: {fix}")
                    return torch.from_numpy(arr).float()

                four = 4 * BILSTM_UNITS
                state = {"embedding.weight": var("layers/embedding/vars/0", (BILSTM_VOCAB, BILSTM_EMBED))}
                for suffix, keras_name in (("", "forward_layer"), ("_reverse", "backward_layer")):
                    base = f"layers/bidirectional/{keras_name}/cell/vars"
                    state[f"lstm.weight_ih_l0{suffix}"] = var(f"{base}/0", (BILSTM_EMBED, four)).T.contiguous()
                    state[f"lstm.weight_hh_l0{suffix}"] = var(f"{base}/1", (BILSTM_UNITS, four)).T.contiguous()
                    state[f"lstm.bias_ih_l0{suffix}"] = var(f"{base}/2", (four,))
                    state[f"lstm.bias_hh_l0{suffix}"] = torch.zeros(four)
                state["dense.weight"] = var("layers/dense/vars/0", (2 * BILSTM_UNITS, BILSTM_DENSE)).T.contiguous()
                state["dense.bias"] = var("layers/dense/vars/1", (BILSTM_DENSE,))
                state["out.weight"] = var("layers/dense_1/vars/0", (BILSTM_DENSE, len(BILSTM_CLASSES))).T.contiguous()
                state["out.bias"] = var("layers/dense_1/vars/1", (len(BILSTM_CLASSES),))
        except DetoxError:
            raise
        except Exception as e:
            raise ModelLoadError(f"cannot read BiLSTM weights {path} ({type(e).__name__}: {e}); run: {fix}") from None
        model.load_state_dict(state, strict=True)
        return model.eval()
