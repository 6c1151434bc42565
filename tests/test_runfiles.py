"""The run-folder contract: paths, and the one JSON Lines reader and writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detoxrl import runfiles
from detoxrl.runfiles import RunPaths, append_jsonl, read_jsonl


def test_paths_of_a_run_folder(tmp_path):
    p = RunPaths(str(tmp_path))
    assert p.root == tmp_path
    assert p.config == tmp_path / "config.yaml"
    assert p.config_changes == tmp_path / "config-changes.jsonl"
    assert p.metrics == tmp_path / "metrics.jsonl"
    assert p.shards == tmp_path / "shards.jsonl"
    assert p.checkpoints == tmp_path / "checkpoints"
    assert p.final == tmp_path / "final"
    assert p.eval == tmp_path / "eval"
    assert p.compare == tmp_path / "eval" / "compare.json"
    assert p.report == tmp_path / "report"
    assert [p.eval_records(n).name for n in runfiles.EVAL_PASSES] == [
        "before.jsonl", "after.jsonl", "before-sampled.jsonl", "after-sampled.jsonl"]


def test_writer_round_trip(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 0.5, "text": "é ü"}, {"step": 2, "nested": {"a": [1, 2]}}, "a string", [1, 2]]
    append_jsonl(path, rows[:2])
    append_jsonl(path, rows[2:])
    append_jsonl(path, [])  # nothing to add: the file is unchanged
    lines = read_jsonl(path)
    assert [line.value for line in lines] == rows
    assert [line.lineno for line in lines] == [1, 2, 3, 4]
    assert all(line.ok for line in lines) and not runfiles.torn_last(lines)
    assert path.read_text(encoding="utf-8") == "".join(json.dumps(r) + "\n" for r in rows)
    assert runfiles.lines_text(lines) == path.read_text(encoding="utf-8")


def test_writer_creates_the_file_and_passes_dumps_options(tmp_path):
    path = tmp_path / "new.jsonl"
    append_jsonl(path, [{"t": "é"}], ensure_ascii=False)
    assert path.read_text(encoding="utf-8") == '{"t": "é"}\n'
    with pytest.raises(ValueError):
        append_jsonl(tmp_path / "nan.jsonl", [{"x": float("nan")}], allow_nan=False)


def test_reader_on_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": 1}, {"step": 2}])
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"step": 3, "env/rew')  # a crash mid-append
    lines = read_jsonl(path)
    assert len(lines) == 3 and runfiles.torn_last(lines)
    assert lines[-1].lineno == 3 and lines[-1].text == '{"step": 3, "env/rew'
    assert isinstance(lines[-1].error, json.JSONDecodeError) and lines[-1].value is None
    assert runfiles.valid_values(lines) == [{"step": 1}, {"step": 2}]
    with pytest.raises(json.JSONDecodeError):
        runfiles.strict_values(lines)
    # appending after a torn line keeps the torn line as it was (the reader's caller decides)
    append_jsonl(path, [{"step": 4}])
    assert [line.ok for line in read_jsonl(path)] == [True, True, False]  # the torn text absorbs the new line


def test_reader_on_an_empty_file_and_blank_lines(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert read_jsonl(empty) == []
    assert not runfiles.torn_last([])
    blanks = tmp_path / "blanks.jsonl"
    blanks.write_text('\n  \n{"a": 1}\n\n{"b": 2}\n\n')
    lines = read_jsonl(blanks)
    assert [(line.lineno, line.value) for line in lines] == [(3, {"a": 1}), (5, {"b": 2})]
    with pytest.raises(OSError):
        read_jsonl(tmp_path / "missing.jsonl")


def test_reader_keeps_a_bad_line_in_the_middle_with_its_number():
    lines = runfiles.parse_jsonl('{"a": 1}\nnot json\n{"b": 2}')
    assert [line.ok for line in lines] == [True, False, True]
    assert lines[1].lineno == 2 and not runfiles.torn_last(lines)
    assert runfiles.valid_values(lines) == [{"a": 1}, {"b": 2}]
