"""The bench scripts refuse bad options in one usage line, before any work: a zero step or
epoch count once trained nothing and wrote the untrained weights over the shipped ones, and
``--epochs 0`` / ``--batch 0`` fell back to the defaults."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


GAUSSIAN = "train_unet.py --name unet-gaussian"


@pytest.mark.parametrize(
    "command, said",
    [
        (f"{GAUSSIAN} --steps 0", "--steps: expected an integer >= 1"),
        (f"{GAUSSIAN} --minutes -1", "--minutes: expected a finite number > 0"),
        (f"{GAUSSIAN} --steps 1 --arch foo", "--arch: expected DEPTH:ENC,DEC,A,B"),
        (f"{GAUSSIAN} --steps 1 --noise foo", "--noise: noise 'foo': unknown kind"),
        ("shipped_weights.py --epochs 0", "--epochs: expected an integer >= 1"),
        ("psnr.py --epochs 0", "--epochs: expected an integer >= 1"),
        ("op_times.py --batch 0", "--batch: expected an integer >= 1"),
        ("unet_train_step.py --arch 4:1,2", "--arch: expected DEPTH:ENC,DEC,A,B"),
        ("layers.py --threads 0", "--threads: expected an integer >= 1"),
        ("layers.py --unet --crop 40", "--crop must be a multiple of 16"),
        ("layers.py --crop 32", "--crop is for --unet"),
        ("op_times.py --crop 32", "--crop is for --unet"),
        ("compare_commits.py --batches 0,32", "--batches: expected batch sizes like 1,32,100"),
        # checked before a run (they had failed after it, the trained weights lost, or had
        # created the folder and downloaded 130 MB into it)
        (f"{GAUSSIAN} --steps 1 --out /", "--out: / is a folder; give a file name"),
        (f"{GAUSSIAN} --steps 1 --out /proc/x.pth", "--out: cannot write /proc/x.pth: /proc"),
        ("shipped_weights.py --out /", "--out: / is a folder"),
        (f"{GAUSSIAN} --steps 1 --photos /no/such/photos", "--photos: no such folder"),
        ("photo_denoise.py --photos /no/such/photos", "--photos: no such folder"),
        ("op_times.py --by matmul --contender 'torch.nn float32 ch-last'", "runs convolutions"),
        ("train_step.py --memory x", "are for the script's own subprocesses"),
        ("op_times.py --by layer --unet", "the default or reference network"),
        ("op_times.py --unet --reference", "one network at a time"),
        ("op_times.py --by layer --against 'torch.nn foo'", "--against: one of"),
        ("op_times.py --by layer --against 'n2nfunc bfloat16'", "--against: one of"),
        ("op_times.py --by layer --contender 'n2nfunc bfloat16'", "whose network is a Sequential"),
    ],
)
def test_a_bad_option_is_one_usage_error(command, said):
    script, *args = shlex.split(command)
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_op_times_names_the_calling_line_and_each_matmul_shape():
    """``bench/op_times.py --by site`` and ``--by matmul``: each op is put on the n2nfunc line
    that ran it, and each matrix product's (M, K, N, batch) is its operands' shape."""
    import torch

    sys.path.insert(0, str(BENCH))
    import op_times

    from n2nfunc import conv2d

    layer = conv2d(5, kernel_size=3, padding=1)
    _, params = layer.init(torch.Generator().manual_seed(0), (2, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    with op_times.OpClock("site") as clock:
        layer.apply(params, x)
    sites = {key for _, key, _ in clock.records}
    assert sites and all(s == "-" or s.count(":") == 2 for s in sites), sites
    assert any(s.startswith("kernels/") for s in sites), sites
    with op_times.OpClock("matmul") as clock:
        x.reshape(6, 64).matmul(torch.randn(64, 7))
        torch.randn(4, 5, 6).bmm(torch.randn(4, 6, 3))
        x.sum()  # not a matmul: not recorded
    assert [key[:4] for _, key, _ in clock.records] == [(6, 64, 7, 1), (5, 6, 3, 4)]


@pytest.mark.parametrize("crop", [16, 48])
def test_layers_unet_cases_are_the_unets_layers(crop):
    """``bench/layers.py --unet`` times each layer of the shipped U-Net once, at the input
    shape it has in the network: its cases' weights are the network's, shape for shape, and
    each case's layer takes its input shape."""
    import torch

    from n2nfunc.unet import unet

    sys.path.insert(0, str(BENCH))
    try:
        import layers
    finally:
        sys.path.remove(str(BENCH))
    gen = torch.Generator().manual_seed(0)
    _, params = unet(4, (32, 64, 48, 24)).init(gen, (2, 3, crop, crop))

    def weights(tree):
        if isinstance(tree, dict):
            return [w for v in tree.values() for w in weights(v)]
        return [tuple(tree.shape)] if tree.dim() == 4 else []

    cases = layers.unet_cases(4, (32, 64, 48, 24), crop)
    timed = []
    for _, layer, ref, shape, *_ in cases:
        _, p = layer.init(gen, (2, *shape))
        timed += weights(p)
        x = torch.randn(2, *shape)
        assert torch.allclose(layer.apply(p, x), ref(x, p), atol=1e-4)
    assert sorted(timed) == sorted(weights(params))
    assert sum(name.startswith("max_pool2d") for name, *_ in cases) == 4


def test_the_memory_probe_drops_the_profilers_status_lines_and_keeps_the_rest(capfd):
    sys.path.insert(0, str(BENCH))
    try:
        import common
    finally:
        sys.path.remove(str(BENCH))

    def step():
        os.write(2, b"a line of the step\n" + common.PROFILER_CHATTER[0].encode() + b" x\n")

    assert common.peak_live_tensor_bytes(step) >= 0
    err = capfd.readouterr().err
    assert "a line of the step" in err and common.PROFILER_CHATTER[0] not in err


def test_the_memory_probe_counts_what_a_step_frees_of_the_step_before():
    """A step that drops the last step's leftover (4 MB) before making its own: the
    profiler records no free of a tensor made before it started, which had put the peak
    at 14 MB."""
    sys.path.insert(0, str(BENCH))
    try:
        import common
    finally:
        sys.path.remove(str(BENCH))
    import torch

    mb = 2**18  # float32 numbers in a MB
    state = {"left": torch.zeros(4 * mb)}

    def step():
        a = torch.ones(4 * mb)
        b = torch.ones(2 * mb)
        del a
        state["left"] = None  # the step before's
        c = torch.ones(8 * mb)
        state["left"] = torch.zeros(4 * mb)
        del b, c

    assert common.peak_live_tensor_bytes(step) == 10 * 2**20  # 2 - 4 + 8 + 4


@pytest.mark.parametrize(
    "info,note",
    [
        ({"flags": "fpu avx2", "model name": "Old"}, "NOTE: this CPU (Old) has no native bfloat16"),
        ({}, "NOTE: cannot tell whether this CPU"),
        ({"flags": "avx512f avx512_bf16", "model name": "Zen 4"}, None),
    ],
)
def test_training_benches_say_where_bfloat16_is_emulated(monkeypatch, info, note):
    """bench/psnr.py and bench/train_unet.py trained bfloat16 emulated without a word."""
    from n2nfunc import hardware

    sys.path.insert(0, str(BENCH))
    try:
        import common
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: info)
    lines = common.machine_lines("cpu", "bfloat16").splitlines()
    assert lines[0].startswith("CPU ") and (
        lines[1:] == [] if note is None else lines[1].startswith(note)
    )
    assert common.machine_lines("cpu", "float32").splitlines() == lines[:1]
    for script in ("psnr.py", "train_unet.py"):
        assert "machine_lines(" in (BENCH / script).read_text()


def test_the_held_out_photos_are_checked_apart_from_the_training_photos(tmp_path, monkeypatch):
    """A held-out photo of the same bytes as a training photo is refused before scoring."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    import shipped_weights

    for part in ("train", "heldout"):
        (tmp_path / part).mkdir()
    (tmp_path / "train" / "a.png").write_bytes(b"\x89PNG same bytes")
    (tmp_path / "heldout" / "b.png").write_bytes(b"\x89PNG other bytes")
    shipped_weights.check_apart(tmp_path)
    (tmp_path / "heldout" / "c.png").write_bytes(b"\x89PNG same bytes")
    with pytest.raises(SystemExit, match=r"heldout holds training photos: c.png = train/a.png"):
        shipped_weights.check_apart(tmp_path)
    (tmp_path / "heldout" / "c.png").unlink()
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "d.png").write_bytes(b"\x89PNG other bytes")
    with pytest.raises(SystemExit, match=r"test holds held-out photos: d.png = heldout/b.png"):
        shipped_weights.check_apart(tmp_path, "test")


def test_interleaved_rounds_pair_the_contenders_and_the_spread_is_their_middle_half():
    """``bench/compare_commits.py``'s ``rounds`` column: the quartiles of the per-round ratios,
    each round's two times side by side; every contender runs once per round, in turn."""
    sys.path.insert(0, str(BENCH))
    import common

    calls = []
    samples = common.interleaved_rounds(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 0, 1, rounds=3
    )
    assert [len(v) for v in samples.values()] == [3, 3]
    assert calls.count("a") == calls.count("b")
    slow, fast = [2.0, 3.0, 1.0, 5.0, 4.0], [1.0, 1.0, 1.0, 1.0, 1.0]
    assert common.ratio_spread(slow, fast) == "2.00-4.00"  # ratios 1..5: quartiles 2 and 4
    assert common.ratio_spread([1.5], [1.0]) == "1.50-1.50"


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # (as layer_table does)
def test_op_times_by_layer_puts_each_op_on_the_block_that_ran_it():
    """``bench/op_times.py --by layer``: both contenders' ops land on the block (forward or
    backward), the loss or the optimizer that ran them -- the convolutions and matrix
    products on the convolution blocks only, and nothing outside a part."""

    sys.path.insert(0, str(BENCH))
    import op_times
    import train_step

    from n2nfunc.model import DEFAULT_CONFIG

    cs = train_step.contenders(DEFAULT_CONFIG, 2)
    ours, theirs = cs["n2nfunc float32"], cs["torch.nn float32 NCHW"]
    names, times, counts = op_times.layer_table(ours, theirs, rounds=2, warmup=1)
    assert names[0] == "0 Conv2d 3->48 s2" and names[6] == "6 TransposeConv2d 48->3 s2", names
    parts = {f"{i} {d}" for i in range(8) for d in ("forward", "backward")}
    parts |= {"loss", "optimizer"}
    for side in (0, 1):
        assert set(counts[side]) == parts, set(counts[side]) ^ parts
        assert all(len(times[side][p]) == 2 for p in parts)
    # where the products ran: clock one more step of each, by op and by part
    conv_parts = {f"{i} {d}" for i in (0, 2, 4, 6) for d in ("forward", "backward")}
    for step in (ours, theirs):
        _, undo = op_times.label_parts(step)
        try:
            with op_times.OpClock("layer") as clock:
                step()
        finally:
            undo()
        products = {label for op, label, _ in clock.records if op_times.kind(op).startswith("mat")}
        assert products == conv_parts, products
        assert {label for _, label, _ in clock.records} == parts  # none left outside a part
    # undone: no label left, no hook on torch's blocks, the class's methods again
    assert op_times.LABEL == ["-"]
    net = theirs.parts["net"]
    assert not any(m._forward_pre_hooks or m._backward_pre_hooks for m in net.children())
    assert "forward" not in vars(ours.parts["net"].blocks[0])
