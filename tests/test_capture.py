"""``ppo.capture_logprobs``: where the policy's old log-probs come from, and why bf16 must not capture.

In bf16 the decoding pass (one position at a time, against a KV cache) rounds differently from a
teacher-forced pass. The KL to the reference compares the policy's log-probs with teacher-forced
reference log-probs, so in bf16 both must come from teacher-forced passes run the same way (generate
runs them after each decoded batch, the policy's reusing its prompt pass and the reference's
making its own alike): then the KL of two identical adapters is 0 along the code path that bf16
runs, whatever the rounding.
"""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close_for_dtype
from detoxrl.config import ConfigError, GenerationConfig
from detoxrl.evaluate import _kl_to_reference
from detoxrl.policy import POLICY_ADAPTER, REFERENCE_ADAPTER, load_policy
from detoxrl.prompts import build_prompts
from detoxrl.rollout import capture_logprobs, generate, logprobs_and_values


def test_capture_mode_follows_the_dtype_only_in_auto():
    assert capture_logprobs("auto", torch.float32) is True
    assert capture_logprobs("auto", torch.bfloat16) is False
    assert capture_logprobs("auto", torch.float16) is False
    assert capture_logprobs("on", torch.bfloat16) is True
    assert capture_logprobs("off", torch.float32) is False
    with pytest.raises(ValueError, match="auto, on or off"):
        capture_logprobs("sometimes", torch.float32)


def test_config_rejects_an_unknown_capture_mode(tiny_config):
    assert tiny_config().ppo.capture_logprobs == "auto"
    with pytest.raises(ConfigError, match=r"ppo.capture_logprobs must be auto, on or off, got 'yes'"):
        tiny_config("ppo.capture_logprobs=yes")


def _moved_bf16_policy(arch_dir, tiny_config):
    """A bf16 policy whose trainable adapter has moved away from zero, copied into the reference."""
    torch.manual_seed(0)
    policy = load_policy(tiny_config("policy.dtype=bfloat16", policy=arch_dir).policy)
    assert policy.compute_dtype == torch.bfloat16
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name and f".{POLICY_ADAPTER}." in name:
                param.normal_(0.0, 0.5)
    policy.copy_adapter(POLICY_ADAPTER, REFERENCE_ADAPTER)
    return policy


@pytest.mark.parametrize("path", ["teacher_forced_in_generate", "logprobs_and_values"])
@pytest.mark.parametrize("arch", ["tiny_t5", "tiny_llama"])
def test_bf16_kl_of_identical_adapters_is_zero_along_the_bf16_path(arch, path, request, tiny_config, one_thread,
                                                                   monkeypatch):
    """The trainer's bf16 path (generate's teacher-forced passes, the reference's beside the policy's)
    and the ZeRO-3 path (both passes in logprobs_and_values) give a KL of 0 for equal adapters."""
    policy = _moved_bf16_policy(request.getfixturevalue(arch), tiny_config)
    # Take the path of a moved adapter: no shortcut for bitwise-equal adapters.
    monkeypatch.setattr(type(policy), "adapters_identical", lambda self, *a: False)
    examples = build_prompts(tiny_config().data, policy.tokenizer).train[:6]
    ids, texts = [e.input_ids for e in examples], [e.prompt for e in examples]
    capture = capture_logprobs("auto", policy.compute_dtype)
    assert capture is False
    in_generate = path == "teacher_forced_in_generate"
    torch.manual_seed(1)
    rollout = generate(policy, ids, texts, GenerationConfig(max_new_tokens=10), batch_size=4, capture=capture,
                       teacher_forced=in_generate, reference=REFERENCE_ADAPTER if in_generate else None,
                       pass_batch_size=2 if in_generate else None)
    assert (rollout.logprobs is not None) == in_generate and (rollout.ref_logprobs is not None) == in_generate
    passes = logprobs_and_values(policy, rollout, batch_size=3)
    mask = rollout.response_mask.bool()
    assert mask.sum() > 10
    # Training: the policy and reference log-probs are results of the same computation.
    for key in ("logprobs", "ref_logprobs", "values"):
        assert passes[key].dtype == torch.float32  # statistics stay in float32
    assert_close_for_dtype(passes["logprobs"][mask], passes["ref_logprobs"][mask], ulps=4)
    # Evaluation's KL along the same rule.
    k1, k3 = _kl_to_reference(policy, rollout, POLICY_ADAPTER)
    scale = float(passes["ref_logprobs"][mask].abs().max())
    tol = 4 * torch.finfo(torch.float32).eps * max(1.0, scale) * int(mask.sum(1).max())
    assert max(abs(v) for v in k1) <= tol and max(abs(v) for v in k3) <= tol


def test_trainer_captures_by_dtype_and_switch(tiny_config, one_thread, monkeypatch, tmp_path):
    import detoxrl.collection
    import detoxrl.trainer as trainer_mod

    seen = []
    real_generate = detoxrl.collection.generate

    def spy(*args, **kwargs):
        seen.append((kwargs["capture"], kwargs["teacher_forced"]))
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(detoxrl.collection, "generate", spy)
    for i, (overrides, expected) in enumerate([
        (["policy.dtype=float32"], True),
        (["policy.dtype=bfloat16"], False),
        (["policy.dtype=bfloat16", "ppo.capture_logprobs=on"], True),
        (["policy.dtype=float32", "ppo.capture_logprobs=off"], False),
    ]):
        seen.clear()
        trainer = trainer_mod.Trainer(tiny_config(*overrides, "ppo.steps=1", batch_size=4, mini_batch_size=2,
                                                  max_new_tokens=4, max_rows=16, output_dir=tmp_path / f"run{i}"))
        metrics = trainer.step()
        assert seen == [(expected, not expected)], overrides  # bf16: teacher-forced passes in generate
        assert torch.isfinite(torch.tensor(metrics["objective/kl"]))


@pytest.mark.parametrize("dtype, old_value, flagged", [("bfloat16", "on", True), ("float32", "auto", False)])
def test_resuming_a_run_from_before_the_setting_keeps_its_capture(tiny_config, tmp_path, dtype, old_value, flagged):
    """A run recorded before ppo.capture_logprobs captured in every dtype: in bf16 that is 'on', and
    resuming with today's 'auto' is a change to name; in float32 'auto' is the same as 'on'."""
    from detoxrl.checkpoint import ResumePoint
    from detoxrl.runfolder import check_resume_settings

    cfg = tiny_config(f"policy.dtype={dtype}", "ppo.rollout_shards=1")  # resolved, as a resuming trainer's is
    old = cfg.to_dict()
    del old["ppo"]["capture_logprobs"]
    point = ResumePoint(tmp_path / "checkpoint-1", {"config": old})
    if flagged:
        with pytest.raises(ConfigError, match=rf'ppo.capture_logprobs "{old_value}" -> "auto"'):
            check_resume_settings(cfg, point)
        plan = check_resume_settings(cfg, point, allow_config_change=True)
        assert plan.changes == {"ppo.capture_logprobs": (old_value, "auto")}
    else:
        assert check_resume_settings(cfg, point).changes == {}
