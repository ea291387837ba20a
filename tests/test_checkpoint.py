import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import code_running_pickle

from n2nfunc import checkpoint


def test_round_trip_keeps_tensors_and_containers(tmp_path):
    payload = {
        "params": {"0.weight": torch.randn(2, 3), "n": torch.arange(4)},
        "meta": [1, 2.5, "x", None, (True, b"raw")],
        "empty": torch.empty(0, 3),
    }
    checkpoint.save(tmp_path / "c.pth", payload)
    back = checkpoint.load(tmp_path / "c.pth")
    assert torch.equal(back["params"]["0.weight"], payload["params"]["0.weight"])
    assert back["params"]["n"].dtype == torch.int64 and back["meta"] == payload["meta"]
    assert back["empty"].shape == (0, 3)


def test_a_pickle_that_would_run_a_command_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "bestmodel.pth"
    path.write_bytes(code_running_pickle(marker))
    with pytest.raises(ValueError, match=r"bestmodel.pth was refused: refusing to load global"):
        checkpoint.load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,pattern",
    [
        (b"", "is empty"),
        (b"\x80\x04garbage", "truncated or not an n2nfunc checkpoint"),
        (pickle.dumps({"hello": 1}), "is not an n2nfunc checkpoint"),
        (
            pickle.dumps({"format": "n2nfunc-checkpoint", "version": 99, "payload": {}}),
            "format version 99",
        ),
    ],
)
def test_bad_files_give_clear_errors_naming_the_file(tmp_path, content, pattern):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=pattern) as info:
        checkpoint.load(path)
    assert "weights.pth" in str(info.value)


def test_truncated_file(tmp_path):
    path = tmp_path / "c.pth"
    checkpoint.save(path, {"w": torch.randn(100)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        checkpoint.load(path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "nope.pth")


def test_a_save_killed_halfway_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "c.pth"
    checkpoint.save(path, {"w": torch.zeros(1000)})
    flag = tmp_path / "paused"
    code = (
        "import torch; from n2nfunc import checkpoint; "
        f"checkpoint.save({str(path)!r}, {{'w': torch.ones(1000)}})"
    )
    env = {**os.environ, "N2NFUNC_TEST_PAUSE_IN_SAVE": str(flag)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.time() + 60
        while not flag.exists():
            assert proc.poll() is None and time.time() < deadline, "the save never paused"
            time.sleep(0.05)
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert temps and temps[0].stat().st_size > 0  # half written
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert torch.equal(checkpoint.load(path)["w"], torch.zeros(1000))
