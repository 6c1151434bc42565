"""The life of a run folder: made, overwritten without losing the earlier run, resumed.

:mod:`detoxrl.runfiles` names the files and reads them; this module decides what happens to a folder
when a training command (``train``, ``sft``, ``demo``) starts, stops and continues:

- ``--overwrite`` of an earlier run writes the new one into ``RUN/new-run.incomplete/`` and moves it
  into place (the earlier run's files out, through ``RUN/old-run.being-replaced/``) only once it has
  written its first checkpoint, or finished. A run that fails or is killed before that leaves the
  earlier run as it was; the next ``train`` in the folder removes what it left, or finishes a move
  that a kill interrupted (:func:`recover_overwrite`).
- ``--resume`` continues from a checkpoint that passes its checks (:mod:`detoxrl.checkpoint`), with
  the settings it was trained with: a change that affects the result is refused unless allowed, and
  then recorded in ``config.yaml`` and ``config-changes.jsonl`` (:func:`prepare_resume`).
- :class:`RunFolder`: what a running trainer writes there (metrics lines, the swap, the model card).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detoxrl import checkpoint as ckpt_lib
from detoxrl import runfiles
from detoxrl.config import RESUME_FREE_SETTINGS, DetoxConfig, changed_settings
from detoxrl.errors import ConfigError, DetoxError, note
from detoxrl.policy import DTYPES, resolve_dtype
from detoxrl.prompts import SplitRows, check_pinned_split, split_fingerprint

#: With several rollout shards: per step, the prompts of each shard and the process that ran it.
SHARDS_LOG = runfiles.SHARDS
MANAGED = (runfiles.METRICS, runfiles.CHECKPOINTS, runfiles.FINAL, runfiles.EVAL, runfiles.REPORT, runfiles.CONFIG,
           runfiles.CONFIG_CHANGES, runfiles.SPLIT, runfiles.PAIRS, runfiles.PAIRS_SUMMARY, "detoxrl",
           SHARDS_LOG)  # detoxrl/: tracker logs
#: Inside the run folder: an --overwrite run until its first checkpoint, and the earlier run's files
#: while the new run moves into place.
NEW_RUN_DIR, OLD_RUN_DIR = "new-run.incomplete", "old-run.being-replaced"
ALL_MOVED = "ALL-FILES-OF-THE-EARLIER-RUN-MOVED-HERE"  # in OLD_RUN_DIR: the first half of the move is done
CONFIG_CHANGES = runfiles.CONFIG_CHANGES


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
        note(line)
    if clear:
        clear_output_dir(out)
    return out


def existing_run(out: Path) -> list[str]:
    """What of an earlier run ``out`` holds (including an --overwrite run in progress or stopped)."""
    return [name for name in (*MANAGED, NEW_RUN_DIR, OLD_RUN_DIR) if (out / name).exists()]


# --------------------------------------------------------------------------------------------
# One writer at a time


LOCK_FILE = ".detoxrl.lock"


@dataclass
class FolderLock:
    """An OS lock on a run folder, held until its last holder in this process calls :meth:`release`, or
    the process ends (the OS releases the lock of a process that dies, so a lock left by a killed run
    never blocks). ``holders``: the commands of this process holding it (demo, then its trainer)."""

    path: Path
    fd: int | None
    holders: int = 1
    made_folder: bool = False  # the lock made the folder (it did not exist)

    def release(self) -> None:
        self.holders -= 1
        if self.holders <= 0 and self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
            _HELD.pop(self.path.resolve(), None)

    def abandon(self) -> None:
        """A command that stops before writing anything: release, and take away the folder the lock made if
        nothing else is in it (a bad input leaves no empty run folder behind)."""
        self.release()
        folder = self.path.parent
        if self.fd is None and self.made_folder and folder.is_dir() and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            self.path.unlink(missing_ok=True)
            folder.rmdir()

    def is_held(self) -> bool:
        """This process holds the lock of the file that is there now (not of one deleted since)."""
        try:
            return self.fd is not None and os.fstat(self.fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False


def lock_folder(folder: str | Path, command: str) -> FolderLock:
    """Take the lock of ``folder`` (``fcntl.flock`` on ``FOLDER/.detoxrl.lock``, made with the folder if
    needed) for ``command``, or say who holds it: two commands writing one run folder at once would mix
    their metrics, config and final adapter. The holder's PID and command are written into the file for
    that message. Where ``fcntl`` does not exist (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return FolderLock(Path(folder) / LOCK_FILE, None)
    path = Path(folder) / LOCK_FILE
    held = _HELD.get(path.resolve())
    if held is not None and held.is_held():
        held.holders += 1
        return held  # this process holds it already (demo: the command, then its trainer)
    made = not path.parent.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return FolderLock(path, None)  # a folder nobody here can write needs no lock (the command says what fails)
        raise DetoxError(f"cannot lock run folder '{folder}' ({e.strerror}); choose a folder you can write") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise DetoxError(f"run folder '{folder}' is in use by {holder}; wait for it to finish, or choose another "
                         "--output-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"detoxrl process {os.getpid()} ({command})".encode("utf-8"), 0)
    lock = _HELD[path.resolve()] = FolderLock(path, fd, made_folder=made)
    return lock


_HELD: dict[Path, FolderLock] = {}  # the locks this process holds, by lock file


def claim_output_dir(cfg: DetoxConfig, command: str) -> FolderLock:
    """A training command's first act on its folder: a writable place (:func:`check_writable_dir`), then
    its lock, before anything in it is read or tidied (:func:`recover_overwrite`) or written."""
    check_writable_dir(cfg.run.output_dir, "--output-dir")
    return lock_folder(cfg.run.output_dir, command)


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
        if not (old / ALL_MOVED).exists() and not new.is_dir():  # not a state this code leaves; undo it
            for item in old.iterdir():
                if not (out / item.name).exists():
                    item.rename(out / item.name)
            shutil.rmtree(old)
            return [f"found '{old}' without the new run it was making room for; moved the earlier run's files back into '{out}'"]
        swap_in(out, new, old)
        return [f"an --overwrite run in '{out}' was stopped while it moved into place (after its first checkpoint): "
                "finished the move; the folder holds the new run, resume it with --resume"]
    if new.is_dir():
        shutil.rmtree(new)
        return [f"removed '{new}', left by an --overwrite run that stopped before its first checkpoint; "
                f"the run in '{out}' is the earlier one, unchanged"]
    return []


def swap_in(out: Path, new: Path, old: Path) -> None:
    """Replace the run files of ``out`` by those of ``new``; each step can be redone after a kill.

    1. every run file of ``out`` moves into ``old`` (then a marker says so);
    2. every file of ``new`` moves into ``out``, and ``new`` goes;
    3. ``old`` goes.
    """
    old.mkdir(exist_ok=True)
    if not (old / ALL_MOVED).exists():
        for name in MANAGED:
            if (out / name).exists() or (out / name).is_symlink():
                (out / name).rename(old / name)
        (old / ALL_MOVED).touch()
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
    that it was written by the same command (``kind``: ppo for train, sft for sft, dpo for dpo)."""
    out = Path(cfg.run.output_dir)
    check_writable_dir(out, "--output-dir")
    for line in recover_overwrite(out):
        note(line)
    point = ckpt_lib.select_checkpoint(out, resume_from)
    found = point.state.get("kind", "ppo")
    if found != kind:
        command = {"ppo": "train", "sft": "sft", "dpo": "dpo"}
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
    if "algorithm" not in ppo:  # a run from before the setting was PPO
        ppo = {**ppo, "algorithm": "ppo"}
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


def config_yaml(cfg: DetoxConfig) -> str:
    """A config as config.yaml holds it."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def start_run(run_dir: Path, cfg: DetoxConfig, split: SplitRows) -> None:
    """A new run's first files: ``config.yaml`` (the settings it trains with) and ``split.json`` (the rows
    it trains on and holds out, :func:`detoxrl.prompts.split_fingerprint`, which ``evaluate --run`` checks).
    An --overwrite run's staging folder starts empty (what a stopped one left there goes)."""
    if run_dir.name == NEW_RUN_DIR:
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / runfiles.CONFIG, config_yaml(cfg))
    atomic_write(run_dir / runfiles.SPLIT, json.dumps(split_fingerprint(split), indent=1) + "\n")


def check_resumed_split(out_dir: Path, split: SplitRows, cfg: DetoxConfig) -> None:
    """--resume on the data the run started with (its split.json), or one line saying what changed."""
    check_pinned_split(runfiles.load_split(out_dir), split, cfg.data.source, str(out_dir))


def atomic_write(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file and a rename: a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
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


class RunFolder:
    """What a training command does with its run folder, shared by PPO (:class:`Trainer`) and SFT
    (:class:`detoxrl.sft.SupervisedTrainer`): the metrics lines (main process only), their truncation
    on resume, and the --overwrite swap. Needs ``cfg``, ``state`` (accelerate's PartialState),
    ``shards``, ``accelerator``, ``out_dir``, ``staging_dir`` and ``run_dir``."""

    def earlier_run_kept(self) -> str:
        """What a stop before the first checkpoint of an --overwrite run leaves (one clause, for messages)."""
        return (f"--overwrite: the earlier run in '{self.out_dir}' is unchanged (a new run replaces it only at its first "
                f"checkpoint); this run's partial output is in '{self.staging_dir}', which the next train in that folder removes")

    def record_resume(self, plan: "ResumePlan", **extra: Any) -> None:
        """After a resume has loaded its checkpoint (main process): the metrics lines of later steps go,
        a change of settings (or a checkpoint without its own record of them) is appended to
        ``config-changes.jsonl`` with ``extra``, and ``config.yaml`` says what the run trains with now."""
        self._truncate_logs(self.step_idx)
        ckpt = plan.ckpt
        if plan.changes or plan.old_config is None:
            record = {
                "step": self.step_idx,
                "checkpoint": str(ckpt.relative_to(self.out_dir)) if ckpt.is_relative_to(self.out_dir) else str(ckpt),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "changes": {key: {"old": a, "new": b} for key, (a, b) in plan.changes.items()} if plan.old_config is not None else None,
                **extra,
            }
            runfiles.append_jsonl(self.out_dir / CONFIG_CHANGES, [record])
        atomic_write(self.out_dir / "config.yaml", config_yaml(self.cfg))

    def resume_from_checkpoint(self) -> dict[str, Any]:
        """``sft --resume`` and ``dpo --resume``: the checkpoint of ``self.resume_plan`` loaded, newer ones set
        aside, the resume recorded (:meth:`record_resume`); returns its trainer state."""
        plan = self.resume_plan
        state = ckpt_lib.load_checkpoint(plan.ckpt, self.policy, self.optimizer)
        self.step_idx = state["step"]
        for line in ckpt_lib.set_aside(plan.point.newer):
            note(line)
        self.record_resume(plan)
        return state

    def start_one_process(self, cfg: DetoxConfig, command: str) -> None:
        """The first acts of ``sft`` and ``dpo``, which run in one process: the memory setting, the process
        check, the threads, the trackers, then the folder's lock (``self.folder_lock``)."""
        from accelerate import PartialState

        from detoxrl import runtime

        if cfg.run.release_memory:
            runtime.return_freed_memory()
        self.state, self.shards = PartialState(**runtime.accelerate_state_kwargs()), 1
        if self.state.num_processes > 1:
            raise ConfigError(f"detoxrl {command} runs in one process, not {self.state.num_processes} (each would train and "
                              "write the run alone); start it without torchrun / accelerate launch")
        if cfg.run.num_threads:
            torch.set_num_threads(cfg.run.num_threads)
        check_trackers(cfg.run.log_with)
        self.folder_lock = claim_output_dir(cfg, command)

    def offline_loop(self, command: str, stop: int, total: int, postfix) -> Path:
        """The loop of ``sft`` and ``dpo`` (``self.step()`` and ``self.save_checkpoint()`` theirs): step to
        ``stop``, checkpoint every ``run.save_every`` steps and at the end, the earlier run replaced at the
        first checkpoint, then ``final/``; the folder's lock held meanwhile. ``postfix(metrics)``: the
        progress bar's numbers. Returns ``final/``."""
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=self.step_idx, desc=command, unit="step", disable=not self.cfg.run.progress)
        self.hold_folder(command)
        try:
            while self.step_idx < stop:
                metrics = self.step()
                bar.update(1)
                bar.set_postfix(**postfix(metrics))
                if self.step_idx % self.cfg.run.save_every == 0 or self.step_idx == stop:
                    self.save_checkpoint()
                    self.replace_earlier_run()
            bar.close()
            final = ckpt_lib.save_final(self.run_dir, self.policy)
            self.replace_earlier_run()
        except DetoxError as e:
            if self.staging_dir is None:
                raise
            raise type(e)(f"{e}; {self.earlier_run_kept()}") from e
        finally:
            self.release_folder()
        return self.run_dir / final.name

    def hold_folder(self, command: str) -> None:
        """While training: the folder's lock (the main process's; taken when the trainer was made, and
        again if a finished ``train()`` released it), so that no other command writes the run meanwhile."""
        if not self.state.is_main_process:
            return
        if getattr(self, "folder_lock", None) is None or not self.folder_lock.is_held():
            self.folder_lock = lock_folder(self.out_dir, command)

    def release_folder(self) -> None:
        """The end of ``train()``: the lock goes back (another command may use the finished run)."""
        lock = getattr(self, "folder_lock", None)
        if lock is not None and lock.fd is not None:
            lock.release()

    def replace_earlier_run(self) -> None:
        """--overwrite: the new run has a checkpoint (or has finished), so it takes the earlier run's place."""
        if self.staging_dir is None:
            return
        if self.state.is_main_process:
            swap_in(self.out_dir, self.staging_dir, self.out_dir / OLD_RUN_DIR)
        self.staging_dir, self.run_dir = None, self.out_dir
        self.state.wait_for_everyone()

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
            atomic_write(path, runfiles.lines_text(kept))  # a kill now must not cost the earlier lines


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def flat_hparams(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as the flat ``section.key`` scalars that trackers take as hyper-parameters."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
