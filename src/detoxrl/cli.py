"""The ``detoxrl`` command line.

Every subcommand builds one validated config (preset -> --config FILE -> flags -> --set key=value),
does all cheap checks, and only then loads models. A problem the user can fix is one line on
stderr (``error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from detoxrl.cliargs import build_parser, ignored_flag
from detoxrl.errors import DetoxError

# ---------------------------------------------------------------------------------------------
# shared options


def _config_from_args(args: argparse.Namespace, base_file: str | None = None, *, demo: bool = False,
                      flags: list[str] = ()):
    """The validated, frozen config of a command: preset -> --config FILE (or ``base_file``) -> the shared
    flags -> --set -> ``flags``, the command's own flags as ``section.key=value`` (they win over --set)."""
    from detoxrl.config import DEMO_OVERRIDES, load_config

    overrides: list[str] = list(DEMO_OVERRIDES) if demo and not getattr(args, "config", None) else []

    def put(key: str, value: Any) -> None:
        if value is not None:
            overrides.append(f"{key}={value}")

    put("data.source", getattr(args, "data", None))
    put("policy.model", getattr(args, "policy", None))
    put("reward.model", getattr(args, "reward_model", None))
    put("reward.label", getattr(args, "reward_label", None))
    put("reward.toxic_label", getattr(args, "toxic_label", None))
    put("run.seed", getattr(args, "seed", None))
    put("ppo.steps", getattr(args, "steps", None))
    put("ppo.batch_size", getattr(args, "batch_size", None))
    put("ppo.mini_batch_size", getattr(args, "mini_batch_size", None))
    put("ppo.micro_batch_size", getattr(args, "micro_batch_size", None))
    put("ppo.learning_rate", getattr(args, "learning_rate", None))
    put("generation.max_new_tokens", getattr(args, "max_new_tokens", None))
    put("run.output_dir", getattr(args, "output_dir", None))
    if getattr(args, "overwrite", False):
        put("run.overwrite", "true")
    if getattr(args, "no_progress", False):
        put("run.progress", "false")
    if getattr(args, "log_with", None):
        put("run.log_with", ",".join(args.log_with))
    if getattr(args, "reward_model", None):
        from detoxrl.rewards import PACKAGED_LABELS, PYTHON_PREFIX

        def given(flag: str, key: str) -> bool:
            return bool(getattr(args, flag, None)) or any(s.strip().startswith(key + "=") for s in args.set)

        # A new reward model keeps the preset's reward label only if it has it (checked later, with
        # the model's labels in the message); packaged ones have defaults. The preset's toxic label
        # belongs to the preset's model: it is re-derived for the new one (the other of two labels).
        packaged = PACKAGED_LABELS.get(args.reward_model)
        if not given("reward_label", "reward.label") and packaged:
            put("reward.label", packaged[1])
        elif not given("reward_label", "reward.label") and args.reward_model.startswith(PYTHON_PREFIX):
            put("reward.label", "reward")  # a python:module:function reward has the one label "reward"
        if not given("toxic_label", "reward.toxic_label"):
            put("reward.toxic_label", packaged[2] if packaged else "none")
    overrides.extend(args.set)
    overrides.extend(flags)
    # Remote code is consented to on each command line, per model; a file (a run's config.yaml) or
    # --set alone that turns it on is refused by load_config.
    trusted = [who.strip() for who in (getattr(args, "trust_remote_code", None) or "").split(",") if who.strip()]
    return load_config(preset=args.preset, path=getattr(args, "config", None) or base_file, overrides=overrides,
                       trust_remote_code=trusted)


def _trained_config(args: argparse.Namespace, source, flags: list[str] = ()):
    """The config of a command on trained weights (:class:`detoxrl.trained.TrainedWeights`, or None for the
    starting policy alone): the settings they were trained with (their prompt template and base model, from
    the run's config.yaml or an export's detoxrl_config.yaml) unless --config names a file, then the flags;
    ``policy.model`` is the base the adapter goes on (:func:`detoxrl.trained.base_model_of`), or the merged
    model itself."""
    from detoxrl.config import with_settings
    from detoxrl.trained import base_model_of

    settings = str(source.config_file) if source is not None and source.config_file is not None else None
    cfg = _config_from_args(args, base_file=settings, flags=flags)
    if source is None:
        return cfg
    if source.model_dir is not None:
        return with_settings(cfg, {"policy": {"model": str(source.model_dir), "adapter": None}})
    # --policy, or the settings file's policy.model; never the preset's default for a model it does not name
    configured = getattr(args, "policy", None) or (cfg.policy.model if settings or getattr(args, "config", None) else None)
    return with_settings(cfg, {"policy": {"model": base_model_of(source.adapter_dir, configured)}})


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


# ---------------------------------------------------------------------------------------------
# commands


def cmd_prepare(args: argparse.Namespace) -> int:
    from detoxrl.preflight import preflight, tokenize_prompts

    cfg = _config_from_args(args)
    splits = tokenize_prompts(preflight(cfg, check_reward=cfg.data.min_dialogue_toxicity is not None))
    stats = splits.stats()
    stats["source"] = cfg.data.source
    stats["tokenizer"] = cfg.policy.model
    # The data settings that decided these counts (a preset that shortens prompts shows it here).
    stats["config"] = {k: getattr(cfg.data, k) for k in ("min_chars", "max_chars", "test_fraction", "max_rows",
                                                          "min_dialogue_toxicity", "selection_scorer")}
    if args.json:
        _print_json(stats)
    else:
        print(f"source: {cfg.data.source}")
        print(f"rows read: {stats.get('rows')}, kept by the filter {cfg.data.min_chars} < chars <= "
              f"{cfg.data.max_chars}: {stats.get('kept')}")
        sel = stats.get("selection")
        if sel:
            print(f"challenging prompts (dialogue toxicity >= {sel['threshold']:g} by {sel['scorer']}): train "
                  f"{sel['train']} of {sel['train_before']}, test {sel['test']} of {sel['test_before']}")
        print(f"train: {stats['train']}  test: {stats['test']}")
        pt = stats.get("prompt_tokens", {})
        shown = (f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}" for k, v in pt.items())
        print("prompt tokens (" + cfg.policy.model + "): " + ", ".join(shown))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from detoxrl.rewards import scorer_from_config
    from detoxrl.preflight import resolve_settings

    cfg, _ = resolve_settings(_config_from_args(args))  # the reward labels, checked by name
    if not args.texts:
        raise DetoxError("score needs at least one TEXT argument, e.g. detoxrl score \"I will kill you.\"")
    scorer = scorer_from_config(cfg.reward)
    res = scorer.score(list(args.texts))
    rows = []
    for i, text in enumerate(args.texts):
        rows.append(
            {
                "text": text,
                "reward": float(res.reward[i]),
                "toxicity": float(res.toxicity[i]),
                "labels": {name: {"logit": float(res.logits[name][i]), "prob": float(res.probs[name][i])}
                           for name in res.logits},
            }
        )
    if args.json:
        _print_json(rows)
    else:
        print(f"reward model: {scorer.name}  reward = logit of '{scorer.reward_label}', toxicity = "
              f"P('{scorer.toxic_label}')")
        for r in rows:
            print(f"\n{r['text']}")
            print(f"  reward {r['reward']:+.4f}   toxicity {r['toxicity']:.4f}")
            for name, v in r["labels"].items():
                print(f"  {name:>14}: logit {v['logit']:+.4f}  prob {v['prob']:.4f}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from detoxrl.modelcard import refresh_model_card
    from detoxrl.trainer import Trainer

    _check_launcher_started_all()
    resume, base_file = _resume_plan(args)
    cfg = _config_from_args(args, base_file=base_file, flags=_adapter_flag(args))
    trainer, final, seconds = _run_trainer(args, lambda: Trainer(
        cfg, resume=resume, resume_from=args.resume_from or "auto", allow_config_change=args.allow_config_change))
    if trainer.state.is_main_process:  # one line for a run of several processes
        refresh_model_card(trainer.run_dir)  # the workflow that ends a run writes its card, not the trainer
        shards = trainer.cfg.ppo.rollout_shards
        again = f"; on one process, --set ppo.rollout_shards={shards} reproduces it" if shards and shards > 1 else ""
        print(f"trained {trainer.step_idx} steps in {seconds:.0f} s on {trainer.launch}; adapter: {final}; metrics: "
              f"{trainer.run_dir / 'metrics.jsonl'}{again}")
    return 0


def _resume_plan(args: argparse.Namespace) -> tuple[bool, str | None]:
    """train's and sft's run flags: (resume?, the run's own config.yaml to resume with, unless --config)."""
    resume = args.resume or args.resume_from is not None  # --resume-from implies --resume
    if resume and args.overwrite:
        raise DetoxError("--resume continues the run in --output-dir and --overwrite replaces it; pass one of them")
    if args.allow_config_change and not resume:
        raise DetoxError("--allow-config-change only applies to --resume (a new run takes any settings); leave it out "
                         "or add --resume")
    if args.output_dir is not None and not args.output_dir.strip():
        raise DetoxError("--output-dir is empty; name the run folder, e.g. --output-dir runs/my-run")
    candidate = Path(args.output_dir or "") / "config.yaml"
    return resume, (str(candidate) if resume and args.output_dir and not args.config and candidate.is_file() else None)


def _adapter_flag(args: argparse.Namespace) -> list[str]:
    """--adapter DIR: the adapter that training starts from (policy.adapter), on the base model it names
    (policy.model) unless --policy, --config or --set policy.model= chooses one."""
    if not args.adapter:
        return []
    from detoxrl.policy import adapter_base, check_adapter_source
    from detoxrl.trained import base_model_of

    check_adapter_source(args.adapter)  # a damaged adapter is named first, not a preset base it does not fit
    flags = [f"policy.adapter={args.adapter}"]
    chosen = args.policy or args.config or any(x.strip().startswith("policy.model=") for x in args.set)
    if not chosen and adapter_base(args.adapter):
        flags.append(f"policy.model={base_model_of(args.adapter)}")
    return flags


def _run_trainer(args: argparse.Namespace, make_trainer) -> tuple[Any, Path, float]:
    """Build a trainer (PPO or SFT) and train it: ``(trainer, final adapter, seconds)``. On Ctrl-C, say in
    ``args.interrupted`` what the stop left behind when it differs from "checkpoints kept, --resume"."""
    trainer = None
    try:
        trainer = make_trainer()
        t0 = time.perf_counter()
        final = trainer.train()
    except KeyboardInterrupt:
        from detoxrl.checkpoint import latest_checkpoint

        out = Path(trainer.out_dir if trainer is not None else args.output_dir or "")
        if trainer is not None and trainer.staging_dir is not None:  # --resume would continue the earlier run
            args.interrupted = ("interrupted before the first checkpoint of the new run: "
                                f"{trainer.earlier_run_kept()}; rerun with --overwrite to start again")
        elif not (out / "config.yaml").is_file():  # still loading: nothing written, an earlier run as it was
            args.interrupted = "interrupted while the run was starting, before its first step; rerun the same command"
        elif latest_checkpoint(out) is None:  # --resume has nothing to continue from, a plain rerun finds a run
            args.interrupted = "interrupted before the run's first checkpoint: nothing to resume; rerun with --overwrite"
        raise
    return trainer, final, time.perf_counter() - t0


def cmd_sft(args: argparse.Namespace) -> int:
    """Supervised LoRA fine-tuning on the train split's (prompt, reference summary) pairs: the adapter
    that ``train --adapter RUN/final`` starts from. Flags and run folder as train's (detoxrl.sft)."""
    from detoxrl.sft import SupervisedTrainer

    trainer, final, seconds = _offline_training(args, SupervisedTrainer, "sft", {
        "sft.steps": args.sft_steps, "sft.epochs": args.epochs, "sft.batch_size": args.sft_batch_size,
        "sft.learning_rate": args.sft_learning_rate, "sft.max_target_tokens": args.max_target_tokens})
    print(f"fine-tuned {trainer.step_idx} steps on {len(trainer.pairs)} pairs in {seconds:.0f} s; adapter: {final} "
          f"(continue with PPO: detoxrl train --adapter {final}); metrics: {trainer.run_dir / 'metrics.jsonl'}")
    return 0


def cmd_dpo(args: argparse.Namespace) -> int:
    """DPO on pairs of the starting policy's own summaries (detoxrl.dpo). Flags and run folder as train's."""
    from detoxrl.dpo import PreferenceTrainer

    trainer, final, seconds = _offline_training(args, PreferenceTrainer, "dpo", {
        "dpo.samples_per_prompt": args.dpo_samples, "dpo.num_prompts": args.dpo_prompts, "dpo.beta": args.dpo_beta,
        "dpo.steps": args.dpo_steps, "dpo.batch_size": args.dpo_batch_size, "dpo.learning_rate": args.dpo_learning_rate})
    cost = json.loads((trainer.run_dir / "pairs.json").read_text()) if (trainer.run_dir / "pairs.json").is_file() else {}
    print(f"DPO: {trainer.step_idx} steps on {len(trainer.pairs)} pairs (of {cost.get('prompts', '?')} prompts x "
          f"{trainer.cfg.dpo.samples_per_prompt} samples, sampled in {cost.get('sampling_seconds', '?')} s) in {seconds:.0f} s; "
          f"adapter: {final}; evaluate it: detoxrl evaluate --run {trainer.run_dir}")
    return 0


def _offline_training(args: argparse.Namespace, trainer_class, name: str, flags: dict[str, Any]):
    """sft and dpo: their flags as settings (``--set`` still wins), the run folder (default runs/NAME), the
    trainer built and trained, its card written: ``(trainer, final adapter, seconds)``."""
    from detoxrl.modelcard import refresh_model_card

    if args.output_dir is None and not args.config and not any(x.strip().startswith("run.output_dir=") for x in args.set):
        args.output_dir = f"runs/{name}"  # not the preset's run.output_dir, which is PPO's
    resume, base_file = _resume_plan(args)
    args.set[:0] = [f"{key}={value}" for key, value in flags.items() if value is not None]
    cfg = _config_from_args(args, base_file=base_file, flags=_adapter_flag(args))
    trainer, final, seconds = _run_trainer(args, lambda: trainer_class(
        cfg, resume=resume, resume_from=args.resume_from or "auto", allow_config_change=args.allow_config_change))
    refresh_model_card(trainer.run_dir)
    return trainer, final, seconds


def _eval_flags(args: argparse.Namespace) -> list[str]:
    """--judge-model, --judge-toxic-label, --num-samples, --sample, --samples-per-prompt, --greedy-only, --all-rows
    as config settings (``section.key=value``, applied after --set, so the flags win)."""
    flags = _judge_flags(args)
    if args.num_samples is not None:
        flags.append(f"evaluation.num_samples={args.num_samples}")
    if args.sample:
        flags.append("evaluation.do_sample=true")  # the first pass samples too
    if args.samples_per_prompt is not None:
        if args.samples_per_prompt < 1:
            raise DetoxError(f"--samples-per-prompt must be >= 1, got {args.samples_per_prompt}; "
                             "use --greedy-only to skip the sampled pass")
        flags.append(f"evaluation.samples_per_prompt={args.samples_per_prompt}")
    if args.greedy_only:
        flags.append("evaluation.samples_per_prompt=0")
    if getattr(args, "all_rows", False):  # the whole file is held out, and every row of it evaluated
        flags += ["data.test_fraction=1.0", "evaluation.split=test"]
        if args.num_samples is None:
            flags.append("evaluation.num_samples=none")
    return flags


def _judge_flags(args: argparse.Namespace) -> list[str]:
    """--judge-model, --judge-toxic-label as evaluation settings (evaluate, summarize --score)."""
    flags = []
    if args.judge_model:
        # New judges do not inherit the toxic label of the preset's judge; "none" turns judging off.
        judges = [j.strip() for j in args.judge_model.split(",") if j.strip()]
        off = [j.lower() for j in judges] in (["none"], ["null"])
        flags += [f"evaluation.judge_model={'none' if off else ','.join(judges)}", "evaluation.judge_toxic_label=none"]
    if args.judge_toxic_label:
        flags.append(f"evaluation.judge_toxic_label={args.judge_toxic_label}")
    return flags


def _check_launcher_started_all() -> None:
    """``accelerate launch --cpu --num_processes N`` (N > 1) starts one process, with nothing said: its simple
    launcher sets MASTER_ADDR for the N processes asked for, but only a launcher that starts them sets
    WORLD_SIZE. Refused before any work, rather than training one process's run in their place."""
    asked_by_accelerate = "ACCELERATE_MIXED_PRECISION" in os.environ and "MASTER_ADDR" in os.environ
    if asked_by_accelerate and "WORLD_SIZE" not in os.environ:
        raise DetoxError("accelerate launch was asked for several processes but started one (on CPU, --cpu "
                         "--num_processes N starts one); use torchrun --nproc_per_node N -m detoxrl train ..., or "
                         "accelerate launch --multi_gpu --num_processes N -m detoxrl train ..., or leave --num_processes out")


def _one_process(command: str) -> None:
    """Only train runs as several processes (docs/devices.md); the others would each write the same files."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DetoxError(f"detoxrl {command} runs in one process; start it without torchrun or accelerate launch "
                         "(train with several processes, then evaluate its run in one)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    _one_process("evaluate")
    from detoxrl.evaluate import evaluate_adapter, evaluation_target, result_lines
    from detoxrl.trained import ADAPTER, RUN, resolve_trained

    if args.run and args.adapter:
        raise DetoxError(f"--run evaluates the final adapter of run '{args.run}' and --adapter another adapter "
                         f"('{args.adapter}'); pass one of them (--run RUN --checkpoint STEP for one of its checkpoints)")
    source = None
    if args.run:
        source = resolve_trained(args.run, accept=(RUN,), flag="--run")
    elif args.adapter:
        source = resolve_trained(args.adapter, accept=(ADAPTER,), flag="--adapter")
    run_dir = source.run_dir if source is not None else None  # an adapter of a run is evaluated as part of it
    cfg = _trained_config(args, source, flags=_eval_flags(args))
    if args.all_rows and cfg.evaluation.split != "test":
        raise DetoxError("--all-rows evaluates every row of the file as held out; it cannot be combined with "
                         "evaluation.split=train")
    target = evaluation_target(source, checkpoint=args.checkpoint, output=args.output, default=Path(cfg.run.output_dir) / "eval")
    adapter_dir, out_dir = target.adapter_dir, target.out_dir
    done = evaluate_adapter(cfg, out_dir, adapter_dir=adapter_dir, rouge=not args.no_rouge,
                            faithfulness=not args.no_faithfulness, progress=False if args.no_progress else None,
                            fresh=args.fresh, run_dir=None if args.all_rows else target.run_dir,
                            on_phase=None if args.json else (lambda text: print("evaluating the " + text, flush=True)))
    first = done["passes"]["after" if adapter_dir else "before"]
    result: dict[str, Any] = dict(first)
    result["passes"] = done["passes"]
    if adapter_dir:
        result["before"] = done["passes"]["before"]
        result["comparison"] = done["comparison"]
        result["improvement"] = done["comparison"]["toxicity"]["percentage_improvement"]  # the notebook's, by compare
    result["output"] = str(out_dir)
    if run_dir and adapter_dir and out_dir.resolve() == (run_dir / "eval").resolve():
        from detoxrl.modelcard import refresh_model_card

        refresh_model_card(run_dir)  # final/README.md now shows this evaluation
    if args.json:
        _print_json(result)
    else:
        print("\n".join(result_lines(result)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from detoxrl.compare import VerdictRule, compare_files, compare_run, format_headline

    if args.run:
        before, after = Path(args.run) / "eval" / "before.jsonl", Path(args.run) / "eval" / "after.jsonl"
        out = Path(args.out or Path(args.run) / "eval")
    else:
        if not args.before or not args.after:
            raise DetoxError("compare needs --run DIR, or both --before FILE and --after FILE (eval .jsonl files)")
        before, after = Path(args.before), Path(args.after)
        out = Path(args.out or after.parent)
    for p in (before, after):
        if not p.is_file():
            raise DetoxError(f"'{p}' does not exist; run detoxrl evaluate first (with --run DIR it writes "
                             "eval/before.jsonl and eval/after.jsonl)")
    if args.run and out == Path(args.run) / "eval":
        # every pass of the run (greedy and sampled) and the verdict its evaluation settings declared
        head = compare_run(out, rule=VerdictRule.of_run(Path(args.run)))
    else:
        head = compare_files(before, after, out)
    if args.json:
        _print_json(head)
    else:
        for text in format_headline(head):
            print(text)
        print(f"table: {out / 'comparison.csv'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from detoxrl.report import write_report
    from detoxrl.runfolder import lock_folder

    if Path(args.run_dir).is_dir():
        lock_folder(args.run_dir, "report")

    paths = write_report(args.run_dir, args.output)
    html = paths.get("html") if isinstance(paths, dict) else paths
    print(f"report: {html}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Offline default end to end on challenging prompts: toxicity before, PPO, toxicity after, report."""
    _one_process("demo")
    from detoxrl.demo import closing_lines, demo_plan, run_demo
    from detoxrl.evaluate import check_judges
    from detoxrl.preflight import preflight
    from detoxrl.runfolder import check_trackers, claim_output_dir, prepare_output_dir
    from detoxrl.trainer import Trainer

    t_start = time.perf_counter()
    if args.output_dir is None:
        args.output_dir = f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    num_samples = [f"evaluation.num_samples={args.num_samples}"] if args.num_samples else []
    cfg = _config_from_args(args, demo=True, flags=num_samples)
    check_trackers(cfg.run.log_with)
    lock = claim_output_dir(cfg, "demo")  # the folder's lock, held until the demo ends (its trainer shares it)
    try:
        prepare_output_dir(cfg, resume=False, clear=False)  # the Trainer checks again; this one is before a scorer loads
        checked = preflight(cfg)
        check_judges(checked.cfg)
        print(demo_plan(checked.cfg), flush=True)
        trainer = Trainer(cfg, checked=checked)
    except BaseException:
        lock.abandon()  # nothing written: no folder left behind
        raise
    try:
        result = run_demo(trainer, say=lambda text: print(text, flush=True))
    except KeyboardInterrupt:
        if trainer.staging_dir is not None:
            args.interrupted = ("interrupted before the first checkpoint of the demo's run: "
                                f"{trainer.earlier_run_kept()}")
        raise
    print("\n".join(closing_lines(result)))
    print(f"demo wall time: {time.perf_counter() - t_start:.0f} s")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A run's final/ (or an adapter folder) as a portable adapter or, with --merge, a plain transformers model."""
    from detoxrl.export import check_output, check_repo_id, export, push_to_hub, resolve_source
    from detoxrl.policy import check_policy_source

    source = resolve_source(args.source)
    if args.push_to_hub:
        check_repo_id(args.push_to_hub)
    check_output(args.output, source, overwrite=args.overwrite)
    cfg = _trained_config(args, source)
    run_config = source.run_dir / "config.yaml" if source.run_dir else None
    if args.merge:
        check_policy_source(cfg.policy)  # before any weights load
    run_config_text = run_config.read_text(encoding="utf-8") if run_config else None
    out = export(source, args.output, policy_cfg=cfg.policy, merge=args.merge, dtype=args.dtype,
                 overwrite=args.overwrite, run_config_text=run_config_text)
    what = f"merged model ({args.dtype})" if args.merge else "adapter"
    print(f"exported the {what} of {source.adapter_dir} to {out}")
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(out, args.push_to_hub, private=args.private)}")
        adapter_config = out / "adapter_config.json"
        base = None if args.merge else json.loads(adapter_config.read_text())["base_model_name_or_path"]
        if base and Path(base).is_absolute():
            print(f"note: the adapter's base model is the local folder {base}, which others do not have; "
                  "push the base model too, or export with --merge")
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    """Summaries of the dialogues of a file or stdin, as JSON Lines or CSV (stdout or --output)."""
    from detoxrl.config import with_settings
    from detoxrl.evaluate import build_judges, check_judges
    from detoxrl.policy import check_adapter_source, check_policy_source, load_policy, load_tokenizer
    from detoxrl.prompts import prompt_examples
    from detoxrl.rewards import scorer_from_config
    from detoxrl.summarize import Decoding, output_format, read_input, summarize, write_records
    from detoxrl.trained import ADAPTER, MERGED, resolve_trained

    if args.model and args.adapter:
        raise DetoxError("--model is an exported (merged) model and --adapter an adapter for a base model; "
                         "pass one of them")
    if args.input and args.data:
        raise DetoxError(f"the dialogues come from FILE or --data, not both (got '{args.input}' and '{args.data}')")
    source = args.input or args.data
    # The weights and the settings they were trained with (their prompt template and base model).
    trained = None
    if args.model:
        trained = resolve_trained(args.model, accept=(MERGED,), flag="--model")
        if args.policy:
            raise DetoxError(f"--model '{args.model}' is a whole model, which needs no --policy; leave --policy out "
                             "(or pass the base model with --policy and its adapter with --adapter)")
    elif args.adapter:
        trained = resolve_trained(args.adapter, accept=(ADAPTER,), flag="--adapter")
    cfg = _trained_config(args, trained,
                          flags=([f"data.dialogue_column={args.column}"] if args.column else []) + _judge_flags(args))
    if args.adapter:
        cfg = with_settings(cfg, {"policy": {"adapter": args.adapter}})
    decoding = Decoding(
        max_new_tokens=cfg.evaluation.max_new_tokens if args.gen_max_new_tokens is None else args.gen_max_new_tokens,
        do_sample=args.do_sample,
        temperature=1.0 if args.temperature is None else args.temperature,
        top_k=0 if args.top_k is None else args.top_k,
        top_p=1.0 if args.top_p is None else args.top_p,
        seed=cfg.run.seed,
        batch_size=cfg.evaluation.batch_size if args.gen_batch_size is None else args.gen_batch_size,
    )
    decoding.validate()
    fmt = output_format(args.output, args.format)
    if args.output not in (None, "-"):
        from detoxrl.summarize import check_output_file

        check_output_file(Path(args.output).expanduser(), overwrite=args.overwrite)
    rows = read_input(source, cfg.data)
    check_policy_source(cfg.policy)
    check_adapter_source(cfg.policy.adapter)
    if args.score:
        from detoxrl.preflight import resolve_settings

        cfg, _ = resolve_settings(cfg)  # the reward labels, checked by name
        check_judges(cfg)
    # Prompts from the tokenizer alone: a dialogue above data.max_prompt_tokens fails before the weights load.
    examples = prompt_examples(rows, cfg.data, load_tokenizer(cfg.policy),
                               fix="shorten that dialogue, or raise the limit with --set data.max_prompt_tokens=N")
    policy = load_policy(cfg.policy)
    scorer = scorer_from_config(cfg.reward) if args.score else None
    judges = build_judges(cfg) if args.score else {}
    write_records(summarize(policy, examples, decoding, scorer=scorer, judges=judges, progress=not args.no_progress),
                  args.output, fmt, overwrite=args.overwrite)
    if args.output not in (None, "-"):
        print(f"wrote {len(examples)} summaries to {args.output}", file=sys.stderr)
    return 0


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from detoxrl.tiny import make_tiny

    print(f"tiny random {args.arch} written to {make_tiny(args.arch, args.folder, args.data, seed=args.seed)}")
    return 0


# ---------------------------------------------------------------------------------------------
# parser


def main(argv: list[str] | None = None) -> int:
    from detoxrl import runtime

    runtime.quiet_openmp()  # before torch loads its OpenMP runtime
    runtime.return_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    runtime.quiet_libraries()
    try:
        if why := ignored_flag(args):
            raise DetoxError(why)
        return globals()[f"cmd_{args.handler}"](args)  # cliargs names each command's handler
    except DetoxError as e:
        if not e.quiet:  # another process of the same run reports it
            print("error: " + " ".join(str(e).split()), file=sys.stderr)  # always one line
        return 2
    except BrokenPipeError:  # e.g. `detoxrl compare --json | head`: not an error of ours
        sys.stdout = open(os.devnull, "w")  # no second error when Python flushes stdout at exit
        return 1
    except OSError as e:  # a full disk or a read-only folder: an environment fault, exit 1, and what to do
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        print(f"error: {e.strerror}" + (f" writing '{e.filename}'" if e.filename else "") + "; nothing written before it "
              "is lost: free space (or make the folder writable) and rerun (train, sft, dpo: with --resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return 130


def _interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves behind and how to go on, per command."""
    resumable = ("interrupted: checkpoints written so far are kept; rerun the same command with --resume to continue "
                 "from the latest")
    said = {"train": resumable, "sft": resumable, "dpo": resumable,
            "evaluate": "interrupted: evaluation records written so far are kept; rerun the same command to continue "
                        "from them (--fresh starts over)",
            "demo": "interrupted: the demo does not resume; rerun detoxrl demo to start again, or continue its training "
                    f"with detoxrl train --resume --output-dir {getattr(args, 'output_dir', None)}"}
    return getattr(args, "interrupted", None) or said.get(args.command, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
