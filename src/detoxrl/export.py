"""Export a trained adapter: as a portable PEFT adapter, or merged into a plain transformers model.

``detoxrl export RUN_OR_ADAPTER --output DIR [--merge] [--dtype fp32|bf16|fp16] [--push-to-hub REPO]``

- A run folder exports its ``final/``; an adapter folder (a run's ``final/`` or ``checkpoints/step-N/``,
  the notebook's checkpoint, any ``PeftModel.save_pretrained`` folder) exports itself.
- Without ``--merge``: ``adapter_model.safetensors`` (a ``.bin`` adapter is read with
  ``weights_only=True`` and written as safetensors) and ``adapter_config.json`` whose
  ``base_model_name_or_path`` is a hub id or an absolute path, so that
  ``AutoPeftModelFor*.from_pretrained(DIR)`` works from anywhere. No model loads.
- With ``--merge``: the base model loads in float32 with the adapter, peft's ``merge_and_unload``
  folds the LoRA weights into it, and the result is saved in ``--dtype`` with its config, generation
  config and the base's tokenizer: ``AutoModelForSeq2SeqLM`` / ``AutoModelForCausalLM.from_pretrained(DIR)``
  loads it without peft or detoxrl. The value head (PPO's critic) is not part of either export.

Both write a model card (:mod:`detoxrl.modelcard`) and, for an adapter of a run, the run's settings as
``detoxrl_config.yaml`` (``detoxrl summarize`` reads its prompt template from there). The folder is
built beside ``DIR`` and renamed into place: an interrupted export leaves no half-written ``DIR``, and an
existing ``DIR`` is replaced only with ``overwrite``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from detoxrl.errors import DetoxError, ModelLoadError
from detoxrl.runfiles import RunPaths
from detoxrl.trained import ADAPTER, RUN, RUN_CONFIG, TrainedWeights, resolve_trained

#: --dtype names -> torch dtypes.
EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
def resolve_source(given: str | Path) -> TrainedWeights:
    """What ``export`` exports: a run folder (its ``final/``) or an adapter folder (:func:`detoxrl.trained.resolve_trained`)."""
    return resolve_trained(given, accept=(RUN, ADAPTER), flag="export's source")


def check_output(output: str | Path, source: TrainedWeights, *, overwrite: bool) -> Path:
    """Every check of ``--output`` before anything loads: not the folder being exported (nor one that
    holds it), not a file, writable, and empty unless ``overwrite``."""
    from detoxrl.runfolder import check_writable_dir

    out = Path(output).expanduser()
    check_writable_dir(out, "--output")
    resolved = out.resolve()
    for inside in filter(None, (source.adapter_dir, source.run_dir)):
        if resolved == inside.resolve() or resolved in inside.resolve().parents:
            raise DetoxError(f"--output '{output}' is or holds the folder being exported ({inside}); choose another folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DetoxError(f"--output '{output}' already exists and is not empty; pass --overwrite to replace it, or choose another folder")
    return out


def check_repo_id(repo_id: str) -> None:
    """A well-formed hub repo id (``user/name``), checked before anything loads."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise DetoxError(f"--push-to-hub '{repo_id}' is not a hub repo id ({str(e).splitlines()[0]}); pass USER/NAME") from None


def export(
    source: TrainedWeights,
    output: str | Path,
    *,
    policy_cfg,
    merge: bool = False,
    dtype: str = "fp32",
    overwrite: bool = False,
    run_config_text: str | None = None,
) -> Path:
    """Write the export of ``source`` into ``output`` (see the module docstring); return ``output``.

    ``policy_cfg`` is a :class:`detoxrl.config.PolicyConfig` whose ``model`` is the base model
    (:func:`base_model_of`); with ``merge`` it loads (architecture, remote-code consent), in float32.
    ``run_config_text``: the run's config.yaml, written as :data:`RUN_CONFIG`."""
    from detoxrl.modelcard import write_model_card
    from detoxrl.policy import make_adapter_portable, read_adapter_config, read_adapter_state, resolve_policy_source

    out = check_output(output, source, overwrite=overwrite)
    if dtype not in EXPORT_DTYPES:
        raise DetoxError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, got '{dtype}'")
    torch_dtype = EXPORT_DTYPES[dtype]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if merge:
            base = _write_merged(source, tmp, policy_cfg, torch_dtype)
        else:
            read_adapter_config(source.adapter_dir)  # a broken adapter_config.json fails here, not on load
            state = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in read_adapter_state(source.adapter_dir).items()}
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
            shutil.copyfile(source.adapter_dir / "adapter_config.json", tmp / "adapter_config.json")
            base = resolve_policy_source(policy_cfg.model)
            make_adapter_portable(tmp, base)
        from detoxrl.policy import portable_base

        if run_config_text is not None:
            (tmp / RUN_CONFIG).write_text(run_config_text, encoding="utf-8")
        write_model_card(tmp, source.adapter_dir, run_dir=source.run_dir, merged=merge, base=portable_base(base),
                         dtype=dtype if merge else None, final=_is_final(source))
        _readable(tmp)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _is_final(source: TrainedWeights) -> bool:
    return source.run_dir is not None and source.adapter_dir.resolve() == RunPaths(source.run_dir).final.resolve()


def _write_merged(source: TrainedWeights, folder: Path, policy_cfg, torch_dtype: torch.dtype) -> str:
    """Load base + adapter in float32, merge, save in ``torch_dtype`` with tokenizer and generation config."""
    import dataclasses

    from transformers import AutoTokenizer

    from detoxrl.policy import POLICY_ADAPTER, load_policy

    cfg = dataclasses.replace(policy_cfg, adapter=str(source.adapter_dir), dtype="float32")
    policy = load_policy(cfg)
    try:
        merged = policy.model.merge_and_unload(safe_merge=True, adapter_names=[POLICY_ADAPTER])
    except ValueError as e:  # safe_merge: the adapter holds NaN or inf
        raise ModelLoadError(f"adapter '{source.adapter_dir}' cannot be merged ({str(e).splitlines()[0]}); it holds non-finite weights") from e
    merged = merged.to(torch_dtype)
    merged.save_pretrained(str(folder), safe_serialization=True)
    # The base's own tokenizer files (the policy's copy was set up for batched generation).
    AutoTokenizer.from_pretrained(policy.source, trust_remote_code=cfg.trust_remote_code).save_pretrained(str(folder))
    return policy.source


def _readable(folder: Path) -> None:
    """Files as the user's umask makes them (a library may write its files private, 0600, via a temporary file)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~mask)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an existing ``out`` (checked: empty, or ``--overwrite``) goes."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload ``folder`` to the hub model repo ``repo_id`` (created if missing); return the repo URL.

    Needs network and a token (``hf auth login`` or ``HF_TOKEN``); a failure is one line that says
    the export itself is complete and how to push it later."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                          commit_message=f"Upload {Path(folder).name} (detoxrl export)")
    except Exception as e:  # no network, no token, no permission
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise DetoxError(
            f"could not push '{folder}' to the hub repo '{repo_id}' ({type(e).__name__}: {first}); the export in '{folder}' "
            f"is complete: push it later with: hf upload {repo_id} {folder}"
        ) from e
    return str(url)
