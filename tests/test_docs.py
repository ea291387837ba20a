"""The README's Python snippets and the examples run as printed.

A README block whose first line is ``# continues the previous block`` runs after the
block before it, in the same process; every other block starts a fresh interpreter.
Examples run with ``--quick`` where they offer it (a smaller data set, same code path).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTINUES = "# continues the previous block"


def readme_programs(text: str) -> list[str]:
    """The README's ```python blocks, continuing blocks joined to the one before."""
    programs: list[str] = []
    for block in re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        if block.startswith(CONTINUES):
            if not programs:
                raise ValueError("the README's first python block cannot continue another")
            programs[-1] += "\n" + block
        else:
            programs.append(block)
    return programs


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "N2NFUNC_CACHE": str(tmp_path / "cache"),
        "MPLBACKEND": "Agg",
    }
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_readme_blocks_are_found():
    programs = readme_programs((ROOT / "README.md").read_text())
    assert len(programs) >= 2
    assert readme_programs("```python\na = 1\n```\n```python\n" + CONTINUES + "\nb = a\n```\n") == [
        "a = 1\n\n" + CONTINUES + "\nb = a\n"
    ]


@pytest.mark.parametrize("index", range(len(readme_programs((ROOT / "README.md").read_text()))))
def test_readme_python_snippet_runs(index, tmp_path):
    program = readme_programs((ROOT / "README.md").read_text())[index]
    (tmp_path / "snippet.py").write_text(program)
    done = _run(["snippet.py"], tmp_path)
    assert done.returncode == 0, f"README snippet {index + 1} failed:\n{program}\n{done.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_example_runs(name, tmp_path):
    path = ROOT / "examples" / name
    quick = ["--quick"] if '"--quick"' in path.read_text() else []
    done = _run([str(path), *quick], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "an example prints what it shows"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_example_help_prints_its_docstring_and_runs_nothing(name, tmp_path):
    """`--help` ran a whole 4-minute training before the examples parsed their options."""
    done = _run([str(ROOT / "examples" / name), "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and "python examples/" + name in done.stdout


def test_readme_names_every_export_and_its_dotted_names_resolve(tmp_path):
    """Each name in ``n2nfunc.__all__`` is in the README's code, and every ``n2nfunc.a.b`` in
    its inline code resolves by attribute access after ``import n2nfunc`` (in a fresh
    interpreter), as a reader types it: ``n2nfunc.distributed`` and ``n2nfunc.unet.skip_block``
    did not."""
    text = (ROOT / "README.md").read_text()
    spans = [s for s in re.findall(r"`([^`\n]+)`", text) if not s.startswith(("from ", "import "))]
    dotted = sorted({m for s in spans for m in re.findall(r"\bn2nfunc(?:\.\w+)+", s)})
    assert "n2nfunc.distributed.mean_gradients" in dotted
    program = (
        "import functools, n2nfunc\n"
        f"for ref in {dotted!r}:\n"
        "    functools.reduce(getattr, ref.split('.')[1:], n2nfunc)\n"
    )
    (tmp_path / "names.py").write_text(program)
    done = _run(["names.py"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    import n2nfunc

    code = " ".join(spans)
    assert not [n for n in n2nfunc.__all__ if not re.search(rf"\b{n}\b", code)]
