"""Checkpoint files: plain containers and tensors, written atomically, read without code.

A checkpoint is a pickle of dicts, lists, tuples, strings, numbers and bytes only; a
tensor is stored as ``{"__tensor__": dtype, "shape": [...], "data": bytes}``. It is read
by an unpickler that refuses *every* global, so a crafted file cannot run code: the
worst it can do is fail to load. The format needs nothing newer than ``torch.frombuffer``
(torch 1.10), so the same reader works in an exported submission.
"""

import ctypes
import io
import os
import pickle
from pathlib import Path

import torch
from torch import Tensor

FORMAT = "n2nfunc-checkpoint"
VERSION = 1
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


class Refused(pickle.UnpicklingError):
    """The file references a class or function, which a checkpoint never does."""


class _NoGlobals(pickle.Unpickler):
    """Unpickles plain containers only: any reference to a class or function is refused."""

    def find_class(self, module, name):
        raise Refused(f"refusing to load global '{module}.{name}'")


def tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of a tensor, row-major, copied from a compact CPU copy in one memcpy."""
    t = t.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()) if t.numel() else b""


def encode(obj):
    """Replace every tensor in a tree of plain containers by its dtype, shape and bytes."""
    if isinstance(obj, Tensor):
        name = str(obj.dtype).replace("torch.", "")
        if name not in _DTYPES:
            raise TypeError(f"cannot store a tensor of dtype {obj.dtype}")
        return {"__tensor__": name, "shape": list(obj.shape), "data": tensor_bytes(obj)}
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(encode(v) for v in obj)
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    raise TypeError(f"cannot store an object of type {type(obj).__name__} in a checkpoint")


def decode(obj):
    """Inverse of :func:`encode`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            dtype = _DTYPES.get(obj["__tensor__"])
            shape, data = obj.get("shape"), obj.get("data")
            if dtype is None or not isinstance(shape, list) or not isinstance(data, bytes):
                raise ValueError("malformed tensor entry")
            if not data:
                return torch.empty(shape, dtype=dtype)
            return torch.frombuffer(bytearray(data), dtype=dtype).view(shape).clone()
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(decode(v) for v in obj)
    return obj


def write_atomic(path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then ``os.replace``: readers never
    see a partial file and a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            _pause_for_tests(f)
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _pause_for_tests(f) -> None:
    """Test hook: with N2NFUNC_TEST_PAUSE_IN_SAVE=FILE set, a save that has written half its
    bytes creates FILE and waits to be killed (tests check the old file survives)."""
    flag = os.environ.get("N2NFUNC_TEST_PAUSE_IN_SAVE")
    if flag:
        import time

        f.flush()
        Path(flag).touch()
        time.sleep(120)


def save(path, payload: dict) -> None:
    """Save ``payload`` (plain containers and tensors) as a checkpoint, atomically."""
    blob = pickle.dumps(
        {"format": FORMAT, "version": VERSION, "payload": encode(payload)}, protocol=4
    )
    write_atomic(path, blob)


def load(path) -> dict:
    """Load a checkpoint written by :func:`save`; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"checkpoint {path} is empty")
    try:
        obj = _NoGlobals(io.BytesIO(data)).load()
    except Refused as e:
        raise ValueError(
            f"checkpoint {path} was refused: {e} (n2nfunc checkpoints hold only "
            "plain data; nothing from the file was executed)"
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        UnicodeDecodeError,
        OverflowError,
        MemoryError,
    ):  # the exception's text describes the unpickler's internals, not the file
        raise ValueError(
            f"checkpoint {path} is truncated or not an n2nfunc checkpoint (damaged, or "
            "written by another program)"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path} is not an n2nfunc checkpoint")
    if obj.get("version") != VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {obj.get('version')}; this "
            f"n2nfunc reads version {VERSION}"
        )
    try:
        return decode(obj["payload"])
    except (ValueError, RuntimeError, TypeError, KeyError, AttributeError):
        raise ValueError(f"checkpoint {path} is damaged (a stored tensor is malformed)") from None
