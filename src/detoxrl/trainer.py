"""The PPO trainer: wires prompts -> policy -> rollout -> rewards -> advantages -> update.

It holds no RL math of its own (that lives in :mod:`detoxrl.advantages` and :mod:`detoxrl.losses`).
Everything random is derived from ``(seed, step)``, so a run stopped after step k and resumed from
its checkpoint produces the same metrics and adapter weights as a run that never stopped.

The run folder is never lost to a run that fails:

- ``--overwrite`` of an earlier run writes the new one into ``RUN/new-run.incomplete/`` and moves it
  into place (the earlier run's files out, through ``RUN/old-run.being-replaced/``) only once it has
  written its first checkpoint, or finished. A run that fails or is killed before that leaves the
  earlier run as it was; the next ``train`` in the folder removes what it left, or finishes a move
  that a kill interrupted (:func:`recover_overwrite`).
- ``--resume`` continues from a checkpoint that passes its checks (:mod:`detoxrl.checkpoint`), with
  the settings it was trained with: a change that affects the result is refused unless allowed, and
  then recorded in ``config.yaml`` and ``config-changes.jsonl`` (:func:`prepare_resume`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from detoxrl import checkpoint as ckpt_lib
from detoxrl import runfiles
from detoxrl.advantages import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    kl_k3,
    leave_one_out_baseline,
    masked_moments,
    masked_whiten,
    sequence_kl,
    token_rewards,
    whiten_with_moments,
)
from detoxrl.config import (RESUME_FREE_SETTINGS, DetoxConfig, changed_settings, resolve_rollout_shards, validate,
                            with_settings)
from detoxrl.errors import ConfigError, DataError, DetoxError, ModelLoadError, TrainingError
from detoxrl.policy import (DTYPES, REFERENCE_ADAPTER, Policy, check_adapter_source, check_policy_source, load_policy,
                            load_tokenizer, match_adapter_config, resolve_dtype)
from detoxrl.prompts import (PromptExample, PromptSplits, SplitRows, check_data_source, load_dialogue_rows,
                             prompts_from_split, split_and_select)
from detoxrl.rewards import Scorer, check_reward_labels, scorer_from_config, shape_rewards, texts_for_scoring
from detoxrl.selection import dialogue_toxicity_for
from detoxrl import runtime
from detoxrl.rollout import capture_logprobs, generate, logprobs_and_values
from detoxrl.tokenstats import masked_mean
from detoxrl.update import UpdateBatch, UpdateHooks, ppo_update

#: With several rollout shards: per step, the prompts of each shard and the process that ran it.
SHARDS_LOG = runfiles.SHARDS
MANAGED = (runfiles.METRICS, runfiles.CHECKPOINTS, runfiles.FINAL, runfiles.EVAL, runfiles.REPORT, runfiles.CONFIG,
           runfiles.CONFIG_CHANGES, "detoxrl", SHARDS_LOG)  # detoxrl/: tracker logs
#: Inside the run folder: an --overwrite run until its first checkpoint, and the earlier run's files
#: while the new run moves into place.
NEW_RUN_DIR, OLD_RUN_DIR = "new-run.incomplete", "old-run.being-replaced"
_ALL_MOVED = "ALL-FILES-OF-THE-EARLIER-RUN-MOVED-HERE"  # in OLD_RUN_DIR: the first half of the move is done
CONFIG_CHANGES = runfiles.CONFIG_CHANGES
KL_SETTINGS = ("ppo.init_kl_coef", "ppo.adaptive_kl", "ppo.target_kl", "ppo.kl_horizon")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """A distinct, reproducible seed per step (so resume needs no saved RNG state)."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


def rollout_seed(seed: int, step: int, shard: int) -> int:
    """The sampling seed of rollout shard ``shard`` of ``step`` (its minibatch order uses this + 1): the
    same whichever process runs the shard. Shard 0's is :func:`step_seed`, so a one-shard run samples
    as runs did before there were shards."""
    return (step_seed(seed, step) + shard * 1_000_000_007) % (2**63 - 1)


def check_launch(cfg: DetoxConfig, num_processes: int, *, deepspeed: bool = False, resume: bool = False) -> int:
    """What this launch's processes can run, before any model loads: ``ppo.rollout_shards`` resolved for
    ``num_processes`` (:func:`detoxrl.config.resolve_rollout_shards`, returned), and no --resume under DeepSpeed."""
    if resume and deepspeed:
        raise ConfigError(
            "--resume is not supported under DeepSpeed: its optimizer state is partitioned across the processes and a "
            "checkpoint holds the main process's part only; start a new run, or train without DeepSpeed (DDP) to resume"
        )
    return resolve_rollout_shards(cfg, num_processes)


def batch_at(items: list, step: int, batch_size: int, seed: int, shuffle: bool = True) -> list:
    """The items of ``step``: consecutive slices of per-epoch seeded permutations (file order without
    ``shuffle``); an epoch boundary may fall inside a batch. A function of (seed, step) alone, so a
    resumed run visits the same items as one that never stopped (PPO prompts, SFT pairs)."""
    n, out, perms = len(items), [], {}
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, within = divmod(pos, n)
        if not shuffle:
            out.append(items[within])
            continue
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 104_729 * epoch))
        out.append(items[int(perms[epoch][within])])
    return out


def prepare_output_dir(cfg: DetoxConfig, resume: bool, *, clear: bool = True) -> Path:
    """Refuse to clobber an earlier run unless asked; say how to resume or overwrite.

    ``clear=False`` only checks: the trainer never clears an overwritten run itself, it writes the
    new run beside it and swaps once the new run has a checkpoint (:meth:`Trainer.train`), so that a
    run which fails early does not cost the user the previous one. With ``resume`` the latest
    checkpoint is checked (:func:`find_resume_point`: trainer_state.json, step, checksums); the
    settings are compared by the trainer, once the preflight has resolved the reward labels.
    """
    out = Path(cfg.run.output_dir)
    check_writable_dir(out, "--output-dir")
    if resume:
        find_resume_point(cfg)
        return out
    existing = existing_run(out)
    if existing and not cfg.run.overwrite:
        raise DetoxError(
            f"output dir '{out}' already holds a run ({', '.join(existing)}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --output-dir"
        )
    for line in recover_overwrite(out):
        _note(line)
    if clear:
        clear_output_dir(out)
    return out


def existing_run(out: Path) -> list[str]:
    """What of an earlier run ``out`` holds (including an --overwrite run in progress or stopped)."""
    return [name for name in (*MANAGED, NEW_RUN_DIR, OLD_RUN_DIR) if (out / name).exists()]


def _note(line: str) -> None:
    print(f"note: {line}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# --overwrite: the new run moves into place only once it has a checkpoint


def recover_overwrite(out: Path) -> list[str]:
    """Clean up after an --overwrite run that stopped (an error, Ctrl-C or a kill) in ``out``.

    - Only ``new-run.incomplete/``: the new run stopped before its first checkpoint, and the earlier
      run was never touched. The folder (the new run's config.yaml and first metrics) is removed.
    - ``old-run.being-replaced/`` too: the new run had a checkpoint and was being moved into place
      when it stopped. The move is finished (as it would have been), then the earlier run is deleted.

    Returns a line per thing done, for the user.
    """
    new, old = out / NEW_RUN_DIR, out / OLD_RUN_DIR
    if old.is_dir():
        if not (old / _ALL_MOVED).exists() and not new.is_dir():  # not a state this code leaves; undo it
            for item in old.iterdir():
                if not (out / item.name).exists():
                    item.rename(out / item.name)
            shutil.rmtree(old)
            return [f"found '{old}' without the new run it was making room for; moved the earlier run's files back into '{out}'"]
        _swap_in(out, new, old)
        return [f"an --overwrite run in '{out}' was stopped while it moved into place (after its first checkpoint): "
                "finished the move; the folder holds the new run, resume it with --resume"]
    if new.is_dir():
        shutil.rmtree(new)
        return [f"removed '{new}', left by an --overwrite run that stopped before its first checkpoint; "
                f"the run in '{out}' is the earlier one, unchanged"]
    return []


def _swap_in(out: Path, new: Path, old: Path) -> None:
    """Replace the run files of ``out`` by those of ``new``; each step can be redone after a kill.

    1. every run file of ``out`` moves into ``old`` (then a marker says so);
    2. every file of ``new`` moves into ``out``, and ``new`` goes;
    3. ``old`` goes.
    """
    old.mkdir(exist_ok=True)
    if not (old / _ALL_MOVED).exists():
        for name in MANAGED:
            if (out / name).exists() or (out / name).is_symlink():
                (out / name).rename(old / name)
        (old / _ALL_MOVED).touch()
    if new.is_dir():
        for item in sorted(new.iterdir()):
            item.rename(out / item.name)
        new.rmdir()
    shutil.rmtree(old)


# --------------------------------------------------------------------------------------------
# --resume: which checkpoint, with which settings


@dataclass
class ResumePlan:
    """What ``--resume`` continues from: the checkpoint (verified), the settings it was trained with
    (``old_config``, None if unknown), the changed settings that affect the result (``changes``,
    allowed by the caller) and the newer checkpoints to set aside."""

    point: ckpt_lib.ResumePoint
    old_config: dict[str, Any] | None
    changes: dict[str, tuple[Any, Any]]

    @property
    def ckpt(self) -> Path:
        return self.point.ckpt

    @property
    def step(self) -> int:
        return self.point.state["step"]


def prepare_resume(cfg: DetoxConfig, *, resume_from: str = "auto", allow_config_change: bool = False) -> ResumePlan:
    """Every check of ``--resume`` that needs no model: :func:`find_resume_point`, then
    :func:`check_resume_settings`. Changes nothing in the run folder but the overwrite clean-up."""
    return check_resume_settings(cfg, find_resume_point(cfg, resume_from), allow_config_change=allow_config_change)


def find_resume_point(cfg: DetoxConfig, resume_from: str = "auto", *, kind: str = "ppo") -> ckpt_lib.ResumePoint:
    """The folder (and what a stopped --overwrite run left in it), then the checkpoint that
    ``resume_from`` names, with its checksums (:func:`detoxrl.checkpoint.select_checkpoint`), and
    that it was written by the same command (``kind``: ppo for train, sft for sft)."""
    out = Path(cfg.run.output_dir)
    check_writable_dir(out, "--output-dir")
    for line in recover_overwrite(out):
        _note(line)
    point = ckpt_lib.select_checkpoint(out, resume_from)
    found = point.state.get("kind", "ppo")
    if found != kind:
        command = {"ppo": "train", "sft": "sft"}
        raise DetoxError(
            f"--resume: checkpoint '{point.ckpt}' was written by detoxrl {command.get(found, found)}, not by detoxrl "
            f"{command.get(kind, kind)}; continue it with detoxrl {command.get(found, found)} --resume, or pass another --output-dir"
        )
    return point


def check_resume_settings(cfg: DetoxConfig, point: ckpt_lib.ResumePoint, *, allow_config_change: bool = False,
                          free=RESUME_FREE_SETTINGS) -> ResumePlan:
    """Compare ``cfg`` with the settings the checkpoint was trained with (its own record, or the run's
    config.yaml for a checkpoint from before detoxrl kept one). A difference in a setting that affects
    the result (any but ``free``, :data:`detoxrl.config.RESUME_FREE_SETTINGS` for PPO) is an error naming
    each ``key old -> new``, unless ``allow_config_change``."""
    out = Path(cfg.run.output_dir)
    old = point.state.get("config")
    source = f"checkpoint '{point.ckpt}'"
    if old is None:
        old, source = _read_run_config(out), f"'{out / 'config.yaml'}'"
    if old is None:
        if not allow_config_change:
            raise ConfigError(
                f"--resume: neither checkpoint '{point.ckpt}' nor '{out / 'config.yaml'}' records the settings the run was "
                f"trained with, so a change cannot be ruled out; restore config.yaml, or pass --allow-config-change to "
                f"continue with the settings given now"
            )
        return ResumePlan(point, None, {})
    ppo = old.get("ppo") if isinstance(old.get("ppo"), dict) else {}
    if ppo.get("rollout_shards") is None:  # a run from before rollout shards sampled each batch as one
        ppo = {**ppo, "rollout_shards": 1}
    if "capture_logprobs" not in ppo:  # a run from before the setting captured while decoding in any dtype
        policy = old.get("policy") if isinstance(old.get("policy"), dict) else {}
        dtype = str(policy.get("dtype", "auto"))
        in_fp32 = (dtype == "auto" or dtype in DTYPES) and resolve_dtype(dtype) == torch.float32
        ppo = {**ppo, "capture_logprobs": "auto" if in_fp32 else "on"}  # auto is the same as on in float32
    old = {**old, "ppo": ppo}
    changes = changed_settings(old, cfg.to_dict(), free=free)
    if changes and not allow_config_change:
        shown = ", ".join(f"{key} {_show(a)} -> {_show(b)}" for key, (a, b) in changes.items())
        raise ConfigError(
            f"--resume: these settings differ from those of {source}: {shown}; resume with the run's own settings "
            f"(leave those flags out), or pass --allow-config-change to continue with the new ones "
            f"(recorded in {out / CONFIG_CHANGES})"
        )
    return ResumePlan(point, old, changes)


def _read_run_config(out: Path) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _show(value: Any) -> str:
    """A setting's value as --set takes it (none, true, 0.0002); strings and lists quoted."""
    return "none" if value is None else json.dumps(value) if isinstance(value, (bool, str, list, dict)) else str(value)


def _yaml(cfg: DetoxConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_writable_dir(path: str | Path, option: str) -> None:
    """Refuse a folder that cannot be created or written: a file there, or no write permission.

    mkdir would otherwise fail only once the models have loaded (minutes in), with a traceback.
    Nothing is created here: the nearest existing ancestor is where the folder would be made.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise DetoxError(f"{option} '{path}' is a file, not a folder; pass a folder to {option}")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DetoxError(f"{option} '{path}' lies under '{existing}', which is a file; pass a folder to {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DetoxError(f"{option} '{path}' is not writable (no write permission in '{existing}'); pass a folder you can write to {option}")


def check_trackers(log_with: list[str]) -> None:
    """A tracker whose package is missing: accelerate would drop it with a log line only."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    install = {"tensorboard": "pip install tensorboard==2.21.0", "wandb": "pip install wandb"}
    for tracker in log_with:
        if tracker in available and not available[tracker]():  # unknown names: config.validate's message
            raise DetoxError(f"--log-with {tracker}: {tracker} is not installed; run: {install[tracker]} (or leave --log-with {tracker} out)")


def clear_output_dir(out: Path) -> None:
    """Delete what an earlier run wrote into ``out`` (only detoxrl's own files) and create ``out``."""
    for name in MANAGED:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)


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


class RunFolder:
    """What a training command does with its run folder, shared by PPO (:class:`Trainer`) and SFT
    (:class:`detoxrl.sft.SupervisedTrainer`): the metrics lines (main process only), their truncation
    on resume, and the --overwrite swap. Needs ``cfg``, ``state`` (accelerate's PartialState),
    ``shards``, ``accelerator``, ``out_dir``, ``staging_dir`` and ``run_dir``."""

    def earlier_run_kept(self) -> str:
        """What a stop before the first checkpoint of an --overwrite run leaves (one clause, for messages)."""
        return (f"--overwrite: the earlier run in '{self.out_dir}' is unchanged (a new run replaces it only at its first "
                f"checkpoint); this run's partial output is in '{self.staging_dir}', which the next train in that folder removes")

    def _replace_earlier_run(self) -> None:
        """--overwrite: the new run has a checkpoint (or has finished), so it takes the earlier run's place."""
        if self.staging_dir is None:
            return
        if self.state.is_main_process:
            _swap_in(self.out_dir, self.staging_dir, self.out_dir / OLD_RUN_DIR)
        self.staging_dir, self.run_dir = None, self.out_dir
        self.state.wait_for_everyone()

    def _model_card(self, folder: Path) -> str:
        """The model card of the final adapter (:mod:`detoxrl.modelcard`); a card that cannot be written
        costs the run nothing but its card."""
        from detoxrl.modelcard import model_card

        try:
            return model_card(folder, run_dir=self.run_dir, final=True)
        except Exception as e:  # noqa: BLE001 - the adapter matters more than its README
            _note(f"the model card of {self.run_dir / 'final'} could not be written ({type(e).__name__}: {e}); "
                  f"detoxrl export writes it again")
            return f"# detoxrl adapter\n\nThe model card could not be written ({type(e).__name__}).\n"

    def _log(self, metrics: dict[str, Any], shards: list = ()) -> None:
        """One metrics line per step (and, with several rollout shards, which prompts each shard and
        process took: ``shards.jsonl``), written by the main process only."""
        if self.state.is_main_process:
            runfiles.append_jsonl(self.run_dir / runfiles.METRICS, [_jsonable(metrics)])
            if self.shards > 1:
                record = {"step": metrics["step"], "shards": [{"shard": s, "process": r, "prompts": ids} for s, r, ids in shards]}
                runfiles.append_jsonl(self.run_dir / SHARDS_LOG, [record])
        if self.cfg.run.log_with:
            self.accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])

    def _truncate_logs(self, upto_step: int) -> None:
        """A resumed run drops the lines of steps after its checkpoint (they will be recomputed)."""
        for name in ("metrics.jsonl", SHARDS_LOG):
            path = self.run_dir / name
            if not path.is_file():
                continue
            kept = []
            for line in runfiles.read_jsonl(path):  # an unreadable line: cut short by the crash that stopped the run
                row = line.value
                if line.ok and isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= upto_step:
                    kept.append(line)
            _atomic_write(path, runfiles.lines_text(kept))  # a kill now must not cost the earlier lines


@dataclass
class _Shard:
    """One rollout shard of a step, up to its (not yet whitened) advantages."""

    shard: int
    examples: list[PromptExample]
    rollout: Any
    scored: Any
    shaped: torch.Tensor
    faithful: list[float] | None
    # Per token of the sampled responses, from the no-grad passes (:func:`logprobs_and_values`): the
    # policy's "logprobs", "values" and "entropy" at sampling time, and the reference's "ref_logprobs".
    token_stats: dict[str, torch.Tensor]
    mask: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def update_batch(self) -> UpdateBatch:
        """What the PPO update reads of this shard."""
        return UpdateBatch(self.rollout, self.token_stats["logprobs"], self.token_stats["values"], self.advantages, self.returns)

    def kl_k3_per_response(self) -> torch.Tensor:
        """[B]: the k3 estimate of each response's KL to the reference (logged beside the k1 of the reward)."""
        return sequence_kl(self.token_stats["logprobs"], self.token_stats["ref_logprobs"], self.mask, kl_k3)


class Trainer(RunFolder):
    """PPO with a LoRA policy, a frozen reference adapter and a value head.

    ``scorer`` replaces the configured reward model (any object with ``score(texts)``, e.g. a
    :class:`detoxrl.rewards.FunctionScorer` wrapping a Python function). With ``resume``,
    ``resume_from`` names the checkpoint (``auto``, ``latest-valid`` or a folder) and
    ``allow_config_change`` lets settings that affect the result differ from the checkpoint's.

    ``checked``: the :func:`preflight` of ``cfg`` when the caller has run it already (``detoxrl demo``), so
    that the data is not read, filtered and scored again.

    ``run_dir`` is where the run writes: ``out_dir`` itself, or ``out_dir/new-run.incomplete`` while an
    --overwrite run has not yet replaced the earlier one (``staging_dir`` is then that folder).

    Several processes (``torchrun``, ``accelerate launch``) train one model: each samples and scores its
    rollout shards of the global batch (``ppo.batch_size``, split into ``ppo.rollout_shards``, one per
    process by default), DDP averages the gradients of the update, and what PPO needs of the whole batch
    (advantage whitening, the KL fed to the controller, every logged metric) is reduced across processes.
    Only the main process writes into the run folder and shows progress bars.
    """

    def __init__(self, cfg: DetoxConfig, *, resume: bool = False, scorer: Scorer | None = None, policy: Policy | None = None,
                 resume_from: str = "auto", allow_config_change: bool = False, checked: Preflight | None = None):
        from accelerate import Accelerator, PartialState
        from accelerate.utils import DistributedType

        self.cfg = cfg  # until the checks below resolve it (rollout shards, reward labels, an adapter's LoRA settings)
        if cfg.run.release_memory:
            runtime.return_freed_memory()
        # The processes first (no model yet): the checks below need their number and must agree.
        self.state = PartialState(cpu=not torch.cuda.is_available())
        if cfg.run.num_threads:
            torch.set_num_threads(cfg.run.num_threads)
        deepspeed = self.state.distributed_type == DistributedType.DEEPSPEED

        def checks():
            check_trackers(cfg.run.log_with)
            shards = check_launch(cfg, self.state.num_processes, deepspeed=deepspeed, resume=resume)
            # Before any model loads: the folder; with resume the checkpoint (its checksums), and the settings
            # once the preflight has resolved the reward labels (as they were when the checkpoint was saved).
            point = find_resume_point(cfg, resume_from) if resume else None
            out_dir = Path(cfg.run.output_dir) if resume else prepare_output_dir(cfg, False, clear=False)
            found = preflight(cfg, check_reward=scorer is None) if checked is None else checked
            found = dataclasses.replace(found, cfg=with_settings(found.cfg, {"ppo": {"rollout_shards": shards}}))
            plan = check_resume_settings(found.cfg, point, allow_config_change=allow_config_change) if resume else None
            # An earlier run in the folder is replaced only once this one has a checkpoint (see train()).
            staging = out_dir / NEW_RUN_DIR if not resume and existing_run(out_dir) else None
            prompts = tokenize_prompts(found, tokenizer=policy.tokenizer if policy else None)
            return found.cfg, out_dir, plan, staging, prompts

        # The main process first: it alone tidies the folder (a stopped --overwrite run) and fills caches.
        # From here on the trainer runs with the resolved config (and records it in config.yaml).
        found = main_process_first(self.state, checks)
        self.cfg, self.out_dir, self.resume_plan, self.staging_dir, self.prompts = found
        cfg = self.cfg
        self.run_dir = self.staging_dir or self.out_dir
        self.shards = cfg.ppo.rollout_shards
        per_process = self.shards // self.state.num_processes
        self.local_shards = list(range(self.state.process_index * per_process, (self.state.process_index + 1) * per_process))
        self.progress = cfg.run.progress and self.state.is_main_process
        seed_everything(cfg.run.seed)
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            log_with=cfg.run.log_with or None,
            project_dir=str(self.run_dir),
        )
        plugin = self.accelerator.state.deepspeed_plugin if deepspeed else None
        self.zero_stage = plugin.zero_stage if plugin is not None else None

        def load():
            pol = policy or load_policy(cfg.policy, device=self.accelerator.device)
            sc = scorer or scorer_from_config(cfg.reward, device=self.accelerator.device)
            faith = None
            if cfg.reward.faithfulness_weight:
                from detoxrl.quality import FaithfulnessScorer

                faith = FaithfulnessScorer()
            return pol, sc, faith

        self.policy, self.scorer, self.faithfulness = main_process_first(self.state, load)
        torch.manual_seed(cfg.run.seed)  # the value head was initialised above; re-seed for the optimizer path
        self.optimizer = torch.optim.Adam(self.policy.trainable_parameters(), lr=cfg.ppo.learning_rate)
        p = cfg.ppo
        self.kl_ctl = AdaptiveKLController(p.init_kl_coef, p.target_kl, p.kl_horizon) if p.adaptive_kl else FixedKLController(p.init_kl_coef)
        self.step_idx = 0
        self.state.wait_for_everyone()  # every process has checked the folder before the main one writes into it
        if resume:
            self._resume(self.resume_plan)  # every process loads the same checkpoint; the main one writes
        elif self.state.is_main_process:
            # Only now that the new run's models have loaded does it write anything: into the staging
            # folder when an earlier run is there (--overwrite), which stays as it is until train() swaps.
            if self.staging_dir is not None:
                shutil.rmtree(self.staging_dir, ignore_errors=True)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.run_dir / "config.yaml", _yaml(cfg))  # with the rollout shards it runs with
        # DDP (or DeepSpeed) around the trainable module: the update's passes go through it, so that its
        # backward averages the gradients of all processes. The checkpoint (if any) is loaded first.
        if plugin is not None and plugin.is_auto("train_micro_batch_size_per_gpu"):
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = p.mini_batch_size // self.shards
        self.prepared_model, self.optimizer = self.accelerator.prepare(self.policy.module, self.optimizer)
        self.policy.partitioned = self.zero_stage == 3
        self.state.wait_for_everyone()
        if cfg.run.log_with:
            self.accelerator.init_trackers("detoxrl", config=_flat(cfg.to_dict()))

    def _resume(self, plan: ResumePlan) -> None:
        """Load the checkpoint; set newer ones aside; apply and record allowed changes of settings."""
        ckpt = plan.ckpt
        state = ckpt_lib.load_checkpoint(ckpt, self.policy, self.optimizer)
        self.step_idx = state["step"]
        main = self.state.is_main_process
        for line in ckpt_lib.set_aside(plan.point.newer) if main else []:
            _note(line)
        kl_state = state["kl_controller"]
        kl_changed = plan.old_config is None or any(key in plan.changes for key in KL_SETTINGS)
        if not kl_changed:
            try:
                self.kl_ctl.load_state_dict(kl_state)
            except KeyError as e:  # a hand-edited state: an adaptive controller without its target
                raise ModelLoadError(
                    f"checkpoint '{ckpt}' has no KL controller {e} in {ckpt_lib.STATE_FILE} (written with another ppo.adaptive_kl?); "
                    f"resume with the run's own config ({self.out_dir / 'config.yaml'}), or {ckpt_lib.FALLBACK_FIX}"
                ) from None
        elif self.cfg.ppo.adaptive_kl and "ppo.init_kl_coef" not in plan.changes:
            # The new KL settings (target, horizon, fixed -> adaptive) take effect from the coefficient reached
            # so far; a new ppo.init_kl_coef restarts it there, and a fixed coefficient is its setting.
            self.kl_ctl.value = float(kl_state["value"])
        for group in self.optimizer.param_groups:  # the optimizer's state came with the checkpoint's learning rate
            group["lr"] = self.cfg.ppo.learning_rate
        if not main:
            return
        self._truncate_logs(self.step_idx)
        if plan.changes or plan.old_config is None:
            record = {
                "step": self.step_idx,
                "checkpoint": str(ckpt.relative_to(self.out_dir)) if ckpt.is_relative_to(self.out_dir) else str(ckpt),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "changes": {key: {"old": a, "new": b} for key, (a, b) in plan.changes.items()} if plan.old_config is not None else None,
                "kl_controller": {"old": kl_state, "new": self.kl_ctl.state_dict()},
            }
            runfiles.append_jsonl(self.out_dir / CONFIG_CHANGES, [record])
        # config.yaml says what the run trains with from here on (new step count, allowed changes).
        _atomic_write(self.out_dir / "config.yaml", _yaml(self.cfg))

    # ------------------------------------------------------------------ data order
    def batch_examples(self, step: int) -> list[PromptExample]:
        """The prompts of ``step``: consecutive slices of per-epoch seeded permutations.

        A step reads ``batch_size / samples_per_prompt`` prompts (each then sampled k times). Rollout
        shard s takes the s-th of ``ppo.rollout_shards`` equal consecutive slices (:meth:`shard_examples`)."""
        bsz = self.cfg.ppo.batch_size // self.cfg.ppo.samples_per_prompt
        return batch_at(self.prompts.train, step, bsz, self.cfg.run.seed, self.cfg.data.shuffle)

    def shard_examples(self, step: int, shard: int) -> list[PromptExample]:
        """The prompts of rollout shard ``shard`` of ``step``: disjoint, whole prompts (a group of k samples
        never spans two shards), the same whichever process runs the shard."""
        examples = self.batch_examples(step)
        size = len(examples) // self.shards
        return examples[shard * size : (shard + 1) * size]

    # ------------------------------------------------------------------ one PPO step
    def _sample_shard(self, step: int, shard: int) -> tuple[_Shard, float, float, float]:
        """Sample, score and evaluate one rollout shard, exactly as a process of its own would (its seed,
        its batch shapes); returns it with its generation, scoring and no-grad pass times."""
        cfg, gen_cfg, ppo_cfg = self.cfg, self.cfg.generation, self.cfg.ppo
        k = ppo_cfg.samples_per_prompt
        examples = self.shard_examples(step, shard)
        t0 = time.perf_counter()
        torch.manual_seed(rollout_seed(cfg.run.seed, step, shard))
        zero3 = self.zero_stage == 3
        capture = capture_logprobs(ppo_cfg.capture_logprobs, self.policy.compute_dtype) and not zero3
        rollout = generate(
            self.policy,
            [e.input_ids for e in examples],
            [e.prompt for e in examples],
            gen_cfg,
            batch_size=ppo_cfg.batch_size // self.shards,
            progress=self.progress,
            # Old log-probs and values from the sampling pass itself where that is exact (float32, see
            # rollout.capture_logprobs), else from a teacher-forced pass over each decoded batch that
            # reuses its prompt pass. Neither under ZeRO-3, whose synced generation runs extra
            # passes: logprobs_and_values computes them instead.
            capture=capture,
            teacher_forced=not capture and not zero3,
            # With the teacher-forced passes, the reference's log-probs by the same computation (the
            # KL of equal adapters is then exactly 0 in bf16); equal adapters need no reference pass.
            reference=REFERENCE_ADAPTER if not capture and not zero3 and not self.policy.adapters_identical() else None,
            pass_batch_size=ppo_cfg.mini_batch_size // self.shards,  # as the update's: a [rows, T, vocab] logits peak
            samples_per_prompt=k,  # rows prompt-major: i*k .. i*k+k-1 answer prompt i
            synced_gpus=zero3,
        )
        t1 = time.perf_counter()
        texts = texts_for_scoring(rollout.queries, rollout.responses, cfg.reward.input)
        scored = self.scorer.score(texts)
        dialogues = [e.dialogue for e in examples for _ in range(k)]
        faithful = self.faithfulness.score(rollout.responses, dialogues) if self.faithfulness else None
        shaped = shape_rewards(
            scored, cfg.reward, reward_label=self.scorer.reward_label, ended=rollout.ended, faithfulness=faithful,
            score_clip=ppo_cfg.score_clip,
        )
        # The baseline is variance reduction for the gradient, not part of the reward: evaluation and
        # the logged env/reward_* keep the shaped reward itself.
        scores = leave_one_out_baseline(shaped, k) if ppo_cfg.reward_baseline == "group" else shaped
        scores = scores.to(rollout.response_ids.device)
        t2 = time.perf_counter()

        # No-grad passes in minibatch-sized chunks, as the update: a [B, T, vocab] logits tensor of
        # the whole batch would set the step's peak memory.
        token_stats = logprobs_and_values(
            self.policy, rollout, temperature=gen_cfg.temperature, batch_size=ppo_cfg.mini_batch_size // self.shards
        )
        mask = rollout.response_mask.float()
        logprobs, ref_logprobs = token_stats["logprobs"], token_stats["ref_logprobs"]
        rewards, kl = token_rewards(scores, logprobs, ref_logprobs, mask, self.kl_ctl.value)
        advantages, returns = gae(rewards, token_stats["values"], mask, ppo_cfg.gamma, ppo_cfg.lam)
        part = _Shard(shard, examples, rollout, scored, shaped, faithful, token_stats, mask, kl, advantages, returns)
        # generate's teacher-forced passes (bf16) count with the other no-grad passes, not as sampling
        passes = rollout.pass_seconds
        return part, t1 - t0 - passes, t2 - t1, time.perf_counter() - t2 + passes

    def step(self) -> dict[str, Any]:
        cfg, gen_cfg, ppo_cfg = self.cfg, self.cfg.generation, self.cfg.ppo
        step = self.step_idx
        t0 = time.perf_counter()
        parts, t_generate, t_score, t_passes = [], 0.0, 0.0, 0.0
        for shard in self.local_shards:
            part, t_shard_generate, t_shard_score, t_shard_passes = self._sample_shard(step, shard)
            parts.append(part)
            t_generate, t_score = t_generate + t_shard_generate, t_score + t_shard_score
            t_passes += t_shard_passes
        t2 = time.perf_counter()

        if ppo_cfg.whiten_advantages:
            if self.shards == 1:
                parts[0].advantages = masked_whiten(parts[0].advantages, parts[0].mask)
            else:
                # Over all real tokens of the whole batch: every shard's (count, sum, sum of squares), added up.
                moments = self._sum_over_processes(sum(masked_moments(sh.advantages, sh.mask) for sh in parts))
                for sh in parts:
                    sh.advantages = whiten_with_moments(sh.advantages, sh.mask, moments)
        update_stats = ppo_update(
            self.policy,
            self.optimizer,
            [sh.update_batch() for sh in parts],
            ppo_cfg,
            mini_batch_size=ppo_cfg.mini_batch_size // self.shards,  # rows of one shard
            temperature=gen_cfg.temperature,
            generator=[torch.Generator().manual_seed(rollout_seed(cfg.run.seed, step, sh.shard) + 1) for sh in parts],
            hooks=self._update_hooks(gen_cfg.temperature),
        )
        # What the processes hold of the batch, in shard order: every statistic is of the whole batch.
        kl_seq = self._rows(parts, lambda sh: (sh.kl * sh.mask).sum(1))
        kl_k3_seq = self._rows(parts, lambda sh: sh.kl_k3_per_response())
        kl_coef_used = self.kl_ctl.value
        self.kl_ctl.update(float(kl_seq.mean()), ppo_cfg.batch_size)
        t3 = time.perf_counter()

        k = ppo_cfg.samples_per_prompt
        raw = self._rows(parts, lambda sh: sh.shaped)
        faithful = self._gather_lists([sh.faithful for sh in parts]) if self.faithfulness else None
        times = self._max_over_processes({"time/generate_s": t_generate, "time/score_s": t_score, "time/update_s": t_passes + t3 - t2,
                                          "time/step_s": t3 - t0})
        metrics = {
            "step": step + 1,
            "objective/kl": float(kl_seq.mean()),
            "objective/kl_k3": float(kl_k3_seq.mean()),
            "objective/kl_coef": kl_coef_used,
            "objective/entropy": self._token_mean(parts, lambda sh: sh.token_stats["entropy"]),
            "ppo/returns/mean": self._token_mean(parts, lambda sh: sh.returns),
            "ppo/policy/advantages_mean": self._token_mean(parts, lambda sh: sh.advantages),
            **self._mean_over_processes(update_stats),
            "env/reward_mean": float(raw.mean()),
            "env/reward_std": float(raw.std(unbiased=False)) if len(raw) > 1 else 0.0,
            **(_group_metrics(raw, k) if k > 1 else {}),
            "env/toxicity_mean": float(self._rows(parts, lambda sh: sh.scored.toxicity.float()).mean()),
            # the classifier's raw logit, before shaping
            "env/score_logit_mean": float(self._rows(parts, lambda sh: sh.scored.reward.float()).mean()),
            **({"env/faithfulness_mean": float(np.mean(faithful))} if faithful is not None else {}),
            "env/response_length_mean": float(self._rows(parts, lambda sh: sh.mask.sum(1)).mean()),
            "env/ended_fraction": float(self._rows(parts, lambda sh: sh.rollout.ended.float()).mean()),
            **times,
        }
        self.step_idx += 1
        shards = self._gather_lists([[(sh.shard, self.state.process_index, [e.id for e in sh.examples])] for sh in parts])
        self._log(metrics, shards)
        self.last_rollout = parts[-1].rollout
        self.last_shards = parts
        if update_stats["ppo/applied_minibatches"] == 0:
            # Nothing was applied, so the adapter did not move. The usual causes (weights or losses
            # gone non-finite) skip every later step too: the run stops here instead of ending with
            # "trained N steps" and an unchanged adapter. This also covers a run that skipped every
            # minibatch overall. The metrics line above is kept; no checkpoint is written for this step.
            # (Every process stops here: the decision to skip was taken by all of them together.)
            raise self._said_once(TrainingError(
                f"PPO step {step + 1} skipped all {update_stats['ppo/skipped_minibatches']} of its minibatches (non-finite loss or "
                f"gradient, or a mean ratio outside [1/{ppo_cfg.ratio_threshold:g}, {ppo_cfg.ratio_threshold:g}]), "
                "so the adapter did not change; "
                f"lower ppo.learning_rate or check the reward and ppo settings (metrics: {self.run_dir / 'metrics.jsonl'})"
            ))
        return metrics

    def _update_hooks(self, temperature: float) -> UpdateHooks:
        """The update through accelerate: its backward and clipping, the prepared (DDP) model's forward."""
        return UpdateHooks(
            backward=self.accelerator.backward,
            clip_grad_norm=self.accelerator.clip_grad_norm_,
            forward=lambda sub: self.prepared_model(sub, temperature=temperature, with_values=True),  # through DDP
            no_sync=lambda: self.accelerator.no_sync(self.prepared_model),
            all_agree=self._all_agree,
        )

    # ------------------------------------------------------------------ across processes
    # With one process each of these is the plain computation (bit for bit what it was before there were
    # several); with several, accelerate's gather and reduce make it one of the whole batch.
    def _rows(self, parts: list[_Shard], per_row) -> torch.Tensor:
        """A per-row quantity of the whole batch, in shard order (the processes' rows gathered)."""
        rows = torch.cat([per_row(sh) for sh in parts])
        if self.state.num_processes == 1:
            return rows
        from accelerate.utils import gather

        return gather(rows.to(self.accelerator.device))

    def _token_mean(self, parts: list[_Shard], per_token) -> float:
        """The masked mean of a per-token quantity over all real tokens of the whole batch."""
        if self.shards == 1:
            return float(masked_mean(per_token(parts[0]), parts[0].mask))
        sums = sum(torch.stack([torch.where(sh.mask.bool(), per_token(sh).double(), 0.0).sum(), sh.mask.double().sum()]) for sh in parts)
        total, count = self._sum_over_processes(sums).tolist()
        return total / count

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.state.num_processes == 1:
            return tensor
        from accelerate.utils import reduce

        return reduce(tensor.to(self.accelerator.device), reduction="sum").cpu()

    def _mean_over_processes(self, stats: dict[str, float]) -> dict[str, float]:
        """Update statistics: each process has the mean over its shards; this is the mean over all shards.
        (The applied and skipped counts are the same everywhere: every process takes every decision.)"""
        keys = [key for key, value in stats.items() if isinstance(value, float)]
        if self.state.num_processes == 1 or not keys:
            return stats
        from accelerate.utils import reduce

        means = reduce(torch.tensor([stats[key] for key in keys], dtype=torch.float64, device=self.accelerator.device), reduction="mean")
        return {**stats, **dict(zip(keys, means.tolist()))}

    def _max_over_processes(self, times: dict[str, float]) -> dict[str, float]:
        """Times: a step takes as long as its slowest process."""
        if self.state.num_processes == 1:
            return times
        import torch.distributed as dist

        values = torch.tensor(list(times.values()), dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return dict(zip(times, values.tolist()))

    def _gather_lists(self, local: list[list]) -> list:
        """The concatenation, in shard order, of every process's lists (Python objects)."""
        mine = [item for part in local for item in part]
        if self.state.num_processes == 1:
            return mine
        from accelerate.utils import gather_object

        return gather_object(mine)

    def _all_agree(self, ok: bool) -> bool:
        """True when every process says ``ok``: a minibatch is skipped by all or by none."""
        if self.state.num_processes == 1:
            return ok
        from accelerate.utils import reduce

        return float(reduce(torch.tensor([0.0 if ok else 1.0], device=self.accelerator.device), reduction="sum")) == 0.0

    def _said_once(self, error: DetoxError) -> DetoxError:
        """An error that every process raises: the main one says it, the others stop quietly."""
        error.quiet = not self.state.is_main_process
        return error

    # ------------------------------------------------------------------ the loop
    def train(self, steps: int | None = None) -> Path:
        """Run until ``cfg.ppo.steps`` (or ``steps``), checkpointing; return the ``final/`` folder.

        An --overwrite run moves into the output folder, replacing the earlier run, right after its
        first checkpoint (or at the end). An error before that says the earlier run is unchanged.
        """
        total = steps if steps is not None else self.cfg.ppo.steps
        bar = tqdm(total=total, initial=self.step_idx, desc="ppo", unit="step", disable=not self.progress)
        try:
            while self.step_idx < total:
                m = self.step()
                bar.update(1)
                bar.set_postfix(reward=f"{m['env/reward_mean']:.3f}", kl=f"{m['objective/kl']:.3f}", s=f"{m['time/step_s']:.1f}")
                if self.step_idx % self.cfg.run.save_every == 0 or self.step_idx == total:
                    self.save_checkpoint()
                    self._replace_earlier_run()
            bar.close()
            final = self.save_final()
            self._replace_earlier_run()
        except DetoxError as e:
            if self.staging_dir is None:
                raise
            raise self._said_once(type(e)(f"{e}; {self.earlier_run_kept()}")) from e
        if self.cfg.run.log_with:
            self.accelerator.end_training()
        return self.run_dir / final.name

    def save_checkpoint(self) -> Path:
        # The settings trained with so far go with the checkpoint: a resume compares against them.
        state = {"kl_controller": self.kl_ctl.state_dict(), "seed": self.cfg.run.seed, "config": self.cfg.to_dict()}
        with self._whole_weights():
            if self.state.is_main_process:
                ckpt_lib.save_checkpoint(self.run_dir, self.step_idx, self.policy, self.optimizer, state, keep=self.cfg.run.keep_checkpoints)
        self.state.wait_for_everyone()
        return ckpt_lib.checkpoint_dir(self.run_dir, self.step_idx)

    def save_final(self) -> Path:
        with self._whole_weights():
            if self.state.is_main_process:
                ckpt_lib.save_final(self.run_dir, self.policy, card=self._model_card)
        self.state.wait_for_everyone()
        return self.run_dir / "final"

    def _whole_weights(self):
        """While saving: the trainable weights whole on every process (DeepSpeed ZeRO-3 partitions them;
        gathering them is collective, so every process enters this, and the main one writes)."""
        if self.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(self.policy.trainable_parameters(), modifier_rank=None)


def main_process_first(state, fn):
    """``fn()`` on the main process, then on the others (which then find what it wrote: the tidied run
    folder, filled caches). A :class:`DetoxError` on the main process is raised by every process (the
    others quietly: the main one says it), so that none of them waits for it for ever."""
    if state.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    if state.is_main_process:
        try:
            result = fn()
        except DetoxError as e:
            broadcast_object_list([(type(e), str(e))])
            raise
        except BaseException as e:
            broadcast_object_list([(DetoxError, f"the main process failed ({type(e).__name__}: {e})")])
            raise
        broadcast_object_list([None])
        return result
    failure = [None]
    broadcast_object_list(failure)
    if failure[0] is not None:
        kind, message = failure[0]
        error = kind(message)
        error.quiet = True
        raise error
    return fn()


def _group_metrics(rewards: torch.Tensor, k: int) -> dict[str, float]:
    """How much the k samples of a prompt differ in reward: the signal a group baseline keeps.

    ``env/group_reward_std``: the mean over prompts of the within-prompt standard deviation;
    ``env/uniform_group_fraction``: the share of prompts whose k rewards are all equal (e.g. all at
    the reward's ceiling), which give no toxicity signal under ``ppo.reward_baseline=group``."""
    grouped = rewards.float().reshape(-1, k)
    return {
        "env/group_reward_std": float(grouped.std(dim=1, unbiased=False).mean()),
        "env/uniform_group_fraction": float((grouped.amax(dim=1) - grouped.amin(dim=1) == 0).float().mean()),
    }


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
