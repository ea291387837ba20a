"""Helpers every command shares: the process setup, this process's rank, how loaders'
errors and values are said, and the names of a run's files."""

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

from .. import allocator, hardware, launch
from ..data.noise import parse_noise


def _say_if_bfloat16_is_slow(device, precision: str) -> None:
    """A note where bfloat16 was asked for on a CPU whose bfloat16 matmuls are no faster than
    its float32 ones (:func:`n2nfunc.hardware.bfloat16_no_faster`, timed once)."""
    on_cpu_bf16 = torch.device(device).type == "cpu" and precision == "bfloat16"
    if on_cpu_bf16 and (slow := hardware.bfloat16_no_faster()):
        print(f"note: --precision bfloat16: {slow}")


def no_autograd():
    """``torch.inference_mode()``, around the commands' training epochs, evaluations and
    denoising: n2nfunc's gradients are hand-written, so its steps need none of the
    bookkeeping (version counters, autograd's dispatch) that every PyTorch op pays even with
    grad mode off. The default network's training step 1.07x faster at batch 32 and 1.03x at
    batch 100, ``Model.predict`` 1.03x (2-core Xeon); no operation changes, nor do results.
    (The library's compute code, the exercise's, may not call it: ``Model.train`` runs as the
    grader calls it.) Tensors made inside are inference tensors, which n2nfunc's code reads
    and writes outside it too."""
    return torch.inference_mode()


def _setup(args) -> torch.device:
    count, processes = os.cpu_count(), _local_processes(args)
    if _rank() == "0" and processes > (count or 1):
        print(
            f"note: {processes} processes on this machine's {count or 1} CPUs; they wait for "
            "each other (as many processes as cores at most is faster)",
            file=sys.stderr,
        )
    if args.threads:
        cores = count or args.threads
        if _rank() == "0" and args.threads * processes > cores:
            each = f" in each of {processes} processes" if processes > 1 else ""
            print(
                f"note: --threads {args.threads}{each} is more than this machine's {cores} "
                "CPUs; extra threads wait for each other (the default is one per core)",
                file=sys.stderr,
            )
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    allocator.keep_freed_memory()
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def _local_processes(args, count: str = "LOCAL_WORLD_SIZE") -> int:
    """How many processes of this run share this machine's CPUs: --nproc, or in a worker
    (whose --nproc the launcher removed) torchrun's LOCAL_WORLD_SIZE (``count="WORLD_SIZE"``:
    how many there are in all)."""
    text = os.environ.get(count, "1") if launch.is_worker() else "1"
    return max(1, getattr(args, "nproc", 1), int(text) if text.isdecimal() else 1)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _rank() -> str:
    """This process's rank in a data-parallel run ("0" outside one)."""
    return os.environ.get("RANK", "0") if launch.is_worker() else "0"


def _loading(option: str, load, *a, **kw):
    """Run a loader; a ValueError / FileNotFoundError is re-raised naming the option."""
    try:
        return load(*a, **kw)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"{option}: {e}") from None


def _camera_noise(args) -> bool:
    """Whether ``--noise`` is Gaussian or Poisson (else the exercise's downsampling)."""
    return parse_noise(args.noise).kind != "downsample"


def _say(message: str) -> None:
    print(message, flush=True)


def _given(args) -> set:
    """The dests of the options this command line sets itself (not left to their defaults)."""
    unset = object()
    tokens = args.argv[args.argv.index(args.command) + 1 :]
    seen = argparse.Namespace(**{a.dest: unset for a in args.parser._actions})
    args.parser.parse_args(tokens, namespace=seen)  # already checked once: cannot fail
    return {dest for dest, value in vars(seen).items() if value is not unset}


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return shown(" ".join(map(str, value)))
    return shown(str(value))


def shown(text: str, limit: int = 160) -> str:
    """A file's text as printed: control characters escaped (a crafted file's terminal
    escapes or forged lines are shown, not obeyed) and at most ``limit`` characters."""
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


RUN_PICTURES = ("curves.png", "samples.png")
RUN_FILES = ("model.pth", "checkpoint.pth", "history.json", *RUN_PICTURES)


def _run_files_in(out: Path) -> list:
    """The names of a run's files (:data:`RUN_FILES`) that ``out`` holds."""
    return [name for name in RUN_FILES if (out / name).is_file()]


def _n_train_default(args) -> int:
    return 50000 // 4 if args.photos and _camera_noise(args) else 50000


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a batch system) in a command run by
    :func:`n2nfunc.cli.entry`: it stops as on Ctrl-C -- the resume hint said, the lock file
    and the empty folders made for the run removed -- with exit status 143."""


def _stopped_code(e: KeyboardInterrupt) -> int:
    return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130
