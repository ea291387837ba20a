"""Data-parallel training on torch.distributed (gloo, CPU, 2 processes on the loopback).

Every wait is bounded by a timeout and every process started here is killed on the way
out. Ranks must end bit-identical, and equal to one process with the same global batch.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from dist_worker import TINY, data, functional_params, model_params

from n2nfunc import checkpoint, distributed, launch, tree
from n2nfunc.cli import common, main
from n2nfunc.distributed import loopback_interface
from n2nfunc.model import Model

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "dist_worker.py"
CLI_TINY = [
    "--n-train",
    "96",
    "--n-val",
    "16",
    "--widths",
    "8",
    "8",
    "--batch-size",
    "16",
    "--no-pictures",
    "--quiet",
    "--no-augment",
    "--threads",
    "1",
]


def _env(tmp_path, **extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "N2NFUNC_CACHE": str(tmp_path / "cache")}
    env.pop("N2NFUNC_TEST_PAUSE_IN_SAVE", None)
    return {**env, **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Kill a process started in its own session, with everything it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _two_ranks(tmp_path, command, timeout: int):
    """Run ``command(rank)`` as ranks 0 and 1 of a process group on this machine; returns the
    processes and their ``(stdout, stderr)``."""
    procs = _start_two_ranks(tmp_path, command)
    try:
        logs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            _stop(p)
    return procs, logs


def _start_two_ranks(tmp_path, command) -> list:
    """Start ``command(rank)`` as ranks 0 and 1 of a process group on this machine."""
    env = _env(
        tmp_path,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE="2",
        GLOO_SOCKET_IFNAME=loopback_interface() or "lo",
    )
    return [
        subprocess.Popen(
            command(r),
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for r in range(2)
    ]


def _two_training_ranks(tmp_path, epochs: int, extra=lambda rank: []):
    """``n2nfunc train`` of CLI_TINY as ranks 0 and 1, each writing into ``tmp_path/out{r}``
    (the options of ``extra(rank)`` added)."""
    return _two_ranks(
        tmp_path,
        lambda r: (
            [sys.executable, "-m", "n2nfunc.cli", "train", *CLI_TINY, "--epochs", str(epochs)]
            + [*extra(r), "--out", str(tmp_path / f"out{r}")]
        ),
        120,
    )


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of 2 ranks of tests/dist_worker.py saw and trained."""
    out = tmp_path_factory.mktemp("ranks")
    procs, logs = _two_ranks(out, lambda r: [sys.executable, str(WORKER), str(out)], 180)
    for p, (stdout, stderr) in zip(procs, logs):
        assert p.returncode == 0, (stdout + stderr)[-3000:]
    return [checkpoint.load(out / f"rank{r}.ckpt") for r in range(2)]


def _relative(a: dict, b: dict) -> dict:
    return {k: float((a[k] - b[k]).norm() / a[k].norm()) for k in a}


def test_all_reduce_mean_packs_each_dtype_into_one_collective(ranks):
    for r in ranks:
        assert r["reduce_calls"] == [6 + 1, 5]  # float32: a and the scalar; float64: b[0]
        assert torch.equal(r["mean"]["a"], torch.full((2, 3), 1.5))
        assert torch.equal(r["mean"]["b"][0], torch.arange(5, dtype=torch.float64) * 1.5)
        assert r["mean"]["b"][1].shape == () and float(r["mean"]["b"][1]) == 1.0
        assert "leaf i" in r["type_error"] and "int64" in r["type_error"]


def test_broadcast_sends_rank0_tensors(ranks):
    for r in ranks:
        a, b, c = r["received"]
        assert torch.equal(a, torch.arange(12, dtype=torch.uint8).view(3, 4) * 2)
        assert torch.equal(b, torch.ones(2, dtype=torch.float64))
        assert torch.equal(c, torch.tensor([[-300, 512], [7, 0]], dtype=torch.int16))


@pytest.mark.parametrize("key", ["model64", "adam64", "model32", "functional64"])
def test_ranks_end_bit_identical(ranks, key):
    la, lb = (tree.flatten(r[key]) for r in ranks)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), path
        else:
            assert x == y, path


def test_two_processes_equal_one_with_the_same_global_batch(ranks):
    single64, _ = model_params(torch.float64, epochs=2)
    single32, _ = model_params(torch.float32)
    for key, value in _relative(single64, ranks[0]["model64"]).items():
        assert value <= 1e-10, (key, value)
    for key, value in _relative(single32, ranks[0]["model32"]).items():
        assert value <= 1e-5, (key, value)
    assert max(_relative(single64, ranks[0]["model64"]).values()) > 0  # really two processes


def test_ranks_holding_other_pairs_are_refused_on_every_rank(ranks):
    """Each rank given a shard of its own (the habit of other data-parallel libraries) had
    trained, unnoticed, on half of each shard."""
    for r, seen in enumerate(ranks):
        assert seen["sharded"].startswith(
            f"Model.train_epoch: rank {r} of 2 holds other training pairs than the others"
        ), seen["sharded"]


def test_mean_gradients_in_a_chain_matches_one_process(ranks):
    single = dict(tree.flatten(functional_params(torch.float64)))
    two = dict(tree.flatten(ranks[0]["functional64"]))
    for key, value in _relative(single, two).items():
        assert value <= 1e-10, (key, value)


def test_without_a_process_group_everything_is_the_identity():
    t = {"w": torch.randn(3, 2), "b": [torch.randn(2)]}
    assert not distributed.active()
    assert distributed.all_reduce_mean(t) is t
    g = distributed.mean_gradients()
    state = g.init(t)
    updates, new_state = g.update(t, state, t)
    assert updates is t and new_state == state


def test_model_rejects_a_batch_that_does_not_divide_by_the_ranks():
    x, y = data(torch.float32)
    model = Model(TINY)  # batch 8
    three = SimpleNamespace(rank=0, size=3, mean=lambda t: t)
    with pytest.raises(ValueError, match="global batch size 8 does not divide by the 3"):
        model.train_epoch(x, y, 0, 1, parallel=three)


def test_cli_refuses_nproc_that_does_not_divide_the_batch(capsys):
    assert main(["train", *CLI_TINY, "--batch-size", "15", "--nproc", "2"]) == 2
    assert (
        "global --batch-size 15 must divide by the number of processes" in capsys.readouterr().err
    )
    assert main(["train", *CLI_TINY, "--nproc", "0"]) == 2
    assert "argument --nproc: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_a_torchrun_worker_checks_the_batch_against_world_size_before_any_data(
    tmp_path, monkeypatch, capsys
):
    for key, value in dict(RANK="1", WORLD_SIZE="3", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    out = tmp_path / "run"
    assert main(["train", *CLI_TINY, "--batch-size", "8", "--out", str(out)]) == 2
    assert (
        "3 processes (WORLD_SIZE): the global --batch-size 8 must divide" in capsys.readouterr().err
    )
    assert not out.exists()


def test_an_unreachable_rank_0_is_one_clear_error(monkeypatch):
    for key, value in dict(RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(key, value)
    port = _free_port()  # nobody listens there
    monkeypatch.setenv("MASTER_PORT", str(port))
    with pytest.raises(
        distributed.CommunicationError,
        match=rf"rank 1 of 2 could not join the process group at 127.0.0.1:{port} within 1 s",
    ):
        distributed.init_from_env(torch.device("cpu"), timeout_s=1.0)


@pytest.mark.parametrize("rank", ["0", "00"])  # "00" is rank 0 to torch: it listens
def test_a_rank_that_never_comes_is_one_clear_error_on_rank_0(monkeypatch, rank):
    for key, value in dict(RANK=rank, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    with pytest.raises(distributed.CommunicationError, match=r"rank 0+ of 2 .*did all 2 ranks st"):
        distributed.init_from_env(torch.device("cpu"), timeout_s=1.0)
    distributed.shutdown()


def test_only_rank_0_checks_the_data_options(monkeypatch, tmp_path):
    """The other ranks receive the data from rank 0: the other machines of a run need no copy
    (their argparse checks refused a missing file, and rank 0 then timed out)."""
    from n2nfunc.cli import build_parser

    argv = ["train", "--train", str(tmp_path / "t.pkl"), "--val", str(tmp_path / "v.pkl")]
    argv += ["--val-photos", str(tmp_path / "photos")]
    for key, value in dict(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RANK", "1")
    args = build_parser().parse_args(argv)
    assert args.train == tmp_path / "t.pkl" and args.val_photos == tmp_path / "photos"
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)


def test_run_checkpoint_is_this_runs_own(tmp_path):
    state = tmp_path / "checkpoint.pth"
    state.write_bytes(b"an earlier run's")
    args = SimpleNamespace(resume=None)
    ours = launch.run_checkpoint(args, state)
    assert not ours()  # not written by this run
    time.sleep(0.01)
    state.write_bytes(b"this run's")
    assert ours()
    assert launch.run_checkpoint(SimpleNamespace(resume=str(state)), state)()  # resumed from


@pytest.mark.slow
def test_nproc_with_fewer_pairs_than_processes_need_is_one_usage_error(tmp_path):
    """A course file of 5 pairs under --batch-size 16: each batch is all 5 pairs, which 2
    processes cannot share. One error line from rank 0, exit 2, no resume advice for the
    earlier run's checkpoint in --out."""
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    torch.save((x, x), tmp_path / "train.pkl")
    out = tmp_path / "run"
    out.mkdir()
    checkpoint.save(out / "checkpoint.pth", {"epoch": 1, "config": {"num_epochs": 3}})  # a run's
    data = ["--train", str(tmp_path / "train.pkl"), "--val", str(tmp_path / "train.pkl")]
    tiny = [a for a in CLI_TINY[4:] if a]  # without --n-train and --n-val: file data
    assert CLI_TINY[:4] == ["--n-train", "96", "--n-val", "16"]
    code, _, err = _cli(tmp_path, *data, "--nproc", "2", "--out", str(out), tiny=tiny)
    assert code == 2, err
    assert err.count("the training data holds 5 pairs, fewer than --batch-size 16") == 1, err
    assert "--resume" not in err and "processes failed" not in err and "exitcode" not in err


@pytest.mark.slow
def test_a_nan_loss_under_nproc_is_said_once(tmp_path):
    """A learning rate that makes the loss NaN stops every rank at the same step (the loss
    checked is the mean of all ranks'): rank 0 says so, once, and the launcher adds one line
    that says so, not that one rank failed and the others were stopped. The note on too many
    threads counts the processes (the workers' own --nproc is 1)."""
    threads = str(os.cpu_count())  # 2 processes of as many threads as CPUs: a note, once
    run = ["--nproc", "2", "--lr", "1e20", "--threads", threads, "--out", str(tmp_path / "run")]
    code, _, err = _cli(tmp_path, *run)
    assert code == 1, err
    assert err.count(f"note: --threads {threads} in each of 2 processes is more than") == 1, err
    assert err.count("the loss became nan") == 1, err
    assert "processes failed: the loss became NaN or infinite (the mean of all" in err, err
    assert "were stopped" not in err and "--resume" not in err, err


def test_no_augment_is_saved_in_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    assert main(["train", *CLI_TINY, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert checkpoint.load(tmp_path / "run" / "checkpoint.pth")["config"]["augment"] is False


def _cli(tmp_path, *args, timeout=180, tiny=CLI_TINY):
    proc = subprocess.Popen(
        [sys.executable, "-m", "n2nfunc.cli", "train", *tiny, *args],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _stop(proc)
    return proc.returncode, out, err


@pytest.mark.slow
def test_cli_nproc_2_equals_nproc_1_and_resumes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    code, out, err = _cli(tmp_path, "--epochs", "1", "--out", str(one))
    assert code == 0, err
    code, out, err = _cli(tmp_path, "--epochs", "1", "--nproc", "2", "--out", str(two))
    assert code == 0, err
    assert "batch 16 (8 in each of 2 processes)" in out
    assert out.count("epoch 1/1") == 1  # rank 0 alone reports
    assert sorted(p.name for p in two.iterdir()) == ["checkpoint.pth", "history.json", "model.pth"]
    a = checkpoint.load(one / "model.pth")["params"]
    b = checkpoint.load(two / "model.pth")["params"]
    for key, value in _relative(a, b).items():
        assert value <= 1e-5, (key, value)
    # resume the 2-process run for a second epoch, in 2 processes
    state = checkpoint.load(two / "checkpoint.pth")
    state["config"]["num_epochs"] = 2
    checkpoint.save(tmp_path / "more.pth", state)
    code, out, err = _cli(
        tmp_path, "--nproc", "2", "--resume", str(tmp_path / "more.pth"), "--out", str(two)
    )
    assert code == 0, err
    assert "trained on 2 processes" not in out
    history = json.loads((two / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert checkpoint.load(two / "checkpoint.pth")["optimizer"]["step"] == 12
    assert checkpoint.load(two / "checkpoint.pth")["data"]["processes"] == 2
    # resumed in one process: said, as it will not repeat the 2-process run bit for bit
    code, out, err = _cli(tmp_path, "--resume", str(tmp_path / "more.pth"), "--out", str(one))
    assert code == 0, err
    assert "more.pth trained on 2 processes, this run on 1: it goes on, but not bit for bit" in out


def _start_long_run(tmp_path, *more, epochs_done: int = 1):
    """A run of 500 epochs under --nproc 2, once ``epochs_done`` epochs have finished."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "n2nfunc.cli",
            "train",
            *CLI_TINY,
            "--n-train",
            "480",
            "--epochs",
            "500",
            "--nproc",
            "2",
            "--out",
            str(out),
            *more,
        ],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120

    def an_epoch_done():  # (the state is written at the start too, atomically)
        path = out / "checkpoint.pth"
        return path.exists() and checkpoint.load(path)["epoch"] >= epochs_done

    while not an_epoch_done():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint of a finished epoch after 120 s"
        time.sleep(0.2)
    return proc, out


@pytest.mark.slow
def test_a_killed_worker_stops_the_others_with_a_clear_error(tmp_path):
    proc, out = _start_long_run(tmp_path)
    try:
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)  # the later-started worker
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=distributed.TIMEOUT_S + 30)
        elapsed = time.monotonic() - t0
    finally:
        _stop(proc)
    assert proc.returncode == 1, err[-3000:]
    assert "error: training with 2 processes failed" in err and "killed by signal 9" in err
    intact = f"The last checkpoint is intact: `n2nfunc train --resume {out / 'checkpoint.pth'}"
    assert f"{intact} --out {out} --nproc 2 " in err  # the whole command, as after Ctrl-C
    assert elapsed < 15, elapsed  # "within seconds" (the README): the agent stops them
    assert all(not Path(f"/proc/{w}").exists() for w in workers)
    state = checkpoint.load(out / "checkpoint.pth")
    assert state["epoch"] >= 1
    Model(state["config"]).load_payload(state, "checkpoint")


@pytest.mark.slow
def test_rank_0_of_ranks_started_by_hand_says_where_to_resume_when_another_dies(tmp_path):
    """Outside --nproc, whose launcher says it, rank 0 had only said that a collective
    failed: not where the run stopped nor how to go on."""
    out = tmp_path / "out0"
    procs = _start_two_ranks(
        tmp_path,
        lambda r: (
            [sys.executable, "-m", "n2nfunc.cli", "train", *CLI_TINY, "--n-train", "480"]
            + ["--epochs", "500", "--out", str(tmp_path / f"out{r}")]
        ),
    )
    try:
        deadline = time.monotonic() + 120
        while not (
            (out / "checkpoint.pth").exists()
            and checkpoint.load(out / "checkpoint.pth")["epoch"] >= 1
        ):
            assert time.monotonic() < deadline and procs[0].poll() is None
            time.sleep(0.2)
        os.killpg(procs[1].pid, signal.SIGKILL)
        _, err = procs[0].communicate(timeout=distributed.TIMEOUT_S + 30)
    finally:
        for p in procs:
            _stop(p)
    assert procs[0].returncode == 1, err[-3000:]
    assert "another process died or stopped answering" in err
    assert "holds the state from its start; continue with `" in err and "--resume" in err


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_keeps_the_checkpoint(tmp_path):
    proc, out = _start_long_run(tmp_path)
    try:
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the command
        _, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 130, err[-3000:]
    state = checkpoint.load(out / "checkpoint.pth")
    said = f"interrupted in epoch {state['epoch'] + 1}; {out / 'checkpoint.pth'} holds the state"
    assert said in err and "--resume" in err, err[-3000:]
    assert all(not Path(f"/proc/{w}").exists() for w in workers)
    state = checkpoint.load(out / "checkpoint.pth")
    Model(state["config"]).load_payload(state, "checkpoint")


@pytest.mark.slow
def test_workers_stop_when_their_launcher_is_killed(tmp_path):
    """A launcher killed outright (SIGKILL: it cannot stop its workers) left them training
    unseen to the end of the epoch (their first use of its store); they now interrupt
    themselves, as Ctrl-C would, within a second or two. Epochs of 6,000 steps here."""
    proc, out = _start_long_run(tmp_path, "--n-train", "12000", "--batch-size", "2", epochs_done=0)
    try:
        time.sleep(1)  # into the first epoch
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{w}").exists() for w in workers):
            assert time.monotonic() < deadline, "the workers outlived their launcher by 5 s"
            time.sleep(0.2)
        err = proc.stderr.read()  # the workers wrote into the launcher's stderr
    finally:
        _stop(proc)
    # rank 0 says where to resume, whichever came first: the watch, or the store's death
    assert "interrupted in epoch 1;" in err and "another process died" not in err, err[-3000:]
    state = checkpoint.load(out / "checkpoint.pth")  # intact: written atomically
    Model(state["config"]).load_payload(state, "checkpoint")


@pytest.mark.slow
def test_ranks_started_by_hand_both_finish_cleanly(tmp_path):
    """Ranks started without torchrun: rank 0 holds the store, and leaving as soon as it had
    saved, it made rank 1, still polling for the last epoch, fail with "another process died"
    at the end of a good run. Rank 0 now waits for the others to leave."""
    procs, logs = _two_training_ranks(tmp_path, epochs=2)
    for p, (_, stderr) in zip(procs, logs):
        assert p.returncode == 0 and "error" not in stderr, stderr[-3000:]
    assert (tmp_path / "out0" / "model.pth").is_file()


def test_a_rank_with_no_rank_0_to_join_says_so_in_one_line(monkeypatch):
    """Without rank 0, torch's own connection retries printed C++ stack traces before our
    error; the wait is now ours, and the error one line."""
    env = dict(RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(distributed.CommunicationError) as e:
        distributed.init_from_env(torch.device("cpu"), timeout_s=0.5)
    assert str(e.value).startswith("rank 1 of 2 could not join the process group at 127.0.0.1:")
    assert "is rank 0 running there" in str(e.value) and "nothing accepted a connection" in str(
        e.value
    )


@pytest.mark.slow
def test_sigterm_to_the_launcher_is_said_and_exits_143(tmp_path):
    """`timeout` or `kill` (SIGTERM) stopped an --nproc run with exit 130 and no word, as if
    Ctrl-C had been pressed."""
    proc, out = _start_long_run(tmp_path)
    try:
        workers = _children(proc.pid)
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 143, err[-3000:]
    assert "error: training with 2 processes stopped by signal 15 (SIGTERM)" in err, err[-3000:]
    intact = f"The last checkpoint is intact: `n2nfunc train --resume {out / 'checkpoint.pth'}"
    assert f"{intact} --out {out} --nproc 2 " in err  # the whole command, as after Ctrl-C
    assert all(not Path(f"/proc/{w}").exists() for w in workers)


def test_missing_or_malformed_torchrun_variables_are_named(monkeypatch, capsys):
    for key, value in dict(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(
        distributed.CommunicationError, match="the environment variable RANK is not set"
    ):
        distributed.init_from_env(torch.device("cpu"), timeout_s=1.0)
    monkeypatch.setenv("RANK", "0")
    for text in ("two", "\u00b2"):  # a superscript two is a digit that int() refuses
        monkeypatch.setenv("WORLD_SIZE", text)
        assert main(["train", *CLI_TINY]) == 2
        assert f"WORLD_SIZE={text!r}: expected the number of processes" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_PORT", "\u00b2")
    with pytest.raises(distributed.SettingError, match="MASTER_PORT is '\u00b2'"):
        distributed.init_from_env(torch.device("cpu"), timeout_s=1.0)


@pytest.mark.parametrize("missing", ["MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "RANK"])
def test_a_partly_set_torchrun_environment_is_refused_not_trained_alone(
    tmp_path, monkeypatch, capsys, missing
):
    """With one of the four variables missing, a process of RANK 1 trained a whole run on its
    own and wrote rank 0's files."""
    env = dict(RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(missing)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    out = tmp_path / "run"
    assert main(["train", *CLI_TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"the environment variable {missing} is not set" in err
    assert "left over in a shell, unset them to train in one process" in err
    assert not (out / "model.pth").exists()


def test_a_stray_rank_leaves_the_commands_that_run_alone_checking_as_rank_0(
    tmp_path, monkeypatch, capsys
):
    """eval never runs data-parallel: a RANK=1 left in a shell skipped its checks of the data
    (those of rank 0, which reads it), and the message lost its advice."""
    monkeypatch.setenv("RANK", "1")
    for key in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    assert common._rank() == "0" and not launch.is_worker() and launch.meant_as_worker()
    missing = tmp_path / "nowhere"
    assert main(["eval", "--val-pairs", str(missing)]) == 2
    assert "error: argument --val-pairs: no such folder" in capsys.readouterr().err


def test_ranks_started_with_different_options_are_refused(tmp_path):
    """Every rank builds its model and batch order from its own command line: a different
    --seed trained silently on other weights. The rank that differs says which option."""
    procs, logs = _two_training_ranks(tmp_path, epochs=1, extra=lambda r: ["--seed", str(5 * r)])
    assert procs[1].returncode == 2, logs[1]
    assert "rank 1 runs with --seed 5, rank 0 with 0: every process must be started" in logs[1][1]
    assert procs[0].returncode != 0
    # rank 0, on another machine maybe, had said only that its broadcast failed
    assert "error: rank 1 refused to train: rank 1 runs with --seed 5" in logs[0][1], logs[0]


def test_rank_0s_refusal_before_training_is_said_by_every_rank(tmp_path):
    """Rank 0 refusing its --out (another run writes there) left rank 1, waiting for its
    data, with a 50-line traceback from the store that went with rank 0; rank 1 now says why
    rank 0 refused."""
    busy = tmp_path / "out0"
    busy.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print(flush=True); time.sleep(120)",
         str(busy / ".n2nfunc-train.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        holder.stdout.readline()  # the lock is held
        procs, logs = _two_training_ranks(tmp_path, epochs=1)
    finally:
        holder.kill()
        holder.wait()
    assert procs[0].returncode == 2 and "another n2nfunc train is writing" in logs[0][1]
    err = logs[1][1]
    assert procs[1].returncode == 1 and "Traceback" not in err, err[-3000:]
    assert "error: rank 0 refused to train: --out " in err and "another n2nfunc train" in err


@pytest.mark.parametrize(
    "ranks_and_sizes, said",
    [
        ([(0, 2), (1, 4)], "but rank 0 has WORLD_SIZE=2: every process of a group needs the same"),
        ([(0, 2), (1, 2), (1, 2)], "another process has already joined this group as rank 1"),
    ],
)
def test_a_mismatched_world_size_or_a_rank_taken_twice_is_named(tmp_path, ranks_and_sizes, said):
    """Both had waited out the timeout and been blamed on another program holding the port."""
    env = _env(
        tmp_path,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        GLOO_SOCKET_IFNAME=loopback_interface() or "lo",
    )
    code = (
        "import sys, time, torch; from n2nfunc import distributed as d\n"
        "try:\n    d.init_from_env(torch.device('cpu'), timeout_s=20.0)\n"
        "except d.SettingError as e:\n    print(e, file=sys.stderr); sys.exit(2)\n"
        "time.sleep(4); d.all_reduce_mean(torch.ones(1)); d.shutdown()\n"  # (a late twin)
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env={**env, "RANK": str(rank), "WORLD_SIZE": str(size)},
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for rank, size in ranks_and_sizes
    ]
    started = time.monotonic()
    try:
        errors = [p.communicate(timeout=60)[1] for p in procs]
    finally:
        for p in procs:
            _stop(p)
    assert time.monotonic() - started < 15  # said at once, not after the timeout
    refused = [e for p, e in zip(procs, errors) if p.returncode == 2]
    assert refused and all(said in e or "WORLD_SIZE" in e for e in refused), errors
    assert any(said in e for e in refused), errors


def test_only_workers_of_train_nproc_watch_their_parent(monkeypatch):
    """Ranks started by hand under nohup interrupted themselves when their shell exited: the
    watch is for workers whose parent is the `train --nproc` launcher that set its pid."""

    def watching():
        return any(t.name == "n2nfunc-orphan-watch" for t in threading.enumerate())

    assert not watching()
    monkeypatch.delenv(launch.LAUNCHER_PID, raising=False)
    launch._interrupt_when_orphaned()  # by hand / torchrun: no launcher of ours
    monkeypatch.setenv(launch.LAUNCHER_PID, str(os.getpid()))  # a launcher, not our parent
    launch._interrupt_when_orphaned()
    assert not watching()


def test_ctrl_c_after_the_last_epoch_advises_resuming_only_for_the_weights(tmp_path):
    """Ctrl-C while the results were written said to --resume a finished run, to train on;
    --resume of a finished run now writes the weights it lacks, and only that is said."""
    model = Model({"widths": (4, 4), "num_epochs": 1})
    state = tmp_path / "checkpoint.pth"
    checkpoint.save(state, {**model.payload(), "epoch": 1})
    args = SimpleNamespace(out=tmp_path, device="cpu", threads=None, no_pictures=True, quiet=False)
    text = launch._interrupted_text(state, args, True, 2)
    assert text.startswith("interrupted after the last epoch;")
    assert text.endswith("--nproc 2 --no-pictures` writes its weights and history")
    model.save(tmp_path / "model.pth")
    text = launch._interrupted_text(state, args, True, 2)
    assert "--resume" not in text and text.endswith(f"{tmp_path / 'model.pth'} its weights")
    checkpoint.save(state, {**model.payload(), "epoch": 0})
    text = launch._interrupted_text(state, args, True, 2)
    assert text.startswith("interrupted in epoch 1;")
    # the options that are not the run's own (it keeps its settings and data) are given again:
    # a --no-pictures run resumed as told had drawn its pictures
    assert text.endswith(f"--resume {state} --out {tmp_path} --nproc 2 --no-pictures`")


def test_the_resume_command_repeats_where_and_how_the_run_ran(tmp_path):
    args = SimpleNamespace(out="o", device="cuda:1", threads=3, no_pictures=False, quiet=True)
    assert launch.resume_command("o/c.pth", args) == (
        "n2nfunc train --resume o/c.pth --out o --device cuda:1 --threads 3 --quiet"
    )
    args.out = "my runs/o"  # pasted into a shell, as printed
    assert launch.resume_command("my runs/o/c.pth", args) == (
        "n2nfunc train --resume 'my runs/o/c.pth' --out 'my runs/o' --device cuda:1 --threads 3 "
        "--quiet"
    )


def test_hints_quote_paths_for_the_shell_of_the_system():
    """Windows' shells take double quotes; single quotes became part of the path pasted into
    cmd.exe, and the hint failed with "not found"."""
    assert launch.quoted("my runs/c.pth", windows=False) == "'my runs/c.pth'"
    assert launch.quoted("runs/c.pth", windows=False) == "runs/c.pth"
    assert launch.quoted(r"C:\my runs\c.pth", windows=True) == r'"C:\my runs\c.pth"'
    assert launch.quoted(r"C:\runs\c.pth", windows=True) == r"C:\runs\c.pth"
    # cmd.exe ends a command at &, PowerShell starts a string at '; a closing quote after a
    # backslash would be escaped by it
    assert launch.quoted(r"C:\R&D\c.pth", windows=True) == r'"C:\R&D\c.pth"'
    assert launch.quoted(r"C:\O'Brien\c.pth", windows=True) == '"C:\\O\'Brien\\c.pth"'
    assert launch.quoted("C:\\my runs\\", windows=True) == '"C:\\my runs\\\\"'


def test_failure_causes_need_no_sigkill(monkeypatch):
    """Windows has no signal.SIGKILL: reading it turned every failed worker of `train --nproc`
    (a usage error, a NaN loss) into the launcher's own AttributeError traceback."""
    from collections import namedtuple

    from n2nfunc.distributed import failure_causes

    monkeypatch.delattr(signal, "SIGKILL")
    failure = namedtuple("failure", "exitcode timestamp pid")
    usage = {0: failure(2, 100, 10), 1: failure(1, 101, 11), 2: failure(143, 101, 12)}
    assert [r for r, _ in failure_causes(usage)] == [0, 1]


def test_failure_causes_leave_out_the_ranks_the_agent_stopped():
    """torchrun's agent stops the others with SIGTERM after a first failure, and kills with
    SIGKILL one that has not stopped within its grace (a hung rank, seconds later): neither
    is a cause. A rank killed outright first (the OOM killer) is one."""
    from collections import namedtuple

    from n2nfunc.distributed import failure_causes

    failure = namedtuple("failure", "exitcode timestamp pid")
    hung = {0: failure(1, 100, 10), 1: failure(-9, 130, 11), 2: failure(-15, 101, 12)}
    assert [r for r, _ in failure_causes(hung)] == [0]
    killed = {0: failure(-15, 101, 10), 1: failure(-9, 100, 11)}
    assert [r for r, _ in failure_causes(killed)] == [1]
    cli_exit = {0: failure(143, 101, 10), 1: failure(-9, 100, 11)}  # SIGTERM as SystemExit
    assert [r for r, _ in failure_causes(cli_exit)] == [1]
    both = {0: failure(3, 100, 10), 1: failure(3, 100, 11)}
    assert [r for r, _ in failure_causes(both)] == [0, 1]


def test_the_resume_hint_is_for_unfinished_runs_only(tmp_path):
    """A failure after the last epoch (writing model.pth, say) advised a --resume that had
    nothing left to train."""
    import argparse

    from n2nfunc.launch import _resume_hint

    state = tmp_path / "checkpoint.pth"
    args = argparse.Namespace(out=tmp_path, nproc=2, device="cpu", threads=1)
    command = f"n2nfunc train --resume {state} --out {tmp_path} --nproc 2 --threads 1"
    checkpoint.save(state, {"epoch": 1, "config": {"num_epochs": 2}})
    assert _resume_hint(state, lambda: True, args) == f" The last checkpoint is intact: `{command}`"
    checkpoint.save(state, {"epoch": 2, "config": {"num_epochs": 2}})
    assert _resume_hint(state, lambda: True, args) == (
        f" The run had finished its epochs; its checkpoint holds the weights: {state} "
        f"(`{command}` writes its model.pth)"
    )
    assert _resume_hint(state, lambda: False, args) == ""  # an earlier run's checkpoint


def test_a_worker_interrupted_while_torch_loads_ends_without_a_traceback(tmp_path):
    """Ctrl-C in the first seconds of `train --nproc` reached the workers while they imported
    torch, and each printed a KeyboardInterrupt traceback. (A stand-in package that takes its
    time to import, so that the signal surely lands inside the import.)"""
    from n2nfunc.launch import WORKER

    fake = tmp_path / "n2nfunc"
    fake.mkdir()
    started = tmp_path / "importing"
    (fake / "__init__.py").write_text(
        f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(60)\n"
    )
    (fake / "cli.py").write_text("def main():\n    return 0\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    # Ctrl-C's handler as a terminal gives it: a test run started in the background of a
    # non-interactive shell has SIGINT ignored, which Python and its children inherit
    sigint = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
    proc = subprocess.Popen(  # (in tmp_path: `python -c` looks in its folder first)
        [sys.executable, "-c", sigint + WORKER, "--version"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err, err


def test_torchrun_logs_of_a_killed_launcher_are_removed_by_the_next(tmp_path, monkeypatch):
    """A launcher killed by SIGKILL cannot remove its torchrun log folder; the next launcher
    removes those whose launcher no longer runs (one was left in /tmp per kill)."""
    import tempfile

    from n2nfunc import distributed

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{distributed.LOG_DIR_PREFIX}{dead.pid}-abc"
    fresh = tmp_path / f"{distributed.LOG_DIR_PREFIX}{dead.pid}-ghi"  # another PID namespace's?
    alive = tmp_path / f"{distributed.LOG_DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / "n2nfunc-torchrun-notes"
    hours_ago = time.time() - 2 * checkpoint.STALE_AFTER_S
    for folder in (stale, fresh, alive, other):
        (folder / "attempt_0").mkdir(parents=True)
        if folder is not fresh:
            os.utime(folder, (hours_ago, hours_ago))
    distributed._remove_stale_log_dirs()
    assert not stale.exists() and fresh.exists() and alive.exists() and other.exists()


def test_ranks_must_resume_the_same_checkpoint(tmp_path):
    """A rank started without --resume (or with a stale copy of the checkpoint) passed the
    options check and trained fresh weights on the mean gradients of a resumed run. The
    checkpoint is compared by content, so each machine may hold its own copy."""
    first, copy, other = tmp_path / "a.pth", tmp_path / "copy" / "a.pth", tmp_path / "b.pth"
    copy.parent.mkdir()
    first.write_bytes(b"state one")
    copy.write_bytes(b"state one")
    other.write_bytes(b"state two")

    def options(resume):
        return launch.shared_options(SimpleNamespace(resume=resume and str(resume)))

    assert options(first) == options(copy)
    assert options(first)["--resume"] != options(other)["--resume"]
    assert options(None)["--resume"] is None and options(first)["--resume"].startswith(
        "a checkpoint of sha256 "
    )
    started = launch.shared_options(SimpleNamespace(resume=None, init=str(first)))
    assert started["--init"] == launch.shared_options(SimpleNamespace(init=copy))["--init"]
    assert started["--init"] != launch.shared_options(SimpleNamespace(init=other))["--init"]
    assert options(first)["--init"] is None  # ranks that start from other weights differ


def test_a_rank_without_resume_is_told_so_first():
    """Rank 0 resumed (its epochs from the checkpoint), rank 1 was started without --resume:
    rank 1 had blamed --epochs (its default against rank 0's) and only then, once that was
    given, --resume."""

    class Store(dict):
        def set(self, key, value):
            self[key] = value.encode()

        def check(self, keys):
            return all(k in self for k in keys)

        def get(self, key):
            return self[key]

    store = Store()
    zero = {"--epochs": 12, "--seed": 0, "--resume": "a checkpoint of sha256 ab12..."}
    assert distributed.DataParallel(0, 2, store).disagreement(zero) is None
    one = distributed.DataParallel(1, 2, store)
    said = one.disagreement({"--epochs": 10, "--seed": 0, "--resume": None})
    assert said == (
        "rank 1 runs without --resume, rank 0 with 'a checkpoint of sha256 ab12...': every "
        "process must be started with the same options"
    )
    said = one.disagreement({**zero, "--epochs": 10})
    assert said.startswith("rank 1 runs with --epochs 10, rank 0 with 12") and "default" in said
    assert one.disagreement(dict(zero)) is None
    zero_dp = distributed.DataParallel(0, 2, store)
    assert zero_dp.refusal() is None
    one.refuse(said)
    assert zero_dp.refusal() == f"rank 1 refused to train: {said}"
    assert one.refusal() is None  # its own word is not another's


def test_a_missing_gloo_interface_is_named(monkeypatch):
    """GLOO_SOCKET_IFNAME=eth9 on a machine without it read as 'could not join the process
    group ... is rank 0 running there?', the cause at the end of the line."""
    for key, value in dict(RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo,nosuch9")
    with pytest.raises(
        distributed.CommunicationError,
        match=r"^GLOO_SOCKET_IFNAME=lo,nosuch9: this machine has no network interface nosuch9 "
        r"\(it has .*lo",
    ):
        distributed.init_from_env(torch.device("cpu"), timeout_s=1.0)


def test_the_resume_hint_of_a_torchrun_run_is_a_torchrun_command():
    """Ranks started by torchrun were told to resume with a one-process `n2nfunc train`."""
    text = "interrupted in epoch 2; o/c.pth holds the state from its start; continue with "
    said = launch.under_torchrun(text + "`n2nfunc train --resume o/c.pth --out o`")
    assert said == (
        text + "`torchrun [the same options] -m n2nfunc.cli train --resume o/c.pth --out o`, "
        "on every machine"
    )
    assert launch.under_torchrun("interrupted; nothing was saved") == (
        "interrupted; nothing was saved"
    )


@pytest.mark.parametrize(
    "env,pattern",
    [
        (dict(RANK="2", WORLD_SIZE="2"), r"RANK=2 with WORLD_SIZE=2: the ranks of a group of 2"),
        (dict(RANK="0", WORLD_SIZE="0"), r"RANK=0 with WORLD_SIZE=0"),
        (dict(MASTER_PORT="99999"), r"MASTER_PORT=99999: a port is a number from 1 to 65535"),
        (dict(MASTER_PORT="0"), r"MASTER_PORT=0: a port"),
    ],
)
def test_a_rank_or_port_out_of_range_is_refused_at_once(monkeypatch, capsys, env, pattern):
    """These had waited the whole timeout, then blamed rank 0 or a missing peer."""
    base = dict(RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    for key, value in {**base, **env}.items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    with pytest.raises(distributed.SettingError, match=pattern):
        distributed.init_from_env(torch.device("cpu"), timeout_s=30.0)
    assert time.monotonic() - started < 5
    assert launch.train_worker(None, torch.device("cpu"), None) == 2  # a usage error's status
    assert re.search(pattern, capsys.readouterr().err)


def test_a_listener_that_never_answers_is_said_after_the_timeout(tmp_path):
    """Another program holding MASTER_PORT accepts the connection and says nothing: torch's
    store client waited there without end (over 300 s), printing nothing."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        code = (
            "import torch\n"
            "from n2nfunc import distributed\n"
            "distributed.WATCHDOG_GRACE_S = 1.0\n"
            "distributed.init_from_env(torch.device('cpu'), timeout_s=1.0)\n"
        )
        env = _env(tmp_path, RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
        env["MASTER_PORT"] = str(port)
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "rank 1 of 2 could not join the process group" in proc.stderr
    assert "no answer from the listener there (another program may hold that port)" in (proc.stderr)


@pytest.mark.parametrize("size", ["1", "2"])
def test_nproc_under_stale_torchrun_variables_is_refused(monkeypatch, capsys, size):
    """A shell with torchrun's variables left set trained in one process, --nproc ignored,
    or (WORLD_SIZE 2) waited for a rank 1 that never came."""
    env = dict(RANK="0", WORLD_SIZE=size, MASTER_ADDR="127.0.0.1", MASTER_PORT="29431")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(launch.LAUNCHER_PID, raising=False)
    assert main(["train", *CLI_TINY, "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert f"--nproc 2: torchrun's variables are set (RANK=0, WORLD_SIZE={size})" in err
    assert "under torchrun give no --nproc" in err and "unset them" in err


@pytest.mark.slow
def test_sigterm_removes_the_lock_and_the_folders_made_for_the_run(tmp_path):
    """`kill` or `timeout` (SIGTERM) left .n2nfunc-train.lock, and the folders made for it,
    behind; a worker stopped by torchrun's agent the same."""
    out = tmp_path / "made" / "run"
    args = [sys.executable, "-m", "n2nfunc", "train", "--n-train", "50000", "--out", str(out)]
    proc = subprocess.Popen(args, env=_env(tmp_path), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / ".n2nfunc-train.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / ".n2nfunc-train.lock").exists()
        proc.terminate()  # while it makes the 50,000 pairs
        _, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 143, err[-2000:]
    assert "n2nfunc train: interrupted" in err  # said, as on Ctrl-C
    assert not (tmp_path / "made").exists()  # made for the run, left empty: removed


def test_every_option_of_train_is_shared_by_the_ranks_or_named_as_one_they_may_differ_in():
    """--warmup-steps, --final-lr-fraction and --finetune-lr-scale were left out of the
    options that ranks compare: a rank started with another one trained silently on another
    learning rate. A new option must be placed on one side or the other."""
    from n2nfunc.cli.parser import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    dests = {a.dest for a in sub.choices["train"]._actions} - {"help"}
    by_content = {"resume", "init"}  # compared as the files' sha256 (shared_options)
    # each machine's own: where the data is read (rank 0's is sent to all), where rank 0
    # writes, threads, device, output and the launcher's own --nproc
    own = {"train", "pairs", "photos", "val", "val_pairs", "val_photos", "n_train", "n_val"}
    own |= {"out", "threads", "device", "quiet", "no_pictures", "nproc"}
    assert dests - by_content - own == set(launch.SHARED_OPTIONS)
