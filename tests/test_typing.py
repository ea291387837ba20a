"""n2nfunc ships py.typed, so its annotations are part of its interface: an annotated user
program of the README's API type-checks under ``mypy --strict`` and runs, and a misspelt name
is an error there. The mypy check runs where mypy is installed (the dev extra, as in CI)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TYPED = Path(__file__).resolve().parent / "typed"


def test_annotations_resolve_at_run_time():
    """typing.get_type_hints (beartype, pydantic, sphinx) failed on Model.save: its path type
    was imported for type checkers only."""
    import typing

    import n2nfunc as nf

    for function in (nf.Model.save, nf.Model.load_pretrained_model, nf.save, nf.load_network):
        assert "path" in typing.get_type_hints(function)
    for name in nf.__all__:
        obj = getattr(nf, name)
        for f in [obj, *vars(obj).values()] if isinstance(obj, type) else [obj]:
            if callable(f) and hasattr(f, "__annotations__") and not isinstance(f, type):
                typing.get_type_hints(f)


def test_the_typed_user_program_runs():
    done = subprocess.run(
        [sys.executable, str(TYPED / "user_program.py")], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_typed_user_program_passes_mypy_strict_and_a_typo_does_not(tmp_path):
    pytest.importorskip("mypy")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\nfollow_imports = silent\n")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
         str(tmp_path / "cache"), str(TYPED / "user_program.py"), str(TYPED / "misspelt.py")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    names = ("conv2D", "Sequentail")  # a call and a bare attribute
    assert len(errors) == len(names) and all(
        "misspelt.py" in line and f'"{name}"' in line for line, name in zip(errors, names)
    ), done.stdout + done.stderr
