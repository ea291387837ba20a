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
(n2nfunc's U-Net step runs about 2,100 ops, torch's 400: some 3-4 ms of its clocked "rest" is
the clock's). One contender per process, not alternated: read the tables for where the time
goes, and take ratios from the step benchmarks.

    python bench/op_times.py --unet --by site      # grouped by the n2nfunc line that ran them
    python bench/op_times.py --unet --by matmul    # each matmul shape's GFLOP/s

``--by site`` names, for each op, the innermost frame in the ``n2nfunc`` package that called
it (``kernels/s2d.py:tap_sum:180``). ``--by matmul`` lists the matrix products by shape --
(M x K) @ (K x N), batch, operand strides -- with their GFLOP/s: a library's GEMM can be much
slower at some shapes than at others of the same size (MKL's generic float32 kernels at an
output width not a multiple of 8, for one).

    python bench/op_times.py --by layer            # n2nfunc against torch.nn, block by block
    python bench/op_times.py --by layer --batch 32 --against "torch.nn float32 NCHW"
    python bench/op_times.py --by layer --reference   # the reference network's blocks

``--by layer`` puts the default (or reference) network's steps side by side, alternating in
one process: each block's forward and backward (the accumulation of its gradients included),
the loss and the optimizer, for n2nfunc float32 and a torch.nn contender, with torch's time
over ours -- which blocks hold a gap that the step benchmarks show only as a whole.
(torch.nn's blocks are marked by module hooks, whose few ops of their own count in its step.)
"""

import argparse
import collections
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parent),
]  # this tree
import train_step  # noqa: E402
import unet_train_step  # noqa: E402
from common import REFERENCE_CONFIG, allocator_line  # noqa: E402

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
    shapes, the n2nfunc line that ran it (``by="site"``), the matmul's shape (``by=
    "matmul"``, other ops not recorded) or the part of the step running (``by="layer"``:
    the label that :func:`label_parts` keeps in ``LABEL``)."""

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
        elif self.by == "layer":
            key = LABEL[-1]
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


# The contenders whose network is a Sequential of blocks (bfloat16's is one wrapped layer)
OURS_BLOCKS = ("n2nfunc float32", "n2nfunc float32 CLI")

# The part of a training step now running ("2 forward", "loss", "optimizer", ...), the
# innermost last: set by the wrappers and hooks of label_parts.
LABEL = ["-"]


def _labelled(fn, label: str):
    """``fn`` run with ``label`` as the current part (the previous one restored after it)."""

    def run(*args, **kwargs):
        LABEL.append(label)
        try:
            return fn(*args, **kwargs)
        finally:
            LABEL.pop()

    return run


def label_parts(step) -> tuple[list[str], Callable[[], None]]:
    """Make the ops of ``step`` (a train_step contender, with its ``parts``) carry the part
    of the step that runs them, block by block: an n2nfunc Sequential's blocks through their
    ``forward`` and ``_pull`` (the pullback, with the gradients' accumulation), torch.nn's
    through forward pre-hooks and full backward pre-hooks (its backward pass runs in the
    autograd engine, on this thread on the CPU; each block's part lasts until the next
    block's hook, the last block's forward until the loss); the loss and the optimizer's
    calls by name. Returns the blocks' names and a function that undoes all of it."""
    net, opt = step.parts["net"], step.parts["optimizer"]
    wrapped = [(opt, "step", "optimizer"), (opt, "zero_grad", "optimizer")]
    handles = []
    if isinstance(net, torch.nn.Module):
        blocks = list(net.children())

        def enter(label):
            return lambda *_: LABEL.append(label)

        for i, m in enumerate(blocks):
            handles.append(m.register_forward_pre_hook(enter(f"{i} forward")))
            handles.append(m.register_full_backward_pre_hook(enter(f"{i} backward")))
        handles.append(blocks[-1].register_forward_hook(enter("loss")))
    else:
        blocks = net.blocks
        for i, m in enumerate(blocks):
            wrapped += [(m, "forward", f"{i} forward"), (m, "_pull", f"{i} backward")]
        loss = step.parts["loss"]
        wrapped += [(loss, "forward", "loss"), (loss, "backward", "loss")]
    names = [_block_name(i, m) for i, m in enumerate(blocks)]
    for obj, method, label in wrapped:
        setattr(obj, method, _labelled(getattr(obj, method), label))

    def undo() -> None:
        for obj, method, _ in wrapped:
            delattr(obj, method)  # the class's method again
        for handle in handles:
            handle.remove()
        del LABEL[1:]

    return names, undo


def _block_name(i: int, block) -> str:
    """``"0 Conv2d 3->48 s2"``: a block's position, kind and, for a convolution, channels
    and stride."""
    name = f"{i} {type(block).__name__}"
    if hasattr(block, "in_channels"):
        name += f" {block.in_channels}->{block.out_channels}"
    if hasattr(block, "stride"):
        name += f" s{block.stride[0]}"
    return name


def layer_table(ours, theirs, rounds: int, warmup: int = 2) -> tuple[list, list, list]:
    """``(block names, times, counts)`` of the two steps, clocked op by op in alternating
    rounds after ``warmup`` steps each with the labels on (:func:`label_parts`, undone
    after): ``times[side]`` maps a part's label to its ms in each round, ``counts[side]`` to
    its ops in a step (side 0 ``ours``, 1 ``theirs``)."""
    names, undo_ours = label_parts(ours)
    _, undo_theirs = label_parts(theirs)
    times: list = [collections.defaultdict(list), collections.defaultdict(list)]
    counts: list = [collections.Counter(), collections.Counter()]
    try:
        with warnings.catch_warnings():
            # (the first block's input needs no gradient: its hook fires at its output's)
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            for _ in range(warmup):
                ours(), theirs()
            for _ in range(rounds):
                for side, step in enumerate((ours, theirs)):
                    del LABEL[1:]
                    with OpClock("layer") as clock:
                        step()
                    ms: dict = collections.defaultdict(float)
                    ops: collections.Counter = collections.Counter()
                    for _, label, seconds in clock.records:
                        ms[label] += seconds * 1e3
                        ops[label] += 1
                    for label, t in ms.items():
                        times[side][label].append(t)
                    counts[side] = ops
    finally:
        undo_ours()
        undo_theirs()
    return names, times, counts


def print_layers(ours, theirs, names: tuple, rounds: int, title: str) -> None:
    """The two steps' clocked op time block by block (forward, backward, ops), the medians
    of ``rounds`` alternating rounds, with the ratio torch / n2nfunc of forward + backward."""
    blocks, times, counts = layer_table(ours, theirs, rounds)

    def ms(side: int, label: str) -> float:
        return statistics.median(times[side][label]) if times[side][label] else 0.0

    print(f"{title}; ops clocked one by one, in {rounds} alternating rounds (medians)")
    print(f"{'':28s} {names[0]:>27s}   {names[1]:>27s}")
    head = f"{'fwd':>8} {'bwd':>8} {'ops':>9}"
    print(f"{'block':28s} {head}   {head}   {'ratio':>6}")
    rows = [(b, [f"{i} forward", f"{i} backward"]) for i, b in enumerate(blocks)]
    rows += [("loss", ["loss", ""]), ("optimizer", ["optimizer", ""])]
    rows += [("rest", ["-", ""])] * any("-" in times[side] for side in (0, 1))
    total = [0.0, 0.0]
    for name, (fwd, bwd) in rows:
        cells = []
        for side in (0, 1):
            f, b = ms(side, fwd), ms(side, bwd)
            total[side] += f + b
            ops = counts[side][fwd] + counts[side][bwd]
            cells.append(f"{f:8.2f} {b:8.2f} {ops:9d}")
        mine = ms(0, fwd) + ms(0, bwd)
        ratio = f"{(ms(1, fwd) + ms(1, bwd)) / mine:6.2f}" if mine else f"{'-':>6}"
        print(f"{name:28s} {cells[0]}   {cells[1]}   {ratio}")
    print(
        f"{'whole step':28s} {total[0]:17.2f} {sum(counts[0].values()):9d}   "
        f"{total[1]:17.2f} {sum(counts[1].values()):9d}   {total[1] / total[0]:6.2f}"
    )
    print(
        "ratio = torch.nn time / n2nfunc time of the block (>1: n2nfunc faster); blocks are "
        "n2nfunc's; a torch block's backward includes the accumulation of its .grad"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--contender", default="n2nfunc float32", help="a name as the step benches print it"
    )
    ap.add_argument("--unet", action="store_true", help="the U-Net step (depth 4, 32/64/48/24)")
    ap.add_argument(
        "--reference",
        action="store_true",
        help="the reference network (nearest x2 + 3x3 conv upsampling, widths 32/64)",
    )
    ap.add_argument("--batch", type=int_range(1), default=None, help="default: 100, U-Net 8")
    ap.add_argument("--crop", type=int_range(1), default=None, help="U-Net crop size (64)")
    ap.add_argument("--steps", type=int_range(1), default=5)
    ap.add_argument("--threads", type=int_range(1), default=2, help="default: 2")
    ap.add_argument("--top", type=int_range(1), default=30, help="rows of the table")
    ap.add_argument(
        "--by",
        choices=("op", "site", "matmul", "layer"),
        default="op",
        help="group by op and input shapes (default), by the n2nfunc line that ran the op, "
        "list the matrix products by shape with their GFLOP/s, or compare the default (or "
        "reference) network's step block by block with --against, in alternating rounds",
    )
    ap.add_argument(
        "--against",
        default="torch.nn float32 ch-last",
        help="--by layer: the torch.nn contender (default: %(default)s)",
    )
    ap.add_argument("--rounds", type=int_range(1), default=7, help="--by layer (default: 7)")
    args = ap.parse_args()
    if args.unet and args.reference:
        ap.error("--unet and --reference: one network at a time")
    if args.crop is not None and not args.unet:
        ap.error("--crop is for --unet (the other networks train on 32 x 32 images)")
    args.crop = args.crop or 64
    if args.by == "layer" and args.unet:
        ap.error("--by layer: the default or reference network (n2nfunc's U-Net is one layer)")
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
        config = REFERENCE_CONFIG if args.reference else DEFAULT_CONFIG
        contenders = train_step.contenders(config, batch)
    if args.contender not in contenders:
        ap.error(f"--contender: one of {', '.join(repr(k) for k in contenders)}")
    if args.by == "matmul" and not args.contender.startswith("n2nfunc"):
        ap.error(
            f"--by matmul lists the matrix products of n2nfunc's steps; {args.contender!r} runs "
            "convolutions (see them with --by op)"
        )
    net = "U-Net" if args.unet else "reference network" if args.reference else "default network"
    if args.by == "layer":
        if args.contender not in OURS_BLOCKS:
            choices = " or ".join(repr(c) for c in OURS_BLOCKS)
            ap.error(f"--by layer: --contender {choices}, whose network is a Sequential")
        theirs = [k for k in contenders if k.startswith("torch")]
        if args.against not in theirs:
            ap.error(f"--against: one of {', '.join(repr(k) for k in theirs)}")
        sides = (args.contender, args.against)
        for name in sides:
            for _ in range(10):
                contenders[name]()
        print_layers(
            contenders[sides[0]], contenders[sides[1]], sides, args.rounds, f"{net}, batch {batch}"
        )
        return
    step = contenders[args.contender]
    for _ in range(10):  # warm-up: caches, allocator, weights' relayouts
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    plain = (time.perf_counter() - start) * 1e3 / args.steps
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
