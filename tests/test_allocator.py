"""allocator.keep_freed_memory: glibc keeps freed blocks, so a buffer freed by one step is
reused by the next without fresh-page faults."""

import resource
import subprocess
import sys

import pytest
import torch

from n2nfunc import allocator


def _faults_touching(numel: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buf = torch.empty(numel)
    buf.fill_(1.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del buf
    return faults


@pytest.mark.skipif(allocator._glibc() is None, reason="C library is not glibc")
def test_freed_buffer_is_reused_without_page_faults():
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True  # idempotent
    numel = 6 << 20  # 24 MiB: above glibc's default mmap threshold, below the one set
    for _ in range(4):  # warm-up: an aligned allocation may first need a block a little
        _faults_touching(numel)  # larger than the one freed before it
    pages = numel * 4 // 4096  # what each round faults with glibc's default setting
    rounds = [_faults_touching(numel) for _ in range(3)]
    assert min(rounds) < pages // 10, rounds  # the default faults every page every round


REUSE_CHECK = """
import torch
from n2nfunc import allocator
assert allocator.keep_freed_memory()
numel = 24 << 20  # 96 MiB
for _ in range(4):
    buf = torch.empty(numel).fill_(7.0)
    del buf
    again = torch.empty(numel)
    print(again[numel // 2].item())
    del again
"""


@pytest.mark.skipif(allocator._glibc() is None, reason="C library is not glibc")
def test_blocks_above_the_largest_mmap_threshold_are_reused():
    """In a fresh process (a heap with no room yet), a 96 MiB buffer -- above the largest
    mmap threshold glibc takes -- comes back from the heap with its old contents, not as
    fresh zero pages mapped anew (which transparent huge pages fault in too rarely for a
    fault count to show)."""
    out = subprocess.run(
        [sys.executable, "-c", REUSE_CHECK], capture_output=True, text=True, check=True
    ).stdout.split()
    # after a first round (an aligned block may land a little above the one freed before it)
    assert out[1:] == ["7.0"] * 3, out  # mapped anew each time, it reads 0.0


def test_returns_false_without_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.keep_freed_memory() is False
    monkeypatch.setattr(allocator, "_applied", None)  # let a later call apply it for real


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc check on Linux only")
def test_glibc_found_on_linux():
    libc = allocator._glibc()
    assert libc is None or hasattr(libc, "mallopt")
