"""Summaries of new dialogues: ``detoxrl summarize``, how a trained model gets used.

Input (:func:`read_input`): a CSV, JSON Lines, JSON or Parquet file (the dialogue column is
``data.dialogue_column``, ``--column``; an ``id`` column is kept), or stdin: JSON Lines (one object per
line with the dialogue column, or one JSON string per line), or else plain text, dialogues separated
by a blank line.

The prompts are made by :func:`detoxrl.prompts.prompt_examples` (the template of training) and the
summaries by :func:`detoxrl.rollout.generate` (batched, KV cache), greedy unless sampling is asked
for; toxicity comes from the reward model's and the judges' scorers (:mod:`detoxrl.rewards`).
Records are written as they are made, JSON Lines or CSV (:class:`RecordWriter`).
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from detoxrl import runfiles
from detoxrl.config import GenerationConfig
from detoxrl.errors import DataError, DetoxError
from detoxrl.prompts import PromptExample

FORMATS = ("jsonl", "csv")


def read_input(source: str | None, data_cfg, stdin: IO[str] | None = None) -> list[dict]:
    """Rows ``{"id", "dialogue", "summary"}`` from a file (``source``) or, for None or ``-``, stdin."""
    if source not in (None, "-"):
        from dataclasses import replace

        from detoxrl.prompts import load_dialogue_rows

        return load_dialogue_rows(replace(data_cfg, source=str(source)))
    stream = stdin if stdin is not None else sys.stdin
    try:
        text = stream.read()
        text.encode("utf-8")  # undecodable bytes read as surrogates cannot be encoded: binary input
    except UnicodeError:
        text = "\x00"
    if "\x00" in text:
        raise DataError("stdin is not text (binary data, or not UTF-8); pipe in UTF-8 text: JSON Lines or dialogues "
                        "separated by a blank line")
    rows = parse_stdin(text, data_cfg.dialogue_column)
    if not rows:
        raise DataError("stdin holds no dialogue; pipe in JSON Lines ({\"dialogue\": \"...\"} per line) or plain text "
                        "(dialogues separated by a blank line), or pass a file")
    return rows


def parse_stdin(text: str, column: str = "dialogue") -> list[dict]:
    """JSON Lines when the first non-blank line is a JSON object or string, else plain text with the
    dialogues separated by blank lines (the turns of one dialogue are consecutive lines)."""
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    if first[:1] in ("{", '"') and runfiles.parse_jsonl(first)[0].ok:
        return _json_lines(lines, column)
    blocks, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line.rstrip())
        elif current:
            blocks.append("\n".join(current))
            current = []
    return [{"id": f"row_{i}", "dialogue": block, "summary": None} for i, block in enumerate(blocks)]


def _json_lines(lines: list[str], column: str) -> list[dict]:
    rows = []
    for line in runfiles.parse_jsonl("\n".join(lines)):
        n, value = line.lineno, line.value
        if line.error is not None:
            raise DataError(f"stdin line {n} is not valid JSON ({line.error.msg}); send one JSON object or string per line") from None
        if isinstance(value, str):
            dialogue, row_id = value, None
        elif isinstance(value, dict) and isinstance(value.get(column), str):
            dialogue, row_id = value[column], value.get("id")
        elif isinstance(value, dict):
            raise DataError(
                f"stdin line {n} has no text field '{column}' (fields: {', '.join(value) or 'none'}); "
                "name the dialogue field with --column NAME"
            )
        else:
            raise DataError(f"stdin line {n} is a JSON {type(value).__name__}; send one JSON object or string per line")
        rows.append({"id": str(row_id) if row_id not in (None, "") else f"row_{len(rows)}", "dialogue": dialogue, "summary": None})
    return rows


@dataclass
class Decoding:
    """How summaries are decoded: greedy by default."""

    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16

    def validate(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise DetoxError(f"--max-new-tokens and --batch-size must be >= 1, got {self.max_new_tokens} and {self.batch_size}")
        if not (self.temperature > 0 and self.temperature < float("inf")):
            raise DetoxError(f"--temperature must be a finite number > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise DetoxError(f"--top-p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise DetoxError(f"--top-k must be >= 0 (0: no limit), got {self.top_k}")
        if not self.do_sample and (self.temperature != 1.0 or self.top_k or self.top_p != 1.0):
            raise DetoxError("--temperature, --top-k and --top-p apply to sampling; add --do-sample (decoding is greedy without it)")

    def generation(self) -> GenerationConfig:
        """The decoding settings as :func:`detoxrl.rollout.generate` reads them (no minimum length)."""
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, temperature=self.temperature,
            top_k=self.top_k, top_p=self.top_p,
        )


def output_format(path: str | None, given: str | None) -> str:
    """``--format``, else the ``--output`` file's extension (``.csv``: CSV), else JSON Lines."""
    if given:
        return given
    return "csv" if path and Path(path).suffix.lower() == ".csv" else "jsonl"


class RecordWriter:
    """JSON Lines or CSV records to a stream; CSV columns are fixed by the first record (judges flattened
    as ``judge:SPEC``)."""

    def __init__(self, stream: IO[str], fmt: str):
        self.stream, self.fmt = stream, fmt
        self.csv: csv.DictWriter | None = None

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            flat = {k: v for k, v in record.items() if k != "judges"}
            flat.update({f"judge:{spec}": v for spec, v in (record.get("judges") or {}).items()})
            if self.csv is None:
                self.csv = csv.DictWriter(self.stream, fieldnames=list(flat), lineterminator="\n")
                self.csv.writeheader()
            self.csv.writerow(flat)
        self.stream.flush()


def summarize(
    policy,
    examples: list[PromptExample],
    decoding: Decoding,
    *,
    scorer=None,
    judges: dict | None = None,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield one record per example, in input order: ``{"id", "dialogue", "summary", "ended"}`` plus,
    with ``scorer``, ``toxicity`` (the reward model's P(toxic)) and ``judges`` (``{spec: P(toxic)}``).

    Prompts go to :func:`detoxrl.rollout.generate` in chunks of several batches (it sorts each chunk by
    length); with sampling, each chunk's seed is ``decoding.seed`` plus its first row, so a rerun with
    the same input and settings writes the same summaries."""
    from detoxrl.rollout import generate

    judges = judges or {}
    chunk = decoding.batch_size * 8
    bar = tqdm(total=len(examples), desc="summarize", unit="dialogue", file=sys.stderr,
               disable=not progress or len(examples) <= decoding.batch_size)
    try:
        for start in range(0, len(examples), chunk):
            exs = examples[start : start + chunk]
            torch.manual_seed(decoding.seed + start)
            prompts, queries = [e.input_ids for e in exs], [e.prompt for e in exs]
            rollout = generate(policy, prompts, queries, decoding.generation(), batch_size=decoding.batch_size)
            toxicity = scorer.score(rollout.responses).toxicity.tolist() if scorer is not None else None
            judged = {spec: j.score(rollout.responses).toxicity.tolist() for spec, j in judges.items()}
            for i, e in enumerate(exs):
                record: dict[str, Any] = {"id": e.id, "dialogue": e.dialogue, "summary": rollout.responses[i],
                                          "ended": bool(rollout.ended[i])}
                if scorer is not None:
                    record["toxicity"] = float(toxicity[i])
                    record["judges"] = {spec: float(values[i]) for spec, values in judged.items()}
                yield record
            bar.update(len(exs))
    finally:
        bar.close()


def open_output(path: str | None, *, overwrite: bool) -> tuple[IO[str], Path | None]:
    """The stream records go to: stdout, or ``path.partial`` (renamed to ``path`` by :func:`finish_output`).

    An existing ``path`` is refused unless ``overwrite`` (checked before any model loads)."""
    if path is None or path == "-":
        return sys.stdout, None
    out = Path(path).expanduser()
    check_output_file(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    return open(partial, "w", encoding="utf-8", newline=""), partial


def check_output_file(out: Path, *, overwrite: bool) -> None:
    from detoxrl.runfolder import check_writable_dir

    if out.is_dir():
        raise DetoxError(f"--output '{out}' is a folder; pass a file (.jsonl or .csv)")
    check_writable_dir(out.parent, "--output")
    if out.exists() and not overwrite:
        raise DetoxError(f"--output '{out}' already exists; pass --overwrite to replace it, or choose another file")


def finish_output(stream: IO[str], partial: Path | None, path: str | None) -> None:
    if partial is None:
        stream.flush()
        return
    stream.close()
    partial.replace(Path(path).expanduser())


def write_records(records: Iterable[dict], path: str | None, fmt: str, *, overwrite: bool) -> None:
    """Each record as it comes, to stdout or to ``path`` (through ``path.partial``, renamed at the end: an
    interrupted run leaves no half-written file, and its partial file is removed)."""
    stream, partial = open_output(path, overwrite=overwrite)
    writer = RecordWriter(stream, fmt)
    try:
        for record in records:
            writer.write(record)
    except BaseException:
        if partial is not None:
            stream.close()
            partial.unlink(missing_ok=True)
        raise
    finish_output(stream, partial, path)
