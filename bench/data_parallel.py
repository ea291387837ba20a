"""Data-parallel scaling on this machine, and what several machines would give on paper.

    python bench/data_parallel.py             # 3 rounds of 2 epochs of 1024 pairs (~2 min)
    python bench/data_parallel.py --rounds 5  # more rounds, steadier medians

Measures Model training (the shipped-weights recipe: widths 48/48, kernel 4, Adam, global
batch 32, no augmentation) as ``n2nfunc train`` runs it:

* 1 process x 2 threads against 2 processes x 1 thread (gloo on the loopback), in
  alternating rounds (each round starts fresh processes; the median over rounds is shown);
* the all-reduce of one step (loss + all gradients in one buffer): bytes and median ms;
* one process at the per-machine batch of 8 machines (32 / 8 = 4), for the estimate.

Throughput is shown as the median and as the best round (the least disturbed by other jobs
on a shared machine); the estimate uses the best rounds.

Then prints the estimate for 8 machines on 10 Gb/s Ethernet with a ring all-reduce (each
machine sends and receives 2 (N-1) / N of the gradient bytes per step, in 2 (N-1) hops of
latency each), for this network and for a U-Net whose size is printed with it. The
all-reduce follows the backward pass (no overlap), so step time = compute + communication.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NETWORK_BYTES_PER_S = 10e9 / 8  # 10 Gb/s Ethernet, line rate
HOP_LATENCY_S = 50e-6  # one message between two machines (TCP, same switch)
MACHINES = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args) -> None:
    """One measuring process: prints one JSON line (rank 0 or the single process)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from n2nfunc import distributed
    from n2nfunc.model import Model

    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    dp = distributed.init_from_env(torch.device("cpu")) if "RANK" in os.environ else None
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.pairs, 3, 32, 32, generator=g)
    y = torch.rand(args.pairs, 3, 32, 32, generator=g)

    def images_per_s(batch: int, epochs: int) -> float:
        model = Model({"batch_size": batch, "augment": False, "num_epochs": epochs + 1})
        model.train_epoch(x, y, 0, epochs + 1, parallel=dp)  # warm-up epoch
        t0 = time.perf_counter()
        for e in range(1, epochs + 1):
            model.train_epoch(x, y, e, epochs + 1, parallel=dp)
        return epochs * (args.pairs // batch) * batch / (time.perf_counter() - t0)

    result = {"images_per_s": images_per_s(32, args.epochs)}
    if dp is None:
        result["images_per_s_batch4"] = images_per_s(4, 1)
    else:
        model = Model()
        tree = (x.new_zeros(()), [g for _, g in model.net.param()])
        for _ in range(5):
            distributed.all_reduce_mean(tree)
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            distributed.all_reduce_mean(tree)
            times.append(time.perf_counter() - t0)
        result["allreduce_ms"] = statistics.median(times) * 1e3
        result["allreduce_bytes"] = 4 * (1 + sum(g.numel() for g in tree[1]))
        distributed.shutdown()
    if dp is None or dp.rank == 0:
        print(json.dumps(result), flush=True)


def _run(cmds_envs, timeout: float) -> dict:
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for cmd, env in cmds_envs
    ]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode for p in procs):
        raise SystemExit(f"a measuring process failed: {[p.returncode for p in procs]}")
    return json.loads(next(o for o in outs if o.strip()).strip().splitlines()[-1])


def single(args) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--threads", "2", *_common(args)]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("RANK", None)
    return _run([(cmd, env)], timeout=600)


def two_processes(args) -> dict:
    sys.path.insert(0, str(ROOT))
    from n2nfunc.distributed import loopback_interface

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": "2",
        "GLOO_SOCKET_IFNAME": loopback_interface() or "lo",
    }
    cmd = [sys.executable, __file__, "--worker", "--threads", "1", *_common(args)]
    return _run([(cmd, {**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)], 600)


def _common(args) -> list[str]:
    return ["--pairs", str(args.pairs), "--epochs", str(args.epochs)]


def unet_cost(channels=(32, 64, 128, 256), size: int = 64) -> tuple[int, float]:
    """Parameters and training FLOPs per image (3 x forward multiply-adds x 2) of a U-Net:
    two 3x3 convolutions per level (``channels``, halving the resolution between levels),
    2x2 stride-2 transposed convolutions up, skip concatenation, a 1x1 output to 3."""
    params, macs = 0, 0

    def conv(cin, cout, k, pixels):
        nonlocal params, macs
        params += cin * cout * k * k + cout
        macs += pixels * cin * cout * k * k

    cin = 3
    for level, c in enumerate(channels):
        px = (size >> level) ** 2
        conv(cin, c, 3, px)
        conv(c, c, 3, px)
        cin = c
    for level in range(len(channels) - 2, -1, -1):
        c, px = channels[level], (size >> level) ** 2
        conv(cin, c, 2, px // 4)  # transposed 2x2 stride 2: one k*k block per input pixel
        conv(2 * c, c, 3, px)
        conv(c, c, 3, px)
        cin = c
    conv(cin, 3, 1, size * size)
    return params, 3 * 2 * macs


def estimate(step_s: float, step_small_s: float, grad_bytes: float, batch: int) -> dict:
    """8 machines: each computes batch / 8 images, then a ring all-reduce of the gradients."""
    n = MACHINES
    comm = 2 * (n - 1) / n * grad_bytes / NETWORK_BYTES_PER_S + 2 * (n - 1) * HOP_LATENCY_S
    step_n = step_small_s + comm
    return {
        "one_machine_step_ms": step_s * 1e3,
        "per_machine_compute_ms": step_small_s * 1e3,
        "allreduce_ms": comm * 1e3,
        "speedup": step_s / step_n,
        "images_per_s": batch / step_n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sys.path.insert(0, str(ROOT))
    from n2nfunc.argtypes import int_range

    p.add_argument("--pairs", type=int_range(32), default=1024, help="(at least a batch, 32)")
    p.add_argument("--epochs", type=int_range(1), default=2)
    p.add_argument("--rounds", type=int_range(1), default=3)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)  # the workers'
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from n2nfunc import hardware

    print(hardware.describe())  # the machine, beside every timing
    if args.worker:
        return worker(args)
    ones, twos = [], []
    for r in range(args.rounds):
        ones.append(single(args))
        twos.append(two_processes(args))
        print(
            f"round {r + 1}: 1 x 2 threads {ones[-1]['images_per_s']:.0f} img/s, "
            f"2 x 1 thread {twos[-1]['images_per_s']:.0f} img/s",
            flush=True,
        )
    one = statistics.median(o["images_per_s"] for o in ones)
    two = statistics.median(t["images_per_s"] for t in twos)
    best1 = max(o["images_per_s"] for o in ones)
    best2 = max(t["images_per_s"] for t in twos)
    one4 = max(o["images_per_s_batch4"] for o in ones)
    ar_ms = statistics.median(t["allreduce_ms"] for t in twos)
    ar_bytes = twos[0]["allreduce_bytes"]
    step2_ms = 32 / two * 1e3
    print(f"\n{args.pairs} pairs, global batch 32, {args.rounds} rounds")
    print("| setup | images/s, median | ratio | images/s, best round | ratio |")
    print("|---|---:|---:|---:|---:|")
    print(f"| 1 process x 2 threads | {one:.0f} | 1.00 | {best1:.0f} | 1.00 |")
    print(
        f"| 2 processes x 1 thread (gloo, loopback) | {two:.0f} | {two / one:.2f} | "
        f"{best2:.0f} | {best2 / best1:.2f} |"
    )
    print(
        f"all-reduce per step: {ar_bytes} bytes ({ar_bytes // 4 - 1} gradients + the loss, "
        f"float32), {ar_ms:.3f} ms = {ar_ms / step2_ms:.1%} of a {step2_ms:.1f} ms step"
    )
    step, step4 = 32 / best1, 4 / one4  # the least disturbed rounds
    ours = estimate(step, step4, ar_bytes, 32)
    uparams, uflops = unet_cost()
    ratio = uflops / _flops_ours()  # U-Net steps: ours scaled by the FLOPs per image
    unet = estimate(ratio * step, ratio * step4, 4 * uparams, 32)
    print(
        f"\non paper: {MACHINES} machines like this one, 10 Gb/s Ethernet "
        f"({NETWORK_BYTES_PER_S / 1e9:.2f} GB/s), {HOP_LATENCY_S * 1e6:.0f} us per hop, ring "
        "all-reduce, global batch 32 (4 per machine), no overlap of compute and communication; "
        "step times of one process x 2 threads, best rounds"
    )
    print(
        "| network | gradient bytes | 1 machine ms/step | 8 machines: compute + all-reduce "
        "ms/step | speed-up | images/s |\n|---|---|---|---|---|---|"
    )
    for name, b, e in (
        ("shipped (48/48, kernel 4)", ar_bytes, ours),
        (f"U-Net {uparams / 1e6:.2f} M params, 64x64", 4 * uparams, unet),
    ):
        print(
            f"| {name} | {b / 1e6:.2f} MB | {e['one_machine_step_ms']:.1f} | "
            f"{e['per_machine_compute_ms']:.1f} + {e['allreduce_ms']:.2f} | "
            f"{e['speedup']:.1f}x | {e['images_per_s']:.0f} |"
        )
    print(
        f"(U-Net steps: the measured steps of batch 32 and 4 scaled by FLOPs per image, "
        f"{uflops / 1e9:.2f} GFLOP per 64x64 training image vs {_flops_ours() / 1e9:.4f})"
    )


def _flops_ours() -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import flops_per_image

    from n2nfunc.model import DEFAULT_CONFIG

    return flops_per_image(DEFAULT_CONFIG)


if __name__ == "__main__":
    main()
