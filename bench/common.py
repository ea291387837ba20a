"""Shared pieces of the benchmarks: the required network built from the same weights in
n2nfunc and in torch.nn, the machine header, GEMM peaks, and timing helpers.

Fairness rules every script follows: torch runs eager (no torch.compile) on the same
threads; it is timed in NCHW and in channels_last (the faster is the reference); mixed
precision on the torch side is ``torch.autocast("cpu", dtype=torch.bfloat16)``; contenders
alternate within one process and each figure is a median over >= 5 rounds."""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

import n2nfunc as nf
from n2nfunc import allocator, hardware
from n2nfunc.model import DEFAULT_CONFIG, build_network

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def variant_config(variant: str, widths, kernel: int = 3) -> dict:
    return {
        **DEFAULT_CONFIG,
        "widths": tuple(widths),
        "kernel": kernel,
        "upsampling": "nearest" if variant == "nearest" else "transpose",
    }


# The reference network of the benchmarks: nearest x2 + 3x3 conv upsampling, widths 32/64
REFERENCE_CONFIG = variant_config("nearest", (32, 64), 3)


def n2nfunc_net(config: dict, seed: int = 0):
    """The class-wrapper network (Sequential) for a Model config."""
    return build_network(config, torch.Generator().manual_seed(seed))


def torch_net(config: dict, state: dict) -> nn.Sequential:
    """The same network in torch.nn, loaded with n2nfunc's weights (``state_dict`` keys agree
    except for the nearest variant's inner Sequential)."""
    w1, w2 = config["widths"]
    k = config["kernel"]
    p = (k - 1) // 2
    if config["upsampling"] == "nearest":

        def up(cin, cout):
            return nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(cin, cout, k, 1, p))
    else:

        def up(cin, cout):
            return nn.ConvTranspose2d(cin, cout, k, 2, p, 2 + 2 * p - k)

    net = nn.Sequential(
        nn.Conv2d(3, w1, k, 2, p),
        nn.ReLU(),
        nn.Conv2d(w1, w2, k, 2, p),
        nn.ReLU(),
        up(w2, w1),
        nn.ReLU(),
        up(w1, 3),
        nn.Sigmoid(),
    )
    with torch.no_grad():
        for param, value in zip(net.parameters(), state.values()):
            param.copy_(value)
    return net


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(contenders: dict, warmup: int, repeats: int, rounds: int = 5) -> dict:
    """Median seconds per call of each contender, measured in alternating rounds so that
    machine noise hits all of them alike (:func:`interleaved_rounds`)."""
    samples = interleaved_rounds(contenders, warmup, repeats, rounds)
    return {name: statistics.median(v) for name, v in samples.items()}


def interleaved_rounds(contenders: dict, warmup: int, repeats: int, rounds: int = 5) -> dict:
    """Each contender's seconds per call in each of ``rounds`` alternating rounds (a list per
    contender, round by round); each round starts one contender further on, so that none
    always follows the same one (whose data it would find in, or evict from, the caches)."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    names = list(contenders)
    samples: dict = {name: [] for name in names}
    for r in range(rounds):
        first = r % len(names)
        for name in names[first:] + names[:first]:
            samples[name].append(median_time(contenders[name], repeats))
    return samples


def ratio_spread(slow: list, fast: list) -> str:
    """The middle half of the per-round ratios ``slow[i] / fast[i]`` (times taken in the same
    round, so a busy moment of the machine slows both), as ``"q1-q3"``: how far one run's
    median ratio can be trusted on a shared machine."""
    ratios = sorted(a / b for a, b in zip(slow, fast))
    if len(ratios) < 2:
        return f"{ratios[0]:.2f}-{ratios[0]:.2f}"
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"{q1:.2f}-{q3:.2f}"


def torch_device(text: str) -> str:
    """A ``--device`` that torch can allocate on (``cuda`` only where CUDA is)."""
    try:
        torch.empty(0, device=text)
    except (RuntimeError, AssertionError) as e:
        raise argparse.ArgumentTypeError(str(e).splitlines()[0]) from None
    return text


def synced(fns: dict, device: str) -> dict:
    """``fns`` whose calls wait for the device to finish (CUDA runs asynchronously: without
    this a timer would measure only the launches)."""
    if torch.device(device).type != "cuda":
        return fns
    return {k: (lambda f=f: (f(), torch.cuda.synchronize(device))[0]) for k, f in fns.items()}


def strict_float32(device: str) -> bool:
    """On a CUDA ``device``, turn TF32 off in cuDNN and cuBLAS, so that float32 means IEEE
    float32 on both sides (cuDNN's convolutions default to TF32); True if CUDA."""
    if torch.device(device).type != "cuda":
        return False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    return True


def gpu_line(device: str) -> str:
    return (
        f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}); float32 is "
        "IEEE float32 on both sides (TF32 off in cuDNN and cuBLAS)"
    )


def cuda_peak_bytes(fn, device: str) -> int:
    """The peak of CUDA memory allocated during one call of ``fn`` above what was allocated
    before it (torch's caching allocator statistics)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def matmul_peak(
    threads: int, dtype=torch.float32, size: int = 2048, repeats: int = 5, device: str = "cpu"
) -> float:
    """Measured matmul GFLOP/s of ``dtype`` at this thread count (the practical peak)."""
    torch.set_num_threads(threads)
    a = torch.randn(size, size).to(device=device, dtype=dtype)
    b = torch.randn(size, size).to(device=device, dtype=dtype)
    mm = synced({"mm": lambda: a @ b}, device)["mm"]
    mm()
    return 2 * size**3 / median_time(mm, repeats) / 1e9


def allocator_line() -> str:
    """Apply :func:`n2nfunc.allocator.keep_freed_memory` (for every contender alike, as the
    CLI and ``Model`` do) and say whether it took effect."""
    kept = allocator.keep_freed_memory()
    return "allocator: glibc keeps freed memory (all contenders)" if kept else "allocator: default"


def machine_lines(device: str = "cpu", precision: str = "float32") -> str:
    """The machine line of a script that trains (CPU, flags, threads), and a NOTE where
    bfloat16 would be emulated there or cannot be told to be native."""
    lines = [hardware.describe()]
    if precision == "bfloat16":
        for note in (hardware.bfloat16_problem(device), hardware.bfloat16_unknown(device)):
            if note:
                lines.append(f"NOTE: {note}")
    return "\n".join(lines)


def header(threads: int, device: str = "cpu") -> dict:
    """Print the machine (CPU model, flags, threads; the GPU and torch's CUDA version on a
    CUDA device) and the measured GEMM peaks; return the peaks in GFLOP/s by precision."""
    on_cuda = strict_float32(device)
    size = 8192 if on_cuda else 2048
    peaks = {name: matmul_peak(threads, dt, size, device=device) for name, dt in DTYPES.items()}
    torch.set_num_threads(threads)
    print(hardware.describe())
    if on_cuda:
        print(gpu_line(device))
    print(allocator_line())
    print(
        f"measured GEMM peak ({size}^3 on {device}): "
        + ", ".join(f"{name} {peak:.0f} GFLOP/s" for name, peak in peaks.items())
    )
    for problem in (hardware.bfloat16_problem(device), None if on_cuda else hardware.mkl_problem()):
        if problem:
            print(f"NOTE: {problem}")
    if not on_cuda and (slow_bf16 := hardware.bfloat16_no_faster()):
        print(f"NOTE: {slow_bf16}")
    print()
    return peaks


def channels_last(net: nn.Module) -> nn.Module:
    return net.to(memory_format=torch.channels_last)


def flops_per_image(config: dict, size: int = 32, training: bool = True) -> float:
    """Nominal multiply-adds x 2 of the network (as torch's direct convolutions count them):
    the forward pass, or for a training step the forward pass, the weight gradients and the
    input gradients of every layer but the first (whose input, the data, needs none: neither
    contender computes it)."""
    w1, w2 = config["widths"]
    k = config["kernel"]
    h1, h2 = size // 2, size // 4
    first = h1 * h1 * 3 * w1 * k * k
    macs = first + h2 * h2 * w1 * w2 * k * k
    if config["upsampling"] == "nearest":
        macs += (h1 * h1 * w2 * w1 + size * size * w1 * 3) * k * k
    else:
        macs += (h2 * h2 * w2 * w1 + h1 * h1 * w1 * 3) * k * k
    return 2 * (3 * macs - first if training else macs)


__all__ = [
    "nf",
    "variant_config",
    "REFERENCE_CONFIG",
    "n2nfunc_net",
    "torch_net",
    "interleaved",
    "matmul_peak",
    "flops_per_image",
    "median_time",
    "header",
    "torch_device",
    "synced",
    "strict_float32",
    "gpu_line",
    "cuda_peak_bytes",
    "channels_last",
    "DTYPES",
    "peak_live_tensor_bytes",
]


# What torch's profiler writes to stderr on every start and stop (its C++ side, past Python's
# sys.stderr): dropped from the benches' output, any other line passed on.
PROFILER_CHATTER = ("SyncActivityProfilerHandler", "allocated before the profiling started")


@contextlib.contextmanager
def _profiler_lines_dropped():
    """Redirect file descriptor 2 while the profiler runs; then write back what it received,
    less the profiler's own status lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if not any(mark in line for mark in PROFILER_CHATTER):
                    sys.stderr.write(line)


def peak_live_tensor_bytes(fn) -> int:
    """The peak, during one call of ``fn``, of the bytes of live tensors above those alive
    before it, from the allocation and free events of torch's profiler (CPU allocator).

    The profiler records no free of a tensor made before it started (a step's leftovers of
    the step before: a loss residual, ``.grad`` that ``zero_grad`` drops), so ``fn`` runs
    twice under it and the second call, marked, is the one measured: what it frees, the
    first made."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with (
        _profiler_lines_dropped(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
        with record_function(MEASURED):
            fn()
    events = prof.profiler.kineto_results.events()
    start = min(e.start_ns() for e in events if e.name() == MEASURED)
    live, base, peak = 0, None, 0
    for e in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
        if base is None and e.start_ns() >= start:
            base = live
        live += e.nbytes()
        if base is not None:
            peak = max(peak, live - base)
    return peak


MEASURED = "n2nfunc-bench: the measured call"


def class_step(net, precision: str, x, y, lr: float):
    """The training step that ``Model.train`` runs, for the block ``net``: the class wrappers
    (``MSE``, ``Adam``; gradients accumulated into ``net``'s buffers, which are one vector,
    and Adam's update run once over it), in mixed precision (``mixed_precision``: float32
    master weights and optimizer state) unless ``precision`` is float32 -- the step itself,
    without ``Model.train``'s batch gather, augmentation, undo snapshot of the weights and
    loss read-back (the torch.nn contenders have none of them either). Its ``parts`` are what
    ``op_times.py --by layer`` reads."""
    runner = net
    if precision != "float32":
        runner = nf.Module(nf.mixed_precision(net.layer, precision), net.params)
        runner.grads = net.grads
    loss, adam = nf.MSE(), nf.Adam(net.param(), lr=lr)

    def step():
        loss.forward(runner.forward(x), y)
        adam.zero_grad()
        runner.backward(loss.backward(), input_grad=False, retain_graph=False)
        adam.step()

    step.parts = {"net": runner, "loss": loss, "optimizer": adam}
    return step


def without_autograd(step):
    """``step`` inside ``torch.inference_mode``, as the command line runs its epochs (keeps
    the ``parts`` that ``op_times.py --by layer`` reads)."""

    def run():
        with torch.inference_mode():
            step()

    if hasattr(step, "parts"):
        run.parts = step.parts
    return run
