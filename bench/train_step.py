"""Training-step throughput and memory: n2nfunc in float32 and in bfloat16 mixed precision
against torch.nn + autograd + torch.optim.Adam in float32 and under
``torch.autocast("cpu", dtype=torch.bfloat16)``, each torch contender in NCHW and in
channels_last; same network, initial weights and data, in one process.

    python bench/train_step.py            # default network at batch 32 and 100, reference
                                          # network at batch 100, with memory (5-8 minutes)
    python bench/train_step.py --quick    # default network, batch 100, no memory

One step = forward + MSE + backward + Adam update (default Adam, lr 1e-3, on both sides),
n2nfunc's step as ``Model.train`` runs it (class wrappers, without the batch gather,
augmentation and loss read-back around it; the data needs no gradient; bfloat16 via
``mixed_precision``, float32 master weights and optimizer state), and the same step inside
``torch.inference_mode`` as ``n2nfunc train`` runs its epochs (rows "CLI": no autograd
bookkeeping, which the library's own code may not switch off). Contenders alternate in
rounds (median of >= 5). Ratios: throughput / the faster torch layout of that precision.
Peak memory: each contender alone in a subprocess, max RSS over 5 steps minus the RSS before
the contender was built (its network, gradient buffers and optimizer state, which n2nfunc makes
up front and torch.nn in its first step, count on both sides; the data on neither), the median
of 5 processes; and the peak of live tensor bytes during one step above those alive before it
(the steady state: persistent buffers and optimizer state are not counted, torch's ``.grad``,
which ``zero_grad`` drops and the backward pass makes again, is; torch's CPU allocator, as its
profiler records it: steady from run to run, but blind to memory that libraries keep outside
tensors, such as MKL's GEMM buffers, about 9 MB once n2nfunc's matmuls have run), each with
glibc keeping freed memory as in the timed runs; memory ratios are to the smaller torch layout
of the same precision (autocast for bfloat16).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parent),
]  # this tree
from common import (  # noqa: E402
    REFERENCE_CONFIG,
    channels_last,
    class_step,
    cuda_peak_bytes,
    flops_per_image,
    header,
    interleaved,
    n2nfunc_net,
    peak_live_tensor_bytes,
    synced,
    torch_device,
    torch_net,
    variant_config,
    without_autograd,
)

from n2nfunc import allocator  # noqa: E402
from n2nfunc.argtypes import int_range  # noqa: E402
from n2nfunc.model import DEFAULT_CONFIG  # noqa: E402

LR = 1e-3
OURS = {  # name -> (precision, inside torch.inference_mode as n2nfunc train runs it)
    "n2nfunc float32": ("float32", False),
    "n2nfunc bfloat16": ("bfloat16", False),
    "n2nfunc float32 CLI": ("float32", True),
    "n2nfunc bfloat16 CLI": ("bfloat16", True),
}
TORCH = {  # name -> (channels_last, autocast)
    "torch.nn float32 NCHW": (False, False),
    "torch.nn float32 ch-last": (True, False),
    "torch.nn autocast-bf16 NCHW": (False, True),
    "torch.nn autocast-bf16 ch-last": (True, True),
}


def ours(config: dict, precision: str, x, y, seed: int = 0, cli: bool = False):
    """One n2nfunc training step as Model.train runs it (:func:`common.class_step`); with
    ``cli``, inside ``torch.inference_mode`` as ``n2nfunc train`` runs its epochs (the weights
    made outside, as there)."""
    step = class_step(n2nfunc_net(config, seed).to(device=x.device), precision, x, y, LR)
    return without_autograd(step) if cli else step


def theirs(config: dict, layout_cl: bool, autocast: bool, x, y, seed: int = 0):
    """One torch.nn + autograd + Adam step, optionally channels_last and/or autocast-bf16."""
    net = torch_net(config, n2nfunc_net(config, seed).state_dict()).to(x.device)
    if layout_cl:
        net, x = channels_last(net), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=LR)

    def step():
        with torch.enable_grad():
            opt.zero_grad()
            if autocast:
                with torch.autocast(x.device.type, dtype=torch.bfloat16):
                    out = net(x)
                F.mse_loss(out.float(), y).backward()
            else:
                F.mse_loss(net(x), y).backward()
        opt.step()

    step.parts = {"net": net, "optimizer": opt}  # for op_times --by layer
    return step


def data(batch: int, seed: int = 0, device: str = "cpu") -> tuple:
    """The inputs and targets every contender trains on."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 32, 32, generator=g).to(device)
    return x, torch.rand(batch, 3, 32, 32, generator=g).to(device)


def contenders(
    config: dict, batch: int, only: str | None = None, seed: int = 0, device: str = "cpu", xy=None
) -> dict:
    """name -> zero-argument function doing one training step (waiting for a CUDA device),
    on ``xy`` (default: :func:`data`)."""
    x, y = data(batch, seed, device) if xy is None else xy
    out = {}
    for name, (precision, cli) in OURS.items():
        if only in (None, name):
            out[name] = ours(config, precision, x, y, seed, cli)
    for name, (cl, ac) in TORCH.items():
        if only in (None, name):
            out[name] = theirs(config, cl, ac, x, y, seed)
    return synced(out, device)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Linux: restart the process's peak-RSS counter (VmHWM) from the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(args) -> None:
    """Run one contender alone and print its peak memory: RSS over 5 steps above the RSS
    before the contender was built (n2nfunc makes its gradient buffers and Adam's state up
    front, torch.nn in its first step: both count), then the live tensor bytes of a 6th."""
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    allocator.keep_freed_memory()  # as in the timed runs, for every contender alike
    config, xy = json.loads(args.config), data(args.batch)
    contenders(config, 1, only=args.memory)  # what building one imports and sets up, once
    base = rss_bytes()
    reset_peak_rss()
    fn = contenders(config, args.batch, only=args.memory, xy=xy)[args.memory]
    for _ in range(5):
        fn()
    peak = peak_rss_bytes()
    live = peak_live_tensor_bytes(fn)
    print(json.dumps({"peak_mb": (peak - base) / 2**20, "live_mb": live / 2**20}))


def peak_memory(name: str, config: dict, batch: int, threads: int, runs: int = 5) -> tuple:
    """``(peak RSS MB, live tensor MB)``, the medians of ``runs`` fresh processes: one run's
    peak RSS depends on where the C allocator happened to place blocks (the same n2nfunc step
    measured 64 to 87 MB in seven processes, torch.nn float32 50 to 61 MB)."""
    cmd = [sys.executable, __file__, "--memory", name, "--config", json.dumps(config)]
    cmd += ["--batch", str(batch), "--threads", str(threads)]
    peaks, lives = [], []
    for _ in range(runs):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        peaks.append(result["peak_mb"])
        lives.append(result["live_mb"])
    return sorted(peaks)[len(peaks) // 2], sorted(lives)[len(lives) // 2]


def settings(quick: bool, device: str = "cpu"):
    default = {k: DEFAULT_CONFIG[k] for k in ("widths", "kernel", "upsampling")}
    label = f"default ({default['upsampling']} k{default['kernel']})"
    runs = [(label, variant_config(default["upsampling"], default["widths"], default["kernel"]))]
    gpu_batch = () if device == "cpu" else (4096,)  # a GPU needs large batches to fill
    batches = {label: (100,) if quick else (32, 100, *gpu_batch)}
    if not quick:
        ref = "reference (nearest k3)"
        runs.append((ref, REFERENCE_CONFIG))
        batches[ref] = (100,)
    for label, config in runs:
        for batch in batches[label]:
            yield label, config, batch


def best(times: dict, autocast: bool) -> float:
    """The faster torch layout's seconds per step for float32 or autocast-bf16."""
    return min(t for name, t in times.items() if name in TORCH and TORCH[name][1] == autocast)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int_range(1), default=2)
    p.add_argument("--rounds", type=int_range(1), default=5)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument(
        "--device",
        type=torch_device,
        default="cpu",
        help="cpu (default) or cuda[:N]; on CUDA, memory is the peak of the caching "
        "allocator in one step, and (without --quick) batch 4096 is added",
    )
    p.add_argument("--memory", help=argparse.SUPPRESS)  # these three: a memory_child's
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory is not None or args.config is not None or args.batch is not None:
        if None in (args.memory, args.config, args.batch):
            p.error(
                "--memory, --config and --batch are for the script's own subprocesses; "
                "memory is measured by default (--no-memory or --quick skip it)"
            )
        return memory_child(args)
    torch.set_grad_enabled(False)
    peaks = header(args.threads, args.device)
    on_cuda = torch.device(args.device).type == "cuda"
    memory = not (args.no_memory or args.quick)
    head = (
        f"{'network':<24}{'batch':>6}  {'contender':<32}{'img/s':>8}{'vs f32':>8}{'vs bf16':>8}"
        f"{'GFLOP/s':>9}{'%peak':>7}"
    )
    if memory and on_cuda:
        head += f"{'CUDA MB':>9}{'ratio':>7}"
    elif memory:
        head += f"{'peak MB':>9}{'mem ratio':>10}{'live MB':>9}{'ratio':>7}"
    print(head)
    print("-" * len(head))
    for label, config, batch in settings(args.quick, args.device):
        fns = contenders(config, batch, device=args.device)
        times = interleaved(fns, 3, 5, args.rounds)
        if memory and on_cuda:
            mem = {n: (cuda_peak_bytes(f, args.device) / 2**20,) for n, f in fns.items()}
        elif memory:
            mem = {n: peak_memory(n, config, batch, args.threads) for n in times}
        else:
            mem = {}
        del fns
        ref32, ref16 = best(times, False), best(times, True)
        for name, t in times.items():
            precision = "bfloat16" if ("bf16" in name or "bfloat16" in name) else "float32"
            same = [n for n in TORCH if TORCH[n][1] == (precision == "bfloat16")]
            gflops = flops_per_image(config) * batch / t / 1e9
            row = (
                f"{label:<24}{batch:>6}  {name:<32}{batch / t:>8.0f}{ref32 / t:>8.2f}"
                f"{ref16 / t:>8.2f}{gflops:>9.1f}{100 * gflops / peaks[precision]:>6.0f}%"
            )
            # memory: against the smaller torch.nn layout of the same precision, measure by measure
            refs = [min(mem[n][i] for n in same) for i in range(len(mem[name]))] if mem else []
            if mem and on_cuda:
                row += f"{mem[name][0]:>9.1f}{mem[name][0] / max(refs[0], 1e-9):>7.2f}"
            elif mem:
                rss, live = mem[name]
                row += f"{rss:>9.0f}{rss / max(refs[0], 1e-9):>10.2f}"
                row += f"{live:>9.1f}{live / max(refs[1], 1e-9):>7.2f}"
            print(row)
        print()
    print(
        "vs f32 / vs bf16 = throughput / that of the faster torch.nn layout in float32 / under "
        "autocast-bf16 (>1: faster than torch).\nGFLOP/s counts the nominal multiply-adds of "
        "direct convolutions (forward, weight gradients, input gradients but the first layer's); "
        "%peak is of the measured GEMM "
        "peak of the contender's precision.\nmem ratio = peak MB (RSS) / the smaller of torch.nn's "
        "two layouts in the same precision (float32; autocast-bf16 for bfloat16 rows); live MB "
        "= the peak of live tensor bytes in a step (torch's CPU allocator; MKL's GEMM buffers, "
        "about 9 MB for n2nfunc, not counted), ratio likewise.\nCLI rows: the n2nfunc step inside "
        "torch.inference_mode, as `n2nfunc train` runs its epochs.\nOn CUDA: CUDA MB = the peak of "
        "torch's caching allocator in one step above what was allocated before it; ratio "
        "likewise."
    )


if __name__ == "__main__":
    main()
