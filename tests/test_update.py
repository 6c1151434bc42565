"""detoxrl.update: clipped PPO over minibatches and epochs, and the guard against bad steps."""

import pytest
import torch

import detoxrl.update as update_mod
from detoxrl.advantages import gae, masked_whiten, token_rewards
from detoxrl.config import GenerationConfig, PPOConfig
from detoxrl.policy import POLICY_ADAPTER, REFERENCE_ADAPTER, load_policy
from detoxrl.prompts import build_prompts
from detoxrl.rollout import forward_pass, generate, logprobs_and_values
from detoxrl.update import UpdateBatch, minibatch_indices, ppo_update
from conftest import assert_close_for_dtype

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ["tiny_t5", "tiny_llama"]
N = 8


def fresh_policy(request, tiny_config, arch):
    torch.manual_seed(0)
    return load_policy(tiny_config(policy=request.getfixturevalue(arch)).policy)


def make_batch(policy, tiny_config, seed=0, kl_coef=0.1):
    """A real rollout of N prompts with fixed arbitrary scores, turned into PPO inputs as the trainer does."""
    examples = build_prompts(tiny_config().data, policy.tokenizer).train[:N]
    torch.manual_seed(seed)
    rollout = generate(policy, [e.input_ids for e in examples], [e.prompt for e in examples],
                       GenerationConfig(max_new_tokens=8), batch_size=N)
    fw = logprobs_and_values(policy, rollout, batch_size=N)
    mask = rollout.response_mask.float()
    scores = torch.randn(N, generator=torch.Generator().manual_seed(seed + 100))
    rewards, _ = token_rewards(scores, fw["logprobs"], fw["ref_logprobs"], mask, kl_coef)
    advantages, returns = gae(rewards, fw["values"], mask, 1.0, 0.95)
    return UpdateBatch(rollout, fw["logprobs"], fw["values"], masked_whiten(advantages, mask), returns)


def run_update(policy, batch, lr=1e-3, epochs=1, mini_batch_size=4, max_grad_norm=1.0, ratio_threshold=10.0, vf_coef=0.1, seed=0):
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=lr)
    stats = ppo_update(
        policy,
        optimizer,
        batch,
        PPOConfig(ppo_epochs=epochs, mini_batch_size=mini_batch_size, clip_ratio=0.2, clip_value=0.2, vf_coef=vf_coef,
                  max_grad_norm=max_grad_norm, ratio_threshold=ratio_threshold, group_by_length=False),
        generator=torch.Generator().manual_seed(seed),
    )
    return stats, optimizer


@pytest.fixture
def spy_policy_loss(monkeypatch):
    """Record the statistics of every minibatch's policy loss (the real function runs)."""
    calls = []
    real = update_mod.policy_loss

    def recording(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls.append(dict(stats, loss=float(loss.detach())))
        return loss, stats

    monkeypatch.setattr(update_mod, "policy_loss", recording)
    return calls


def _snapshot(policy, adapter):
    return {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" in n and f".{adapter}." in n}


@pytest.mark.parametrize("arch", ARCHS)
def test_first_minibatch_ratio_is_one_then_policy_moves(arch, request, tiny_config, spy_policy_loss):
    policy = fresh_policy(request, tiny_config, arch)
    batch = make_batch(policy, tiny_config)
    stats, _ = run_update(policy, batch, lr=1e-2, epochs=2, mini_batch_size=4)
    assert len(spy_policy_loss) == 4  # 2 epochs x 2 minibatches
    first = spy_policy_loss[0]
    # Dropout off and the same weights as the rollout: the new policy is the old one, exactly.
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert first["ratio_max"] == pytest.approx(1.0, abs=1e-6)
    assert first["approxkl"] < 1e-12 and first["clipfrac"] == 0.0
    # After updates the ratio moves away from 1.
    assert max(c["approxkl"] for c in spy_policy_loss[1:]) > 1e-8
    assert stats["ppo/applied_minibatches"] == 4 and stats["ppo/skipped_minibatches"] == 0
    for key in ("ppo/loss/policy", "ppo/loss/value", "ppo/loss/total", "ppo/policy/clipfrac", "ppo/grad_norm", "ppo/val/mean"):
        assert torch.isfinite(torch.tensor(stats[key])), key


@pytest.mark.parametrize("max_grad_norm", [1.0, None])
def test_update_follows_the_advantages(tiny_t5, request, tiny_config, max_grad_norm):
    """Tokens with positive advantage become more likely, negative ones less (the sign of PPO)."""
    policy = fresh_policy(request, tiny_config, "tiny_t5")
    batch = make_batch(policy, tiny_config, seed=1)
    stats, _ = run_update(policy, batch, lr=3e-3, epochs=2, mini_batch_size=4, max_grad_norm=max_grad_norm)
    assert stats["ppo/applied_minibatches"] == 4 and stats["ppo/grad_norm"] > 0
    with torch.no_grad():
        new = forward_pass(policy, batch.rollout, with_values=True)
    mask = batch.rollout.response_mask.bool()
    delta = (new["logprobs"] - batch.old_logprobs)[mask]
    adv = batch.advantages[mask]
    assert float((adv * delta).sum()) > 0
    assert float(delta[adv > 0].mean()) > float(delta[adv < 0].mean())
    # The value head learns the returns (vf error down).
    old_err = ((batch.old_values - batch.returns)[mask] ** 2).mean()
    new_err = ((new["values"] - batch.returns)[mask] ** 2).mean()
    assert new_err < old_err


def test_guard_skips_runaway_minibatches_and_keeps_weights_finite(request, tiny_config, spy_policy_loss):
    policy = fresh_policy(request, tiny_config, "tiny_llama")
    batch = make_batch(policy, tiny_config, seed=2)
    stats, _ = run_update(policy, batch, lr=10.0, epochs=4, mini_batch_size=4)
    applied, skipped = stats["ppo/applied_minibatches"], stats["ppo/skipped_minibatches"]
    assert applied + skipped == 8 and skipped > 0 and applied >= 1  # the first (ratio 1) is always applied
    for name, p in list(policy.model.named_parameters()) + list(policy.value_head.named_parameters()):
        assert torch.isfinite(p).all(), name
    # Each skipped minibatch was one whose ratio left [1/10, 10] or whose loss was not finite.
    bad = [c for c in spy_policy_loss if not (0.1 <= c["ratio_mean"] <= 10.0) or not torch.isfinite(torch.tensor(c["loss"]))]
    assert 0 < len(bad) <= skipped  # (a non-finite gradient norm is a skip too)
    # The reported averages are over applied minibatches only: finite.
    assert all(torch.isfinite(torch.tensor(v)) for k, v in stats.items() if k.startswith("ppo/loss"))
    # And the policy still produces finite log-probs.
    with torch.no_grad():
        out = forward_pass(policy, batch.rollout, with_values=True)
    assert torch.isfinite(out["values"]).all()


def test_all_skipped_gives_counts_only(request, tiny_config):
    """A ratio threshold that even ratio 1 violates cannot exist (> 1 is enforced), so force it by
    corrupting the old log-probs: every minibatch is then a runaway and nothing is applied."""
    policy = fresh_policy(request, tiny_config, "tiny_t5")
    batch = make_batch(policy, tiny_config, seed=3)
    before = _snapshot(policy, POLICY_ADAPTER)
    head_before = policy.value_head.weight.detach().clone()
    batch.old_logprobs = batch.old_logprobs - 50.0  # ratio = e^50 on every token
    stats, optimizer = run_update(policy, batch, lr=1e-2, epochs=2)
    assert stats["ppo/applied_minibatches"] == 0 and stats["ppo/skipped_minibatches"] == 4
    assert set(stats) == {"ppo/applied_minibatches", "ppo/skipped_minibatches"}
    for name, t in _snapshot(policy, POLICY_ADAPTER).items():
        assert torch.equal(t, before[name])
    assert torch.equal(policy.value_head.weight, head_before)
    assert not optimizer.state  # no step was taken


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_and_base_weights_never_change(arch, request, tiny_config):
    policy = fresh_policy(request, tiny_config, arch)
    batch = make_batch(policy, tiny_config, seed=4)
    reference = _snapshot(policy, REFERENCE_ADAPTER)
    default = _snapshot(policy, POLICY_ADAPTER)
    base = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" not in n}
    run_update(policy, batch, lr=1e-2, epochs=2)
    run_update(policy, batch, lr=10.0, epochs=2)  # also when the guard has to step in
    assert any(not torch.equal(t, default[n]) for n, t in _snapshot(policy, POLICY_ADAPTER).items())
    for name, t in _snapshot(policy, REFERENCE_ADAPTER).items():
        assert torch.equal(t, reference[name]), name
    for name, p in policy.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base[name]), name
    # The reference policy still gives the rollout's starting log-probs.
    with torch.no_grad(), policy.use_adapter(REFERENCE_ADAPTER):
        ref = forward_pass(policy, batch.rollout, with_values=False)["logprobs"]
    mask = batch.rollout.response_mask.bool()
    assert_close_for_dtype(ref[mask], batch.old_logprobs[mask])


# --------------------------------------------------------------------------------------------
# Minibatch order


def test_minibatch_indices_plain_is_the_seeded_permutation():
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(5))
    batches = minibatch_indices(torch.tensor([9, 1, 9, 1, 4, 4]), 4, torch.Generator().manual_seed(5), group_by_length=False)
    assert [b.tolist() for b in batches] == [perm[:4].tolist(), perm[4:].tolist()]


def test_minibatch_indices_grouped_by_length():
    lengths = torch.tensor([9, 1, 9, 1, 4, 4, 7, 2])
    seen = set()
    for seed in range(5):
        batches = minibatch_indices(lengths, 2, torch.Generator().manual_seed(seed), group_by_length=True)
        flat = torch.cat(batches).tolist()
        assert sorted(flat) == list(range(8))  # every row once per epoch
        pairs = sorted(sorted(lengths[b].tolist()) for b in batches)
        assert pairs == [[1, 1], [2, 4], [4, 7], [9, 9]]  # neighbours in length share a minibatch
        seen.add(tuple(flat))
    assert len(seen) > 1  # minibatch order and ties stay random


def test_grouped_update_equals_plain_on_the_same_minibatches(request, tiny_config):
    """Grouping only changes which rows share a minibatch; with one minibatch of all rows the
    update is the same, cut padding or not."""
    results = []
    for group in (False, True):
        policy = fresh_policy(request, tiny_config, "tiny_t5")
        batch = make_batch(policy, tiny_config)
        optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=1e-3)
        ppo = PPOConfig(ppo_epochs=1, mini_batch_size=N, clip_ratio=0.2, clip_value=0.2, vf_coef=0.1, max_grad_norm=1.0,
                        ratio_threshold=10.0, group_by_length=group)
        ppo_update(policy, optimizer, batch, ppo, generator=torch.Generator().manual_seed(0))
        results.append(torch.cat([p.detach().flatten() for p in policy.trainable_parameters()]))
    # One Adam step of lr 1e-3: Adam divides each gradient by its own magnitude, so where a gradient is
    # near Adam's eps, float32 rounding (the padding differs) moves that element's step by up to ~1% of lr.
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-2 * 1e-3)


class _RecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps a copy of every step's gradients: what the update applied, exactly."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.grads = []

    def step(self, closure=None):
        self.grads.append([p.grad.detach().clone() for group in self.param_groups for p in group["params"]])
        return super().step(closure)


@pytest.mark.parametrize("arch", ARCHS)
def test_micro_batches_apply_the_minibatch_gradient(arch, request, tiny_config):
    """ppo.micro_batch_size cuts a minibatch into passes whose token-weighted gradients add up to the
    minibatch's: every step applies the same gradient (up to float32 rounding), the logged statistics
    are the same, and no pass holds more rows than the micro-batch."""
    policy = fresh_policy(request, tiny_config, arch)
    batch = make_batch(policy, tiny_config)
    start = [p.detach().clone() for p in policy.trainable_parameters()]
    runs = {}
    for micro in (None, 3, 1):  # 3: uneven passes of 3 and 1 rows, weighted by their response tokens
        with torch.no_grad():  # every run starts from the same weights
            for p, p0 in zip(policy.trainable_parameters(), start):
                p.copy_(p0)
        rows_per_pass = []

        def forward(sub, rows_per_pass=rows_per_pass):
            rows_per_pass.append(len(sub))
            return forward_pass(policy, sub, with_values=True)

        optimizer = _RecordingSGD(policy.trainable_parameters(), lr=1e-2)
        ppo = PPOConfig(ppo_epochs=2, mini_batch_size=4, micro_batch_size=micro, clip_ratio=0.2, clip_value=0.2, vf_coef=0.1,
                        max_grad_norm=None, ratio_threshold=10.0, group_by_length=False)
        stats = ppo_update(policy, optimizer, batch, ppo, generator=torch.Generator().manual_seed(0),
                           hooks=update_mod.UpdateHooks(forward=forward))
        runs[micro] = (optimizer.grads, stats, rows_per_pass)
    whole_grads, whole_stats, whole_rows = runs[None]
    assert whole_rows == [4] * 4 and len(whole_grads) == 4  # 2 epochs of 2 minibatches
    assert runs[3][2] == [3, 1] * 4 and runs[1][2] == [1] * 16
    for micro in (3, 1):
        grads, stats, _ = runs[micro]
        assert len(grads) == len(whole_grads)
        # Rounding follows the step's largest gradient; the backward sums over other row groups, and from the
        # second step on the weights themselves differ by that rounding (a wrong weighting would be off by ~10%).
        for step_grads, step_whole in zip(grads, whole_grads):
            assert_close_for_dtype(torch.cat([g.flatten() for g in step_grads]), torch.cat([w.flatten() for w in step_whole]), ulps=1024)
        assert stats.keys() == whole_stats.keys()
        for key, value in whole_stats.items():
            assert stats[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
