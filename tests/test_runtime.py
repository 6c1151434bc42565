"""detoxrl.runtime: process settings."""

import ctypes
import ctypes.util
import os
import subprocess
import sys

import pytest

from detoxrl import runtime


def test_quiet_openmp_keeps_an_explicit_setting(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    runtime.quiet_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    runtime.quiet_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_tensors_go_back_to_the_os():
    """After the threshold is fixed, freeing a 256 MiB tensor that was allocated as many 8 MiB
    blocks lowers the resident size again (glibc's default would keep them in its heap)."""
    code = r"""
import sys, torch
from detoxrl import runtime
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
if sys.argv[1] == "1":
    assert runtime.return_freed_memory()
# Free growing blocks first: that is what raises glibc's dynamic threshold.
for mb in (2, 4, 8, 16, 32):
    t = torch.ones(mb * 2**18); del t
base = rss()
blocks = [torch.ones(2**21) for _ in range(32)]  # 32 x 8 MiB
pin = torch.ones(2**15)  # 128 KiB kept alive above them: glibc cannot trim its heap top
held = rss()
del blocks
print(held - base, rss() - base)
"""
    out = {}
    for flag in ("0", "1"):
        res = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, env=dict(os.environ, DETOXRL_KEEP_MALLOC="0"))
        assert res.returncode == 0, res.stderr
        out[flag] = [float(x) for x in res.stdout.split()]
    assert out["1"][0] > 200  # the blocks were resident
    assert out["1"][1] < 32  # and were handed back
    assert out["0"][1] > 200  # glibc's default kept them: the setting is what made the difference


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_decoding_allocator_keeps_blocks_while_decoding_and_trims_after():
    """Inside decoding_allocator, freed 8 MiB blocks stay in the heap (the next token step reuses
    them); on leaving it, the heap is trimmed."""
    code = r"""
import torch
from detoxrl import runtime
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
with runtime.decoding_allocator() as acted:
    assert not acted  # nothing to switch without the fixed threshold
assert runtime.return_freed_memory()
base = rss()
with runtime.decoding_allocator() as acted:
    assert acted
    blocks = [torch.ones(2**21) for _ in range(32)]  # 32 x 8 MiB
    pin = torch.ones(2**15)
    held = rss()
    del blocks
    kept = rss()
after = rss()
print(held - base, kept - base, after - base)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, DETOXRL_KEEP_MALLOC="0"))
    assert res.returncode == 0, res.stderr
    held, kept, after = (float(x) for x in res.stdout.split())
    assert held > 200 and kept > 200  # freed inside: still in the heap, ready for reuse
    assert after < 64  # trimmed on leaving
