"""Shared pieces of the benchmarks: the required network built three ways from the same
weights (n2nfunc functional, n2nfunc class wrappers, torch.nn), and timing helpers."""

import statistics
import time

import torch
from torch import nn

import n2nfunc as nf
from n2nfunc.model import DEFAULT_CONFIG, build_network


def variant_config(variant: str, widths, kernel: int = 3) -> dict:
    return {
        **DEFAULT_CONFIG,
        "widths": tuple(widths),
        "kernel": kernel,
        "upsampling": "nearest" if variant == "nearest" else "transpose",
    }


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
        for (name, param), value in zip(net.named_parameters(), state.values()):
            param.copy_(value)
    return net


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(contenders: dict, warmup: int, repeats: int, rounds: int = 3) -> dict:
    """Median seconds per call of each contender, measured in alternating rounds so that
    machine noise hits all of them alike."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(median_time(fn, repeats))
    return {name: statistics.median(v) for name, v in samples.items()}


def matmul_peak(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul GFLOP/s at this thread count (the machine's practical peak)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    return 2 * size**3 / median_time(lambda: a @ b, repeats) / 1e9


def flops_per_image(config: dict, size: int = 32, training: bool = True) -> float:
    """Nominal multiply-adds x 2 of the network (as torch's direct convolutions count them):
    the forward pass, x3 for a training step (forward, input and weight gradients)."""
    w1, w2 = config["widths"]
    k = config["kernel"]
    h1, h2 = size // 2, size // 4
    macs = (h1 * h1 * 3 * w1 + h2 * h2 * w1 * w2) * k * k
    if config["upsampling"] == "nearest":
        macs += (h1 * h1 * w2 * w1 + size * size * w1 * 3) * k * k
    else:
        macs += (h2 * h2 * w2 * w1 + h1 * h1 * w1 * 3) * k * k
    return 2 * macs * (3 if training else 1)


__all__ = [
    "nf",
    "variant_config",
    "n2nfunc_net",
    "torch_net",
    "interleaved",
    "matmul_peak",
    "flops_per_image",
    "median_time",
]
