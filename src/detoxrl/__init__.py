"""detoxrl: reinforcement learning (PPO + LoRA) that makes summarization models less toxic."""

__version__ = "0.1.0"
