"""detoxrl: reinforcement learning (PPO, RLOO, GRPO + LoRA) that makes summarization models less toxic.

The public API, imported lazily (``import detoxrl`` loads no torch)::

    from detoxrl import Trainer, load_config, FunctionScorer
    cfg = load_config("offline", overrides=["ppo.algorithm=rloo", "ppo.samples_per_prompt=4"])
    final = Trainer(cfg, scorer=FunctionScorer(my_reward)).train()

A reward function takes a list of summaries and returns one float per summary (higher: better);
:class:`FunctionScorer` wraps it. :func:`evaluate_adapter` evaluates an adapter against the starting
policy, :func:`write_report` draws a run, :func:`refresh_model_card` writes ``final/README.md``.
"""

__version__ = "0.1.0"

#: name -> the module that defines it
_PUBLIC = {
    "Trainer": "detoxrl.trainer",
    "SupervisedTrainer": "detoxrl.sft",
    "PreferenceTrainer": "detoxrl.dpo",
    "load_config": "detoxrl.config",
    "DetoxConfig": "detoxrl.config",
    "FunctionScorer": "detoxrl.rewards",
    "RewardFunction": "detoxrl.rewards",
    "evaluate_adapter": "detoxrl.evaluate",
    "write_report": "detoxrl.report",
    "refresh_model_card": "detoxrl.modelcard",
    "DetoxError": "detoxrl.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'detoxrl' has no attribute '{name}'")
