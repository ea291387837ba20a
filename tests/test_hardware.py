"""What n2nfunc.hardware reports about MKL's code path, and bench/mkl_on_amd.sh."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from n2nfunc import hardware
from n2nfunc.cli import main

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = ROOT / "bench" / "mkl_on_amd.sh"
ASK = "from n2nfunc import hardware; print(hardware.mkl_intel_paths())"
needs_mkl = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch without MKL")


def _vendor() -> str:
    return hardware._cpuinfo().get("vendor_id", "")


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return {**env, **extra}


@needs_mkl
def test_mkl_code_path_follows_the_cpu_vendor():
    """Asked in a process with nothing preloaded: MKL takes its Intel paths on Intel CPUs only."""
    if _vendor() not in ("GenuineIntel", "AuthenticAMD"):
        pytest.skip(f"vendor {_vendor()!r}")
    out = subprocess.run(
        [sys.executable, "-c", ASK], env=_clean_env(), capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(_vendor() == "GenuineIntel")


@needs_mkl
@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
def test_wrapper_makes_mkl_take_its_intel_paths(tmp_path):
    env = _clean_env(XDG_CACHE_HOME=str(tmp_path))
    run = ["bash", str(WRAPPER), sys.executable, "-c", ASK]
    for _ in range(2):  # compiles once, then reuses the library
        out = subprocess.run(run, env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "True", out.stderr
    assert (tmp_path / "n2nfunc" / "libmkl_on_amd.so").is_file()


def test_wrapper_without_a_command_says_how_to_use_it():
    out = subprocess.run(["bash", str(WRAPPER)], capture_output=True, text=True)
    assert out.returncode == 2 and "usage: bash bench/mkl_on_amd.sh COMMAND" in out.stderr


@pytest.mark.parametrize(
    "intel_paths,flags,warned",
    [(False, {"avx2", "avx512f"}, True), (False, {"avx2"}, False), (True, {"avx512f"}, False)],
)
def test_mkl_problem_only_where_avx512_is_withheld(monkeypatch, intel_paths, flags, warned):
    monkeypatch.setattr(hardware, "mkl_intel_paths", lambda: intel_paths)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    problem = hardware.mkl_problem()
    assert (problem is not None) == warned
    if warned:
        assert "generic float32 GEMM kernels" in problem and "bench/mkl_on_amd.sh" in problem


def test_train_notes_the_generic_mkl_kernels_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hardware, "mkl_problem", lambda: "MKL runs its generic kernels here")
    small = ["--n-train", "32", "--n-val", "8", "--widths", "4", "4", "--batch-size", "16"]
    args = ["train", *small, "--epochs", "1", "--no-pictures", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.count("note: MKL runs its generic kernels here") == 1
