"""detoxrl.sft and ``detoxrl sft``: supervised LoRA fine-tuning on dialogue -> reference summary pairs.

Tiny random T5 (seq2seq) and Llama (causal) models of the real architectures, on the first rows of
the local DialogSum copy (see conftest). No timed assertions.
"""

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from detoxrl.cli import main
from detoxrl.config import load_config
from detoxrl.errors import ConfigError
from detoxrl.policy import REFERENCE_ADAPTER, load_policy
from detoxrl.prompts import build_prompts
from detoxrl.sft import SFTPair, SupervisedTrainer, build_pairs, lr_factor, pairs_as_rollout, target_nll
from conftest import assert_close_for_dtype

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--set", "data.max_prompt_tokens=4096", "--set", "data.max_chars=500", "--set", "data.max_rows=40",
        "--set", "policy.dtype=float32", "--set", "policy.lora_r=4", "--set", "policy.lora_alpha=8"]


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 0
    return rc, out.getvalue(), err.getvalue()


def one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def without_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def adapter_tensors(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def sft_config(policy_dir, data, out, *extra, steps=4, batch_size=4, micro_batch_size=2, preset="seed"):
    return load_config(preset, overrides=[
        f"policy.model={policy_dir}", "policy.dtype=float32", "policy.lora_r=4", "policy.lora_alpha=8",
        f"data.source={data}", "data.max_rows=40", "data.max_chars=500", "data.max_prompt_tokens=4096",
        f"sft.steps={steps}", f"sft.batch_size={batch_size}", f"sft.micro_batch_size={micro_batch_size}", "sft.learning_rate=3e-3",
        f"run.output_dir={out}", "run.progress=false", "run.num_threads=1", "run.save_every=2", "run.keep_checkpoints=5", *extra,
    ])


@pytest.fixture
def no_model_loads(monkeypatch, no_weights_loaded):
    """Fail the test if any weights or tokenizer load: bad input must be reported before."""
    import transformers

    def boom(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the bad input was reported")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(boom))


def write_csv(path: Path, n: int = 30, *, summary=True, empty=(), dialogsum=None) -> Path:
    """A small CSV of DialogSum rows (id, dialogue[, summary]); rows in ``empty`` get an empty summary."""
    df = pd.read_csv(dialogsum / "train.csv", nrows=200)
    df = df[df["dialogue"].str.len().between(201, 500)].head(n).reset_index(drop=True)
    if not summary:
        df = df.drop(columns=["summary"])
    for i in empty:
        df.loc[i, "summary"] = ""
    df[[c for c in ("id", "dialogue", "summary") if c in df.columns]].to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------------------------
# The loss: summary tokens only


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])  # rotary and absolute positions
def test_causal_loss_is_on_the_summary_tokens_only(arch, request, dialogsum_dir, tmp_path):
    """Hand check: the SFT loss of a causal model is -log p(summary | prompt), with prompt and padding
    out of it; it equals transformers' loss with labels -100 on the prompt (and on padding)."""
    cfg = sft_config(request.getfixturevalue(arch), dialogsum_dir, tmp_path / "run")
    policy = load_policy(cfg.policy)
    model = policy.model
    tok = policy.tokenizer
    a = SFTPair("a", tok("#Person1#: Hello there. #Person2#: Hi!", add_special_tokens=True)["input_ids"],
                tok("They greet.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    b = SFTPair("b", tok("#Person1#: The meeting starts at nine tomorrow morning. #Person2#: I will be there.", add_special_tokens=True)["input_ids"],
                tok("A meeting at nine, says Person1 to Person2.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    assert len(a.prompt_ids) != len(b.prompt_ids) and len(a.target_ids) != len(b.target_ids)  # padding on both sides
    rollout = pairs_as_rollout([a, b], policy)
    assert rollout.response_mask.sum(1).tolist() == [len(a.target_ids), len(b.target_ids)]  # only summary tokens count
    with torch.no_grad():
        ours = [float(target_nll(policy, [p])) for p in (a, b)]
        batched = float(target_nll(policy, [a, b]))
        for pair, nll in zip((a, b), ours):
            ids = torch.tensor([pair.prompt_ids + pair.target_ids])
            p, t = len(pair.prompt_ids), len(pair.target_ids)
            # By hand: the logits at position i predict token i + 1; the summary starts at position p.
            logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
            by_hand = -sum(float(logp[p - 1 + j, pair.target_ids[j]]) for j in range(t))
            assert nll == pytest.approx(by_hand, rel=1e-5)
            # transformers' convention: labels -100 on the prompt; its loss is the mean over summary tokens.
            labels = torch.tensor([[-100] * p + pair.target_ids])
            assert nll / t == pytest.approx(float(model(input_ids=ids, labels=labels).loss), rel=1e-5)
            everything = float(model(input_ids=ids, labels=ids).loss)  # the prompt in the loss too: another number
            assert abs(everything - nll / t) > 1e-3
        # The padded batch of both: labels -100 on prompt and padding, transformers' mean x token count.
        assert batched == pytest.approx(sum(ours), rel=1e-5)
        width = max(len(x.prompt_ids) + len(x.target_ids) for x in (a, b))
        ids = torch.full((2, width), tok.pad_token_id)
        mask = torch.zeros((2, width), dtype=torch.long)
        labels = torch.full((2, width), -100)
        for i, x in enumerate((a, b)):
            n = len(x.prompt_ids) + len(x.target_ids)
            ids[i, :n] = torch.tensor(x.prompt_ids + x.target_ids)  # right padding: positions 0..n-1
            mask[i, :n] = 1
            labels[i, len(x.prompt_ids) : n] = torch.tensor(x.target_ids)
        hf = float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)
        assert batched / (len(a.target_ids) + len(b.target_ids)) == pytest.approx(hf, rel=1e-5)


def test_seq2seq_loss_equals_transformers_labels_loss(tiny_t5, dialogsum_dir, tmp_path):
    cfg = sft_config(tiny_t5, dialogsum_dir, tmp_path / "run")
    policy = load_policy(cfg.policy)
    tok = policy.tokenizer
    pairs = [SFTPair(str(i), tok(d)["input_ids"], tok(s, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
             for i, (d, s) in enumerate([("#Person1#: Hello there. #Person2#: Hi!", "They greet."),
                                         ("#Person1#: The meeting starts at nine tomorrow.", "A meeting at nine, they say.")])]
    enc = tok.pad({"input_ids": [p.prompt_ids for p in pairs]}, return_tensors="pt")
    labels = tok.pad({"input_ids": [p.target_ids for p in pairs]}, return_tensors="pt")
    labels = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100)
    n = sum(len(p.target_ids) for p in pairs)
    with torch.no_grad():
        hf = float(policy.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss)
        assert float(target_nll(policy, pairs)) / n == pytest.approx(hf, rel=1e-5)


def test_loss_does_not_depend_on_the_micro_batches(tiny_llama, dialogsum_dir, tmp_path):
    """The step's loss is the mean over all its summary tokens: micro-batches only split the sum."""
    trainer = SupervisedTrainer(sft_config(tiny_llama, dialogsum_dir, tmp_path / "run"))
    pairs = trainer.batch_pairs(0)
    with torch.no_grad():
        whole = target_nll(trainer.policy, pairs)
        parts = sum(target_nll(trainer.policy, pairs[i : i + 1]) for i in range(len(pairs)))
    assert_close_for_dtype(parts, whole)


# --------------------------------------------------------------------------------------------
# Same data as PPO; targets end with EOS


@pytest.mark.parametrize("arch", ["tiny_t5", "tiny_llama"])
def test_pairs_are_ppo_prompts_with_reference_summaries_ending_in_eos(arch, request, dialogsum_dir, tmp_path):
    policy_dir = request.getfixturevalue(arch)
    cfg = sft_config(policy_dir, dialogsum_dir, tmp_path / "run", "data.use_chat_template=false")
    trainer = SupervisedTrainer(cfg)
    tok = trainer.policy.tokenizer
    ppo_train = build_prompts(cfg.data, tok).train  # what PPO samples from
    assert [p.id for p in trainer.pairs] == [e.id for e in ppo_train]
    for pair, example in zip(trainer.pairs, ppo_train):
        assert pair.prompt_ids == example.input_ids
        assert pair.target_ids[-1] == tok.eos_token_id and tok.eos_token_id not in pair.target_ids[:-1]
        assert tok.decode(pair.target_ids[:-1]).strip() == example.reference.strip()


def test_chat_template_prompts_of_a_causal_policy(tiny_llama, dialogsum_dir, tmp_path):
    """With a chat template (SmolLM2) the prompt ends with the assistant turn's opening; the summary follows it."""
    chat = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.chat_template = chat
    cfg = sft_config(tiny_llama, dialogsum_dir, tmp_path / "run", "data.use_chat_template=true", "data.system_prompt=Summarize.")
    pairs = build_pairs(build_prompts(cfg.data, tok).train, tok, cfg.sft.max_target_tokens)
    assert tok.decode(pairs[0].prompt_ids).endswith("<|assistant|>")
    assert "<|system|>Summarize." in tok.decode(pairs[0].prompt_ids)


def test_linear_schedule_is_transformers_default():
    from transformers import get_linear_schedule_with_warmup

    for warmup in (0, 3):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = get_linear_schedule_with_warmup(opt, warmup, 10)
        for step in range(10):
            assert lr_factor(step, 10, "linear", warmup) == pytest.approx(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    assert [lr_factor(s, 10, "constant", 2) for s in range(4)] == [0.0, 0.5, 1.0, 1.0]


# --------------------------------------------------------------------------------------------
# It learns; it resumes exactly


def test_sft_lowers_the_loss_on_a_fixed_target(tiny_llama, dialogsum_dir, tmp_path):
    """Every dialogue gets the same summary: SFT must make it far more likely (held-out pass, dropout off)."""
    data = write_csv(tmp_path / "fixed.csv", 30, dialogsum=dialogsum_dir)
    df = pd.read_csv(data)
    df["summary"] = "#Person1# and #Person2# talk about the weather."
    df.to_csv(data, index=False)
    cfg = sft_config(tiny_llama, data, tmp_path / "run", "run.save_every=100", "sft.learning_rate=1e-2",
                     "policy.lora_target_modules=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                     steps=30, batch_size=4, micro_batch_size=4)
    trainer = SupervisedTrainer(cfg)
    pairs = trainer.pairs

    def mean_nll():
        with torch.no_grad():
            return float(target_nll(trainer.policy, pairs)) / sum(len(p.target_ids) for p in pairs)

    before = mean_nll()
    trainer.train()
    after = mean_nll()
    losses = [r["sft/loss"] for r in read_metrics(cfg.run.output_dir)]
    assert len(losses) == 30
    assert after < 0.5 * before, (before, after)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("arch", ["tiny_t5", "tiny_llama"])
def test_resume_equals_uninterrupted(arch, request, dialogsum_dir, tmp_path):
    """4 steps straight == 2 steps, stop, --resume for the other 2: same metrics, bitwise the same adapter
    (dropout on: its noise comes from (seed, step))."""
    policy_dir = request.getfixturevalue(arch)
    straight = SupervisedTrainer(sft_config(policy_dir, dialogsum_dir, tmp_path / "straight")).train()
    out = tmp_path / "resumed"
    first = SupervisedTrainer(sft_config(policy_dir, dialogsum_dir, out))
    first.train(steps=2)
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    state = json.loads((out / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["kind"] == "sft" and state["step"] == 2 and "adapter_model.safetensors" in state["files"]
    del first
    resumed = SupervisedTrainer(sft_config(policy_dir, dialogsum_dir, out), resume=True)
    assert resumed.step_idx == 2
    final = resumed.train()
    assert without_time(read_metrics(out)) == without_time(read_metrics(tmp_path / "straight"))
    a, b = adapter_tensors(final), adapter_tensors(straight)
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    rows = read_metrics(out)
    assert rows[0]["sft/learning_rate"] == 3e-3 and rows[-1]["sft/learning_rate"] == pytest.approx(3e-3 / 4)  # linear decay
    for key in ("sft/loss", "sft/learning_rate", "sft/grad_norm", "sft/tokens", "time/tokens_per_s", "time/step_s"):
        assert key in rows[-1]


def test_resume_with_another_learning_rate_is_refused(tiny_llama, dialogsum_dir, tmp_path, request):
    out = tmp_path / "run"
    rc, _, err = cli("sft", "--preset", "seed", "--policy", tiny_llama, "--data", dialogsum_dir, *TINY, "--steps", 2,
                     "--batch-size", 2, "--output-dir", out, "--no-progress")
    assert rc == 0, err
    request.getfixturevalue("no_weights_loaded")  # from here on, loading weights fails the test
    line = one_line_error(*cli("sft", "--output-dir", out, "--resume", "--learning-rate", "1e-2", "--no-progress")[::2])
    assert "sft.learning_rate 0.001 -> 0.01" in line and "--allow-config-change" in line


def test_step_with_a_non_finite_loss_stops_the_run(tiny_llama, dialogsum_dir, tmp_path, monkeypatch):
    """Not applied, its metrics line written, then one TrainingError naming the fix; no checkpoint."""
    import detoxrl.sft
    from detoxrl.errors import TrainingError

    trainer = SupervisedTrainer(sft_config(tiny_llama, dialogsum_dir, tmp_path / "run"))
    start = {k: v.detach().clone() for k, v in zip(range(len(trainer.params)), trainer.params)}
    monkeypatch.setattr(detoxrl.sft, "target_nll", lambda policy, pairs: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingError, match="SFT step 1 had a non-finite loss or gradient.*lower sft.learning_rate"):
        trainer.train()
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1] and rows[0]["sft/loss"] is None  # NaN is written as null
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "final").exists()
    assert all(torch.equal(start[i], p) for i, p in enumerate(trainer.params))


# --------------------------------------------------------------------------------------------
# SFT -> PPO: the adapter continues, and is the reference


@pytest.mark.parametrize("arch", ["tiny_t5", "tiny_llama"])
def test_sft_then_train_adapter(arch, request, dialogsum_dir, tiny_roberta, tmp_path):
    """detoxrl sft, then detoxrl train --adapter RUN/final for 2 PPO steps: PPO starts from the SFT
    adapter (KL 0 at step 1, its reference holds the SFT weights) with the adapter's LoRA settings."""
    policy_dir = request.getfixturevalue(arch)
    sft_dir, ppo_dir = tmp_path / "sft", tmp_path / "ppo"
    rc, out, err = cli("sft", "--preset", "seed", "--policy", policy_dir, "--data", dialogsum_dir, *TINY,
                       "--steps", 3, "--batch-size", 4, "--learning-rate", "3e-3", "--output-dir", sft_dir, "--no-progress")
    assert rc == 0, err
    assert f"detoxrl train --adapter {sft_dir / 'final'}" in out
    sft_weights = adapter_tensors(sft_dir / "final")
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in sft_weights.items())  # it learned something
    # final/ is portable (the base by absolute path) and its model card says what the adapter is.
    assert Path(json.loads((sft_dir / "final" / "adapter_config.json").read_text())["base_model_name_or_path"]).is_absolute()
    card = (sft_dir / "final" / "README.md").read_text()
    assert "fine-tuned on reference summaries with detoxrl sft" in card and "detoxrl train --adapter THIS_FOLDER" in card
    assert "| steps trained | 3 (of 3) |" in card and "PPO so that" not in card and "## Reward model" not in card
    rc, _, err = cli("train", "--preset", "seed", "--policy", policy_dir, "--adapter", sft_dir / "final",
                     "--reward-model", tiny_roberta, "--reward-label", "nothate", "--data", dialogsum_dir, *TINY,
                     "--set", "policy.lora_r=16",  # the adapter's settings win over the preset's and flags'
                     "--steps", 2, "--batch-size", 4, "--mini-batch-size", 2, "--max-new-tokens", 8,
                     "--set", "ppo.learning_rate=1e-3", "--output-dir", ppo_dir, "--no-progress")
    assert rc == 0, err
    rows = read_metrics(ppo_dir)
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["objective/kl"] == 0.0
    assert f"training started from the adapter `{sft_dir / 'final'}`, which was also the frozen reference" in (ppo_dir / "final" / "README.md").read_text()
    saved = load_config(path=ppo_dir / "config.yaml")
    assert (saved.policy.lora_r, saved.policy.lora_alpha) == (4, 8)  # config.yaml: the LoRA that was trained
    # The reference of the PPO run is the SFT adapter, frozen, and the trained adapter starts from it.
    from peft import get_peft_model_state_dict

    cfg = sft_config(policy_dir, dialogsum_dir, tmp_path / "unused", f"policy.adapter={sft_dir / 'final'}")
    policy = load_policy(cfg.policy)
    assert all(not p.requires_grad for n, p in policy.model.named_parameters() if f".{REFERENCE_ADAPTER}." in n)
    for adapter in (REFERENCE_ADAPTER, "default"):
        state = get_peft_model_state_dict(policy.model, adapter_name=adapter)
        assert state.keys() == sft_weights.keys()
        for name, value in sft_weights.items():
            assert torch.equal(state[name], value), (adapter, name)


# --------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, before any model loads


def test_sft_data_without_a_summary_column(tiny_llama, dialogsum_dir, tmp_path, no_model_loads):
    data = write_csv(tmp_path / "no-summary.csv", summary=False, dialogsum=dialogsum_dir)
    line = one_line_error(*cli("sft", "--preset", "seed", "--policy", tiny_llama, "--data", data, *TINY,
                               "--output-dir", tmp_path / "run")[::2])
    assert "has no reference summaries" in line and "column 'summary'" in line and "--set data.summary_column=NAME" in line
    assert not (tmp_path / "run").exists()


def test_sft_data_with_empty_summaries(tiny_llama, dialogsum_dir, tmp_path, no_model_loads):
    data = write_csv(tmp_path / "empty.csv", empty=(3, 7), dialogsum=dialogsum_dir)
    line = one_line_error(*cli("sft", "--preset", "seed", "--policy", tiny_llama, "--data", data, *TINY,
                               "--output-dir", tmp_path / "run")[::2])
    ids = pd.read_csv(data)["id"]
    assert f"2 of 24 train rows" in line and f"row '{ids[3]}'" in line and "empty reference summary" in line


def test_sft_targets_longer_than_max_target_tokens(tiny_llama, dialogsum_dir, tmp_path, no_weights_loaded):
    """Counted with the policy's tokenizer alone; the message says how many, the longest, and the fix."""
    line = one_line_error(*cli("sft", "--preset", "seed", "--policy", tiny_llama, "--data", dialogsum_dir, *TINY,
                               "--max-target-tokens", 30, "--output-dir", tmp_path / "run")[::2])
    assert "reference summaries are longer than sft.max_target_tokens=30 tokens" in line
    assert "--set sft.max_target_tokens=" in line
    n = int(line.split("error: ")[1].split(" of ")[0])
    assert 0 < n < 32


@pytest.mark.parametrize("setting, fragment", [
    ("sft.micro_batch_size=3", "sft.micro_batch_size (3) must divide sft.batch_size (8); e.g. --set sft.micro_batch_size=2"),
    ("sft.micro_batch_size=0", "sft.micro_batch_size (0) must divide sft.batch_size (8)"),
    ("sft.lr_schedule=cosine", "unknown sft.lr_schedule 'cosine'"),
    ("sft.learning_rate=0", "sft.learning_rate must be a positive number"),
    ("sft.epochs=0", "sft.epochs must be a positive number"),
    ("sft.steps=0", "sft.steps must be a positive number"),
    ("sft.max_target_tokens=0", "sft.max_target_tokens must be positive"),
    ("sft.learning_rat=1", "did you mean 'learning_rate'"),
])
def test_sft_settings_are_validated_at_load(setting, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("offline", overrides=[setting])
    assert fragment in str(info.value)


def test_sft_resume_of_a_ppo_run_and_train_resume_of_an_sft_run(tiny_t5, dialogsum_dir, tiny_roberta, tmp_path):
    sft_dir, ppo_dir = tmp_path / "sft", tmp_path / "ppo"
    assert cli("sft", "--preset", "seed", "--policy", tiny_t5, "--data", dialogsum_dir, *TINY, "--steps", 1, "--batch-size", 2,
               "--output-dir", sft_dir, "--no-progress")[0] == 0
    assert cli("train", "--preset", "seed", "--policy", tiny_t5, "--reward-model", tiny_roberta, "--reward-label", "nothate",
               "--data", dialogsum_dir, *TINY, "--steps", 1, "--batch-size", 2, "--mini-batch-size", 2, "--max-new-tokens", 4,
               "--output-dir", ppo_dir, "--no-progress")[0] == 0
    line = one_line_error(*cli("sft", "--output-dir", ppo_dir, "--resume", "--no-progress")[::2])
    assert "was written by detoxrl train, not by detoxrl sft" in line and "detoxrl train --resume" in line
    line = one_line_error(*cli("train", "--output-dir", sft_dir, "--resume", "--no-progress")[::2])
    assert "was written by detoxrl sft, not by detoxrl train" in line and "detoxrl sft --resume" in line


def test_sft_into_a_folder_that_holds_a_run(tiny_t5, dialogsum_dir, tmp_path):
    """As train: refused without --resume or --overwrite; --overwrite replaces it."""
    out = tmp_path / "run"
    args = ["sft", "--preset", "seed", "--policy", tiny_t5, "--data", dialogsum_dir, *TINY, "--steps", 1, "--batch-size", 2,
            "--output-dir", out, "--no-progress"]
    assert cli(*args)[0] == 0
    line = one_line_error(*cli(*args)[::2])
    assert "already holds a run" in line and "--overwrite" in line
    line = one_line_error(*cli(*args, "--resume", "--overwrite")[::2])
    assert "pass one of them" in line
    rc, _, err = cli(*args, "--overwrite", "--set", "run.seed=3")
    assert rc == 0, err
    assert load_config(path=out / "config.yaml").run.seed == 3


def test_sft_help():
    rc, out, _ = cli("sft", "--help")
    assert rc == 0 and out.startswith("usage: detoxrl sft")
    for option in ("--data", "--policy", "--adapter", "--steps", "--epochs", "--batch-size", "--learning-rate", "--max-target-tokens",
                   "--output-dir", "--resume", "--resume-from", "--allow-config-change", "--overwrite", "--set", "--no-progress"):
        assert option in out, option
