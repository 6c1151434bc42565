"""detoxrl.export and the folders training writes: portable adapters, merged plain-transformers models,
model cards, ``--push-to-hub`` up to the network call, and one-line errors before any model loads.

A module fixture trains a tiny T5 and a tiny Llama for two PPO steps each, the policy given by a
*relative* path (as a user types it), and evaluates the T5 run. Every check then runs from another
working directory.

Tolerance of "the merged model's outputs equal the adapter model's": for a float32 export,
greedy decoding gives the same tokens (exactly), and the logits of both over the same prompt + summary
agree to ``assert_close_for_dtype`` with ``MERGE_ULPS["fp32"]`` = 256 units in the last place of
float32, scaled by the largest logit (about 1.5e-4 for these tiny models, whose largest logits are
near 5; measured: at most 29 units). Merging folds ``s * B @ A`` into ``W`` before the product
instead of adding ``s * (x @ A) @ B`` after it: the same sums in another order. A bf16 export holds
exactly the float32 merge rounded to bf16, and its logits agree within 32 bf16 units (measured: 12).
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_close_for_dtype, make_config
from test_cli import cli, one_line_error

#: Units in the last place (of the export's dtype, times the largest logit) that merged and adapter logits may differ by.
MERGE_ULPS = {"fp32": 256.0, "bf16": 32.0}
DATA = Path(__file__).resolve().parents[2] / "shared/data/dialogsum"


@pytest.fixture(scope="module", autouse=True)
def torch_one_thread(module_one_thread):
    """Tiny models on a shared machine: one thread (see conftest)."""


def _train(policy_dir: Path, reward_dir: Path, out: Path) -> Path:
    """Two PPO steps with the policy named by a path relative to the working directory."""
    from detoxrl.modelcard import refresh_model_card
    from detoxrl.trainer import Trainer

    here = os.getcwd()
    os.chdir(policy_dir.parent)
    try:
        cfg = make_config(policy_dir.name, reward_dir, DATA, out, f"evaluation.judge_model={reward_dir}#hate",
                          "evaluation.max_new_tokens=8", "evaluation.batch_size=4", steps=2, batch_size=4, mini_batch_size=2,
                          max_new_tokens=8, max_rows=40)
        Trainer(cfg).train()
    finally:
        os.chdir(here)
    refresh_model_card(out)  # the workflow that ends a run writes its card (train's command line does this)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_t5, tiny_llama, tiny_roberta, dialogsum_dir):
    root = tmp_path_factory.mktemp("export_runs")
    out = {"t5": _train(tiny_t5, tiny_roberta, root / "t5-run"), "llama": _train(tiny_llama, tiny_roberta, root / "llama-run")}
    rc, _, err = cli("evaluate", "--run", out["t5"], "--num-samples", 4, "--greedy-only", "--no-faithfulness", "--no-progress",
                     "--judge-model", f"{tiny_roberta}#hate")
    assert rc == 0, err
    return out


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run the test from an unrelated working directory."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _adapter_policy(run: Path):
    """The run's final adapter on its base model, loaded by detoxrl (float32)."""
    from detoxrl.trained import base_model_of
    from detoxrl.policy import load_policy
    from detoxrl.config import load_config

    cfg = load_config(path=run / "config.yaml").policy
    return load_policy(dataclasses.replace(cfg, model=base_model_of(run / "final", cfg.model),
                                           adapter=str(run / "final")))


def _prompts(policy, run: Path, n: int = 3) -> list[list[int]]:
    from detoxrl.config import load_config
    from detoxrl.prompts import load_dialogue_rows, prompt_examples

    data = load_config(path=run / "config.yaml").data
    rows = [r for r in load_dialogue_rows(data) if 200 < len(r["dialogue"]) <= 400][:n]
    return [e.input_ids for e in prompt_examples(rows, data, policy.tokenizer)]


# What a user without peft or detoxrl runs: each exported folder with plain transformers.
PLAIN_TRANSFORMERS = r"""
import json, sys
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
results = []
for job in json.loads(sys.argv[1]):
    folder, prompts, max_new = job["folder"], job["prompts"], job["max_new_tokens"]
    seq2seq = AutoConfig.from_pretrained(folder).is_encoder_decoder
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    out = {"tokens": [], "logits": [], "dtype": str(next(model.parameters()).dtype)}
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            seq = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, do_sample=False,
                                 num_beams=1, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                                 eos_token_id=tok.eos_token_id)[0]
            resp = seq[1:] if seq2seq else seq[len(ids):]
            out["tokens"].append(resp.tolist())
            if seq2seq:
                dec = torch.cat([torch.tensor([model.config.decoder_start_token_id]), resp[:-1]])[None]
                logits = model(input_ids=x, decoder_input_ids=dec).logits[0]
            else:
                logits = model(input_ids=torch.cat([x[0], resp])[None]).logits[0, len(ids) - 1 : -1]
            out["logits"].append(logits.float().tolist())
    results.append(out)
print(json.dumps({"results": results, "imported": sorted(m for m in ("peft", "detoxrl") if m in sys.modules)}))
"""


def _plain_transformers(jobs: list[dict], cwd: Path) -> dict:
    """Load each ``{"folder", "prompts", "max_new_tokens"}`` with plain transformers in one fresh process
    whose working directory is ``cwd``: greedy tokens and teacher-forced logits per prompt."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([sys.executable, "-c", PLAIN_TRANSFORMERS, json.dumps(jobs)],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def merged(runs, tmp_path_factory):
    """``export --merge`` of both runs (float32) and of the Llama run in bf16, run from an unrelated
    folder, then loaded with plain transformers in one subprocess started in ``/``."""
    root = tmp_path_factory.mktemp("merged")
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    out, jobs = {}, []
    try:
        for key, arch, dtype in (("t5", "t5", "fp32"), ("llama", "llama", "fp32"), ("llama-bf16", "llama", "bf16")):
            folder = root / key
            rc, stdout, err = cli("export", runs[arch], "--output", folder, "--merge", "--dtype", dtype)
            assert rc == 0, err
            assert f"exported the merged model ({dtype})" in stdout
            policy = _adapter_policy(runs[arch])
            prompts = _prompts(policy, runs[arch])
            out[key] = {"folder": folder, "policy": policy, "prompts": prompts}
            jobs.append({"folder": str(folder), "prompts": prompts, "max_new_tokens": 8})
    finally:
        os.chdir(here)
    plain = _plain_transformers(jobs, cwd=Path("/"))
    assert plain["imported"] == []  # neither peft nor detoxrl
    for key, result in zip(out, plain["results"]):
        out[key].update(result)
    return out


def _adapter_outputs(policy, prompts: list[list[int]], max_new: int) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy tokens (one prompt at a time, through detoxrl's generation) and teacher-forced logits of the adapter model."""
    from detoxrl.config import GenerationConfig
    from detoxrl.rollout import generate

    tokens, logits = [], []
    with torch.no_grad():
        for ids in prompts:
            r = generate(policy, [ids], ["q"], GenerationConfig(max_new_tokens=max_new, do_sample=False), batch_size=1)
            resp = r.response_ids[0][r.response_mask[0].bool()]
            tokens.append(resp.tolist())
            x = torch.tensor([ids])
            if policy.is_seq2seq:
                dec = torch.cat([torch.tensor([policy.model.base_model.model.config.decoder_start_token_id]), resp[:-1]])[None]
                logits.append(policy.model(input_ids=x, decoder_input_ids=dec).logits[0].float())
            else:
                logits.append(policy.model(input_ids=torch.cat([x[0], resp])[None]).logits[0, len(ids) - 1 : -1].float())
    return tokens, logits


# --------------------------------------------------------------------------------------------
# final/ as training writes it


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_final_adapter_loads_with_auto_peft_from_another_folder(arch, runs, elsewhere):
    """The run was trained with ``policy.model`` relative to another folder; its final/ names the base
    by absolute path, so ``AutoPeftModelFor*.from_pretrained(final)`` works from here."""
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSeq2SeqLM
    from safetensors.torch import load_file

    final = runs[arch] / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute() and Path(config["base_model_name_or_path"]).is_dir()
    auto = AutoPeftModelForSeq2SeqLM if arch == "t5" else AutoPeftModelForCausalLM
    model = auto.from_pretrained(str(final))
    saved = load_file(str(final / "adapter_model.safetensors"))
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved) > 0
    for name, tensor in saved.items():
        assert torch.equal(loaded[name.replace(".weight", ".default.weight")], tensor), name
    card = (final / "README.md").read_text()
    assert "[More Information Needed]" not in card  # peft's blank template
    assert "detoxified with detoxrl" in card and "## Reward model and judges" in card and "## Training configuration" in card
    assert f"`{config['base_model_name_or_path']}`" in card


# --------------------------------------------------------------------------------------------
# export --merge


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_merged_export_loads_with_plain_transformers_and_equals_the_adapter(arch, merged):
    m = merged[arch]
    assert sorted(p.name for p in m["folder"].iterdir()) == sorted(
        ["README.md", "config.json", "detoxrl_config.yaml", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json"])
    assert m["dtype"] == "torch.float32"
    policy, prompts = m["policy"], m["prompts"]
    tokens, logits = _adapter_outputs(policy, prompts, 8)
    assert m["tokens"] == tokens  # token-identical greedy summaries
    for theirs, ours in zip(m["logits"], logits):
        assert_close_for_dtype(torch.tensor(theirs), ours, ulps=MERGE_ULPS["fp32"])
    # The adapter changed the model: the merge is not a copy of the base.
    with policy.model.disable_adapter(), torch.no_grad():
        _, bare = _adapter_outputs(policy, prompts[:1], 8)
    assert not torch.allclose(bare[0], logits[0], atol=1e-4)
    card = (m["folder"] / "README.md").read_text()
    assert "library_name: transformers" in card and ("AutoModelForSeq2SeqLM" if arch == "t5" else "AutoModelForCausalLM") in card


def test_bf16_export_is_the_fp32_merge_rounded_to_bf16(merged):
    """``--dtype bf16``: every weight is exactly the float32 merge's, rounded to bf16; the logits stay
    within ``MERGE_ULPS["bf16"]`` bf16 units of the adapter model's (float32) largest logit. Greedy
    tokens are not compared: bf16 rounding may flip a near tie of a random tiny model."""
    from safetensors.torch import load_file

    fp32, bf16 = merged["llama"]["folder"], merged["llama-bf16"]["folder"]
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    full, half = load_file(str(fp32 / "model.safetensors")), load_file(str(bf16 / "model.safetensors"))
    assert full.keys() == half.keys()
    for name in full:
        assert half[name].dtype == torch.bfloat16 and torch.equal(half[name], full[name].to(torch.bfloat16)), name
    m = merged["llama-bf16"]
    assert m["dtype"] == "torch.bfloat16"
    with torch.no_grad():  # teacher-forced on the bf16 model's own summaries
        for ids, resp, theirs in zip(m["prompts"], m["tokens"], m["logits"]):
            ours = m["policy"].model(input_ids=torch.tensor([ids + resp])).logits[0, len(ids) - 1 : -1].float()
            assert_close_for_dtype(torch.tensor(theirs).to(torch.bfloat16), ours.to(torch.bfloat16), ulps=MERGE_ULPS["bf16"])


# --------------------------------------------------------------------------------------------
# export without --merge


def test_adapter_export_is_portable(runs, elsewhere, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from safetensors.torch import load_file

    out = tmp_path / "adapter"
    rc, _, err = cli("export", runs["llama"], "--output", out)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "detoxrl_config.yaml"]
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute()
    saved = load_file(str(runs["llama"] / "final" / "adapter_model.safetensors"))
    exported = load_file(str(out / "adapter_model.safetensors"))
    assert saved.keys() == exported.keys() and all(torch.equal(saved[k], exported[k]) for k in saved)
    model = AutoPeftModelForCausalLM.from_pretrained(str(out))
    assert sum("lora_" in n for n, _ in model.named_parameters()) == len(saved)
    assert "library_name: peft" in (out / "README.md").read_text()


def test_model_card_holds_the_evaluation_numbers(runs, elsewhere, tmp_path):
    compare = json.loads((runs["t5"] / "eval" / "compare.json").read_text())
    before, after = compare["toxicity"]["before"]["mean"], compare["toxicity"]["after"]["mean"]
    reduction = compare["toxicity"]["reduction"]
    interval = f"[{-reduction['high'] * 100:+.1f}%, {-reduction['low'] * 100:+.1f}%]"
    rouge = compare["rouge"]["rougeL"]
    out = tmp_path / "card"
    assert cli("export", runs["t5"], "--output", out)[0] == 0
    for card in ((runs["t5"] / "final" / "README.md").read_text(), (out / "README.md").read_text()):  # evaluate --run refreshed final's
        section = card.split("## Evaluation", 1)[1]
        assert f"{before:.4f}" in section and f"{after:.4f}" in section and interval in section
        assert compare["verdict"].split(":")[0] in section and "ROUGE-L" in section
        assert str(compare["n"]) in section
    # Not shown for a checkpoint (the evaluation is of the final adapter), nor once it is stale.
    step = sorted((runs["t5"] / "checkpoints").iterdir())[-1]
    assert cli("export", step, "--output", tmp_path / "ckpt")[0] == 0
    assert f"{before:.4f}" not in (tmp_path / "ckpt" / "README.md").read_text()
    assert "is of its final adapter, not of" in (tmp_path / "ckpt" / "README.md").read_text()


# --------------------------------------------------------------------------------------------
# --push-to-hub, up to the network call


def test_push_to_hub_calls_huggingface_hub(runs, elsewhere, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, **kw: calls.append(("create_repo", kw)) or f"https://huggingface.co/{kw['repo_id']}")
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload_folder", kw)))
    out = tmp_path / "hub"
    rc, stdout, err = cli("export", runs["llama"], "--output", out, "--merge", "--push-to-hub", "someone/detox-tiny", "--private")
    assert rc == 0, err
    assert calls == [
        ("create_repo", {"repo_id": "someone/detox-tiny", "repo_type": "model", "private": True, "exist_ok": True}),
        ("upload_folder", {"repo_id": "someone/detox-tiny", "repo_type": "model", "folder_path": str(out),
                           "commit_message": "Upload hub (detoxrl export)"}),
    ]
    assert "pushed to https://huggingface.co/someone/detox-tiny" in stdout


def test_push_to_hub_without_network_is_one_line_and_keeps_the_export(runs, elsewhere, tmp_path, monkeypatch):
    import huggingface_hub

    def offline(self, **kw):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    out = tmp_path / "hub"
    rc, _, err = cli("export", runs["llama"], "--output", out, "--push-to-hub", "someone/detox-tiny")
    line = one_line_error(rc, err)
    assert "could not push" in line and "the export in" in line and f"hf upload someone/detox-tiny {out}" in line
    assert (out / "adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------------------------
# the output folder


def test_existing_output_needs_overwrite_and_a_failed_export_changes_nothing(runs, elsewhere, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    rc, _, err = cli("export", runs["llama"], "--output", out)
    assert "already exists and is not empty; pass --overwrite" in one_line_error(rc, err)
    import detoxrl.modelcard

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(detoxrl.modelcard, "write_model_card", broken)
    with pytest.raises(RuntimeError):
        cli("export", runs["llama"], "--output", out, "--overwrite")
    assert [p.name for p in tmp_path.iterdir() if p.name != "elsewhere"] == ["out"]  # no temporary folder left
    assert (out / "mine.txt").read_text() == "keep me"
    monkeypatch.undo()
    rc, _, err = cli("export", runs["llama"], "--output", out, "--overwrite")
    assert rc == 0, err
    assert not (out / "mine.txt").exists() and (out / "adapter_model.safetensors").is_file()


@pytest.fixture
def no_model_loads(monkeypatch, no_weights_loaded):
    import transformers

    def boom(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the bad input was reported")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(boom))


def test_bad_export_input_is_one_line_before_any_model_loads(runs, tmp_path, monkeypatch, no_model_loads):
    import shutil

    run = runs["llama"]
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(run / name, unfinished / name)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(run / "final" / "adapter_config.json", no_weights)
    lost_base = tmp_path / "lost-base"
    shutil.copytree(run / "final", lost_base)
    config = json.loads((lost_base / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "./models/tiny-llama"  # relative to a folder that is not here
    (lost_base / "adapter_config.json").write_text(json.dumps(config))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        ((tmp_path / "missing", "--output", tmp_path / "o1"), "does not exist; pass a train run folder"),
        ((tmp_path, "--output", tmp_path / "o2"), "is not a train run folder (the --output-dir of detoxrl train: config.yaml, metrics.jsonl, final/) or a PEFT adapter folder"),
        ((unfinished, "--output", tmp_path / "o3"), "has no final/ adapter"),
        ((no_weights, "--output", tmp_path / "o4"), "has adapter_config.json but no weights"),
        ((lost_base, "--output", tmp_path / "o5", "--merge"), "does not exist here; pass the base model"),
        ((run, "--output", run / "final"), "is or holds the folder being exported"),
        ((run, "--output", a_file), "is a file, not a folder"),
        ((run, "--output", tmp_path / "o6", "--push-to-hub", "not a repo id!"), "is not a hub repo id"),
        ((run, "--output", tmp_path / "o7", "--dtype", "fp8"), "invalid choice"),
    ]
    for argv, expected in cases:
        rc, _, err = cli("export", *argv)
        assert expected in one_line_error(rc, err), (argv, err)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 8))


def test_export_help():
    rc, out, _ = cli("export", "--help")
    assert rc == 0
    for option in ("RUN_OR_ADAPTER", "--output", "--merge", "--dtype", "--push-to-hub", "--overwrite", "--policy"):
        assert option in out


def test_summarize_reads_the_settings_of_the_run_and_of_the_export(runs, merged, elsewhere, monkeypatch):
    """``summarize --adapter RUN/final`` takes the run's config.yaml, ``summarize --model EXPORTED`` the
    export's detoxrl_config.yaml (here: the seed template, float32, data.max_prompt_tokens=4096, which a
    long dialogue needs), from another folder; the merged model writes the adapter's summaries."""
    import io

    dialogues = ["#Person1#: " + " ".join(["I cannot believe you said that to my sister at dinner."] * 120),
                 "#Person1#: Shall we meet at noon?\n#Person2#: Yes, at the station."]
    text = "\n\n".join(dialogues)
    outs = {}
    for name, argv in (("adapter", ["--adapter", runs["t5"] / "final"]), ("model", ["--model", merged["t5"]["folder"]])):
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))
        rc, out, err = cli("summarize", *argv, "--max-new-tokens", 6, "--no-progress")
        assert rc == 0, err
        outs[name] = [json.loads(line)["summary"] for line in out.splitlines()]
    assert outs["model"] == outs["adapter"] and len(outs["model"]) == 2
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    rc, _, err = cli("summarize", "--model", merged["t5"]["folder"], "--set", "data.max_prompt_tokens=1024", "--no-progress")
    assert "above data.max_prompt_tokens=1024" in one_line_error(rc, err)  # the dialogue is long: the 4096 came from the export
