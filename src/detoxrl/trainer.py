"""The RL trainer (PPO, RLOO, GRPO): wires prompts -> policy -> rollout -> rewards -> advantages -> update.

It holds no RL math of its own (that lives in :mod:`detoxrl.advantages` and :mod:`detoxrl.losses`)
and no run-folder code (:mod:`detoxrl.runfolder`: overwrite, resume, the metrics lines). Everything
random is derived from ``(seed, step)`` (:mod:`detoxrl.schedule`), so a run stopped after step k and
resumed from its checkpoint produces the same metrics and adapter weights as a run that never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from detoxrl import checkpoint as ckpt_lib
from detoxrl.advantages import (
    AdaptiveKLController,
    FixedKLController,
    kl_k3,
    masked_moments,
    masked_whiten,
    sequence_kl,
    step_advantages,
    whiten_with_moments,
)
from detoxrl.collection import collect, logprob_plan
from detoxrl.collective import Processes, main_process_first
from detoxrl.config import DetoxConfig, with_settings
from detoxrl.errors import ConfigError, DetoxError, ModelLoadError, TrainingError, note
from detoxrl.policy import Policy, load_policy
from detoxrl.preflight import Preflight, check_launch, preflight, tokenize_prompts
from detoxrl.prompts import PromptExample
from detoxrl.rewards import Scorer, scorer_from_config
from detoxrl import runtime
from detoxrl.rollout import logprobs_and_values
from detoxrl.runfolder import (NEW_RUN_DIR, ResumePlan, RunFolder, check_resume_settings, check_resumed_split,
                               check_trackers, claim_output_dir, existing_run, find_resume_point, flat_hparams,
                               prepare_output_dir, start_run)
from detoxrl.schedule import batch_at, rollout_seed, seed_everything
from detoxrl.tokenstats import masked_mean
from detoxrl.update import UpdateBatch, UpdateHooks, ppo_update, rows_per_pass

KL_SETTINGS = ("ppo.init_kl_coef", "ppo.adaptive_kl", "ppo.target_kl", "ppo.kl_horizon")


@dataclass
class _Shard:
    """One rollout shard of a step, up to its (not yet whitened) advantages."""

    shard: int
    examples: list[PromptExample]
    rollout: Any
    scored: Any
    shaped: torch.Tensor
    faithful: list[float] | None
    # Per token of the sampled responses, from the no-grad passes (:func:`logprobs_and_values`): the
    # policy's "logprobs", "values" and "entropy" at sampling time, and the reference's "ref_logprobs".
    token_stats: dict[str, torch.Tensor]
    mask: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor | None  # the critic's targets (ppo); None without a critic (rloo, grpo)

    def update_batch(self, kl_in_loss: bool) -> UpdateBatch:
        """What the update reads of this shard (with ``kl_in_loss``, grpo, the reference's log-probs too)."""
        stats = self.token_stats
        return UpdateBatch(self.rollout, stats["logprobs"], stats["values"] if self.returns is not None else None,
                           self.advantages, self.returns, stats["ref_logprobs"] if kl_in_loss else None)

    def kl_k3_per_response(self) -> torch.Tensor:
        """[B]: the k3 estimate of each response's KL to the reference (logged beside the k1 of the reward)."""
        return sequence_kl(self.token_stats["logprobs"], self.token_stats["ref_logprobs"], self.mask, kl_k3)


@contextlib.contextmanager
def _outside_zero3_init(plugin):
    """Models loaded in this block are whole on every process, under ZeRO-3 too. transformers builds every
    model inside deepspeed.zero.Init (partitioned) while accelerate's DeepSpeed config is registered with
    it, whatever the file's zero3_init_flag says; the frozen classifiers must not be."""
    if plugin is None or plugin.zero_stage != 3:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()  # registered again: the policy's save and generate still need it


class Trainer(RunFolder):
    """RL with a LoRA policy and a frozen reference adapter: PPO with a value head (its critic), or the
    critic-free RLOO and GRPO (``ppo.algorithm``; :func:`detoxrl.advantages.step_advantages` says how each
    turns rewards into advantages). One loop for all three: rollout, scoring, shaping, the update and the
    checkpoints are shared.

    ``scorer`` replaces the configured reward model (any object with ``score(texts)``, e.g. a
    :class:`detoxrl.rewards.FunctionScorer` wrapping a Python function). With ``resume``,
    ``resume_from`` names the checkpoint (``auto``, ``latest-valid`` or a folder) and
    ``allow_config_change`` lets settings that affect the result differ from the checkpoint's.

    ``checked``: the :func:`preflight` of ``cfg`` when the caller has run it already (``detoxrl demo``), so
    that the data is not read, filtered and scored again.

    ``run_dir`` is where the run writes: ``out_dir`` itself, or ``out_dir/new-run.incomplete`` while an
    --overwrite run has not yet replaced the earlier one (``staging_dir`` is then that folder).

    Several processes (``torchrun``, ``accelerate launch``) train one model: each samples and scores its
    rollout shards of the global batch (``ppo.batch_size``, split into ``ppo.rollout_shards``, one per
    process by default), DDP averages the gradients of the update, and what PPO needs of the whole batch
    (advantage whitening, the KL fed to the controller, every logged metric) is reduced across processes.
    Only the main process writes into the run folder and shows progress bars.
    """

    def __init__(self, cfg: DetoxConfig, *, resume: bool = False, scorer: Scorer | None = None, policy: Policy | None = None,
                 resume_from: str = "auto", allow_config_change: bool = False, checked: Preflight | None = None):
        from accelerate import Accelerator, PartialState
        from accelerate.utils import DistributedType

        self.cfg = cfg  # until the checks below resolve it (rollout shards, reward labels, an adapter's LoRA settings)
        if cfg.run.release_memory:
            runtime.return_freed_memory()
        # The processes first (no model yet): the checks below need their number and must agree.
        self.state = PartialState(**runtime.accelerate_state_kwargs())
        if cfg.run.num_threads:
            torch.set_num_threads(cfg.run.num_threads)
        deepspeed = self.state.distributed_type == DistributedType.DEEPSPEED

        def checks():
            check_trackers(cfg.run.log_with)
            shards = check_launch(cfg, self.state.num_processes, deepspeed=deepspeed, resume=resume)
            if self.state.is_main_process:  # one writer per folder; the other processes share the main one's lock
                self.folder_lock = claim_output_dir(cfg, "train")
            # Before any model loads: the folder; with resume the checkpoint (its checksums), and the settings
            # once the preflight has resolved the reward labels (as they were when the checkpoint was saved).
            point = find_resume_point(cfg, resume_from) if resume else None
            out_dir = Path(cfg.run.output_dir) if resume else prepare_output_dir(cfg, False, clear=False)
            found = preflight(cfg, check_reward=scorer is None) if checked is None else checked
            found = dataclasses.replace(found, cfg=with_settings(found.cfg, {"ppo": {"rollout_shards": shards}}))
            plan = check_resume_settings(found.cfg, point, allow_config_change=allow_config_change) if resume else None
            if resume and cfg.ppo.steps < plan.step:
                raise ConfigError(f"--resume: run '{cfg.run.output_dir}' has trained {plan.step} steps, more than the "
                                  f"{cfg.ppo.steps} asked for; pass --steps N with N > {plan.step} to train it further "
                                  "(evaluate or export it as it is)")
            if resume:
                check_resumed_split(out_dir, found.split, found.cfg)
            # An earlier run in the folder is replaced only once this one has a checkpoint (see train()).
            staging = out_dir / NEW_RUN_DIR if not resume and existing_run(out_dir) else None
            prompts = tokenize_prompts(found, tokenizer=policy.tokenizer if policy else None)
            return found.cfg, out_dir, plan, staging, prompts, found.split

        # The main process first: it alone tidies the folder (a stopped --overwrite run) and fills caches.
        # From here on the trainer runs with the resolved config (and records it in config.yaml).
        try:
            found = main_process_first(self.state, checks)
        except BaseException:
            if getattr(self, "folder_lock", None) is not None:
                self.folder_lock.abandon()  # a bad input leaves no folder behind, and no lock held
            raise
        self.cfg, self.out_dir, self.resume_plan, self.staging_dir, self.prompts, split = found
        cfg = self.cfg
        self.run_dir = self.staging_dir or self.out_dir
        self.shards = cfg.ppo.rollout_shards
        per_process = self.shards // self.state.num_processes
        self.local_shards = list(range(self.state.process_index * per_process, (self.state.process_index + 1) * per_process))
        self.progress = cfg.run.progress and self.state.is_main_process
        seed_everything(cfg.run.seed)
        self.accelerator = Accelerator(
            cpu=runtime.accelerate_cpu_flag(),
            log_with=cfg.run.log_with or None,
            project_dir=str(self.run_dir),
        )
        self.processes = Processes(self.state, self.accelerator.device)
        plugin = self.accelerator.state.deepspeed_plugin if deepspeed else None
        self.zero_stage = plugin.zero_stage if plugin is not None else None

        def load():
            pol = policy or load_policy(cfg.policy, device=self.accelerator.device, value_head=cfg.ppo.algorithm == "ppo")
            # The classifiers are not trained: whole on every process, never partitioned by ZeRO-3's zero.Init.
            with _outside_zero3_init(plugin):
                sc = scorer or scorer_from_config(cfg.reward, device=self.accelerator.device)
                faith = None
                if cfg.reward.faithfulness_weight:
                    from detoxrl.quality import FaithfulnessScorer

                    faith = FaithfulnessScorer()
            return pol, sc, faith

        # Under ZeRO-3, transformers builds the model inside deepspeed.zero.Init, whose every parameter is a
        # collective: all processes load together (the main one first would wait alone in a broadcast).
        self.policy, self.scorer, self.faithfulness = load() if self.zero_stage == 3 else main_process_first(self.state, load)
        torch.manual_seed(cfg.run.seed)  # the value head was initialised above; re-seed for the optimizer path
        self.optimizer = torch.optim.Adam(self.policy.trainable_parameters(), lr=cfg.ppo.learning_rate)
        p = cfg.ppo
        self.kl_ctl = AdaptiveKLController(p.init_kl_coef, p.target_kl, p.kl_horizon) if p.adaptive_kl else FixedKLController(p.init_kl_coef)
        self.step_idx = 0
        self.state.wait_for_everyone()  # every process has checked the folder before the main one writes into it
        if resume:
            self._resume(self.resume_plan)  # every process loads the same checkpoint; the main one writes
        elif self.state.is_main_process:
            # Only now that the new run's models have loaded does it write anything: into the staging
            # folder when an earlier run is there (--overwrite), which stays as it is until train() swaps.
            start_run(self.run_dir, cfg, split)  # config.yaml with the rollout shards it runs with; split.json
        # DDP (or DeepSpeed) around the trainable module: the update's passes go through it, so that its
        # backward averages the gradients of all processes. The checkpoint (if any) is loaded first.
        if plugin is not None and plugin.is_auto("train_micro_batch_size_per_gpu"):
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = p.mini_batch_size // self.shards
        self.prepared_model, self.optimizer = self.accelerator.prepare(self.policy.module, self.optimizer)
        self.policy.partitioned = self.zero_stage == 3
        self.state.wait_for_everyone()
        if cfg.run.log_with:
            self.accelerator.init_trackers("detoxrl", config=flat_hparams(cfg.to_dict()))

    @property
    def launch(self) -> str:
        """How this run was launched, for its last line: "1 process", "2 processes (DDP on CPU)", "2
        processes (DeepSpeed ZeRO-2)": what started, not what the launcher was asked for."""
        n = self.state.num_processes
        if n == 1 and self.zero_stage is None:
            return "1 process"
        kind = self.state.distributed_type.value  # MULTI_CPU, MULTI_GPU, FSDP, ...
        how = (f"DeepSpeed ZeRO-{self.zero_stage}" if self.zero_stage is not None
               else {"MULTI_CPU": "DDP on CPU", "MULTI_GPU": "DDP on GPU"}.get(kind, kind))
        return f"{n} process{'es' if n > 1 else ''} ({how})"

    def _resume(self, plan: ResumePlan) -> None:
        """Load the checkpoint; set newer ones aside; apply and record allowed changes of settings."""
        ckpt = plan.ckpt
        state = ckpt_lib.load_checkpoint(ckpt, self.policy, self.optimizer)
        self.step_idx = state["step"]
        main = self.state.is_main_process
        for line in ckpt_lib.set_aside(plan.point.newer) if main else []:
            note(line)
        kl_state = state["kl_controller"]
        kl_changed = plan.old_config is None or any(key in plan.changes for key in KL_SETTINGS)
        if not kl_changed:
            try:
                self.kl_ctl.load_state_dict(kl_state)
            except KeyError as e:  # a hand-edited state: an adaptive controller without its target
                raise ModelLoadError(
                    f"checkpoint '{ckpt}' has no KL controller {e} in {ckpt_lib.STATE_FILE} (written with another ppo.adaptive_kl?); "
                    f"resume with the run's own config ({self.out_dir / 'config.yaml'}), or {ckpt_lib.FALLBACK_FIX}"
                ) from None
        elif self.cfg.ppo.adaptive_kl and "ppo.init_kl_coef" not in plan.changes:
            # The new KL settings (target, horizon, fixed -> adaptive) take effect from the coefficient reached
            # so far; a new ppo.init_kl_coef restarts it there, and a fixed coefficient is its setting.
            self.kl_ctl.value = float(kl_state["value"])
        for group in self.optimizer.param_groups:  # the optimizer's state came with the checkpoint's learning rate
            group["lr"] = self.cfg.ppo.learning_rate
        if not main:
            return
        # config.yaml says what the run trains with from here on (new step count, allowed changes).
        self.record_resume(plan, kl_controller={"old": kl_state, "new": self.kl_ctl.state_dict()})

    # ------------------------------------------------------------------ data order
    def batch_examples(self, step: int) -> list[PromptExample]:
        """The prompts of ``step``: consecutive slices of per-epoch seeded permutations.

        A step reads ``batch_size / samples_per_prompt`` prompts (each then sampled k times). Rollout
        shard s takes the s-th of ``ppo.rollout_shards`` equal consecutive slices (:meth:`shard_examples`)."""
        bsz = self.cfg.ppo.batch_size // self.cfg.ppo.samples_per_prompt
        return batch_at(self.prompts.train, step, bsz, self.cfg.run.seed, self.cfg.data.shuffle)

    def shard_examples(self, step: int, shard: int) -> list[PromptExample]:
        """The prompts of rollout shard ``shard`` of ``step``: disjoint, whole prompts (a group of k samples
        never spans two shards), the same whichever process runs the shard."""
        examples = self.batch_examples(step)
        size = len(examples) // self.shards
        return examples[shard * size : (shard + 1) * size]

    # ------------------------------------------------------------------ one PPO step
    def _sample_shard(self, step: int, shard: int) -> tuple[_Shard, float, float, float]:
        """Sample, score and evaluate one rollout shard, exactly as a process of its own would (its seed,
        its batch shapes); returns it with its generation, scoring and no-grad pass times."""
        cfg, gen_cfg, ppo_cfg = self.cfg, self.cfg.generation, self.cfg.ppo
        k = ppo_cfg.samples_per_prompt
        examples = self.shard_examples(step, shard)
        torch.manual_seed(rollout_seed(cfg.run.seed, step, shard))
        zero3 = self.zero_stage == 3
        got = collect(self.policy, examples, gen_cfg, self.scorer, cfg.reward,
                      # Neither capture nor teacher-forced passes under ZeRO-3, whose synced generation runs extra
                      # passes: logprobs_and_values computes the log-probs then.
                      plan=logprob_plan(ppo_cfg.capture_logprobs, self.policy, zero3=zero3),
                      samples_per_prompt=k, batch_size=ppo_cfg.batch_size // self.shards,
                      pass_batch_size=self.pass_rows,  # as the update's: a [rows, T, vocab] logits peak
                      faithfulness=self.faithfulness, score_clip=ppo_cfg.score_clip, progress=self.progress,
                      synced_gpus=zero3)
        rollout, scored, shaped, faithful = got.rollout, got.scored, got.shaped, got.faithful
        t2 = time.perf_counter()

        # No-grad passes in minibatch-sized chunks, as the update: a [B, T, vocab] logits tensor of
        # the whole batch would set the step's peak memory.
        token_stats = logprobs_and_values(self.policy, rollout, batch_size=self.pass_rows)
        mask = rollout.response_mask.float()
        # A baseline is variance reduction for the gradient, not part of the reward: evaluation and the
        # logged env/reward_* keep the shaped reward itself.
        advantages, returns, kl = step_advantages(
            ppo_cfg.algorithm, shaped.to(rollout.response_ids.device), token_stats["logprobs"], token_stats["ref_logprobs"],
            token_stats["values"], mask, kl_coef=self.kl_ctl.value, group_size=k,
            group_baseline=ppo_cfg.reward_baseline == "group", gamma=ppo_cfg.gamma, lam=ppo_cfg.lam)
        part = _Shard(shard, examples, rollout, scored, shaped, faithful, token_stats, mask, kl, advantages, returns)
        # generate's teacher-forced passes (bf16) count with the other no-grad passes, not as sampling
        return part, got.generate_seconds, got.score_seconds, time.perf_counter() - t2 + rollout.pass_seconds

    def step(self) -> dict[str, Any]:
        cfg, ppo_cfg = self.cfg, self.cfg.ppo
        step = self.step_idx
        t0 = time.perf_counter()
        parts, t_generate, t_score, t_passes = [], 0.0, 0.0, 0.0
        for shard in self.local_shards:
            part, t_shard_generate, t_shard_score, t_shard_passes = self._sample_shard(step, shard)
            parts.append(part)
            t_generate, t_score = t_generate + t_shard_generate, t_score + t_shard_score
            t_passes += t_shard_passes
        t2 = time.perf_counter()

        if ppo_cfg.whiten_advantages:
            if self.shards == 1:
                parts[0].advantages = masked_whiten(parts[0].advantages, parts[0].mask)
            else:
                # Over all real tokens of the whole batch: every shard's (count, sum, sum of squares), added up.
                moments = self.processes.sum(sum(masked_moments(sh.advantages, sh.mask) for sh in parts))
                for sh in parts:
                    sh.advantages = whiten_with_moments(sh.advantages, sh.mask, moments)
        kl_in_loss = ppo_cfg.algorithm == "grpo"
        update_stats = ppo_update(
            self.policy,
            self.optimizer,
            [sh.update_batch(kl_in_loss) for sh in parts],
            ppo_cfg,
            mini_batch_size=ppo_cfg.mini_batch_size // self.shards,  # rows of one shard
            generator=[torch.Generator().manual_seed(rollout_seed(cfg.run.seed, step, sh.shard) + 1) for sh in parts],
            hooks=self._update_hooks(),
            kl_coef=self.kl_ctl.value if kl_in_loss else 0.0,
        )
        # What the processes hold of the batch, in shard order: every statistic is of the whole batch.
        kl_seq = self._rows(parts, lambda sh: (sh.kl * sh.mask).sum(1))
        kl_k3_seq = self._rows(parts, lambda sh: sh.kl_k3_per_response())
        kl_coef_used = self.kl_ctl.value
        self.kl_ctl.update(float(kl_seq.mean()), ppo_cfg.batch_size)
        t3 = time.perf_counter()

        k = ppo_cfg.samples_per_prompt
        raw = self._rows(parts, lambda sh: sh.shaped)
        faithful = self.processes.gather_lists([sh.faithful for sh in parts]) if self.faithfulness else None
        times = self.processes.max({"time/generate_s": t_generate, "time/score_s": t_score, "time/update_s": t_passes + t3 - t2,
                                          "time/step_s": t3 - t0})
        metrics = {
            "step": step + 1,
            "objective/kl": float(kl_seq.mean()),
            "objective/kl_k3": float(kl_k3_seq.mean()),
            "objective/kl_coef": kl_coef_used,
            "objective/entropy": self._token_mean(parts, lambda sh: sh.token_stats["entropy"]),
            **({"ppo/returns/mean": self._token_mean(parts, lambda sh: sh.returns)} if parts[0].returns is not None else {}),
            "ppo/policy/advantages_mean": self._token_mean(parts, lambda sh: sh.advantages),
            **self.processes.mean_of_floats(update_stats),
            "env/reward_mean": float(raw.mean()),
            "env/reward_std": float(raw.std(unbiased=False)) if len(raw) > 1 else 0.0,
            **(_group_metrics(raw, k) if k > 1 else {}),
            "env/toxicity_mean": float(self._rows(parts, lambda sh: sh.scored.toxicity.float()).mean()),
            # the classifier's raw logit, before shaping
            "env/score_logit_mean": float(self._rows(parts, lambda sh: sh.scored.reward.float()).mean()),
            **({"env/faithfulness_mean": float(np.mean(faithful))} if faithful is not None else {}),
            "env/response_length_mean": float(self._rows(parts, lambda sh: sh.mask.sum(1)).mean()),
            "env/ended_fraction": float(self._rows(parts, lambda sh: sh.rollout.ended.float()).mean()),
            **times,
        }
        self.step_idx += 1
        shards = self.processes.gather_lists([[(sh.shard, self.state.process_index, [e.id for e in sh.examples])] for sh in parts])
        self._log(metrics, shards)
        self.last_rollout = parts[-1].rollout
        self.last_shards = parts
        if update_stats["ppo/applied_minibatches"] == 0:
            # Nothing was applied, so the adapter did not move. The usual causes (weights or losses
            # gone non-finite) skip every later step too: the run stops here instead of ending with
            # "trained N steps" and an unchanged adapter. This also covers a run that skipped every
            # minibatch overall. The metrics line above is kept; no checkpoint is written for this step.
            # (Every process stops here: the decision to skip was taken by all of them together.)
            raise self._said_once(TrainingError(
                f"PPO step {step + 1} skipped all {update_stats['ppo/skipped_minibatches']} of its minibatches (non-finite loss or "
                f"gradient, or a mean ratio outside [1/{ppo_cfg.ratio_threshold:g}, {ppo_cfg.ratio_threshold:g}]), "
                "so the adapter did not change; "
                f"lower ppo.learning_rate or check the reward and ppo settings (metrics: {self.run_dir / 'metrics.jsonl'})"
            ))
        return metrics

    @property
    def pass_rows(self) -> int:
        """Rows per pass of a model, with or without gradient: a minibatch of one shard, or its micro-batches."""
        return rows_per_pass(self.cfg.ppo, self.cfg.ppo.mini_batch_size // self.shards)

    def _update_hooks(self) -> UpdateHooks:
        """The update through accelerate: its backward and clipping, the prepared (DDP) model's forward."""
        return UpdateHooks(
            backward=self.accelerator.backward,
            clip_grad_norm=self.accelerator.clip_grad_norm_,
            forward=lambda sub: self.prepared_model(sub, with_values=self.policy.value_head is not None),  # through DDP
            no_sync=lambda: self.accelerator.no_sync(self.prepared_model),
            all_agree=self.processes.all_agree,
        )

    # ------------------------------------------------------------------ across processes
    # With one process each of these is the plain computation (bit for bit what it was before there were
    # several); with several, accelerate's gather and reduce make it one of the whole batch.
    def _rows(self, parts: list[_Shard], per_row) -> torch.Tensor:
        """A per-row quantity of the whole batch, in shard order (the processes' rows gathered)."""
        rows = torch.cat([per_row(sh) for sh in parts])
        if self.state.num_processes == 1:
            return rows
        from accelerate.utils import gather

        return gather(rows.to(self.accelerator.device))

    def _token_mean(self, parts: list[_Shard], per_token) -> float:
        """The masked mean of a per-token quantity over all real tokens of the whole batch."""
        if self.shards == 1:
            return float(masked_mean(per_token(parts[0]), parts[0].mask))
        sums = sum(torch.stack([torch.where(sh.mask.bool(), per_token(sh).double(), 0.0).sum(), sh.mask.double().sum()]) for sh in parts)
        total, count = self.processes.sum(sums).tolist()
        return total / count

    def _said_once(self, error: DetoxError) -> DetoxError:
        """An error that every process raises: the main one says it, the others stop quietly."""
        error.quiet = not self.state.is_main_process
        return error

    # ------------------------------------------------------------------ the loop
    def train(self, steps: int | None = None) -> Path:
        """Run until ``cfg.ppo.steps`` (or ``steps``), checkpointing; return the ``final/`` folder.

        An --overwrite run moves into the output folder, replacing the earlier run, right after its
        first checkpoint (or at the end). An error before that says the earlier run is unchanged.
        """
        total = steps if steps is not None else self.cfg.ppo.steps
        bar = tqdm(total=total, initial=self.step_idx, desc="ppo", unit="step", disable=not self.progress)
        self.hold_folder("train")
        try:
            while self.step_idx < total:
                m = self.step()
                bar.update(1)
                bar.set_postfix(reward=f"{m['env/reward_mean']:.3f}", kl=f"{m['objective/kl']:.3f}", s=f"{m['time/step_s']:.1f}")
                if self.step_idx % self.cfg.run.save_every == 0 or self.step_idx == total:
                    self.save_checkpoint()
                    self.replace_earlier_run()
            bar.close()
            final = self.save_final()
            self.replace_earlier_run()
        except DetoxError as e:
            if self.staging_dir is None:
                raise
            raise self._said_once(type(e)(f"{e}; {self.earlier_run_kept()}")) from e
        finally:
            self.release_folder()
        if self.cfg.run.log_with:
            self.accelerator.end_training()
        return self.run_dir / final.name

    def save_checkpoint(self) -> Path:
        # The settings trained with so far go with the checkpoint: a resume compares against them.
        state = {"kl_controller": self.kl_ctl.state_dict(), "seed": self.cfg.run.seed, "config": self.cfg.to_dict()}
        with self._whole_weights():
            if self.state.is_main_process:
                ckpt_lib.save_checkpoint(self.run_dir, self.step_idx, self.policy, self.optimizer, state, keep=self.cfg.run.keep_checkpoints)
        self.state.wait_for_everyone()
        return ckpt_lib.checkpoint_dir(self.run_dir, self.step_idx)

    def save_final(self) -> Path:
        with self._whole_weights():
            if self.state.is_main_process:
                ckpt_lib.save_final(self.run_dir, self.policy)
        self.state.wait_for_everyone()
        return self.run_dir / "final"

    def _whole_weights(self):
        """While saving: the trainable weights whole on every process (DeepSpeed ZeRO-3 partitions them;
        gathering them is collective, so every process enters this, and the main one writes)."""
        if self.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(self.policy.trainable_parameters(), modifier_rank=None)


def _group_metrics(rewards: torch.Tensor, k: int) -> dict[str, float]:
    """How much the k samples of a prompt differ in reward: the signal a group baseline keeps.

    ``env/group_reward_std``: the mean over prompts of the within-prompt standard deviation;
    ``env/uniform_group_fraction``: the share of prompts whose k rewards are all equal (e.g. all at
    the reward's ceiling), which give no toxicity signal under ``ppo.reward_baseline=group``."""
    grouped = rewards.float().reshape(-1, k)
    return {
        "env/group_reward_std": float(grouped.std(dim=1, unbiased=False).mean()),
        "env/uniform_group_fraction": float((grouped.amax(dim=1) - grouped.amin(dim=1) == 0).float().mean()),
    }
