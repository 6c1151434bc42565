"""The cheap checks before any model loads, and the prompts they lead to; shared by train, sft, demo,
evaluate, summarize and export.

:func:`preflight` validates the config, the data source, the policy and adapter folders and the reward
labels, then reads, filters, splits and selects the data once (:class:`Preflight`);
:func:`tokenize_prompts` makes the prompts of the rows it kept. :func:`check_launch` says what a launch of
N processes can run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detoxrl.config import DetoxConfig, resolve_rollout_shards, validate, with_settings
from detoxrl.errors import ConfigError, DataError
from detoxrl.policy import (check_adapter_source, check_policy_source, check_summary_lengths, load_tokenizer,
                            match_adapter_config)
from detoxrl.prompts import PromptSplits, SplitRows, check_data_source, load_dialogue_rows, prompts_from_split, split_and_select
from detoxrl.rewards import check_reward_labels
from detoxrl.selection import dialogue_toxicity_for


def check_launch(cfg: DetoxConfig, num_processes: int, *, deepspeed: bool = False, resume: bool = False) -> int:
    """What this launch's processes can run, before any model loads: ``ppo.rollout_shards`` resolved for
    ``num_processes`` (:func:`detoxrl.config.resolve_rollout_shards`, returned), and neither --resume nor
    micro-batches under DeepSpeed."""
    if resume and deepspeed:
        raise ConfigError(
            "--resume is not supported under DeepSpeed: its optimizer state is partitioned across the processes and a "
            "checkpoint holds the main process's part only; start a new run, or train without DeepSpeed (DDP) to resume"
        )
    shards = resolve_rollout_shards(cfg, num_processes)
    micro = cfg.ppo.micro_batch_size
    if deepspeed and micro is not None and micro < cfg.ppo.mini_batch_size // shards:
        # accelerate's backward under DeepSpeed also steps the optimizer: a minibatch cannot take several backwards
        raise ConfigError(
            f"ppo.micro_batch_size={micro} is not supported under DeepSpeed, whose backward also steps the optimizer; "
            f"leave it out (set DeepSpeed's own gradient accumulation instead), or train without DeepSpeed (DDP)"
        )
    return shards


@dataclass(frozen=True)
class Preflight:
    """What the cheap checks found, handed on so that nothing is read or checked twice.

    ``cfg`` is the config the run goes on with: the caller's, with what the checks resolved from the
    models (the reward labels, the LoRA settings of a starting adapter). The caller's own config is not
    changed (it is frozen). ``split`` holds the dialogue rows after the length filter, the split and
    the challenging-prompt selection; :func:`tokenize_prompts` turns them into prompts."""

    cfg: DetoxConfig
    split: SplitRows
    reward_labels: tuple[str, str] | None = None  # (reward label, toxic label), when the reward was checked


def resolve_settings(cfg: DetoxConfig, *, check_reward: bool = True,
                     adapter_dir: str | Path | None = None) -> tuple[DetoxConfig, tuple[str, str] | None]:
    """A copy of ``cfg`` with what the models say (no weights load): the LoRA settings of the adapter
    ``adapter_dir`` (its weights must fit the policy) and, with ``check_reward``, the reward labels chosen
    by name (the toxic label derived when not given). A run's config.yaml records them. Returns
    ``(resolved config, (reward label, toxic label) or None)``; ``cfg`` itself is frozen."""
    changes: dict[str, dict[str, Any]] = {}
    if adapter_dir:  # the LoRA settings are the adapter's (an SFT adapter's r, alpha, targets): config.yaml says so
        lora = match_adapter_config(cfg.policy, adapter_dir)
        changes["policy"] = {"lora_r": lora.lora_r, "lora_alpha": lora.lora_alpha,
                             "lora_target_modules": lora.lora_target_modules}
    labels = None
    if check_reward:
        r = cfg.reward
        labels = check_reward_labels(r.model, r.label, r.toxic_label, r.trust_remote_code)
        changes["reward"] = {"label": labels[0], "toxic_label": labels[1]}
    return (with_settings(cfg, changes) if changes else cfg), labels


def preflight(cfg: DetoxConfig, *, check_reward: bool = True, require_train: bool = True) -> Preflight:
    """All cheap checks, before any model loads: the config, the data source, the policy and adapter
    folders, the reward labels, then the data itself. Returns what they found (:class:`Preflight`).

    The length filter, the split and the challenging-prompt selection run here, once, so that a filter
    or a threshold that empties a split is an error before the policy loads; the prompts are made from
    the rows they keep (:func:`tokenize_prompts`).
    """
    validate(cfg)  # a library caller may have built the config without load_config
    check_data_source(cfg.data)
    check_policy_source(cfg.policy)
    check_adapter_source(cfg.policy.adapter)
    cfg, labels = resolve_settings(cfg, check_reward=check_reward, adapter_dir=cfg.policy.adapter)
    check_summary_lengths(cfg.policy, {"generation.max_new_tokens": cfg.generation.max_new_tokens,
                                       "evaluation.max_new_tokens": cfg.evaluation.max_new_tokens})
    if require_train and cfg.data.test_fraction >= 1.0:
        raise DataError("data.test_fraction=1 holds every row out and leaves nothing to train on; use it with evaluate --all-rows only")
    rows = load_dialogue_rows(cfg.data)
    scores = dialogue_toxicity_for(cfg, reward_labels=labels)  # None without a challenging-prompt selection
    split = split_and_select(cfg.data, rows, scores, require_train=require_train)
    return Preflight(cfg=cfg, split=SplitRows(rows, *split), reward_labels=labels)


def tokenize_prompts(checked: Preflight, *, tokenizer: Any = None) -> PromptSplits:
    """The prompts of the rows the preflight kept, tokenized by the policy's tokenizer alone (loaded
    unless given); nothing is read, filtered or scored again.

    Called before the policy's weights load: a prompt above data.max_prompt_tokens is an error in
    seconds, not after minutes of loading.
    """
    cfg = checked.cfg
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.policy)
    return prompts_from_split(cfg.data, checked.split, tokenizer)
