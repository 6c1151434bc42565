"""Where trained weights live, resolved once: a run folder, an adapter folder or an exported model.

``evaluate``, ``summarize`` and ``export`` each take one of

- a **run folder** (``config.yaml``, ``metrics.jsonl``, ``final/``): its ``final/`` adapter;
- an **adapter folder**: a run's ``final/`` or ``checkpoints/step-N/``, an ``export`` without
  ``--merge``, or any ``PeftModel.save_pretrained`` folder;
- a **merged export** (``export --merge``: a plain transformers model folder with ``config.json``).

:func:`resolve_trained` turns any of them into a :class:`TrainedWeights`: the adapter (or merged model),
the run it belongs to, and the settings file it was trained with (the run's ``config.yaml`` or an
export's ``detoxrl_config.yaml``), from which the prompt template and the base model come.
:func:`base_model_of` then names the base model the adapter goes on, as this machine can load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detoxrl.errors import DetoxError
from detoxrl.runfiles import RunPaths

#: The run settings an exported folder carries (``detoxrl summarize --model/--adapter`` reads them).
RUN_CONFIG = "detoxrl_config.yaml"

RUN, ADAPTER, MERGED = "run", "adapter", "merged"


@dataclass(frozen=True)
class TrainedWeights:
    """One resolved source of trained weights.

    ``adapter_dir``: the PEFT adapter (None for a merged model); ``model_dir``: the merged model (None
    for an adapter); ``run_dir``: the detoxrl run the weights belong to (None for a bare adapter or an
    export); ``config_file``: the settings they were trained with (None when nothing says)."""

    kind: str  # run | adapter | merged
    adapter_dir: Path | None
    model_dir: Path | None
    run_dir: Path | None
    config_file: Path | None


def find_run(folder: str | Path) -> Path | None:
    """The detoxrl run an adapter folder belongs to: ``RUN`` for ``RUN/final`` and for
    ``RUN/checkpoints/step-N`` (a folder with ``config.yaml`` and ``metrics.jsonl``), else None."""
    folder = Path(folder).resolve()
    for run in (folder.parent, folder.parent.parent):
        paths = RunPaths(run)
        if paths.config.is_file() and paths.metrics.is_file():
            if folder == paths.final or folder.parent == paths.checkpoints:
                return run
    return None


def _settings_of(folder: Path, run: Path | None) -> Path | None:
    """An export's own settings file, else the run's config.yaml, else None."""
    exported = folder / RUN_CONFIG
    if exported.is_file():
        return exported
    if run is not None and RunPaths(run).config.is_file():
        return RunPaths(run).config
    return None


def _is_run(path: Path) -> bool:
    paths = RunPaths(path)
    return paths.config.is_file() and paths.metrics.is_file()


def resolve_trained(given: str | Path, *, accept: tuple[str, ...] = (RUN, ADAPTER), flag: str = "the source") -> TrainedWeights:
    """``given`` as one of the kinds in ``accept`` (``run``, ``adapter``, ``merged``); anything else, or
    a run that has not finished, is a one-line error that names ``flag`` and what it takes."""
    from detoxrl.policy import check_adapter_source

    kinds = {RUN: "a train run folder (the --output-dir of detoxrl train: config.yaml, metrics.jsonl, final/)",
             ADAPTER: "a PEFT adapter folder (adapter_config.json)",
             MERGED: "a model folder written by detoxrl export --merge (config.json)"}
    wanted = " or ".join(kinds[k] for k in accept)
    path = Path(given).expanduser()
    if not path.exists():
        raise DetoxError(f"{flag} '{given}' does not exist; pass {wanted}")
    if not path.is_dir():
        raise DetoxError(f"{flag} '{given}' is a file; pass {wanted}")
    if ADAPTER in accept and (path / "adapter_config.json").is_file():
        check_adapter_source(str(path))
        run = find_run(path)
        return TrainedWeights(ADAPTER, path, None, run, _settings_of(path, run))
    if RUN in accept and _is_run(path):
        final = RunPaths(path).final
        if not (final / "adapter_config.json").is_file():
            raise DetoxError(f"run '{given}' has no final/ adapter (it has not finished training); finish it with "
                             f"detoxrl train --resume --output-dir {given}, or pass one of its checkpoints "
                             f"({RunPaths(path).checkpoints}/step-N)")
        check_adapter_source(str(final))
        return TrainedWeights(RUN, final, None, path, RunPaths(path).config)
    if MERGED in accept and (path / "config.json").is_file():
        return TrainedWeights(MERGED, None, path, None, _settings_of(path, None))
    raise DetoxError(f"{flag} '{given}' is not {wanted}")


def base_model_of(adapter_dir: str | Path, configured: str | None = None) -> str:
    """The base model an adapter goes on, as this machine can load it.

    ``configured`` (``--policy``, or the run's ``policy.model``) when it is a packaged model or a
    local folder that exists here; else the adapter config's ``base_model_name_or_path`` when that is a
    folder that exists (a relative path typed for training resolves only from the folder it was typed
    in; detoxrl writes the absolute path into the adapter config); else ``configured`` or the adapter's
    base as a hub id. A local base that exists nowhere is a one-line error naming ``--policy``."""
    from detoxrl.modelcheck import is_local_source
    from detoxrl.policy import adapter_base

    def exists(source: str | None) -> bool:
        return bool(source) and is_local_source(source) and Path(source).expanduser().exists()

    if configured and (configured.startswith("packaged:") or exists(configured)):
        return configured
    named = adapter_base(adapter_dir)
    if exists(named):
        return named
    for source in (configured, named):
        if source and not is_local_source(source):
            return source  # a hub id
    if not configured and not named:
        raise DetoxError(f"adapter '{adapter_dir}' does not name its base model (no base_model_name_or_path); pass it with --policy")
    shown = " or ".join(repr(c) for c in dict.fromkeys(filter(None, (configured, named))))
    raise DetoxError(f"the base model of adapter '{adapter_dir}' ({shown}) does not exist here; "
                     "pass the base model (a folder or hub id) with --policy")
