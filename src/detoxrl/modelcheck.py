"""Is this model folder what its role needs? Checks before and after ``from_pretrained``.

detoxrl loads three kinds of Hugging Face models, each from a hub id or a folder: the policy (a
causal or seq2seq language model), the reward model and the judges (sequence classifiers).
transformers loads whatever it is given into the class it is asked for and fills what the checkpoint
lacks with random weights: a sequence classifier given as the policy becomes a ``...ForCausalLM``
with a random LM head, a T5 given as the reward model a ``T5ForSequenceClassification`` with a
random classification head, and a folder without tokenizer files a tokenizer that turns every word
into ``<unk>``. transformers says so only in warnings, which the command line hides. Here each of
these is a :class:`~detoxrl.errors.ModelLoadError` that names the weights and the fix:

- before any weights load (the preflight): :func:`read_model_config` reads ``config.json`` and runs
  no code; :func:`check_remote_code` refuses a model with Python code of its own (``auto_map``) when
  its ``trust_remote_code`` setting is off; :func:`check_architecture` compares
  ``config.architectures`` with the role; :func:`check_tokenizer_files` looks for a vocabulary;
- after loading: :func:`check_load_report` refuses any weight that ``from_pretrained`` had to
  initialise at random (its ``output_loading_info``), and :func:`check_tokenizer` a tokenizer that
  does not know plain English words.

:func:`check_model_folder` runs the preflight checks of one model for one role.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Collection, Mapping

from detoxrl.config import REMOTE_CODE_SETTINGS
from detoxrl.errors import ModelLoadError

# The transformers auto-class mappings (model type -> class name) that define each kind of model.
_KIND_MAPPINGS = {
    "causal": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "seq2seq": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "classifier": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
}
# kind -> (the kind, said as "a ... model", the head that would be random, the class name pattern)
_KIND_WORDS = {
    "causal": ("causal", "language-model head", "...ForCausalLM"),
    "seq2seq": ("seq2seq", "language-model head", "...ForConditionalGeneration"),
    "classifier": ("sequence-classification", "classification head", "fine-tuned ...ForSequenceClassification"),
}


def _describe(kinds: Collection[str]) -> tuple[str, str, str]:
    """``(what fits, the head that would be random, an example)`` for messages, e.g. for the policy
    ("a causal or seq2seq model", "language-model head", "a ...ForCausalLM or ...ForConditionalGeneration model")."""
    words = [_KIND_WORDS[k] for k in kinds]
    return (
        "a " + " or ".join(w[0] for w in words) + " model",
        words[0][1],
        "a " + " or ".join(w[2] for w in words) + " model",
    )


#: Files that carry a tokenizer's vocabulary (tokenizers' JSON, SentencePiece, BPE/WordPiece vocab,
#: tiktoken). ``tokenizer_config.json`` alone is not one: transformers then builds an empty vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "*.model", "vocab.json", "vocab.txt", "*.tiktoken")

# Plain lower-case English that every real tokenizer of a summarization or toxicity model covers.
_TOKENIZER_PROBE = "the summary of a short conversation between two friends"


@dataclass(frozen=True)
class Role:
    """What a model is used for: the kinds of model that fit, where the user names it, and which
    ``trust_remote_code`` setting (and ``--trust-remote-code`` value) lets its own code run."""

    name: str  # as the messages say it
    flag: str  # where the user names the model
    consent: str  # key of config.REMOTE_CODE_SETTINGS: the --trust-remote-code value
    kinds: tuple[str, ...]  # keys of _KIND_MAPPINGS

    @property
    def setting(self) -> str:
        """The ``section.key`` of this role's ``trust_remote_code``."""
        return REMOTE_CODE_SETTINGS[self.consent]

    def trusts_remote_code(self, cfg: Any) -> bool:
        """This role's ``trust_remote_code`` in a :class:`detoxrl.config.DetoxConfig`."""
        section, key = self.setting.split(".")
        return bool(getattr(getattr(cfg, section), key))


POLICY = Role("policy", "--policy", "policy", ("causal", "seq2seq"))
REWARD = Role("reward model", "--reward-model", "reward", ("classifier",))
JUDGE = Role("judge", "--judge-model", "judge", ("classifier",))
# A classifier named in data.selection_scorer is built like a judge, under the judges' setting.
SELECTION = Role("selection scorer", "data.selection_scorer", "judge", ("classifier",))


def policy_kinds(architecture: str) -> tuple[str, ...]:
    """The kinds of model that ``policy.architecture`` (auto, causal, seq2seq) accepts."""
    return POLICY.kinds if architecture == "auto" else (architecture,)


# --------------------------------------------------------------------------------------------
# Before any weights load


def is_local_source(source: str) -> bool:
    """A path (existing or not) rather than a hub id: it starts with . / ~ or exists."""
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def read_model_config(source: str, role: Role) -> dict[str, Any]:
    """The ``config.json`` of a local folder or hub id as a plain dict, without running any code.

    AutoConfig would import a model's own configuration class when it has one (and refuse without
    trust_remote_code); the raw dict is enough for every check here.
    """
    path = Path(source).expanduser()
    if is_local_source(source):
        cfg_file = path / "config.json"
        if not path.is_dir() or not cfg_file.is_file():
            where = "exists but is not a model folder (no config.json)" if path.exists() else "is not a model folder (no such folder)"
            raise ModelLoadError(
                f"{role.name} '{source}' {where}; pass a folder written by save_pretrained "
                f"(config.json, weights, tokenizer) or a hub id to {role.flag}"
            )
        try:
            config = json.loads(cfg_file.read_text())
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot read {cfg_file} ({e}); re-save the model with save_pretrained") from None
    else:
        try:
            from transformers import PretrainedConfig

            config, _ = PretrainedConfig.get_config_dict(source)
        except Exception as e:  # OSError offline or for an unknown id, ValueError for a malformed file
            first = (str(e).strip().splitlines() or [""])[0]
            raise ModelLoadError(
                f"cannot read the config of {role.name} '{source}' ({type(e).__name__}: {first[:200]}); "
                f"check the hub id and the network, or pass a local model folder to {role.flag}"
            ) from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"the config.json of {role.name} '{source}' is not a JSON object; re-save the model with save_pretrained")
    if not config.get("model_type"):
        # transformers picks the architecture by model_type: without it AutoConfig fails only when the model loads.
        raise ModelLoadError(
            f"{role.name} '{source}' has a config.json without model_type, so transformers cannot tell its architecture; "
            'add it (e.g. "model_type": "t5" or "llama") or re-save the model with save_pretrained'
        )
    return config


@lru_cache(maxsize=1)
def _known_model_types() -> frozenset[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return frozenset(CONFIG_MAPPING_NAMES)


@lru_cache(maxsize=None)
def _classes(mapping: str | None = None) -> frozenset[str]:
    """Class names of one transformers auto mapping, or of all of them (``None``)."""
    from transformers.models.auto import modeling_auto

    names = [mapping] if mapping else [n for n in dir(modeling_auto) if n.startswith("MODEL") and n.endswith("_MAPPING_NAMES")]
    out: set[str] = set()
    for name in names:
        for value in getattr(modeling_auto, name).values():
            out.update([value] if isinstance(value, str) else value)
    return frozenset(out)


def needs_remote_code(config: Mapping[str, Any]) -> bool:
    """True when loading the model means importing Python code shipped with it: ``auto_map`` names
    its classes and transformers has none of its own for the model type."""
    return bool(config.get("auto_map")) and config.get("model_type") not in _known_model_types()


def check_remote_code(config: Mapping[str, Any], source: str, role: Role, trusted: bool) -> None:
    """A model that needs its own code loads only when its role's trust_remote_code is on."""
    if needs_remote_code(config) and not trusted:
        raise ModelLoadError(
            f"{role.name} '{source}' runs Python code of its own (auto_map in config.json) and {role.setting} is false; "
            f"if you trust that code, add --trust-remote-code {role.consent} to the command, else pass another model to {role.flag}"
        )


def check_architecture(config: Mapping[str, Any], source: str, role: Role, kinds: Collection[str] | None = None) -> None:
    """``config.architectures`` must name a class of one of ``kinds`` (default: the role's).

    A class that transformers knows as another kind of model is an error (a classifier as the
    policy, a T5 language model as the reward model): loaded for this role, its head would be
    random. A config without ``architectures``, or with a class of the model's own code, is left to
    :func:`check_load_report`.
    """
    kinds = tuple(kinds or role.kinds)
    archs = config.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    fits = set().union(*(_classes(_KIND_MAPPINGS[k]) for k in kinds))
    known = [a for a in archs if isinstance(a, str) and a in _classes()]
    if not known or any(a in fits for a in known):
        return
    what, head, example = _describe(kinds)
    raise ModelLoadError(
        f"{role.name} '{source}' is a {known[0]} (config.json architectures), not {what}: loaded as one, its {head} "
        f"would be initialised at random; pass {example} to {role.flag}"
    )


def check_tokenizer_files(folder: Path, source: str, role: Role) -> None:
    """A local model folder must hold a tokenizer vocabulary (see :data:`TOKENIZER_FILES`)."""
    if any(any(folder.glob(pattern)) for pattern in TOKENIZER_FILES):
        return
    try:  # a tokenizer of the model's own code may keep its vocabulary elsewhere: check it once loaded
        if json.loads((folder / "tokenizer_config.json").read_text()).get("auto_map"):
            return
    except (OSError, ValueError, AttributeError):
        pass
    raise ModelLoadError(
        f"{role.name} '{source}' has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}): without a vocabulary "
        f"every word would become <unk>; save the model's tokenizer into the folder (tokenizer.save_pretrained) "
        f"or pass the folder it came from to {role.flag}"
    )


def check_model_folder(source: str, role: Role, *, trusted: bool, kinds: Collection[str] | None = None) -> dict[str, Any]:
    """Every check of one Hugging Face model (folder or hub id) that needs no weights; returns its config dict.

    Order: the folder and its config.json, its own code (before anything could run it), the
    architecture, then the tokenizer files of a local folder (a hub repository is not listed here;
    :func:`check_tokenizer` catches a bad tokenizer once it loads, still before the weights).
    """
    config = read_model_config(source, role)
    check_remote_code(config, source, role, trusted)
    check_architecture(config, source, role, kinds)
    path = Path(source).expanduser()
    if path.is_dir():
        check_tokenizer_files(path, source, role)
    return config


# --------------------------------------------------------------------------------------------
# Once loaded


def check_load_report(info: Mapping[str, Any], source: str, role: Role, loaded_as: str) -> None:
    """No weight of the model may be one that ``from_pretrained`` initialised at random.

    ``info`` is the report of ``from_pretrained(..., output_loading_info=True)``: ``missing_keys``
    were initialised at random, ``mismatched_keys`` too (with ``ignore_mismatched_sizes``).
    Unexpected keys (weights of the checkpoint the class has no use for) are harmless alone.
    This replaces transformers' LOAD REPORT warning, which the command line does not show.
    """
    missing = sorted(str(k) for k in info.get("missing_keys") or ())
    mismatched = sorted(str(k[0] if isinstance(k, (tuple, list)) else k) for k in info.get("mismatched_keys") or ())
    random = missing + mismatched
    if not random:
        return
    shown = ", ".join(random[:4]) + (f" and {len(random) - 4} more" if len(random) > 4 else "")
    _, head, example = _describe(role.kinds)
    raise ModelLoadError(
        f"{role.name} '{source}' loaded as {loaded_as} has {len(random)} weights initialised at random ({shown}): "
        f"the checkpoint holds no trained {head} (or other weights) for this class; pass {example} with all its weights to {role.flag}"
    )


def check_tokenizer(tokenizer: Any, source: str, role: Role) -> None:
    """The tokenizer must know plain English words: one built without a vocabulary turns them into unk."""
    try:
        ids = list(tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"])
    except Exception as e:  # a tokenizer that cannot even encode text
        raise ModelLoadError(
            f"the tokenizer of {role.name} '{source}' cannot encode text ({type(e).__name__}: {str(e)[:150]}); "
            f"save the model's own tokenizer into the folder (tokenizer.save_pretrained)"
        ) from None
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unk is not None and unk in ids):
        raise ModelLoadError(
            f"the tokenizer of {role.name} '{source}' turns plain English words into {getattr(tokenizer, 'unk_token', None) or 'nothing'}: "
            f"it has no usable vocabulary; save the model's own tokenizer into the folder (tokenizer.save_pretrained) "
            f"or pass the folder it came from to {role.flag}"
        )
