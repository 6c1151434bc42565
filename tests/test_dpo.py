"""detoxrl dpo: pairs from the starting policy's own samples (pick_pair by hand), the reference
log-probabilities, DPO steps, the run folder (pairs, checkpoints without a value head, final/), an exact
resume, and the command line end to end (dpo, then evaluate and the card)."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from detoxrl.dpo import PreferenceTrainer, pick_pair
from detoxrl.errors import ConfigError, DataError
from detoxrl.rewards import FunctionScorer

pytestmark = pytest.mark.usefixtures("one_thread")


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


# --------------------------------------------------------------------------------------------
# Pairs, by hand


def test_pick_pair_takes_the_largest_reward_gap_among_the_allowed():
    # Rewards 0.1, 2.0, -1.5, 1.9: the largest gap is 2.0 - (-1.5) = 3.5 (indices 1, 2).
    assert pick_pair([0.1, 2.0, -1.5, 1.9], None, min_reward_gap=1.0, max_faithfulness_gap=None) == ((1, 2), None)
    # Faithfulness 0.5, 0.8, 0.2, 0.45: |0.8 - 0.2| = 0.6 > 0.05 rules (1, 2) out; (3, 2): |0.45 - 0.2| too;
    # (0, 2): gap 1.6, |0.5 - 0.2| too; (1, 0): gap 1.9, |0.8 - 0.5| too; (3, 0): gap 1.8, |0.45 - 0.5| = 0.05 allowed.
    assert pick_pair([0.1, 2.0, -1.5, 1.9], [0.5, 0.8, 0.2, 0.45], min_reward_gap=1.0, max_faithfulness_gap=0.05) == ((3, 0), None)


def test_pick_pair_says_why_there_is_none():
    assert pick_pair([1.0, 1.2, 1.1], None, min_reward_gap=0.5, max_faithfulness_gap=None) == (None, "no gap")
    assert pick_pair([1.0, 3.0], [0.1, 0.9], min_reward_gap=0.5, max_faithfulness_gap=0.05) == (None, "faithfulness")
    assert pick_pair([2.0, 2.0], None, min_reward_gap=0.0, max_faithfulness_gap=None) == (None, "no gap")  # a tie is no preference


# --------------------------------------------------------------------------------------------
# The run

LENGTH_REWARD = FunctionScorer(lambda texts: [len(t) / 10 for t in texts], name="length")


def dpo_config(tiny_config, out, *extra, steps=2):
    return tiny_config("dpo.samples_per_prompt=4", "dpo.num_prompts=6", "dpo.min_reward_gap=0.2", "dpo.max_faithfulness_gap=none",
                       "dpo.batch_size=2", "dpo.learning_rate=1e-2", f"dpo.steps={steps}", "run.save_every=1",
                       "run.keep_checkpoints=0", *extra, output_dir=out, max_new_tokens=8)


def test_a_dpo_run_pairs_its_own_samples_and_trains_against_the_starting_adapter(tiny_config, tmp_path):
    out = tmp_path / "run"
    trainer = PreferenceTrainer(dpo_config(tiny_config, out), scorer=LENGTH_REWARD)
    assert trainer.policy.value_head is None
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    cost = json.loads((out / "pairs.json").read_text())
    assert cost["prompts"] == 6 and cost["samples"] == 24 and cost["pairs"] == len(pairs) == len(trainer.pairs) > 0
    assert cost["pairs"] + cost["dropped_no_reward_gap"] + cost["dropped_faithfulness_gap"] == 6
    for p in pairs:  # the reward model preferred the chosen one by at least the gap
        assert p["reward_chosen"] - p["reward_rejected"] >= 0.2 and p["reward_chosen"] == pytest.approx(len(p["chosen"]) / 10)
        assert math.isfinite(p["ref_chosen"]) and p["ref_chosen"] < 0
    final = trainer.train()
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    # Step 1: the adapter is the reference, so every margin is 0 up to rounding and the loss is log 2.
    assert metrics[0]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-4) and abs(metrics[0]["dpo/margin"]) < 1e-3
    assert metrics[1]["dpo/margin"] != 0.0  # and then it moves
    assert not any(p.name == "value_head.safetensors" for p in out.rglob("*"))
    assert (final / "adapter_model.safetensors").is_file()


def test_a_dpo_run_resumed_equals_one_that_never_stopped(tiny_config, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    final = PreferenceTrainer(dpo_config(tiny_config, whole, steps=3), scorer=LENGTH_REWARD).train()
    PreferenceTrainer(dpo_config(tiny_config, parts, steps=3), scorer=LENGTH_REWARD).train(steps=1)
    resumed = PreferenceTrainer(dpo_config(tiny_config, parts, steps=3), scorer=LENGTH_REWARD, resume=True)
    assert resumed.step_idx == 1 and len(resumed.pairs) == len(json.loads((parts / "pairs.json").read_text()) and resumed.pairs)
    again = resumed.train()
    assert without_time(read_metrics(parts)) == without_time(read_metrics(whole))
    a, b = load_file(str(final / "adapter_model.safetensors")), load_file(str(again / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_no_pair_is_one_line_that_says_what_to_change(tiny_config, tmp_path):
    with pytest.raises(DataError) as e:
        PreferenceTrainer(dpo_config(tiny_config, tmp_path / "run", "dpo.min_reward_gap=1000"), scorer=LENGTH_REWARD)
    assert "no preference pair among 6 prompts x 4 samples" in str(e.value) and "lower dpo.min_reward_gap" in str(e.value)


def test_greedy_sampling_is_refused_before_anything_loads(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="generation.do_sample must be true"):
        PreferenceTrainer(dpo_config(tiny_config, tmp_path / "run", "generation.do_sample=false"), scorer=LENGTH_REWARD)
    assert not (tmp_path / "run").exists()


def test_dpo_on_the_command_line_then_evaluate_and_its_card(wide_tiny_models, dialogsum_dir, tmp_path):
    from test_cli import cli

    tiny = wide_tiny_models
    run = tmp_path / "dpo"
    rc, out, err = cli("dpo", "--preset", "seed", "--policy", tiny["t5"], "--reward-model", tiny["reward"], "--reward-label", "nothate",
                       "--data", dialogsum_dir, "--num-prompts", 6, "--steps", 2, "--batch-size", 2, "--output-dir", run,
                       "--no-progress", "--set", "data.max_prompt_tokens=4096", "--set", "data.max_chars=500",
                       "--set", "data.max_rows=40", "--set", "generation.max_new_tokens=8", "--set", "dpo.min_reward_gap=0",
                       "--set", "dpo.max_faithfulness_gap=none", "--set", f"evaluation.judge_model={tiny['judge']}",
                       "--set", "evaluation.judge_toxic_label=toxic", "--set", "evaluation.max_new_tokens=8")
    assert rc == 0, err
    assert "DPO: 2 steps on" in out and f"detoxrl evaluate --run {run}" in out
    rc, _, err = cli("evaluate", "--run", run, "--num-samples", 3, "--greedy-only", "--no-faithfulness", "--no-progress")
    assert rc == 0, err
    card = (run / "final" / "README.md").read_text()
    assert "- dpo" in card and "DPO on pairs of its own starting summaries" in card and "### Verdict" in card
    rc, _, err = cli("train", "--output-dir", run, "--resume", "--no-progress")
    assert "was written by detoxrl dpo, not by detoxrl train" in err
