"""``n2nfunc train --nproc N``: data-parallel training in N local processes.

The command starts N workers through ``torch.distributed.run`` (torchrun) on the
loopback address; each worker runs ``python -m n2nfunc.cli train`` with the same options
and, seeing torchrun's environment, joins the process group (:func:`train_worker`).
``torchrun --nnodes M --nproc-per-node K ... -m n2nfunc.cli train ...`` runs the same
workers on several machines.

In a worker, rank 0 alone reads or generates the data (the others wait for it and
receive it), evaluates, and writes checkpoints, pictures and the progress bar; every rank
trains on its slice of each global batch (see :meth:`n2nfunc.Model.train_epoch`).
"""

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch


def is_worker() -> bool:
    """Whether this process was started by torchrun (or by ``n2nfunc train --nproc``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or all(
        k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    )


def train(args, argv: list[str]) -> int:
    """Run ``n2nfunc train`` data-parallel: as a worker under torchrun, or start ``args.nproc``
    local workers with the command-line options ``argv``."""
    return train_worker(args) if is_worker() else spawn(args, argv)


def spawn(args, argv: list[str]) -> int:
    """Start ``args.nproc`` workers on this machine through ``torch.distributed.run``, talking
    over the loopback interface only; returns when they all have stopped."""
    from . import distributed
    from .model import DEFAULT_CONFIG

    n = args.nproc
    if n < 1:
        raise ValueError(f"--nproc must be >= 1, got {n}")
    bs = args.batch_size or DEFAULT_CONFIG["batch_size"]
    if not args.resume and bs % n:
        raise ValueError(
            f"--nproc {n}: the global batch size {bs} must divide by the number of processes "
            "(each process takes an equal slice of every batch)"
        )
    threads = args.threads or max(1, (os.cpu_count() or 1) // n)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        distributed.run_local(n, ["-u", "-m", "n2nfunc.cli", *_without_nproc(argv)])
    except distributed.WorkerFailed as e:
        if e.interrupted:
            return 130  # Ctrl-C: rank 0 has said where the checkpoint is
        state = Path(args.out) / "checkpoint.pth"
        print(
            f"error: training with {n} processes failed: rank {e.rank} (pid {e.pid}) "
            f"{_exit_text(e.exitcode)} first; the other processes were stopped."
            + (f" The last checkpoint is intact: --resume {state}" if state.is_file() else ""),
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _exit_text(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited with code {code}"


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def train_worker(args) -> int:
    """One rank of a data-parallel ``n2nfunc train`` (see the module docstring)."""
    from . import distributed
    from .cli import _setup

    dp = distributed.init_from_env(_setup(args))
    device = dp.device  # cuda:LOCAL_RANK on GPUs
    state_path = Path(args.out) / "checkpoint.pth"
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        return _train(args, dp, device)
    except (KeyboardInterrupt, distributed.CommunicationError) as e:
        if isinstance(e, distributed.CommunicationError) and not interrupted:  # a peer died
            print(f"error: {e}; stopping", file=sys.stderr)
            return 1
        if dp.rank == 0:
            saved = state_path.is_file()
            print(
                "\ninterrupted; "
                + (
                    f"the last epoch's checkpoint is intact: continue with `n2nfunc train "
                    f"--resume {state_path}`"
                    if saved
                    else "no epoch had finished, nothing was saved"
                ),
                file=sys.stderr,
            )
        return 130
    finally:
        distributed.shutdown()


def _train(args, dp, device) -> int:
    from tqdm import tqdm

    from . import checkpoint
    from .cli import _config, _resume_state, _save_state, _training_data
    from .metrics import evaluate
    from .model import Model

    rank0 = dp.rank == 0
    out = Path(args.out)
    xt: Any = None
    yt: Any = None
    xv: Any = None
    yv: Any = None
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        xt, yt, xv, yv, desc = _training_data(args)
        dp.done("data")
    dp.wait("data")  # rank 0 may take minutes to generate the data
    xt, yt = dp.broadcast([xt, yt] if rank0 else [])
    if args.resume:
        model = Model(checkpoint.load(args.resume)["config"])
        state = _resume_state(model, args.resume)
        start, history = state["epoch"], list(state["history"])
    else:
        model = Model(_config(args))
        start, history = 0, []
    epochs = model.config["num_epochs"]
    x, y = model.prepare_pairs(xt.to(device), yt.to(device))
    state_path, weights_path = out / "checkpoint.pth", out / "model.pth"
    bs = min(model.config["batch_size"], x.shape[0])
    per_epoch = (x.shape[0] // bs) * bs
    if rank0:
        xv, yv = xv.to(device), yv.to(device)
        print(
            f"training on {desc}: {x.shape[0]} pairs, {epochs} epochs, global batch {bs} "
            f"({bs // dp.size} per process), {dp.size} processes x "
            f"{torch.get_num_threads()} threads, device {device}"
        )
        print(f"network: {model.net!r}".replace("\n", "\n  "))
    bar = tqdm(
        total=(epochs - start) * per_epoch,
        unit="img",
        unit_scale=True,
        dynamic_ncols=True,
        disable=args.quiet or not rank0,
    )

    def on_step(epoch, step, steps, loss):
        bar.update(bs)
        if step % 20 == 0:
            bar.set_postfix_str(f"epoch {epoch + 1}/{epochs} loss {loss:.5f}", refresh=False)

    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            loss = model.train_epoch(x, y, epoch, epochs, on_step, parallel=dp)  # mean of ranks
            seconds = time.perf_counter() - t0
            if rank0:
                scores = evaluate(model, xv, yv)
                history.append(
                    {
                        "epoch": epoch + 1,
                        "loss": loss,
                        "val_psnr": scores["denoised_psnr"],
                        "noisy_psnr": scores["noisy_psnr"],
                        "seconds": seconds,
                    }
                )
                bar.write(
                    f"epoch {epoch + 1}/{epochs}: loss {loss:.5f}, validation PSNR "
                    f"{scores['denoised_psnr']:.2f} dB (noisy {scores['noisy_psnr']:.2f} dB, "
                    f"gain {scores['gain']:+.2f} dB), {per_epoch / seconds:.0f} images/s"
                )
                _save_state(model, state_path, epoch + 1, history)
                dp.done(f"epoch-{epoch + 1}")
            dp.wait(f"epoch-{epoch + 1}")  # evaluation may outlast the collectives' timeout
    finally:
        bar.close()
    if not rank0:
        return 0
    model.save(weights_path)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    print(f"weights: {weights_path}\nresume state: {state_path}\nhistory: {out / 'history.json'}")
    if not args.no_pictures:
        from .viz import plot_curves, sample_grid

        curves = plot_curves(history, out / "curves.png")
        grid = sample_grid(xv[:8], model.predict(xv[:8]), yv[:8], out / "samples.png")
        for p in (curves, grid):
            if p:
                print(f"picture: {p}")
    return 0
