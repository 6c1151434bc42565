"""The run-folder contract: paths, and the one JSON Lines reader and writer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from detoxrl import runfiles
from detoxrl.errors import DataError
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


# ------------------------------------------------------------------------------- typed loaders


def test_load_metrics_skips_a_torn_line_and_gives_series(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": 1, "loss": 0.5}, {"step": 2}, {"step": 3, "loss": float("inf")}])
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"step": 4, "lo')
    log = runfiles.load_metrics(path)
    assert [row["step"] for row in log.rows] == [1, 2, 3] and len(log.bad_lines) == 1
    values = log.values("loss")
    assert values[0] == 0.5 and math.isnan(values[1]) and values[2] == math.inf
    assert log.values("absent") is None and log.steps() == [1.0, 2.0, 3.0]
    assert runfiles.MetricsLog([{"loss": 1.0}, {"step": 7}]).steps() == [1.0, 2.0]  # a step without its number
    with pytest.raises(OSError):
        runfiles.load_metrics(tmp_path / "missing.jsonl")


def test_load_eval_records_tolerant_and_strict(tmp_path):
    rec = {"index": 0, "sample": 0, "response": "a", "reward": 1.0, "toxicity": 0.1}
    path = tmp_path / "before.jsonl"
    path.write_text(json.dumps(rec) + "\nnot json\n" + json.dumps({**rec, "index": 1}) + "\n[1]\n", encoding="utf-8")
    loaded = runfiles.load_eval_records(path)
    assert [r["index"] for r in loaded.rows] == [0, 1] and [line.lineno for line in loaded.bad_lines] == [2, 4]
    with pytest.raises(DataError, match="before.jsonl:2 is not valid JSON"):
        runfiles.load_eval_records(path, strict=True)
    path.write_text(json.dumps(rec) + '\n{"index": 1, "sam', encoding="utf-8")
    with pytest.warns(UserWarning, match="incomplete last record"):
        loaded = runfiles.load_eval_records(path, strict=True)
    assert loaded.rows == [rec] and len(loaded.bad_lines) == 1
    path.write_text(json.dumps({"index": 0}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="lacks sample, response, reward, toxicity"):
        runfiles.load_eval_records(path, strict=True)
    with pytest.raises(DataError, match="no evaluation records at"):
        runfiles.load_eval_records(tmp_path / "after.jsonl")


def test_compare_json_and_table_round_trip(tmp_path):
    head = {"n": 2, "verdict": "less toxic: é", "toxicity": None}
    runfiles.write_json(tmp_path / "compare.json", head)
    assert runfiles.load_compare(tmp_path / "compare.json") == head
    assert (tmp_path / "compare.json").read_text(encoding="utf-8").endswith("}\n")
    with pytest.raises(ValueError):
        runfiles.write_json(tmp_path / "nan.json", {"x": float("nan")})
    (tmp_path / "list.json").write_text('[{"reward_diff": 1.0}, 3, null]', encoding="utf-8")
    assert runfiles.load_compare(tmp_path / "list.json") is None
    assert runfiles.load_comparison_table(tmp_path / "list.json") == [{"reward_diff": 1.0}]
    assert runfiles.load_comparison_table(tmp_path / "compare.json") is None
    (tmp_path / "torn.json").write_text('{"n": 2', encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        runfiles.load_compare(tmp_path / "torn.json")


def test_load_config_fills_defaults_and_leaves_out_what_it_does_not_know(tmp_path):
    """An older run's config.yaml: the preset and the defaults fill in the settings it did not record;
    a setting renamed since is left out with its error, the rest is kept."""
    from detoxrl.config import PRESETS, DetoxConfig

    path = tmp_path / "config.yaml"
    path.write_text("preset: seed\nppo:\n  steps: 7\n  stepz: 3\npolicy:\n  lora_r: eight\nbogus: 1\n"
                    "evaluation:\n  judge_model: packaged:profanity-check\n", encoding="utf-8")
    cfg, problems = runfiles.load_config(path)
    assert isinstance(cfg, DetoxConfig) and cfg.preset == "seed"
    assert cfg.ppo.steps == 7 and cfg.ppo.batch_size == PRESETS["seed"]["ppo"]["batch_size"]
    assert cfg.policy.lora_r == DetoxConfig().policy.lora_r and cfg.generation.top_p == 1.0  # defaults
    assert cfg.evaluation.judge_model == ["packaged:profanity-check"]
    assert len(problems) == 3
    assert "ppo.stepz" in problems[0] and "policy.lora_r" in problems[1] and "bogus" in problems[2]
    path.write_text("- a list\n", encoding="utf-8")
    assert runfiles.load_config(path) is None
    path.write_text("ppo: [unclosed\n", encoding="utf-8")
    with pytest.raises(yaml.YAMLError):
        runfiles.load_config(path)
