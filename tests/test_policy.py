"""detoxrl.policy: one base model, a trainable LoRA adapter, a frozen reference adapter, a value head."""

import dataclasses
import shutil

import pytest
import torch

from detoxrl.config import GenerationConfig
from detoxrl.errors import ModelLoadError
from detoxrl.policy import POLICY_ADAPTER, REFERENCE_ADAPTER, load_policy, load_tokenizer
from detoxrl.prompts import build_prompts
from detoxrl.rollout import forward_pass, generate
from conftest import TOKENIZER_GLOBS, assert_close_for_dtype, copy_model, make_remote_code_model

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ["tiny_t5", "tiny_llama"]


def _policy_cfg(tiny_config, folder, **changes):
    return dataclasses.replace(tiny_config(policy=folder).policy, **changes)


def _rollout(policy, tiny_config, n=4, seed=0, max_new_tokens=8):
    """A sampled rollout of ``n`` prompts of different lengths."""
    prompts = build_prompts(tiny_config().data, policy.tokenizer).train[:n]
    torch.manual_seed(seed)
    return generate(policy, [e.input_ids for e in prompts], [e.prompt for e in prompts],
                    GenerationConfig(max_new_tokens=max_new_tokens), batch_size=n)


def _logprobs(policy, rollout, adapter=None):
    with torch.no_grad():
        if adapter is None:
            return forward_pass(policy, rollout, with_values=False)["logprobs"]
        with policy.use_adapter(adapter):
            return forward_pass(policy, rollout, with_values=False)["logprobs"]


def _bare_logprobs(policy, rollout):
    """Log-probs of the base model without any adapter (what the notebook's trl used as reference)."""
    with torch.no_grad(), policy.model.disable_adapter():
        return forward_pass(policy, rollout, with_values=False)["logprobs"]


def _lora(policy, adapter):
    return {n.replace(f".{adapter}.", "."): p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" in n and f".{adapter}." in n}


def _save_trained_adapter(tiny_config, folder, out, seed=1):
    """A PEFT adapter folder whose B weights are nonzero (as after SFT), as save_pretrained writes it."""
    policy = load_policy(_policy_cfg(tiny_config, folder))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_B" in n and f".{POLICY_ADAPTER}." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    policy.save_adapter(out)
    return policy, out


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_equals_starting_adapter_kl_zero(arch, request, tiny_config):
    policy = load_policy(_policy_cfg(tiny_config, request.getfixturevalue(arch)))
    default, reference = _lora(policy, POLICY_ADAPTER), _lora(policy, REFERENCE_ADAPTER)
    assert default.keys() == reference.keys() and default
    for name in default:  # A is random, B zero: the copy must cover both
        assert torch.equal(default[name], reference[name]), name
    assert any(t.abs().sum() > 0 for n, t in default.items() if "lora_A" in n)
    rollout = _rollout(policy, tiny_config)
    lp, ref = _logprobs(policy, rollout), _logprobs(policy, rollout, REFERENCE_ADAPTER)
    assert torch.equal(lp, ref)  # KL exactly 0 at step 0
    # Once the trainable adapter moves, the reference does not follow.
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_B" in n and f".{POLICY_ADAPTER}." in n:
                p.add_(0.5)
    assert not torch.equal(_logprobs(policy, rollout), ref)
    assert torch.equal(_logprobs(policy, rollout, REFERENCE_ADAPTER), ref)
    for name, t in _lora(policy, REFERENCE_ADAPTER).items():
        assert torch.equal(t, reference[name])


def test_output_layer_gets_a_contiguous_input(tiny_llama, tiny_config):
    """Logits of the last positions only (``logits_to_keep``) come from a slice of the last hidden state;
    the output layer gets it contiguous, so that torch.matmul does one matrix product instead of copying
    the weight once per row (:func:`detoxrl.policy.contiguous_head_input`). The logits are the same."""
    policy = load_policy(tiny_config(policy=tiny_llama).policy)
    seen = []
    spy = policy.model.get_output_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(5, 100, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = policy.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        last = policy.model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=2).logits
    spy.remove()
    assert seen == [True, True]  # [3, 2, hidden] sliced from [3, 10, hidden] is not contiguous before the hook
    assert_close_for_dtype(last, full[:, -2:])


def test_use_adapter_keeps_reference_frozen_and_restores_policy(tiny_t5, tiny_config, tmp_path):
    _, adapter_dir = _save_trained_adapter(tiny_config, tiny_t5, tmp_path / "sft")
    policy = load_policy(_policy_cfg(tiny_config, tiny_t5, adapter=str(adapter_dir)))  # a reference that is not the identity
    ref_params = [p for n, p in policy.model.named_parameters() if f".{REFERENCE_ADAPTER}." in n]
    pol_params = [p for n, p in policy.model.named_parameters() if "lora_" in n and f".{POLICY_ADAPTER}." in n]
    assert ref_params and pol_params
    assert not any(p.requires_grad for p in ref_params)
    with policy.use_adapter(REFERENCE_ADAPTER):
        assert policy.model.active_adapter == REFERENCE_ADAPTER
    assert policy.model.active_adapter == POLICY_ADAPTER
    assert not any(p.requires_grad for p in ref_params)
    assert all(p.requires_grad for p in pol_params)
    # Also after an exception inside the block.
    with pytest.raises(RuntimeError), policy.use_adapter(REFERENCE_ADAPTER):
        raise RuntimeError("boom")
    assert policy.model.active_adapter == POLICY_ADAPTER
    assert not any(p.requires_grad for p in ref_params)


@pytest.mark.parametrize("arch", ARCHS)
def test_trainable_parameters_are_policy_lora_and_value_head(arch, request, tiny_config):
    policy = load_policy(_policy_cfg(tiny_config, request.getfixturevalue(arch)))
    expected = {id(p) for n, p in policy.model.named_parameters() if "lora_" in n and f".{POLICY_ADAPTER}." in n}
    expected |= {id(p) for p in policy.value_head.parameters()}
    got = [id(p) for p in policy.trainable_parameters()]
    assert len(got) == len(set(got)) == len(expected) and set(got) == expected
    # requires_grad agrees: in the model only the policy adapter is trainable (no base weight, no reference).
    grad_names = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert grad_names and all("lora_" in n and f".{POLICY_ADAPTER}." in n for n in grad_names)
    assert all(p.requires_grad for p in policy.value_head.parameters())
    assert policy.value_head.weight.dtype == torch.float32


@pytest.mark.parametrize("arch", ARCHS)
def test_base_weights_held_once(arch, request, tiny_config):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    folder = request.getfixturevalue(arch)
    policy = load_policy(_policy_cfg(tiny_config, folder))
    auto = AutoModelForSeq2SeqLM if policy.is_seq2seq else AutoModelForCausalLM
    bare = auto.from_pretrained(folder, dtype=torch.float32)
    n_base = sum(p.numel() for p in bare.parameters())
    non_lora = [p for n, p in policy.model.named_parameters() if "lora_" not in n]
    assert sum(p.numel() for p in non_lora) == n_base
    # No second copy hides outside named_parameters (a deepcopy for the reference would): every
    # LoRA layer carries both adapters over one shared base layer, and the base model's storage
    # is held once.
    from peft.tuners.lora import LoraLayer

    lora_layers = [m for m in policy.model.modules() if isinstance(m, LoraLayer)]
    assert lora_layers
    for m in lora_layers:
        assert {POLICY_ADAPTER, REFERENCE_ADAPTER} <= set(m.lora_A.keys())
    storages = {p.untyped_storage().data_ptr() for p in non_lora}
    assert len(storages) == len({id(p) for p in non_lora})  # distinct parameters, distinct storage
    n_bytes = sum(p.numel() * p.element_size() for p in policy.model.parameters())
    n_lora_bytes = sum(p.numel() * p.element_size() for n, p in policy.model.named_parameters() if "lora_" in n)
    assert n_bytes - n_lora_bytes == sum(p.numel() * p.element_size() for p in bare.parameters())
    # Everything the Policy object holds: the PeftModel and the value head, nothing else with weights.
    modules = [v for v in vars(policy).values() if isinstance(v, torch.nn.Module)]
    held = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for m in modules for p in m.parameters()}
    head_bytes = sum(p.numel() * p.element_size() for p in policy.value_head.parameters())
    assert sum(held.values()) == n_bytes + head_bytes


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_reference_runs_the_base_model_bitwise_as_its_lora_layers_would(arch, request, tiny_config, tmp_path):
    policy = load_policy(_policy_cfg(tiny_config, request.getfixturevalue(arch)))
    assert policy.adapter_is_identity(REFERENCE_ADAPTER) and policy.adapter_is_identity(POLICY_ADAPTER)
    rollout = _rollout(policy, tiny_config)
    with torch.no_grad():
        for n, p in policy.model.named_parameters():  # the trainable adapter moves; the reference stays B = 0
            if "lora_B" in n and f".{POLICY_ADAPTER}." in n:
                p.add_(0.5)
    assert not policy.adapter_is_identity(POLICY_ADAPTER) and policy.adapter_is_identity(REFERENCE_ADAPTER)
    with policy.use_adapter(REFERENCE_ADAPTER):
        assert policy.model.get_model_status().enabled is False  # no LoRA product computed
        fast = forward_pass(policy, rollout, with_values=False)["logprobs"]
    assert policy.model.get_model_status().enabled is True and policy.model.active_adapter == POLICY_ADAPTER
    assert all(p.requires_grad for p in policy.adapter_parameters())
    assert not any(p.requires_grad for n, p in policy.model.named_parameters() if f".{REFERENCE_ADAPTER}." in n)
    policy.model.set_adapter(REFERENCE_ADAPTER)  # the LoRA layers of the reference, as before the shortcut
    with torch.no_grad():
        through_lora = forward_pass(policy, rollout, with_values=False)["logprobs"]
    policy.model.set_adapter(POLICY_ADAPTER)
    assert torch.equal(fast, through_lora)
    # Once the reference holds trained weights, it runs through its own layers.
    policy.copy_adapter(POLICY_ADAPTER, REFERENCE_ADAPTER)
    assert not policy.adapter_is_identity(REFERENCE_ADAPTER)
    with policy.use_adapter(REFERENCE_ADAPTER):
        assert policy.model.active_adapter == REFERENCE_ADAPTER and policy.model.get_model_status().enabled is True
    assert torch.equal(_logprobs(policy, rollout, REFERENCE_ADAPTER), _logprobs(policy, rollout))


@pytest.mark.parametrize("arch", ARCHS)
def test_continue_from_adapter_sets_default_and_reference(arch, request, tiny_config, tmp_path):
    folder = request.getfixturevalue(arch)
    first, adapter_dir = _save_trained_adapter(tiny_config, folder, tmp_path / "sft")
    saved = _lora(first, POLICY_ADAPTER)
    policy = load_policy(_policy_cfg(tiny_config, folder, adapter=str(adapter_dir)))
    for adapter in (POLICY_ADAPTER, REFERENCE_ADAPTER):
        loaded = _lora(policy, adapter)
        assert loaded.keys() == saved.keys()
        for name in saved:
            assert torch.equal(loaded[name], saved[name]), (adapter, name)
    rollout = _rollout(policy, tiny_config)
    lp = _logprobs(policy, rollout)
    assert torch.equal(lp, _logprobs(policy, rollout, REFERENCE_ADAPTER))  # KL to the reference: exactly 0
    assert_close_for_dtype(lp, _logprobs(first, rollout))
    # The notebook's defect #2: KL against the bare base model is far from zero for such an adapter.
    mask = rollout.response_mask.bool()
    kl_to_bare = (lp - _bare_logprobs(policy, rollout))[mask].sum() / len(rollout)
    assert abs(float(kl_to_bare)) > 1e-2
    assert policy.model.active_adapter == POLICY_ADAPTER
    assert not any(p.requires_grad for n, p in policy.model.named_parameters() if f".{REFERENCE_ADAPTER}." in n)
    assert {id(p) for p in policy.trainable_parameters()} == {
        id(p) for n, p in policy.model.named_parameters() if "lora_" in n and f".{POLICY_ADAPTER}." in n
    } | {id(p) for p in policy.value_head.parameters()}


def test_not_a_model_folder_fails_before_weights_load(tiny_t5, tiny_config, tmp_path, monkeypatch):
    import transformers

    broken = tmp_path / "no_config"
    shutil.copytree(tiny_t5, broken)
    (broken / "config.json").unlink()  # weights and tokenizer are there, config.json is not

    def must_not_load(*a, **k):
        raise AssertionError("weights were loaded before the folder was checked")

    monkeypatch.setattr(transformers.AutoModelForSeq2SeqLM, "from_pretrained", must_not_load)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", must_not_load)
    for source in (broken, tmp_path / "missing_folder"):
        with pytest.raises(ModelLoadError, match="not a model folder") as e:
            load_policy(_policy_cfg(tiny_config, tiny_t5, model=str(source)))
        assert "\n" not in str(e.value)


def test_policy_config_without_model_type_fails_before_anything_loads(tiny_t5, tiny_config, tmp_path, monkeypatch):
    """transformers' ValueError ('Should have a `model_type` key') came as a traceback once the
    model loaded; the preflight reads config.json and names what to add."""
    import json

    import transformers

    from detoxrl.policy import check_policy_source, load_tokenizer

    broken = tmp_path / "no_model_type"
    shutil.copytree(tiny_t5, broken)
    config = json.loads((broken / "config.json").read_text())
    del config["model_type"]
    (broken / "config.json").write_text(json.dumps(config))

    def must_not_load(*a, **k):
        raise AssertionError("a model or tokenizer was loaded before config.json was checked")

    for cls in (transformers.AutoModelForSeq2SeqLM, transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.AutoConfig):
        monkeypatch.setattr(cls, "from_pretrained", must_not_load)
    cfg = _policy_cfg(tiny_config, tiny_t5, model=str(broken))
    for attempt in (lambda: check_policy_source(cfg), lambda: load_tokenizer(cfg), lambda: load_policy(cfg)):
        with pytest.raises(ModelLoadError) as e:
            attempt()
        message = str(e.value)
        assert "\n" not in message and f"policy '{broken}' has a config.json without model_type" in message
        assert '"model_type": "t5"' in message


@pytest.mark.parametrize("damage", ["truncate", "garbage", "config"])
def test_corrupt_adapter_is_one_line_model_load_error(damage, tiny_llama, tiny_config, tmp_path):
    _, adapter_dir = _save_trained_adapter(tiny_config, tiny_llama, tmp_path / "sft")
    weights = adapter_dir / "adapter_model.safetensors"
    if damage == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x00\x01 not a safetensors file")
    else:
        (adapter_dir / "adapter_config.json").write_text('{"r": 4, "peft_type": "LORA", ')
    with pytest.raises(ModelLoadError) as e:
        load_policy(_policy_cfg(tiny_config, tiny_llama, adapter=str(adapter_dir)))
    message = str(e.value)
    assert "\n" not in message and str(adapter_dir) in message
    if damage != "config":
        # The same file through the checkpoint path.
        policy = load_policy(_policy_cfg(tiny_config, tiny_llama))
        with pytest.raises(ModelLoadError) as e2:
            policy.load_adapter_weights(adapter_dir)
        assert "\n" not in str(e2.value)


def test_missing_adapter_folder_is_model_load_error(tiny_t5, tiny_config, tmp_path):
    with pytest.raises(ModelLoadError, match="not a PEFT adapter folder"):
        load_policy(_policy_cfg(tiny_config, tiny_t5, adapter=str(tmp_path / "nothing")))


def test_corrupt_base_weights_are_one_line_model_load_error(tiny_t5, tiny_config, tmp_path):
    broken = tmp_path / "t5"
    shutil.copytree(tiny_t5, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError) as e:
        load_policy(_policy_cfg(tiny_config, broken))
    assert "\n" not in str(e.value) and str(broken) in str(e.value)


# --------------------------------------------------------------------------------------------
# A folder that is not a policy must not train (detoxrl.modelcheck)


def test_classifier_as_policy_is_refused_before_weights_load(tiny_roberta, tiny_config, no_weights_loaded):
    with pytest.raises(ModelLoadError) as e:
        load_policy(_policy_cfg(tiny_config, tiny_roberta))
    message = str(e.value)
    assert "\n" not in message and str(tiny_roberta) in message
    assert "is a RobertaForSequenceClassification" in message and "not a causal or seq2seq model" in message
    assert "language-model head would be initialised at random" in message and "--policy" in message


def test_causal_architecture_setting_refuses_a_seq2seq_policy(tiny_t5, tiny_config, no_weights_loaded):
    with pytest.raises(ModelLoadError, match="is a T5ForConditionalGeneration .* not a causal model"):
        load_policy(_policy_cfg(tiny_config, tiny_t5, architecture="causal"))


def test_random_language_model_head_is_refused_after_loading(tiny_roberta, tiny_config, tmp_path):
    # Without "architectures" in its config.json the classifier passes the preflight; the load
    # report of from_pretrained then shows the LM head it had to initialise at random.
    folder = copy_model(tiny_roberta, tmp_path / "classifier", config={"architectures": None})
    with pytest.raises(ModelLoadError) as e:
        load_policy(_policy_cfg(tiny_config, folder))
    message = str(e.value)
    assert "\n" not in message
    assert "loaded as RobertaForCausalLM has 6 weights initialised at random (lm_head." in message
    assert "--policy" in message


def test_policy_folder_without_tokenizer_files_is_refused_before_weights_load(tiny_t5, tiny_config, tmp_path, monkeypatch,
                                                                             no_weights_loaded):
    import transformers

    folder = copy_model(tiny_t5, tmp_path / "no_tokenizer", drop=TOKENIZER_GLOBS)
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("tokenizer*"))

    def no_tokenizer(*a, **k):
        raise AssertionError("the tokenizer was loaded: the missing files should be found from the folder alone")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(no_tokenizer))
    for load in (load_policy, load_tokenizer):
        with pytest.raises(ModelLoadError) as e:
            load(_policy_cfg(tiny_config, folder))
        message = str(e.value)
        assert "\n" not in message and "has no tokenizer files" in message and "<unk>" in message
        assert "tokenizer.save_pretrained" in message


def test_tokenizer_that_turns_words_into_unk_is_refused_before_weights_load(tiny_t5, tiny_config, tmp_path, no_weights_loaded):
    # A tokenizer file whose vocabulary holds only special tokens: every word becomes <unk>.
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = copy_model(tiny_t5, tmp_path / "unk_tokenizer", drop=TOKENIZER_GLOBS)
    backend = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    with pytest.raises(ModelLoadError) as e:
        load_policy(_policy_cfg(tiny_config, folder))
    message = str(e.value)
    assert "\n" not in message and "turns plain English words into <unk>" in message and "--policy" in message


def test_policy_with_code_of_its_own_needs_policy_trust_remote_code(tiny_llama, tiny_config, tmp_path, no_weights_loaded):
    marker = tmp_path / "ran"
    folder = make_remote_code_model(tiny_llama, tmp_path / "custom", marker, "AutoModelForCausalLM")
    with pytest.raises(ModelLoadError) as e:
        load_policy(_policy_cfg(tiny_config, folder))
    message = str(e.value)
    assert "\n" not in message and "runs Python code of its own" in message
    assert "policy.trust_remote_code is false" in message and "--trust-remote-code policy" in message
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Adapters in either format: one loader (detoxrl.policy.read_adapter_state)


def _as_bin(adapter_dir, out):
    """The same adapter in the older pickle format (``adapter_model.bin``, as the notebook's checkpoint)."""
    from safetensors.torch import load_file

    out.mkdir()
    shutil.copy(adapter_dir / "adapter_config.json", out / "adapter_config.json")
    torch.save(load_file(str(adapter_dir / "adapter_model.safetensors")), out / "adapter_model.bin")
    return out


def test_bin_adapter_loads_like_safetensors_on_every_path(tiny_llama, tiny_config, tmp_path):
    """train --adapter (load_policy) and evaluate --adapter / resume (load_adapter_weights) read the same
    weights from adapter_model.bin as from adapter_model.safetensors."""
    first, adapter_dir = _save_trained_adapter(tiny_config, tiny_llama, tmp_path / "sft")
    saved = _lora(first, POLICY_ADAPTER)
    bin_dir = _as_bin(adapter_dir, tmp_path / "sft-bin")
    policy = load_policy(_policy_cfg(tiny_config, tiny_llama, adapter=str(bin_dir)))
    for adapter in (POLICY_ADAPTER, REFERENCE_ADAPTER):
        loaded = _lora(policy, adapter)
        assert loaded.keys() == saved.keys() and all(torch.equal(loaded[n], saved[n]) for n in saved), adapter
    fresh = load_policy(_policy_cfg(tiny_config, tiny_llama))
    fresh.load_adapter_weights(bin_dir)
    loaded = _lora(fresh, POLICY_ADAPTER)
    assert all(torch.equal(loaded[n], saved[n]) for n in saved)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_bin_adapter_that_holds_code_is_refused_with_the_projects_message(tiny_llama, tiny_config, tmp_path):
    """A .bin adapter is read with weights_only=True only: a pickle that names a function is refused,
    never loaded, and the message is detoxrl's (not PyTorch's advice to turn the safe loader off)."""
    _, adapter_dir = _save_trained_adapter(tiny_config, tiny_llama, tmp_path / "sft")
    bad = _as_bin(adapter_dir, tmp_path / "bad")
    marker = tmp_path / "pwned"
    torch.save({"base_model.model.x.lora_A.weight": _RunsCode(marker)}, bad / "adapter_model.bin")
    policy = load_policy(_policy_cfg(tiny_config, tiny_llama))
    for attempt in (lambda: load_policy(_policy_cfg(tiny_config, tiny_llama, adapter=str(bad))),
                    lambda: policy.load_adapter_weights(bad)):
        with pytest.raises(ModelLoadError) as e:
            attempt()
        message = str(e.value)
        assert "\n" not in message and str(bad / "adapter_model.bin") in message
        assert "holds more than tensors" in message and "could run code" in message and "weights_only" not in message
    assert not marker.exists()


def test_adapter_folder_without_weights_is_refused_before_the_base_loads(tiny_llama, tiny_config, tmp_path, monkeypatch):
    import transformers

    _, adapter_dir = _save_trained_adapter(tiny_config, tiny_llama, tmp_path / "sft")
    (adapter_dir / "adapter_model.safetensors").unlink()

    def must_not_load(*a, **k):
        raise AssertionError("weights were loaded before the adapter folder was checked")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(must_not_load))
    with pytest.raises(ModelLoadError, match="has adapter_config.json but no weights"):
        load_policy(_policy_cfg(tiny_config, tiny_llama, adapter=str(adapter_dir)))


def test_saved_adapter_names_its_base_by_absolute_path(tiny_llama, tiny_config, tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tiny_llama.parent)
    policy = load_policy(_policy_cfg(tiny_config, tiny_llama.name))  # a relative path, as typed
    policy.save_adapter(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_llama.resolve())


def test_a_policy_whose_weights_hold_nan_is_one_line_naming_them(tiny_t5, tmp_path):
    """It sampled from NaN probabilities: "probability tensor contains inf/nan", deep in generate."""
    from safetensors.torch import load_file, save_file

    from conftest import copy_model
    from detoxrl.config import PolicyConfig
    from detoxrl.errors import ModelLoadError
    from detoxrl.policy import load_policy

    folder = copy_model(tiny_t5, tmp_path / "nan")
    weights = load_file(str(folder / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError) as e:
        load_policy(PolicyConfig(model=str(folder), dtype="float32"))
    assert "has weights that are NaN or infinite" in str(e.value) and "\n" not in str(e.value)
