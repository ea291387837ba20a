import enum
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import NamedTuple

import numpy as np
import pytest
import torch
from helpers import code_running_pickle

import n2nfunc as nf
from n2nfunc import checkpoint
from n2nfunc.model import DEFAULT_WEIGHTS, Model


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
        (b"PK\x03\x04" + bytes(100), "truncated or not an n2nfunc checkpoint"),
        (pickle.dumps({"hello": 1}), "is not an n2nfunc checkpoint"),
        (
            pickle.dumps({"format": "n2nfunc-checkpoint", "version": 99, "payload": {}}),
            "format version 99",
        ),
        (  # a version that prints like the right one
            pickle.dumps({"format": "n2nfunc-checkpoint", "version": "1", "payload": {}}),
            "format version '1'; this n2nfunc reads version 1",
        ),
        (pickle.dumps({"format": "n2nfunc-checkpoint", "version": 1}), "holds no payload"),
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
    # the next save of that file removes the killed writer's temporary once it is an hour
    # old (a writer in another PID namespace may be alive), and nothing else
    killed = next(p for p in tmp_path.iterdir() if p.name.startswith(f".c.pth.{proc.pid}."))
    assert killed.name.endswith(".tmp")
    live = tmp_path / f".c.pth.{os.getppid()}.tmp"
    other = tmp_path / f".d.pth.{proc.pid}.tmp"
    odd = [tmp_path / f".c.pth.{pid}.tmp" for pid in ("99999999999999999999", "\u00b2", "")]
    for p in (live, other, *odd):
        p.touch()
    checkpoint.save(path, {"w": torch.ones(3)})
    assert killed.exists()
    hours_ago = time.time() - 2 * checkpoint.STALE_AFTER_S
    for p in (killed, live, other, *odd):
        os.utime(p, (hours_ago, hours_ago))
    checkpoint.save(path, {"w": torch.ones(3)})
    left = {p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")}
    assert left == {p.name for p in (live, other, *odd)}, left


# ------------------------------------------------------------------ n2nfunc.save / load
DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.complex128,
    torch.complex64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def _sample(dtype, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, generator=g, dtype=dtype) * 1e3
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_bit_for_bit(tmp_path, dtype):
    full = _sample(dtype, (3, 5, 4))
    tensors = {
        "full": full,
        "strided": full.transpose(0, 2)[1:, ::2],  # a non-contiguous view with an offset
        "scalar": _sample(dtype, ()),
        "empty": full[:0],
    }
    if dtype.is_complex:
        tensors["conj"] = full.conj()  # a lazily conjugated view
    nf.save(tmp_path / "t.pth", tensors)
    back = nf.load(tmp_path / "t.pth")
    assert set(back) == set(tensors)
    for k, t in tensors.items():
        assert _same(back[k], t.resolve_conj()), k
        assert back[k].device.type == "cpu" and back[k].is_contiguous()


class AdamLike(NamedTuple):
    count: int
    mu: dict
    nu: list


def test_trees_of_params_and_states_round_trip(tmp_path):
    tree = {
        "params": {"0": {"weight": torch.randn(2, 3, dtype=torch.float64)}, "1": {}},
        "opt": (
            {},
            {"step": 7, "m": [torch.randn(3), torch.zeros(0)], "v": (torch.ones(2, 1),)},
        ),
        "record": AdamLike(3, {"w": torch.arange(5)}, [None, "x"]),
        "meta": [1, 2.5, -0.0, float("inf"), "name", None, True, b"\x00raw", (), []],
        7: "an int key",
    }
    nf.save(tmp_path / "tree.pth", tree)
    back = nf.load(tmp_path / "tree.pth")
    assert set(back) == set(tree)
    assert type(back["opt"]) is tuple and type(back["opt"][1]["v"]) is tuple
    assert type(back["opt"][1]["m"]) is list and back["opt"][0] == {}
    assert back["opt"][1]["step"] == 7 and type(back["opt"][1]["step"]) is int
    for a, b in zip(nf.tree.leaves(back["opt"]), nf.tree.leaves(tree["opt"])):
        assert _same(a, b) if isinstance(b, torch.Tensor) else a == b
    assert _same(back["params"]["0"]["weight"], tree["params"]["0"]["weight"])
    assert back["params"]["1"] == {} and back[7] == "an int key"
    assert back["meta"] == tree["meta"]
    record = back["record"]  # a named tuple again, with the same name and fields
    assert isinstance(record, tuple) and type(record).__name__ == "AdamLike"
    assert record._fields == ("count", "mu", "nu") and record.count == 3
    assert _same(record.mu["w"], torch.arange(5)) and record.nu == [None, "x"]
    count, mu, nu = record
    assert record._asdict()["count"] == count == 3


def test_subclasses_of_plain_values_are_stored_as_plain_values(tmp_path):
    class Mode(str, enum.Enum):
        TRAIN = "train"

    class Level(enum.IntEnum):
        HIGH = 3

    class Score(float):
        pass

    nf.save(tmp_path / "p.pth", {"mode": Mode.TRAIN, "level": Level.HIGH, Mode.TRAIN: Score(0.5)})
    back = nf.load(tmp_path / "p.pth")
    assert back == {"mode": "train", "level": 3, "train": 0.5}
    assert [type(v) for v in back.values()] == [str, int, float]


@pytest.mark.parametrize(
    "tree,error,pattern",
    [
        ({"f": lambda x: x}, TypeError, "type function in a checkpoint, at f$"),
        ([{1, 2}], TypeError, "type set in a checkpoint, at 0$"),
        ({(1, 2): 3}, TypeError, "dict key of type tuple"),
        ({"__tensor__": "float32"}, ValueError, "reserved key '__tensor__'"),
        ({"x": {"__namedtuple__": "T"}}, ValueError, "reserved key '__namedtuple__'.*, at x$"),
        ({"f8": torch.zeros(2, dtype=torch.float8_e4m3fn)}, TypeError, "dtype torch.float8_e4m3fn"),
        ({"s": torch.zeros(3, 3).to_sparse()}, TypeError, "layout"),
        (  # a metric's NumPy scalar deep in a tree: where, and what to do
            {"outer": {"inner": [1, np.float32(2.0)]}},
            TypeError,
            r"type float32 in a checkpoint, at outer.inner.1 \(a NumPy value: x.item\(\)",
        ),
        ({"d": torch.bfloat16}, TypeError, r"type dtype .*, at d \(a dtype: store its name"),
    ],
    ids=[
        "function",
        "set",
        "tuple-key",
        "tensor-key",
        "namedtuple-key",
        "float8",
        "sparse",
        "numpy-scalar",
        "dtype",
    ],  # fmt: skip
)
def test_unstorable_trees_are_refused_before_writing(tmp_path, tree, error, pattern):
    path = tmp_path / "x.pth"
    with pytest.raises(error, match=pattern):
        nf.save(path, tree)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_the_shipped_weights_and_older_files_keep_loading(tmp_path):
    shipped = nf.load(DEFAULT_WEIGHTS)
    assert set(shipped) >= {"config", "params"}
    params = shipped["params"]
    assert params and all(
        isinstance(t, torch.Tensor) and t.dtype == torch.float32 and bool(t.isfinite().all())
        for t in params.values()
    )
    model = Model(shipped["config"])
    model.load_pretrained_model()  # the default path is the shipped file
    for k, t in model.net.state_dict().items():
        assert torch.equal(t, params[k])
    # saved again, the same tree comes back
    nf.save(tmp_path / "again.pth", shipped)
    again = nf.load(tmp_path / "again.pth")
    assert again["config"] == shipped["config"]
    assert all(torch.equal(again["params"][k], v) for k, v in params.items())
    # a file written by hand in the original layout
    old = {
        "format": "n2nfunc-checkpoint",
        "version": 1,
        "payload": {
            "w": {"__tensor__": "float32", "shape": [2], "data": b"\x00\x00\x80?\x00\x00\x00@"},
            "meta": (1, "a"),
        },
    }
    (tmp_path / "old.pth").write_bytes(pickle.dumps(old, protocol=4))
    back = nf.load(tmp_path / "old.pth")
    assert torch.equal(back["w"], torch.tensor([1.0, 2.0])) and back["meta"] == (1, "a")


def test_code_inside_a_well_formed_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    blob = pickle.dumps(
        {"format": "n2nfunc-checkpoint", "version": 1, "payload": {"params": [Evil()]}}
    )
    (tmp_path / "c.pth").write_bytes(blob)
    with pytest.raises(ValueError, match="was refused: refusing to load global 'posix.system'"):
        nf.load(tmp_path / "c.pth")
    (tmp_path / "d.pth").write_bytes(code_running_pickle(marker))
    with pytest.raises(ValueError, match="refused"):
        nf.load(tmp_path / "d.pth")
    assert not marker.exists()


@pytest.mark.parametrize(
    "entry,pattern",
    [
        ({"__tensor__": "float32", "shape": [3], "data": b"\x00" * 8}, "needs 12 bytes"),
        ({"__tensor__": "float32", "shape": [-1], "data": b"\x00" * 8}, "malformed tensor"),
        ({"__tensor__": "object", "shape": [1], "data": b"\x00" * 8}, "malformed tensor"),
        # more dimensions than PyTorch has: its RuntimeError at the first use of the tensor
        ({"__tensor__": "float32", "shape": [1] * 65, "data": b"\x00" * 4}, "65 dims"),
        ({"__namedtuple__": "T", "fields": ["import os"], "values": [1]}, "damaged"),
        ({"__namedtuple__": "T", "fields": ["a"], "values": [1, 2]}, "damaged"),
        ({"__namedtuple__": "T"}, "damaged"),
    ],
)
def test_damaged_entries_give_clear_errors(tmp_path, entry, pattern):
    path = tmp_path / "bad.pth"
    path.write_bytes(
        pickle.dumps({"format": "n2nfunc-checkpoint", "version": 1, "payload": {"x": entry}})
    )
    with pytest.raises(ValueError, match=pattern) as info:
        nf.load(path)
    assert "bad.pth" in str(info.value)


def test_named_tuples_cannot_multiply_a_small_file(tmp_path):
    """Entries sharing one long field list were each given a class of their own: a 224 KiB
    file took 158 MB. Sharing is refused, and the fields are few."""
    fields, values = [f"f{i}" for i in range(2000)], list(range(2000))
    few, some = fields[:50], values[:50]
    shared = [{"__namedtuple__": "X", "fields": few, "values": some} for _ in range(50)]
    wide = [{"__namedtuple__": "X", "fields": fields[:100], "values": values[:100]}]
    for name, payload, pattern in (
        ("shared", shared, "stored in two places"),
        ("wide", wide, "has 100 fields, more than the 64 n2nfunc writes"),
    ):
        blob = {"format": "n2nfunc-checkpoint", "version": 1, "payload": payload}
        (tmp_path / f"{name}.pth").write_bytes(pickle.dumps(blob))
        with pytest.raises(ValueError, match=pattern):
            nf.load(tmp_path / f"{name}.pth")
    from collections import namedtuple

    with pytest.raises(TypeError, match="more than 64 fields"):
        nf.save(tmp_path / "big.pth", namedtuple("Big", [f"f{i}" for i in range(65)])(*range(65)))
    pair = namedtuple("P", ["a", "b"])
    nf.save(tmp_path / "many.pth", [pair(i, i) for i in range(1000)])
    loaded = nf.load(tmp_path / "many.pth")
    assert len({type(p) for p in loaded}) == 1 and loaded[7] == (7, 7)
    # a class per kind: 100,000 kinds of one field each took 631 MB from a 2.9 MB file
    kinds = [{"__namedtuple__": f"N{i}", "fields": ["f"], "values": [i]} for i in range(257)]
    blob = {"format": "n2nfunc-checkpoint", "version": 1, "payload": kinds}
    (tmp_path / "kinds.pth").write_bytes(pickle.dumps(blob))
    with pytest.raises(ValueError, match="more than 256 kinds of named tuple"):
        nf.load(tmp_path / "kinds.pth")
    mixed = [namedtuple(f"N{i}", ["f"])(i) for i in range(256)]
    nf.save(tmp_path / "mixed.pth", mixed)  # as many as load takes
    assert [tuple(t) for t in nf.load(tmp_path / "mixed.pth")] == [(i,) for i in range(256)]
    with pytest.raises(TypeError, match="more than 256 kinds of named tuple"):
        nf.save(tmp_path / "more.pth", [*mixed, namedtuple("Extra", ["f"])(0)])


def _shared_lists(depth: int) -> bytes:
    """A checkpoint of a few hundred bytes whose payload has 2**depth leaves: a chain of
    lists, each held twice by the next (pickle shares the object)."""
    node: list = [0]
    for _ in range(depth):
        node = [node, node]
    return pickle.dumps({"format": "n2nfunc-checkpoint", "version": 1, "payload": node})


def _deep_lists(depth: int) -> bytes:
    """A checkpoint whose payload is ``depth`` nested lists, in raw pickle opcodes (pickling
    it would recurse as deeply): ``depth`` empty lists, each appended to the one below."""

    def text(s: str) -> bytes:
        return b"X" + len(s).to_bytes(4, "little") + s.encode()

    head = b"\x80\x02}(" + text("format") + text("n2nfunc-checkpoint") + text("version")
    return head + b"K\x01" + text("payload") + b"]" * depth + b"a" * (depth - 1) + b"u."


def _shared_bytes(count: int, size: int) -> bytes:
    """A checkpoint of ``count`` tensor entries sharing one ``size``-byte ``data`` object:
    about size + 30 count bytes in the file, count x size decoded."""
    blob = bytes(size)
    entry = [{"__tensor__": "uint8", "shape": [size], "data": blob} for _ in range(count)]
    return pickle.dumps({"format": "n2nfunc-checkpoint", "version": 1, "payload": entry})


@pytest.mark.parametrize(
    "blob,pattern",
    [
        (_shared_lists(60), "stored in two places"),
        (_deep_lists(100_000), "nested too deeply"),
        (_shared_bytes(4000, 64 << 10), "one tensor's bytes are stored in two places"),
    ],
)
def test_files_that_would_expand_or_recurse_without_end_are_refused_at_once(
    tmp_path, blob, pattern
):
    path = tmp_path / "bomb.pth"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=f"bomb.pth is damaged.*{pattern}"):
        nf.load(path)


@pytest.mark.parametrize("opcode", [b"r", b"p"])  # LONG_BINPUT, PUT
def test_a_memo_index_past_the_file_costs_no_memory(tmp_path, opcode):
    """Pickle's C unpickler sizes its memo table by the index a file asks to store at: a
    9-byte file took 4 GB before its error (an index near 2**32, tens of GB)."""
    index = struct.pack("<I", 250_000_000) if opcode == b"r" else b"250000000\n"
    (tmp_path / "memo.pth").write_bytes(b"\x80\x02}" + opcode + index + b".")
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="memo.pth is truncated or not an n2nfunc"):
            nf.load(tmp_path / "memo.pth")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20


def test_equal_one_byte_tensors_still_load(tmp_path):
    """(Python keeps one object for each 1-byte value, so pickle shares their bytes)"""
    tree = {
        "a": torch.tensor(True),
        "b": torch.tensor(True),
        "c": torch.tensor([7], dtype=torch.uint8),
    }
    tree["d"] = torch.tensor([7], dtype=torch.uint8)
    nf.save(tmp_path / "flags.pth", tree)
    back = nf.load(tmp_path / "flags.pth")
    assert all(torch.equal(back[k], tree[k]) for k in tree)


def test_shared_leaves_and_empty_containers_still_load(tmp_path):
    name, empty_tuple = "weight", ()
    nf.save(tmp_path / "ok.pth", {"a": [name, name], "b": (empty_tuple, empty_tuple, [], [])})
    assert nf.load(tmp_path / "ok.pth") == {"a": ["weight", "weight"], "b": ((), (), [], [])}


@pytest.mark.cuda
def test_cuda_tensors_are_saved_and_come_back_on_the_cpu(tmp_path):
    tensors = {str(d): _sample(d, (3, 4)).cuda() for d in DTYPES}
    nf.save(tmp_path / "cuda.pth", tensors)
    back = nf.load(tmp_path / "cuda.pth")
    for k, t in tensors.items():
        assert back[k].device.type == "cpu" and _same(back[k], t.cpu()), k


def test_a_failed_write_names_the_file_asked_for_not_its_temporary(tmp_path):
    (tmp_path / "model.pth" / "x").mkdir(parents=True)  # a folder where the file goes
    with pytest.raises(OSError) as e:
        checkpoint.write_atomic(tmp_path / "model.pth", b"abc")
    assert e.value.filename == str(tmp_path / "model.pth") and ".tmp" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]  # no temporary left


def test_a_save_never_writes_through_a_link_left_where_a_temporary_goes(tmp_path):
    """The temporary is created exclusively under a name no one can guess: a link planted
    at a predictable name (``.c.pth.PID.tmp``) had been written through, its target
    overwritten and the checkpoint left as a link to it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / f".c.pth.{os.getpid()}.tmp").symlink_to(victim)
    checkpoint.save(tmp_path / "c.pth", {"w": torch.ones(3)})
    assert victim.read_text() == "keep me" and not (tmp_path / "c.pth").is_symlink()
    assert torch.equal(nf.load(tmp_path / "c.pth")["w"], torch.ones(3))
    assert (tmp_path / "c.pth").stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() makes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_long_file_name_saves_and_two_threads_saving_one_file_do_not_mix(tmp_path):
    """A temporary's name is cut to fit beside a name near the 255-byte limit (it had
    failed with ENAMETOOLONG); two threads saving one path write temporaries of their own
    (they had shared one: one save raised, and 1 in 30 files mixed both halves)."""
    long_name = tmp_path / ("w" * 250 + ".pth")
    checkpoint.save(long_name, {"w": torch.ones(3)})
    assert torch.equal(nf.load(long_name)["w"], torch.ones(3))
    # cut in bytes: 82 characters of 3 bytes each (246 bytes) had overflowed as 120 of them
    wide_name = tmp_path / ("写真" * 41 + ".pth")
    checkpoint.save(wide_name, {"w": torch.ones(3)})
    assert torch.equal(nf.load(wide_name)["w"], torch.ones(3))
    path, errors = tmp_path / "shared.pth", []
    trees = [{"w": torch.full((200_000,), float(i))} for i in range(2)]

    def save(tree):
        try:
            for _ in range(5):
                checkpoint.save(path, tree)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=save, args=(t,)) for t in trees]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    w = nf.load(path)["w"]
    assert torch.equal(w, trees[0]["w"]) or torch.equal(w, trees[1]["w"])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_folder_in_place_of_a_checkpoint_file_is_named_as_one(tmp_path):
    """Loading one said 'checkpoint not found' (it exists); saving to one names it (the test
    above)."""
    with pytest.raises(FileNotFoundError, match="is a folder; expected a checkpoint file"):
        nf.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="is a folder; expected a checkpoint file"):
        Model().load_pretrained_model(tmp_path)
    with pytest.raises(IsADirectoryError) as e:
        Model().save(tmp_path)
    assert e.value.filename == str(tmp_path) and list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        nf.load(tmp_path / "missing.pth")


def test_a_large_file_of_something_else_is_refused_by_its_first_bytes(tmp_path, monkeypatch):
    """A 3 GB file that is not a checkpoint was read whole (11 s, 3.4 GB) before it was
    refused: its first bytes tell."""
    path = tmp_path / "sparse.pth"
    with path.open("wb") as f:
        f.truncate(3 * 2**30)  # sparse: zeros, no disk
    monkeypatch.setattr(type(path), "read_bytes", lambda self: pytest.fail("read whole"))
    with pytest.raises(ValueError, match="sparse.pth is truncated or not an n2nfunc checkpoint"):
        checkpoint.load(path)


def test_a_tree_in_the_paths_place_is_named(tmp_path):
    """save(tree, path), torch.save's order, failed in os.fspath naming neither argument."""
    tree = {"w": torch.ones(2)}
    with pytest.raises(TypeError, match=r"save: path must be .*got dict \(the path comes first"):
        nf.save(tree, tmp_path / "w.pth")
    with pytest.raises(TypeError, match="load: path must be a str or a path, got int"):
        nf.load(3)
    assert not list(tmp_path.iterdir())


def test_a_replace_refused_for_a_moment_is_tried_again_on_windows(tmp_path, monkeypatch):
    """On Windows a virus scanner or indexer holding the previous file open makes os.replace
    raise PermissionError for a moment; the save then failed at once."""
    refusals, waits = [2], []
    real_replace = os.replace

    def busy(src, dst):
        if refusals[0]:
            refusals[0] -= 1
            raise PermissionError(13, "Access is denied", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", busy)
    monkeypatch.setattr(checkpoint.time, "sleep", waits.append)
    monkeypatch.setattr(checkpoint, "REPLACE_TRIES", 12)  # Windows' setting
    nf.save(tmp_path / "w.pth", {"w": torch.ones(2)})
    assert torch.equal(nf.load(tmp_path / "w.pth")["w"], torch.ones(2)) and waits == [0.01, 0.02]
    refusals[0], waits[:] = 99, []  # held for good: the error after about 3 s of waiting
    with pytest.raises(PermissionError, match="w.pth"):
        nf.save(tmp_path / "w.pth", {"w": torch.zeros(2)})
    assert len(waits) == 11 and 2.5 < sum(waits) < 3.5
    assert [p.name for p in tmp_path.iterdir()] == ["w.pth"]  # no temporary left
    monkeypatch.setattr(checkpoint, "REPLACE_TRIES", 1)  # elsewhere: no waiting
    refusals[0], waits[:] = 1, []
    with pytest.raises(PermissionError):
        nf.save(tmp_path / "w.pth", {"w": torch.zeros(2)})
    assert waits == []


@pytest.mark.parametrize("zipped,protocol", [(True, 2), (False, 2), (False, 4)])
def test_a_torch_save_file_is_named_as_one_with_the_way_to_read_it(tmp_path, zipped, protocol):
    """A torch.save'd state_dict was called 'truncated or not an n2nfunc checkpoint (damaged
    ...)'; either of torch.save's formats is told apart by its first bytes."""
    path = tmp_path / "sd.pth"
    torch.save(
        Model().net.state_dict(),
        path,
        _use_new_zipfile_serialization=zipped,
        pickle_protocol=protocol,
    )
    for load in (nf.load, Model().load_pretrained_model):
        with pytest.raises(ValueError, match=r"sd.pth was written by torch.save.*load_state_dict"):
            load(path)
    if protocol != 2:  # (torch's own weights-only reader takes protocol 2 only)
        return
    state = torch.load(path, weights_only=True)  # the way the message gives
    model = Model()
    model.net.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(model.net.state_dict().values(), state.values()))


def test_a_save_into_a_missing_folder_is_refused_and_makes_no_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"its folder .*typo does not exist") as e:
        Model().save(tmp_path / "typo" / "model.pth")
    assert e.value.filename == str(tmp_path / "typo" / "model.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        nf.save(tmp_path / "a" / "b" / "w.pth", {"w": torch.ones(1)})
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("")
    with pytest.raises(NotADirectoryError, match="afile is a file, not a folder"):
        nf.save(tmp_path / "afile" / "w.pth", {"w": torch.ones(1)})


def test_crafted_parts_of_a_checkpoint_are_refused_or_skipped_by_name(tmp_path, capsys):
    """Each of these ended in a raw traceback (exit 1): an 'epoch' tensor of several values,
    a U-Net file's config that is not a dict or 'info' a tensor, a --resume file that is not
    a dict."""
    from n2nfunc.cli import main
    from n2nfunc.export import before_first_epoch
    from n2nfunc.pretrained import load_network

    state = {**Model({"widths": (4, 4)}).payload(), "optimizer": {}, "epoch": torch.zeros(2)}
    assert not before_first_epoch(state) and before_first_epoch({**state, "epoch": 0})
    unet = Model({"network": "unet", "depth": 1, "widths": (4, 4, 4, 4)}).payload()
    checkpoint.save(tmp_path / "config.pth", {**unet, "config": [1]})
    assert main(["eval", "--checkpoint", str(tmp_path / "config.pth"), "--n-val", "4"]) == 2
    assert "config.pth: its config must be a dict, got list" in capsys.readouterr().err
    checkpoint.save(tmp_path / "info.pth", {**unet, "info": torch.zeros(2)})
    with pytest.raises(ValueError, match="info.pth: 'info' must be a dict, got Tensor"):
        load_network(tmp_path / "info.pth")
    checkpoint.save(tmp_path / "five.pth", 5)
    assert main(["train", "--resume", str(tmp_path / "five.pth"), "--out", str(tmp_path)]) == 2
    assert "five.pth is not a training state (it holds a int)" in capsys.readouterr().err


def test_a_small_unet_file_of_many_leaves_under_a_long_key_is_refused_before_its_paths():
    """1 MB of key over 100,000 leaves asked for 100 GB of dotted paths; 100 KB over 10,000
    (here) for 1 GB."""
    payload = {"network": "unet", "architecture": {}, "params": {"K" * 100_000: [0] * 10_000}}
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="not the 34 tensors of the recorded architecture"):
            Model().load_payload(payload, "crafted.pth")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_many_ints_beyond_the_hash_modulus_are_refused_before_unpickling(tmp_path):
    """Dict keys k * (2**61 - 1) all hash to 0: 40,000 of them (559 KB) took 16 s to
    unpickle. A file of up to MAX_HUGE_INTS such ints (a seed is one) loads as before."""
    modulus, most = checkpoint.HASH_MODULUS, checkpoint.MAX_HUGE_INTS
    fine = {"seed": 2**62 - 1, "keys": {k * modulus: 0 for k in range(1, most)}}
    checkpoint.save(tmp_path / "fine.pth", fine)
    assert checkpoint.load(tmp_path / "fine.pth") == fine
    crafted = {k * modulus: 0 for k in range(1, most + 2)}
    checkpoint.save(tmp_path / "crafted.pth", crafted)  # (save writes what load refuses)
    with pytest.raises(ValueError, match="crafted.pth"):
        checkpoint.load(tmp_path / "crafted.pth")
