"""What the machine offers (I/O: reads /proc/cpuinfo, asks torch about CUDA and MKL).

bfloat16 pays off only where the matmul units take it natively: on x86 CPUs the flags
``amx_bf16`` (Intel AMX) or ``avx512_bf16`` (AVX512-BF16, e.g. AMD Zen 4), on Arm CPUs the
feature ``bf16`` (Neoverse V1 / V2: Graviton 3 / 4); on CUDA GPUs compute capability 8.0 or
newer. Elsewhere torch emulates it, usually slower than float32. Where the CPU's features
cannot be read (no /proc/cpuinfo: macOS, Windows) the answer is "unknown", not "no".
Native units need not beat float32 either: an Intel Xeon with AVX512-BF16 but no AMX runs
bfloat16 matmuls slower than MKL's AVX-512 float32 ones (:func:`bfloat16_no_faster` times it).
"""

import ctypes
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


@lru_cache(maxsize=1)
def _cpuinfo() -> dict:
    """First processor's fields of /proc/cpuinfo ({} where there is none, e.g. macOS)."""
    fields: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name (``"unknown CPU"`` when the OS does not say)."""
    return _cpuinfo().get("model name", "unknown CPU")


def cpu_flags() -> set:
    """The CPU's feature flags: x86's ``flags``, Arm's ``Features`` (empty when unknown)."""
    info = _cpuinfo()
    return set((info.get("flags", "") + " " + info.get("Features", "")).split())


def cpu_flags_known() -> bool:
    """Whether the OS lists the CPU's features (Linux's /proc/cpuinfo)."""
    return bool(cpu_flags())


def native_bfloat16(device="cpu") -> bool | None:
    """Whether ``device`` multiplies bfloat16 matrices natively; None for a CPU whose features
    cannot be read here."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(cpu_flags() & set(BF16_CPU_FLAGS)) if cpu_flags_known() else None
    return False


def bfloat16_unknown(device="cpu") -> str | None:
    """One line where it cannot be told whether ``device`` has native bfloat16, else None."""
    if native_bfloat16(device) is not None:
        return None
    return (
        f"cannot tell whether this CPU ({cpu_model()}) multiplies bfloat16 natively (its "
        "features are not listed here); where it does not, bfloat16 is emulated and slower "
        "than float32"
    )


def bfloat16_problem(device="cpu") -> str | None:
    """One line explaining why bfloat16 would be slow on ``device``, or None if it is native
    or that cannot be told (:func:`bfloat16_unknown`)."""
    if native_bfloat16(device) is not False:
        return None
    device = torch.device(device)
    if device.type == "cpu":
        return (
            f"this CPU ({cpu_model()}) has no native bfloat16 matmul (needs one of the flags "
            f"{', '.join(BF16_CPU_FLAGS)}); bfloat16 would be emulated and slower than float32"
        )
    return f"device {device} has no native bfloat16 matmul; bfloat16 would be slower than float32"


def bfloat16_speedup(repeats: int = 5) -> float:
    """How many times faster a bfloat16 matmul runs than the same float32 one on this CPU
    (medians of ``repeats`` interleaved timings of a (2048 x 576) @ (576 x 64) product, the
    size of a 3 x 3, 64-channel convolution's im2col; in torch's threads). Native bfloat16
    units need not beat float32: without AMX, AVX512-BF16 runs about as fast as MKL's
    AVX-512 float32 kernels, or slower."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"bfloat16_speedup: repeats must be a positive int, got {repeats!r}")
    times: dict = {torch.float32: [], torch.bfloat16: []}
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2048, 576, generator=g), torch.rand(576, 64, generator=g)
    operands = {dt: (a.to(dt), b.to(dt)) for dt in times}
    for _ in range(repeats + 1):  # the first round warms both up
        for dt, (x, w) in operands.items():
            start = time.perf_counter()
            x.matmul(w)
            times[dt].append(time.perf_counter() - start)
    median = {dt: sorted(t[1:])[repeats // 2] for dt, t in times.items()}
    return median[torch.float32] / median[torch.bfloat16]


@lru_cache(maxsize=1)
def bfloat16_no_faster() -> str | None:
    """One line where this CPU has native bfloat16 but measures its bfloat16 matmuls no faster
    than float32 ones (:func:`bfloat16_speedup` below 1.1), else None (I/O: it times two
    matmuls, about 0.1 s, once per process)."""
    if not native_bfloat16("cpu"):
        return None
    speedup = bfloat16_speedup()
    if speedup >= 1.1:
        return None
    have = " ".join(f for f in BF16_CPU_FLAGS if f in cpu_flags())
    return (
        f"this CPU ({cpu_model()}; {have}) multiplies bfloat16 natively, but a bfloat16 "
        f"matmul ran at {speedup:.2f}x the speed of the float32 one here (less than 1.1x), so "
        "a network in bfloat16 will likely run no faster than in float32, or slower"
    )


# MKL's vendor checks: both must answer 1 for it to take its Intel code paths (a library
# preloaded with only the second leaves MKL on its generic kernels, with only the first on SSE2).
MKL_VENDOR_CHECKS = ("mkl_serv_intel_cpu", "mkl_serv_intel_cpu_true")


def mkl_intel_paths() -> bool | None:
    """Whether torch's MKL runs its Intel code paths (its AVX-512 float32 GEMM kernels): True
    on Intel CPUs; elsewhere True only where its vendor checks (MKL_VENDOR_CHECKS) answer 1 --
    on AMD CPUs they do not, and MKL falls back to generic kernels even where the CPU has
    AVX-512 --; None where torch has no MKL, off Linux, or where the checks cannot be asked.

    Each check is asked where MKL asks it: first in the process's global symbols (where a
    library preloaded with ``LD_PRELOAD`` answers it, see ``bench/mkl_on_amd.sh``), then in
    torch's own library."""
    if not torch.backends.mkl.is_available() or not sys.platform.startswith("linux"):
        return None
    if _cpuinfo().get("vendor_id") == "GenuineIntel":
        return True
    answers = [_ask_mkl(name) for name in MKL_VENDOR_CHECKS]
    return None if None in answers else all(a == 1 for a in answers)


def _ask_mkl(name: str) -> int | None:
    """The answer of MKL's vendor check ``name`` (a function of no arguments returning an
    int), or None where no library of the process has it."""
    libraries = [None] + sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.so*"))
    for library in libraries:
        try:
            check = getattr(ctypes.CDLL(None if library is None else str(library)), name)
        except (OSError, AttributeError, TypeError):
            continue
        check.restype = ctypes.c_int
        return check()
    return None


def mkl_problem() -> str | None:
    """One line saying that MKL withholds its AVX-512 kernels on this CPU, or None."""
    if mkl_intel_paths() is not False or "avx512f" not in cpu_flags():
        return None
    return (
        f"MKL runs its generic float32 GEMM kernels on this non-Intel CPU ({cpu_model()}), "
        "although it has AVX-512; the source tree's bench/mkl_on_amd.sh runs a command with "
        "its AVX-512 ones (float32 training 1.1-1.3x faster on a Zen 4 EPYC, 1.5-2x on a "
        "Zen 5; the source tree's docs/performance.md, 'MKL on AMD CPUs')"
    )


def describe() -> str:
    """One line for benchmark headers: CPU model, cores torch uses, the flags that matter."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
    have = [f for f in wanted + ("bf16",) if f in cpu_flags()]
    flags = " ".join(have) or "none of " + " ".join(wanted) if cpu_flags_known() else "unknown"
    native = {True: "yes", False: "no", None: "unknown"}[native_bfloat16("cpu")]
    return (
        f"CPU {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"flags: {flags}; native bfloat16: {native}; "
        f"MKL code path: {_mkl_path()}"
    )


def _mkl_path() -> str:
    if not torch.backends.mkl.is_available():
        return "no MKL"
    paths = mkl_intel_paths()
    if paths is None:
        return "unknown"
    return "Intel (AVX-512 where the CPU has it)" if paths else "generic"
