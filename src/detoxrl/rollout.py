"""The rollout stage: batched sampling and the log-prob / value passes over what was sampled.

Shapes: B prompts, P padded prompt length, T padded response length.

* Seq2seq: the encoder reads the (right-padded) prompt; the response is the decoder output.
* Causal: prompts are left-padded so every response starts at column P; position ids are built
  from the attention mask so the training forward pass sees the same positions as ``generate``.

The response mask covers the tokens up to and including the first EOS; what ``generate`` puts after
it is padding. A response that never emits EOS is marked (``ended`` False) for the optional penalty.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from detoxrl import runtime
from detoxrl.config import GenerationConfig
from detoxrl.policy import Policy, forward_pass, value_of  # noqa: F401 - forward_pass: this module's interface too
from detoxrl.sampling import one_draw_per_row


@dataclass
class Rollout:
    query_ids: torch.Tensor  # [B, P] (seq2seq: right-padded, causal: left-padded)
    query_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, T] padded after EOS
    response_mask: torch.Tensor  # [B, T] 1 on real response tokens (incl. EOS)
    ended: torch.Tensor  # [B] bool: the response emitted EOS
    queries: list[str]
    responses: list[str]  # decoded, special tokens skipped
    # Captured while sampling (``generate(..., capture=True)``), float32 [B, T]: the log-probs,
    # values and entropy of the sampling policy, so no second forward pass is needed for them.
    logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    # ``generate(..., teacher_forced=True, reference=...)``: the reference adapter's log-probs, from
    # the same computation as the policy's (float32 [B, T]).
    ref_logprobs: torch.Tensor | None = None
    # Seconds ``generate`` spent in those teacher-forced passes, not in sampling: the trainer times
    # them with the other no-grad passes (the update phase, where trl runs them too).
    pass_seconds: float = 0.0
    # The temperature the responses were decoded at: a forward pass over them divides the logits by it,
    # so that its log-probs are those of the distribution that was sampled (set once, by generate).
    temperature: float = 1.0

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, idx: torch.Tensor | list[int]) -> "Rollout":
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        il = idx_t.tolist()

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx_t]

        return Rollout(
            self.query_ids[idx_t],
            self.query_mask[idx_t],
            self.response_ids[idx_t],
            self.response_mask[idx_t],
            self.ended[idx_t],
            [self.queries[i] for i in il],
            [self.responses[i] for i in il],
            pick(self.logprobs),
            pick(self.values),
            pick(self.entropy),
            pick(self.ref_logprobs),
            temperature=self.temperature,
        )

    def trimmed(self, seq2seq: bool) -> "Rollout":
        """The same rows without the padding columns that no row needs.

        Prompt padding is on the right for seq2seq and on the left for causal models, and the
        response mask is a prefix; outputs for real tokens do not depend on dropped columns (the
        attention masks exclude them and causal position ids come from the mask).
        """
        width = int(self.query_mask.sum(1).max())
        q = slice(0, width) if seq2seq else slice(self.query_mask.shape[1] - width, None)
        t = slice(0, max(int(self.response_mask.sum(1).max()), 1))

        def cut(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[:, t]

        return Rollout(
            self.query_ids[:, q],
            self.query_mask[:, q],
            self.response_ids[:, t],
            self.response_mask[:, t],
            self.ended,
            self.queries,
            self.responses,
            cut(self.logprobs),
            cut(self.values),
            cut(self.entropy),
            cut(self.ref_logprobs),
            temperature=self.temperature,
        )


def capture_logprobs(mode: str, compute_dtype: torch.dtype) -> bool:
    """Whether ``generate`` should record the policy's log-probs, values and entropy while decoding
    (``ppo.capture_logprobs``: auto | on | off).

    Captured log-probs are only interchangeable with a teacher-forced pass in float32. In bf16 the
    decoding pass (one position at a time, against a KV cache) rounds differently: its log-probs
    were measured up to 7.7e-3 (Llama) and 2.4e-3 (T5) away from a teacher-forced pass, so a KL that
    compares them with teacher-forced reference log-probs carries a bias that grows with length,
    and the first PPO ratio is not 1. ``auto`` therefore captures in float32 only.
    """
    if mode == "on":
        return True
    if mode == "off":
        return False
    if mode == "auto":
        return compute_dtype == torch.float32
    raise ValueError(f"capture mode must be auto, on or off, got {mode!r}")


def response_mask_from_eos(response_ids: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of tokens up to and including the first EOS (all tokens when there is none)."""
    is_eos = response_ids == eos_token_id
    ended = is_eos.any(dim=1)
    # index of the first EOS, or T-1 when the response never ended
    first = torch.where(ended, is_eos.float().argmax(dim=1), torch.full_like(ended, response_ids.shape[1] - 1, dtype=torch.long))
    positions = torch.arange(response_ids.shape[1], device=response_ids.device)
    mask = (positions[None, :] <= first[:, None]).long()
    return mask, ended


def hf_generation_config(policy: Policy, decoding: GenerationConfig):
    """``decoding`` as the transformers ``GenerationConfig`` that ``model.generate`` reads."""
    from transformers import GenerationConfig as HFGenerationConfig

    base = policy.model.base_model.model.generation_config
    kwargs = dict(
        max_new_tokens=decoding.max_new_tokens,
        min_new_tokens=decoding.min_new_tokens,
        do_sample=decoding.do_sample,
        pad_token_id=policy.pad_token_id,
        eos_token_id=policy.eos_token_id,
        use_cache=True,
        return_dict_in_generate=True,
    )
    if getattr(base, "decoder_start_token_id", None) is not None:
        kwargs["decoder_start_token_id"] = base.decoder_start_token_id
    if decoding.do_sample:
        # top_k=0 and top_p=1.0 is pure sampling from the policy (the notebook's setting): the
        # log-probs of the PPO update are those of the distribution actually sampled from.
        kwargs.update(temperature=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p)
    return HFGenerationConfig(**kwargs)


@torch.inference_mode()
def generate(
    policy: Policy,
    prompts: list[list[int]],
    queries: list[str],
    decoding: GenerationConfig,
    *,
    batch_size: int = 16,
    progress: bool = False,
    adapter: str | None = None,
    capture: bool = False,
    teacher_forced: bool = False,
    reference: str | None = None,
    pass_batch_size: int | None = None,
    samples_per_prompt: int = 1,
    synced_gpus: bool = False,
) -> Rollout:
    """Sample responses for tokenized prompts in batches (KV cache on, dropout off).

    ``decoding`` holds the decoding settings (the config's ``generation`` section, or one built for an
    evaluation or for ``detoxrl summarize``); the keyword arguments are how this call runs them.

    ``samples_per_prompt`` = k > 1 returns k responses per prompt, prompt-major (rows ``i*k .. i*k+k-1``
    belong to ``prompts[i]``), and reads each prompt once: its key/value cache (causal) or encoder
    output (seq2seq) is computed for the prompt and repeated k times, so the prompt's forward pass,
    most of the cost of a short summary of a long dialogue, is paid once instead of k times.
    ``batch_size`` counts generated rows: a batch holds ``max(1, batch_size // k)`` prompts.

    ``capture=True`` also keeps, for every sampled token, the log-prob and entropy under the
    sampling distribution (raw logits / temperature) and the value of the state it was chosen in,
    read from the same decoding steps: PPO's "old" log-probs and values then cost no extra forward
    pass. They equal :func:`forward_pass`'s up to float rounding (cached vs. full attention).

    ``teacher_forced=True`` fills the same three fields from a teacher-forced pass instead, the one
    bf16 needs (see :func:`capture_logprobs`): right after a batch is decoded, :func:`forward_pass`
    runs over its responses and reuses the batch's prompt pass (seq2seq: the encoder output; causal:
    the key/value cache of the prompt's first P-1 tokens), so it costs the response positions only.
    ``reference`` (an adapter name, with ``teacher_forced``) also fills ``ref_logprobs`` with that
    adapter's log-probs by the same computation on the same batch (its own prompt pass, then the
    response pass): the KL of two equal adapters is then exactly 0, whatever the dtype.
    ``pass_batch_size`` rows go through each teacher-forced pass and each chunk of a seq2seq model's
    encoder pass, in prompt-length order, each chunk cut to its own padding; None: the whole batch.

    ``synced_gpus=True`` (DeepSpeed ZeRO-3, where each process holds a slice of the weights and every
    forward pass gathers them from all processes) keeps a process that has finished decoding running
    forward passes until all have; it needs ``capture=False`` (those extra passes are not decoding steps).
    """
    k = _checked_options(decoding, int(samples_per_prompt), capture, teacher_forced, reference, synced_gpus)
    hf_config = hf_generation_config(policy, decoding)
    policy.model.eval()
    chunks_q, chunks_r, chunks_c, chunks_ref = [], [], [], []
    pass_seconds = 0.0
    # Sort by prompt length so each generation batch carries little padding; restore order after.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    per_batch = max(1, batch_size // k)
    bar = tqdm(total=len(prompts) * k, desc="generate", unit="response", disable=not progress, leave=False)
    # The allocator keeps freed blocks for the next token step and the next pass of the batch
    # (prompt pass, teacher-forced passes): under the fixed 1 MiB threshold each activation would
    # be a fresh mapping that the kernel zeroes again (detoxrl.runtime). Handed back on exit.
    with runtime.decoding_allocator():
        for start in range(0, len(order), per_batch):
            idx = order[start : start + per_batch]
            rows = [i * k + s for i in idx for s in range(k)]
            input_ids, attention_mask, resp, stats, ref, seconds = _decode_batch(
                policy, [prompts[i] for i in idx], decoding, hf_config, k, adapter=adapter, capture=capture,
                teacher_forced=teacher_forced, reference=reference, pass_batch_size=pass_batch_size,
                synced_gpus=synced_gpus)
            chunks_q.append((rows, input_ids, attention_mask))
            chunks_r.append(resp)
            if stats is not None:
                chunks_c.append(stats)
            if ref is not None:
                chunks_ref.append(ref)
            pass_seconds += seconds
            bar.update(len(rows))
    bar.close()
    rollout = _assemble(policy, chunks_q, chunks_r, len(prompts) * k, [q for q in queries for _ in range(k)])
    _fill_stats(rollout, [q[0] for q in chunks_q], chunks_c, chunks_ref)
    rollout.pass_seconds = pass_seconds
    rollout.temperature = decoding.temperature
    return rollout


def _decode_batch(policy: Policy, batch_prompts: list[list[int]], decoding: GenerationConfig, hf_config, k: int, *,
                  adapter: str | None, capture: bool, teacher_forced: bool, reference: str | None,
                  pass_batch_size: int | None, synced_gpus: bool):
    """One batch of :func:`generate`: k responses per prompt, rows prompt-major. Returns ``(input_ids,
    attention_mask, responses, (logprobs, values, entropy) or None, reference log-probs or None, seconds of
    teacher-forced passes)``."""
    enc = policy.tokenizer.pad({"input_ids": batch_prompts}, return_tensors="pt").to(policy.device)
    prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]
    stats, ref, seconds, state = None, None, 0.0, None
    chunks = _pass_chunks(len(batch_prompts), k, pass_batch_size)
    with policy.use_adapter(adapter) if adapter else contextlib.nullcontext():
        # Outside the capture: the shared prompt pass is not a decoding step. The teacher-forced
        # passes reuse it, so then it is made for one sample per prompt too; a seq2seq encoder
        # always runs here, in chunks cut to their own padding (cheaper than the padded batch).
        share = k > 1 or teacher_forced or policy.is_seq2seq
        shared = shared_prompt_pass(policy, prompt_ids, prompt_mask, k, chunks) if share else {}
        input_ids, attention_mask = prompt_ids.repeat_interleave(k, 0), prompt_mask.repeat_interleave(k, 0)
        with (_DecodingCapture(policy, capture, decoding.temperature) as captured, _decoding_attention(policy),
              one_draw_per_row(decoding.sampler)):
            out = policy.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=hf_config,
                **shared,
                **({"synced_gpus": True} if synced_gpus else {}),
            )
        seqs = out.sequences
        resp = seqs[:, 1:] if policy.is_seq2seq else seqs[:, input_ids.shape[1] :]
        if teacher_forced:  # after the decoding context: SDPA attention, as every full pass
            t_pass = time.perf_counter()
            state = _prompt_state_after_decoding(policy, shared, out, input_ids.shape[1])
            tf = teacher_forced_pass(policy, input_ids, attention_mask, resp, state, chunks, k, decoding.temperature, True)
            stats = (tf["logprobs"], tf["values"], tf["entropy"])
            seconds += time.perf_counter() - t_pass
    if teacher_forced and reference:
        t_pass = time.perf_counter()
        with policy.use_adapter(reference):
            # The same computation as the policy's: its own prompt pass (made as the policy's was),
            # or none where the policy's could not be reused.
            ref_state = shared_prompt_pass(policy, prompt_ids, prompt_mask, k, chunks) if state else None
            ref = teacher_forced_pass(policy, input_ids, attention_mask, resp, ref_state, chunks, k,
                                      decoding.temperature, False)["logprobs"]
        seconds += time.perf_counter() - t_pass
    if capture:
        stats = captured.stats(policy, resp)
    return input_ids, attention_mask, resp, stats, ref, seconds


def _checked_options(decoding: GenerationConfig, k: int, capture: bool, teacher_forced: bool, reference: str | None,
                     synced_gpus: bool) -> int:
    """The options of :func:`generate` that cannot go together; returns k."""
    if synced_gpus and (capture or teacher_forced):
        raise ValueError("generate: synced_gpus runs extra forward passes after a batch has ended; "
                         "use capture=False and teacher_forced=False with it")
    if capture and teacher_forced:
        raise ValueError("generate: capture and teacher_forced are two ways to the same fields; choose one")
    if reference and not teacher_forced:
        raise ValueError("generate: reference log-probs come from the teacher-forced passes; set teacher_forced=True")
    if k < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {k}")
    if k > 1 and not decoding.do_sample:
        raise ValueError(f"{k} samples per prompt with greedy decoding would be {k} copies of one response")
    return k


def _fill_stats(rollout: Rollout, rows_of: list[list[int]], chunks_c: list, chunks_ref: list) -> None:
    """The per-batch log-probs, values and entropy (captured or teacher-forced) and the reference's log-probs,
    scattered back to the rollout's row order."""
    if chunks_c:
        rollout.logprobs, rollout.values, rollout.entropy = (
            _scatter_rows([c[i] for c in chunks_c], rows_of, rollout.response_ids.shape) for i in range(3)
        )
    if chunks_ref:
        rollout.ref_logprobs = _scatter_rows(chunks_ref, rows_of, rollout.response_ids.shape)


def _prompt_state_after_decoding(policy: Policy, shared: dict, out, prompt_len: int) -> dict[str, Any] | None:
    """The prompt pass a decoded batch was sampled from, for :func:`forward_pass`'s ``prompt_state``:
    a seq2seq model's encoder output, or a causal model's key/value cache cut back to the prompt's
    first P-1 positions (decoding appended to it). None where it cannot be reused: a one-token prompt
    (no shared pass), or a cache that cannot be cut back (sliding-window, linear-attention layers)."""
    if policy.is_seq2seq:
        return {"encoder_outputs": shared["encoder_outputs"]}
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache, head = getattr(out, "past_key_values", None), prompt_len - 1
    plain = type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)
    if not shared or not plain or cache.get_seq_length() < head:
        return None
    cache.crop(head - cache.get_seq_length())
    return {"past_key_values": cache}


def _pass_chunks(n_prompts: int, k: int, pass_batch_size: int | None) -> list[slice]:
    """Consecutive prompt rows (a batch is in prompt-length order) for passes of ``pass_batch_size`` rows."""
    per = n_prompts if not pass_batch_size else max(1, pass_batch_size // k)
    return [slice(i, min(i + per, n_prompts)) for i in range(0, n_prompts, per)]


def teacher_forced_pass(policy: Policy, input_ids, attention_mask, resp, state, chunks: list[slice], k: int,
                    temperature: float, policy_stats: bool) -> dict[str, torch.Tensor]:
    """:func:`forward_pass` over one decoded batch ([B, P] prompts, k rows per prompt), chunk by chunk,
    each chunk cut to its own prompt and response width, on its slice of the prompt pass ``state``
    (None: full passes). Float32 [B, T]: log-probs, and values and entropy for the policy's stats."""
    from transformers.cache_utils import DynamicCache
    from transformers.modeling_outputs import BaseModelOutput

    B, P = input_ids.shape
    keys = ("logprobs", "values", "entropy") if policy_stats else ("logprobs",)
    out = {key: torch.zeros(resp.shape, dtype=torch.float32, device=resp.device) for key in keys}
    for c in chunks:
        r = slice(c.start * k, c.stop * k)
        width = int(attention_mask[r].sum(1).max())
        q = slice(0, width) if policy.is_seq2seq else slice(P - width, P)
        rmask, ended = response_mask_from_eos(resp[r], policy.eos_token_id)
        T = max(1, int(rmask.sum(1).max()))
        sub_state = None
        if state is not None and policy.is_seq2seq:
            hidden = state["encoder_outputs"].last_hidden_state
            sub_state = {"encoder_outputs": BaseModelOutput(last_hidden_state=hidden[r, q])}
        elif state is not None and width > 1:  # the cache holds prompt positions 0..P-2, left-padded
            layers = state["past_key_values"].layers
            sub_state = {"past_key_values": DynamicCache([(x.keys[r, :, P - width : P - 1], x.values[r, :, P - width : P - 1])
                                                          for x in layers])}
        batch = Rollout(input_ids[r, q], attention_mask[r, q], resp[r, :T], rmask[:, :T], ended, [], [])
        res = forward_pass(policy, batch, temperature=temperature, with_values=policy_stats, with_entropy=policy_stats,
                           prompt_state=sub_state)
        for key in keys:
            out[key][r, :T] = res[key]
    return out


@contextlib.contextmanager
def _decoding_attention(policy: Policy):
    """On a CPU, an encoder-decoder decodes with its eager attention instead of SDPA, then switches back.

    A decoding step attends from one query position to the cache. PyTorch's CPU SDPA kernel is
    built for many query positions: with one, over 250 encoder positions (a T5 cross-attention),
    16 rows and 12 heads, it took 8.0 ms in bf16 against 1.0 ms for the eager matmul-softmax-matmul
    (one thread, AVX-512 machine). Generating 16 x 32 tokens with the W1 T5 (2 threads, quiet):
    bf16 7.2-7.5 s with SDPA, 5.8-6.6 s eager; fp32 11.4-12.3 s and 10.1-12.6 s. For causal models
    eager was slower (SmolLM2: bf16 8.7 -> 11.4 s, fp32 12.8 -> 16.1 s), so they keep SDPA, as do
    the teacher-forced passes. Models not on transformers' attention interface are left alone.
    """
    model = policy.model.base_model.model
    before = getattr(model.config, "_attn_implementation", None)
    eager_pays = policy.is_seq2seq and policy.device.type == "cpu" and before == "sdpa"
    if not eager_pays or not model._can_set_attn_implementation():
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def shared_prompt_pass(policy: Policy, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int,
                        chunks: list[slice] | None = None) -> dict[str, Any]:
    """``generate`` keyword arguments that let k samples of each prompt share one pass over it.

    Causal: the key/value cache of every prompt token but the last (generate feeds the last one to
    start decoding), with the position ids generate itself would use for left padding, repeated k
    times. Seq2seq: the encoder's output, repeated k times; with ``chunks`` (rows of the batch, in
    prompt-length order) computed chunk by chunk, each cut to its own padding, and padded back.
    ``{}`` (no sharing) for a one-token causal prompt.
    """
    model = policy.model
    if policy.is_seq2seq:
        from transformers.modeling_outputs import BaseModelOutput

        encoder, hidden = model.get_encoder(), None
        for c in chunks or [slice(0, input_ids.shape[0])]:
            width = int(attention_mask[c].sum(1).max())
            part = encoder(input_ids=input_ids[c, :width], attention_mask=attention_mask[c, :width],
                           return_dict=True).last_hidden_state
            if hidden is None:
                hidden = part.new_zeros((input_ids.shape[0], input_ids.shape[1], part.shape[-1]))
            hidden[c, :width] = part
        return {"encoder_outputs": BaseModelOutput(last_hidden_state=hidden.repeat_interleave(k, 0))}
    if input_ids.shape[1] < 2:
        return {}
    head_ids, head_mask = input_ids[:, :-1], attention_mask[:, :-1]
    position_ids = (head_mask.long().cumsum(-1) - 1).masked_fill(head_mask == 0, 1)
    out = model(input_ids=head_ids, attention_mask=head_mask, position_ids=position_ids, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)
    return {"past_key_values": cache}


class _DecodingCapture:
    """Hooks that record, at every decoding step, what PPO needs of the sampling pass.

    * the decoder stack's last hidden state at the newest position: ``hidden_states[-1]`` of a
      full forward pass, what the value head reads (a causal model's first call covers the whole
      prompt: only its last position is kept);
    * from the output layer's logits: the entropy, and the log-softmax row (at ``temperature``),
      kept for one step only: the next decoder call's input is the token that was sampled from it,
      and only that token's log-prob is stored. The last token is looked up after ``generate``.

    Raw logits are used, as :func:`forward_pass` does; so memory stays at one vocabulary row per
    prompt instead of every step's logits. Models that transform logits after the output layer
    (e.g. final soft-capping) would need ``capture=False``.
    """

    def __init__(self, policy: Policy, enabled: bool, temperature: float):
        self.enabled, self.temperature = enabled, temperature
        base = policy.model.base_model.model
        self.decoder, self.head = base.get_decoder(), base.get_output_embeddings()
        self.hidden: list[torch.Tensor] = []
        self.logprobs: list[torch.Tensor] = []
        self.entropy: list[torch.Tensor] = []
        self.pending: torch.Tensor | None = None  # log-softmax row of the last step, token unknown yet
        self.handles: list = []

    def _decoder_pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if self.pending is not None and ids is not None:
            self._take(ids[:, -1])
        return None

    def _decoder_out(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        self.hidden.append(hidden[:, -1].float())

    def _head_out(self, module, args, output):
        logp = torch.log_softmax(output[:, -1].float() / self.temperature, dim=-1)
        self.entropy.append(-(logp.exp() * logp).sum(-1))
        self.pending = logp

    def _take(self, tokens: torch.Tensor) -> None:
        self.logprobs.append(self.pending.gather(-1, tokens[:, None].to(self.pending.device)).squeeze(-1))
        self.pending = None

    def __enter__(self) -> "_DecodingCapture":
        if self.enabled:
            self.handles = [
                self.decoder.register_forward_pre_hook(self._decoder_pre, with_kwargs=True),
                self.decoder.register_forward_hook(self._decoder_out),
                self.head.register_forward_hook(self._head_out),
            ]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False

    def stats(self, policy: Policy, resp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[b, T] log-probs, values and entropy of the ``resp`` tokens just generated."""
        if self.pending is not None:
            self._take(resp[:, len(self.logprobs)])
        T = resp.shape[1]
        if not (len(self.logprobs) == len(self.hidden) == len(self.entropy) == T):
            raise RuntimeError(
                f"capture saw {len(self.hidden)} decoder calls and {len(self.entropy)} output-layer calls for {T} tokens; "
                "this model's generate does not run one decoder call per token: use capture=False"
            )
        values = value_of(policy, torch.stack(self.hidden, dim=1))
        return torch.stack(self.logprobs, dim=1), values, torch.stack(self.entropy, dim=1)


def _scatter_rows(parts: list[torch.Tensor], rows: list[list[int]], shape) -> torch.Tensor:
    full = torch.zeros(shape, dtype=torch.float32, device=parts[0].device)
    for part, idx in zip(parts, rows):
        full[torch.tensor(idx, device=full.device), : part.shape[1]] = part
    return full


def _assemble(policy: Policy, chunks_q, chunks_r, n: int, queries: list[str]) -> Rollout:
    pad = policy.pad_token_id
    P = max(q.shape[1] for _, q, _ in chunks_q)
    T = max(r.shape[1] for r in chunks_r)
    query_ids = torch.full((n, P), pad, dtype=torch.long)
    query_mask = torch.zeros((n, P), dtype=torch.long)
    response_ids = torch.full((n, T), pad, dtype=torch.long)
    for (idx, q, m), r in zip(chunks_q, chunks_r):
        idx_t = torch.tensor(idx)
        if policy.is_seq2seq:
            query_ids[idx_t, : q.shape[1]] = q.cpu()
            query_mask[idx_t, : q.shape[1]] = m.cpu()
        else:  # keep left padding: align prompts to the right edge
            query_ids[idx_t, P - q.shape[1] :] = q.cpu()
            query_mask[idx_t, P - q.shape[1] :] = m.cpu()
        response_ids[idx_t, : r.shape[1]] = r.cpu()
    response_mask, ended = response_mask_from_eos(response_ids, policy.eos_token_id)
    response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, pad))
    responses = policy.tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    responses = [r.strip() for r in responses]
    device = policy.device
    return Rollout(query_ids.to(device), query_mask.to(device), response_ids.to(device), response_mask.to(device), ended.to(device), list(queries), responses)


@torch.inference_mode()
def logprobs_and_values(
    policy: Policy,
    rollout: Rollout,
    *,
    temperature: float | None = None,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Old log-probs, values and entropy (trainable adapter) and reference log-probs, no gradient.

    What ``generate`` already recorded (``capture`` or ``teacher_forced``, and ``reference``) is
    reused, so then only what is missing runs. Rows go through in prompt-length order, each chunk
    cut to its own padding. Positions outside the response mask are 0.
    """
    captured = rollout.logprobs is not None and rollout.values is not None and rollout.entropy is not None
    # While the trainable adapter still equals the reference (before the first update) the
    # reference log-probs are the policy's own: exact, and one pass cheaper.
    same = policy.adapters_identical()
    have_ref = same or (captured and rollout.ref_logprobs is not None)
    keys = ([] if have_ref else ["ref_logprobs"]) + ([] if captured else ["logprobs", "values", "entropy"])
    out = {k: torch.zeros(rollout.response_ids.shape, dtype=torch.float32, device=rollout.response_ids.device) for k in keys}
    order = torch.argsort(rollout.query_mask.sum(1), stable=True).tolist()
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        sub = rollout.select(rows).trimmed(policy.is_seq2seq)
        T = sub.response_ids.shape[1]
        idx = torch.tensor(rows, device=rollout.response_ids.device)
        if not captured:
            cur = forward_pass(policy, sub, temperature=temperature, with_values=True, with_entropy=True)
            for k in ("logprobs", "values", "entropy"):
                out[k][idx, :T] = cur[k]
        if not have_ref:
            with policy.use_adapter("reference"):
                out["ref_logprobs"][idx, :T] = forward_pass(policy, sub, temperature=temperature, with_values=False)["logprobs"]
    if captured:
        out.update(logprobs=rollout.logprobs, values=rollout.values, entropy=rollout.entropy)
    if same:
        out["ref_logprobs"] = out["logprobs"]
    elif "ref_logprobs" not in keys:
        out["ref_logprobs"] = rollout.ref_logprobs
    # Zero outside the response mask, whichever way a value was computed.
    mask = rollout.response_mask.bool()
    return {k: torch.where(mask, v, torch.zeros((), dtype=v.dtype, device=v.device)) for k, v in out.items()}
