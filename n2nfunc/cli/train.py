"""``n2nfunc train``: one process, or one rank of a data-parallel run."""

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint, hardware, launch
from ..metrics import evaluate
from ..model import (
    Model,
)
from ..progress import Progress
from .checks import _check_foreign_files, _check_memory, _check_nproc, _check_precision, _say_apart
from .common import (
    _camera_noise,
    _count,
    _loading,
    _rank,
    _run_files_in,
    _say_if_bfloat16_is_slow,
    _setup,
    _stopped_code,
    no_autograd,
    shown,
)
from .pairs import _say_if_identical, _training_data, _validation_data
from .runs import (
    _config,
    _data_options,
    _drop_stale_pictures,
    _load_state,
    _lock_folder,
    _note_unfinished_run,
    _origin,
    _resume,
    _resume_options,
    _run_config,
    _save_state,
    _weights_payload,
)
from .use import _say_init_notes


def _finished_run(args, state: dict, epochs: int) -> None:
    """``--resume`` of a run that has trained all its epochs: nothing to train; the weights
    and history it would have written at its end are written into ``--out`` where they are
    missing or, in the run's own folder, an earlier run's (a full disk or Ctrl-C cut that end
    short; that run's pictures are removed then), never into a folder that holds other files
    of a run's names (its pictures need the data: ``eval --checkpoint`` shows them)."""
    out = Path(args.out)
    weights, history = out / "model.pth", out / "history.json"
    done = f"{args.resume}: this run has finished its {_count(epochs, 'epoch')}"
    ours = checkpoint.holds_params(weights, state)  # (read once: model.pth may be large)
    history_ours = launch.history_written(out, state)
    if ours and history_ours:
        print(
            f"{done}; nothing to train; its weights: {weights} (to train on from them, start "
            f"a new run: n2nfunc train --init {launch.quoted(weights)} --out NEW_FOLDER ...)"
        )
        return
    own = (out / "checkpoint.pth").resolve() == Path(args.resume).resolve()
    others = [name for name in _run_files_in(out) if not (ours and name == "model.pth")]
    if not own and others:
        print(
            f"{done}; nothing to train; {out} holds other files ({', '.join(others)}), so its "
            f"weights are in {args.resume} (`n2nfunc eval --checkpoint "
            f"{launch.quoted(args.resume)}`; to train on from them: n2nfunc train --init "
            f"{launch.quoted(args.resume)} --out NEW_FOLDER ...)"
        )
        return
    out.mkdir(parents=True, exist_ok=True)
    _lock_folder(out)  # no run is writing there meanwhile
    written = []
    if not ours:  # missing, or an earlier run's that this one replaces in its own folder
        model = Model(_run_config(state["config"]))
        _loading("--resume", _resume, model, state, args.resume)
        noise = state.get("noise")
        checkpoint.save(weights, _weights_payload(model, _origin(args, state), noise))
        written.append(f"its weights {weights}")
    if not history_ours or not history.is_file():  # (a checkpoint without one: [] if none)
        history.write_text(json.dumps(state.get("history", []), indent=1))
        written.append(f"its history {history}")
    print(f"{done}; nothing to train; written now: {', '.join(written)}")
    _drop_stale_pictures(out, [])  # (an earlier run's: this run's come after its results)


def cmd_train(args) -> int:
    if args.resume:  # before --nproc's workers start: a refusal is a usage error (exit 2)
        rank = _rank()
        state = _load_state(args.resume)
        epochs = launch.planned_epochs(state)
        finished = state["epoch"] >= epochs  # (its folders are not read again: not checked)
        _resume_options(args, state, say=rank == "0", lead=rank == "0" and not finished)
        _check_memory(args, _refuse)  # the run's own --n-train, here
        if finished:  # before any data is read (and nothing computed)
            if rank == "0":
                _finished_run(args, state, epochs)
            return 0
        _check_precision(args, _refuse)  # the run's precision and batch size, here
        _check_nproc(args, _refuse)
        _check_foreign_files(Path(args.out), _refuse)
    if launch.meant_as_worker():  # one of --nproc's processes, or of a torchrun's
        if args.nproc > 1 and launch.launcher_pid() is None:  # not one of --nproc's own
            raise ValueError(
                f"--nproc {args.nproc}: torchrun's variables are set (RANK="
                f"{os.environ.get('RANK', '?')}, WORLD_SIZE={os.environ.get('WORLD_SIZE', '?')}), "
                "so this process is a worker "
                "of torchrun's: under torchrun give no --nproc (its --nproc-per-node says how "
                "many); left over in a shell, unset them for --nproc to start its own workers"
            )
        return launch.train_worker(args, _setup(args), run_training)
    if args.nproc > 1:
        return launch.spawn(args, args.argv)
    return run_training(args, _setup(args))


def _refuse(message: str):
    raise ValueError(message)


def run_training(args, device, dp=None) -> int:
    """The training run of `train`. With ``dp`` (:mod:`n2nfunc.distributed`) it is one rank of
    a data-parallel run: rank 0 alone reads the data (the others receive it), evaluates and
    writes files; every rank trains on its slice of each global batch."""
    lead = dp is None or dp.rank == 0
    state = _load_state(args.resume) if args.resume else None  # args already agree with it
    data = {**_data_options(args), "processes": 1 if dp is None else dp.size}
    xt: Any = None  # rank 0 reads the data; the other ranks receive it
    yt: Any = None
    xv: Any = None
    yv: Any = None
    desc = noise = val_desc = ""
    if state is not None:  # the weights and state checked before the data is made
        model = Model(_run_config(state["config"]))
        _loading("--resume", _resume, model, state, args.resume)
        start, history = state["epoch"], list(state.get("history", []))
    else:
        model = Model(_config(args))
        if args.init is not None:  # its network and weights, a new optimizer
            _loading("--init", model.load_payload, args.init_payload, str(args.init))
            model.pretrained = False  # --lr as given, or as the config records it (resumes)
            if args.lr is None:  # fine-tuning: a tenth of the default peak, as Model's
                model.config["lr"] *= model.config["finetune_lr_scale"]  # (at 1e-3 a short
            _say_init_notes(args, model)  # run made a shipped U-Net 2 dB worse)
        _say_apart(args)
        start, history = 0, []
    if lead:  # a run writing there is refused before the data, which may take minutes to make
        folder = Path(args.out).absolute()  # (folders made for it removed if left empty)
        made = tuple(p for p in (folder, *folder.parents) if not p.exists())
        folder.mkdir(parents=True, exist_ok=True)
        _lock_folder(folder, made)
        xt, yt, desc, noise = _training_data(args)
        xv, yv, val_desc = _validation_data(args, (xt, yt))
    if dp is not None:
        if lead:
            dp.done("data")
        dp.wait("data")  # rank 0 may take minutes to generate the data
        xt, yt = dp.broadcast([xt, yt] if lead else [])
    origin = _origin(args, state)
    if state is not None:
        if lead and "data" not in state and state.get("noise", noise) != noise:
            raise ValueError(  # an old checkpoint, which does not record its data options
                f"--resume: {args.resume} was trained on {shown(state['noise'])}; this command "
                f"line reads {noise}: give the run's own data options"
            )
        noise = state.get("noise", noise)
    epochs = model.config["num_epochs"]
    x, y = _loading("training data", model.prepare_pairs, xt.to(device), yt.to(device))
    # the weights on the data's device before the epochs' inference mode (no_autograd), so
    # that they stay ordinary tensors, which a caller may hand to torch.autograd after
    model._move_to(x.device, x.dtype)
    out = Path(args.out)
    state_path, weights_path = out / "checkpoint.pth", out / "model.pth"
    bs = min(model.config["batch_size"], x.shape[0])
    if dp is not None and bs % dp.size:  # a batch is at most the whole training set
        if not lead:  # (under --nproc the launcher says rank 0's error, once)
            if launch.launcher_pid() is None:
                print(
                    "error: rank 0 refused to train (the batch size; it says why)", file=sys.stderr
                )
            return 2
        raise ValueError(
            f"the training data holds {x.shape[0]} pairs, fewer than --batch-size "
            f"{model.config['batch_size']}: each batch is all {bs} pairs, which must divide by "
            f"the {dp.size} processes"
        )
    per_epoch = (x.shape[0] // bs) * bs
    if not lead:
        for epoch in range(start, epochs):
            with no_autograd():
                model.train_epoch(x, y, epoch, epochs, parallel=dp)
            dp.wait(f"epoch-{epoch + 1}")  # rank 0 evaluates and saves meanwhile
        return 0
    xv, yv = xv.to(device), yv.to(device)
    processes = (
        "" if dp is None or dp.size == 1 else f" ({bs // dp.size} in each of {dp.size} processes)"
    )
    if state is None or Path(args.resume).resolve() != state_path.resolve():
        _note_unfinished_run(state_path)
    resuming = f" (resuming at epoch {start + 1})" if state is not None else ""
    print(
        f"training on {_count(x.shape[0], 'pair')} ({desc}), {_count(epochs, 'epoch')}{resuming}, "
        f"batch {bs}{processes}, "
        f"{_count(torch.get_num_threads(), 'thread')}, device {device}, "
        f"{model.config['precision']}"
    )
    print(f"validating on {val_desc}")
    if state is None and args.init is not None:
        print(f"starting from the weights in {args.init}")
    own_val = args.val or args.val_pairs or args.val_photos
    if args.photos and not own_val and (_camera_noise(args) or model.config["network"] == "unet"):
        print(
            "note: the built-in 32x32 validation pairs are not photographs: a network that "
            "denoises photos well may score a negative gain on them; --val-photos DIR "
            "(photos kept out of training) measures what it learns"
        )
    _say_if_identical(xv, yv)
    print(f"network: {model.net!r}".replace("\n", "\n  "))
    on_mkl = torch.device(device).type == "cpu" and model.config["precision"] == "float32"
    slow_gemm = hardware.mkl_problem() if on_mkl else None  # bfloat16 matmuls: oneDNN's
    if slow_gemm:
        print(f"note: {slow_gemm}")
    _say_if_bfloat16_is_slow(device, model.config["precision"])
    progress = Progress(max(epochs - start, 0) * per_epoch, epochs, quiet=args.quiet)

    def on_step(epoch, step, steps, loss):
        progress.step(epoch, bs, step, steps, loss)

    epoch = start
    # the state at the start of every epoch is on disk: this one now, the next ones as each
    # epoch ends, so that Ctrl-C inside an epoch resumes from its start, bit for bit
    _save_state(model, state_path, start, history, noise, data, origin)
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            with no_autograd():
                loss = model.train_epoch(x, y, epoch, epochs, on_step, parallel=dp)
            seconds = time.perf_counter() - t0
            with no_autograd():
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
            progress.epoch_end(
                f"epoch {epoch + 1}/{epochs}: loss {loss:.5f}, validation PSNR "
                f"{scores['denoised_psnr']:.2f} dB (noisy {scores['noisy_psnr']:.2f} dB, "
                f"gain {scores['gain']:+.2f} dB), {per_epoch / seconds:.0f} images/s"
            )
            _save_state(model, state_path, epoch + 1, history, noise, data, origin)
            if dp is not None:
                dp.done(f"epoch-{epoch + 1}")
    except FloatingPointError as e:  # the model is not saved after it
        progress.close()
        raise FloatingPointError(
            f"{e} {state_path} holds the state from the start of epoch {epoch + 1} (resumed with "
            "the same settings, it takes the same steps again: start a new run, with another "
            "--lr, say)."
        ) from None
    except KeyboardInterrupt as e:
        progress.close()
        if dp is not None:  # the workers stop together; the last epoch's checkpoint stays
            raise
        print(  # (not the state of now, which is partway through the epoch's batches)
            f"\ninterrupted in epoch {epoch + 1}; {state_path} holds the state from its start; "
            f"continue with `{launch.resume_command(state_path, args)}`"
        )
        return _stopped_code(e)
    progress.close()
    # an earlier run's pictures go before this run's results come, so that no moment (a
    # Ctrl-C while the pictures are drawn) leaves its weights beside another run's pictures
    _drop_stale_pictures(out, [])
    try:
        checkpoint.save(weights_path, _weights_payload(model, origin, noise))
        (out / "history.json").write_text(json.dumps(history, indent=1))
    except KeyboardInterrupt as e:
        if dp is not None:  # rank 0 of several says it (launch)
            raise
        print("\n" + launch.finished_text(state_path, args))
        return _stopped_code(e)
    print(f"weights: {weights_path}\nresume state: {state_path}\nhistory: {out / 'history.json'}")
    if not args.no_pictures:
        from ..viz import plot_curves, sample_grid

        try:
            curves = plot_curves(history, out / "curves.png")
            grid = sample_grid(xv[:8], model.predict(xv[:8]), yv[:8], out / "samples.png")
        except KeyboardInterrupt as e:
            if dp is not None:
                raise
            print(
                "\ninterrupted while drawing the pictures; the run is complete: its weights and "
                "history are written (above)"
            )
            return _stopped_code(e)
        for p in (curves, grid):
            if p:
                print(f"picture: {p}")
    print(
        "use these weights:\n"
        f"  n2nfunc denoise photo.png denoised.png --checkpoint {launch.quoted(weights_path)}\n"
        f"  n2nfunc eval --checkpoint {launch.quoted(weights_path)}"
    )
    return 0
