"""A process-wide setting of the C memory allocator for training and inference loops (I/O
with the C library through ctypes; no tensor math).

Every training step allocates and frees the same large buffers (activations, im2col blocks,
gradients). By default glibc hands freed memory back to the operating system -- it trims the
top of the heap and serves blocks above an adaptive threshold with mmap/munmap -- so the next
step first-touches fresh pages again, one page fault per 4 KiB. On a 2-core AMD EPYC that
cost 17 % of a float32 U-Net training step (batch 8 of 64x64: 154.6 -> 126.3 ms with
:func:`keep_freed_memory`, bench/unet_train_step.py) and 22 % of a bfloat16 one. Blocks of
32 MiB or more (glibc's largest mmap threshold) would still be mapped and unmapped each time:
large images have them (one 512 x 512 image through a 32-channel layer); so mmap is switched
off for blocks and they come from the heap too (``n2nfunc.denoise_image`` of the shipped
``unet-gaussian`` on a 1600 x 1200 image: 4.69-4.76 -> 4.37-4.47 s, peak resident size
unchanged; 2-core AMD EPYC).

:func:`keep_freed_memory` makes glibc keep freed memory for reuse: the process's resident
size stays near its peak instead of shrinking between steps. The CLI, the training scripts
and the benchmarks (for every contender alike) call it; library functions and ``Model``
never do on their own (a program using them calls it once at start).

What it costs: kept memory is reused by blocks that fit in it. A program whose work grows
(images of ever larger sizes, each leaving a small tensor alive behind its large ones) can
keep freed blocks that no later request fits, resident: blocks of 100 to 200 MiB in growing
sizes, a 4 KiB tensor kept after each, left 1.1 GiB resident against 0.23 GiB without the
setting. :func:`release_free_memory` hands the free memory back (between such jobs); the
command line runs one job of one size per process (a training run, one image to denoise).
"""

import ctypes
import ctypes.util

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

MMAP_THRESHOLD = 32 << 20  # glibc's largest: smaller blocks come from the reusable heap
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of free heap top instead of returning it
TOP_PAD = 64 << 20  # grow the heap in 64 MiB steps
MMAP_MAX = 0  # no block of its own mapped (glibc still maps heap room where brk fails)

_applied: bool | None = None


def _glibc():
    """The C library if it is glibc (has ``mallopt``), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only
        return libc if hasattr(libc, "mallopt") else None
    except (OSError, AttributeError, TypeError):
        return None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring); idempotent.

    Returns True when the setting is in effect, False where the C library is not glibc
    (macOS, musl, Windows), where nothing changes."""
    global _applied
    if _applied is None:
        libc = _glibc()
        _applied = libc is not None and all(
            libc.mallopt(param, value) == 1
            for param, value in (
                (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                (M_TOP_PAD, TOP_PAD),
                (M_MMAP_MAX, MMAP_MAX),
            )
        )
    return _applied


def release_free_memory() -> bool:
    """Hand the heap's free memory back to the operating system now (glibc's ``malloc_trim``:
    the free top of the heap and the free pages between live blocks), for a program between
    jobs of different sizes under :func:`keep_freed_memory`. Returns whether any memory was
    released; False where the C library is not glibc."""
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1
