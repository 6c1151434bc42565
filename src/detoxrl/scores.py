"""What every scorer shares: the result type, the scorer interface, and the checks and conversions that
the reward model and the judges (:mod:`detoxrl.rewards`, :mod:`detoxrl.hatesonar`) all make.

No model code: this module sits below every scorer, so that none of them imports another's internals.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch

from detoxrl.errors import ConfigError

# Probabilities are clamped to [EPS, 1-EPS] before a log-odds is taken: rewards stay within +-13.8.
EPS = 1e-6
MAX_LOGIT = math.log((1 - EPS) / EPS)

NON_TOXIC = "non-toxic"


@dataclass
class ScoreResult:
    """Scores of N texts, in the order the texts were given. All tensors are float32 [N] on the CPU."""

    reward: torch.Tensor  # value to maximise: raw logit of the chosen (non-toxic) label
    toxicity: torch.Tensor  # probability of the toxic label, in [0, 1]
    logits: dict[str, torch.Tensor]  # per label name
    probs: dict[str, torch.Tensor]  # per label name

    def __len__(self) -> int:
        return int(self.reward.shape[0])


@runtime_checkable
class Scorer(Protocol):
    name: str
    labels: list[str]
    reward_label: str
    toxic_label: str

    def score(self, texts: list[str], progress: bool = False) -> ScoreResult: ...


def check_texts(texts: Sequence[str], who: str) -> list[str]:
    """``texts`` as a list, each a ``str`` (a single string is an error, not a list of characters)."""
    if isinstance(texts, str):
        raise TypeError(f"{who}.score takes a list of texts, got a single string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{who}.score: text {i} is {type(t).__name__}, not str")
    return texts


def as_f32(x) -> torch.Tensor:
    """A fresh, ordinary (non-inference) float32 CPU tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).clone()
    return torch.as_tensor(x, dtype=torch.float32).clone()


def log_odds(p: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` in float64, p clamped to [EPS, 1 - EPS], returned as float32."""
    p = p.to(torch.float64).clamp(EPS, 1 - EPS)
    return torch.log(p / (1 - p)).to(torch.float32)


def empty_result(labels: list[str]) -> ScoreResult:
    """The result of scoring no text."""
    z = torch.zeros(0, dtype=torch.float32)
    return ScoreResult(z.clone(), z.clone(), {k: z.clone() for k in labels}, {k: z.clone() for k in labels})


def suggest_label(name: str, choices: list[str], default: str | None = None) -> str:
    """The closest label to a mistyped one; else ``default`` (or the first label)."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        return close[0]
    return default if default in choices else choices[0]


def resolve_labels(model: str, labels: list[str], label: str, toxic_label: str | None,
                   default_label: str | None = None, default_toxic: str | None = None) -> tuple[str, str]:
    """Validate a reward label and a toxic label against a classifier's ``labels``; the resolved
    ``(reward_label, toxic_label)``. ``toxic_label=None``: ``default_toxic``, else for a 2-label model the
    other label, else an error asking for it. Every error names the labels and the flag that fixes it."""
    shown = ", ".join(labels)
    if label not in labels:
        raise ConfigError(
            f"reward label '{label}' is not a label of {model}; its labels are: {shown}; "
            f"pass --reward-label {suggest_label(label, labels, default_label)}"
        )
    if toxic_label is None:
        if default_toxic is not None:
            toxic_label = default_toxic
        elif len(labels) == 2:
            toxic_label = labels[1 - labels.index(label)]
        else:
            raise ConfigError(
                f"{model} has {len(labels)} labels ({shown}); say which one is toxicity: "
                f"pass --toxic-label (reward.toxic_label), e.g. {suggest_label('toxic', [x for x in labels if x != label])}"
            )
    elif toxic_label not in labels:
        raise ConfigError(
            f"toxic label '{toxic_label}' is not a label of {model}; its labels are: {shown}; "
            f"pass --toxic-label {suggest_label(toxic_label, [x for x in labels if x != label] or labels, default_toxic)}"
        )
    if toxic_label == label:
        raise ConfigError(
            f"the reward label and the toxic label of {model} are both '{label}': the reward would "
            f"maximise toxicity; pass the non-toxic label as --reward-label"
        )
    return label, toxic_label
