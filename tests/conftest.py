"""Shared fixtures: tiny random models of the real architectures, built once per test session.

The tiny T5 (FLAN-T5's class), Llama (SmolLM2's class) and RoBERTa classifier (Meta's hate-speech
model's class) are trained-tokenizer, random-weight models saved to temporary folders and loaded
through the same ``from_pretrained(folder)`` code as real ones. Their tokenizers are trained on the
first few hundred DialogSum dialogues when the local copy exists (else on a small fallback corpus).

``make_config(...)`` builds a :class:`detoxrl.config.DetoxConfig` for a tiny, fast run (float32:
bf16 is emulated, 10-100x slower, on CPUs without native bf16).
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep rather than spin (set before torch loads): tests share the machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import csv
from pathlib import Path

import pytest
import torch

from detoxrl.config import DetoxConfig, load_config
from detoxrl.tiny import make_tiny_llama, make_tiny_roberta, make_tiny_t5

DIALOGSUM = Path(__file__).resolve().parents[2] / "shared/data/dialogsum"

FALLBACK_DIALOGUES = [
    "#Person1#: Hello, how are you today? #Person2#: I am fine, thank you. And you? #Person1#: Not bad at all.",
    "#Person1#: Did you see the movie last night? #Person2#: Yes, I did not like it at all. #Person1#: Why not?",
    "#Person1#: I will call the doctor tomorrow morning. #Person2#: Good idea, take care of yourself.",
    "#Person1#: The meeting starts at nine. #Person2#: I will be there on time. #Person1#: Great, see you.",
]

# A wider init than the default 0.02: the tiny classifier's logits then differ from text to text.
WIDE_ROBERTA = {"initializer_range": 0.3}


def read_dialogues(n: int = 300) -> list[str]:
    """The first ``n`` DialogSum train dialogues (the fallback corpus when the copy is absent)."""
    path = DIALOGSUM / "train.csv"
    if not path.is_file():
        return list(FALLBACK_DIALOGUES)
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.append(row["dialogue"])
            if len(out) >= n:
                break
    return out


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    texts = read_dialogues(300)
    # The template's words too, so the tokenizer has tokens for them.
    return texts + ["Summarize the following conversation. Summary:"] * 5


@pytest.fixture(scope="session")
def dialogsum_dir() -> Path:
    if not (DIALOGSUM / "train.csv").is_file():
        pytest.skip(f"DialogSum copy not found at {DIALOGSUM}")
    return DIALOGSUM


# With the default init a tiny random T5 or Llama writes the same token whatever the prompt, so a
# test comparing batched with one-at-a-time generation could not see a padding bug. A wider init
# makes the output depend on the prompt. T5's embedding matrix (tied to its output layer) is then
# scaled down: logits with a std of about 4 instead of 14, a sampling distribution that is neither
# flat nor one-hot (PPO can learn on it), and float32 rounding far below the 1e-4 that the
# log-prob alignment tests allow. A much wider T5 (initializer_factor >= 1.6) is so sensitive
# that one Adam step at lr 1e-3 moves its KL by several nats.
T5_INIT = {"initializer_factor": 1.3}
T5_EMBEDDING_SCALE = 0.3
LLAMA_INIT = {"initializer_range": 0.3}


def build_tiny_t5(folder: Path, texts: list[str]) -> Path:
    from transformers import T5ForConditionalGeneration

    make_tiny_t5(folder, texts, seed=0, config_overrides=T5_INIT)
    model = T5ForConditionalGeneration.from_pretrained(folder)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(T5_EMBEDDING_SCALE)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory, corpus) -> Path:
    """A FLAN-T5-class seq2seq model (pad 0 = decoder start, EOS 1), prompt-dependent outputs."""
    return build_tiny_t5(tmp_path_factory.mktemp("tiny_t5"), corpus)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, corpus) -> Path:
    """A SmolLM2-class causal model (pad distinct from EOS), prompt-dependent outputs."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), corpus, seed=0, config_overrides=LLAMA_INIT)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, tiny_llama) -> Path:
    """A GPT-2 causal model: absolute position embeddings, where Llama's rotary ones are blind to a
    constant position offset, so it shows whether left-padded prompts get the right positions."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny_gpt2")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    config = GPT2Config(
        vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=2048, initializer_range=0.3,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory, corpus) -> Path:
    """Labels (nothate, hate) as Meta's model; text-dependent logits."""
    return make_tiny_roberta(
        tmp_path_factory.mktemp("tiny_roberta"), corpus, labels=("nothate", "hate"), seed=0, config_overrides=WIDE_ROBERTA
    )


@pytest.fixture(scope="session")
def tiny_roberta_hate_first(tmp_path_factory, corpus) -> Path:
    """The same weights as ``tiny_roberta`` with the label order reversed (hate, nothate): ``hate``
    now wins on most texts, and ``nothate`` is not the first column."""
    return make_tiny_roberta(
        tmp_path_factory.mktemp("tiny_roberta_hate_first"), corpus, labels=("hate", "nothate"), seed=0, config_overrides=WIDE_ROBERTA
    )


# --------------------------------------------------------------------------------------------
# Model folders that are the wrong thing for their role (detoxrl.modelcheck refuses them)

#: Everything a tokenizer leaves in a folder (save_pretrained): removed, the folder has no vocabulary.
TOKENIZER_GLOBS = ("tokenizer*", "*.model", "vocab.*", "merges.txt", "special_tokens_map.json", "chat_template*")


def copy_model(src: str | Path, dest: str | Path, *, drop: tuple[str, ...] = (), config: dict | None = None) -> Path:
    """A copy of model folder ``src`` without the files matching the globs ``drop``, with ``config``
    merged into its config.json (a value of None removes that key)."""
    import json
    import shutil

    dest = Path(dest)
    shutil.copytree(src, dest)
    for pattern in drop:
        for path in dest.glob(pattern):
            path.unlink()
    if config:
        cfg_file = dest / "config.json"
        data = json.loads(cfg_file.read_text())
        for key, value in config.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        cfg_file.write_text(json.dumps(data, indent=2))
    return dest


# The Python module a remote-code folder ships: importing it leaves a marker file, so a test can
# tell whether anything ran code from the model folder.
REMOTE_CODE_MODULE = """import pathlib
pathlib.Path({marker!r}).write_text("code from the model folder ran")
"""


def make_remote_code_model(src: str | Path, dest: str | Path, marker: str | Path, auto_class: str) -> Path:
    """A copy of ``src`` whose config.json says it needs its own code (``auto_map`` and a model
    type transformers does not know), the code being ``custom.py``, which writes ``marker`` on import."""
    dest = copy_model(src, dest, config={
        "model_type": "detoxrl-test-custom",
        "auto_map": {"AutoConfig": "custom.CustomConfig", auto_class: "custom.CustomModel"},
    })
    (dest / "custom.py").write_text(REMOTE_CODE_MODULE.format(marker=str(marker)))
    return dest


@pytest.fixture
def no_weights_loaded(monkeypatch):
    """Fail the test if any model weights load: ``from_pretrained`` of any model class, or a
    safetensors file opened by transformers (configs and tokenizers may load)."""
    import transformers
    import transformers.modeling_utils

    def boom(*args, **kwargs):
        raise AssertionError("model weights were loaded before the problem was reported")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(boom))
    monkeypatch.setattr(transformers.modeling_utils, "safe_open", boom)


def make_config(
    policy_dir: str | Path,
    reward_dir: str | Path,
    data_dir: str | Path,
    output_dir: str | Path,
    *extra: str,
    steps: int = 3,
    batch_size: int = 8,
    mini_batch_size: int = 4,
    max_new_tokens: int = 12,
    max_rows: int = 64,
) -> DetoxConfig:
    """A validated config for a tiny, fast run (``extra`` are more ``section.key=value`` overrides)."""
    overrides = [
        f"policy.model={policy_dir}",
        "policy.dtype=float32",
        "policy.lora_r=4",
        "policy.lora_alpha=8",
        f"reward.model={reward_dir}",
        "reward.label=nothate",
        f"data.source={data_dir}",
        f"data.max_rows={max_rows}",
        "data.max_chars=500",
        "data.max_prompt_tokens=4096",
        f"ppo.steps={steps}",
        f"ppo.batch_size={batch_size}",
        f"ppo.mini_batch_size={mini_batch_size}",
        f"generation.max_new_tokens={max_new_tokens}",
        f"run.output_dir={output_dir}",
        "run.progress=false",
        "run.num_threads=1",  # tiny models: one thread is as fast, and the machine is shared
        *extra,
    ]
    return load_config("seed", overrides=overrides)


@pytest.fixture(scope="session")
def config_factory(tiny_t5, tiny_roberta, dialogsum_dir):
    """``config_factory(*overrides, output_dir=..., policy=tiny_t5, reward=tiny_roberta, **kw)``: a tiny run's config."""

    def build(*extra: str, output_dir: str | Path, policy: str | Path | None = None, reward: str | Path | None = None, **kw) -> DetoxConfig:
        return make_config(policy or tiny_t5, reward or tiny_roberta, dialogsum_dir, output_dir, *extra, **kw)

    return build


@pytest.fixture
def tiny_config(config_factory, tmp_path):
    """``tiny_config(*overrides, policy=..., reward=..., output_dir=..., **kw)``: a tiny seq2seq run writing under
    ``tmp_path/run`` unless told otherwise."""

    def build(*extra: str, output_dir: str | Path | None = None, **kw) -> DetoxConfig:
        return config_factory(*extra, output_dir=output_dir or tmp_path / "run", **kw)

    return build


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (tiny models gain nothing from more; the machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def module_one_thread():
    """``one_thread`` for a whole module, for module fixtures that build or train models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


T5_WIDE = {"initializer_factor": 3.0}  # varied text from a random tiny T5
ROBERTA_WIDE = {"initializer_range": 0.3}  # scores that vary with the text


@pytest.fixture(scope="session")
def wide_tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny T5 policy, reward (nothate/hate) and judge (toxic/nontoxic) whose outputs vary with
    the input, with tokenizers trained on 300 DialogSum dialogues and summaries."""
    import pandas as pd

    df = pd.read_csv(DIALOGSUM / "train.csv", nrows=300)
    texts = df["dialogue"].tolist() + df["summary"].tolist()
    root = tmp_path_factory.mktemp("wide_tiny")
    return {
        "t5": make_tiny_t5(root / "t5", texts, seed=0, config_overrides=T5_WIDE),
        "reward": make_tiny_roberta(root / "reward", texts, labels=("nothate", "hate"), seed=0, config_overrides=ROBERTA_WIDE),
        "judge": make_tiny_roberta(root / "judge", texts, labels=("toxic", "nontoxic"), seed=1, config_overrides=ROBERTA_WIDE),
    }


def assert_close_for_dtype(actual, expected, *, ulps: float = 64.0) -> None:
    """``actual == expected`` up to the rounding of their dtype, scaled by the size of the values.

    Two passes over the same rows in different batch shapes (padding, trimmed chunks) take different
    matmul blockings, and AVX2 and AVX-512 kernels sum in different orders: their results differ by
    a few units in the last place of the *largest* values involved. The tolerance is therefore
    ``ulps * eps(dtype) * max(1, max |expected|)``: it follows the dtype and the magnitude of the
    values, never the CPU that runs the test.
    """
    import torch

    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    dtype = actual.dtype if actual.is_floating_point() else torch.float32
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    atol = ulps * torch.finfo(dtype).eps * scale
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)
