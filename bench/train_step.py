"""Training-step throughput: n2nfunc (functional and class wrappers) against torch.nn +
autograd + torch.optim.SGD, on the same network, initial weights and data, in one process.

    python bench/train_step.py            # full table (a few minutes)
    python bench/train_step.py --quick    # batch 100, widths 32/64 only

One step = forward + MSE + backward + SGD update. Contenders run interleaved (warm-up,
then alternating rounds, median of each). Peak memory: each contender in its own
subprocess; max RSS minus the RSS just before the first step.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    flops_per_image,
    interleaved,
    matmul_peak,
    n2nfunc_net,
    nf,
    torch_net,
    variant_config,
)

from n2nfunc.model import DEFAULT_CONFIG  # noqa: E402

LR = 0.01


def contenders(config: dict, batch: int, seed: int = 0) -> dict:
    """name -> zero-argument function doing one training step."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 32, 32, generator=g)
    y = torch.rand(batch, 3, 32, 32, generator=g)

    wrapped = n2nfunc_net(config, seed)
    ref = torch_net(config, wrapped.state_dict())
    layer = wrapped.layer
    box = {"params": nf.tree.map(lambda t: t.clone(), wrapped.params)}
    opt = nf.sgd(LR)
    box["state"] = opt.init(box["params"])
    train_step = nf.make_train_step(layer, nf.mse, opt)

    def functional():
        box["params"], box["state"], _ = train_step(box["params"], box["state"], x, y)

    loss, sgd = nf.MSE(), nf.SGD(wrapped.param(), lr=LR)

    def wrappers():  # as Model.train uses them: the data needs no gradient
        loss.forward(wrapped.forward(x), y)
        sgd.zero_grad()
        wrapped.backward(loss.backward(), input_grad=False)
        sgd.step()

    torch_opt = torch.optim.SGD(ref.parameters(), lr=LR)

    def torch_nn():
        with torch.enable_grad():
            torch_opt.zero_grad()
            F.mse_loss(ref(x), y).backward()
        torch_opt.step()

    return {
        "n2nfunc functional": functional,
        "n2nfunc wrappers": wrappers,
        "torch.nn+autograd": torch_nn,
    }


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
    """Run one contender alone and print its peak memory above the pre-step baseline."""
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    fn = contenders(json.loads(args.config), args.batch)[args.memory]
    base = rss_bytes()
    reset_peak_rss()
    for _ in range(5):
        fn()
    peak = peak_rss_bytes()
    print(json.dumps({"peak_mb": (peak - base) / 2**20}))


def peak_memory(name: str, config: dict, batch: int, threads: int) -> float:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory",
            name,
            "--config",
            json.dumps(config),
            "--batch",
            str(batch),
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def settings(quick: bool):
    shipped = {k: DEFAULT_CONFIG[k] for k in ("widths", "kernel", "upsampling")}
    nets = [("nearest", (32, 64), 3), ("transpose", (32, 64), 3)]
    if not quick:
        nets += [
            ("nearest", (64, 128), 3),
            ("transpose", (64, 128), 3),
            ("shipped: " + shipped["upsampling"], shipped["widths"], shipped["kernel"]),
        ]
    for variant, widths, kernel in nets:
        for batch in (100,) if quick else (1, 32, 100):
            yield variant, variant_config(variant.split(": ")[-1], widths, kernel), batch


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory:
        return memory_child(args)
    torch.set_grad_enabled(False)
    peak = matmul_peak(args.threads)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"float32 matmul peak {peak:.0f} GFLOP/s (2048^3)\n"
    )
    header = (
        f"{'network':<22}{'widths':>8}{'k':>3}{'batch':>6}  {'contender':<20}{'img/s':>8}"
        f"{'ratio':>7}{'GFLOP/s':>9}{'% peak':>8}"
        + ("" if args.no_memory else f"{'peak MB':>9}{'mem ratio':>10}")
    )
    print(header)
    print("-" * len(header))
    for variant, config, batch in settings(args.quick):
        warmup, repeats = (5, 20) if batch == 1 else (3, 7)
        times = interleaved(contenders(config, batch), warmup, repeats)
        mem = (
            {}
            if args.no_memory
            else {name: peak_memory(name, config, batch, args.threads) for name in times}
        )
        ref = times["torch.nn+autograd"]
        for name, t in times.items():
            ips = batch / t
            gflops = flops_per_image(config) * ips / 1e9
            row = (
                f"{variant:<22}{'/'.join(map(str, config['widths'])):>8}{config['kernel']:>3}{batch:>6}  "
                f"{name:<20}{ips:>8.0f}{ref / t:>7.2f}{gflops:>9.1f}{100 * gflops / peak:>7.0f}%"
            )
            if mem:
                row += f"{mem[name]:>9.0f}{mem[name] / max(mem['torch.nn+autograd'], 1e-9):>10.2f}"
            print(row)
        print()
    print(
        "ratio = throughput / torch.nn's (>1: n2nfunc faster); GFLOP/s counts the nominal "
        "multiply-adds of direct convolutions (3x the forward pass per training step)."
    )


if __name__ == "__main__":
    main()
