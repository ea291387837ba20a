"""The exported submission, run the way the course grader runs it: in a fresh interpreter
where n2nfunc cannot be imported, with autograd off."""

import ast
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from test_allowed_primitives import ALLOWED, STDLIB_OK

import n2nfunc as nf
from n2nfunc.data import make_pairs
from n2nfunc.export import SUBPACKAGES, VENDORED, export_submission

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    import torch                  # torch's own dependencies load first; then nothing else may
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("n2nfunc", "tqdm", "typing_extensions"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, _Block())
    for m in [m for m in sys.modules if m.split(".")[0] == "n2nfunc"]:
        del sys.modules[m]
    try:
        import n2nfunc
        raise SystemExit("n2nfunc was importable")
    except ImportError:
        pass
    torch.set_grad_enabled(False)
    torch.set_num_threads(2)
""")


@pytest.fixture(scope="module")
def submission(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    return export_submission(out)


def run(code: str, cwd: Path, timeout: int = 600) -> dict:
    script = BLOCKER + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_layout(submission):
    names = {p.relative_to(submission).as_posix() for p in submission.rglob("*") if p.is_file()}
    assert {"__init__.py", "model.py", "bestmodel.pth"} <= names
    assert {f"others/n2nfunc/{f}" for f in VENDORED} <= names
    package = Path(__file__).resolve().parent.parent / "n2nfunc"
    for sub in SUBPACKAGES:
        files = {p.name for p in (package / sub).glob("*.py")}
        assert "__init__.py" in files
        assert {f"others/n2nfunc/{sub}/{f}" for f in files} <= names


def test_stateful_layers_work_in_the_submission(submission):
    result = run(
        """
        import json
        import model
        core = model._core
        net = core.Sequential(core.Conv2d(3, 4, 3, padding=1), core.BatchNorm2d(4), core.ReLU(),
                              core.Dropout(0.5, generator=torch.Generator().manual_seed(0)))
        y = net(torch.randn(2, 3, 5, 5))
        net.backward(torch.randn_like(y))
        f = core.serial(core.conv2d(4, 3), core.batch_norm2d(), core.dropout(0.2))
        _, params, state = f.init(None, (-1, 3, 6, 6))
        x = torch.randn(2, 3, 6, 6)
        out, state = f.apply(params, state, x, train=True, rng=torch.Generator())
        steps = int(state["1"]["num_batches_tracked"])
        same = bool(torch.equal(net.eval()[3](y), y))
        print(json.dumps({"keys": list(net.state_dict()), "steps": steps, "eval_same": same}))
    """,
        submission,
    )
    assert "1.running_var" in result["keys"] and "1.num_batches_tracked" in result["keys"]
    assert result["steps"] == 1 and result["eval_same"]


def test_exported_compute_files_import_only_allowed_primitives(submission):
    for path in (submission / "others" / "n2nfunc").rglob("*.py"):
        if path.name == "checkpoint.py":  # file reading: torch.frombuffer, pickle
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level:
                if node.module in ALLOWED:
                    assert {a.name for a in node.names} <= ALLOWED[node.module], (path, node.module)
                else:
                    assert node.module.split(".")[0] in STDLIB_OK, (path, node.module)
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in STDLIB_OK for a in node.names), path
    for path in submission.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                mods = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                )
                assert all(
                    m.split(".")[0]
                    in STDLIB_OK
                    | {
                        "torch",
                        "importlib",
                        "os",
                        "sys",
                        "io",
                        "pickle",
                        "pickletools",
                        "secrets",
                        "shutil",
                        "time",
                        "ctypes",
                        "errno",
                    }
                    for m in mods
                ), (path, mods)


def test_export_never_imports_torch_distributed(submission):
    assert not {"distributed.py", "launch.py"} & set(VENDORED)
    for path in submission.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            assert not any(
                part in ("distributed", "launch") for n in names for part in n.split(".")
            ), (path, names)


def test_blocks_behave_like_torch_for_the_grader(submission):
    result = run(
        """
        import json
        import torch.nn.functional as F
        from model import Conv2d, TransposeConv2d, Upsampling, NearestUpsampling, ReLU, Sigmoid
        from model import MSE, SGD, Sequential
        out = {}
        x = torch.randn(2, 3, 11, 9)
        conv = Conv2d(3, 3, 3)
        out["conv"] = float((conv.forward(x) - F.conv2d(x, conv.weight, conv.bias)).abs().max())
        conv2 = Conv2d(3, 5, kernel_size=3, stride=2, padding=1)
        y = conv2(x)
        ct = torch.randn_like(y)
        dx = conv2.backward(ct)
        with torch.enable_grad():
            xr, w, b = (t.clone().requires_grad_() for t in (x, conv2.weight, conv2.bias))
            gx, gw, gb = torch.autograd.grad(F.conv2d(xr, w, b, 2, 1), [xr, w, b], ct)
        out["dx"] = float((dx - gx).abs().max())
        out["dw"] = float((conv2.param()[0][1] - gw).abs().max())
        t = TransposeConv2d(3, 4, 4, stride=2, padding=1)
        out["tconv"] = float((t(x) - F.conv_transpose2d(x, t.weight, t.bias, 2, 1)).abs().max())
        up = Upsampling(3, 4, 3, padding=1)
        ref = F.conv2d(F.interpolate(x, scale_factor=2), up.weight, up.bias, padding=1)
        out["up"] = float((up(x) - ref).abs().max())
        net = Sequential(Conv2d(3, 8, 3, stride=2, padding=1), ReLU(),
                         Conv2d(8, 8, 3, stride=2, padding=1), ReLU(),
                         NearestUpsampling(2), ReLU(), Upsampling(8, 3, 3, padding=1), Sigmoid())
        loss, opt = MSE(), SGD(net.param(), lr=0.1)
        value = loss.forward(net.forward(torch.rand(4, 3, 8, 8)), torch.rand(4, 3, 8, 8))
        net.backward(loss.backward())
        opt.step()
        out["loss"] = float(value)
        print(json.dumps(out))
    """,
        submission,
    )
    assert result["conv"] < 1e-5 and result["dx"] < 1e-5 and result["dw"] < 1e-4
    assert result["tconv"] < 1e-5 and result["up"] < 1e-5 and result["loss"] > 0


def test_the_published_block_checks_pass_exactly(submission):
    """The course's published test template compares ``Conv2d(3, 3, 3)`` on one 1 x 3 x 32 x
    32 image with ``F.conv2d`` by ``torch.allclose`` at its default tolerances, which a sum
    in another order misses near zero: there the blocks compute in PyTorch's order and
    give its bits, gradients too (n2nfunc.torch_order)."""
    result = run(
        """
        import json
        import torch.nn.functional as F
        from model import Conv2d, TransposeConv2d, Upsampling, Sigmoid, Sequential
        close, equal = 0, 0
        for seed in range(20):
            torch.manual_seed(seed)
            x = torch.randn(1, 3, 32, 32)
            conv, sigmoid = Conv2d(3, 3, 3), Sigmoid()
            close += torch.allclose(conv.forward(x), F.conv2d(x, conv.weight, conv.bias))
            close += torch.allclose(sigmoid.forward(x), torch.sigmoid(x))
            seq = Sequential(conv, sigmoid)
            ref = F.conv2d(x, conv.weight, conv.bias).sigmoid()
            close += torch.allclose(seq.forward(x), ref)
            t = TransposeConv2d(3, 5, 3, stride=2, padding=1, output_padding=1)
            equal += torch.equal(t.forward(x), F.conv_transpose2d(x, t.weight, t.bias, 2, 1, 1))
            up = Upsampling(3, 4, 3, padding=1)
            ref = F.conv2d(F.interpolate(x[:, :, :16], scale_factor=2), up.weight, up.bias, 1, 1)
            equal += torch.equal(up.forward(x[:, :, :16]), ref)
            ct = torch.randn(1, 3, 30, 30)
            dx = conv.backward(ct)
            with torch.enable_grad():
                xr, w, b = (v.clone().requires_grad_() for v in (x, conv.weight, conv.bias))
                grads = torch.autograd.grad(F.conv2d(xr, w, b), [xr, w, b], ct)
            mine = [dx] + [grad for _, grad in conv.param()]
            equal += all(torch.equal(a, b) for a, b in zip(mine, grads))
        print(json.dumps({"close": close, "equal": equal}))
    """,
        submission,
    )
    assert result == {"close": 60, "equal": 60}


def test_model_flow_of_the_grader(submission, tmp_path):
    xt, yt = make_pairs(2000, "train", seed=4)
    xv, yv = make_pairs(300, "val", seed=4)
    torch.save((xt, yt, xv, yv), tmp_path / "data.pt")
    result = run(
        f"""
        import json
        from model import Model
        xt, yt, xv, yv = torch.load({str(tmp_path / "data.pt")!r})
        def psnr(a, b):
            a, b = a.double() / 255, b.double() / 255
            return float((-10 * ((a - b) ** 2).mean((1, 2, 3)).log10()).mean())
        m = Model()
        m.load_pretrained_model()
        big = m.predict(torch.randint(0, 256, (1, 3, 512, 512), dtype=torch.uint8))
        out = {{"shape": list(big.shape), "min": float(big.min()), "max": float(big.max())}}
        out["noisy"] = psnr(xv.float(), yv.float())
        out["pretrained"] = psnr(m.predict(xv), yv.float())
        m.train(xt, yt, num_epochs=1)
        out["after_train"] = psnr(m.predict(xv), yv.float())
        m2 = Model()
        m2.train(xt[:64].float() / 255, yt[:64].float() / 255)      # old grader: no num_epochs, 0-1
        print(json.dumps(out))
    """,
        submission,
    )
    assert result["shape"] == [1, 3, 512, 512]
    assert 0 <= result["min"] and result["max"] <= 255 and result["max"] > 1
    assert result["pretrained"] > result["noisy"]
    assert result["after_train"] > result["noisy"]


def test_package_style_import_from_the_parent_folder(submission):
    result = run(
        """
        import json
        from Miniproject_2.model import Model, Conv2d, SGD
        m = Model()
        m.load_pretrained_model()
        ok = m.predict(torch.rand(1, 3, 9, 13)).shape == (1, 3, 9, 13)
        same = all(torch.equal(a, b) for (a, _), (b, _) in
                   zip(Model.from_pretrained().net.param(), m.net.param()))
        try:
            Model.from_pretrained("unet-gaussian")
            refused = ""
        except ValueError as e:
            refused = str(e)
        print(json.dumps({"ok": ok, "same": same, "refused": refused}))
    """,
        submission.parent,
    )
    assert result["ok"] and result["same"]
    assert "ships one network, 'exercise' (bestmodel.pth), not 'unet-gaussian'" in result["refused"]


def test_the_submissions_model_names_a_missing_file_and_trains_in_bfloat16(submission, tmp_path):
    """Two modules the submission does not ship were imported on these paths: pretrained (for
    a hint on a missing file: ModuleNotFoundError instead of FileNotFoundError) and hardware
    (bfloat16 training: ImportError)."""
    result = run(
        f"""
        import json
        from model import Model
        try:
            Model().load_pretrained_model({str(tmp_path / "missing.pth")!r})
            said = ""
        except FileNotFoundError as e:
            said = "FileNotFoundError: " + str(e)
        m = Model({{"precision": "bfloat16"}})
        loss = m.train_epoch(torch.rand(8, 3, 16, 16), torch.rand(8, 3, 16, 16), 0, 1)
        print(json.dumps({{"said": said, "loss": loss}}))
    """,
        submission,
    )
    assert result["said"].startswith("FileNotFoundError: checkpoint not found:"), result
    assert result["loss"] > 0


def test_export_refuses_a_broken_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.pth"):
        export_submission(tmp_path / "out", bad)
    for payload in (None, 5, [1]):  # a TypeError ("not iterable") had come from `in`
        nf.save(bad, payload)
        with pytest.raises(ValueError, match="bad.pth: not a checkpoint of the course's network"):
            export_submission(tmp_path / "out", bad)


def test_export_ships_only_what_the_grader_can_load(tmp_path):
    """The export checked the file's keys and values only: a weight of the wrong shape, or a
    config the Model refuses, was shipped, and the grader's load_pretrained_model failed.
    A run's training state is shipped as its weights alone."""
    from n2nfunc import checkpoint
    from n2nfunc.model import Model

    wrong_shape = Model().payload()
    wrong_shape["params"]["0.weight"] = torch.zeros(1)
    odd_kernel = Model().payload()
    odd_kernel["config"].update(upsampling="nearest", kernel=4)
    for name, payload, pattern in (
        ("shape", wrong_shape, r".*'0.weight' has shape \(1,\), expected \(48, 3, 4, 4\)"),
        ("kernel", odd_kernel, "upsampling 'nearest' needs an odd kernel"),
    ):
        checkpoint.save(tmp_path / f"{name}.pth", payload)
        with pytest.raises(ValueError, match=f"{name}.pth: {pattern}"):
            export_submission(tmp_path / name, tmp_path / f"{name}.pth")
        assert not (tmp_path / name).exists()
    model = Model({"widths": (4, 4)})
    state = {**model.payload(), "noise": "downsample", "optimizer": {"m": [torch.ones(9)]}}
    checkpoint.save(tmp_path / "checkpoint.pth", {**state, "epoch": 3, "rng": torch.ones(3)})
    final = export_submission(tmp_path / "out", tmp_path / "checkpoint.pth")
    shipped = checkpoint.load(final / "bestmodel.pth")
    assert sorted(shipped) == ["config", "noise", "params"]
    assert all(torch.equal(shipped["params"][k], v) for k, v in model.payload()["params"].items())


def test_a_failed_export_leaves_nothing_half_written_and_names_the_destination(
    tmp_path, monkeypatch
):
    import errno

    from n2nfunc import checkpoint

    real = checkpoint.save

    def disk_full(path, tree, *a, **kw):
        if str(path).endswith("bestmodel.pth"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, tree, *a, **kw)

    monkeypatch.setattr(checkpoint, "save", disk_full)
    with pytest.raises(OSError) as info:
        export_submission(tmp_path / "out")
    assert info.value.filename == str(tmp_path / "out" / "Miniproject_2")
    assert "No space left on device" in str(info.value)
    assert list((tmp_path / "out").iterdir()) == []  # no half-written submission


def test_a_new_export_keeps_the_users_files(tmp_path):
    """The report the course asks for lives in Miniproject_2/: exporting again replaces only
    what the export writes."""
    final = export_submission(tmp_path)
    (final / "Report_2.pdf").write_bytes(b"%PDF report")
    (final / "others" / "notes.py").write_text("x = 1\n")
    (final / "model.py").write_text("# an earlier export's: loads others/n2nfunc")
    (final / "others" / "n2nfunc" / "stale.py").write_text("")
    assert export_submission(tmp_path) == final
    assert (final / "Report_2.pdf").read_bytes() == b"%PDF report"
    assert (final / "others" / "notes.py").read_text() == "x = 1\n"
    assert "class Model" in (final / "model.py").read_text()
    assert not (final / "others" / "n2nfunc" / "stale.py").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["Miniproject_2"]  # no temporary left


def test_export_refuses_nan_weights_and_replaces_odd_layouts(tmp_path):
    from n2nfunc import checkpoint
    from n2nfunc.model import Model

    payload = Model().payload()
    name = next(iter(payload["params"]))
    payload["params"][name] = payload["params"][name].clone().fill_(float("nan"))
    checkpoint.save(tmp_path / "nan.pth", payload)
    with pytest.raises(ValueError, match=f"parameter '{name}' holds NaN"):
        export_submission(tmp_path / "out", tmp_path / "nan.pth")
    with pytest.raises(ValueError, match="holds NaN"):
        nf.load_network(tmp_path / "nan.pth")
    final = export_submission(tmp_path / "out")
    import shutil

    shutil.rmtree(final / "others")
    (final / "others").write_text("a file where the folder goes")
    export_submission(tmp_path / "out")
    assert (final / "others" / "n2nfunc" / "layers" / "conv.py").is_file()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["Miniproject_2"]


@pytest.mark.parametrize(
    "files",
    [
        ["model.py"],
        ["__init__.py", "model.py"],
        ["bestmodel.pth"],
        ["others/__init__.py"],
        ["others"],
    ],
)
def test_export_replaces_no_file_it_did_not_write(tmp_path, files):
    """A Miniproject_2 of the user's own (the course's template, their solution) had its
    model.py and __init__.py replaced, and others/n2nfunc removed, without a word (a file
    named others: deleted for the others/ folder)."""
    final = tmp_path / "Miniproject_2"
    for name in files:
        (final / name).parent.mkdir(parents=True, exist_ok=True)
        (final / name).write_text("# the user's own\n")
    with pytest.raises(FileExistsError, match=rf"it holds {', '.join(files)}, not written by"):
        export_submission(tmp_path)
    assert all((final / name).read_text() == "# the user's own\n" for name in files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Miniproject_2"]


def test_an_export_that_lost_its_model_py_is_still_an_export(tmp_path):
    """(an export cut short between removing model.py and moving the new one in)"""
    final = export_submission(tmp_path)
    (final / "model.py").unlink()
    assert export_submission(tmp_path) == final and (final / "model.py").is_file()


def test_export_through_a_link_to_another_file_system(tmp_path):
    """The submission is built beside the folder the link points to: built beside the link,
    its rename across file systems failed (EXDEV) and left an empty others/ behind."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    real = Path(tempfile.mkdtemp(dir=shm))
    try:
        (tmp_path / "Miniproject_2").symlink_to(real)
        export_submission(tmp_path)
        assert (real / "model.py").is_file() and (real / "others" / "n2nfunc").is_dir()
        assert sorted(p.name for p in real.parent.iterdir() if p.name.startswith(".Mini")) == []
    finally:
        shutil.rmtree(real)


def test_export_through_a_linked_folder_writes_where_it_points(tmp_path):
    real, out = tmp_path / "real", tmp_path / "out"
    real.mkdir(), out.mkdir()
    (real / "Report_2.pdf").write_text("report")
    (out / "Miniproject_2").symlink_to(real)
    export_submission(out)
    assert (real / "model.py").is_file() and (real / "Report_2.pdf").read_text() == "report"


def test_a_folder_named_miniproject_2_is_written_into_not_nested(tmp_path, monkeypatch):
    """``export-submission out/Miniproject_2``, or ``.`` inside such a folder, had written a
    second, complete submission inside the first (zipped with it)."""
    named = tmp_path / "out" / "Miniproject_2"
    assert export_submission(named) == named
    (named / "Report_2.pdf").write_text("report")
    monkeypatch.chdir(named)
    assert export_submission(".").resolve() == named
    assert sorted(p.name for p in named.iterdir()) == [
        "Report_2.pdf", "__init__.py", "bestmodel.pth", "model.py", "others",
    ]  # fmt: skip
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["Miniproject_2"]  # no temporary


def test_an_export_over_one_it_cannot_change_replaces_nothing(tmp_path, monkeypatch):
    """A read-only others/ had bestmodel.pth replaced before the library's copy failed: a
    submission of new weights and old code, the error naming Miniproject_2."""
    import os

    final = export_submission(tmp_path)
    before = {p: p.read_bytes() for p in final.rglob("*") if p.is_file()}
    locked = final / "others" / "n2nfunc" / "layers"
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real(p, mode))
    weights = tmp_path / "w.pth"
    nf.Model().save(weights)
    with pytest.raises(PermissionError) as info:
        export_submission(tmp_path, weights)
    assert info.value.filename == str(locked) and "nothing was replaced" in str(info.value)
    assert {p: p.read_bytes() for p in final.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name != "w.pth"] == ["Miniproject_2"]
