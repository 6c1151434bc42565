"""The run-folder contract: where each file of a run lives, and the one JSON Lines reader and writer.

A run folder (``--output-dir``)::

    RUN/config.yaml                 resolved configuration           (trainer, sft)
    RUN/config-changes.jsonl        settings changed by a --resume   (trainer, sft)
    RUN/metrics.jsonl               one JSON line per step           (trainer, sft)
    RUN/shards.jsonl                prompts per rollout shard        (trainer, several shards only)
    RUN/checkpoints/step-000005/    checkpoints                      (checkpoint)
    RUN/final/                      the final adapter                (checkpoint)
    RUN/eval/before.jsonl, after.jsonl, before-sampled.jsonl, after-sampled.jsonl
                                    evaluation records               (evaluate)
    RUN/eval/compare.json           headline statistics              (compare)
    RUN/eval/comparison.json, .csv  the paired table                 (compare)
    RUN/eval-checkpoints/step-000010/  a checkpoint evaluated as RUN/eval  (evaluate --checkpoint)
    RUN/report/                     report.html, report.md           (report)

JSON Lines files are appended to as a run goes, so a crash can leave the last line cut short.
:func:`read_jsonl` never raises on a bad line: it returns each non-blank line with its value or
its parse error, and each caller decides (skip it, drop a torn last line, refuse the file).

Typed loaders read the files that the evaluation side shares: :func:`load_config` (``config.yaml``, a
:class:`~detoxrl.config.DetoxConfig`), :func:`load_metrics` (``metrics.jsonl``, :class:`MetricsLog`),
:func:`load_eval_records` (``eval/<pass>.jsonl``, :class:`EvalRecord`), :func:`load_compare`
(``eval/compare.json``, :class:`Headline`), :func:`load_checkpoint_compares` (those of
``eval-checkpoints/``) and :func:`load_comparison_table` (``eval/comparison.json``).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, TypedDict

import yaml

from detoxrl.config import PRESETS, DetoxConfig, apply_mapping
from detoxrl.errors import ConfigError, DataError

CONFIG = "config.yaml"
CONFIG_CHANGES = "config-changes.jsonl"
METRICS = "metrics.jsonl"
SHARDS = "shards.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
EVAL = "eval"
REPORT = "report"
COMPARE = "compare.json"
#: The rows a run trained on and held out (:func:`detoxrl.prompts.split_fingerprint`), written when it starts.
SPLIT = "split.json"
#: ``detoxrl dpo``: its preference pairs (one JSON line each) and what sampling them cost.
PAIRS = "pairs.jsonl"
PAIRS_SUMMARY = "pairs.json"
#: ``RUN/eval-checkpoints/step-000010/``: a checkpoint evaluated against the starting policy
#: (``detoxrl evaluate --run RUN --checkpoint 10``), laid out like ``RUN/eval``.
EVAL_CHECKPOINTS = "eval-checkpoints"
#: The paired table of ``RUN/eval`` (``comparison.csv`` beside it), written by :mod:`detoxrl.compare`.
COMPARISON = "comparison.json"
#: The evaluation passes of ``RUN/eval``: ``<name>.jsonl`` (records) and ``<name>.json`` (summary).
EVAL_PASSES = ("before", "after", "before-sampled", "after-sampled")


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run folder."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def config_changes(self) -> Path:
        return self.root / CONFIG_CHANGES

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def split(self) -> Path:
        return self.root / SPLIT

    @property
    def shards(self) -> Path:
        return self.root / SHARDS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def final(self) -> Path:
        return self.root / FINAL

    @property
    def eval(self) -> Path:
        return self.root / EVAL

    @property
    def compare(self) -> Path:
        return self.root / EVAL / COMPARE

    @property
    def eval_checkpoints(self) -> Path:
        return self.root / EVAL_CHECKPOINTS

    @property
    def comparison(self) -> Path:
        return self.root / EVAL / COMPARISON

    @property
    def report(self) -> Path:
        return self.root / REPORT

    def eval_records(self, name: str) -> Path:
        """``RUN/eval/<name>.jsonl`` (``name``: one of :data:`EVAL_PASSES`)."""
        return self.root / EVAL / f"{name}.jsonl"


# ---------------------------------------------------------------------------------- JSON Lines


@dataclass(frozen=True)
class JsonLine:
    """One non-blank line of a JSON Lines text: its number (from 1), its text, and its value or error."""

    lineno: int
    text: str
    value: Any = None
    error: json.JSONDecodeError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_jsonl(text: str) -> list[JsonLine]:
    """The non-blank lines of ``text``, each parsed; a line that is not JSON carries its error."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(JsonLine(lineno, line, json.loads(line)))
        except json.JSONDecodeError as e:
            out.append(JsonLine(lineno, line, error=e))
    return out


def read_jsonl(path: str | Path, *, encoding: str | None = "utf-8") -> list[JsonLine]:
    """The non-blank lines of the file ``path`` (see :func:`parse_jsonl`). An empty file gives ``[]``;
    a missing one raises :class:`OSError`."""
    return parse_jsonl(Path(path).read_text(encoding=encoding))


def torn_last(lines: list[JsonLine]) -> bool:
    """Whether the last line is unreadable: what a crash during an append leaves."""
    return bool(lines) and not lines[-1].ok


def valid_values(lines: Iterable[JsonLine]) -> list[Any]:
    """The values of the readable lines (unreadable ones, e.g. a torn last line, are left out)."""
    return [line.value for line in lines if line.ok]


def strict_values(lines: Iterable[JsonLine]) -> list[Any]:
    """The values of all lines; the first unreadable one raises its :class:`json.JSONDecodeError`."""
    out = []
    for line in lines:
        if line.error is not None:
            raise line.error
        out.append(line.value)
    return out


def dumps_line(record: Any, **dumps_kwargs: Any) -> str:
    """``record`` as one JSON Lines line (``json.dumps`` options pass through), newline included."""
    return json.dumps(record, **dumps_kwargs) + "\n"


def append_jsonl(path: str | Path, records: Iterable[Any], **dumps_kwargs: Any) -> None:
    """Append each of ``records`` as one line to ``path`` (created when missing)."""
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(dumps_line(record, **dumps_kwargs))


def lines_text(lines: Iterable[JsonLine]) -> str:
    """The text of a JSON Lines file holding ``lines`` as they were read (to rewrite a file with some kept)."""
    return "".join(line.text + "\n" for line in lines)


# ------------------------------------------------------------------------------- typed loaders


class EvalRecord(TypedDict, total=False):
    """One line of ``RUN/eval/<pass>.jsonl``: one generated summary, scored (written by :mod:`detoxrl.evaluate`).

    ``index``, ``sample``, ``response``, ``reward`` and ``toxicity`` are always there
    (:data:`EVAL_REQUIRED_KEYS`); a value that was not measured is None or absent."""

    index: int
    sample: int
    id: str | None
    prompt: str
    dialogue: str
    reference: str | None
    response: str
    length_tokens: int
    decoding: str  # greedy | sampled
    reward: float
    score_logit: float
    toxicity: float
    judge_toxicity: float | None  # the first judge's
    judges: dict[str, float]  # every judge by its spec
    rouge1: float | None
    rouge2: float | None
    rougeL: float | None
    faithfulness: float | None
    kl_k1: float | None  # sampled passes only (None in greedy records since 2026-12-07)
    kl_k3: float | None
    signature: dict[str, Any]


#: The keys every evaluation record has; a line without one of them is not a record of detoxrl.
EVAL_REQUIRED_KEYS = ("index", "sample", "response", "reward", "toxicity")


class ComparisonRow(TypedDict, total=False):
    """One row of ``RUN/eval/comparison.json``: a before/after pair (:func:`detoxrl.compare.comparison_table`)."""

    query: str
    response_before: str
    response_after: str
    reward_before: float
    reward_after: float
    reward_diff: float
    toxicity_before: float | None
    toxicity_after: float | None
    judge_toxicity_before: float | None
    judge_toxicity_after: float | None
    index: int
    sample: int
    id: str | None


class Headline(TypedDict, total=False):
    """``RUN/eval/compare.json``: the before/after measures of :func:`detoxrl.compare.headline`.

    The blocks are mappings as compare writes them (summaries ``{"n", "mean", "std", ...}``, reductions
    ``{"reduction", "low", "high", "n"}``, differences ``{"diff", "low", "high", "n"}``); a measure that
    was not evaluated is None. A compare.json from an older detoxrl may lack keys or name them otherwise."""

    n: int
    prompts: int
    samples_per_prompt: int | None
    bootstrap: dict[str, Any]  # n_boot, seed, ci, resampled
    decoding: str
    toxicity: dict[str, Any] | None  # before, after, reduction, percentage_improvement[, expected_max, prob_any_toxic]
    judge_toxicity: dict[str, Any] | None  # the first judge, as toxicity
    judges: dict[str, dict[str, Any] | None]  # every judge by its spec, as toxicity
    reward: dict[str, Any] | None  # before, after, diff
    rouge: dict[str, dict[str, Any] | None] | None  # per ROUGE key, in points: before, after, diff
    faithfulness: dict[str, Any] | None
    length_tokens: dict[str, Any] | None
    kl_to_reference: dict[str, Any] | None
    distinct_summaries_per_100: dict[str, float | None]
    sampled: Headline | None  # the sampled pass's headline (compare_run)
    detoxification: dict[str, Any]  # status, text, reductions, increases (compare_run)
    verdict: str


@dataclass(frozen=True)
class JsonObjects:
    """The JSON objects of a JSON Lines file, in file order, and its lines that are not one (unreadable
    text, such as a last line cut short by a crash, or a value that is not an object), left out."""

    rows: list[dict[str, Any]]
    bad_lines: tuple[JsonLine, ...] = ()


@dataclass(frozen=True)
class EvalRecords(JsonObjects):
    """The records of an evaluation pass (``rows``: :class:`EvalRecord` mappings)."""

    rows: list[EvalRecord]  # type: ignore[assignment]


def _objects(lines: list[JsonLine]) -> tuple[list[dict[str, Any]], tuple[JsonLine, ...]]:
    rows = [line.value for line in lines if line.ok and isinstance(line.value, dict)]
    return rows, tuple(line for line in lines if not (line.ok and isinstance(line.value, dict)))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class MetricsLog(JsonObjects):
    """``metrics.jsonl``: one mapping of metric name (``env/reward_mean``, ``time/step_s``, ...) to value per step."""

    def values(self, key: str) -> list[float] | None:
        """``key`` per step, NaN where a step has no number for it; None when no step has a finite one."""
        values = [float(row[key]) if _is_number(row.get(key)) else math.nan for row in self.rows]
        return values if any(math.isfinite(v) for v in values) else None

    def steps(self) -> list[float]:
        """The ``step`` of each row; 1, 2, ... when a row lacks a number for it."""
        steps = [row.get("step") for row in self.rows]
        if all(_is_number(s) for s in steps):
            return [float(s) for s in steps]  # type: ignore[arg-type]
        return [float(i) for i in range(1, len(self.rows) + 1)]


def load_metrics(path: str | Path) -> MetricsLog:
    """The steps of ``metrics.jsonl``; unreadable lines (a torn last line) are left out and kept in
    ``bad_lines``. A missing file raises :class:`OSError`."""
    return MetricsLog(*_objects(read_jsonl(path)))


def load_config(path: str | Path) -> tuple[DetoxConfig, list[str]] | None:
    """A run's ``config.yaml`` as a :class:`DetoxConfig`, to show the settings a run was made with: the
    preset it names, then its settings, so that defaults fill in what an older run did not record.

    Not validated (a run made under older rules still shows), and lenient: a setting this detoxrl does
    not know (renamed since) or cannot read is left out, and its error returned with the config. None when
    the file is not a mapping; an unreadable file raises :class:`OSError` or :class:`yaml.YAMLError`."""
    mapping = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(mapping, dict):
        return None
    preset = mapping.get("preset")
    cfg = DetoxConfig(preset=str(preset)) if preset else DetoxConfig()
    if cfg.preset in PRESETS:
        cfg = apply_mapping(cfg, PRESETS[cfg.preset])
    problems = []
    for section, values in mapping.items():
        items = values.items() if isinstance(values, dict) else [(None, values)]
        for key, value in items:
            try:
                cfg = apply_mapping(cfg, {section: value if key is None else {key: value}})
            except ConfigError as exc:
                problems.append(str(exc))
    return cfg, problems


def load_eval_records(path: str | Path, *, strict: bool = False) -> EvalRecords:
    """The records of an evaluation JSON Lines file, in file order.

    ``strict=False`` (to show a run as it is): lines that are not a JSON object are left out and kept in
    ``bad_lines``. ``strict=True`` (to compare): since evaluations append incrementally, an unreadable
    *last* line (an interrupted write) is dropped with a warning; an unreadable line elsewhere, or a
    record lacking one of :data:`EVAL_REQUIRED_KEYS`, is a :class:`DataError`. A missing file is a
    :class:`DataError` either way."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no evaluation records at {path}: run the evaluation first (it writes RUN/eval/<name>.jsonl)")
    lines = read_jsonl(path)
    if not strict:
        return EvalRecords(*_objects(lines))
    records: list[EvalRecord] = []
    for pos, line in enumerate(lines):
        lineno, rec = line.lineno, line.value
        if line.error is not None:
            if pos == len(lines) - 1:
                warnings.warn(f"{path}:{lineno}: incomplete last record (an interrupted evaluation?) skipped")
                return EvalRecords(records, (line,))
            raise DataError(
                f"{path}:{lineno} is not valid JSON ({line.error.msg}): re-run the evaluation"
            ) from line.error
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno} is not a JSON object: re-run the evaluation")
        missing = [k for k in EVAL_REQUIRED_KEYS if k not in rec]
        if missing:
            raise DataError(f"{path}:{lineno} lacks {', '.join(missing)}: not an evaluation record of detoxrl")
        records.append(rec)  # type: ignore[arg-type]
    return EvalRecords(records)


def load_compare(path: str | Path) -> Headline | None:
    """``compare.json``: its headline, or None when it is not a JSON object. Unreadable: :class:`OSError`
    or :class:`json.JSONDecodeError`."""
    value = json.loads(Path(path).read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else None  # type: ignore[return-value]


def load_eval_summary(path: str | Path) -> dict[str, Any] | None:
    """An evaluation pass's summary (``RUN/eval/after.json``...: its n, prompts, decoding, max_new_tokens,
    samples_per_prompt, judge models), or None when it is missing or unreadable."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def load_checkpoint_compares(run_dir: str | Path) -> dict[int, Headline]:
    """``{step: compare.json}`` of every checkpoint evaluation of a run (``RUN/eval-checkpoints/step-N``),
    by step; a folder without a readable compare.json is left out."""
    out: dict[int, Headline] = {}
    root = RunPaths(run_dir).eval_checkpoints
    for folder in sorted(root.glob("step-*")) if root.is_dir() else []:
        match = re.fullmatch(r"step-(\d+)", folder.name)
        try:
            head = load_compare(folder / COMPARE) if match else None
        except (OSError, ValueError):
            head = None
        if head is not None:
            out[int(match.group(1))] = head
    return out


def load_comparison_table(path: str | Path) -> list[ComparisonRow] | None:
    """``comparison.json``: its rows (entries that are not objects left out), or None when it is not a
    list. Unreadable: :class:`OSError` or :class:`json.JSONDecodeError`."""
    value = json.loads(Path(path).read_text(encoding="utf-8"))
    return [row for row in value if isinstance(row, dict)] if isinstance(value, list) else None


def kind_of(rows: list[dict[str, Any]]) -> str:
    """Which command wrote a run, from its metrics lines: ``sft`` (``sft/loss``), ``dpo`` (``dpo/loss``), else
    ``ppo`` (train, whatever its algorithm)."""
    first = rows[0] if rows and isinstance(rows[0], dict) else {}
    return "sft" if "sft/loss" in first else "dpo" if "dpo/loss" in first else "ppo"


def load_split(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN/split.json`` (None for a run written before detoxrl pinned its split, or an unreadable file)."""
    try:
        value = json.loads(RunPaths(run_dir).split.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: str | Path, value: Any) -> None:
    """``value`` as indented UTF-8 JSON (no NaN: a measure that is undefined is null), newline-terminated."""
    Path(path).write_text(json.dumps(value, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
