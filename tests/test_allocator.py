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


MAPPED_CHECK = """
import ctypes
import torch
from n2nfunc import allocator


class Mallinfo2(ctypes.Structure):  # glibc's struct mallinfo2: ten size_t fields
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    )]


libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
assert allocator.keep_freed_memory()
before = libc.mallinfo2().hblkhd  # bytes in blocks mapped on their own (torch's import made some)
buf = torch.empty(24 << 20).fill_(7.0)  # 96 MiB
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(allocator._glibc() is None, reason="C library is not glibc")
def test_blocks_above_the_largest_mmap_threshold_come_from_the_heap():
    """In a fresh process (a heap with no room yet), a 96 MiB buffer -- above the largest
    mmap threshold glibc takes -- comes from the kept heap, not from a mapping of its own
    that freeing it would unmap (glibc's mallinfo2: no mapped bytes)."""
    libc = allocator._glibc()
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc older than 2.33 (no mallinfo2)")
    done = subprocess.run(
        [sys.executable, "-c", MAPPED_CHECK], capture_output=True, text=True, check=True
    )
    assert int(done.stdout) == 0, done.stdout  # mapped on its own: 96 MiB and more


RELEASE_CHECK = """
import os
import torch
from n2nfunc import allocator


def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


assert allocator.keep_freed_memory()
big = torch.empty(50 << 20).fill_(1.0)  # 200 MiB
pin = torch.empty(1024).fill_(1.0)  # a small block after it: the freed one is kept
del big
before = rss()
print(allocator.release_free_memory(), (before - rss()) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/statm")
@pytest.mark.skipif(allocator._glibc() is None, reason="C library is not glibc")
def test_release_free_memory_hands_a_kept_block_back():
    done = subprocess.run(
        [sys.executable, "-c", RELEASE_CHECK], capture_output=True, text=True, check=True
    )
    released, mib = done.stdout.split()
    assert released == "True" and int(mib) >= 150, done.stdout  # of the 200 MiB kept


def test_returns_false_without_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.keep_freed_memory() is False
    assert allocator.release_free_memory() is False
    monkeypatch.setattr(allocator, "_applied", None)  # let a later call apply it for real


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc check on Linux only")
def test_glibc_found_on_linux():
    libc = allocator._glibc()
    assert libc is None or hasattr(libc, "mallopt")
