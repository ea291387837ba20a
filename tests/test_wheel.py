"""A non-editable install (a wheel) carries the shipped weights."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _offline_build() -> list:
    """Build with the installed setuptools when it is new enough (no index needed: the wheel
    builds on machines without network), else in pip's isolated environment."""
    try:
        import setuptools
    except ImportError:
        return []
    return ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 64 else []


@pytest.mark.slow
def test_wheel_install_finds_the_weights(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            *_offline_build(),
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("n2nfunc-*.whl"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(tmp_path / "site"),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    code = (
        "import n2nfunc, torch; from n2nfunc.model import Model, DEFAULT_WEIGHTS; "
        "assert 'site' in n2nfunc.__file__, n2nfunc.__file__; "
        "m = Model(); m.load_pretrained_model(); "
        "print(DEFAULT_WEIGHTS, m.predict(torch.rand(1, 3, 8, 8)).shape)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert str(tmp_path / "site") in out.stdout and "torch.Size([1, 3, 8, 8])" in out.stdout
