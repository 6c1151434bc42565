"""detoxrl.trainer: the acceptance tests of "End-to-end PPO detoxification" on tiny real models."""

import collections
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from detoxrl.errors import ConfigError, DataError, DetoxError, TrainingError
from detoxrl.policy import Policy, load_policy
from detoxrl.prompts import build_prompts
from detoxrl.rewards import FunctionScorer
from detoxrl.rollout import forward_pass, generate
from detoxrl.trainer import Trainer
from conftest import assert_close_for_dtype

pytestmark = pytest.mark.usefixtures("one_thread")

REQUIRED = ("objective/kl", "ppo/returns/mean", "ppo/policy/advantages_mean", "env/reward_mean", "env/reward_std", "time/step_s")


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name


def nothate_hate_logits(reward_dir, texts):
    """The classifier's logits as columns (nothate, hate), one text at a time (no padding, no batching)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(reward_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(reward_dir)
    columns = [model.config.label2id["nothate"], model.config.label2id["hate"]]
    with torch.no_grad():
        return torch.stack([model(**tok([t], return_tensors="pt")).logits[0, columns] for t in texts])


# --------------------------------------------------------------------------------------------
# A short run, seq2seq and causal


# The seq2seq run uses Meta's label order (nothate, hate); the causal run the reverse order, on
# which hate wins for most texts.
@pytest.mark.parametrize("arch, reward", [("tiny_t5", "tiny_roberta"), ("tiny_llama", "tiny_roberta_hate_first")])
def test_three_step_run(arch, reward, request, tiny_config, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    policy_dir, reward_dir = request.getfixturevalue(arch), request.getfixturevalue(reward)
    cfg = tiny_config("ppo.learning_rate=1e-3", "run.save_every=2", policy=policy_dir, reward=reward_dir, steps=3)
    trainer = Trainer(cfg)
    assert trainer.policy.is_seq2seq == (arch == "tiny_t5")
    scored_texts = []  # what the reward model was given, step by step (a spy: the real scorer runs)
    real_score = trainer.scorer.score
    trainer.scorer.score = lambda texts, **kw: scored_texts.append(list(texts)) or real_score(texts, **kw)
    final = trainer.train()
    run = Path(cfg.run.output_dir)

    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        for key in REQUIRED:
            assert key in row and isinstance(row[key], float) and math.isfinite(row[key]), (row["step"], key)
        assert row["ppo/applied_minibatches"] == 2 and row["ppo/skipped_minibatches"] == 0
    assert rows[0]["objective/kl"] == 0.0  # the reference is the starting adapter (defect #2)
    assert (run / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000003"]

    # final/ is a plain PEFT adapter folder: it loads onto the bare base model and gives the
    # trainer's log-probs.
    assert final == run / "final"
    assert (final / "adapter_model.safetensors").is_file() and (final / "adapter_config.json").is_file()
    auto = AutoModelForSeq2SeqLM if trainer.policy.is_seq2seq else AutoModelForCausalLM
    base = auto.from_pretrained(policy_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(final)).eval()
    reloaded = Policy(peft_model, trainer.policy.value_head, trainer.policy.tokenizer, trainer.policy.is_seq2seq, str(policy_dir), [])
    rollout = trainer.last_rollout
    with torch.no_grad():
        mine = forward_pass(trainer.policy, rollout, with_values=False)["logprobs"]
        theirs = forward_pass(reloaded, rollout, with_values=False)["logprobs"]
        with trainer.policy.use_adapter("reference"):
            start = forward_pass(trainer.policy, rollout, with_values=False)["logprobs"]
    mask = rollout.response_mask.bool()
    assert_close_for_dtype(theirs[mask], mine[mask])
    assert (mine - start)[mask].abs().max() > 1e-4  # training changed the policy
    head = load_file(str(final / "value_head.safetensors"))
    assert torch.equal(head["weight"], trainer.policy.value_head.weight.detach())

    # The reward is the `nothate` logit, selected by name, of the decoded response, even where
    # `hate` scores higher (the notebook took whichever label came first: defect #1).
    assert len(scored_texts) == 3 and scored_texts[-1] == rollout.responses  # the response alone (defect #4)
    hate_wins = 0
    for row, texts in zip(rows, scored_texts):
        logits = nothate_hate_logits(reward_dir, texts)
        assert row["env/reward_mean"] == pytest.approx(float(logits[:, 0].mean()), abs=1e-5)
        assert row["env/reward_std"] == pytest.approx(float(logits[:, 0].std(unbiased=False)), abs=1e-5)
        assert row["env/toxicity_mean"] == pytest.approx(float(logits.softmax(-1)[:, 1].mean()), abs=1e-5)
        hate_wins += int((logits[:, 1] > logits[:, 0]).sum())
    assert hate_wins > 0, "want responses on which hate wins, to tell the labels apart"
    assert all("</s>" not in r and "<pad>" not in r for r in rollout.responses)


# --------------------------------------------------------------------------------------------
# It learns


def test_learns_a_programmatic_reward(tiny_config):
    """PPO raises a simple reward: how often the policy's most frequent word appears."""
    cfg = tiny_config(
        "ppo.learning_rate=2e-3",
        "ppo.adaptive_kl=false",
        "ppo.init_kl_coef=0.01",
        "run.save_every=1000",
        steps=40,
        max_new_tokens=8,
    )
    # The target: the word the untrained policy samples most often (so the signal is not too sparse).
    policy = load_policy(cfg.policy)
    examples = build_prompts(cfg.data, policy.tokenizer).train[:32]
    torch.manual_seed(0)
    start = generate(policy, [e.input_ids for e in examples], [e.prompt for e in examples], max_new_tokens=8, batch_size=32)
    counts = collections.Counter(w for text in start.responses for w in text.split() if len(w) >= 3)
    target, n = counts.most_common(1)[0]
    assert n >= 8, counts.most_common(5)
    del policy

    def reward(texts):
        return [t.count(target) / 8 for t in texts]

    Trainer(cfg, scorer=FunctionScorer(reward)).train()
    rewards = [row["env/reward_mean"] for row in read_metrics(cfg.run.output_dir)]
    assert len(rewards) == 40
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.25, (target, first, last, rewards)


# --------------------------------------------------------------------------------------------
# Resume and determinism


def _resume_config(build, out, *extra, steps=4):
    return build(
        "ppo.learning_rate=1e-3", "ppo.ppo_epochs=2", "run.save_every=2", "run.keep_checkpoints=5", *extra, output_dir=out, steps=steps
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, config_factory):
    """A 4-step run that never stops: (metrics, final adapter tensors, value head)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    final = Trainer(_resume_config(config_factory, out)).train()
    return read_metrics(out), adapter_tensors(final), load_file(str(final / "value_head.safetensors"))


def test_resume_equals_uninterrupted(uninterrupted, tiny_config, tmp_path):
    metrics, adapter, head = uninterrupted
    out = tmp_path / "run"
    first = Trainer(_resume_config(tiny_config, out))
    first.train(steps=2)
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    del first
    resumed = Trainer(_resume_config(tiny_config, out), resume=True)
    assert resumed.step_idx == 2
    final = resumed.train()
    got = read_metrics(out)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert without_time(got) == without_time(metrics)
    assert_same_tensors(adapter_tensors(final), adapter)
    assert_same_tensors(load_file(str(final / "value_head.safetensors")), head)


def test_resume_after_a_crash_between_checkpoints(uninterrupted, tiny_config, tmp_path):
    """Stopped after step 3 with its checkpoint lost: resume from step 2, recompute step 3's metrics."""
    metrics, adapter, _ = uninterrupted
    out = tmp_path / "run"
    Trainer(_resume_config(tiny_config, out)).train(steps=3)
    shutil.rmtree(out / "checkpoints" / "step-000003")  # as if the process died before saving it
    shutil.rmtree(out / "final")
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "objective/kl": 0.1')  # and a line cut short by the crash
    resumed = Trainer(_resume_config(tiny_config, out), resume=True)
    assert resumed.step_idx == 2
    assert [r["step"] for r in read_metrics(out)] == [1, 2]  # the orphaned step-3 line is dropped
    final = resumed.train()
    assert without_time(read_metrics(out)) == without_time(metrics)
    assert_same_tensors(adapter_tensors(final), adapter)


def test_same_seed_same_run_other_seed_other_run(uninterrupted, tiny_config, tmp_path):
    metrics, adapter, _ = uninterrupted
    again = Trainer(_resume_config(tiny_config, tmp_path / "again")).train()
    assert without_time(read_metrics(tmp_path / "again")) == without_time(metrics)
    assert_same_tensors(adapter_tensors(again), adapter)
    Trainer(_resume_config(tiny_config, tmp_path / "other", "run.seed=1", steps=2)).train()
    other = without_time(read_metrics(tmp_path / "other"))
    assert other != without_time(metrics)[:2]


# --------------------------------------------------------------------------------------------
# Output folder protection and early errors


def _snapshot_tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_existing_run_is_protected(tiny_config, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = tiny_config(output_dir=out, steps=1)
    Trainer(cfg).train()
    before = _snapshot_tree(out)
    assert "metrics.jsonl" in before and "final/adapter_model.safetensors" in before and "notes.txt" in before
    with pytest.raises(DetoxError) as e:
        Trainer(tiny_config(output_dir=out, steps=1))
    message = str(e.value)
    assert "--resume" in message and "--overwrite" in message and "\n" not in message
    assert _snapshot_tree(out) == before  # nothing deleted, nothing written
    # --overwrite of a run that cannot start (its policy has no weights) keeps the old run too.
    weightless = tmp_path / "no_weights"
    shutil.copytree(cfg.policy.model, weightless)
    (weightless / "model.safetensors").unlink()
    with pytest.raises(DetoxError):
        Trainer(tiny_config("run.overwrite=true", policy=weightless, output_dir=out, steps=1))
    assert _snapshot_tree(out) == before
    # --overwrite replaces the run's own files and leaves the user's alone.
    trainer = Trainer(tiny_config("run.overwrite=true", output_dir=out, steps=1))
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists() and not (out / "final").exists()
    assert (out / "notes.txt").read_text() == "mine"
    trainer.train()
    assert len(read_metrics(out)) == 1


def test_resume_without_checkpoint_is_an_error(tiny_config, tmp_path):
    for out in (tmp_path / "missing", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        with pytest.raises(DetoxError, match="no checkpoint"):
            Trainer(tiny_config(output_dir=out), resume=True)
    assert not (tmp_path / "missing").exists()


def test_bad_inputs_fail_before_any_model_loads(tiny_t5, tiny_config, tmp_path, monkeypatch):
    """The policy folder below has no weights: an error about anything else proves the order."""
    weightless = tmp_path / "t5_no_weights"
    shutil.copytree(tiny_t5, weightless)
    (weightless / "model.safetensors").unlink()
    out = tmp_path / "run"

    with pytest.raises(ConfigError, match="nothat") as e:
        Trainer(tiny_config("reward.label=nothat", policy=weightless, output_dir=out))
    assert "nothate" in str(e.value)  # the suggestion
    with pytest.raises(DataError):
        Trainer(tiny_config(f"data.source={tmp_path / 'no_such_data'}", policy=weightless, output_dir=out))
    with pytest.raises(DetoxError, match="not a model folder"):
        Trainer(tiny_config(policy=tmp_path / "no_such_policy", output_dir=out))
    assert not out.exists()  # not even the output folder was created

    # With good inputs the same folder gets as far as loading, and fails there, as one line.
    import transformers

    loads = []
    real = transformers.AutoModelForSeq2SeqLM.from_pretrained.__func__

    def counting(cls, *a, **k):
        loads.append(a[0] if a else k)
        return real(cls, *a, **k)

    monkeypatch.setattr(transformers.AutoModelForSeq2SeqLM, "from_pretrained", classmethod(counting))
    with pytest.raises(DetoxError) as e:
        Trainer(tiny_config(policy=weightless, output_dir=out))
    assert loads and "\n" not in str(e.value)
    loads.clear()
    with pytest.raises(ConfigError):
        Trainer(tiny_config("reward.label=nothat", policy=tiny_t5, output_dir=tmp_path / "run2"))
    assert loads == []  # the label is checked before the policy is loaded


def _refuse_policy_weights(monkeypatch) -> None:
    import transformers

    def must_not_load(*a, **k):
        raise AssertionError("the policy's weights were loaded before the bad input was reported")

    monkeypatch.setattr(transformers.AutoModelForSeq2SeqLM, "from_pretrained", must_not_load)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", must_not_load)


def test_step_that_skips_every_minibatch_stops_the_run(tiny_config, tmp_path):
    """A step that applied none of its minibatches (here: a value head gone NaN, so every loss is NaN)
    stops the run with one line; it does not go on to write final/ and report success."""
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(output_dir=out, steps=3, batch_size=4, mini_batch_size=2, max_new_tokens=6))
    lora_before = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if "lora_" in n}
    with torch.no_grad():
        trainer.policy.value_head.weight.fill_(float("nan"))
    with pytest.raises(TrainingError) as e:
        trainer.train()
    message = str(e.value)
    assert "\n" not in message and "PPO step 1 skipped all 2 of its minibatches" in message
    assert "ppo.learning_rate" in message and str(out / "metrics.jsonl") in message
    rows = read_metrics(out)
    assert len(rows) == 1 and rows[0]["ppo/applied_minibatches"] == 0 and rows[0]["ppo/skipped_minibatches"] == 2
    assert not (out / "final").exists() and not (out / "checkpoints").exists()
    for n, p in trainer.policy.model.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, lora_before[n]), n  # nothing was applied


def test_prompt_token_limit_is_checked_before_the_policy_weights_load(tiny_config, tmp_path, monkeypatch):
    """The prompts are tokenized with the tokenizer alone, so a prompt above data.max_prompt_tokens is
    an error before the policy's weights load (it came after them)."""
    _refuse_policy_weights(monkeypatch)
    with pytest.raises(DataError, match="above data.max_prompt_tokens=20") as e:
        Trainer(tiny_config("data.max_prompt_tokens=20", output_dir=tmp_path / "run"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_tracker_that_is_not_installed_is_refused_before_any_model_loads(tiny_config, tmp_path, monkeypatch):
    """accelerate drops a tracker whose package is missing with a log line only: --log-with wandb
    without wandb is an error naming the install command."""
    import accelerate.utils

    _refuse_policy_weights(monkeypatch)
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(DetoxError) as e:
        Trainer(tiny_config("run.log_with=wandb", output_dir=tmp_path / "run"))
    message = str(e.value)
    assert "\n" not in message and "wandb is not installed" in message and "pip install wandb" in message
    assert not (tmp_path / "run").exists()


def test_prompt_order(tiny_config, tmp_path):
    """Each epoch visits every train prompt once: a seeded permutation per epoch, or file order."""
    shuffled = Trainer(tiny_config(output_dir=tmp_path / "a"))
    train = shuffled.prompts.train
    n, bsz = len(train), shuffled.cfg.ppo.batch_size
    order = [e.id for step in range(2 * n // bsz + 1) for e in shuffled.batch_examples(step)]
    first, second = order[:n], order[n : 2 * n]
    assert sorted(first) == sorted(e.id for e in train) == sorted(second)  # a permutation each epoch
    assert first != [e.id for e in train] and first != second
    again = Trainer(tiny_config(output_dir=tmp_path / "b"))
    assert [e.id for e in again.batch_examples(3)] == order[3 * bsz : 4 * bsz]  # seeded
    in_order = Trainer(tiny_config("data.shuffle=false", output_dir=tmp_path / "c"))
    ids = [e.id for e in train]
    assert [e.id for e in in_order.batch_examples(0)] == ids[:bsz]
    step = n // bsz  # the batch that wraps around the end of the first epoch
    expected = [ids[i % n] for i in range(step * bsz, (step + 1) * bsz)]
    assert [e.id for e in in_order.batch_examples(step)] == expected


def test_tensorboard_tracker_logs_through_accelerate(tiny_config, tmp_path):
    """--log-with tensorboard writes event files beside metrics.jsonl (accelerate's tracker)."""
    pytest.importorskip("tensorboard")
    cfg = tiny_config("run.log_with=tensorboard", steps=2, batch_size=4, mini_batch_size=2, max_new_tokens=6)
    Trainer(cfg).train()
    run = Path(cfg.run.output_dir)
    events = list(run.rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file written"
    assert sum(e.stat().st_size for e in events) > 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
