"""Checkpoint files: plain containers and tensors, written atomically, read without code.

A checkpoint is a pickle of dicts, lists, tuples, strings, numbers and bytes only; a
tensor is stored as ``{"__tensor__": dtype, "shape": [...], "data": bytes}`` and a named
tuple as ``{"__namedtuple__": type name, "fields": [...], "values": [...]}``. It is read
by an unpickler that refuses *every* global, so a crafted file cannot run code: the
worst it can do is fail to load. The format needs nothing newer than ``torch.frombuffer``
(torch 1.10), so the same reader works in an exported submission.

:func:`save` / :func:`load` (``n2nfunc.save`` / ``n2nfunc.load``) take any such tree:
params, layer states, optimizer states, a ``Model``'s payload. Tensors come back on the
CPU with their dtype and shape; tuples stay tuples; a named tuple comes back as a named
tuple of the same type name and fields (a new class: attribute access, unpacking and
``_asdict`` work, ``isinstance`` against the original class does not). Subclasses of
int, float and str (an enum, NumPy's float64) are stored as the plain value; other NumPy
scalars are refused (convert them with ``.item()``).
"""

import contextlib
import ctypes
import errno
import io
import os
import pickle
import pickletools
import secrets
import sys
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .base import PathLike

FORMAT = "n2nfunc-checkpoint"
VERSION = 1
_DTYPES = {
    str(d).replace("torch.", ""): d
    for d in (
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
    )
}
_RESERVED = ("__tensor__", "__namedtuple__")
_KEY_TYPES = (str, int, float, bool, bytes, type(None))


class Refused(pickle.UnpicklingError):
    """The file references a class or function, which a checkpoint never does."""


class _NoGlobals(pickle.Unpickler):
    """Unpickles plain containers only: any reference to a class or function is refused."""

    def find_class(self, module, name):
        raise Refused(f"refusing to load global '{module}.{name}'")


# Python hashes an int as itself modulo this prime: only ints at least this large (in
# magnitude) can share a hash by the thousand, and dict keys that all share one take time
# quadratic in their number to unpickle (40,000 in 559 KB: 16 s). n2nfunc writes a few.
HASH_MODULUS = 2**61 - 1
MAX_HUGE_INTS = 1024


def _check_opcodes(data: bytes) -> None:
    """Refuse what would cost the C unpickler far more than the file's size: a memo index
    past the opcodes before it (it sizes its memo table by the largest index it is asked to
    store at: a 9-byte file asking for index 250,000,000 took 4 GB, where a writer numbers
    its objects from 0), and more than :data:`MAX_HUGE_INTS` ints beyond the hash modulus."""
    huge = 0
    for count, (op, arg, _) in enumerate(pickletools.genops(data)):
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg or 0) > count:
            raise pickle.UnpicklingError(f"memo index {arg} after {count} opcodes")
        if isinstance(arg, int) and abs(arg) >= HASH_MODULUS:
            huge += 1
            if huge > MAX_HUGE_INTS:
                raise pickle.UnpicklingError(
                    f"more than {MAX_HUGE_INTS} integers of 2**61 or more, which n2nfunc "
                    "never writes"
                )


def tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of a tensor, row-major, copied from a compact CPU copy in one memcpy."""
    t = t.detach().to("cpu").resolve_conj().resolve_neg()
    t = t.clone(memory_format=torch.contiguous_format)
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()) if t.numel() else b""


def _is_namedtuple(obj) -> bool:
    return isinstance(obj, tuple) and isinstance(getattr(type(obj), "_fields", None), tuple)


def encode(obj):
    """Replace every tensor in a tree of plain containers by its dtype, shape and bytes, and
    every named tuple by its type name, fields and values; containers become plain ones."""
    return _encode(obj, set())


def _encode(obj, kinds: set):
    """:func:`encode`, counting the kinds of named tuple in ``kinds`` ((name, fields))."""
    if isinstance(obj, Tensor):
        name = str(obj.dtype).replace("torch.", "")
        if name not in _DTYPES:
            raise TypeError(
                f"cannot store a tensor of dtype {obj.dtype} (supported: {', '.join(_DTYPES)})"
            )
        if obj.layout != torch.strided:
            raise TypeError(f"cannot store a tensor with layout {obj.layout}")
        return {"__tensor__": name, "shape": list(obj.shape), "data": tensor_bytes(obj)}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, _KEY_TYPES):
                raise TypeError(
                    f"cannot store a dict key of type {type(k).__name__} in a checkpoint "
                    "(keys must be str, int, float, bool, bytes or None)"
                )
            if k in _RESERVED:
                raise ValueError(f"cannot store a dict with the reserved key {k!r}")
        return {_plain(k): _encode(v, kinds) for k, v in obj.items()}
    if _is_namedtuple(obj):
        if len(obj) > MAX_FIELDS:
            raise TypeError(
                f"cannot store a named tuple of more than {MAX_FIELDS} fields "
                f"({type(obj).__name__} has {len(obj)}); store a dict instead"
            )
        kinds.add((type(obj).__name__, type(obj)._fields))
        if len(kinds) > MAX_KINDS:
            raise TypeError(
                f"cannot store more than {MAX_KINDS} kinds of named tuple in one checkpoint; "
                "store dicts instead"
            )
        return {
            "__namedtuple__": type(obj).__name__,
            "fields": list(type(obj)._fields),
            "values": [_encode(v, kinds) for v in obj],
        }
    if isinstance(obj, tuple):
        return tuple(_encode(v, kinds) for v in obj)
    if isinstance(obj, list):
        return [_encode(v, kinds) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return _plain(obj)
    raise TypeError(f"cannot store an object of type {type(obj).__name__} in a checkpoint")


def _plain(x):
    """``x`` as an exact bool, int, float, str or bytes: an instance of a subclass (an enum,
    a numpy float) would pickle as a global, which :func:`load` refuses."""
    if type(x) in (bool, int, float, str, bytes) or x is None:
        return x
    if isinstance(x, str):
        return str.__str__(x)
    for kind in (int, float, bytes):
        if isinstance(x, kind):
            return kind(x)
    return x


def decode(obj):
    """Inverse of :func:`encode`.

    :func:`encode` never puts one container, or one tensor's bytes (2 or more of them), in two
    places, and a file that does (pickle can share an object) is refused: a chain of 60 lists
    each held twice by the next is a file of a few hundred bytes that would decode to 2**60
    leaves, and 4,000 tensors sharing 64 KiB of bytes a 150 KiB file that would decode to
    250 MiB. A named tuple's class is made once per (name, fields), of at most MAX_FIELDS
    fields and MAX_KINDS kinds: one class per entry let a 224 KiB file of one shared field
    list take 158 MB, and 100,000 kinds of one field each a 2.9 MB file 631 MB."""
    return _decode(obj, set(), {})


# Named tuples that encode writes (optimizer states) have a handful of fields, and a
# payload a handful of kinds.
MAX_FIELDS = 64
MAX_KINDS = 256


def _claim(obj, seen) -> None:
    """Refuse a non-empty container met before: encode never shares one."""
    if isinstance(obj, (dict, list, tuple)) and len(obj):
        if id(obj) in seen:
            raise ValueError("one container is stored in two places, which n2nfunc never writes")
        seen.add(id(obj))


def _namedtuple_class(obj, seen, kinds):
    """The class of an encoded named tuple, made once per (name, fields)."""
    name, fields, values = obj["__namedtuple__"], obj.get("fields"), obj.get("values")
    if not (
        isinstance(name, str)
        and isinstance(fields, list)
        and isinstance(values, list)
        and len(fields) == len(values)
        and all(isinstance(f, str) for f in fields)
    ):
        raise ValueError(f"malformed named tuple entry {str(name)[:40]!r}")
    if len(fields) > MAX_FIELDS:
        raise ValueError(
            f"named tuple entry {name[:40]!r} has {len(fields)} fields, more than the "
            f"{MAX_FIELDS} n2nfunc writes"
        )
    _claim(fields, seen)
    key = (name, tuple(fields))
    if key not in kinds:
        if len(kinds) == MAX_KINDS:
            raise ValueError(
                f"more than {MAX_KINDS} kinds of named tuple, which n2nfunc never writes"
            )
        kinds[key] = namedtuple(name, fields)  # validates the names
    return kinds[key]


def _decode(obj, seen, kinds):
    _claim(obj, seen)
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            data = obj.get("data")
            if isinstance(data, bytes) and len(data) > 1:  # (Python shares each 1-byte value)
                if id(data) in seen:
                    raise ValueError(
                        "one tensor's bytes are stored in two places, which n2nfunc never writes"
                    )
                seen.add(id(data))
            return _decode_tensor(obj)
        if "__namedtuple__" in obj:
            kind = _namedtuple_class(obj, seen, kinds)
            return kind(*_decode(obj["values"], seen, kinds))
        return {k: _decode(v, seen, kinds) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_decode(v, seen, kinds) for v in obj)
    return obj


MAX_DIMS = 64  # PyTorch's limit on a tensor's dimensions


def _decode_tensor(obj) -> Tensor:
    dtype = _DTYPES.get(obj["__tensor__"])
    shape, data = obj.get("shape"), obj.get("data")
    if (
        dtype is None
        or not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(type(n) is int and n >= 0 for n in shape)
        or not isinstance(data, bytes)
    ):
        dims = f", {len(shape)} dims" if isinstance(shape, list) and len(shape) > MAX_DIMS else ""
        raise ValueError(f"malformed tensor entry (dtype {obj['__tensor__']!r}{dims})")
    numel = 1
    for n in shape:
        numel *= n
    size = numel * torch.empty((), dtype=dtype).element_size()
    if len(data) != size:
        raise ValueError(
            f"a tensor of shape {shape} and dtype {obj['__tensor__']} needs {size} bytes, "
            f"the file holds {len(data)}"
        )
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).view(shape).clone()


def write_atomic(path, data: bytes, make_folders: bool = False) -> None:
    """Write to a temporary file beside ``path``, fsync, then ``os.replace``: readers never
    see a partial file and a crash mid-write leaves the previous file intact. The temporary
    is a new file of its own (``.NAME.PID.TOKEN.tmp``, created exclusively): never a link
    someone left in its place, nor another writer's. The folder must exist, unless
    ``make_folders`` (then it is made, with its parents)."""
    path = Path(path)
    if make_folders:
        path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder; give the path of a file", str(path))
    if not path.parent.is_dir():
        if path.parent.exists():
            raise NotADirectoryError(
                errno.ENOTDIR, f"{path.parent} is a file, not a folder", str(path)
            )
        raise FileNotFoundError(
            errno.ENOENT,
            f"its folder {path.parent} does not exist (and is not made for you: a misspelt "
            "folder would become a new one)",
            str(path),
        )
    tmp = None
    try:
        tmp, fd = _new_temporary(path)
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            _pause_for_tests(f)
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
        tmp = None
    except OSError as e:  # named as the file asked for, not the temporary one beside it
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


# On Windows a file another program holds open (a virus scanner or search indexer that has
# just seen the previous checkpoint, a viewer) cannot be replaced for a moment: os.replace
# raises PermissionError. The replace is tried again for up to about 3 s before it fails.
REPLACE_TRIES = 12 if os.name == "nt" else 1


def _replace(tmp: Path, path: Path) -> None:
    """``os.replace(tmp, path)``, tried again (waiting 0.01 s, then twice as long each time,
    at most 0.5 s) while it raises ``PermissionError``, up to ``REPLACE_TRIES`` times in all."""
    for attempt in range(REPLACE_TRIES):
        try:
            os.replace(tmp, path)
            return
        except PermissionError:
            if attempt == REPLACE_TRIES - 1:
                raise
            time.sleep(min(0.5, 0.01 * 2**attempt))


def _temporaries_head(path: Path) -> str:
    """How the names of ``path``'s temporaries start (a long name cut, so that they fit)."""
    # cut in bytes, which a file system's limit counts (255 on most), dropping a character
    # split at the cut: 120 Chinese characters are 360 bytes
    head = os.fsencode(path.name)[:120].decode(sys.getfilesystemencoding(), "ignore")
    return f".{head}."


def _new_temporary(path: Path) -> tuple[Path, int]:
    """A temporary file beside ``path``, created exclusively (``O_EXCL``: an existing file or
    link of that name is an error, not a file to write through), and its descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)

    def named():
        return path.with_name(f"{_temporaries_head(path)}{os.getpid()}.{secrets.token_hex(4)}.tmp")

    for _ in range(99):  # a name taken: another token
        tmp = named()
        with contextlib.suppress(FileExistsError):
            return tmp, os.open(tmp, flags, 0o666)
    tmp = named()
    return tmp, os.open(tmp, flags, 0o666)


STALE_AFTER_S = 3600  # a leftover untouched this long belongs to no writer still running


def remove_stale_temporaries(path) -> None:
    """Remove the temporaries that :func:`write_atomic` left beside ``path`` in writers that
    were killed (SIGKILL, or a signal they did not catch). Best effort: never raises."""
    path = Path(path)
    head = _temporaries_head(path)
    try:
        for entry in path.parent.iterdir():
            if entry.name.startswith(head) and entry.name.endswith(".tmp"):
                pid = entry.name[len(head) : -len(".tmp")].split(".")[0]  # (PID.TOKEN)
                if abandoned(entry, pid):
                    entry.unlink(missing_ok=True)
    except OSError:
        pass


def abandoned(entry: Path, pid: str) -> bool:
    """Whether ``entry`` (not followed if a link), written by the process whose id is the
    text ``pid``, was left by a process that is gone: ours, untouched for STALE_AFTER_S (a
    process of another PID namespace or machine sharing the folder may still be writing one
    whose id means nothing here), and no process ``pid`` runs here."""
    if not (pid.isascii() and pid.isdigit() and len(pid) <= 9) or not hasattr(os, "getuid"):
        return False
    try:
        info = entry.lstat()
    except OSError:
        return False
    old = time.time() - info.st_mtime > STALE_AFTER_S
    return info.st_uid == os.getuid() and old and process_gone(int(pid))


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs here (one of another user's counts as running; on
    Windows, where signal 0 would be a Ctrl-C, every process does)."""
    if os.name == "nt":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        pass
    return False


def _pause_for_tests(f) -> None:
    """Test hook: with N2NFUNC_TEST_PAUSE_IN_SAVE=FILE set, a save that has written half its
    bytes creates FILE and waits to be killed (tests check the old file survives)."""
    flag = os.environ.get("N2NFUNC_TEST_PAUSE_IN_SAVE")
    if flag:
        f.flush()
        Path(flag).touch()
        time.sleep(120)


def save(path: PathLike, tree: Any) -> None:
    """Save ``tree`` (nested dicts, lists, tuples and named tuples of tensors, numbers,
    strings, bytes and None) as a checkpoint, atomically, into an existing folder;
    unsupported objects raise ``TypeError`` before anything is written."""
    _check_path(path, "save")
    try:
        payload = encode(tree)
    except (TypeError, ValueError) as e:
        where, leaf = _where_refused(tree)
        hint = ""
        if type(leaf).__module__ == "numpy":
            hint = (
                " (a NumPy value: x.item() or float(x) for a number, torch.from_numpy(a) for "
                "an array)"
            )
        elif isinstance(leaf, torch.dtype):
            hint = " (a dtype: store its name, str(dtype))"
        raise type(e)(f"{e}{f', at {where}' if where else ''}{hint}") from None
    blob = pickle.dumps({"format": FORMAT, "version": VERSION, "payload": payload}, protocol=4)
    write_atomic(path, blob)
    remove_stale_temporaries(path)


def _where_refused(tree: Any, at: str = "") -> tuple[str, Any]:
    """``(path, value)`` of the innermost entry of ``tree`` that :func:`encode` refuses, as
    dotted keys and indices (a container itself when all its entries are storable: a refused
    key, too many fields). On the error path only: it encodes subtrees again."""
    if isinstance(tree, dict):
        children: Any = tree.items()
    else:
        children = enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for k, v in children:
        try:
            encode(v)
        except (TypeError, ValueError):
            return _where_refused(v, f"{at}.{k}" if at else str(k))
    return at, tree


def _check_path(path: Any, name: str) -> None:
    if not isinstance(path, (str, os.PathLike)):
        first = " (the path comes first, unlike torch.save(obj, f))" if name == "save" else ""
        raise TypeError(f"{name}: path must be a str or a path, got {type(path).__name__}{first}")


# How much of a file load reads to tell what it is, before reading it whole
HEAD_BYTES = 512
# torch.save's older format starts with its magic number, pickled as a LONG1 (after the
# protocol's header: PROTO, and from protocol 4 on a FRAME)
_TORCH_LEGACY = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _by_torch_save(head: bytes) -> bool:
    """Whether a file starting with ``head`` was written by torch.save: its older format, or
    a zip archive (torch >= 1.6) whose first entry is ``NAME/data.pkl``."""
    if head.startswith(b"\x80") and _TORCH_LEGACY in head[:32]:
        return True
    if not head.startswith(b"PK\x03\x04") or len(head) < 30:
        return False
    name_length = int.from_bytes(head[26:28], "little")
    return head[30 : 30 + name_length].endswith(b"/data.pkl")


_NOT_OURS = (
    "checkpoint {path} is truncated or not an n2nfunc checkpoint (damaged, or written by "
    "another program)"
)


def load(path: PathLike) -> Any:
    """The tree saved by :func:`save` in ``path`` (tensors on the CPU); errors name the file
    and what is wrong."""
    _check_path(path, "load")
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is a folder; expected a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with path.open("rb") as f:  # the header first: a large file of something else is not read
        head = f.read(HEAD_BYTES)
    if _by_torch_save(head):
        raise ValueError(
            f"{path} was written by torch.save, not by n2nfunc.save / Model.save: n2nfunc "
            "reads its own format only (plain data, never code); torch.load(path, "
            "weights_only=True) reads this file, and a state_dict in it loads with "
            "module.load_state_dict(...) (a Model's: model.net.load_state_dict(...))"
        )
    if head and not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        raise ValueError(_NOT_OURS.format(path=path))
    try:
        data = path.read_bytes()
    except MemoryError:
        raise ValueError(
            f"checkpoint {path} is too large to read ({path.stat().st_size:,} bytes)"
        ) from None
    if not data:
        raise ValueError(f"checkpoint {path} is empty")
    try:
        _check_opcodes(data)
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
        raise ValueError(_NOT_OURS.format(path=path)) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path} is not an n2nfunc checkpoint")
    if obj.get("version") != VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {obj.get('version')!r}; this "
            f"n2nfunc reads version {VERSION!r}"
        )
    if "payload" not in obj:
        raise ValueError(f"checkpoint {path} is damaged: it holds no payload")
    try:
        return decode(obj["payload"])
    except ValueError as e:  # raised by decode itself, in user terms
        raise ValueError(f"checkpoint {path} is damaged: {e}") from None
    except RecursionError:
        raise ValueError(f"checkpoint {path} is damaged (nested too deeply)") from None
    except (RuntimeError, TypeError, KeyError, AttributeError):
        raise ValueError(f"checkpoint {path} is damaged (a stored tensor is malformed)") from None


def holds_params(path, state: dict) -> bool:
    """Whether the file ``path`` holds the parameters of ``state`` (a run's checkpoint tree),
    bit for bit: a run's weights rather than another's."""
    from .tree import flatten

    try:
        theirs = dict(flatten(load(path)["params"]))
        ours = flatten(state["params"])
        return len(theirs) == len(ours) and all(
            k in theirs and theirs[k].shape == v.shape and torch.equal(theirs[k], v)
            for k, v in ours
        )
    except (ValueError, OSError, KeyError, TypeError):
        return False
