"""The PPO trainer: wires prompts -> policy -> rollout -> rewards -> advantages -> update.

It holds no RL math of its own (that lives in :mod:`detoxrl.advantages` and :mod:`detoxrl.losses`).
Everything random is derived from ``(seed, step)``, so a run stopped after step k and resumed from
its checkpoint produces the same metrics and adapter weights as a run that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from detoxrl import checkpoint as ckpt_lib
from detoxrl.advantages import AdaptiveKLController, FixedKLController, gae, kl_k3, masked_mean, masked_whiten, token_rewards
from detoxrl.config import DetoxConfig, validate
from detoxrl.errors import DataError, DetoxError, ModelLoadError, TrainingError
from detoxrl.policy import Policy, check_adapter_source, check_policy_source, load_policy, load_tokenizer
from detoxrl.prompts import PromptExample, PromptSplits, build_prompts, check_data_source, load_dialogue_rows, split_and_select
from detoxrl.rewards import Scorer, check_reward_labels, scorer_from_config, shape_rewards, texts_for_scoring
from detoxrl.selection import dialogue_toxicity_for
from detoxrl import runtime
from detoxrl.rollout import generate, score_rollout
from detoxrl.update import UpdateBatch, ppo_update

MANAGED = ("metrics.jsonl", "checkpoints", "final", "eval", "report", "config.yaml", "detoxrl")  # detoxrl/: tracker logs


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """A distinct, reproducible seed per step (so resume needs no saved RNG state)."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


def prepare_output_dir(cfg: DetoxConfig, resume: bool, *, clear: bool = True) -> Path:
    """Refuse to clobber an earlier run unless asked; say how to resume or overwrite.

    ``clear=False`` only checks: the trainer clears an overwritten run once its models have
    loaded, so that a run which cannot even start does not cost the user the previous one.
    """
    out = Path(cfg.run.output_dir)
    check_writable_dir(out, "--output-dir")
    if resume:
        # trainer_state.json is read now, so that a corrupt one is an error before any model loads.
        ckpt_lib.read_state(ckpt_lib.require_checkpoint(out))
        return out
    existing = [name for name in MANAGED if (out / name).exists()]
    if existing and not cfg.run.overwrite:
        raise DetoxError(
            f"output dir '{out}' already holds a run ({', '.join(existing)}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --output-dir"
        )
    if clear:
        clear_output_dir(out)
    return out


def check_writable_dir(path: str | Path, option: str) -> None:
    """Refuse a folder that cannot be created or written: a file there, or no write permission.

    mkdir would otherwise fail only once the models have loaded (minutes in), with a traceback.
    Nothing is created here: the nearest existing ancestor is where the folder would be made.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise DetoxError(f"{option} '{path}' is a file, not a folder; pass a folder to {option}")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DetoxError(f"{option} '{path}' lies under '{existing}', which is a file; pass a folder to {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DetoxError(f"{option} '{path}' is not writable (no write permission in '{existing}'); pass a folder you can write to {option}")


def check_trackers(log_with: list[str]) -> None:
    """A tracker whose package is missing: accelerate would drop it with a log line only."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    install = {"tensorboard": "pip install tensorboard==2.21.0", "wandb": "pip install wandb"}
    for tracker in log_with:
        if tracker in available and not available[tracker]():  # unknown names: config.validate's message
            raise DetoxError(f"--log-with {tracker}: {tracker} is not installed; run: {install[tracker]} (or leave --log-with {tracker} out)")


def clear_output_dir(out: Path) -> None:
    """Delete what an earlier run wrote into ``out`` (only detoxrl's own files) and create ``out``."""
    for name in MANAGED:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def preflight(cfg: DetoxConfig, *, check_reward: bool = True, require_train: bool = True) -> list[dict]:
    """All cheap checks, before any model loads. Returns the dialogue rows read.

    The length filter, the split and the challenging-prompt selection run here, so that a filter or
    a threshold that empties a split is an error before the policy loads (the selection's scores
    are cached: building the prompts afterwards does not score again).
    """
    validate(cfg)  # a library caller may have edited the config after load_config
    check_data_source(cfg.data)
    check_policy_source(cfg.policy)
    check_adapter_source(cfg.policy.adapter)
    if check_reward:
        label, toxic = check_reward_labels(cfg.reward.model, cfg.reward.label, cfg.reward.toxic_label, cfg.reward.trust_remote_code)
        cfg.reward.label, cfg.reward.toxic_label = label, toxic
    if require_train and cfg.data.test_fraction >= 1.0:
        raise DataError("data.test_fraction=1 holds every row out and leaves nothing to train on; use it with evaluate --all-rows only")
    rows = load_dialogue_rows(cfg.data)
    split_and_select(cfg.data, rows, dialogue_toxicity_for(cfg), require_train=require_train)
    return rows


def tokenize_prompts(cfg: DetoxConfig, rows: list[dict], *, tokenizer: Any = None, require_train: bool = True) -> PromptSplits:
    """The prompts of ``rows``, tokenized by the policy's tokenizer alone (loaded unless given).

    Called before the policy's weights load: a prompt above data.max_prompt_tokens is an error in
    seconds, not after minutes of loading.
    """
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.policy)
    return build_prompts(cfg.data, tokenizer, dialogue_toxicity_for(cfg), rows=rows, require_train=require_train)


class Trainer:
    """PPO with a LoRA policy, a frozen reference adapter and a value head.

    ``scorer`` replaces the configured reward model (any object with ``score(texts)``, e.g. a
    :class:`detoxrl.rewards.FunctionScorer` wrapping a Python function).
    """

    def __init__(self, cfg: DetoxConfig, *, resume: bool = False, scorer: Scorer | None = None, policy: Policy | None = None):
        from accelerate import Accelerator

        self.cfg = cfg
        if cfg.run.release_memory:
            runtime.return_freed_memory()
        if cfg.run.num_threads:
            torch.set_num_threads(cfg.run.num_threads)
        check_trackers(cfg.run.log_with)
        self.run_dir = prepare_output_dir(cfg, resume, clear=False)  # refuse now, clear once models load
        rows = preflight(cfg, check_reward=scorer is None)
        self.prompts = tokenize_prompts(cfg, rows, tokenizer=policy.tokenizer if policy else None)
        seed_everything(cfg.run.seed)
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            log_with=cfg.run.log_with or None,
            project_dir=str(self.run_dir),
        )
        self.policy = policy or load_policy(cfg.policy, device=self.accelerator.device)
        self.scorer = scorer or scorer_from_config(cfg.reward, device=self.accelerator.device)
        self.faithfulness = None
        if cfg.reward.faithfulness_weight:
            from detoxrl.quality import FaithfulnessScorer

            self.faithfulness = FaithfulnessScorer()
        if not resume:
            clear_output_dir(self.run_dir)  # --overwrite: only now that the new run's models have loaded
        torch.manual_seed(cfg.run.seed)  # the value head was initialised above; re-seed for the optimizer path
        self.optimizer = torch.optim.Adam(self.policy.trainable_parameters(), lr=cfg.ppo.learning_rate)
        p = cfg.ppo
        self.kl_ctl = AdaptiveKLController(p.init_kl_coef, p.target_kl, p.kl_horizon) if p.adaptive_kl else FixedKLController(p.init_kl_coef)
        self.step_idx = 0
        if resume:
            ckpt = ckpt_lib.require_checkpoint(self.run_dir)
            state = ckpt_lib.load_checkpoint(ckpt, self.policy, self.optimizer)
            self.step_idx = state["step"]
            try:
                self.kl_ctl.load_state_dict(state["kl_controller"])
            except KeyError as e:  # an adaptive controller resumed from a fixed one's state
                raise ModelLoadError(
                    f"checkpoint '{ckpt}' has no KL controller {e} in {ckpt_lib.STATE_FILE} (written with another ppo.adaptive_kl?); "
                    f"resume with the run's own config ({self.run_dir / 'config.yaml'})"
                ) from None
            self._truncate_metrics(self.step_idx)
        else:
            cfg.save_yaml(self.run_dir / "config.yaml")
        if cfg.run.log_with:
            self.accelerator.init_trackers("detoxrl", config=_flat(cfg.to_dict()))

    # ------------------------------------------------------------------ data order
    def batch_examples(self, step: int) -> list[PromptExample]:
        """The prompts of ``step``: consecutive slices of per-epoch seeded permutations."""
        train = self.prompts.train
        n, bsz = len(train), self.cfg.ppo.batch_size
        out = []
        for pos in range(step * bsz, (step + 1) * bsz):
            epoch, within = divmod(pos, n)
            if not self.cfg.data.shuffle:
                out.append(train[within])
                continue
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.run.seed + 104_729 * epoch))
            out.append(train[int(perm[within])])
        return out

    # ------------------------------------------------------------------ one PPO step
    def step(self) -> dict[str, Any]:
        cfg, g, p = self.cfg, self.cfg.generation, self.cfg.ppo
        step = self.step_idx
        t0 = time.perf_counter()
        examples = self.batch_examples(step)
        torch.manual_seed(step_seed(cfg.run.seed, step))
        rollout = generate(
            self.policy,
            [e.input_ids for e in examples],
            [e.prompt for e in examples],
            max_new_tokens=g.max_new_tokens,
            min_new_tokens=g.min_new_tokens,
            do_sample=g.do_sample,
            temperature=g.temperature,
            top_k=g.top_k,
            top_p=g.top_p,
            batch_size=p.batch_size,
            progress=cfg.run.progress,
            capture=True,  # old log-probs and values from the sampling pass itself
        )
        t1 = time.perf_counter()
        texts = texts_for_scoring(rollout.queries, rollout.responses, cfg.reward.input)
        scored = self.scorer.score(texts)
        faithful = self.faithfulness.score(rollout.responses, [e.dialogue for e in examples]) if self.faithfulness else None
        shaped = shape_rewards(
            scored, cfg.reward, reward_label=self.scorer.reward_label, ended=rollout.ended, faithfulness=faithful, score_clip=p.score_clip
        )
        scores = shaped.to(rollout.response_ids.device)
        t2 = time.perf_counter()

        # No-grad passes in minibatch-sized chunks, as the update: a [B, T, vocab] logits tensor of
        # the whole batch would set the step's peak memory.
        fw = score_rollout(self.policy, rollout, temperature=g.temperature, batch_size=p.mini_batch_size)
        mask = rollout.response_mask.float()
        rewards, kl = token_rewards(scores, fw["logprobs"], fw["ref_logprobs"], mask, self.kl_ctl.value)
        advantages, returns = gae(rewards, fw["values"], mask, p.gamma, p.lam)
        if p.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        update_stats = ppo_update(
            self.policy,
            self.optimizer,
            UpdateBatch(rollout, fw["logprobs"], fw["values"], advantages, returns),
            epochs=p.ppo_epochs,
            mini_batch_size=p.mini_batch_size,
            clip_ratio=p.clip_ratio,
            clip_value=p.clip_value,
            vf_coef=p.vf_coef,
            max_grad_norm=p.max_grad_norm,
            ratio_threshold=p.ratio_threshold,
            temperature=g.temperature,
            generator=torch.Generator().manual_seed(step_seed(cfg.run.seed, step) + 1),
            group_by_length=p.group_by_length,
            backward=self.accelerator.backward,
            clip_grad_norm=self.accelerator.clip_grad_norm_,
        )
        kl_seq = (kl * mask).sum(1)
        kl_k3_seq = torch.where(mask.bool(), kl_k3(fw["logprobs"], fw["ref_logprobs"]), 0.0).sum(1)
        kl_coef_used = self.kl_ctl.value
        self.kl_ctl.update(float(kl_seq.mean()), p.batch_size)
        t3 = time.perf_counter()

        raw = shaped
        metrics = {
            "step": step + 1,
            "objective/kl": float(kl_seq.mean()),
            "objective/kl_k3": float(kl_k3_seq.mean()),
            "objective/kl_coef": kl_coef_used,
            "objective/entropy": float(masked_mean(fw["entropy"], mask)),
            "ppo/returns/mean": float(masked_mean(returns, mask)),
            "ppo/policy/advantages_mean": float(masked_mean(advantages, mask)),
            **update_stats,
            "env/reward_mean": float(raw.mean()),
            "env/reward_std": float(raw.std(unbiased=False)) if len(raw) > 1 else 0.0,
            "env/toxicity_mean": float(scored.toxicity.float().mean()),
            "env/score_logit_mean": float(scored.reward.float().mean()),  # the classifier's raw logit, before shaping
            **({"env/faithfulness_mean": float(np.mean(faithful))} if faithful is not None else {}),
            "env/response_length_mean": float(mask.sum(1).mean()),
            "env/ended_fraction": float(rollout.ended.float().mean()),
            "time/generate_s": t1 - t0,
            "time/score_s": t2 - t1,
            "time/update_s": t3 - t2,
            "time/step_s": t3 - t0,
        }
        self.step_idx += 1
        self._log(metrics)
        self.last_rollout = rollout
        if update_stats["ppo/applied_minibatches"] == 0:
            # Nothing was applied, so the adapter did not move. The usual causes (weights or losses
            # gone non-finite) skip every later step too: the run stops here instead of ending with
            # "trained N steps" and an unchanged adapter. This also covers a run that skipped every
            # minibatch overall. The metrics line above is kept; no checkpoint is written for this step.
            raise TrainingError(
                f"PPO step {step + 1} skipped all {update_stats['ppo/skipped_minibatches']} of its minibatches (non-finite loss or "
                f"gradient, or a mean ratio outside [1/{p.ratio_threshold:g}, {p.ratio_threshold:g}]), so the adapter did not change; "
                f"lower ppo.learning_rate or check the reward and ppo settings (metrics: {self.run_dir / 'metrics.jsonl'})"
            )
        return metrics

    # ------------------------------------------------------------------ the loop
    def train(self, steps: int | None = None) -> Path:
        """Run until ``cfg.ppo.steps`` (or ``steps``), checkpointing; return the ``final/`` folder."""
        total = steps if steps is not None else self.cfg.ppo.steps
        bar = tqdm(total=total, initial=self.step_idx, desc="ppo", unit="step", disable=not self.cfg.run.progress)
        while self.step_idx < total:
            m = self.step()
            bar.update(1)
            bar.set_postfix(reward=f"{m['env/reward_mean']:.3f}", kl=f"{m['objective/kl']:.3f}", s=f"{m['time/step_s']:.1f}")
            if self.step_idx % self.cfg.run.save_every == 0 or self.step_idx == total:
                self.save_checkpoint()
        bar.close()
        final = ckpt_lib.save_final(self.run_dir, self.policy)
        if self.cfg.run.log_with:
            self.accelerator.end_training()
        return final

    def save_checkpoint(self) -> Path:
        state = {"kl_controller": self.kl_ctl.state_dict(), "seed": self.cfg.run.seed}
        return ckpt_lib.save_checkpoint(self.run_dir, self.step_idx, self.policy, self.optimizer, state, keep=self.cfg.run.keep_checkpoints)

    # ------------------------------------------------------------------ logging
    def _log(self, metrics: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(metrics)) + "\n")
        if self.cfg.run.log_with:
            self.accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])

    def _truncate_metrics(self, upto_step: int) -> None:
        """A resumed run drops metrics of steps after its checkpoint (they will be recomputed)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the crash that stopped the run
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= upto_step:
                kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
