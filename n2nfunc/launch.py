"""``n2nfunc train --nproc N``: data-parallel training in N local processes.

The command starts N workers through ``torch.distributed.run`` (torchrun) on the
loopback address (:func:`spawn`); each worker runs the CLI's ``train`` (:data:`WORKER`) with
the same options and, seeing torchrun's environment, joins the process group and runs the CLI's
training loop as one rank (:func:`train_worker`).
``torchrun --nnodes M --nproc-per-node K ... -m n2nfunc.cli train ...`` runs the same
workers on several machines.

In a worker, rank 0 alone reads or generates the data (the others wait for it and
receive it), evaluates, and writes checkpoints, pictures and the progress bar; every rank
trains on its slice of each global batch (see :meth:`n2nfunc.Model.train_epoch`).
"""

import hashlib
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from .checkpoint import holds_params, load
from .model import DEFAULT_CONFIG

LAUNCHER_PID = "N2NFUNC_LAUNCHER_PID"  # set by `train --nproc` for the workers it starts
# A worker's exit code when the loss became NaN or infinite: the loss is the mean of all
# ranks', so every rank stops at the same step; the launcher may stop the slower ones first
NON_FINITE_LOSS = 3
# A worker's program (``python -c``): ``n2nfunc.cli`` with a Ctrl-C during its imports (torch
# takes a second or two to load) ending the worker quietly, as one during training does,
# rather than with a traceback from each worker
WORKER = """import sys
try:
    from n2nfunc.cli import main
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(main())
"""


def is_worker() -> bool:
    """Whether this process was started by torchrun (or by ``n2nfunc train --nproc``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or all(
        k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    )


def meant_as_worker() -> bool:
    """Whether ``train`` in this process is one of a data-parallel group's: so it is where
    RANK or WORLD_SIZE is set, also without the other torchrun variables, which
    :func:`n2nfunc.distributed.init_from_env` then names as missing (rather than the process
    training a whole run alone as the rank it is not)."""
    return is_worker() or "RANK" in os.environ or "WORLD_SIZE" in os.environ


def spawn(args, argv: list[str]) -> int:
    """Start ``args.nproc`` workers on this machine through ``torch.distributed.run``, talking
    over the loopback interface only; returns when they all have stopped."""
    from . import distributed

    n = args.nproc
    os.environ[LAUNCHER_PID] = str(os.getpid())  # the workers stop if this process is gone
    threads = args.threads or max(1, (os.cpu_count() or 1) // n)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    state = Path(args.out) / "checkpoint.pth"
    ours = run_checkpoint(args, state)
    try:
        distributed.run_local(n, ["-u", "-c", WORKER, *_without_nproc(argv)])
    except distributed.WorkerFailed as e:
        if e.interrupted:
            return 130  # Ctrl-C: rank 0 has said where the checkpoint is
        if e.exitcode == 2:
            return 2  # bad usage or data, which the rank has said
        if e.exitcode == NON_FINITE_LOSS:  # every rank stops (rank 0 says at which step)
            print(
                f"error: training with {n} processes failed: the loss became NaN or infinite "
                "(the mean of all processes', so every process stopped at the same step)",
                file=sys.stderr,
            )
            return 1
        if e.failed == n:  # every rank failed by itself, each saying why
            print(
                f"error: training with {n} processes failed: each stopped on the error above",
                file=sys.stderr,
            )
            return 1
        others = "the other processes were stopped" if e.stopped else "the others had ended"
        print(
            f"error: training with {n} processes failed: rank {e.rank} (pid {e.pid}) "
            f"{_exit_text(e.exitcode)} first; {others}.{_resume_hint(state, ours, args)}",
            file=sys.stderr,
        )
        return 1
    except distributed.Stopped as e:
        print(
            f"error: training with {n} processes {e}; the workers were stopped."
            + _resume_hint(state, ours, args),
            file=sys.stderr,
        )
        return 128 + e.signum
    except KeyboardInterrupt:
        return 130
    return 0


def planned_epochs(state: dict) -> int:
    """The number of epochs a run's saved state (checkpoint.pth) was started for."""
    return state["config"].get("num_epochs", DEFAULT_CONFIG["num_epochs"])


def _resume_hint(state: Path, ours, args) -> str:
    """Where the run's state is, if this run wrote it: the command that continues an
    unfinished run; a finished one (a failure after the last epoch) has nothing left to
    train."""
    if not ours():
        return ""
    try:
        saved = load(state)
        finished = saved["epoch"] >= planned_epochs(saved)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        finished = False
    weights = Path(args.out) / "model.pth"
    if finished and results_written(Path(args.out), saved):  # (a failure while drawing its
        return f" The run had finished its epochs; its weights: {weights}"  # pictures)
    if finished:
        return (
            f" The run had finished its epochs; its checkpoint holds the weights: {state} "
            f"(`{resume_command(state, args, args.nproc)}` writes its model.pth)"
        )
    return f" The last checkpoint is intact: `{resume_command(state, args, args.nproc)}`"


def run_checkpoint(args, state: Path):
    """A test, to call later, of whether ``state`` is this run's checkpoint: the one it
    resumes from, or one written since this call (not an earlier run's in the same folder)."""
    resumed = bool(args.resume) and Path(args.resume).resolve() == state.resolve()

    def stamp():
        return state.stat().st_mtime_ns if state.is_file() else None

    before = stamp()
    return lambda: state.is_file() and (resumed or stamp() != before)


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


# The options that make a run what it is, which every rank must share (data paths, --out and
# --threads may differ between machines: the data comes from rank 0, which alone writes).
SHARED_OPTIONS = (
    "noise", "seed", "network", "epochs", "batch_size", "optimizer", "lr", "momentum",
    "warmup_steps", "final_lr_fraction", "finetune_lr_scale",  # (the learning rate's schedule)
    "widths", "kernel", "no_augment", "upsampling", "precision",
)  # fmt: skip


def shared_options(args) -> dict:
    """``--option value`` of each of SHARED_OPTIONS, as this process was started, and the
    checkpoint it resumes, by content: a rank started without ``--resume``, or with another
    machine's stale copy, would train other weights on the same mean gradients."""
    options = {"--" + k.replace("_", "-"): plain(getattr(args, k, None)) for k in SHARED_OPTIONS}
    # the checkpoint a run resumes, and the weights a new run starts from, by content
    for option, what in (("resume", "a checkpoint"), ("init", "weights")):
        path = getattr(args, option, None)
        if not path:
            options["--" + option] = None
            continue
        digest = getattr(args, f"{option}_sha256", None)  # (--init's: hashed when checked)
        digest = digest or hashlib.sha256(Path(path).read_bytes()).hexdigest()
        options["--" + option] = f"{what} of sha256 {digest[:16]}..."
    return options


def plain(value):
    """An option's value as runs compare it: a list (--widths) as a tuple."""
    return tuple(value) if isinstance(value, list) else value


def train_worker(args, device, run) -> int:
    """One rank of a data-parallel ``n2nfunc train``: joins the process group and calls
    ``run(args, device, dp)`` (the CLI's training run), turning Ctrl-C and a dead peer into
    exit codes 130 and 1 (2 for an environment that describes no group it can join)."""
    from . import distributed

    try:
        dp = distributed.init_from_env(device)
    except distributed.CommunicationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, distributed.SettingError) else 1
    device = dp.device  # cuda:LOCAL_RANK on GPUs
    try:
        differs = dp.disagreement(shared_options(args))
    except distributed.CommunicationError as e:  # rank 0 gone before the options were compared
        print(f"error: {e}; stopping", file=sys.stderr)
        return 1
    if differs:
        print(f"n2nfunc train: error: {differs}", file=sys.stderr)
        dp.refuse(differs)  # rank 0, on another machine maybe, says it too
        return 2
    state_path = Path(args.out) / "checkpoint.pth"
    ours = run_checkpoint(args, state_path)
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    _interrupt_when_orphaned()
    try:
        code = run(args, device, dp)
        if code == 0:
            dp.leave()
        return code
    except (ValueError, OSError) as e:  # rank 0's refusal, which the others hear (under
        if launcher_pid() is None:  # --nproc the launcher says it, and stops them at once)
            dp.refuse_for_all(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    except (KeyboardInterrupt, distributed.CommunicationError) as e:
        peer_died = isinstance(e, distributed.CommunicationError) and not interrupted
        if peer_died and not _launcher_gone():  # (a launcher killed outright takes the store)
            refused = dp.refusal()
            print(f"error: {refused or e}; stopping", file=sys.stderr)
            if dp.rank == 0 and launcher_pid() is None and not refused:  # (--nproc: the
                print("\n" + _stopped_text(state_path, args, ours(), dp), file=sys.stderr)
            return 1  # launcher says where to resume)
        if dp.rank == 0:
            print("\n" + _stopped_text(state_path, args, ours(), dp), file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


def launcher_pid() -> int | None:
    """The pid of the ``train --nproc`` launcher that started this worker, if one did."""
    text = os.environ.get(LAUNCHER_PID, "")
    return int(text) if text.isdecimal() else None


def launched_by_nproc() -> bool:
    """Whether this process is a worker of ``train --nproc``, whose launcher, itself rank 0
    to the user, says the run's notes once."""
    return is_worker() and launcher_pid() is not None


def _interrupt_when_orphaned(every_s: float = 0.5) -> None:
    """Interrupt this worker, as Ctrl-C would, once the ``train --nproc`` launcher that
    started it is gone (a launcher killed outright cannot stop its workers, which would train
    on unseen). Workers started otherwise (torchrun, by hand, under nohup) are left alone."""
    parent = launcher_pid()
    if parent is None or os.getppid() != parent:
        return

    def watch():
        while os.getppid() == parent:
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="n2nfunc-orphan-watch", daemon=True).start()


def _launcher_gone(wait_s: float = 1.0) -> bool:
    """Whether the ``train --nproc`` launcher of this worker has died (waiting a moment: a
    dying process closes its sockets before its children are handed to another parent)."""
    parent = launcher_pid()
    if parent is None:
        return False
    deadline = time.monotonic() + wait_s
    while os.getppid() == parent:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def quoted(text, windows: bool = os.name == "nt") -> str:
    """``text`` (a path, say) as this system's shells take it on a command line: bare where
    it is made of letters, digits and ``_.:\\/+=,@-`` only, else in single quotes for a POSIX
    shell and in double quotes for Windows' (where single quotes become part of the
    argument; a trailing backslash doubled, so that it does not escape the closing quote;
    cmd.exe still expands ``%NAME%`` inside them, PowerShell ``$name``)."""
    text = str(text)
    if not windows:
        return shlex.quote(text)
    if re.fullmatch(r"[\w.:\\/+=,@-]+", text, re.ASCII):
        return text
    escaped = re.sub(r'(\\*)"', r'\1\1\\"', text)  # (a quote, which no Windows path holds)
    return '"' + re.sub(r"(\\+)$", r"\1\1", escaped) + '"'


def resume_command(state, args, nproc: int = 1) -> str:
    """The command that continues the run of ``state``: the run's settings and data come from
    the checkpoint; where and how it runs (processes, device, threads) and what it prints and
    draws do not, so those given to this run are given again."""
    extra = [f"--nproc {nproc}"] * (nproc > 1)
    extra += [f"--device {quoted(args.device)}"] * (str(getattr(args, "device", "cpu")) != "cpu")
    extra += [f"--threads {args.threads}"] * (getattr(args, "threads", None) is not None)
    extra += [f"--{k.replace('_', '-')}" for k in ("no_pictures", "quiet") if getattr(args, k, 0)]
    paths = [quoted(state), "--out", quoted(args.out)]  # spaces, quotes
    return " ".join(["n2nfunc train --resume", *paths, *extra])


def finished_text(state: Path, args, nproc: int = 1) -> str:
    """What Ctrl-C after the last epoch says, while the run's results were being written:
    its weights, or the command that writes them from the checkpoint."""
    weights = Path(args.out) / "model.pth"
    try:  # (a model.pth there may be an earlier run's, which this one was to replace)
        written = results_written(Path(args.out), load(state))
    except (ValueError, OSError):
        written = False
    return f"interrupted after the last epoch; {state} holds the trained run" + (
        f", {weights} its weights"
        if written
        else f": `{resume_command(state, args, nproc)}` writes its weights and history"
    )


def results_written(out: Path, state: dict) -> bool:
    """Whether ``out`` holds what the finished run ``state`` writes at its end: its weights in
    model.pth and its history in history.json (not an earlier run's left in that folder)."""
    return history_written(out, state) and holds_params(out / "model.pth", state)


def history_written(out: Path, state: dict) -> bool:
    """Whether ``out``'s history.json is the run ``state``'s (a checkpoint that records no
    history cannot tell: then yes)."""
    if "history" not in state:
        return True
    try:
        return (out / "history.json").read_text() == json.dumps(state["history"], indent=1)
    except (OSError, UnicodeDecodeError):
        return False


def under_torchrun(text: str) -> str:
    """``text`` (which may name a ``n2nfunc train --resume ...`` command) for ranks started by
    torchrun: the resume then runs as the same torchrun command on every machine."""
    if "`n2nfunc train " not in text:
        return text
    return (
        text.replace("`n2nfunc train ", "`torchrun [the same options] -m n2nfunc.cli train ", 1)
        + ", on every machine"
    )


def _stopped_text(state: Path, args, saved: bool, dp) -> str:
    """Rank 0's word on where the run stopped and how to go on from it."""
    nproc = dp.size if launcher_pid() is not None else 1  # (torchrun: by its own options)
    text = _interrupted_text(state, args, saved, nproc)
    return under_torchrun(text) if launcher_pid() is None and dp.size > 1 else text


def _interrupted_text(state: Path, args, saved: bool, nproc: int) -> str:
    """What rank 0 says on Ctrl-C: the epoch whose start the checkpoint holds (it is saved
    at the start of the run and after every epoch), as a one-process run says it."""
    if not saved:
        return "interrupted before the run's first checkpoint; nothing was saved"
    from . import checkpoint

    try:
        saved_state = checkpoint.load(state)
        epoch, epochs = int(saved_state["epoch"]), int(saved_state["config"]["num_epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"interrupted; {state} could not be read back"
    if epoch >= epochs:  # while the results were being written
        return finished_text(state, args, nproc)
    return (
        f"interrupted in epoch {epoch + 1}; {state} holds the state from its start; continue "
        f"with `{resume_command(state, args, nproc)}`"
    )
