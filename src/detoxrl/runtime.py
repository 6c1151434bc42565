"""Process settings that make a CPU run faster or leaner; none changes a result.

* ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning. On a busy 2-core
  machine spinning threads measured 2-4x slower steps. Effective only before torch loads its
  OpenMP runtime, so the CLI sets it first thing; an explicit setting wins.
* glibc's mmap threshold fixed at 1 MiB: every tensor of 1 MiB or more gets its own mapping and
  goes back to the OS when freed. By default glibc raises the threshold as large blocks are freed
  and then keeps them in its heap, so a PPO step's peak resident memory included hundreds of MB
  of freed activations and logits (measured on W1: peak RSS 4195 MB before, 3766 MB after).
* While decoding (:func:`decoding_allocator`) the threshold is raised to 32 MiB instead: a token
  step allocates and frees the same logits, cache and activation blocks as the step before, and
  with a 1 MiB threshold each of them was a fresh mapping whose pages the kernel zeroed again on
  every step. Afterwards the 1 MiB threshold returns and ``malloc_trim`` hands the decoding heap
  back before the update allocates its activations.
* :func:`quiet_libraries`: the libraries' own warnings and progress bars off for the command line,
  which says what it does in its own lines (and turns each warning that matters into an error).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers in glibc's malloc.h
M_MMAP_THRESHOLD = -3
GLIBC_TRIM_THRESHOLD = 128 * 1024  # glibc's default M_TRIM_THRESHOLD
DECODING_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest mmap threshold on 64-bit systems
_applied: int | None = None


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def quiet_openmp() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def return_freed_memory(threshold_bytes: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold (see the module docstring); False where there is no glibc.

    ``DETOXRL_KEEP_MALLOC=1`` leaves the allocator alone. Applied once per process.
    """
    global _applied
    if os.environ.get("DETOXRL_KEEP_MALLOC") == "1":
        return False
    if _applied == threshold_bytes:
        return True
    try:
        ok = bool(_libc().mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    if ok:
        _applied = threshold_bytes
    return ok


@contextlib.contextmanager
def decoding_allocator() -> Iterator[bool]:
    """Around token-by-token decoding: freed blocks stay in glibc's heap for the next token step
    (see the module docstring); on exit the fixed threshold of :func:`return_freed_memory` returns
    and the heap is trimmed. Yields whether it acted: only where that threshold is in force."""
    fixed = _applied
    if fixed is None:
        yield False
        return
    libc = _libc()
    libc.mallopt(M_MMAP_THRESHOLD, DECODING_MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, 2 * DECODING_MMAP_THRESHOLD)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, fixed)
        libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def quiet_libraries() -> None:
    """transformers' warnings and progress bars off, and Python's user and future warnings: the command
    line prints its own one-line errors and progress."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    # This hides transformers' warnings, among them the load report of weights initialised at random
    # and the notes on tokenizers built without a vocabulary: detoxrl.modelcheck turns each of those
    # into an error of its own (check_load_report, check_tokenizer_files, check_tokenizer).
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _deepspeed_launch() -> bool:
    """``accelerate launch --config_file`` of a DeepSpeed file sets ACCELERATE_USE_DEEPSPEED."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def accelerate_cpu_flag() -> bool:
    """accelerate's ``cpu=`` for this process: True without a GPU, except under a DeepSpeed launch: with
    ``cpu=True`` accelerate quietly runs plain DDP in its place, where DeepSpeed has a CPU accelerator
    of its own (gloo, since DeepSpeed 0.14.1)."""
    import torch

    return not torch.cuda.is_available() and not _deepspeed_launch()


def accelerate_state_kwargs() -> dict:
    """``PartialState(**kwargs)`` for this process (:func:`accelerate_cpu_flag`). Under DeepSpeed on CPU
    the backend is named (gloo): accelerate finds none without a GPU and would count one process."""
    import torch

    if _deepspeed_launch() and not torch.cuda.is_available():
        return {"cpu": False, "backend": "gloo"}
    return {"cpu": accelerate_cpu_flag()}
