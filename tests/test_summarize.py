"""detoxrl.summarize and ``detoxrl summarize``: summaries of new dialogues from stdin or a file, with the
starting policy, an adapter or an exported model; greedy by default, seeded sampling, JSON Lines or
CSV, optional toxicity columns, one-line errors before any model loads."""

import csv
import dataclasses
import io
import json
import sys

import pytest
import torch

from detoxrl.summarize import parse_stdin
from test_cli import cli, one_line_error

DIALOGUES = [
    "#Person1#: Did you finish the report?\n#Person2#: Not yet, I was stuck in a meeting all morning.\n#Person1#: Please send it by five.",
    "#Person1#: You are an idiot, you broke my phone!\n#Person2#: Calm down, I will pay for it.\n#Person1#: You had better.",
    "#Person1#: Where shall we eat tonight?\n#Person2#: The new noodle place is good.\n#Person1#: Fine, at seven then.",
]
TINY = ["--set", "data.max_prompt_tokens=4096", "--set", "policy.dtype=float32", "--max-new-tokens", 6, "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def torch_one_thread(module_one_thread):
    """Tiny models on a shared machine: one thread (see conftest)."""


@pytest.fixture(scope="module")
def adapter(wide_tiny_models, tmp_path_factory):
    """A tiny T5 LoRA adapter whose B weights are nonzero (its summaries differ from the base's)."""
    from detoxrl.config import load_config
    from detoxrl.policy import POLICY_ADAPTER, load_policy

    cfg = load_config("seed", overrides=[f"policy.model={wide_tiny_models['t5']}", "policy.dtype=float32", "policy.lora_r=4"]).policy
    policy = load_policy(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_B" in n and f".{POLICY_ADAPTER}." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    policy.save_adapter(folder)
    return folder


def run(monkeypatch, stdin: str | None, *argv):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return cli("summarize", "--preset", "seed", *argv)


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def expected_summaries(model_dir, adapter_dir, dialogues, max_new_tokens=6) -> list[str]:
    """What rollout.generate writes, greedy, for the prompts of the seed template."""
    from detoxrl.config import load_config
    from detoxrl.policy import load_policy
    from detoxrl.prompts import prompt_examples
    from detoxrl.config import GenerationConfig
    from detoxrl.rollout import generate

    cfg = load_config("seed", overrides=[f"policy.model={model_dir}", "data.max_prompt_tokens=4096", "policy.dtype=float32"])
    policy = load_policy(dataclasses.replace(cfg.policy, adapter=str(adapter_dir) if adapter_dir else None))
    exs = prompt_examples([{"id": str(i), "dialogue": d} for i, d in enumerate(dialogues)], cfg.data, policy.tokenizer)
    return generate(policy, [e.input_ids for e in exs], [e.prompt for e in exs],
                    GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False)).responses


def test_summarize_stdin_json_lines_and_plain_text(adapter, monkeypatch):
    jsonl = "".join(json.dumps({"id": f"d{i}", "dialogue": d}) + "\n" for i, d in enumerate(DIALOGUES))
    rc, out, err = run(monkeypatch, jsonl, "--adapter", adapter, *TINY)
    assert rc == 0, err
    got = records(out)
    assert [r["id"] for r in got] == ["d0", "d1", "d2"] and [r["dialogue"] for r in got] == DIALOGUES
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert [r["summary"] for r in got] == expected_summaries(base, adapter, DIALOGUES)
    assert all(isinstance(r["ended"], bool) for r in got)
    # Plain text: dialogues separated by a blank line; JSON strings, one per line.
    for text in ("\n\n".join(DIALOGUES) + "\n", "".join(json.dumps(d) + "\n" for d in DIALOGUES)):
        rc, out, err = run(monkeypatch, text, "--adapter", adapter, *TINY)
        assert rc == 0, err
        assert [(r["id"], r["summary"]) for r in records(out)] == [(f"row_{i}", r["summary"]) for i, r in enumerate(got)]


def test_stdin_formats():
    assert [r["dialogue"] for r in parse_stdin("A: hi\nB: hello\n\n\nA: bye\nB: see you\n")] == ["A: hi\nB: hello", "A: bye\nB: see you"]
    assert parse_stdin('{"text": "A: hi", "id": 7}\n', column="text") == [{"id": "7", "dialogue": "A: hi", "summary": None}]
    assert parse_stdin("") == []


def test_summarize_a_csv_file_to_csv_with_toxicity(adapter, wide_tiny_models, monkeypatch, tmp_path):
    from detoxrl.rewards import build_judge_scorer, build_scorer

    talks = tmp_path / "talks.csv"
    with open(talks, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([[f"t{i}", d] for i, d in enumerate(DIALOGUES)])
    out = tmp_path / "out" / "summaries.csv"
    judge = f"{wide_tiny_models['judge']}#toxic"
    argv = [talks, "--column", "text", "--adapter", adapter, "--output", out, "--score", "--reward-model", wide_tiny_models["reward"],
            "--reward-label", "nothate", "--judge-model", judge, *TINY]
    rc, stdout, err = run(monkeypatch, None, *argv)
    assert rc == 0, err
    assert stdout == "" and "wrote 3 summaries" in err
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "dialogue", "summary", "ended", "toxicity", f"judge:{judge}"]
    assert [r["id"] for r in rows] == ["t0", "t1", "t2"] and [r["dialogue"] for r in rows] == DIALOGUES
    summaries = [r["summary"] for r in rows]
    tox = build_scorer(str(wide_tiny_models["reward"]), "nothate", "hate").score(summaries).toxicity.tolist()
    judged = build_judge_scorer(judge).score(summaries).toxicity.tolist()
    assert [float(r["toxicity"]) for r in rows] == pytest.approx(tox, abs=1e-6)
    assert [float(r[f"judge:{judge}"]) for r in rows] == pytest.approx(judged, abs=1e-6)
    # An existing output file is kept unless --overwrite.
    rc, _, err = run(monkeypatch, None, *argv)
    assert "already exists; pass --overwrite" in one_line_error(rc, err)
    assert run(monkeypatch, None, *argv, "--overwrite", "--format", "jsonl")[0] == 0
    assert [r["id"] for r in records(out.read_text())] == ["t0", "t1", "t2"]
    assert not list(out.parent.glob("*.partial"))


def test_exported_model_writes_the_adapters_summaries(adapter, monkeypatch, tmp_path):
    """summarize --model EXPORTED (a merged export, plain transformers folder) writes the same greedy
    summaries as summarize --adapter, and the starting policy writes other ones."""
    rc, _, err = cli("export", adapter, "--output", tmp_path / "merged", "--merge")
    assert rc == 0, err
    text = "\n\n".join(DIALOGUES)
    outs = {}
    for name, argv in (("adapter", ["--adapter", adapter]), ("model", ["--model", tmp_path / "merged"]),
                       ("start", ["--policy", json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]])):
        rc, out, err = run(monkeypatch, text, *argv, *TINY)
        assert rc == 0, err
        outs[name] = [r["summary"] for r in records(out)]
    assert outs["model"] == outs["adapter"]
    assert outs["start"] != outs["adapter"]


def test_sampling_is_seeded_and_progress_goes_to_stderr(adapter, monkeypatch):
    text = "\n\n".join(DIALOGUES * 4)  # 12 dialogues, 3 batches of 4: a progress bar
    argv = ["--adapter", adapter, "--do-sample", "--top-k", 20, "--batch-size", 4, "--set", "data.max_prompt_tokens=4096",
            "--max-new-tokens", 6]
    first = run(monkeypatch, text, *argv, "--seed", 5)
    again = run(monkeypatch, text, *argv, "--seed", 5)
    assert first[0] == 0, first[2]
    assert "summarize" in first[2]  # the bar
    assert records(first[1]) == records(again[1]) and len(records(first[1])) == 12


@pytest.fixture
def no_model_loads(monkeypatch, no_weights_loaded):
    """Tokenizers may load (prompts are checked with the tokenizer alone); weights may not."""


def test_bad_summarize_input_is_one_line_before_any_weights_load(adapter, tmp_path, monkeypatch, no_model_loads):
    long = "#Person1#: " + "word " * 5000
    merged = tmp_path / "merged"  # a model folder as export --merge writes it (nothing loads before the error)
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    cases = [
        (None, ["--adapter", adapter, "--model", tmp_path], "pass one of them"),
        ('{"dialogue": "A: hi"}\nnot json\n', ["--adapter", adapter], "stdin line 2 is not valid JSON"),
        ('{"text": "A: hi"}\n', ["--adapter", adapter], "stdin line 1 has no text field 'dialogue' (fields: text)"),
        ("A: hi\n", ["--adapter", adapter, "--temperature", 0.7], "add --do-sample"),
        ("", ["--adapter", adapter], "stdin holds no dialogue"),
        (long, ["--adapter", adapter, "--set", "data.max_prompt_tokens=512"], "above data.max_prompt_tokens=512"),
        ("A: hi\n", ["--adapter", adapter, "--output", tmp_path], "is a folder"),
        ("A: hi\n", ["--model", tmp_path], "is not a model folder"),
        (None, ["--adapter", adapter, tmp_path / "missing.csv"], "does not exist"),
        ("A: hi\n", ["--adapter", adapter, "--max-new-tokens", 0], "--max-new-tokens and --batch-size must be >= 1, got 0"),
        ("A: hi\n", ["--adapter", adapter, "--batch-size", 0], "--max-new-tokens and --batch-size must be >= 1, got 64 and 0"),
        ("A: hi\n", ["--model", merged, "--policy", adapter], "is a whole model, which needs no --policy"),
        ("\x00\x01\udcff binary", ["--adapter", adapter], "stdin is not text (binary data, or not UTF-8)"),
    ]
    for stdin, argv, expected in cases:
        rc, _, err = run(monkeypatch, stdin, *argv)
        assert expected in one_line_error(rc, err), (argv, err)


def test_summarize_help():
    rc, out, _ = cli("summarize", "--help")
    assert rc == 0
    for option in ("FILE", "--adapter", "--model", "--column", "--output", "--format", "--do-sample", "--temperature", "--top-p",
                   "--top-k", "--seed", "--max-new-tokens", "--batch-size", "--score"):
        assert option in out
