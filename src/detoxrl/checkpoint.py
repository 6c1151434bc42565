"""Checkpoints: adapter, value head, optimizer and trainer state, written atomically.

Layout of a run folder::

    RUN/config.yaml                 resolved configuration
    RUN/metrics.jsonl               one JSON line per PPO step
    RUN/checkpoints/step-000005/    adapter_model.safetensors, adapter_config.json,
                                    value_head.safetensors, optimizer.pt, trainer_state.json
    RUN/final/                      adapter_model.safetensors + adapter_config.json (+ value head)

Randomness is derived from (seed, step), so a checkpoint needs no RNG state to resume exactly.
Optimizer state is a plain tensor dict, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from detoxrl.errors import DetoxError, ModelLoadError
from detoxrl.policy import Policy, _first_line, load_value_head, save_value_head

STATE_FILE = "trainer_state.json"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(run_dir: Path, step: int, policy: Policy, optimizer: torch.optim.Optimizer, state: dict, keep: int = 2) -> Path:
    """Write a checkpoint into a temporary folder, then rename it: a crash never leaves half of one."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.save_adapter(tmp)
    save_value_head(policy.value_head, tmp / "value_head.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    _prune(run_dir, keep)
    return final


def _prune(run_dir: Path, keep: int) -> None:
    ckpts = list_checkpoints(run_dir)
    for old in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if not p.name.endswith(".tmp") and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def require_checkpoint(run_dir: Path) -> Path:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise DetoxError(f"--resume: '{run_dir}' has no checkpoint to resume from; run without --resume (add --overwrite to reuse the folder)")
    return ckpt


def read_state(ckpt: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint, checked: ``step`` a whole number >= 0, ``kl_controller`` a
    mapping of finite numbers with a ``value``. Anything else is one line naming the file."""
    path = ckpt / STATE_FILE
    fix = "delete that folder to resume from the one before"
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
    if not isinstance(kl, dict) or "value" not in kl or not all(_is_finite_number(v) for v in kl.values()):
        raise ModelLoadError(
            f"checkpoint '{ckpt}' has no valid kl_controller in {STATE_FILE} (need finite numbers with a 'value', got {kl!r}); {fix}"
        )
    return state


def _is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def load_checkpoint(ckpt: Path, policy: Policy, optimizer: torch.optim.Optimizer) -> dict:
    """Restore adapter, value head and optimizer; return the trainer state (checked by :func:`read_state`)."""
    state = read_state(ckpt)
    policy.load_adapter_weights(ckpt)
    load_value_head(policy.value_head, ckpt / "value_head.safetensors")
    fix = "delete that folder to resume from the one before"
    try:
        saved = torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        # The weights_only loader refused a global: the file holds more than tensors, which loading
        # could execute. PyTorch's own message suggests weights_only=False; that is never the fix.
        named = re.search(r"GLOBAL (\S+)", str(e))
        what = f" (it names {named.group(1)})" if named else ""
        raise ModelLoadError(
            f"checkpoint '{ckpt}' has an optimizer.pt that holds more than tensors{what}: it was not written by detoxrl and "
            f"loading it could run code, so it is refused; {fix}"
        ) from None
    except Exception as e:  # missing, truncated, not a torch file
        raise ModelLoadError(f"checkpoint '{ckpt}' has a missing or corrupt optimizer.pt ({type(e).__name__}: {_first_line(e)}); {fix}") from e
    try:
        optimizer.load_state_dict(saved)
    except Exception as e:  # not an optimizer state, or one of another policy's parameters
        raise ModelLoadError(
            f"checkpoint '{ckpt}' has an optimizer.pt that does not fit this policy ({type(e).__name__}: {_first_line(e)}); "
            f"resume with the run's own config, or {fix}"
        ) from e
    return state


def save_final(run_dir: Path, policy: Policy) -> Path:
    final = run_dir / "final"
    tmp = run_dir / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.save_adapter(tmp)
    save_value_head(policy.value_head, tmp / "value_head.safetensors")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
