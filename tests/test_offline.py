"""The real offline default end to end, small: SmolLM2-135M-Instruct (packaged GGUF) trained for one
PPO step against the packaged BiLSTM, then a few greedy summaries judged by the packaged SVM and
scored for faithfulness with the packaged MiniLM.

Slow (minutes on a 2-core CPU): run with ``-m slow``; ``-s`` prints the summaries.
"""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from detoxrl.config import PACKAGED_BILSTM, PACKAGED_SMOLLM2, PACKAGED_SVM, load_config
from detoxrl.evaluate import build_judge, evaluate_policy, load_records
from detoxrl.policy import POLICY_ADAPTER

DATA = Path(__file__).resolve().parents[2] / "shared/data/dialogsum"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "train.csv").is_file(), reason=f"DialogSum not found at {DATA}"),
]


@pytest.fixture(scope="module", autouse=True)
def torch_one_thread(module_one_thread):
    """Tiny models on a shared 2-core machine: one thread (see conftest)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, torch_one_thread):
    from detoxrl.trainer import Trainer

    out = tmp_path_factory.mktemp("offline") / "run"
    cfg = load_config(
        overrides=[
            f"data.source={DATA}",
            "data.max_rows=40",
            "ppo.steps=1",
            "ppo.batch_size=4",
            "ppo.mini_batch_size=2",
            "generation.max_new_tokens=16",
            f"run.output_dir={out}",
            "run.progress=false",
        ]
    )
    assert (cfg.policy.model, cfg.reward.model, cfg.evaluation.judge_model[0]) == (PACKAGED_SMOLLM2, PACKAGED_BILSTM, PACKAGED_SVM)
    trainer = Trainer(cfg)
    final = trainer.train()
    return trainer, final


def test_one_ppo_step_of_the_offline_default(trained):
    trainer, final = trained
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert metrics["step"] == 1
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    bad = {k: v for k, v in metrics.items() if v is None or (k in numbers and not math.isfinite(v))}
    assert not bad, f"non-finite metrics: {bad}"
    assert metrics["ppo/applied_minibatches"] == 2 and metrics["ppo/skipped_minibatches"] == 0
    assert metrics["objective/kl"] == pytest.approx(0.0, abs=1e-4)  # the reference is the starting adapter
    assert 1 <= metrics["env/response_length_mean"] <= 16
    assert 0.0 <= metrics["env/toxicity_mean"] <= 1.0

    # the final adapter is a PEFT adapter that fits the policy and holds the trained weights
    from safetensors.torch import load_file

    assert (final / "adapter_config.json").is_file()
    saved = load_file(str(final / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    policy = trainer.policy
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters() if f".{POLICY_ADAPTER}." in n}
    policy.load_adapter_weights(final)  # raises on keys that do not fit
    after = {n: p.detach() for n, p in policy.model.named_parameters() if f".{POLICY_ADAPTER}." in n}
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert any(bool(p.any()) for n, p in after.items() if "lora_B" in n)  # one step moved B away from 0


def test_greedy_summaries_judged_and_faithful(trained, tmp_path):
    trainer, _ = trained
    cfg = trainer.cfg
    judge = build_judge(cfg)
    assert judge is not None and judge.name == PACKAGED_SVM
    settings = dataclasses.replace(cfg.evaluation, num_samples=4, batch_size=4)
    assert settings.do_sample is False  # and faithfulness is measured: evaluate_policy's default
    summary = evaluate_policy(
        trainer.policy, trainer.prompts.test, trainer.scorer, judge, tmp_path / "after.jsonl",
        adapter=POLICY_ADAPTER, settings=settings, temperature=cfg.generation.temperature, progress=False,
        reward_input=cfg.reward.input,
    )
    records = load_records(tmp_path / "after.jsonl")
    assert len(records) == summary["n"] == 4
    print()
    for r in records:
        print(f"--- {r['id']} (toxicity {r['toxicity']:.4f}, judge {r['judge_toxicity']:.4f}, faithfulness {r['faithfulness']:.3f})")
        print(f"reference: {r['reference']}")
        print(f"summary:   {r['response']}")
        assert isinstance(r["response"], str) and r["response"].strip()
        for key in ("toxicity", "judge_toxicity", "faithfulness", "rouge1", "rougeL"):
            assert 0.0 <= r[key] <= 1.0, key
        assert r["kl_k3"] is None  # greedy summaries are not samples: no KL measured on them
    assert summary["judge"] is not None and summary["rouge"] is not None
    assert 0.0 <= summary["faithfulness"] <= 1.0
    # sensible English about the dialogue, not noise: it shares words with the reference summary
    assert summary["rouge"]["rouge1"] > 0.05
