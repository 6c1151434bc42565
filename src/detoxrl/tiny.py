"""Tiny randomly initialised models of the real architectures (T5, RoBERTa, Llama).

They exercise exactly the code paths of FLAN-T5, Meta's RoBERTa classifier and SmolLM2 (same
classes, same ``from_pretrained(folder)`` loading) in seconds, with no network. Tests, benchmarks
and ``detoxrl make-tiny`` use them; the tokenizer is a byte-level BPE trained on the given text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

_FALLBACK_CORPUS = [
    "#Person1#: Hello, how are you today? #Person2#: I am fine, thank you. And you?",
    "#Person1#: Did you see the movie last night? #Person2#: Yes, I did not like it at all.",
    "#Person1#: I will call the doctor tomorrow morning. #Person2#: Good idea, take care.",
    "#Person1#: The meeting starts at nine. #Person2#: I will be there on time.",
    "Summarize the following conversation. Summary: Person1 and Person2 talk about a movie.",
]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000, kind: str = "t5"):
    """A byte-level BPE tokenizer with the special tokens that ``kind`` (t5, roberta, llama) expects."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = {
        "t5": ["<pad>", "</s>", "<unk>"],
        "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        "llama": ["<unk>", "<s>", "</s>", "<pad>"],
    }[kind]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts) or _FALLBACK_CORPUS, trainer=trainer)
    if kind == "t5":
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    if kind == "roberta":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            mask_token="<mask>",
            cls_token="<s>",
            sep_token="</s>",
        )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def make_tiny_t5(folder: str | Path, texts: Iterable[str] = (), seed: int = 0, config_overrides: dict | None = None) -> Path:
    """A T5 (FLAN-T5's class and gated-GELU layout) with a few small layers."""
    from transformers import T5Config, T5ForConditionalGeneration

    folder = Path(folder)
    tokenizer = train_tokenizer(texts, kind="t5")
    kwargs = dict(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    kwargs.update(config_overrides or {})
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**kwargs))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_roberta(
    folder: str | Path,
    texts: Iterable[str] = (),
    labels: tuple[str, ...] = ("nothate", "hate"),
    seed: int = 0,
    config_overrides: dict | None = None,
) -> Path:
    """A RoBERTa sequence classifier with the given labels (Meta's hate-speech model has nothate, hate)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    folder = Path(folder)
    tokenizer = train_tokenizer(texts, kind="roberta")
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=520,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    kwargs.update(config_overrides or {})
    torch.manual_seed(seed)
    model = RobertaForSequenceClassification(RobertaConfig(**kwargs))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_llama(folder: str | Path, texts: Iterable[str] = (), seed: int = 0, config_overrides: dict | None = None) -> Path:
    """A Llama causal LM (SmolLM2's architecture) with a few small layers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = train_tokenizer(texts, kind="llama")
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    kwargs.update(config_overrides or {})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**kwargs))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny(arch: str, folder: str | Path, data: str | None = None, *, seed: int = 0) -> Path:
    """``detoxrl make-tiny``: a tiny random ``arch`` (t5, roberta, llama) in ``folder``, its tokenizer trained
    on the first 2,000 dialogues of ``data`` (any ``--data`` source) when given."""
    texts: list[str] = []
    if data:
        from detoxrl.config import DataConfig
        from detoxrl.prompts import load_dialogue_rows

        texts = [r["dialogue"] for r in load_dialogue_rows(DataConfig(source=data))[:2000]]
    builder = {"t5": make_tiny_t5, "roberta": make_tiny_roberta, "llama": make_tiny_llama}[arch]
    return builder(folder, texts, seed=seed)
