"""detoxrl.checkpoint: atomic checkpoints that restore adapter, value head and optimizer exactly."""

import json

import pytest
import torch

from detoxrl import checkpoint as ck
from detoxrl.config import GenerationConfig, PPOConfig
from detoxrl.errors import DetoxError, ModelLoadError
from detoxrl.policy import POLICY_ADAPTER, REFERENCE_ADAPTER, load_policy
from detoxrl.prompts import build_prompts
from detoxrl.rollout import forward_pass, generate, logprobs_and_values
from detoxrl.update import UpdateBatch, ppo_update

pytestmark = pytest.mark.usefixtures("one_thread")

STATE = {"kl_controller": {"value": 0.15, "target": 6.0, "horizon": 10000.0}, "seed": 0}


def _policy(tiny_config, tiny_llama, seed):
    torch.manual_seed(seed)  # a different seed: different LoRA A and value head from the start
    return load_policy(tiny_config(policy=tiny_llama).policy)


def _batch(policy, tiny_config, seed=0):
    examples = build_prompts(tiny_config().data, policy.tokenizer).train[:8]
    torch.manual_seed(seed)
    r = generate(policy, [e.input_ids for e in examples], [e.prompt for e in examples],
                 GenerationConfig(max_new_tokens=6), batch_size=8)
    fw = logprobs_and_values(policy, r, batch_size=8)
    adv = torch.randn(r.response_ids.shape, generator=torch.Generator().manual_seed(seed)) * r.response_mask
    return UpdateBatch(r, fw["logprobs"], fw["values"], adv, fw["values"] + adv)


def _update(policy, optimizer, batch, seed=0):
    return ppo_update(
        policy,
        optimizer,
        batch,
        PPOConfig(ppo_epochs=1, mini_batch_size=4, clip_ratio=0.2, clip_value=0.2, vf_coef=0.1,
                  max_grad_norm=1.0, ratio_threshold=10.0, group_by_length=False),
        generator=torch.Generator().manual_seed(seed),
    )


def _lora(policy, adapter=POLICY_ADAPTER):
    return {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" in n and f".{adapter}." in n}


@pytest.fixture
def trained(tiny_config, tiny_llama, tmp_path):
    """A policy after one PPO update (nonzero B weights, Adam state) and its checkpoint at step 3."""
    policy = _policy(tiny_config, tiny_llama, seed=0)
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=1e-2)
    batch = _batch(policy, tiny_config)
    stats = _update(policy, optimizer, batch)
    assert stats["ppo/applied_minibatches"] == 2
    run = tmp_path / "run"
    path = ck.save_checkpoint(run, 3, policy, optimizer, STATE, keep=2)
    return policy, optimizer, batch, run, path


def test_roundtrip_restores_adapter_value_head_and_optimizer(trained, tiny_config, tiny_llama):
    policy, optimizer, batch, run, path = trained
    assert path == ck.checkpoint_dir(run, 3) and path.name == "step-000003"
    for name in ("adapter_model.safetensors", "adapter_config.json", "value_head.safetensors", "optimizer.pt", ck.STATE_FILE):
        assert (path / name).is_file(), name
    assert not list(path.parent.glob("*.tmp"))

    other = _policy(tiny_config, tiny_llama, seed=1)
    other_reference = _lora(other, REFERENCE_ADAPTER)
    assert not torch.equal(other.value_head.weight, policy.value_head.weight)
    other_opt = torch.optim.Adam(other.trainable_parameters(), lr=1e-2)
    state = ck.load_checkpoint(path, other, other_opt)
    assert {k: v for k, v in state.items() if k != "files"} == {**STATE, "step": 3}

    mine, theirs = _lora(policy), _lora(other)
    assert mine.keys() == theirs.keys()
    assert any("lora_B" in n and t.abs().sum() > 0 for n, t in mine.items())
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
    for a, b in zip(policy.value_head.parameters(), other.value_head.parameters()):
        assert torch.equal(a, b)
    # Loading a checkpoint restores the trainable adapter only; the reference stays the starting one.
    for name, t in _lora(other, REFERENCE_ADAPTER).items():
        assert torch.equal(t, other_reference[name])
    assert not any(p.requires_grad for n, p in other.model.named_parameters() if f".{REFERENCE_ADAPTER}." in n)

    saved, loaded = optimizer.state_dict(), other_opt.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    assert saved["state"].keys() == loaded["state"].keys() and len(saved["state"]) == len(policy.trainable_parameters())
    for i in saved["state"]:
        for key, value in saved["state"][i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(loaded["state"][i][key])), (i, key)

    # The real test of a restored optimizer: one more identical update gives identical weights.
    _update(policy, optimizer, batch, seed=5)
    _update(other, other_opt, batch, seed=5)
    for name, t in _lora(policy).items():
        assert torch.equal(t, _lora(other)[name]), name
    assert torch.equal(policy.value_head.weight, other.value_head.weight)
    with torch.no_grad():
        a = forward_pass(policy, batch.rollout, with_values=True)
        b = forward_pass(other, batch.rollout, with_values=True)
    assert torch.equal(a["logprobs"], b["logprobs"]) and torch.equal(a["values"], b["values"])


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name", ["optimizer.pt", ck.STATE_FILE, "value_head.safetensors", "adapter_model.safetensors"])
def test_truncated_file_is_model_load_error(name, trained, tiny_config, tiny_llama):
    _, _, _, _, path = trained
    _truncate(path / name)
    other = _policy(tiny_config, tiny_llama, seed=1)
    with pytest.raises(ModelLoadError) as e:
        ck.load_checkpoint(path, other, torch.optim.Adam(other.trainable_parameters(), lr=1e-2))
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_optimizer_file_is_model_load_error(trained, tiny_config, tiny_llama):
    _, _, _, _, path = trained
    (path / "optimizer.pt").unlink()
    other = _policy(tiny_config, tiny_llama, seed=1)
    with pytest.raises(ModelLoadError):
        ck.load_checkpoint(path, other, torch.optim.Adam(other.trainable_parameters(), lr=1e-2))


@pytest.mark.parametrize(
    "content",
    [
        "{}",
        "[]",
        '"step"',
        '{"step": "3", "kl_controller": {"value": 0.1}}',
        '{"step": null, "kl_controller": {"value": 0.1}}',
        '{"step": true, "kl_controller": {"value": 0.1}}',
        '{"step": -1, "kl_controller": {"value": 0.1}}',
        '{"step": 3}',
        '{"step": 3, "kl_controller": [0.1]}',
        '{"step": 3, "kl_controller": {"target": 6.0}}',
        '{"step": 3, "kl_controller": {"value": "0.1"}}',
        '{"step": 3, "kl_controller": {"value": NaN}}',
    ],
)
def test_trainer_state_that_is_empty_or_of_the_wrong_type(content, trained, tiny_config, tiny_llama):
    """``{}`` gave a KeyError traceback on resume, a wrong type a TypeError: one line instead, and
    before any model loads (the trainer reads the state when it checks the output folder)."""
    from detoxrl.runfolder import prepare_output_dir

    _, _, _, run, path = trained
    (path / ck.STATE_FILE).write_text(content)
    with pytest.raises(ModelLoadError) as e:
        ck.read_state(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message and ck.STATE_FILE in message and "--resume-from latest-valid" in message
    with pytest.raises(ModelLoadError):
        prepare_output_dir(tiny_config(output_dir=run), resume=True, clear=False)
    other = _policy(tiny_config, tiny_llama, seed=1)
    with pytest.raises(ModelLoadError):
        ck.load_checkpoint(path, other, torch.optim.Adam(other.trainable_parameters(), lr=1e-2))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_optimizer_file_gets_the_projects_message(trained, tiny_config, tiny_llama, tmp_path):
    """PyTorch's refusal advises retrying with weights-only loading turned off (running the file's code): the
    message is detoxrl's own, and the code never runs."""
    _, _, _, _, path = trained
    marker = tmp_path / "pwned"
    torch.save({"state": {0: _RunsCode(marker)}, "param_groups": []}, path / "optimizer.pt")
    other = _policy(tiny_config, tiny_llama, seed=1)
    with pytest.raises(ModelLoadError) as e:
        ck.load_checkpoint(path, other, torch.optim.Adam(other.trainable_parameters(), lr=1e-2))
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    assert "holds more than tensors" in message and "could run code" in message and "--resume-from latest-valid" in message
    assert "weights_only" not in message and "Re-running" not in message
    assert not marker.exists()


def test_tmp_and_incomplete_folders_are_ignored(trained):
    policy, optimizer, _, run, path = trained
    ck.save_checkpoint(run, 5, policy, optimizer, STATE, keep=10)
    # A crash during a later save leaves step-000010.tmp (even complete-looking): not a checkpoint, and
    # neither are folders that a resume set aside.
    tmp = run / "checkpoints" / "step-000010.tmp"
    tmp.mkdir()
    (tmp / ck.STATE_FILE).write_text(json.dumps({**STATE, "step": 10}))
    for name in ("step-000011.corrupt", "step-000011.abandoned", "notes"):
        (run / "checkpoints" / name).mkdir()
    assert ck.latest_checkpoint(run) == ck.checkpoint_dir(run, 5)
    assert [p.name for p in ck.list_checkpoints(run)] == ["step-000003", "step-000005"]
    assert ck.require_checkpoint(run) == ck.checkpoint_dir(run, 5)
    # Saving step 10 for real replaces the stale .tmp.
    ck.save_checkpoint(run, 10, policy, optimizer, STATE, keep=10)
    assert ck.latest_checkpoint(run) == ck.checkpoint_dir(run, 10) and not tmp.exists()


def test_latest_checkpoint_folder_without_trainer_state_is_not_passed_over(trained):
    """Saves are atomic, so a step-N folder without trainer_state.json was damaged afterwards: it used to
    be skipped, and the run silently resumed from an older checkpoint. Now it is the latest, and refused."""
    _, _, _, run, path = trained
    damaged = run / "checkpoints" / "step-000012"
    damaged.mkdir()
    assert ck.latest_checkpoint(run) == damaged
    with pytest.raises(ModelLoadError) as e:
        ck.select_checkpoint(run, "auto")
    assert f"checkpoint '{damaged}' has no {ck.STATE_FILE}" in str(e.value) and "--resume-from latest-valid" in str(e.value)
    point = ck.select_checkpoint(run, "latest-valid")
    assert point.ckpt == path and [(p, why.split(":")[0]) for p, why in point.newer] == [(damaged, "corrupt")]


def test_no_checkpoint(tmp_path):
    assert ck.latest_checkpoint(tmp_path) is None and ck.list_checkpoints(tmp_path / "nothing") == []
    with pytest.raises(DetoxError, match="--resume"):
        ck.require_checkpoint(tmp_path)


def test_pruning_keeps_the_newest_n(trained):
    policy, optimizer, _, run, _ = trained
    for step in (6, 9, 10, 12):  # numeric order, not string order
        ck.save_checkpoint(run, step, policy, optimizer, STATE, keep=2)
    assert [p.name for p in ck.list_checkpoints(run)] == ["step-000010", "step-000012"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000010", "step-000012"]
    ck.save_checkpoint(run, 13, policy, optimizer, STATE, keep=1)
    assert [p.name for p in ck.list_checkpoints(run)] == ["step-000013"]
    ck.save_checkpoint(run, 1_000_000, policy, optimizer, STATE, keep=2)
    assert ck.latest_checkpoint(run).name == "step-1000000"


def test_save_final_is_a_peft_folder(trained, tiny_llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    policy, _, batch, run, _ = trained
    final = ck.save_final(run, policy)
    assert final == run / "final" and not (run / "final.tmp").exists()
    assert {"adapter_model.safetensors", "adapter_config.json", "value_head.safetensors"} <= {p.name for p in final.iterdir()}
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(final)).eval()
    for n, p in loaded.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, dict(policy.model.named_parameters())[n]), n


# --------------------------------------------------------------------------------------------
# Integrity: checksums, step and folder, which checkpoint to resume from (issue 9, item 5)


def test_checkpoint_records_the_size_and_sha256_of_each_file(trained):
    import hashlib

    _, _, _, _, path = trained
    files = ck.read_state(path)["files"]
    assert set(ck.CHECKPOINT_FILES) <= set(files) and ck.STATE_FILE not in files
    for name, entry in files.items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    assert ck.verify_checkpoint(path)["step"] == 3


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, fragment", [
    ("flip", "(its sha256 differs from the one recorded when it was saved)"),
    ("truncate", "bytes, {size} when it was saved)"),
    ("append", "bytes, {size} when it was saved)"),
    ("delete", "has no {name}"),
])
@pytest.mark.parametrize("name", (*ck.CHECKPOINT_FILES, ck.VALUE_HEAD_FILE))
def test_damaged_checkpoint_file_fails_its_checksum_before_anything_loads(name, damage, fragment, trained, no_weights_loaded):
    """A file changed after the save (same size or not) is found by its recorded size and sha256,
    without loading the policy; ``torch.load`` or safetensors would otherwise meet it, if at all."""
    _, _, _, _, path = trained
    target = path / name
    size = target.stat().st_size
    if damage == "flip":
        _flip_last_byte(target)
    elif damage == "truncate":
        _truncate(target)
    elif damage == "append":
        target.write_bytes(target.read_bytes() + b"\0")
    else:
        target.unlink()
    with pytest.raises(ModelLoadError) as e:
        ck.verify_checkpoint(path)
    message = str(e.value)
    assert "\n" not in message and f"checkpoint '{path}'" in message and name in message
    assert fragment.format(size=size, name=name) in message and "--resume-from latest-valid" in message


def test_checkpoint_whose_step_does_not_match_its_folder(trained):
    """A folder copied or renamed by hand: step-000007 holding step 3's state would resume at step 3
    under the name of step 7."""
    _, _, _, run, path = trained
    moved = path.rename(path.with_name("step-000007"))
    with pytest.raises(ModelLoadError) as e:
        ck.verify_checkpoint(moved)
    assert "says step 3 in trainer_state.json but its folder name says step 7" in str(e.value)
    with pytest.raises(ModelLoadError, match="folder name says step 7"):
        ck.select_checkpoint(run, "auto")


def test_checkpoint_without_checksums_from_an_earlier_version(trained):
    """Checkpoints written before the checksums (no ``files``) still resume; their files must be there."""
    _, _, _, _, path = trained
    state = json.loads((path / ck.STATE_FILE).read_text())
    del state["files"]
    (path / ck.STATE_FILE).write_text(json.dumps(state))
    assert ck.verify_checkpoint(path)["step"] == 3
    (path / "value_head.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="has no value_head.safetensors"):
        ck.verify_checkpoint(path)


@pytest.mark.parametrize("files", ['"x"', '{"optimizer.pt": {"size": -1, "sha256": "00"}}', '{"optimizer.pt": {"size": 1}}'])
def test_trainer_state_with_a_malformed_files_list(files, trained):
    _, _, _, _, path = trained
    text = (path / ck.STATE_FILE).read_text()
    state = json.loads(text)
    state["files"] = json.loads(files)
    (path / ck.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ModelLoadError, match="no valid 'files' list"):
        ck.verify_checkpoint(path)


def test_resume_from_latest_valid_skips_corrupt_checkpoints(trained):
    policy, optimizer, _, run, path = trained
    for step in (5, 7):
        ck.save_checkpoint(run, step, policy, optimizer, STATE, keep=10)
    _flip_last_byte(ck.checkpoint_dir(run, 7) / "optimizer.pt")
    (ck.checkpoint_dir(run, 5) / ck.STATE_FILE).write_text("{")
    with pytest.raises(ModelLoadError) as e:
        ck.select_checkpoint(run, "auto")
    assert "step-000007' has a damaged optimizer.pt" in str(e.value) and "--resume-from latest-valid" in str(e.value)
    point = ck.select_checkpoint(run, "latest-valid")
    assert point.ckpt == path and point.state["step"] == 3
    assert [(p.name, why.split(":")[0]) for p, why in point.newer] == [("step-000005", "corrupt"), ("step-000007", "corrupt")]
    lines = ck.set_aside(point.newer)
    assert len(lines) == 2 and "set aside step-000007 (corrupt: has a damaged optimizer.pt" in lines[1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000003", "step-000005.corrupt", "step-000007.corrupt"]
    assert ck.select_checkpoint(run, "auto").ckpt == path  # a later --resume no longer meets them
    # None valid at all: one line listing each, and the fix.
    _flip_last_byte(path / "adapter_config.json")
    with pytest.raises(ModelLoadError) as e:
        ck.select_checkpoint(run, "latest-valid")
    assert "none of the 1 checkpoints" in str(e.value) and "step-000003: has a damaged adapter_config.json" in str(e.value)
    assert "--overwrite" in str(e.value)


def test_resume_from_a_named_checkpoint(trained, tmp_path):
    policy, optimizer, _, run, path = trained
    ck.save_checkpoint(run, 5, policy, optimizer, STATE, keep=10)
    for given in ("step-000003", str(path)):  # by name, or by path
        point = ck.select_checkpoint(run, given)
        assert point.ckpt == path and [(p.name, why) for p, why in point.newer] == [("step-000005", "abandoned")]
    for given, fragment in (("step-000004", "'step-000004' does not exist"),
                            (str(tmp_path), "is not a checkpoint of the run"),
                            (str(run / "checkpoints"), "is not a checkpoint of the run")):
        with pytest.raises(DetoxError) as e:
            ck.select_checkpoint(run, given)
        assert fragment in str(e.value) and "step-000003, step-000005" in str(e.value), given
    _flip_last_byte(path / "value_head.safetensors")
    with pytest.raises(ModelLoadError, match="pass another checkpoint of this run to --resume-from"):
        ck.select_checkpoint(run, "step-000003")
