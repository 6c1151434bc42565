"""The ``detoxrl`` command line: help, prepare, score, train/resume, evaluate, compare, report, and
one-line errors (exit status 2) for bad input, raised before any model loads.

Commands run in-process through ``detoxrl.cli.main([...])`` on tiny random models of the real
architectures; tests marked ``slow`` use the real offline default (SmolLM2 tokenizer, BiLSTM).
"""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detoxrl.cli import main
from detoxrl.errors import ModelLoadError
from detoxrl.packaged import locate_packaged_file
from detoxrl.tiny import make_tiny_roberta

DATA = Path(__file__).resolve().parents[2] / "shared/data/dialogsum"
needs_data = pytest.mark.skipif(not (DATA / "train.csv").is_file(), reason=f"DialogSum not found at {DATA}")

from conftest import ROBERTA_WIDE, TOKENIZER_GLOBS, copy_model, make_remote_code_model  # noqa: E402
# The tiny BPE tokenizer needs ~3x the tokens of a real one: short dialogues, generous token limit.
TINY = ["--set", "data.max_prompt_tokens=4096", "--set", "data.max_chars=500", "--set", "data.max_rows=40"]
NOTEBOOK_BENIGN = "#Person 1# tells Tommy that he didn't like the movie."
NOTEBOOK_TOXIC = "#Person 1# tells that he will kill his friends."


@pytest.fixture(scope="module", autouse=True)
def torch_one_thread(module_one_thread):
    """Tiny models on a shared 2-core machine: one thread (see conftest)."""


def cli(*argv) -> tuple[int, str, str]:
    """Run ``detoxrl argv...`` in-process; return (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse: --help, usage errors
            rc = e.code if isinstance(e.code, int) else 0
    return rc, out.getvalue(), err.getvalue()


def one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]



@pytest.fixture(scope="module")
def tiny(wide_tiny_models):
    return wide_tiny_models


def tiny_train_args(tiny, out_dir, steps=2):
    return [
        "train", "--preset", "seed", "--policy", tiny["t5"], "--reward-model", tiny["reward"], "--reward-label", "nothate",
        "--data", DATA, "--steps", steps, "--batch-size", 4, "--mini-batch-size", 2, "--max-new-tokens", 8,
        "--output-dir", out_dir, "--no-progress",
        # the seed preset's judge is a hub model: use a second tiny classifier instead
        "--set", f"evaluation.judge_model={tiny['judge']}", "--set", "evaluation.judge_toxic_label=toxic",
        "--set", "evaluation.max_new_tokens=12", "--set", "evaluation.batch_size=4", *TINY,
    ]


@pytest.fixture
def no_model_loads(monkeypatch, no_weights_loaded):
    """Fail the test if any weights (from_pretrained, safetensors) or tokenizer load: bad input must
    be reported before that."""
    import transformers

    import detoxrl.policy
    import detoxrl.rewards

    def boom(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the bad input was reported")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(boom))
    monkeypatch.setattr(detoxrl.policy, "convert_packaged_smollm2", boom)
    monkeypatch.setattr(detoxrl.rewards, "_load_bilstm", boom)


# --------------------------------------------------------------------------------------------
# help


def test_entry_point_help_in_a_subprocess():
    exe = Path(sys.executable).with_name("detoxrl")
    cmd = [str(exe), "--help"] if exe.is_file() else [sys.executable, "-m", "detoxrl.cli", "--help"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    for word in ("prepare", "score", "train", "evaluate", "compare", "report", "demo", "make-tiny", "offline", "seed"):
        assert word in res.stdout


@pytest.mark.parametrize(
    "command,options",
    [
        ("prepare", ["--data", "--policy", "--set", "--json", "--preset"]),
        ("score", ["TEXT", "--reward-model", "--reward-label", "--toxic-label", "--json"]),
        ("train", ["--steps", "--batch-size", "--mini-batch-size", "--output-dir", "--resume", "--overwrite", "--max-new-tokens", "--config",
                   "--resume-from", "latest-valid", "--allow-config-change", "--trust-remote-code"]),
        ("evaluate", ["--run", "--num-samples", "--samples-per-prompt", "--sample", "--judge-model", "--no-rouge", "--no-faithfulness", "--fresh", "--json"]),
        ("compare", ["--run", "--before", "--after", "--json"]),
        ("report", ["RUN_DIR"]),
        ("demo", ["--num-samples", "--steps", "--output-dir"]),
        ("make-tiny", ["t5", "roberta", "llama", "--data"]),
    ],
)
def test_subcommand_help(command, options):
    rc, out, _ = cli(command, "--help")
    assert rc == 0
    assert out.startswith("usage: detoxrl " + command)
    for option in options:
        assert option in out, f"{command} --help does not mention {option}"


def test_every_command_help_ends_with_an_example_and_shows_the_offline_defaults():
    from detoxrl.cliargs import EXAMPLES
    from detoxrl.config import load_config

    offline = load_config("offline")
    for command in [*EXAMPLES, "train"]:
        rc, out, _ = cli(command, "--help")
        example = out[out.index("\nexample"):]
        assert rc == 0 and f"detoxrl {command} " in example, (command, example)
    _, out, _ = cli("train", "--help")
    flat = " ".join(out.split())  # argparse wraps the help lines
    for flag, value in (("ppo.steps", offline.ppo.steps), ("ppo.batch_size", offline.ppo.batch_size),
                        ("generation.max_new_tokens", offline.generation.max_new_tokens),
                        ("ppo.learning_rate", offline.ppo.learning_rate)):
        assert f"{flag}; offline preset: {value}" in flat, flag
    _, out, _ = cli("demo", "--help")
    assert "ppo.samples_per_prompt=4" in " ".join(out.split())  # the demo says where its settings differ


def test_no_command_prints_help():
    rc, out, _ = cli()
    assert rc == 0 and "COMMAND" in out and "presets:" in out


def test_version():
    rc, out, _ = cli("--version")
    assert rc == 0 and out.startswith("detoxrl ")


# --------------------------------------------------------------------------------------------
# prepare


@needs_data
def test_prepare_tiny_policy(tiny):
    # the notebook's filter (the offline preset narrows max_chars for 2-core machines)
    notebook_filter = ["--set", "data.min_chars=200", "--set", "data.max_chars=1000"]
    rc, out, err = cli("prepare", "--data", DATA, "--policy", tiny["t5"], "--set", "data.max_prompt_tokens=4096",
                       "--set", "data.max_rows=200", *notebook_filter, "--json")
    assert rc == 0, err
    stats = json.loads(out)
    assert (stats["rows"], stats["kept"]) == (12460, 10022)  # 200 < chars <= 1000 keeps 10022 of DialogSum's 12460
    assert (stats["train"], stats["test"]) == (160, 40)
    assert stats["tokenizer"] == str(tiny["t5"]) and stats["prompt_tokens"]["max"] <= 4096

    rc, out, err = cli("prepare", "--data", DATA, "--policy", tiny["t5"], "--set", "data.max_prompt_tokens=4096",
                       "--set", "data.max_rows=200", *notebook_filter)
    assert rc == 0, err
    assert "train: 160  test: 40" in out and "prompt tokens" in out


@needs_data
@pytest.mark.slow
def test_prepare_offline_default_tokenizer_gives_the_notebook_split():
    # The offline preset narrows the filter to 600 chars for 2-core machines; the notebook's is 1000.
    rc, out, err = cli("prepare", "--data", DATA, "--set", "data.max_chars=1000", "--json")
    assert rc == 0, err
    stats = json.loads(out)
    assert (stats["train"], stats["test"]) == (8017, 2005)
    assert stats["tokenizer"] == "packaged:smollm2-135m-instruct"
    assert 0 < stats["prompt_tokens"]["max"] <= 1024


# --------------------------------------------------------------------------------------------
# score


def test_score_tiny_reward_model(tiny):
    texts = [NOTEBOOK_BENIGN, NOTEBOOK_TOXIC, "hello"]
    rc, out, err = cli("score", "--json", "--reward-model", tiny["reward"], "--reward-label", "nothate", *texts)
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["text"] for r in rows] == texts
    for r in rows:
        assert set(r["labels"]) == {"nothate", "hate"}
        assert r["reward"] == pytest.approx(r["labels"]["nothate"]["logit"])  # the logit, by label name
        assert r["toxicity"] == pytest.approx(r["labels"]["hate"]["prob"])  # the other of two labels
        assert r["labels"]["nothate"]["prob"] + r["labels"]["hate"]["prob"] == pytest.approx(1.0, abs=1e-5)
    assert len({round(r["reward"], 6) for r in rows}) == 3  # scores vary with the text

    rc, out, err = cli("score", "--reward-model", tiny["reward"], "--reward-label", "nothate", "hello")
    assert rc == 0, err
    assert "reward = logit of 'nothate'" in out and "toxicity = P('hate')" in out


def test_score_a_label_order_that_differs_from_the_preset(tiny, tmp_path):
    # labels (hate, nothate): the reward is still nothate's logit, the toxic label re-derived.
    flipped = make_tiny_roberta(tmp_path / "flipped", [], labels=("hate", "nothate"), seed=0, config_overrides=ROBERTA_WIDE)
    rc, out, err = cli("score", "--json", "--reward-model", flipped, "--reward-label", "nothate", "hi")
    assert rc == 0, err
    (row,) = json.loads(out)
    assert row["reward"] == pytest.approx(row["labels"]["nothate"]["logit"])
    assert row["toxicity"] == pytest.approx(row["labels"]["hate"]["prob"])


def test_score_with_a_python_reward_function(tmp_path, monkeypatch):
    (tmp_path / "my_reward.py").write_text("def polite(texts):\n    return [-float('kill' in t) for t in texts]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # no --reward-label: a python:module:function reward has the single label "reward"
    rc, out, err = cli("score", "--json", "--reward-model", "python:my_reward:polite", "hello", "I will kill you")
    assert rc == 0, err
    assert [r["reward"] for r in json.loads(out)] == [0.0, -1.0]


def test_score_without_text():
    rc, _, err = cli("score", "--reward-model", "packaged:profanity-check")
    assert "TEXT" in one_line_error(rc, err)


@pytest.mark.slow
def test_score_offline_default_on_the_notebook_sentences():
    rc, out, err = cli("score", "--json", NOTEBOOK_BENIGN, NOTEBOOK_TOXIC)
    assert rc == 0, err
    benign, toxic = json.loads(out)
    assert "non-toxic" in benign["labels"] and "toxic" in benign["labels"]
    assert benign["reward"] == pytest.approx(benign["labels"]["non-toxic"]["logit"])
    assert toxic["reward"] < benign["reward"]
    assert toxic["toxicity"] > benign["toxicity"]


# --------------------------------------------------------------------------------------------
# train, refuse to clobber, resume


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory):
    """A finished tiny run: 2 steps, then --resume to 3; the outputs of both commands."""
    if not (DATA / "train.csv").is_file():
        pytest.skip(f"DialogSum not found at {DATA}")
    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    first = cli(*tiny_train_args(tiny, run_dir, steps=2))
    assert first[0] == 0, first[2]
    metrics_after_first = (run_dir / "metrics.jsonl").read_text().splitlines()
    final_after_first = (run_dir / "final" / "adapter_model.safetensors").read_bytes()
    resumed = cli("train", "--output-dir", run_dir, "--resume", "--steps", 3, "--no-progress")
    return {"dir": run_dir, "first": first, "metrics_after_first": metrics_after_first,
            "final_after_first": final_after_first, "resumed": resumed}


def test_train_writes_metrics_and_a_final_adapter(tiny_run):
    rc, out, err = tiny_run["first"]
    assert "trained 2 steps" in out
    lines = [json.loads(x) for x in tiny_run["metrics_after_first"]]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(isinstance(m["env/reward_mean"], float) for m in lines)
    run_dir = tiny_run["dir"]
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "final" / "adapter_config.json").is_file()


def test_final_adapter_loads_with_peft(tiny_run, tiny):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSeq2SeqLM

    final = tiny_run["dir"] / "final"
    state = load_file(str(final / "adapter_model.safetensors"))
    assert state and all("lora_" in k for k in state)
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny["t5"]), str(final))
    assert any("lora_" in n for n, _ in model.named_parameters())


def test_train_again_without_flags_refuses(tiny_run, tiny, no_model_loads):
    rc, out, err = cli("train", "--output-dir", tiny_run["dir"])
    line = one_line_error(rc, err)
    assert "--resume" in line and "--overwrite" in line


def test_resume_continues_to_the_new_step_count(tiny_run):
    rc, out, err = tiny_run["resumed"]
    assert rc == 0, err
    assert "trained 3 steps" in out
    lines = [json.loads(x) for x in (tiny_run["dir"] / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert lines[:2] == [json.loads(x) for x in tiny_run["metrics_after_first"]]  # earlier steps kept as they were
    assert (tiny_run["dir"] / "final" / "adapter_model.safetensors").read_bytes() != tiny_run["final_after_first"]


def test_resume_with_a_changed_learning_rate_is_refused(tiny_run, no_model_loads):
    """--resume --set ppo.learning_rate=... went ahead while config.yaml kept the old rate."""
    before = (tiny_run["dir"] / "config.yaml").read_bytes()
    rc, _, err = cli("train", "--output-dir", tiny_run["dir"], "--resume", "--steps", 3, "--no-progress",
                     "--set", "ppo.learning_rate=0.001", "--seed", 5)
    line = one_line_error(rc, err)
    assert "these settings differ from those of checkpoint" in line and "step-000003" in line
    assert "ppo.learning_rate 1.41e-05 -> 0.001, run.seed 0 -> 5" in line and "--allow-config-change" in line
    assert (tiny_run["dir"] / "config.yaml").read_bytes() == before


def test_allow_config_change_without_resume(tiny, tmp_path, no_model_loads):
    rc, _, err = cli(*tiny_train_args(tiny, tmp_path / "run"), "--allow-config-change")
    assert "--allow-config-change only applies to --resume" in one_line_error(rc, err)


def test_resume_together_with_overwrite(tiny, tmp_path, no_model_loads):
    rc, _, err = cli(*tiny_train_args(tiny, tmp_path / "run"), "--resume", "--overwrite")
    assert "--resume continues the run in --output-dir and --overwrite replaces it; pass one of them" in one_line_error(rc, err)


def test_resume_from_a_folder_that_is_not_a_checkpoint_of_the_run(tiny_run, tmp_path, no_model_loads):
    rc, _, err = cli("train", "--output-dir", tiny_run["dir"], "--resume-from", tmp_path, "--no-progress")
    line = one_line_error(rc, err)
    assert f"--resume-from '{tmp_path}' is not a checkpoint of the run" in line and "latest-valid" in line
    rc, _, err = cli("train", "--output-dir", tiny_run["dir"], "--resume-from", "step-000009", "--no-progress")
    assert "--resume-from 'step-000009' does not exist" in one_line_error(rc, err)


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_data
def test_corrupt_latest_checkpoint_then_resume_from_latest_valid(tiny, tmp_path):
    """Fault: the latest checkpoint is damaged (one byte of its optimizer state). --resume refuses it,
    naming --resume-from latest-valid, which continues from the checkpoint before it and ends where
    the undamaged run ended."""
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    args = [*tiny_train_args(tiny, run_dir, steps=4), "--set", "run.save_every=2", "--set", "run.keep_checkpoints=5"]
    rc, _, err = cli(*args)
    assert rc == 0, err
    metrics = [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")} for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = load_file(str(run_dir / "final" / "adapter_model.safetensors"))
    optimizer = run_dir / "checkpoints" / "step-000004" / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0x01
    optimizer.write_bytes(bytes(data))

    rc, _, err = cli("train", "--output-dir", run_dir, "--resume", "--no-progress")
    line = one_line_error(rc, err)
    assert "step-000004' has a damaged optimizer.pt (its sha256 differs" in line and "--resume-from latest-valid" in line
    rc, out, err = cli("train", "--output-dir", run_dir, "--resume-from", "latest-valid", "--no-progress")
    assert rc == 0, err
    assert "trained 4 steps" in out
    assert "note: set aside step-000004 (corrupt: has a damaged optimizer.pt" in err
    again = [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")} for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert again == metrics  # steps 3 and 4 recomputed from step 2, exactly
    resumed = load_file(str(run_dir / "final" / "adapter_model.safetensors"))
    assert resumed.keys() == final.keys() and all(torch.equal(resumed[k], final[k]) for k in final)
    assert (run_dir / "checkpoints" / "step-000004.corrupt").is_dir()
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step-??????"))] == ["step-000002", "step-000004"]


@needs_data
def test_failing_overwrite_leaves_the_old_run_byte_identical(tiny, tmp_path, monkeypatch):
    """Fault: --overwrite with a python: reward that raises at step 1. The earlier run (metrics.jsonl,
    final/, checkpoints, config) is byte for byte as it was; the message says so."""
    run_dir = tmp_path / "run"
    rc, _, err = cli(*tiny_train_args(tiny, run_dir, steps=1))
    assert rc == 0, err
    before = _tree_bytes(run_dir)
    assert "metrics.jsonl" in before and "final/adapter_model.safetensors" in before
    (tmp_path / "raising_reward.py").write_text("def reward(texts):\n    raise RuntimeError('the reward service is down')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rc, _, err = cli(*tiny_train_args(tiny, run_dir, steps=2), "--overwrite",
                     "--reward-model", "python:raising_reward:reward", "--reward-label", "reward")
    line = one_line_error(rc, err)
    assert "reward function python:raising_reward:reward raised RuntimeError: the reward service is down" in line
    assert f"--overwrite: the earlier run in '{run_dir}' is unchanged" in line
    assert {k: v for k, v in _tree_bytes(run_dir).items() if not k.startswith("new-run.incomplete/")} == before
    # The next run cleans up what the failed one left, and says so.
    rc, out, err = cli("train", "--output-dir", run_dir, "--resume", "--steps", 2, "--no-progress")
    assert rc == 0, err
    assert "note: removed" in err and not (run_dir / "new-run.incomplete").exists()


@needs_data
def test_train_interrupted_before_the_first_checkpoint_of_an_overwrite(tiny, tmp_path, monkeypatch):
    """Ctrl-C said 'rerun with --resume': that would continue the earlier run, not the interrupted one."""
    import detoxrl.trainer

    run_dir = tmp_path / "run"
    rc, _, err = cli(*tiny_train_args(tiny, run_dir, steps=1))
    assert rc == 0, err
    before = _tree_bytes(run_dir)

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(detoxrl.trainer.Trainer, "step", interrupted)
    rc, _, err = cli(*tiny_train_args(tiny, run_dir, steps=2), "--overwrite")
    assert rc == 130 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("interrupted before the first checkpoint of the new run: --overwrite: the earlier run in")
    assert "rerun with --overwrite to start again" in err
    assert {k: v for k, v in _tree_bytes(run_dir).items() if not k.startswith("new-run.incomplete/")} == before


def test_train_interrupted_before_its_first_checkpoint_says_overwrite_not_resume(tiny, tmp_path, monkeypatch):
    """A new run stopped before its first checkpoint: --resume would find no checkpoint and a plain rerun
    an earlier run; the line says --overwrite, and that rerun works."""
    import detoxrl.trainer

    run_dir = tmp_path / "run"
    real_step = detoxrl.trainer.Trainer.step

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(detoxrl.trainer.Trainer, "step", interrupted)
    rc, _, err = cli(*tiny_train_args(tiny, run_dir, steps=1))
    assert rc == 130 and err.strip() == "interrupted before the run's first checkpoint: nothing to resume; rerun with --overwrite"
    monkeypatch.setattr(detoxrl.trainer.Trainer, "step", real_step)
    rc, _, err = cli(*tiny_train_args(tiny, run_dir, steps=1), "--overwrite")
    assert rc == 0, err



@needs_data
def test_demo_end_to_end_on_tiny_models(tiny, tmp_path):
    """detoxrl demo (detoxrl.demo.run_demo): the plan line, the numbered phases, the verdict and its table,
    the side-by-side summaries, compare.json with the pre-declared verdict, the report."""
    run_dir = tmp_path / "demo"
    rc, out, err = cli(
        "demo", "--preset", "seed", "--policy", tiny["t5"], "--reward-model", tiny["reward"], "--reward-label", "nothate",
        "--data", DATA, "--steps", 1, "--batch-size", 8, "--mini-batch-size", 4, "--max-new-tokens", 8, "--num-samples", 4,
        "--output-dir", run_dir, "--no-progress", "--set", f"evaluation.judge_model={tiny['judge']}",
        "--set", "evaluation.judge_toxic_label=toxic", "--set", "evaluation.max_new_tokens=8", "--set", "evaluation.batch_size=4",
        "--set", "evaluation.samples_per_prompt=2", "--set", "data.min_dialogue_toxicity=none", *TINY)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("detoxrl demo: preset 'seed'") and lines[1] == "[1] toxicity of the starting policy, greedy, on 4 held-out prompts"
    assert "[3] PPO: 1 steps of 8 summaries (2 challenging prompts x 4 samples)" in lines
    head = json.loads((run_dir / "eval" / "compare.json").read_text())
    detox = head["detoxification"]
    assert detox["primary"]["measure"] == "expected_max" and detox["primary"]["judges"] == [str(tiny["judge"])]
    assert f"verdict: {head['verdict']}" in lines and head["verdict"] == detox["text"]
    assert "most improved (largest reward gain):" in lines and lines[-1].startswith("demo wall time: ")
    assert (run_dir / "report" / "report.html").is_file() and (run_dir / "final" / "README.md").is_file()


# --------------------------------------------------------------------------------------------
# evaluate, compare, report on the finished tiny run


@pytest.fixture(scope="module")
def evaluated(tiny_run):
    rc, out, err = cli("evaluate", "--run", tiny_run["dir"], "--num-samples", 6, "--json", "--no-faithfulness", "--no-progress")
    assert rc == 0, err
    return json.loads(out)


def test_evaluate_run_json(evaluated, tiny_run, tiny):
    res = evaluated
    assert res["n"] == 6 and res["before"]["n"] == 6
    for block in (res["toxicity"], res["before"]["toxicity"], res["judge"], res["before"]["judge"]):
        assert set(block) >= {"mean", "std", "median", "p95", "ratio", "max"}
        assert 0.0 <= block["mean"] <= 1.0
    assert set(res["improvement"]) == {"mean", "std"}
    assert res["comparison"]["n"] == 6 and "toxicity" in res["comparison"]
    assert set(res["rouge"]) == {"rouge1", "rouge2", "rougeL"}  # DialogSum has references
    assert res["judge_model"] == str(tiny["judge"]) and res["reward_model"] == str(tiny["reward"])
    assert res["decoding"] == "greedy" and res["max_new_tokens"] == 12
    eval_dir = tiny_run["dir"] / "eval"
    assert res["output"] == str(eval_dir)
    before = [json.loads(x) for x in (eval_dir / "before.jsonl").read_text().splitlines()]
    after = [json.loads(x) for x in (eval_dir / "after.jsonl").read_text().splitlines()]
    assert len(before) == len(after) == 6
    assert [(r["index"], r["id"]) for r in before] == [(r["index"], r["id"]) for r in after]
    assert all(r["judge_toxicity"] is not None for r in before + after)
    assert all(r["kl_k1"] is None for r in before + after)  # greedy summaries: no KL (not samples)


def test_evaluate_again_resumes_and_prints_text(evaluated, tiny_run, monkeypatch):
    import detoxrl.collection

    monkeypatch.setattr(detoxrl.collection, "generate", lambda *a, **k: pytest.fail("finished records must be reused"))
    rc, out, err = cli("evaluate", "--run", tiny_run["dir"], "--num-samples", 6, "--no-faithfulness", "--no-progress")
    assert rc == 0, err
    assert "evaluated 6 summaries (greedy)" in out
    assert out.count("toxicity: mean") == 2 and "percentage improvement" in out and "ROUGE" in out
    assert len((tiny_run["dir"] / "eval" / "after.jsonl").read_text().splitlines()) == 6


def test_evaluate_a_checkpoint_reuses_the_starting_policy_records(evaluated, tiny_run, monkeypatch):
    """evaluate --run RUN --checkpoint STEP: the checkpoint against the starting policy, whose records of
    RUN/eval are reused (only the checkpoint is generated), into RUN/eval-checkpoints/step-STEP."""
    import detoxrl.collection
    from detoxrl.checkpoint import STEP_FOLDER, list_checkpoints
    from detoxrl.policy import REFERENCE_ADAPTER

    run_dir = tiny_run["dir"]
    step = int(STEP_FOLDER.fullmatch(list_checkpoints(run_dir)[0].name).group(1))
    real, adapters = detoxrl.collection.generate, []

    def spy(*args, **kwargs):
        adapters.append(kwargs.get("adapter"))
        return real(*args, **kwargs)

    monkeypatch.setattr(detoxrl.collection, "generate", spy)
    rc, out, err = cli("evaluate", "--run", run_dir, "--checkpoint", step, "--num-samples", 6, "--json",
                       "--no-faithfulness", "--no-progress")
    assert rc == 0, err
    out_dir = run_dir / "eval-checkpoints" / f"step-{step:06d}"
    assert json.loads(out)["output"] == str(out_dir) and (out_dir / "compare.json").is_file()
    assert adapters and REFERENCE_ADAPTER not in adapters
    rc, _, err = cli("evaluate", "--run", run_dir, "--checkpoint", 999)
    assert rc == 2 and "has no checkpoint of step 999 (kept: step-" in err and len(err.strip().splitlines()) == 1


def test_compare_run(evaluated, tiny_run):
    rc, out, err = cli("compare", "--run", tiny_run["dir"], "--json")
    assert rc == 0, err
    head = json.loads(out)
    assert head["n"] == 6
    assert set(head["toxicity"]) >= {"before", "after", "reduction"}
    assert (tiny_run["dir"] / "eval" / "comparison.csv").is_file()
    rc, out, err = cli("compare", "--run", tiny_run["dir"])
    assert rc == 0, err
    assert "comparison.csv" in out


def test_report_run(evaluated, tiny_run):
    rc, out, err = cli("report", tiny_run["dir"])
    assert rc == 0, err
    html = tiny_run["dir"] / "report" / "report.html"
    assert out.strip() == f"report: {html}"
    assert html.is_file() and "<html" in html.read_text().lower()


def test_evaluate_with_another_judge_needs_its_toxic_label(tiny_run, tiny, no_model_loads):
    # --judge-model does not inherit the run's judge label; an HF judge must say which label is toxic
    rc, _, err = cli("evaluate", "--run", tiny_run["dir"], "--judge-model", tiny["reward"], "--no-progress")
    assert "--judge-toxic-label" in one_line_error(rc, err)
    rc, _, err = cli("evaluate", "--run", tiny_run["dir"], "--judge-model", tiny["reward"], "--judge-toxic-label", "toxic")
    line = one_line_error(rc, err)
    assert "nothate, hate" in line


def test_evaluate_fewer_than_one_sample_per_prompt_is_refused(tiny_run, no_model_loads):
    rc, _, err = cli("evaluate", "--run", tiny_run["dir"], "--samples-per-prompt", 0)
    assert "--samples-per-prompt must be >= 1" in one_line_error(rc, err) and "--greedy-only" in err


# --------------------------------------------------------------------------------------------
# bad input: exit 2, one line naming the fix, before any model loads


BAD_INPUT = {
    "missing data": (["--data", "/nonexistent/dialogsum.csv"], ["/nonexistent/dialogsum.csv", "does not exist", "--data"]),
    "no rows pass the filter": (["--set", "data.min_chars=6000", "--set", "data.max_chars=7000"], ["6000 < chars <= 7000", "data.min_chars"]),
    "one row passes the filter": (["--set", "data.min_chars=5000", "--set", "data.max_chars=6000"], ["none is left for training", "data.max_chars"]),
    "unknown config key": (["--set", "ppo.batch_sise=4"], ["ppo.batch_sise", "did you mean 'batch_size'"]),
    "wrong type": (["--set", "ppo.batch_size=abc"], ["ppo.batch_size must be an integer", "abc"]),
    "mini-batch": (["--batch-size", "6", "--mini-batch-size", "4"], ["must divide", "--mini-batch-size 3"]),
    "unknown reward label": (["--reward-label", "nothat"], ["'nothat'", "nothate, hate", "--reward-label nothate"]),
    "not a model": (["--policy", "__TMP__"], ["not a model folder", "--policy"]),
    "resume without checkpoint": (["--resume"], ["--resume", "no checkpoint"]),
    "unknown selection scorer": (["--set", "data.min_dialogue_toxicity=0.3", "--set", "data.selection_scorer=maxx"],
                                 ["unknown data.selection_scorer 'maxx'", "reward, judge, max"]),
    "selection threshold above 1": (["--set", "data.min_dialogue_toxicity=1.5"], ["data.min_dialogue_toxicity", "[0, 1]"]),
    "selection threshold below 0": (["--set", "data.min_dialogue_toxicity=-0.1"], ["data.min_dialogue_toxicity", "[0, 1]"]),
    "selection empties the splits": (["--set", "data.min_dialogue_toxicity=1.0", "--set", "data.selection_scorer=packaged:profanity-check"],
                                     ["keeps 0 of", "train", "lower the threshold"]),
    "unknown reward transform": (["--set", "reward.transform=logits"], ["unknown reward.transform 'logits'", "log_prob"]),
    # Non-finite hyper-parameters: each used to skip every minibatch and exit 0 with lora_B all zero.
    "infinite vf_coef": (["--set", "ppo.vf_coef=inf"], ["ppo.vf_coef must be a finite number, got inf"]),
    "infinite clip_ratio": (["--set", "ppo.clip_ratio=inf"], ["ppo.clip_ratio must lie in (0, 1)"]),
    "infinite temperature": (["--set", "generation.temperature=inf"], ["generation.temperature must be a finite number"]),
    "seed that is not a whole number": (["--seed", "1e23"], ["argument --seed: invalid int value: '1e23'", "detoxrl train --help"]),
    "seed beyond 64 bits": (["--seed", str(10**23)], ["run.seed must be an integer in [0, 2**63)"]),
}


@pytest.mark.parametrize("judges,fragments", [
    ("packaged:profanity-check,packaged:nonsense", ["packaged:nonsense"]),
    ("packaged:hatesonar#racism", ["'racism'", "hate_speech"]),
])
def test_unknown_judge_in_the_list_is_refused_before_loading(tiny_run, judges, fragments, no_model_loads):
    rc, _, err = cli("evaluate", "--run", tiny_run["dir"], "--judge-model", judges, "--no-progress")
    line = one_line_error(rc, err)
    assert all(f in line for f in fragments), line


@needs_data
@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_train_input(case, tiny, tmp_path, no_model_loads):
    extra, fragments = BAD_INPUT[case]
    extra = [str(tmp_path) if x == "__TMP__" else x for x in extra]
    args = tiny_train_args(tiny, tmp_path / "run", steps=1)
    # later flags win in argparse: the bad value replaces the good one
    rc, out, err = cli(*args, *extra)
    line = one_line_error(rc, err)
    for fragment in fragments:
        assert fragment in line, line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# Model folders that are the wrong thing for their role: exit 2, one line, before any weights load.


@needs_data
def test_train_with_a_classifier_as_policy(tiny, tmp_path, no_model_loads):
    rc, _, err = cli(*tiny_train_args(tiny, tmp_path / "run"), "--policy", tiny["reward"])
    line = one_line_error(rc, err)
    assert f"policy '{tiny['reward']}' is a RobertaForSequenceClassification" in line
    assert "language-model head would be initialised at random" in line and "--policy" in line
    assert not (tmp_path / "run").exists()


@needs_data
@pytest.mark.parametrize("label", ["LABEL_0", "nothate"])
def test_train_with_a_t5_as_reward_model(label, tiny, tmp_path, no_model_loads):
    # LABEL_0 is what the label check would once suggest for a model without labels.
    rc, _, err = cli(*tiny_train_args(tiny, tmp_path / "run"), "--reward-model", tiny["t5"], "--reward-label", label)
    line = one_line_error(rc, err)
    assert f"reward model '{tiny['t5']}' is a T5ForConditionalGeneration" in line
    assert "classification head would be initialised at random" in line and "--reward-model" in line


@needs_data
def test_train_with_a_policy_folder_without_tokenizer_files(tiny, tmp_path, no_model_loads):
    folder = copy_model(tiny["t5"], tmp_path / "t5_no_tokenizer", drop=TOKENIZER_GLOBS)
    rc, _, err = cli(*tiny_train_args(tiny, tmp_path / "run"), "--policy", folder)
    line = one_line_error(rc, err)
    assert f"policy '{folder}' has no tokenizer files" in line and "<unk>" in line and "tokenizer.save_pretrained" in line


# Remote code: per model, and per command.


@pytest.fixture
def remote_code_reward(tiny, tmp_path):
    """A classifier folder whose config.json needs its own code; the code leaves ``marker`` when it runs."""
    marker = tmp_path / "model-code-ran"
    folder = make_remote_code_model(tiny["reward"], tmp_path / "custom_reward", marker, "AutoModelForSequenceClassification")
    return folder, marker


@pytest.mark.parametrize("setting", ["policy.trust_remote_code", "reward.trust_remote_code", "evaluation.judge_trust_remote_code"])
def test_evaluate_run_whose_config_yaml_trusts_remote_code_runs_no_model_code(setting, tiny, tmp_path, remote_code_reward,
                                                                              no_model_loads):
    """A run folder's config.yaml is not a command line: without --trust-remote-code nothing from a
    model folder runs, whichever model's setting the file turns on."""
    import yaml

    from detoxrl.config import load_config

    reward, marker = remote_code_reward
    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "final" / "adapter_model.safetensors").write_bytes(b"")  # never read: the config is refused first
    (run_dir / "final" / "adapter_config.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text("")
    cfg = load_config("seed", overrides=[f"policy.model={tiny['t5']}", f"reward.model={reward}", "reward.label=nothate",
                                         f"evaluation.judge_model={reward}#hate", f"data.source={DATA}"])
    mapping = cfg.to_dict()
    section, key = setting.split(".")
    mapping[section][key] = True
    (run_dir / "config.yaml").write_text(yaml.safe_dump(mapping, sort_keys=False))
    rc, _, err = cli("evaluate", "--run", run_dir, "--no-progress")
    line = one_line_error(rc, err)
    assert f"{setting} is true in the configuration" in line and "--trust-remote-code" in line
    assert not marker.exists()


def test_score_with_a_reward_model_that_needs_its_own_code(remote_code_reward, no_model_loads):
    reward, marker = remote_code_reward
    rc, _, err = cli("score", "--reward-model", reward, "--reward-label", "nothate", "hello")
    line = one_line_error(rc, err)
    assert "runs Python code of its own" in line and "reward.trust_remote_code is false" in line
    assert "--trust-remote-code reward" in line
    # Consent for another model is not consent for this one.
    rc, _, err = cli("score", "--reward-model", reward, "--reward-label", "nothate", "--trust-remote-code", "policy,judge", "hello")
    assert "reward.trust_remote_code is false" in one_line_error(rc, err)
    assert not marker.exists()


def test_unknown_trust_remote_code_value(no_model_loads):
    rc, _, err = cli("score", "--reward-model", "packaged:profanity-check", "--trust-remote-code", "all", "hello")
    assert "--trust-remote-code takes policy, reward, judge" in one_line_error(rc, err)


def test_output_dir_that_is_a_file(tiny, tmp_path, tiny_run, no_model_loads):
    """mkdir failed with a traceback once the models had loaded; now one line, before they load."""
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    for out, fragment in ((afile, f"--output-dir '{afile}' is a file, not a folder"),
                          (afile / "run", f"--output-dir '{afile / 'run'}' lies under '{afile}', which is a file")):
        rc, _, err = cli(*tiny_train_args(tiny, out))
        assert fragment in one_line_error(rc, err)
    rc, _, err = cli("evaluate", "--run", tiny_run["dir"], "--output", afile, "--no-progress")
    assert f"--output '{afile}' is a file" in one_line_error(rc, err)
    assert afile.read_text() == "mine"


def test_output_dir_that_is_not_writable(tiny, tmp_path, monkeypatch, no_model_loads):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    real_access = os.access
    if real_access(locked, os.W_OK):  # root writes anywhere: stand in for an unprivileged user
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == locked else real_access(path, mode, **kw))
    try:
        rc, _, err = cli(*tiny_train_args(tiny, locked / "run"))
    finally:
        locked.chmod(0o755)
    line = one_line_error(rc, err)
    assert f"--output-dir '{locked / 'run'}' is not writable" in line and str(locked) in line


def test_python_reward_that_cannot_be_imported_fails_before_loading(tiny, tmp_path, no_model_loads):
    rc, _, err = cli(*tiny_train_args(tiny, tmp_path / "run"), "--reward-model", "python:no_such_reward_module:reward")
    assert "cannot import 'no_such_reward_module'" in one_line_error(rc, err)
    assert not (tmp_path / "run").exists()


def test_evaluate_interrupted_names_no_resume_flag(monkeypatch):
    """evaluate has no --resume: rerunning the same command continues from the records written."""
    import detoxrl.cli

    def interrupted(args):
        raise KeyboardInterrupt

    for command in ("cmd_evaluate", "cmd_train"):
        monkeypatch.setattr(detoxrl.cli, command, interrupted)
    rc, _, err = cli("evaluate", "--run", "somewhere")
    assert rc == 130 and "--resume" not in err
    assert "rerun the same command to continue" in err and "--fresh" in err and len(err.strip().splitlines()) == 1
    rc, _, err = cli("train", "--output-dir", "somewhere")
    assert rc == 130 and "--resume" in err  # train has the flag


def test_data_without_a_dialogue_column(tiny, tmp_path, no_model_loads):
    bad = tmp_path / "talks.csv"
    bad.write_text("id,text,summary\n1,hello there how are you,greeting\n")
    rc, _, err = cli("prepare", "--data", bad, "--policy", tiny["t5"])
    line = one_line_error(rc, err)
    assert "no column 'dialogue'" in line and "id, text, summary" in line and "data.dialogue_column" in line
    rc, _, err = cli(*tiny_train_args(tiny, tmp_path / "run"), "--data", bad)
    assert "no column 'dialogue'" in one_line_error(rc, err)


def test_unknown_section_and_bad_tracker_on_the_command_line(no_model_loads):
    rc, _, err = cli("prepare", "--set", "ppx.steps=1")
    assert "did you mean 'ppo'" in one_line_error(rc, err)
    rc, _, err = cli("train", "--set", "run.log_with=mlflow", "--output-dir", "unused")
    assert "tensorboard and wandb" in one_line_error(rc, err)


def test_unknown_reward_label_in_score(tiny, no_model_loads):
    rc, _, err = cli("score", "--reward-model", tiny["reward"], "--reward-label", "nothat", "hi")
    line = one_line_error(rc, err)
    assert "nothate, hate" in line


def test_reward_model_that_is_not_a_model(tmp_path, no_model_loads):
    rc, _, err = cli("score", "--reward-model", tmp_path, "--reward-label", "x", "hi")
    assert "not a model folder" in one_line_error(rc, err)


def test_report_and_compare_of_a_missing_run(tmp_path):
    rc, _, err = cli("report", tmp_path / "nope")
    assert "train run" in one_line_error(rc, err)
    rc, _, err = cli("compare", "--run", tmp_path / "nope")
    assert "detoxrl evaluate" in one_line_error(rc, err)
    rc, _, err = cli("evaluate", "--run", tmp_path / "nope")
    assert "--output-dir" in one_line_error(rc, err)


def test_missing_weight_package_names_the_pip_command():
    with pytest.raises(ModelLoadError) as info:
        locate_packaged_file("not-a-real-dist", "x")
    msg = str(info.value)
    assert "pip install" in msg and "not-a-real-dist" in msg and "\n" not in msg


def test_argparse_usage_error_exits_2():
    rc, _, err = cli("train", "--steps", "many")
    assert rc == 2 and "invalid int value" in err


# --------------------------------------------------------------------------------------------
# make-tiny


def test_make_tiny_t5(tmp_path):
    rc, out, err = cli("make-tiny", "t5", tmp_path / "t5")
    assert rc == 0, err
    assert "tiny random t5" in out
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "t5").model_type == "t5"
    assert (tmp_path / "t5" / "tokenizer.json").is_file()


def test_evaluate_an_adapter_on_every_row_of_a_file(tiny_run, tiny, tmp_path):
    """--all-rows holds out the whole file: a trained adapter summarizes every dialogue of any CSV."""
    talks = tmp_path / "talks.csv"
    rows = [f"#Person1#: {'I am so angry at you ' * (i + 10)}\n#Person2#: Calm down, please. {'We can talk. ' * 5}" for i in range(5)]
    talks.write_text("id,dialogue\n" + "".join(f'{i},"{d}"\n' for i, d in enumerate(rows)))
    rc, out, err = cli(
        "evaluate", "--preset", "seed", "--policy", tiny["t5"], "--reward-model", tiny["reward"], "--reward-label", "nothate",
        "--adapter", tiny_run["dir"] / "final", "--data", talks, "--all-rows", "--greedy-only", "--no-rouge", "--no-faithfulness",
        "--judge-model", "packaged:profanity-check", "--output", tmp_path / "eval", "--no-progress", "--json",
        "--set", "evaluation.max_new_tokens=6", "--set", "data.max_prompt_tokens=4096",
        "--set", "evaluation.num_samples=2",  # every row all the same: --num-samples alone limits --all-rows
    )
    assert rc == 0, err
    res = json.loads(out)
    assert res["n"] == 5 and res["before"]["n"] == 5  # every row, none kept back for training
    records = [json.loads(line) for line in (tmp_path / "eval" / "after.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["0", "1", "2", "3", "4"]
    assert "verdict" in res["comparison"]
    # train refuses a split without train rows
    rc, _, err = cli(*tiny_train_args(tiny, tmp_path / "run"), "--data", talks, "--set", "data.test_fraction=1")
    assert "data.test_fraction=1" in one_line_error(rc, err)


def test_evaluate_accepts_a_bin_adapter(tiny_run, tiny, tmp_path):
    """The notebook's adapter is adapter_model.bin: evaluate --adapter reads it (weights_only=True, the
    loader train --adapter uses) and gets the numbers of the same adapter in safetensors."""
    from safetensors.torch import load_file

    final = tiny_run["dir"] / "final"
    bin_dir = tmp_path / "bin-adapter"
    bin_dir.mkdir()
    (bin_dir / "adapter_config.json").write_text((final / "adapter_config.json").read_text())
    torch.save(load_file(str(final / "adapter_model.safetensors")), bin_dir / "adapter_model.bin")
    results = []
    for adapter, out in ((final, tmp_path / "eval-st"), (bin_dir, tmp_path / "eval-bin")):
        rc, stdout, err = cli(
            "evaluate", "--preset", "seed", "--policy", tiny["t5"], "--reward-model", tiny["reward"], "--reward-label", "nothate",
            "--adapter", adapter, "--data", DATA, "--num-samples", 4, "--greedy-only", "--no-rouge", "--no-faithfulness",
            "--judge-model", "none", "--output", out, "--no-progress", "--json", *TINY, "--set", "evaluation.max_new_tokens=6",
        )
        assert rc == 0, err
        results.append(json.loads(stdout))
    assert results[1]["n"] == 4
    assert results[1]["toxicity"] == results[0]["toxicity"] and results[1]["comparison"]["toxicity"] == results[0]["comparison"]["toxicity"]
    assert [json.loads(line)["response"] for line in (tmp_path / "eval-bin" / "after.jsonl").read_text().splitlines()] == [
        json.loads(line)["response"] for line in (tmp_path / "eval-st" / "after.jsonl").read_text().splitlines()]


def test_evaluate_an_adapter_of_a_run_with_the_settings_it_was_trained_with(tiny_run, tmp_path):
    """evaluate --adapter RUN/final reads RUN/config.yaml (its prompt template, its base model): the same
    prompts as evaluate --run, with no --preset or --policy; an adapter of no run needs --output."""
    run_dir = tiny_run["dir"]
    common = ["--num-samples", 2, "--greedy-only", "--no-rouge", "--no-faithfulness", "--no-progress", "--json"]
    rc, _, err = cli("evaluate", "--run", run_dir, "--output", tmp_path / "by-run", *common)
    assert rc == 0, err
    rc, _, err = cli("evaluate", "--adapter", run_dir / "final", "--output", tmp_path / "by-adapter", *common)
    assert rc == 0, err
    prompts = [[json.loads(x)["prompt"] for x in (tmp_path / name / "after.jsonl").read_text().splitlines()]
               for name in ("by-run", "by-adapter")]
    assert prompts[0] == prompts[1] and len(prompts[0]) == 2
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (bare / name).write_bytes((run_dir / "final" / name).read_bytes())
    rc, _, err = cli("evaluate", "--adapter", bare, *common)
    assert "belongs to no detoxrl run: say where its evaluation goes with --output DIR" in one_line_error(rc, err)


def test_evaluate_refuses_a_run_and_another_adapter(tiny_run, tmp_path, no_model_loads):
    rc, _, err = cli("evaluate", "--run", tiny_run["dir"], "--adapter", tmp_path / "other")
    assert "pass one of them" in one_line_error(rc, err)


def test_train_from_an_adapter_goes_on_the_base_it_names(tiny_run, tiny, tiny_llama, tmp_path):
    """train --adapter A without --policy trains on A's base model (its base_model_name_or_path), not the
    preset's; with another --policy the error names the base the adapter was trained on."""
    args = [a for a in tiny_train_args(tiny, tmp_path / "run", steps=1)]
    i = args.index("--policy")
    del args[i:i + 2]  # no --policy: the preset's is google/flan-t5-base, which this machine cannot load
    rc, _, err = cli(*args, "--adapter", tiny_run["dir"] / "final")
    assert rc == 0, err
    from detoxrl.config import load_config

    assert load_config(path=tmp_path / "run" / "config.yaml").policy.model == str(Path(tiny["t5"]).resolve())
    rc, _, err = cli(*args, "--policy", tiny_llama, "--adapter", tiny_run["dir"] / "final", "--output-dir", tmp_path / "r2")
    line = one_line_error(rc, err)
    assert f"the adapter was trained on '{Path(tiny['t5']).resolve()}'" in line and "pass --policy" in line, line


def test_evaluate_refuses_a_run_whose_data_changed_since_it_trained(tiny, tmp_path):
    """The data file shrank after training: its last rows, now held out, were trained on. evaluate --run
    compares the split with the run's split.json and refuses in one line; --data FILE --all-rows (every
    row of another file held out) is not refused."""
    import pandas as pd

    talks = tmp_path / "talks.csv"
    pd.read_csv(DATA / "train.csv", nrows=60).to_csv(talks, index=False)
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny, run_dir, steps=1)
    args[args.index("--data") + 1] = talks
    rc, _, err = cli(*args)
    assert rc == 0, err
    pinned = json.loads((run_dir / "split.json").read_text())
    assert pinned["test"]["rows"] > 0 and len(pinned["test"]["sha256"]) == 64
    pd.read_csv(DATA / "train.csv", nrows=30).to_csv(talks, index=False)
    common = ["--greedy-only", "--no-rouge", "--no-faithfulness", "--no-progress", "--num-samples", 2]
    rc, _, err = cli("evaluate", "--run", run_dir, *common)
    line = one_line_error(rc, err)
    assert f"the data of run '{run_dir}' has changed since it trained" in line and "--all-rows" in line
    rc, _, err = cli("evaluate", "--run", run_dir, "--data", talks, "--all-rows", "--output", tmp_path / "all", *common)
    assert rc == 0, err


def test_an_empty_output_dir_is_refused_not_the_current_folder(tiny, tmp_path, no_model_loads, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny_train_args(tiny, "", steps=1)
    rc, _, err = cli(*args)
    assert "--output-dir is empty; name a file or folder" in one_line_error(rc, err)
    assert list(tmp_path.iterdir()) == []
    for argv in (["evaluate", "--run", ""], ["summarize", "--adapter", "x", "--output", ""], ["export", "", "--output", "x"],
                 ["train", "--data", ""], ["demo", "--output-dir", ""]):
        rc, _, err = cli(*argv)
        assert "is empty; name a file or folder" in one_line_error(rc, err), argv


def test_train_takes_a_learning_rate_flag(tiny, tmp_path, no_model_loads):
    """--learning-rate sets ppo.learning_rate (sft's sets sft.learning_rate); a bad value is refused by the
    config's check before anything loads."""
    rc, _, err = cli(*tiny_train_args(tiny, tmp_path / "run"), "--learning-rate", "-1")
    assert "ppo.learning_rate must be a positive number, got -1.0" in one_line_error(rc, err)


def test_a_summary_longer_than_the_policy_can_write_is_refused_before_any_model_loads(tiny, tmp_path, no_model_loads):
    """--max-new-tokens 1000000 sat on step 1 for ten minutes; the policy's own position limit (T5's
    n_positions) refuses it in one line."""
    rc, _, err = cli(*tiny_train_args(tiny, tmp_path / "run"), "--max-new-tokens", 1000000)
    line = one_line_error(rc, err)
    assert "generation.max_new_tokens=1000000 is beyond what policy" in line and "positions" in line


def test_report_into_another_folder(tiny_run, tmp_path):
    """report --output DIR: a run folder that is read-only (or shared) can be reported elsewhere."""
    rc, out, err = cli("report", tiny_run["dir"], "--output", tmp_path / "rep")
    assert rc == 0, err
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "report.md").is_file()
    assert str(tmp_path / "rep" / "report.html") in out


def test_the_report_states_the_evaluation_that_ran_not_the_config(tiny_run, tmp_path):
    """The run's config names its own judge and a 12-token evaluation; evaluated with another judge and
    --set evaluation.max_new_tokens=5, the report's configuration table says what ran."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run["dir"], run)
    rc, _, err = cli("evaluate", "--run", run, "--num-samples", 3, "--greedy-only", "--no-faithfulness", "--no-progress",
                     "--judge-model", "packaged:profanity-check", "--set", "evaluation.max_new_tokens=5")
    assert rc == 0, err
    rc, _, err = cli("report", run)
    assert rc == 0, err
    table = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in (run / "report" / "report.md").read_text().splitlines()
             if line.startswith("| ") and line.count("|") == 3}
    assert table["judge"] == "packaged:profanity-check"
    assert "max_new_tokens 5" in table["evaluation"] and "prompts 3" in table["evaluation"]


def test_a_damaged_adapter_config_is_one_line_for_evaluate_and_train(tiny_run, tiny, tmp_path, no_model_loads):
    """A broken adapter_config.json was a JSONDecodeError traceback (evaluate --run), or an error about the
    preset's hub model (train --adapter)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run["dir"], run)
    (run / "final" / "adapter_config.json").write_text("{broken")
    rc, _, err = cli("evaluate", "--run", run, "--no-progress")
    assert "has a damaged adapter_config.json" in one_line_error(rc, err)
    args = [a for a in tiny_train_args(tiny, tmp_path / "t", steps=1)]
    del args[args.index("--policy"):args.index("--policy") + 2]
    rc, _, err = cli(*args, "--adapter", run / "final")
    assert "has a damaged adapter_config.json" in one_line_error(rc, err)


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_exit_1_and_resume_continues(tiny, tmp_path, monkeypatch):
    """ENOSPC while writing a checkpoint was a traceback; it is one line (an environment fault: exit 1)
    that says what to do, and --resume after freeing space continues from the last complete checkpoint."""
    import errno

    import detoxrl.checkpoint

    real_save = detoxrl.checkpoint.save_value_head
    calls = []

    def full(head, path):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(head, path)

    monkeypatch.setattr(detoxrl.checkpoint, "save_value_head", full)
    run_dir = tmp_path / "run"
    rc, _, err = cli(*tiny_train_args(tiny, run_dir, steps=2), "--set", "run.save_every=1")
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: No space left on device writing '") and "rerun (train, sft, dpo: with --resume)" in err
    monkeypatch.setattr(detoxrl.checkpoint, "save_value_head", real_save)
    rc, out, err = cli("train", "--output-dir", run_dir, "--resume", "--no-progress")
    assert rc == 0 and "trained 2 steps" in out, err


@pytest.mark.parametrize("argv, fragment", [
    (["evaluate", "--greedy-only", "--samples-per-prompt", 4], "--greedy-only skips the sampled pass"),
    (["compare", "--run", "x", "--before", "y"], "--run compares RUN/eval/before.jsonl"),
    (["export", "x", "--output", "y", "--private"], "--private applies to the repository --push-to-hub creates"),
    (["summarize", "--judge-model", "packaged:hatesonar"], "apply to --score; add --score or leave them out"),
])
def test_a_flag_the_command_would_ignore_is_refused(argv, fragment, no_model_loads):
    rc, _, err = cli(*argv)
    assert fragment in one_line_error(rc, err)
