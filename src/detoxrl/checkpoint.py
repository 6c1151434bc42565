"""Checkpoints: adapter, value head, optimizer and trainer state, written atomically.

Layout of a run folder::

    RUN/config.yaml                 resolved configuration
    RUN/metrics.jsonl               one JSON line per PPO step
    RUN/checkpoints/step-000005/    adapter_model.safetensors, adapter_config.json,
                                    value_head.safetensors, optimizer.pt, trainer_state.json
    RUN/final/                      adapter_model.safetensors + adapter_config.json (+ value head)

Randomness is derived from (seed, step), so a checkpoint needs no RNG state to resume exactly.
Optimizer state is a plain tensor dict, loaded with ``weights_only=True``.

``trainer_state.json`` is written last, inside the same temporary folder as the other files, and
records the size and sha256 of each of them (``files``) and the configuration the checkpoint was
trained with (``config``). :func:`verify_checkpoint` checks all of it (and that ``step`` matches the
folder name) before anything heavy loads; :func:`select_checkpoint` picks the checkpoint that
``--resume-from auto|latest-valid|DIR`` asks for.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detoxrl.errors import DetoxError, ModelLoadError, first_line
from detoxrl.runfiles import RunPaths
from detoxrl.policy import Policy, load_tensor_file, load_value_head, save_value_head

STATE_FILE = "trainer_state.json"
#: What a checkpoint folder holds besides trainer_state.json (each one listed with size and sha256).
# Every checkpoint has these; value_head.safetensors too when the algorithm has a critic (ppo), and then its
# checksum is in the state file's list like every other file's.
CHECKPOINT_FILES = ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt")
VALUE_HEAD_FILE = "value_head.safetensors"
#: The fix named by every message about a checkpoint that cannot be used.
FALLBACK_FIX = "pass --resume-from latest-valid to resume from the newest checkpoint before it that passes its checks"
STEP_FOLDER = re.compile(r"step-(\d+)")
#: Suffixes of checkpoints that a resume from an older one set aside (no longer candidates).
CORRUPT_SUFFIX, ABANDONED_SUFFIX = ".corrupt", ".abandoned"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return RunPaths(run_dir).checkpoints / f"step-{step:06d}"


def file_digest(path: Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def save_checkpoint(run_dir: Path, step: int, policy: Policy, optimizer: torch.optim.Optimizer, state: dict, keep: int = 2) -> Path:
    """Write a checkpoint into a temporary folder, then rename it: a crash never leaves half of one."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.save_adapter(tmp)
    if policy.value_head is not None:
        save_value_head(policy.value_head, tmp / VALUE_HEAD_FILE)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    # The checksums of everything written so far, in the state file, written last: a folder whose
    # files do not match them was damaged after the save (the rename below makes the save atomic).
    files = {p.name: file_digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "files": files}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    _prune(run_dir, keep)
    return final


def _prune(run_dir: Path, keep: int) -> None:
    ckpts = list_checkpoints(run_dir)
    for old in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders ``checkpoints/step-N``, oldest first, valid or not.

    A save in progress (``step-N.tmp``) and folders set aside (``.corrupt``, ``.abandoned``) are not
    checkpoints. A ``step-N`` folder without its trainer_state.json is listed: saves are atomic, so
    it was damaged afterwards, and :func:`verify_checkpoint` says so instead of passing over it.
    """
    root = RunPaths(run_dir).checkpoints
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and STEP_FOLDER.fullmatch(p.name)]
    return sorted(done, key=folder_step)


def folder_step(ckpt: Path) -> int:
    """The step that a checkpoint folder's name says (``step-000005`` -> 5)."""
    return int(STEP_FOLDER.fullmatch(ckpt.name).group(1))


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def require_checkpoint(run_dir: Path) -> Path:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise DetoxError(f"--resume: '{run_dir}' has no checkpoint to resume from; run without --resume (add --overwrite to reuse the folder)")
    return ckpt


def read_state(ckpt: Path, fix: str = FALLBACK_FIX) -> dict[str, Any]:
    """The trainer state of a checkpoint, checked: ``step`` a whole number >= 0, ``kl_controller`` a
    mapping of finite numbers with a ``value`` (PPO checkpoints; those of ``detoxrl sft``, ``"kind":
    "sft"``, have none); ``files`` and ``config``, when present, of the right shape. Anything else is
    one line naming the file and ``fix``."""
    path = ckpt / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"checkpoint '{ckpt}' has a corrupt {STATE_FILE} ({e}); {fix}") from e
    if not isinstance(state, dict):
        raise ModelLoadError(f"checkpoint '{ckpt}' has a {STATE_FILE} that is not a JSON object (got {type(state).__name__}); {fix}")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ModelLoadError(f"checkpoint '{ckpt}' has no valid step in {STATE_FILE} (need a whole number >= 0, got {step!r}); {fix}")
    kl = state.get("kl_controller")
    kind = state.get("kind", "ppo")  # "sft", "dpo": written by detoxrl sft or dpo, which have no KL controller
    if kind not in ("ppo", "sft", "dpo"):
        raise ModelLoadError(f"checkpoint '{ckpt}' has an unknown kind {kind!r} in {STATE_FILE} (need ppo, sft or dpo); {fix}")
    if kind == "ppo" and (not isinstance(kl, dict) or "value" not in kl or not all(_is_finite_number(v) for v in kl.values())):
        raise ModelLoadError(
            f"checkpoint '{ckpt}' has no valid kl_controller in {STATE_FILE} (need finite numbers with a 'value', got {kl!r}); {fix}"
        )
    files = state.get("files")
    if files is not None and not (
        isinstance(files, dict)
        and all(isinstance(v, dict) and _is_size(v.get("size")) and isinstance(v.get("sha256"), str) and _SHA256.fullmatch(v["sha256"])
                for v in files.values())
    ):
        raise ModelLoadError(f"checkpoint '{ckpt}' has no valid 'files' list in {STATE_FILE} (need a size and a sha256 per file); {fix}")
    if "config" in state and not isinstance(state["config"], dict):
        raise ModelLoadError(f"checkpoint '{ckpt}' has a 'config' in {STATE_FILE} that is not a mapping; {fix}")
    return state


def _is_size(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def verify_checkpoint(ckpt: Path, fix: str = FALLBACK_FIX) -> dict[str, Any]:
    """Everything about a checkpoint that can be checked without loading it; returns its state.

    :func:`read_state`'s checks, then: the ``step`` it records is the step of its folder name, and
    every file has the size and sha256 recorded when it was written (a checkpoint from before the
    checksums, without ``files``, is checked for the presence of its files only). Hashing reads
    each file once: seconds for a LoRA adapter and its Adam state, no model needed.
    """
    if not ckpt.is_dir():
        raise ModelLoadError(f"checkpoint '{ckpt}' does not exist or is not a folder; {fix}")
    if not (ckpt / STATE_FILE).is_file():
        raise ModelLoadError(f"checkpoint '{ckpt}' has no {STATE_FILE} (the folder was damaged after it was saved); {fix}")
    state = read_state(ckpt, fix)
    named = STEP_FOLDER.fullmatch(ckpt.name)
    if named and int(named.group(1)) != state["step"]:
        raise ModelLoadError(
            f"checkpoint '{ckpt}' says step {state['step']} in {STATE_FILE} but its folder name says step {int(named.group(1))} "
            f"(a folder renamed or copied by hand); {fix}"
        )
    files = state.get("files")
    for name in required_files(state):
        if not (ckpt / name).is_file():
            raise ModelLoadError(f"checkpoint '{ckpt}' has no {name}; {fix}")
        if files is not None and name not in files:
            raise ModelLoadError(f"checkpoint '{ckpt}' records no checksum of its {name} in {STATE_FILE}; {fix}")
    for name, want in (files or {}).items():
        path = ckpt / name
        if not path.is_file():
            raise ModelLoadError(f"checkpoint '{ckpt}' has no {name}, which its {STATE_FILE} lists; {fix}")
        size = path.stat().st_size
        if size != want["size"]:
            raise ModelLoadError(
                f"checkpoint '{ckpt}' has a damaged {name} ({size} bytes, {want['size']} when it was saved); {fix}"
            )
        if file_digest(path)["sha256"] != want["sha256"]:
            raise ModelLoadError(f"checkpoint '{ckpt}' has a damaged {name} (its sha256 differs from the one recorded when it was saved); {fix}")
    return state


def required_files(state: dict) -> tuple[str, ...]:
    """The files a checkpoint must hold: :data:`CHECKPOINT_FILES`, and the value head when the run it belongs
    to has a critic (``ppo.algorithm`` ppo, the default, and what every checkpoint before the setting had)."""
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    ppo = config.get("ppo") if isinstance(config.get("ppo"), dict) else {}
    critic = state.get("kind", "ppo") != "dpo" and ppo.get("algorithm", "ppo") == "ppo"
    return CHECKPOINT_FILES + ((VALUE_HEAD_FILE,) if critic else ())


@dataclass
class ResumePoint:
    """The checkpoint a resume continues from, its verified state, and the newer checkpoint folders
    that resuming from it sets aside: ``(folder, why)``, ``why`` being ``corrupt: ...`` or ``abandoned``."""

    ckpt: Path
    state: dict[str, Any]
    newer: list[tuple[Path, str]] = field(default_factory=list)


RESUME_MODES = ("auto", "latest-valid")


def select_checkpoint(run_dir: Path, resume_from: str = "auto") -> ResumePoint:
    """The checkpoint of ``run_dir`` that ``--resume-from`` names, verified (:func:`verify_checkpoint`).

    - ``auto``: the latest; one that fails its checks is an error naming ``--resume-from latest-valid``.
    - ``latest-valid``: the newest that passes its checks; the newer ones are reported as corrupt.
    - anything else: a checkpoint folder of this run, by path or by name (``step-000010``); the
      newer ones are reported as abandoned (or corrupt).
    """
    ckpts = list_checkpoints(run_dir)
    if resume_from == "auto":
        ckpt = require_checkpoint(run_dir)
        return ResumePoint(ckpt, verify_checkpoint(ckpt))
    if resume_from == "latest-valid":
        if not ckpts:
            require_checkpoint(run_dir)
        bad: list[tuple[Path, str]] = []
        for ckpt in reversed(ckpts):
            try:
                return ResumePoint(ckpt, verify_checkpoint(ckpt), newer=bad[::-1])
            except ModelLoadError as e:
                bad.append((ckpt, "corrupt: " + _reason(e, ckpt)))
        found = ", ".join(f"{path.name}: {why.removeprefix('corrupt: ')}" for path, why in bad[::-1])
        raise ModelLoadError(
            f"--resume-from latest-valid: none of the {len(ckpts)} checkpoints of '{run_dir}' passes its checks ({found}); "
            "start again with --overwrite"
        )
    ckpt = _named_checkpoint(run_dir, resume_from)
    state = verify_checkpoint(ckpt, fix="pass another checkpoint of this run to --resume-from, or --resume-from latest-valid")
    newer = []
    for other in ckpts:
        if folder_step(other) > state["step"]:
            try:
                verify_checkpoint(other)
                newer.append((other, "abandoned"))
            except ModelLoadError as e:
                newer.append((other, "corrupt: " + _reason(e, other)))
    return ResumePoint(ckpt, state, newer)


def _named_checkpoint(run_dir: Path, given: str) -> Path:
    root = RunPaths(run_dir).checkpoints
    path = Path(given).expanduser()
    if not path.exists() and not path.is_absolute() and (root / given).exists():
        path = root / given
    names = ", ".join(p.name for p in list_checkpoints(run_dir)) or "none"
    usage = f"pass auto, latest-valid or one of this run's checkpoints ({names})"
    if not path.exists():
        raise DetoxError(f"--resume-from '{given}' does not exist; {usage}")
    if path.resolve().parent != root.resolve() or not STEP_FOLDER.fullmatch(path.name):
        raise DetoxError(f"--resume-from '{given}' is not a checkpoint of the run in '{run_dir}' (a folder {root}/step-N); {usage}")
    return path


def _reason(error: Exception, ckpt: Path) -> str:
    """The middle of a checkpoint message: what is wrong, without the folder and the fix."""
    text = str(error)
    text = text.replace(f"checkpoint '{ckpt}' ", "", 1)
    return text.split("; ")[0]


def set_aside(newer: list[tuple[Path, str]]) -> list[str]:
    """Rename checkpoints newer than the one a run resumes from, so that they are no longer candidates
    (a later ``--resume`` would otherwise pick a checkpoint of the abandoned or corrupt branch).
    Returns one line per folder, for the user."""
    lines = []
    for path, why in newer:
        suffix = CORRUPT_SUFFIX if why.startswith("corrupt") else ABANDONED_SUFFIX
        target = path.with_name(path.name + suffix)
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}{suffix}{n}")
        path.rename(target)
        lines.append(f"set aside {path.name} ({why}) as {target}")
    return lines


def _is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def load_checkpoint(ckpt: Path, policy: Policy, optimizer: torch.optim.Optimizer) -> dict:
    """Restore adapter, value head and optimizer; return the trainer state (checked by :func:`read_state`)."""
    state = read_state(ckpt)
    policy.load_adapter_weights(ckpt)
    if policy.value_head is not None:
        load_value_head(policy.value_head, ckpt / VALUE_HEAD_FILE)
    fix = FALLBACK_FIX
    try:
        # weights_only: a file that names anything but tensors is refused with detoxrl's message (PyTorch's
        # own suggests turning the safe loader off; that is never the fix).
        saved = load_tensor_file(ckpt / "optimizer.pt", f"checkpoint '{ckpt}' has an optimizer.pt that", fix,
                                 origin="it was not written by detoxrl and ")
    except ModelLoadError:
        raise
    except Exception as e:  # missing, truncated, not a torch file
        raise ModelLoadError(f"checkpoint '{ckpt}' has a missing or corrupt optimizer.pt ({type(e).__name__}: {first_line(e)}); {fix}") from e
    try:
        optimizer.load_state_dict(saved)
    except Exception as e:  # not an optimizer state, or one of another policy's parameters
        raise ModelLoadError(
            f"checkpoint '{ckpt}' has an optimizer.pt that does not fit this policy ({type(e).__name__}: {first_line(e)}); "
            f"resume with the run's own config, or {fix}"
        ) from e
    return state


def save_final(run_dir: Path, policy: Policy) -> Path:
    """``RUN/final/``: the adapter (its ``adapter_config.json`` naming the base model portably) and the
    value head, written into ``final.tmp/`` and renamed: never half a folder. Its model card is written
    by the workflow that ends the run (``detoxrl.modelcard.refresh_model_card``: training never imports
    reporting)."""
    final = RunPaths(run_dir).final
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.save_adapter(tmp)
    if policy.value_head is not None:
        save_value_head(policy.value_head, tmp / VALUE_HEAD_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
