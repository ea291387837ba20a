"""Data-parallel training on ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

Every process (rank) holds the same parameters, trains on its own slice of each global
batch and averages the gradients over ranks before the update, so all ranks make the
update of the whole batch and stay identical:

    optimizer = optim.chain(distributed.mean_gradients(), optim.adam(1e-3))
    train_step = make_train_step(layer, loss, optimizer)   # same code on 1 or N processes

Communication is I/O, not compute: this is the only module that imports
``torch.distributed``. Without a process group every function here is the identity, so
single-process code pays nothing.
"""

import ast
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import tree
from .checkpoint import abandoned
from .optim import GradientTransformation

TIMEOUT_S = 30.0  # a dead or stuck peer surfaces as an error after this long
LONG_WAIT_S = 3600.0  # waiting for rank 0 to prepare the data or evaluate an epoch


class CommunicationError(RuntimeError):
    """A collective failed: another rank died, hung past the timeout or disconnected."""


class SettingError(CommunicationError):
    """The environment describes no group this process can join: a torchrun variable missing
    or out of range, a GLOO_SOCKET_IFNAME this machine lacks (a usage error: exit status 2)."""


def _collective(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with a torch.distributed failure turned into a
    :class:`CommunicationError` that says which rank saw it."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:  # gloo reports a dead peer as a plain RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        rank, size = dist.get_rank(), dist.get_world_size()
        raise CommunicationError(
            f"rank {rank} of {size}: {fn.__name__} failed, another process died or stopped "
            f"answering ({type(e).__name__}: {first})"
        ) from e


def active() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(values: Any) -> Any:
    """The mean over ranks of every tensor leaf of a tree, as a new tree of the same shape.

    The leaves are packed into one flat buffer per (dtype, device), each buffer is summed
    over ranks with ONE collective and divided by the number of ranks, and the results are
    unpacked. Every rank receives the same bytes. Without a process group: ``values``.
    """
    if not active():
        return values
    flat = tree.flatten(values)
    buckets: dict[tuple, list[int]] = {}
    for i, (path, leaf) in enumerate(flat):
        if not isinstance(leaf, Tensor) or not leaf.is_floating_point():
            raise TypeError(
                f"all_reduce_mean: leaf {path or '(root)'} must be a floating-point tensor, "
                f"got {type(leaf).__name__}"
                + (f" of dtype {leaf.dtype}" if isinstance(leaf, Tensor) else "")
            )
        buckets.setdefault((leaf.dtype, leaf.device), []).append(i)
    size = dist.get_world_size()
    out: dict[str, Tensor] = {}
    for members in buckets.values():
        buffer = torch.cat([flat[i][1].reshape(-1) for i in members])
        _collective(dist.all_reduce, buffer)
        buffer.div_(size)
        start = 0
        for i in members:
            path, leaf = flat[i]
            out[path] = buffer[start : start + leaf.numel()].view(leaf.shape)
            start += leaf.numel()
    return tree.unflatten(values, out, "all_reduce_mean")


def mean_gradients() -> GradientTransformation:
    """A gradient transformation that replaces the gradients by their mean over ranks
    (the identity without a process group). Put it first in a chain of transformations."""

    def init(params):
        return {}

    def update(grads, state, params=None):
        return all_reduce_mean(grads), state

    return GradientTransformation(init, update)


# How often a rank waiting for rank 0 (DataParallel.wait) looks at the store.
POLL_S = 0.05


class DataParallel:
    """This process's place in the group, for :meth:`n2nfunc.Model.train_epoch`:
    ``rank`` of ``size`` ranks, and ``mean(tree)`` (:func:`all_reduce_mean`)."""

    def __init__(self, rank: int, size: int, store=None, device=None):
        self.rank, self.size, self.store = rank, size, store
        self.device = device or torch.device("cpu")  # where this rank computes

    @staticmethod
    def mean(values: Any) -> Any:
        return all_reduce_mean(values)

    def done(self, key: str) -> None:
        """Rank 0 announces that the step ``key`` (data ready, epoch saved, ...) is done."""
        if self.rank == 0 and self.store is not None:
            self.store.set(f"n2nfunc/{key}", "1")

    def wait(self, key: str, seconds: float = LONG_WAIT_S) -> None:
        """Ranks other than 0 wait (at most ``seconds``) until rank 0 calls ``done(key)``;
        unlike a collective, this may take longer than :data:`TIMEOUT_S`. The store is
        polled, not waited on: Ctrl-C cannot interrupt a wait inside the store (it took the
        launcher's 30 s grace period to stop a rank waiting for rank 0's data)."""
        if self.rank != 0 and self.store is not None:
            keys, deadline = [f"n2nfunc/{key}"], time.monotonic() + seconds
            while not _collective(self.store.check, keys):
                if _collective(self.store.check, ["n2nfunc/refused/0"]):  # (see refuse)
                    reason = _collective(self.store.get, "n2nfunc/refused/0").decode()
                    _collective(self.store.set, f"n2nfunc/heard/{self.rank}", "1")
                    raise CommunicationError(f"rank 0 refused to train: {reason}")
                if time.monotonic() > deadline:
                    _collective(self.store.wait, keys, timedelta(seconds=1))  # its error
                time.sleep(POLL_S)

    def leave(self, seconds: float = TIMEOUT_S) -> None:
        """The end of a run: each rank other than 0 says it is leaving, and rank 0, which
        holds the store of a group started without torchrun, waits (at most ``seconds``) for
        them all to say so, so that none still polling it finds it gone."""
        if self.store is None or self.size == 1:
            return
        if self.rank != 0:
            _collective(self.store.set, f"n2nfunc/left/{self.rank}", "1")
            return
        keys = [f"n2nfunc/left/{r}" for r in range(1, self.size)]
        _poll(lambda k: _collective(self.store.check, k), keys, seconds)

    def disagreement(self, options: dict) -> str | None:
        """Rank 0 posts its ``options`` (name -> printable value); another rank returns the
        first of its own that differs, as a sentence, else None. Every rank must train the
        same run: a different seed or learning rate would go unnoticed, the mean gradient
        applied to different weights."""
        if self.store is None or self.size == 1:
            return None
        if self.rank == 0:
            self.store.set("n2nfunc/options", repr(sorted(options.items())))
            return None
        self.wait("options", TIMEOUT_S)
        theirs = dict(ast.literal_eval(_collective(self.store.get, "n2nfunc/options").decode()))
        # --resume first: a resumed run takes its other settings from the checkpoint, so
        # another option's default on one rank says nothing where --resume differs
        for name, value in sorted(options.items(), key=lambda kv: (kv[0] != "--resume", kv[0])):
            if theirs.get(name) != value:
                ours = f"runs without {name}" if value is None else f"runs with {name} {value!r}"
                other = theirs.get(name)
                zero = f"without {name}" if other is None else f"with {other!r}"
                why = (
                    ""
                    if name == "--resume"
                    else " (a default given to one and not to another differs)"
                )
                return (
                    f"rank {self.rank} {ours}, rank 0 {zero}: every process must be started "
                    f"with the same options{why}"
                )
        return None

    def refuse(self, reason: str) -> None:
        """Leave word in the store that this rank refuses to train, and why (for
        :meth:`refusal`); nothing if the store cannot be reached."""
        if self.store is not None:
            try:
                self.store.set(f"n2nfunc/refused/{self.rank}", reason)
            except Exception:  # noqa: BLE001 -- best effort: the rank exits either way
                pass

    def refuse_for_all(self, reason: str, seconds: float = 3.0) -> None:
        """Rank 0 leaves word that it refuses to train, and why, and waits (at most
        ``seconds``) for the ranks waiting on it (:meth:`wait`) to hear it: a group started
        without torchrun loses its store, which rank 0 holds, when rank 0 exits."""
        if self.rank != 0 or self.store is None or self.size == 1:
            return
        self.refuse(reason)
        try:
            _poll(self.store.check, [f"n2nfunc/heard/{r}" for r in range(1, self.size)], seconds)
        except Exception:  # noqa: BLE001 -- best effort: rank 0 exits either way
            pass

    def refusal(self) -> str | None:
        """The reason another rank left word of (:meth:`refuse`) for refusing to train, as
        ``rank N refused to train: ...``; None if none did or the store is gone."""
        if self.store is None:
            return None
        for rank in range(self.size):
            key = f"n2nfunc/refused/{rank}"
            try:
                if rank != self.rank and self.store.check([key]):
                    return f"rank {rank} refused to train: {self.store.get(key).decode()}"
            except Exception:  # noqa: BLE001 -- the store went with its host
                return None
        return None

    def broadcast(self, tensors: list[Tensor]) -> list[Tensor]:
        """Rank 0's ``tensors`` on every rank (other ranks pass ``[]``): shapes and dtypes are
        sent first, then each tensor. Tensors come back on the CPU."""
        if self.size == 1:
            return tensors
        dev = self.device
        header: list[Any] = [None]
        if self.rank == 0:
            header = [[(tuple(t.shape), t.dtype) for t in tensors]]
        _collective(dist.broadcast_object_list, header, src=0, device=dev)
        out = []
        for i, (shape, dtype) in enumerate(header[0]):
            if self.rank == 0:
                t = tensors[i].to(dev).contiguous()
            else:
                t = torch.empty(shape, dtype=dtype, device=dev)
            # sent as raw bytes: gloo has no int16 (the unclipped targets of built-in pairs)
            _collective(dist.broadcast, t.view(-1).view(torch.uint8), src=0)
            out.append(t.cpu())
        return out


def init_from_env(device: torch.device, timeout_s: float = TIMEOUT_S) -> DataParallel:
    """Join the process group that ``torchrun`` describes in the environment (RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT): gloo for CPU tensors, NCCL for CUDA, with a
    short timeout so that a dead peer is an error in seconds, not after gloo's 30 minutes."""
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        value = os.environ.get(key)
        if not value or (key != "MASTER_ADDR" and not value.isdecimal()):
            raise SettingError(
                f"the environment variable {key} is {'not set' if not value else repr(value)}"
                " (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for each "
                "process; with RANK or WORLD_SIZE set, a process is one of its workers: left "
                "over in a shell, unset them to train in one process)"
            )
    rank, size, port = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "MASTER_PORT"))
    if not 0 <= rank < size:
        raise SettingError(
            f"RANK={rank} with WORLD_SIZE={size}: the ranks of a group of {size} are 0 to "
            f"{size - 1}"
        )
    if not 1 <= port <= 65535:
        raise SettingError(f"MASTER_PORT={port}: a port is a number from 1 to 65535")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "gloo":
        _check_interfaces(os.environ.get("GLOO_SOCKET_IFNAME", ""))
    if device.type == "cuda":  # the GPU of the local rank; cuda:N kept where it is alone
        alone = os.environ.get("LOCAL_WORLD_SIZE", "1") == "1"
        if device.index is None or not alone:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    hint = (  # rank 0 listens and waits for the others; the others connect to it
        f"did all {os.environ['WORLD_SIZE']} ranks start, with this MASTER_ADDR and MASTER_PORT "
        "(free on this machine)? one may have stopped with an error"
        if rank == 0
        else "is rank 0 running there, with the same MASTER_ADDR and MASTER_PORT?"
    )
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    started = time.monotonic()

    def failed(reason: str) -> CommunicationError:
        return CommunicationError(
            f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} could not join "
            f"the process group at {where} within {timeout_s:g} s ({hint}): {reason}"
        )

    if rank != 0:  # torch's own wait prints C++ stack traces as it retries
        reason = _wait_for_listener(os.environ["MASTER_ADDR"], port, timeout_s)
        if reason:
            raise failed(reason)
    timeout = timedelta(seconds=max(1.0, timeout_s - (time.monotonic() - started)))
    # torch's store client waits without end on a listener that accepts and never answers
    # (another program on the port): past the timeout and a grace, this process says so
    # and exits (the wait is in C++, where no exception reaches it)
    watchdog = threading.Timer(
        timeout_s + WATCHDOG_GRACE_S,
        _give_up,
        [failed("no answer from the listener there (another program may hold that port)")],
    )
    watchdog.daemon = True
    watchdog.start()
    try:
        store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
        if "TORCHELASTIC_RUN_ID" not in os.environ:  # (torchrun gives each its own RANK)
            _check_group(store, rank, size, timeout)
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    except SettingError:  # (said as it is)
        raise
    except (RuntimeError, ValueError) as e:  # DistNetworkError, DistStoreError, bad variables
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise failed(reason) from None
    finally:
        watchdog.cancel()
    return DataParallel(rank, size, store, device)


WATCHDOG_GRACE_S = 15.0  # beyond the timeout, for torch's own errors to come first


def _check_group(store, rank: int, size: int, timeout: timedelta) -> None:
    """Each rank joins once, and every rank has the same WORLD_SIZE, checked in the store
    before the group forms (a second process of one RANK, or another WORLD_SIZE, had waited
    out the timeout and been blamed on "another program" holding the port). For ranks
    started by hand: torchrun sets RANK and WORLD_SIZE itself, and keeps its store across a
    group's restarts, where these keys would be found again."""
    prefix = "n2nfunc/group"
    if store.add(f"{prefix}/joined/{rank}", 1) > 1:
        raise SettingError(
            f"RANK={rank}: another process has already joined this group as rank {rank} "
            "(each process needs a RANK of its own)"
        )
    store.set(f"{prefix}/size/{rank}", str(size))
    others = range(1, size) if rank == 0 else [0]
    store.wait([f"{prefix}/size/{r}" for r in others], timeout)
    sizes = {r: int(store.get(f"{prefix}/size/{r}").decode()) for r in others}
    if rank != 0:
        store.set(f"{prefix}/size-read/{rank}", "1")  # (rank 0 holds the store: see below)
    for r, theirs in sizes.items():
        if theirs != size:
            if rank == 0:  # the others read its size before it goes, and with it the store
                _poll(store.check, [f"{prefix}/size-read/{q}" for q in others], 3.0)
            raise SettingError(
                f"WORLD_SIZE={size} here, but rank {r} has WORLD_SIZE={theirs}: every process "
                "of a group needs the same WORLD_SIZE"
            )


def _poll(check, keys: list, seconds: float) -> None:
    """Wait until ``check(keys)`` says the store holds them all, or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while not check(keys) and time.monotonic() < deadline:
        time.sleep(POLL_S)


def _give_up(error: CommunicationError) -> None:
    """The last resort of :func:`init_from_env`: say why on stderr and exit with status 1."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    os._exit(1)


def _check_interfaces(names: str) -> None:
    """Refuse a GLOO_SOCKET_IFNAME that names an interface this machine lacks (gloo's own
    error read as a failure to reach rank 0, its cause at the end of the line)."""
    try:
        known = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):  # not listable here: gloo will say
        return
    missing = [n for n in names.split(",") if n and n not in known]
    if missing:
        raise SettingError(
            f"GLOO_SOCKET_IFNAME={names}: this machine has no network interface "
            f"{', '.join(missing)} (it has {', '.join(known)})"
        )


def _wait_for_listener(host: str, port: int, timeout_s: float) -> str | None:
    """Wait until something accepts connections at ``host:port`` (rank 0's store); None once
    it does, else why not after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, timeout_s))):
                return None
        except OSError as e:
            reason = e.strerror or str(e) or type(e).__name__
        if time.monotonic() >= deadline:
            return f"nothing accepted a connection there ({reason})"
        time.sleep(0.25)


def shutdown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def loopback_interface() -> str | None:
    """The name of the loopback network interface (``lo`` on Linux, ``lo0`` on macOS)."""
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    return names[0] if names else None


class WorkerFailed(RuntimeError):
    """A worker started by :func:`run_local` failed: the first one's rank, pid and exit code
    (negative: killed by that signal); ``interrupted`` if they all stopped on Ctrl-C;
    ``failed``, how many workers failed by themselves (not stopped by the launcher)."""

    def __init__(
        self,
        rank: int,
        pid: int,
        exitcode: int,
        interrupted: bool,
        failed: int = 1,
        stopped: bool = True,
    ):
        super().__init__(f"rank {rank} (pid {pid}) failed with exit code {exitcode}")
        self.rank, self.pid, self.exitcode, self.interrupted = rank, pid, exitcode, interrupted
        self.failed, self.stopped = failed, stopped  # stopped: the launcher stopped others


class Stopped(RuntimeError):
    """The launcher of :func:`run_local` got a signal other than SIGINT (SIGTERM from
    ``kill`` or ``timeout``, SIGHUP): its workers were stopped with it."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum} ({signal.Signals(signum).name})")
        self.signum = signum


def failure_causes(failures: dict) -> list:
    """``[(rank, failure)]`` of the workers that failed by themselves, from torchrun's
    ``{rank: ProcessFailure}``: not those its agent stopped after a first failure -- with
    SIGTERM, or with SIGKILL when one did not stop within its grace (a hung rank; the
    agent's kill comes seconds later than the failure that caused it)."""
    first = min(f.timestamp for f in failures.values())

    def stopped(f) -> bool:
        return f.exitcode in (-signal.SIGTERM, 128 + signal.SIGTERM) or (  # (the CLI's exit)
            f.exitcode == -getattr(signal, "SIGKILL", 9) and f.timestamp > first  # (Windows: none)
        )

    return [(r, f) for r, f in sorted(failures.items()) if not stopped(f)]


LOG_DIR_PREFIX = "n2nfunc-torchrun-"  # + the launcher's pid: torchrun's logs of one run


def _remove_stale_log_dirs() -> None:
    """Remove the torchrun log folders of launchers that are gone without removing them (a
    launcher killed by SIGKILL cannot; see :func:`n2nfunc.checkpoint.abandoned`)."""
    try:
        for folder in Path(tempfile.gettempdir()).iterdir():
            if folder.name.startswith(LOG_DIR_PREFIX) and not folder.is_symlink():
                pid = folder.name[len(LOG_DIR_PREFIX) :].partition("-")[0]
                if folder.is_dir() and abandoned(folder, pid):
                    shutil.rmtree(folder, ignore_errors=True)
    except OSError:
        pass


def run_local(nproc: int, python_args: list[str]) -> None:
    """Run ``python *python_args`` in ``nproc`` workers on this machine through
    ``torch.distributed.run`` (torchrun), with its rendezvous and the workers' addresses on
    127.0.0.1; returns when all have finished. Raises :class:`WorkerFailed` if one fails (the
    others are stopped) and ``KeyboardInterrupt`` on Ctrl-C (forwarded to the workers)."""
    import logging

    # torchrun's agent logs every stop as a warning ("Received 2 death signal, shutting down
    # workers") and a worker's failure as an error ("failed (exitcode: 2) local_rank: 0 ..."):
    # the worker and the CLI say what happened in their own words
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("LOGLEVEL", "CRITICAL")  # loggers made from here on (get_logger)
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    # torchrun's options as `torchrun --standalone` sets them, but on 127.0.0.1; the workers'
    # arguments are added after parsing, so torchrun's parser never sees them
    _remove_stale_log_dirs()
    log_dir = tempfile.mkdtemp(prefix=f"{LOG_DIR_PREFIX}{os.getpid()}-")
    torchrun = [
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0",
        f"--rdzv-id=n2nfunc-{os.getpid()}",
        "--local-addr=127.0.0.1",
        "--max-restarts=0",
        f"--log-dir={log_dir}",  # torchrun's own logs, removed below (else left in /tmp)
        "--no-python",
        sys.executable,
    ]
    config, cmd, cmd_args = config_from_args(parse_args(torchrun))
    loopback = loopback_interface()
    if loopback:  # gloo would otherwise pick the interface of the host name
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    try:
        elastic_launch(config, cmd)(*cmd_args, *python_args)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        interrupted = all(c in (130, -signal.SIGINT) for c in codes)
        causes = failure_causes(e.failures)
        rank, first = causes[0] if causes else e.get_first_failure()
        stopped = len(e.failures) > len(causes)
        raise WorkerFailed(
            rank, first.pid, first.exitcode, interrupted, max(len(causes), 1), stopped
        ) from None
    except SignalException as e:
        if e.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise Stopped(int(e.sigval)) from None
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
