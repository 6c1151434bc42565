"""detoxrl.rollout: response masks, batched generation, and log-probs aligned with what was sampled."""

import json
import shutil

import pytest
import torch

from detoxrl.config import GenerationConfig
from detoxrl.policy import load_policy
from detoxrl.prompts import build_prompts
from detoxrl.rollout import Rollout, forward_pass, generate, response_mask_from_eos, logprobs_and_values
from conftest import assert_close_for_dtype

pytestmark = pytest.mark.usefixtures("one_thread")

# T5 (encoder-decoder, right-padded prompts), Llama (rotary positions) and GPT-2 (absolute
# positions: a wrong position id for a left-padded prompt changes its output).
ARCHS = ["tiny_t5", "tiny_llama", "tiny_gpt2"]


# --------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def policies(request):
    """One loaded policy per architecture for the module (the tests here do not change weights)."""
    cache = {}

    def get(arch, tiny_config, eos_boost=None):
        key = (arch, eos_boost)
        if key not in cache:
            torch.manual_seed(0)
            policy = load_policy(tiny_config(policy=request.getfixturevalue(arch)).policy)
            if eos_boost:
                boost_eos(policy, eos_boost)
            cache[key] = policy
        return cache[key]

    return get


def boost_eos(policy, factor):
    """Scale the EOS row of the output layer so that some sampled responses end early, some not."""
    with torch.no_grad():
        policy.model.get_output_embeddings().weight[policy.eos_token_id] *= factor


def prompts_of_different_lengths(policy, tiny_config, n):
    """``n`` train prompts spread from the shortest to the longest (in token count), unsorted."""
    train = build_prompts(tiny_config().data, policy.tokenizer).train
    by_len = sorted(train, key=lambda e: len(e.input_ids))
    picks = [by_len[round(i * (len(by_len) - 1) / (n - 1))] for i in range(n)]
    order = list(range(1, n, 2)) + list(range(0, n, 2))  # not sorted by length
    examples = [picks[i] for i in order]
    lengths = [len(e.input_ids) for e in examples]
    assert len(set(lengths)) == n and max(lengths) > 1.5 * min(lengths), lengths
    return examples


def sample_mixed_endings(policy, examples, max_new_tokens=10, batch_size=8, temperature=1.0):
    """A sampled rollout in which some responses end (EOS) and some do not; returns (seed, rollout).

    The seeds are tried in order, so the result is deterministic for a given model.
    """
    ids, texts = [e.input_ids for e in examples], [e.prompt for e in examples]
    for seed in range(20):
        torch.manual_seed(seed)
        r = generate(policy, ids, texts,
                     GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=0, top_p=1.0),
                     batch_size=batch_size)
        if r.ended.any() and not r.ended.all():
            return seed, r
    raise AssertionError("no seed gave a mix of ended and unended responses; change the EOS boost")


def hf_generate(policy, input_ids, max_new_tokens, temperature, sampler="inverse_cdf"):
    """Pure sampling with plain ``model.generate`` and detoxrl's sampler (one uniform number per row),
    returning the sampled tokens and their scores."""
    from transformers import GenerationConfig

    from detoxrl.sampling import one_draw_per_row

    enc = policy.tokenizer.pad({"input_ids": input_ids}, return_tensors="pt")
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        pad_token_id=policy.pad_token_id,
        eos_token_id=policy.eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    if policy.is_seq2seq:
        kwargs["decoder_start_token_id"] = policy.model.base_model.model.config.decoder_start_token_id
    with torch.inference_mode(), one_draw_per_row(sampler):
        out = policy.model.generate(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], generation_config=GenerationConfig(**kwargs)
        )
    tokens = out.sequences[:, 1:] if policy.is_seq2seq else out.sequences[:, enc["input_ids"].shape[1] :]
    # scores are the processed logits the token was drawn from (here: logits / temperature)
    logprobs = torch.stack(out.scores, dim=1).float().log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, logprobs


# --------------------------------------------------------------------------------------------
# Response masks


def test_response_mask_from_eos_hand_written():
    EOS, PAD = 1, 0
    ids = torch.tensor(
        [
            [5, 6, EOS, PAD, PAD],  # EOS in the middle: tokens up to and including it
            [5, 6, 7, 8, 9],  # never ends: every token
            [EOS, PAD, PAD, PAD, PAD],  # EOS first: the EOS alone
            [5, 6, 7, 8, EOS],  # EOS last
            [5, EOS, 7, EOS, PAD],  # two EOS: the first one ends it
            [PAD, 5, PAD, EOS, PAD],  # a pad id emitted before EOS is a real token (pad != EOS)
        ]
    )
    mask, ended = response_mask_from_eos(ids, EOS)
    assert mask.tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0],
    ]
    assert ended.tolist() == [True, False, True, True, True, True]
    assert mask.dtype == torch.long and ended.dtype == torch.bool
    # pad == EOS (a causal model without a pad token): the mask stops at the first EOS all the same.
    same = torch.tensor([[5, 6, 2, 2, 2], [2, 2, 2, 2, 2], [5, 6, 7, 8, 9]])
    mask, ended = response_mask_from_eos(same, 2)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert ended.tolist() == [True, True, False]
    # A single column.
    mask, ended = response_mask_from_eos(torch.tensor([[EOS], [7]]), EOS)
    assert mask.tolist() == [[1], [1]] and ended.tolist() == [True, False]


# --------------------------------------------------------------------------------------------
# Batched generation


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_greedy_equals_one_at_a_time(arch, policies, tiny_config):
    policy = policies(arch, tiny_config)
    examples = prompts_of_different_lengths(policy, tiny_config, 6)
    ids, texts = [e.input_ids for e in examples], [e.prompt for e in examples]
    batched = generate(policy, ids, texts, GenerationConfig(max_new_tokens=8, do_sample=False), batch_size=6)
    assert batched.queries == texts
    singles = [generate(policy, [i], [t], GenerationConfig(max_new_tokens=8, do_sample=False),
                        batch_size=1) for i, t in zip(ids, texts)]
    for k, single in enumerate(singles):
        n = int(single.response_mask.sum())
        assert int(batched.response_mask[k].sum()) == n
        assert torch.equal(batched.response_ids[k, :n], single.response_ids[0, :n]), k
        assert batched.responses[k] == single.responses[0]
        assert bool(batched.ended[k]) == bool(single.ended[0])
    # The prompts' own tokens are kept, padded on the correct side.
    for k, e in enumerate(examples):
        q, m = batched.query_ids[k], batched.query_mask[k]
        assert q[m.bool()].tolist() == e.input_ids
        if policy.is_seq2seq:  # right-padded encoder input
            assert m[: len(e.input_ids)].all() and not m[len(e.input_ids) :].any()
        else:  # left-padded: the response starts right after the last prompt token
            assert m[-len(e.input_ids) :].all() and not m[: -len(e.input_ids)].any()
    # Meaningful only if the output depends on the prompt (else padding bugs could hide).
    assert len({tuple(s.response_ids[0].tolist()) for s in singles}) >= 4
    # Mini-batches of 4 (so two batches of different padded widths) give the same again.
    mixed = generate(policy, ids, texts, GenerationConfig(max_new_tokens=8, do_sample=False), batch_size=4)
    assert mixed.responses == batched.responses
    assert torch.equal(mixed.response_mask, batched.response_mask)


@pytest.mark.parametrize("arch", ARCHS)
def test_k_samples_share_one_prompt_pass_and_equal_expanded_prompts(arch, policies, tiny_config):
    """samples_per_prompt=k reads each prompt once (its cache or encoder output is repeated k times)
    and gives what k copies of the prompt give: top_k=1 makes sampling deterministic, so every one of
    the k responses is the greedy response of its prompt, prompt-major."""
    policy = policies(arch, tiny_config)
    examples = prompts_of_different_lengths(policy, tiny_config, 5)
    ids, texts = [e.input_ids for e in examples], [e.prompt for e in examples]
    greedy = generate(policy, ids, texts, GenerationConfig(max_new_tokens=8, do_sample=False), batch_size=5)
    k = 3
    # Spy on what reads the prompts (the encoder, or the causal decoder on more than one token): it
    # must see each prompt once, i.e. never more rows than there are prompts in a batch (7 // 3 = 2).
    base = policy.model.base_model.model
    reader = base.get_encoder() if policy.is_seq2seq else base.get_decoder()
    prompt_reads: list[int] = []

    def spy(module, args, kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is not None and (policy.is_seq2seq or x.shape[1] > 1):
            prompt_reads.append(x.shape[0])

    handle = reader.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        shared = generate(policy, ids, texts, GenerationConfig(max_new_tokens=8, do_sample=True, top_k=1),
                          batch_size=7, samples_per_prompt=k)
    finally:
        handle.remove()
    assert prompt_reads and max(prompt_reads) <= 2 and sum(prompt_reads) == 5, prompt_reads
    assert len(shared) == 5 * k and shared.queries == [t for t in texts for _ in range(k)]
    assert shared.responses == [r for r in greedy.responses for _ in range(k)]
    for i in range(5):
        n = int(greedy.response_mask[i].sum())
        for s in range(k):
            assert torch.equal(shared.response_ids[i * k + s, :n], greedy.response_ids[i, :n])
            q, m = shared.query_ids[i * k + s], shared.query_mask[i * k + s]
            assert q[m.bool()].tolist() == ids[i]
    assert len(set(greedy.responses)) >= 3  # the outputs depend on the prompt


@pytest.mark.parametrize("arch", ARCHS)
def test_k_shared_samples_capture_equals_a_full_forward_pass(arch, policies, tiny_config):
    """With a shared prompt pass, the log-probs and values recorded while sampling are still those of
    a full forward pass over prompt + response (positions and cache line up), and the k samples differ."""
    policy = policies(arch, tiny_config, eos_boost=3.0)
    examples = prompts_of_different_lengths(policy, tiny_config, 4)
    ids, texts = [e.input_ids for e in examples], [e.prompt for e in examples]
    torch.manual_seed(5)
    r = generate(policy, ids, texts, GenerationConfig(max_new_tokens=10),
                 batch_size=8, samples_per_prompt=4, capture=True)
    mask = r.response_mask.bool()
    with torch.no_grad():
        full = forward_pass(policy, r, with_values=True, with_entropy=True)
    for key in ("logprobs", "values", "entropy"):
        torch.testing.assert_close(getattr(r, key)[mask], full[key][mask], rtol=0, atol=1e-4)
    assert len(set(r.responses)) > 4  # sampled: the k responses of a prompt are not copies


def test_k_samples_with_greedy_decoding_are_refused(policies, tiny_config):
    policy = policies("tiny_llama", tiny_config)
    with pytest.raises(ValueError, match="copies of one response"):
        generate(policy, [[1, 2, 3]], ["q"], GenerationConfig(max_new_tokens=2, do_sample=False), samples_per_prompt=2)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_logprobs_equal_generate_scores(arch, temperature, policies, tiny_config):
    """The strongest alignment check: the log-probs PPO uses are those of the tokens actually sampled."""
    policy = policies(arch, tiny_config, eos_boost=3.0)
    examples = sorted(prompts_of_different_lengths(policy, tiny_config, 8), key=lambda e: len(e.input_ids))
    seed, rollout = sample_mixed_endings(policy, examples, temperature=temperature)  # some end early, some not
    torch.manual_seed(seed)
    tokens, gen_logprobs = hf_generate(policy, [e.input_ids for e in examples], 10, temperature)
    mask = rollout.response_mask.bool()
    assert tokens.shape[1] == rollout.response_ids.shape[1]
    assert torch.equal(tokens[mask], rollout.response_ids[mask])  # same samples: same RNG, same distribution
    with torch.no_grad():
        out = forward_pass(policy, rollout, temperature=temperature, with_values=True, with_entropy=True)
    assert out["logprobs"].dtype == torch.float32 and out["logprobs"].shape == rollout.response_ids.shape
    torch.testing.assert_close(out["logprobs"][mask], gen_logprobs[mask], rtol=0, atol=1e-4)
    assert out["values"].shape == rollout.response_ids.shape and torch.isfinite(out["values"][mask]).all()
    assert torch.isfinite(out["entropy"][mask]).all() and (out["entropy"][mask] >= 0).all()
    # The temperature matters: at another temperature the log-probs differ clearly.
    with torch.no_grad():
        other = forward_pass(policy, rollout, temperature=temperature + 0.5, with_values=False)["logprobs"]
    assert (other[mask] - gen_logprobs[mask]).abs().max() > 1e-2
    # The rollout knows the temperature it was sampled at, and so does every minibatch cut from it:
    # a pass that is not told one uses it.
    assert rollout.temperature == temperature and rollout.select([0, 2]).trimmed(policy.is_seq2seq).temperature == temperature
    with torch.no_grad():
        assert torch.equal(forward_pass(policy, rollout, with_values=False)["logprobs"], out["logprobs"])


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_sampler_multinomial_draws_what_plain_generate_draws(arch, policies, tiny_config):
    """generation.sampler=multinomial is torch's sampler, as before 2026-12-07; the default draws other tokens."""
    policy = policies(arch, tiny_config, eos_boost=3.0)
    examples = sorted(prompts_of_different_lengths(policy, tiny_config, 4), key=lambda e: len(e.input_ids))
    ids = [e.input_ids for e in examples]  # in generate's batch order (shortest first)
    drawn = {}
    for sampler in ("multinomial", "inverse_cdf"):
        torch.manual_seed(3)
        rollout = generate(policy, ids, [e.prompt for e in examples], GenerationConfig(max_new_tokens=6, sampler=sampler),
                           batch_size=len(ids))
        torch.manual_seed(3)
        tokens, _ = hf_generate(policy, ids, 6, 1.0, sampler)
        mask = rollout.response_mask.bool()
        assert torch.equal(tokens[mask], rollout.response_ids[mask]), sampler
        drawn[sampler] = rollout.response_ids
    assert not torch.equal(drawn["multinomial"], drawn["inverse_cdf"])


@pytest.mark.parametrize("arch", ARCHS)
def test_eos_pad_and_ended(arch, policies, tiny_config):
    policy = policies(arch, tiny_config, eos_boost=3.0)
    pad, eos = policy.pad_token_id, policy.eos_token_id
    assert pad != eos
    examples = prompts_of_different_lengths(policy, tiny_config, 8)
    max_new = 10
    _, r = sample_mixed_endings(policy, examples, max_new_tokens=max_new, batch_size=3)
    lengths = r.response_mask.sum(1)
    for k in range(len(r)):
        n = int(lengths[k])
        row = r.response_ids[k]
        assert r.response_mask[k, :n].all() and not r.response_mask[k, n:].any()  # one block, from the start
        assert (row[n:] == pad).all()  # after the response: padding
        if r.ended[k]:
            assert row[n - 1] == eos and not (row[: n - 1] == eos).any()
        else:
            assert n == max_new and not (row == eos).any()
        for special in ("</s>", "<pad>"):
            assert special not in r.responses[k]
        expected = policy.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
        assert r.responses[k] == expected


def test_pad_equal_to_eos_when_the_tokenizer_has_no_pad(tiny_llama, tiny_config, tmp_path):
    folder = tmp_path / "llama_no_pad"
    shutil.copytree(tiny_llama, folder)
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    tok_cfg.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    model_cfg = json.loads((folder / "config.json").read_text())
    model_cfg["pad_token_id"] = None
    (folder / "config.json").write_text(json.dumps(model_cfg))
    policy = load_policy(tiny_config(policy=folder).policy)
    assert policy.pad_token_id == policy.eos_token_id
    boost_eos(policy, 3.0)
    examples = prompts_of_different_lengths(policy, tiny_config, 8)
    _, r = sample_mixed_endings(policy, examples)
    for k in range(len(r)):
        n = int(r.response_mask[k].sum())
        if r.ended[k]:  # the first EOS ends it; the EOS-valued padding after it is not response
            assert r.response_ids[k, n - 1] == policy.eos_token_id and not (r.response_ids[k, : n - 1] == policy.eos_token_id).any()
    # Left padding with EOS must not shift the prompts: log-probs still match a one-prompt pass.
    with torch.no_grad():
        whole = forward_pass(policy, r, with_values=False)["logprobs"]
        for k in (0, 5):
            alone = generate_free_forward(policy, r, k)
            n = int(r.response_mask[k].sum())
            torch.testing.assert_close(whole[k, :n], alone[0, :n], rtol=0, atol=1e-4)


def generate_free_forward(policy, rollout, k):
    """forward_pass of row ``k`` alone, its prompt without padding."""
    m = rollout.query_mask[k].bool()
    n = int(rollout.response_mask[k].sum())
    single = Rollout(
        rollout.query_ids[k][m][None],
        rollout.query_mask[k][m][None],
        rollout.response_ids[k, :n][None],
        rollout.response_mask[k, :n][None],
        rollout.ended[k : k + 1],
        rollout.queries[k : k + 1],
        rollout.responses[k : k + 1],
    )
    return forward_pass(policy, single, with_values=False)["logprobs"]


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_pass_does_not_depend_on_padding(arch, policies, tiny_config):
    policy = policies(arch, tiny_config, eos_boost=3.0)
    examples = prompts_of_different_lengths(policy, tiny_config, 6)
    _, r = sample_mixed_endings(policy, examples, batch_size=6)
    with torch.no_grad():
        whole = forward_pass(policy, r, with_values=True)
        for k in range(len(r)):
            n = int(r.response_mask[k].sum())
            alone = generate_free_forward(policy, r, k)
            torch.testing.assert_close(whole["logprobs"][k, :n], alone[0, :n], rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_logprobs_and_values_batches_and_reference(arch, policies, tiny_config):
    policy = policies(arch, tiny_config)
    examples = prompts_of_different_lengths(policy, tiny_config, 6)
    torch.manual_seed(7)
    r = generate(policy, [e.input_ids for e in examples], [e.prompt for e in examples],
                 GenerationConfig(max_new_tokens=6), batch_size=6)
    scored = logprobs_and_values(policy, r, batch_size=4)  # batches of 4 and 2
    with torch.no_grad():
        whole = forward_pass(policy, r, with_values=True, with_entropy=True)
    mask = r.response_mask.bool()
    for key in ("logprobs", "values", "entropy"):
        assert_close_for_dtype(scored[key][mask], whole[key][mask])
    assert torch.equal(scored["ref_logprobs"], scored["logprobs"])  # reference = starting adapter
    assert policy.model.active_adapter == "default"
    sub = r.select([4, 1])
    assert sub.responses == [r.responses[4], r.responses[1]] and torch.equal(sub.response_ids, r.response_ids[[4, 1]])


@pytest.mark.parametrize("arch", ARCHS)
def test_values_and_logprobs_are_causal(arch, policies, tiny_config):
    """Token t's log-prob depends on the prompt and tokens <= t; its value (the state it was chosen
    in) on tokens < t only. Changing token k shows both alignments."""
    policy = policies(arch, tiny_config)
    examples = prompts_of_different_lengths(policy, tiny_config, 4)
    torch.manual_seed(9)
    r = generate(policy, [e.input_ids for e in examples], [e.prompt for e in examples],
                 GenerationConfig(max_new_tokens=8, min_new_tokens=8), batch_size=4)
    assert (r.response_mask.sum(1) >= 6).all()
    k = 3
    changed = r.response_ids.clone()
    changed[:, k] = torch.where(changed[:, k] == 100, 101, 100)  # another ordinary token
    other = Rollout(r.query_ids, r.query_mask, changed, r.response_mask, r.ended, r.queries, r.responses)
    with torch.no_grad():
        a = forward_pass(policy, r, with_values=True)
        b = forward_pass(policy, other, with_values=True)
    assert_close_for_dtype(a["logprobs"][:, :k], b["logprobs"][:, :k])
    assert_close_for_dtype(a["values"][:, : k + 1], b["values"][:, : k + 1])
    assert ((a["logprobs"][:, k] - b["logprobs"][:, k]).abs() > 1e-4).all()
    assert ((a["values"][:, k + 1] - b["values"][:, k + 1]).abs() > 1e-6).all()


# --------------------------------------------------------------------------------------------
# Captured log-probs / values (no second forward pass) and trimmed padding


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("arch", ARCHS)
def test_capture_equals_a_full_forward_pass(arch, temperature, policies, tiny_config):
    """What generate(capture=True) records while sampling is what forward_pass computes afterwards."""
    policy = policies(arch, tiny_config, eos_boost=3.0)
    examples = prompts_of_different_lengths(policy, tiny_config, 8)
    ids, texts = [e.input_ids for e in examples], [e.prompt for e in examples]
    torch.manual_seed(3)
    plain = generate(policy, ids, texts, GenerationConfig(max_new_tokens=10, temperature=temperature), batch_size=3)
    torch.manual_seed(3)
    r = generate(policy, ids, texts, GenerationConfig(max_new_tokens=10, temperature=temperature),
                 batch_size=3, capture=True)
    assert torch.equal(plain.response_ids, r.response_ids)  # capturing does not change the samples
    assert plain.logprobs is None and r.logprobs.shape == r.response_ids.shape
    mask = r.response_mask.bool()
    assert r.ended.any() and not r.ended.all()  # rows of different lengths across 3 chunks
    with torch.no_grad():
        full = forward_pass(policy, r, temperature=temperature, with_values=True, with_entropy=True)
    for key in ("logprobs", "values", "entropy"):
        torch.testing.assert_close(getattr(r, key)[mask], full[key][mask], rtol=0, atol=1e-4)
    # logprobs_and_values reuses them: only the reference pass runs, and the result is the same.
    scored = logprobs_and_values(policy, r, temperature=temperature, batch_size=3)
    rescored = logprobs_and_values(policy, plain, temperature=temperature, batch_size=3)
    for key in ("logprobs", "values", "entropy", "ref_logprobs"):
        torch.testing.assert_close(scored[key], rescored[key], rtol=0, atol=1e-4)
        assert (scored[key][~mask] == 0).all()


@pytest.mark.parametrize("k, pass_rows", [(1, None), (2, None), (1, 2), (2, 4)])
@pytest.mark.parametrize("arch", ARCHS)
def test_teacher_forced_stats_equal_a_full_forward_pass(arch, k, pass_rows, policies, tiny_config):
    """generate(teacher_forced=True) runs forward_pass right after each decoded batch, reusing the
    batch's prompt pass (encoder output, or the prompt's key/value cache cut back to P-1 positions):
    the same log-probs, values and entropy as a full pass over prompt and response, and the same
    samples as a plain generate."""
    policy = policies(arch, tiny_config, eos_boost=3.0)
    examples = prompts_of_different_lengths(policy, tiny_config, 6)
    ids, texts = [e.input_ids for e in examples], [e.prompt for e in examples]
    decoding = GenerationConfig(max_new_tokens=10, temperature=0.7)
    torch.manual_seed(3)
    plain = generate(policy, ids, texts, decoding, batch_size=4, samples_per_prompt=k)
    torch.manual_seed(3)
    r = generate(policy, ids, texts, decoding, batch_size=4, samples_per_prompt=k, teacher_forced=True,
                 pass_batch_size=pass_rows)  # chunks of pass_rows rows, each cut to its own padding
    assert torch.equal(plain.response_ids, r.response_ids)
    assert r.ref_logprobs is None  # no reference asked for
    mask = r.response_mask.bool()
    assert r.ended.any() and not r.ended.all()
    with torch.no_grad():
        full = forward_pass(policy, r, temperature=0.7, with_values=True, with_entropy=True)
    for key in ("logprobs", "values", "entropy"):
        assert_close_for_dtype(getattr(r, key)[mask], full[key][mask])


@pytest.mark.parametrize("pass_rows", [None, 2])
@pytest.mark.parametrize("arch", ARCHS)
def test_teacher_forced_reference_is_the_same_computation(arch, pass_rows, policies, tiny_config):
    """reference= runs the reference adapter's prompt and response passes as the policy's were run:
    with equal adapters the two log-probs are bitwise equal; with a moved adapter the reference
    log-probs are those of a full reference pass."""
    policy = policies(arch, tiny_config, eos_boost=3.0)
    examples = prompts_of_different_lengths(policy, tiny_config, 6)
    ids, texts = [e.input_ids for e in examples], [e.prompt for e in examples]
    decoding = GenerationConfig(max_new_tokens=8)
    torch.manual_seed(4)
    r = generate(policy, ids, texts, decoding, batch_size=4, teacher_forced=True, reference="reference",
                 pass_batch_size=pass_rows)
    mask = r.response_mask.bool()
    assert torch.equal(r.logprobs[mask], r.ref_logprobs[mask])
    lora_b = [p for n, p in policy.model.named_parameters() if "lora_B" in n and ".default." in n]
    try:
        with torch.no_grad():
            for p in lora_b:
                p.add_(torch.randn_like(p))
        torch.manual_seed(4)
        moved = generate(policy, ids, texts, decoding, batch_size=4, teacher_forced=True, reference="reference",
                         pass_batch_size=pass_rows)
        mask = moved.response_mask.bool()
        with torch.no_grad(), policy.use_adapter("reference"):
            ref = forward_pass(policy, moved, with_values=False)["logprobs"]
        assert_close_for_dtype(moved.ref_logprobs[mask], ref[mask])
        assert not torch.allclose(moved.logprobs[mask], moved.ref_logprobs[mask])
        # logprobs_and_values takes both from the rollout: no pass is left to run.
        scored = logprobs_and_values(policy, moved, batch_size=4)
        assert torch.equal(scored["ref_logprobs"][mask], moved.ref_logprobs[mask])
        assert torch.equal(scored["logprobs"][mask], moved.logprobs[mask])
    finally:
        policy.copy_adapter("reference", "default")
    assert policy.adapters_identical()


def test_generate_rejects_conflicting_log_prob_sources(policies, tiny_config):
    policy = policies("tiny_t5", tiny_config)
    ex = prompts_of_different_lengths(policy, tiny_config, 2)
    args = (policy, [e.input_ids for e in ex], [e.prompt for e in ex], GenerationConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match="choose one"):
        generate(*args, capture=True, teacher_forced=True)
    with pytest.raises(ValueError, match="set teacher_forced=True"):
        generate(*args, reference="reference")
    with pytest.raises(ValueError, match="synced_gpus"):
        generate(*args, teacher_forced=True, synced_gpus=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_trimmed_rows_give_the_same_outputs(arch, policies, tiny_config):
    policy = policies(arch, tiny_config, eos_boost=3.0)
    examples = prompts_of_different_lengths(policy, tiny_config, 8)
    _, r = sample_mixed_endings(policy, examples)
    rows = [0, 2]  # a subset whose prompts and responses are shorter than the widest row
    sub = r.select(rows)
    cut = sub.trimmed(policy.is_seq2seq)
    assert cut.query_ids.shape[1] == int(sub.query_mask.sum(1).max()) < r.query_ids.shape[1]
    assert cut.response_ids.shape[1] == int(sub.response_mask.sum(1).max())
    for k in range(len(rows)):  # the real tokens survive the cut
        assert cut.query_ids[k][cut.query_mask[k].bool()].tolist() == examples[rows[k]].input_ids
    with torch.no_grad():
        a = forward_pass(policy, sub, with_values=True)
        b = forward_pass(policy, cut, with_values=True)
    T, mask = cut.response_ids.shape[1], cut.response_mask.bool()
    for key in ("logprobs", "values"):
        assert_close_for_dtype(a[key][:, :T][mask], b[key][mask])


@pytest.mark.parametrize("arch", ["tiny_t5", "tiny_llama"])
def test_reference_pass_runs_once_the_adapters_differ(arch, policies, tiny_config):
    policy = policies(arch, tiny_config)
    examples = prompts_of_different_lengths(policy, tiny_config, 6)
    torch.manual_seed(5)
    r = generate(policy, [e.input_ids for e in examples], [e.prompt for e in examples],
                 GenerationConfig(max_new_tokens=6), batch_size=4, capture=True)
    assert policy.adapters_identical()
    lora_b = [p for n, p in policy.model.named_parameters() if "lora_B" in n and ".default." in n]
    try:
        with torch.no_grad():
            for p in lora_b:  # the trainable adapter moves away from the reference
                p.add_(torch.randn_like(p))
        assert not policy.adapters_identical()
        scored = logprobs_and_values(policy, r, batch_size=4)  # sorted, trimmed chunks of 4 and 2
        with torch.no_grad(), policy.use_adapter("reference"):
            ref = forward_pass(policy, r, with_values=False)["logprobs"]
        mask = r.response_mask.bool()
        assert_close_for_dtype(scored["ref_logprobs"][mask], ref[mask])
        with torch.no_grad():
            moved = forward_pass(policy, r, with_values=False)["logprobs"]
        assert (scored["ref_logprobs"][mask] - moved[mask]).abs().max() > 1e-3  # the reference, not the moved policy
    finally:
        policy.copy_adapter("reference", "default")
    assert policy.adapters_identical()


def test_rollout_does_not_depend_on_the_losses():
    """Sampling and the policy's forward pass read log-probs and entropy through detoxrl.tokenstats, not
    through the PPO losses."""
    import ast
    import inspect

    import detoxrl.policy
    import detoxrl.rollout

    def imported(module) -> set:
        return {node.module for node in ast.walk(ast.parse(inspect.getsource(module))) if isinstance(node, ast.ImportFrom)}

    assert "detoxrl.tokenstats" in imported(detoxrl.policy)
    assert "detoxrl.losses" not in imported(detoxrl.policy) | imported(detoxrl.rollout)
