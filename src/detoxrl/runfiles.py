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
    RUN/report/                     report.html, report.md           (report)

JSON Lines files are appended to as a run goes, so a crash can leave the last line cut short.
:func:`read_jsonl` never raises on a bad line: it returns each non-blank line with its value or
its parse error, and each caller decides (skip it, drop a torn last line, refuse the file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

CONFIG = "config.yaml"
CONFIG_CHANGES = "config-changes.jsonl"
METRICS = "metrics.jsonl"
SHARDS = "shards.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
EVAL = "eval"
REPORT = "report"
COMPARE = "compare.json"
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
