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
from n2nfunc.data import write_image

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
    if out.stdout.strip() == "None":
        pytest.skip("this torch's MKL does not export its vendor checks")
    assert out.stdout.strip() == str(_vendor() == "GenuineIntel")


# One float32 matmul with MKL's verbose mode on: its first line names the code path it runs.
SGEMM = "import torch; a = torch.randn(256, 256); a @ a"


def _mkl_verbose_header(command: list, env: dict) -> str:
    env = {**env, "MKL_VERBOSE": "1"}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return next(line for line in out.stdout.splitlines() if "oneMKL" in line or "MKL" in line)


@needs_mkl
@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_wrapper_makes_mkl_take_its_intel_paths(tmp_path):
    """Under the wrapper MKL says it runs its AVX-512 kernels (where the CPU has AVX-512), and
    hardware.mkl_intel_paths() agrees; plain, on an AMD CPU, it runs generic ones."""
    env = _clean_env(XDG_CACHE_HOME=str(tmp_path))
    wrapped = ["bash", str(WRAPPER), sys.executable]
    for _ in range(2):  # compiles once, then reuses the library
        out = subprocess.run([*wrapped, "-c", ASK], env=env, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr
    assert len(list((tmp_path / "n2nfunc").glob("libmkl_on_amd-*.so"))) == 1
    if "avx512f" in hardware.cpu_flags():
        assert "AVX-512" in _mkl_verbose_header([*wrapped, "-c", SGEMM], env)
        if _vendor() == "AuthenticAMD":
            assert "AVX-512" not in _mkl_verbose_header([sys.executable, "-c", SGEMM], env)


def test_wrapper_without_a_command_says_how_to_use_it():
    out = subprocess.run(["bash", str(WRAPPER)], capture_output=True, text=True)
    assert out.returncode == 2 and "usage: bash bench/mkl_on_amd.sh COMMAND" in out.stderr
    out = subprocess.run(["bash", str(WRAPPER), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: bash bench/mkl_on_amd.sh COMMAND" in out.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_wrapper_names_a_command_it_cannot_find(tmp_path):
    env = _clean_env(XDG_CACHE_HOME=str(tmp_path))
    out = subprocess.run(
        ["bash", str(WRAPPER), "no-such-cmd"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 127 and "command not found: no-such-cmd" in out.stderr


@pytest.mark.parametrize(
    "intel_paths,flags,warned",
    [
        (False, {"avx2", "avx512f"}, True),
        (False, {"avx2"}, False),
        (True, {"avx512f"}, False),
        (None, {"avx512f"}, False),  # unknown: no word
    ],
)
def test_mkl_problem_only_where_avx512_is_withheld(monkeypatch, intel_paths, flags, warned):
    monkeypatch.setattr(hardware, "mkl_intel_paths", lambda: intel_paths)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    problem = hardware.mkl_problem()
    assert (problem is not None) == warned
    if warned:
        assert "generic float32 GEMM kernels" in problem and "bench/mkl_on_amd.sh" in problem


@pytest.mark.parametrize("precision,noted", [("float32", 1), ("bfloat16", 0)])
def test_train_notes_the_generic_mkl_kernels_in_float32(
    tmp_path, monkeypatch, capsys, precision, noted
):
    """Once, and only in float32: bfloat16 matmuls run in oneDNN, not MKL."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hardware, "mkl_problem", lambda: "MKL runs its generic kernels here")
    monkeypatch.setattr(hardware, "bfloat16_problem", lambda device="cpu": None)
    small = ["--n-train", "32", "--n-val", "8", "--widths", "4", "4", "--batch-size", "16"]
    args = ["train", *small, "--epochs", "1", "--precision", precision, "--no-pictures", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.count("note: MKL runs its generic kernels here") == noted


@pytest.mark.parametrize(
    "native,speedup,noted",
    [(True, 0.7, True), (True, 1.0, True), (True, 2.5, False), (False, 0.5, False)],
)
def test_bfloat16_no_faster_only_where_native_units_measure_slow(
    monkeypatch, native, speedup, noted
):
    """Native bfloat16 need not beat float32 (AVX512-BF16 without AMX against MKL's AVX-512
    float32 kernels): the line says so, with the measured ratio."""
    monkeypatch.setattr(hardware, "native_bfloat16", lambda device="cpu": native)
    monkeypatch.setattr(hardware, "bfloat16_speedup", lambda: speedup)
    hardware.bfloat16_no_faster.cache_clear()
    line = hardware.bfloat16_no_faster()
    hardware.bfloat16_no_faster.cache_clear()
    assert (line is not None) == noted
    if noted:
        assert f"ran at {speedup:.2f}x the speed of the float32 one" in line


def test_bfloat16_speedup_times_both_precisions(monkeypatch):
    """A real ratio of two timings: a bfloat16 product made artificially slow reads slower."""
    plain = hardware.bfloat16_speedup(repeats=3)
    assert 0 < plain < 100
    matmul = torch.Tensor.matmul

    def slow_bfloat16(a, b):
        if a.dtype == torch.bfloat16:
            for _ in range(20):
                matmul(a, b)
        return matmul(a, b)

    monkeypatch.setattr(torch.Tensor, "matmul", slow_bfloat16)
    assert hardware.bfloat16_speedup(repeats=3) < plain / 4
    with pytest.raises(ValueError, match=r"repeats must be a positive int, got 0"):
        hardware.bfloat16_speedup(repeats=0)


@pytest.mark.parametrize("precision,noted", [("bfloat16", 1), ("float32", 0)])
def test_train_notes_a_cpu_whose_bfloat16_is_no_faster(
    tmp_path, monkeypatch, capsys, precision, noted
):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hardware, "bfloat16_problem", lambda device="cpu": None)
    monkeypatch.setattr(hardware, "bfloat16_no_faster", lambda: "bfloat16 is slow here")
    small = ["--n-train", "32", "--n-val", "8", "--widths", "4", "4", "--batch-size", "16"]
    args = ["train", *small, "--epochs", "1", "--precision", precision, "--no-pictures", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert out.count("note: --precision bfloat16: bfloat16 is slow here") == noted
    # eval and denoise say it too (they had said nothing)
    assert main(["eval", "--n-val", "8", "--precision", precision]) == 0
    image = tmp_path / "in.png"
    write_image(image, torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8))
    assert main(["denoise", str(image), str(tmp_path / "out.png"), "--precision", precision]) == 0
    out = capsys.readouterr().out
    assert out.count("note: --precision bfloat16: bfloat16 is slow here") == 2 * noted


@pytest.mark.parametrize(
    "info,native",
    [
        ({}, None),  # no /proc/cpuinfo (macOS, Windows): unknown, not "no"
        ({"Features": "fp asimd sve bf16 i8mm", "CPU implementer": "0x41"}, True),  # Graviton 3
        ({"Features": "fp asimd evtstrm aes"}, False),
        ({"flags": "fpu sse2 avx2 avx512f", "model name": "Old Xeon"}, False),
        ({"flags": "fpu avx512f avx512_bf16", "model name": "Zen 4"}, True),
    ],
)
def test_native_bfloat16_is_unknown_where_the_features_are_not_listed(monkeypatch, info, native):
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: info)
    assert hardware.native_bfloat16("cpu") is native
    assert (hardware.bfloat16_problem("cpu") is not None) == (native is False)
    assert (hardware.bfloat16_unknown("cpu") is not None) == (native is None)
    line = hardware.describe()
    expected = {None: "unknown", True: "yes", False: "no"}[native]
    assert f"native bfloat16: {expected}" in line
    assert ("flags: unknown" in line) == (native is None)


def test_a_bfloat16_model_on_a_cpu_without_it_warns_once(monkeypatch):
    from n2nfunc import Model
    from n2nfunc.data import make_pairs

    monkeypatch.setattr(hardware, "_cpuinfo", lambda: {"flags": "fpu avx2", "model name": "X"})
    x, y = make_pairs(8, "train", seed=0)
    m = Model({"widths": (4, 4), "batch_size": 4, "precision": "bfloat16"})
    with pytest.warns(UserWarning, match=r"precision 'bfloat16': this CPU \(X\) has no native"):
        m.train(x, y, num_epochs=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.predict(x)  # said once per Model
