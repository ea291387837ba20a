"""Validation of command-line values: small argparse ``type=`` functions.

Each function turns one option's text into a value or raises ``ArgumentTypeError`` with a
short reason; argparse then prints the usage, ``error: argument --opt: <reason>`` and exits
with status 2 before any work starts. Checks here are cheap (no file is read beyond an
image header or a directory listing); the contents of data files are checked when they
are loaded, still before anything is written.
"""

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

from .data.files import FORMAT_NAMES, IMAGE_SUFFIXES, open_image
from .data.noise import parse_noise

Error = argparse.ArgumentTypeError


def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = name  # argparse names the type in some messages
    return fn


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer ``low <= n`` (``<= high`` if given)."""
    bound = f">= {low}" if high is None else f"from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise Error(f"expected an integer {bound}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise Error(f"expected an integer {bound}, got {text!r}")
        return value

    return _named(parse, "int")


def float_range(
    low: float, high: float | None = None, low_open: bool = True, high_open: bool = True
):
    """A finite number ``> low`` (``>= low`` if not ``low_open``), ``< high`` if given (``<=
    high`` if not ``high_open``)."""
    bound = f"{'>' if low_open else '>='} {low:g}" + (
        f" and {'<' if high_open else '<='} {high:g}" if high is not None else ""
    )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise Error(f"expected a finite number {bound}, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        if not ok or (high is not None and (value >= high if high_open else value > high)):
            raise Error(f"expected a finite number {bound}, got {text!r}")
        return value

    return _named(parse, "float")


def noise(text: str) -> str:
    """A noise spec (:func:`n2nfunc.data.noise.parse_noise`): ``gaussian:SIGMA`` or
    ``gaussian:LO-HI``, ``poisson:PEAK`` or ``poisson:LO-HI``, ``downsample[:FACTOR]``."""
    try:
        parse_noise(text)
    except ValueError as e:
        raise Error(str(e)) from None
    return text.strip()  # the text that names the data (cache files, --photos' factors)


def device(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; CUDA must be present when asked for."""
    import torch

    if text == "auto" or text == "cpu":
        return text
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdecimal()):
        raise Error(f"expected cpu, cuda, cuda:N or auto, got {text!r}")
    if not torch.cuda.is_available():
        raise Error(f"{text!r} asked for, but no CUDA device is available (use cpu or auto)")
    if index and int(index) >= torch.cuda.device_count():
        raise Error(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return text


def _a(what: str) -> str:
    return f"{'an' if what[0] in 'aeiou' else 'a'} {what}"


def _existing(text: str, what: str) -> Path:
    if not text:
        raise Error(f"an empty path is not {_a(what)}")
    path = Path(text).expanduser()
    if not path.exists():
        raise Error(f"no such {what}: {text}")
    if not os.access(path, os.R_OK):
        raise Error(f"{text} is not readable (permission denied)")
    return path


def existing_file(what: str = "file") -> Callable[[str], Path]:
    """A path to an existing, readable file (not a directory)."""

    def parse(text: str) -> Path:
        path = _existing(text, what)
        if path.is_dir():
            raise Error(f"{text} is a folder; expected {_a(what)}")
        if not path.is_file():  # a pipe, device or socket: its size says nothing
            raise Error(
                f"{text} is not a regular file (a pipe or device); expected {_a(what)} "
                "saved on disk"
            )
        if path.stat().st_size == 0:
            raise Error(f"{text} is empty; expected {_a(what)}")
        return path

    return _named(parse, "file")


def existing_dir(text: str) -> Path:
    """A path to an existing, readable directory."""
    path = _existing(text, "folder")
    if not path.is_dir():
        raise Error(f"{text} is a file; expected a folder")
    return path


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def image_dir(text: str) -> Path:
    """A folder holding at least one image file (png, jpg, ...)."""
    path = existing_dir(text)
    if not _images(path):
        raise Error(
            f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder {text} (its subfolders "
            "are not searched)"
        )
    return path


def photo_dir(min_side: int, why: str = "") -> Callable[[str], Path]:
    """A folder of images, at least one of them ``min_side`` pixels on its short side (only
    the headers are read); ``why`` ends the message of a folder without one."""

    def parse(text: str) -> Path:
        path = image_dir(text)
        sides = []
        for p in _images(path):
            try:
                sides.append(min(_image_size(p)))
            except Error as e:  # left out when the photos are read, with a note
                reason = str(e)
        if not sides:
            raise Error(f"no image in {text} can be read ({reason})")
        if max(sides) < min_side:
            raise Error(
                f"no photo in {text} is at least {min_side} pixels on its short side "
                f"(the largest: {max(sides)})" + (f": {why}" if why else "")
            )
        return path

    return _named(parse, "folder")


def pair_dir(text: str) -> Path:
    """A folder with ``a/`` and ``b/`` sub-folders sharing at least one image file name."""
    path = existing_dir(text)
    for sub in ("a", "b"):
        if not (path / sub).is_dir():
            raise Error(f"{text} has no sub-folder {sub}/ (expected {text}/a/ and {text}/b/)")
    a = {p.name for p in _images(path / "a")}
    b = {p.name for p in _images(path / "b")}
    if not a or not b:
        empty = "a" if not a else "b"
        raise Error(f"no image files in {Path(text) / empty}")
    if not a & b:
        raise Error(
            f"no image file name is in both {text}/a/ and {text}/b/ (pairs are matched by name; "
            f"e.g. {sorted(a)[0]} vs {sorted(b)[0]})"
        )
    return path


def _unwritable(folder: Path) -> str:
    """Why a folder that ``os.access`` calls unwritable is so."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "a read-only file system"
    except (AttributeError, OSError):  # no statvfs (Windows)
        pass
    return "permission denied"


def _writable_parent(path: Path, text: str) -> None:
    """The nearest existing ancestor of ``path`` is a writable directory."""
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise Error(f"cannot create {text}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise Error(f"cannot write in {parent} ({_unwritable(parent)})")


def output_dir(text: str) -> Path:
    """A folder to write into: an existing writable folder, or a path where one can be
    created (missing parents are created too)."""
    if not text:
        raise Error("an empty path is not a folder")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise Error(f"{text} is a file; expected a folder (it would be created if missing)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise Error(f"cannot write in {text} ({_unwritable(path)})")
        return path
    _writable_parent(path, text)
    return path


def writable_suffixes() -> list[str]:
    """The image file extensions (lower case, with the dot) that Pillow here can write."""
    from PIL import Image

    Image.init()
    known = Image.registered_extensions()
    return [ext for ext in IMAGE_SUFFIXES if known.get(ext) in Image.SAVE]


def output_image(text: str) -> Path:
    """An image file to write: an extension Pillow writes, in an existing writable folder
    (the folder is not created, so a typo does not make new folders)."""
    if not text:
        raise Error("an empty path is not an image file name")
    path = Path(text).expanduser()
    if path.is_dir():
        folder = text.rstrip("/" + os.sep)
        example = f"{folder}{os.sep}out.png" if folder else f"{text}out.png"
        raise Error(f"{text} is a folder; expected an image file name such as {example}")
    suffix = path.suffix.lower()
    if not suffix:
        raise Error(
            f"{text} has no extension, which names the image format; "
            f"use {', '.join(writable_suffixes())}"
        )
    if suffix not in writable_suffixes():
        raise Error(
            f"n2nfunc does not write {suffix!r} images; use {', '.join(writable_suffixes())}"
        )
    parent = path.parent
    if not parent.is_dir():
        existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise Error(f"{existing} is a file, not a folder: {text} cannot be written")
        raise Error(f"the folder {parent} does not exist (it is not created for you)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise Error(f"cannot write in {parent} ({_unwritable(parent)})")
    if path.exists() and not os.access(path, os.W_OK):
        raise Error(f"{text} exists and is not writable")
    return path


def _too_many_pixels(path, size: tuple | None = None) -> str:
    """The refusal of an image beyond Pillow's guard against decompression bombs (twice its
    ``Image.MAX_IMAGE_PIXELS``), with its size where the header gives it."""
    from PIL import Image

    limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    has = f" ({size[0]}x{size[1]}, {size[0] * size[1]:,} pixels)" if size else ""
    most = f": at most {limit:,}" if limit else ""
    return (
        f"{path} has more pixels than Pillow opens safely{has}{most} "
        "(its guard against decompression bombs)"
    )


def _header_size(path) -> tuple | None:
    """(width, height) from an image header, Pillow's guard off (nothing is decoded)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with open_image(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 (a size for a message, or none)
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _image_size(path) -> tuple[int, int]:
    """(width, height) from an image file's header, else an Error naming the file (no raw
    warning for a large photo: the tiled denoiser keeps its memory bounded)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_image(path) as im:
                return im.size
    except Image.DecompressionBombError:  # Pillow's guard against huge images (not OSError)
        raise Error(_too_many_pixels(path, _header_size(path))) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError):
        raise Error(f"{path} is not a {FORMAT_NAMES} file n2nfunc can read") from None


def input_image(text: str) -> Path:
    """An existing image file of a format n2nfunc reads (READ_FORMATS), its header readable."""
    path = existing_file("image file")(text)
    w, h = _image_size(path)
    if w < 1 or h < 1:
        raise Error(f"{text} has no pixels ({w}x{h})")
    return path
