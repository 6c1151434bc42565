"""Challenging prompts: keep the dialogues whose own toxicity reaches a threshold.

Most dialogues give PPO nothing toxic to unlearn (SmolLM2's DialogSum summaries average P(toxic)
0.012); toxicity lives in a minority of heated dialogues. ``data.min_dialogue_toxicity`` keeps only
the dialogues that a classifier (``data.selection_scorer``) scores at or above the threshold:

- ``reward``: the reward model; ``judge``: the first independent judge; ``max`` (default): the
  larger of the two for each dialogue;
- or any scorer spec: ``packaged:hatesonar``, a hub id or folder (``MODEL#TOXIC_LABEL`` names the
  toxic label), ``python:module:function``.

The selection runs after the unshuffled split, within each part (:func:`detoxrl.prompts.split_rows`),
so the held-out challenging prompts are the challenging part of the held-out split: nothing leaks and
the split stays what it was. Scores are cached per data source and scorer under
``DETOXRL_CACHE/selection/`` (default ``~/.cache/detoxrl``), keyed by a hash of each dialogue, so a
second run does not rescore and a changed file rescores exactly the dialogues that changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

from detoxrl.config import DetoxConfig
from detoxrl.errors import ConfigError
from detoxrl.modelcheck import JUDGE, REWARD, SELECTION, Role

logger = logging.getLogger(__name__)

SELECTION_MODES = ("reward", "judge", "max")

#: ``dialogues -> toxicity in [0, 1]``, one value per dialogue.
DialogueToxicity = Callable[[Sequence[str]], list[float]]


def scorer_specs(cfg: DetoxConfig, reward_labels: tuple[str, str] | None = None) -> list[tuple[str, str, str]]:
    """The ``(model, reward label, toxic label)`` of each classifier whose maximum is a dialogue's
    toxicity. Labels are checked from the models' configs alone (no weights load); ``reward_labels``:
    the reward model's, already checked (the preflight's), so they are not checked again."""
    from detoxrl.rewards import check_judge, check_reward_labels, parse_judge_spec

    mode = cfg.data.selection_scorer.strip()
    judges = cfg.evaluation.judge_model or []

    def reward() -> tuple[str, str, str]:
        if reward_labels is not None:
            return (cfg.reward.model, *reward_labels)
        label, toxic = check_reward_labels(cfg.reward.model, cfg.reward.label, cfg.reward.toxic_label, cfg.reward.trust_remote_code)
        return cfg.reward.model, label, toxic

    def judge(spec: str) -> tuple[str, str, str]:
        label, toxic = check_judge(spec, cfg.evaluation.judge_toxic_label if spec in judges else None,
                                   cfg.evaluation.judge_trust_remote_code, JUDGE if spec in judges else SELECTION)
        return parse_judge_spec(spec)[0], label, toxic

    if mode == "reward":
        return [reward()]
    if mode in ("judge", "max"):
        if not judges:
            if mode == "judge":
                raise ConfigError(
                    "data.selection_scorer=judge but no judge is configured (evaluation.judge_model); "
                    "set a judge, or use data.selection_scorer=reward"
                )
            return [reward()]
        return [reward(), judge(judges[0])] if mode == "max" else [judge(judges[0])]
    if mode.startswith("packaged:") or mode.startswith("python:") or "/" in mode or Path(mode).exists():
        return [judge(mode)]
    raise ConfigError(
        f"unknown data.selection_scorer '{mode}'; use reward, judge, max, or a scorer: packaged:hatesonar, "
        "packaged:profanity-check, packaged:toxic-comment-classifier, a hub id or model folder (MODEL#TOXIC_LABEL)"
    )


def cache_dir() -> Path:
    from detoxrl.policy import cache_root

    return cache_root() / "selection"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _cache_file(source_key: str, scorer_key: str) -> Path:
    name = hashlib.sha256(f"{source_key}\n{scorer_key}".encode()).hexdigest()[:24]
    return cache_dir() / f"{name}.json"


def source_key(cfg: DetoxConfig) -> str:
    """What identifies the data: its resolved location, split and dialogue column."""
    d = cfg.data
    src = d.source.strip()
    path = Path(src).expanduser()
    where = str(path.resolve()) if path.exists() else src
    return f"{where}|split={d.split}|column={d.dialogue_column}"


class CachedDialogueToxicity:
    """``dialogues -> toxicity``: the maximum over the selection scorers, cached on disk.

    The cache file of a (source, scorer) pair maps a hash of each dialogue to its score. On a call,
    the dialogues without a cached score are scored (the scorers load only then), and the file is
    rewritten atomically with the scores of exactly the dialogues of this call: dialogues that left
    the file are forgotten, changed ones are rescored.
    """

    def __init__(self, cfg: DetoxConfig, specs: list[tuple[str, str, str]] | None = None, *,
                 scorers: Sequence | None = None, cache: bool = True):
        self.cfg = cfg
        self.specs = specs if specs is not None else scorer_specs(cfg)
        self._scorers = list(scorers) if scorers is not None else None
        self.cache = cache
        self.scorer_key = " max ".join(f"{m}[{lab}|{tox}]" for m, lab, tox in self.specs)
        self.path = _cache_file(source_key(cfg), self.scorer_key)
        self.scored_last_call = 0  # how many dialogues the last call had to score (0: all from the cache)

    def _build_scorers(self):
        from detoxrl.rewards import build_scorer

        if self._scorers is None:
            self._scorers = []
            for m, lab, tox in self.specs:
                role = _role_of(self.cfg, m)
                self._scorers.append(
                    build_scorer(m, lab, tox, batch_size=max(self.cfg.reward.batch_size, 64), max_length=self.cfg.reward.max_length,
                                 trust_remote_code=role.trusts_remote_code(self.cfg), role=role)
                )
        return self._scorers

    def _read_cache(self) -> dict[str, float]:
        if not self.cache or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
            if data.get("scorer") != self.scorer_key:
                return {}
            return {str(k): float(v) for k, v in data["scores"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            logger.warning("selection cache %s is unreadable; rescoring", self.path)
            return {}

    def _write_cache(self, scores: dict[str, float]) -> None:
        if not self.cache:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"source": source_key(self.cfg), "scorer": self.scorer_key, "scores": scores}))
            os.replace(tmp, self.path)
        except OSError as e:  # a read-only home: selection still works, only slower next time
            logger.warning("cannot write the selection cache %s (%s); scores will be recomputed next time", self.path, e)

    def __call__(self, dialogues: Sequence[str]) -> list[float]:
        keys = [_digest(d) for d in dialogues]
        cached = self._read_cache()
        missing = sorted({k: d for k, d in zip(keys, dialogues) if k not in cached}.items())
        self.scored_last_call = len(missing)
        if missing:
            texts = [d for _, d in missing]
            progress = self.cfg.run.progress and len(texts) > 256
            per_scorer = [s.score(texts, progress=progress).toxicity.tolist() for s in self._build_scorers()]
            for j, (k, _) in enumerate(missing):
                cached[k] = float(max(values[j] for values in per_scorer))
        kept = {k: cached[k] for k in keys}
        if missing or len(kept) != len(cached):
            self._write_cache(kept)
        return [kept[k] for k in keys]


def _role_of(cfg: DetoxConfig, model: str) -> Role:
    """The role under which a selection scorer loads (and whose trust_remote_code it follows): the
    reward model's, a judge's, or that of a classifier named in data.selection_scorer alone."""
    from detoxrl.rewards import parse_judge_spec

    if model == cfg.reward.model:
        return REWARD
    judges = [parse_judge_spec(spec)[0] for spec in cfg.evaluation.judge_model or []]
    return JUDGE if model in judges else SELECTION


def dialogue_toxicity_for(cfg: DetoxConfig, reward_labels: tuple[str, str] | None = None) -> DialogueToxicity | None:
    """The selection's scoring function for ``cfg``, or None when no selection is configured
    (``reward_labels``: the reward model's labels, already checked; see :func:`scorer_specs`)."""
    if cfg.data.min_dialogue_toxicity is None:
        return None
    return CachedDialogueToxicity(cfg, scorer_specs(cfg, reward_labels))
