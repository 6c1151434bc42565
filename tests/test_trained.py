"""detoxrl.trained: one resolver from a run folder, an adapter folder or an export to the weights and the
settings they were trained with; the base model an adapter goes on."""

import json
from pathlib import Path

import pytest

from detoxrl.errors import DetoxError
from detoxrl.trained import ADAPTER, MERGED, RUN, RUN_CONFIG, base_model_of, find_run, resolve_trained


def adapter(folder: Path, base: str | None = "some/base") -> Path:
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA"} | ({"base_model_name_or_path": base} if base is not None else {})
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(b"")  # resolving reads no weights
    return folder


def run(folder: Path, *, finished: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("run:\n  seed: 0\n")
    (folder / "metrics.jsonl").write_text("")
    if finished:
        adapter(folder / "final")
    adapter(folder / "checkpoints" / "step-000005")
    return folder


def test_a_run_folder_is_its_final_adapter_with_its_settings(tmp_path):
    r = run(tmp_path / "r")
    got = resolve_trained(r)
    assert (got.kind, got.adapter_dir, got.run_dir, got.config_file, got.model_dir) == (
        RUN, r / "final", r, r / "config.yaml", None)


def test_an_adapter_of_a_run_carries_the_runs_settings(tmp_path):
    r = run(tmp_path / "r")
    for folder in (r / "final", r / "checkpoints" / "step-000005"):
        got = resolve_trained(folder, accept=(ADAPTER,))
        assert (got.kind, got.adapter_dir, got.run_dir.resolve(), got.config_file) == (
            ADAPTER, folder, r.resolve(), (r / "config.yaml").resolve())
        assert find_run(folder) == r.resolve()


def test_an_export_carries_its_own_settings_and_a_bare_adapter_none(tmp_path):
    exported = adapter(tmp_path / "exported")
    (exported / RUN_CONFIG).write_text("run:\n  seed: 3\n")
    got = resolve_trained(exported, accept=(ADAPTER,))
    assert (got.run_dir, got.config_file) == (None, exported / RUN_CONFIG)
    bare = resolve_trained(adapter(tmp_path / "bare"), accept=(ADAPTER,))
    assert (bare.run_dir, bare.config_file) == (None, None)


def test_a_merged_export_is_a_model_folder(tmp_path):
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    (merged / RUN_CONFIG).write_text("run:\n  seed: 3\n")
    got = resolve_trained(merged, accept=(MERGED,))
    assert (got.kind, got.model_dir, got.adapter_dir, got.config_file) == (MERGED, merged, None, merged / RUN_CONFIG)


@pytest.mark.parametrize("case, expected", [
    ("missing", "--run 'X' does not exist; pass a train run folder (the --output-dir of detoxrl train"),
    ("file", "--run 'X' is a file; pass a train run folder"),
    ("empty", "--run 'X' is not a train run folder"),
    ("unfinished", "run 'X' has no final/ adapter (it has not finished training); finish it with detoxrl train --resume"),
    ("adapter", "--run 'X' is not a train run folder"),  # an adapter where a run is asked for
])
def test_what_is_not_the_kind_asked_for_is_one_line_that_says_what_is(tmp_path, case, expected):
    where = tmp_path / case
    if case == "file":
        where.write_text("")
    elif case == "empty":
        where.mkdir()
    elif case == "unfinished":
        run(where, finished=False)
    elif case == "adapter":
        adapter(where)
    with pytest.raises(DetoxError) as e:
        resolve_trained(where, accept=(RUN,), flag="--run")
    assert str(e.value).replace(str(where), "X").startswith(expected), str(e.value)
    assert "\n" not in str(e.value)


def test_the_base_model_is_the_one_given_else_the_adapters_own(tmp_path):
    local_base = tmp_path / "base"
    local_base.mkdir()
    a = adapter(tmp_path / "a", base=str(local_base))
    assert base_model_of(a) == str(local_base)
    assert base_model_of(a, "packaged:smollm2-135m-instruct") == "packaged:smollm2-135m-instruct"
    assert base_model_of(adapter(tmp_path / "hub", base="google/flan-t5-base")) == "google/flan-t5-base"
    with pytest.raises(DetoxError, match="does not name its base model .* pass it with --policy"):
        base_model_of(adapter(tmp_path / "none", base=None))
    with pytest.raises(DetoxError, match="does not exist here; pass the base model .* with --policy"):
        base_model_of(adapter(tmp_path / "gone", base=str(tmp_path / "nowhere")))
