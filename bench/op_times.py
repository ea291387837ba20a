"""Where a training step's time goes, op by op: every ATen op of one step timed on its own
(a ``TorchDispatchMode`` puts a clock around each call), summed over a few steps and
grouped by op and input shapes -- for n2nfunc or for its torch.nn contender, so the two
lists can be read side by side.

    python bench/op_times.py                                   # default network, float32
    python bench/op_times.py --contender "n2nfunc bfloat16" --batch 32
    python bench/op_times.py --contender "torch.nn float32 ch-last"
    python bench/op_times.py --unet --contender "n2nfunc float32"  # U-Net, 8 crops of 64

Why not ``torch.profiler``: on these machines it slowed the steps it recorded by 30-40%,
and unevenly -- it reported a bfloat16 im2col copy of the default network at 2.0 ms that
takes 0.4-0.5 ms when clocked alone inside the same step. Here the per-op clocks add up to
within about 10% of an unobserved step (both are printed); each op still pays a little
Python around it (about 1.5 us on a 2-core AMD EPYC: a view 0.9 us plain, 2.3 us clocked), so
ops of a few microseconds (views) read high, and a contender of many ops more than one of few
(n2nfunc's U-Net step runs about 2,700 ops, torch's 400: some 3-4 ms of its clocked "rest" is
the clock's). One contender per process, not alternated: read the tables for where the time
goes, and take ratios from the step benchmarks.

    python bench/op_times.py --unet --by site      # grouped by the n2nfunc line that ran them
    python bench/op_times.py --unet --by matmul    # each matmul shape's GFLOP/s

``--by site`` names, for each op, the innermost frame in the ``n2nfunc`` package that called
it (``kernels/s2d.py:tap_sum:180``). ``--by matmul`` lists the matrix products by shape --
(M x K) @ (K x N), batch, operand strides -- with their GFLOP/s: a library's GEMM can be much
slower at some shapes than at others of the same size (MKL's generic float32 kernels at an
output width not a multiple of 8, for one).
"""

import argparse
import collections
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parent),
]  # this tree
import train_step  # noqa: E402
import unet_train_step  # noqa: E402
from common import allocator_line  # noqa: E402

import n2nfunc  # noqa: E402
from n2nfunc import hardware  # noqa: E402
from n2nfunc.argtypes import int_range  # noqa: E402
from n2nfunc.model import DEFAULT_CONFIG  # noqa: E402

# ATen ops by kind, for the summary line (anything else counts as elementwise / reduction)
KINDS = {
    "matmul or convolution": set(
        "mm bmm addmm addmm_ baddbmm baddbmm_ matmul convolution convolution_backward".split()
    ),
    "copy": set(
        "copy_ clone contiguous zero_ fill_ new_zeros cat _to_copy flip repeat "
        "constant_pad_nd replication_pad2d replication_pad2d_backward upsample_nearest2d "
        "upsample_nearest2d_backward".split()
    ),
    "view or allocation": set(
        "slice view permute as_strided select expand t transpose reshape alias _unsafe_view "
        "new_empty empty empty_like new_ones detach unsqueeze squeeze unfold split narrow "
        "_local_scalar_dense".split()
    ),
}


def kind(op: str) -> str:
    """The KINDS entry of an op name such as ``"addmm_.default"``."""
    base = op.split(".")[0]
    return next((k for k, ops in KINDS.items() if base in ops), "elementwise or reduction")


MATMULS = {"mm", "addmm", "addmm_", "bmm", "baddbmm", "baddbmm_"}


def matmul_shape(op: str, args) -> tuple | None:
    """``(M, K, N, batch, lhs strides, rhs strides)`` of a matrix-product op's operands (the
    last two tensor arguments), else None."""
    if op.split(".")[0] not in MATMULS:
        return None
    lhs, rhs = [a for a in args if isinstance(a, torch.Tensor)][-2:]
    batch = lhs.shape[0] if lhs.dim() == 3 else 1
    m, k = lhs.shape[-2:]
    return m, k, rhs.shape[-1], batch, lhs.stride(), rhs.stride()


PACKAGE = str(Path(n2nfunc.__file__).resolve().parent)


def caller_site() -> str:
    """``file:function:line`` of the innermost frame in the n2nfunc package, or "-"."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(PACKAGE):
            name = Path(path).relative_to(PACKAGE).as_posix()
            return f"{name}:{frame.f_code.co_name}:{frame.f_lineno}"
        frame = frame.f_back
    return "-"


class OpClock(TorchDispatchMode):
    """Records ``(op, key, seconds)`` for every ATen op run inside it; the key is the input
    shapes, the n2nfunc line that ran it (``by="site"``) or the matmul's shape (``by=
    "matmul"``, other ops not recorded)."""

    def __init__(self, by: str = "op"):
        super().__init__()
        self.by = by
        self.records: list[tuple[str, str | tuple, float]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        seconds = time.perf_counter() - start
        op = str(func).removeprefix("aten.")
        key: str | tuple | None
        if self.by == "matmul":
            key = matmul_shape(op, args)
        elif self.by == "site":
            key = caller_site()
        else:
            key = str([tuple(a.shape) for a in args if isinstance(a, torch.Tensor)])
        if key is not None:
            self.records.append((op, key, seconds))
        return out


def op_table(step, steps: int, by: str = "op") -> tuple[dict, dict]:
    """``({(op, key): ms per step}, {(op, key): calls per step})`` over ``steps`` steps, keys
    as :class:`OpClock` ``by`` makes them."""
    ms: dict = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    for _ in range(steps):
        with OpClock(by) as clock:
            step()
        for op, key, seconds in clock.records:
            ms[op, key] += seconds * 1e3 / steps
            calls[op, key] += 1
    return ms, {k: c // steps for k, c in calls.items()}


def print_matmuls(step, steps: int, top: int, title: str) -> None:
    """The step's matrix products by shape, slowest first, with their GFLOP/s."""
    ms, calls = op_table(step, steps, by="matmul")
    flops = {key: 2 * math.prod(key[1][:4]) * calls[key] for key in ms}
    total_ms = sum(ms.values())
    print(
        f"{title}; matmuls: {sum(calls.values())} per step, {total_ms:.2f} ms, "
        f"{sum(flops.values()) / total_ms / 1e6:.0f} GFLOP/s"
    )
    print(f"{'ms':>8} {'calls':>6} {'GFLOP/s':>8}  op, (M x K) @ (K x N), batch, strides")
    for key, t in sorted(ms.items(), key=lambda kv: -kv[1])[:top]:
        (op, (m, k, n, b, sa, sb)) = key
        print(
            f"{t:8.3f} {calls[key]:6d} {flops[key] / t / 1e6:8.0f}  {op} ({m} x {k}) @ "
            f"({k} x {n}), batch {b}, strides {sa} {sb}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--contender", default="n2nfunc float32", help="a name as the step benches print it"
    )
    ap.add_argument("--unet", action="store_true", help="the U-Net step (depth 4, 32/64/48/24)")
    ap.add_argument("--batch", type=int_range(1), default=None, help="default: 100, U-Net 8")
    ap.add_argument("--crop", type=int_range(1), default=64, help="U-Net crop size")
    ap.add_argument("--steps", type=int_range(1), default=5)
    ap.add_argument("--threads", type=int_range(1), default=2, help="default: 2")
    ap.add_argument("--top", type=int_range(1), default=30, help="rows of the table")
    ap.add_argument(
        "--by",
        choices=("op", "site", "matmul"),
        default="op",
        help="group by op and input shapes (default), by the n2nfunc line that ran the op, or "
        "list the matrix products by shape with their GFLOP/s",
    )
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    print(hardware.describe())
    print(allocator_line())
    if args.unet:
        arch = unet_train_step.parse_arch("4:32,64,48,24")
        batch = 8 if args.batch is None else args.batch
        contenders = unet_train_step.contenders(arch, args.crop, batch, "cpu")
    else:
        batch = 100 if args.batch is None else args.batch
        contenders = train_step.contenders(DEFAULT_CONFIG, batch)
    if args.contender not in contenders:
        ap.error(f"--contender: one of {', '.join(repr(k) for k in contenders)}")
    if args.by == "matmul" and not args.contender.startswith("n2nfunc"):
        ap.error(
            f"--by matmul lists the matrix products of n2nfunc's steps; {args.contender!r} runs "
            "convolutions (see them with --by op)"
        )
    step = contenders[args.contender]
    for _ in range(10):  # warm-up: caches, allocator, weights' relayouts
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    plain = (time.perf_counter() - start) * 1e3 / args.steps
    net = "U-Net" if args.unet else "default network"
    title = f"{args.contender}, {net}, batch {batch}: one step {plain:.2f} ms unobserved"
    if args.by == "matmul":
        print_matmuls(step, args.steps, args.top, title)
        return
    ms, calls = op_table(step, args.steps, args.by)
    by_op: dict = collections.defaultdict(float)
    for (op, _), t in ms.items():
        by_op[op] += t
    print(f"{title}, ops clocked one by one {sum(ms.values()):.2f} ms ({sum(calls.values())} ops)")
    print(f"{'ms':>8} {'calls':>6}  op, " + ("input shapes" if args.by == "op" else "caller"))
    for key, t in sorted(ms.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{t:8.3f} {calls[key]:6d}  {key[0]} {key[1]}")
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])[:12]
    print("by op:", ", ".join(f"{op} {t:.2f}" for op, t in ranked))
    by_kind: dict = collections.defaultdict(float)
    ops_of_kind: collections.Counter = collections.Counter()
    for key, t in ms.items():
        by_kind[kind(key[0])] += t
        ops_of_kind[kind(key[0])] += calls[key]
    print(
        "by kind:", ", ".join(f"{k} {t:.1f} ms ({ops_of_kind[k]} ops)" for k, t in by_kind.items())
    )


if __name__ == "__main__":
    main()
