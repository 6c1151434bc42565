"""The whole workflow of the README, on tiny real models: ``sft`` -> ``train --adapter`` -> ``export
--merge`` -> plain transformers from another working directory, whose greedy summaries equal the
adapter model's (the tolerance of ``test_export``: the same tokens, logits within
``MERGE_ULPS["fp32"]`` float32 units of the largest logit) -> ``summarize --model``."""

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import assert_close_for_dtype
from test_cli import cli
from test_export import MERGE_ULPS, _adapter_outputs, _adapter_policy, _plain_transformers, _prompts

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--set", "data.max_prompt_tokens=4096", "--set", "data.max_chars=500", "--set", "data.max_rows=40",
        "--set", "policy.dtype=float32", "--set", "policy.lora_r=4", "--set", "policy.lora_alpha=8"]


@pytest.mark.parametrize("arch", ["tiny_t5", "tiny_llama"])
def test_sft_then_ppo_then_merged_export_then_summarize(arch, request, tiny_roberta, dialogsum_dir, tmp_path, monkeypatch):
    policy_dir = request.getfixturevalue(arch)
    sft_dir, ppo_dir, exported = tmp_path / "sft", tmp_path / "ppo", tmp_path / "exported"
    rc, _, err = cli("sft", "--preset", "seed", "--policy", policy_dir, "--data", dialogsum_dir, *TINY,
                     "--steps", 2, "--batch-size", 4, "--learning-rate", "3e-3", "--output-dir", sft_dir, "--no-progress")
    assert rc == 0, err
    rc, _, err = cli("train", "--preset", "seed", "--policy", policy_dir, "--adapter", sft_dir / "final",
                     "--reward-model", tiny_roberta, "--reward-label", "nothate", "--data", dialogsum_dir, *TINY,
                     "--steps", 2, "--batch-size", 4, "--mini-batch-size", 2, "--max-new-tokens", 8,
                     "--set", "ppo.learning_rate=1e-3", "--output-dir", ppo_dir, "--no-progress")
    assert rc == 0, err
    rc, _, err = cli("export", ppo_dir, "--output", exported, "--merge")
    assert rc == 0, err

    # Plain transformers, in a fresh process started in /, gives the adapter model's greedy summaries.
    policy = _adapter_policy(ppo_dir)
    prompts = _prompts(policy, ppo_dir)
    plain = _plain_transformers([{"folder": str(exported), "prompts": prompts, "max_new_tokens": 8}], cwd=Path("/"))
    assert plain["imported"] == []
    tokens, logits = _adapter_outputs(policy, prompts, 8)
    assert plain["results"][0]["tokens"] == tokens
    for theirs, ours in zip(plain["results"][0]["logits"], logits):
        assert_close_for_dtype(torch.tensor(theirs), ours, ulps=MERGE_ULPS["fp32"])

    # summarize --model EXPORTED, from another folder, on a file of dialogues.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    dialogues = elsewhere / "dialogues.jsonl"
    dialogues.write_text("".join(json.dumps({"id": f"d{i}", "dialogue": f"#Person1#: Hello {i}.\n#Person2#: Hi, how are you?"}) + "\n"
                                 for i in range(3)))
    rc, out, err = cli("summarize", str(dialogues), "--model", str(exported), "--max-new-tokens", 8)
    assert rc == 0, err
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [r["id"] for r in records] == ["d0", "d1", "d2"] and all(isinstance(r["summary"], str) for r in records)
    assert os.path.isdir(exported) and (exported / "README.md").is_file()
