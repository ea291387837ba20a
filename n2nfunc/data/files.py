"""Reading and writing pair files, image files and folders of image pairs.

Never executes code from a file: tensors are read with ``torch.load(weights_only=True)``.
"""

import functools
import hashlib
import io
import pickle
import struct
import warnings
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ..base import pixel_scale
from ..checkpoint import tensor_bytes, write_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def safe_load(path, what: str = "file"):
    """``torch.load`` restricted to tensors and plain containers, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol: the error below says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{what} {path} was not loaded: it is not a torch file of tensors and plain "
            "containers (damaged, foreign, or holding other objects; nothing in it was executed)"
        ) from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        UnicodeDecodeError,
        MemoryError,
        AssertionError,  # torch's legacy format on a damaged file
        NotImplementedError,
    ):
        raise ValueError(
            f"{what} {path} is not a readable torch file (damaged, truncated, or another "
            "kind of file)"
        ) from None


def check_pairs(first, second, source: str, unclipped_target: bool = False):
    """Two uint8 tensors of equal shape (N, 3, H, W) with N > 0 (the second may be int16,
    an unclipped target on the 0-255 scale, where ``unclipped_target``)."""
    for name, t in (("first", first), ("second", second)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{source}: {name} element is a {type(t).__name__}, not a tensor")
        allowed = (torch.uint8, torch.int16) if unclipped_target and name == "second" else ()
        if t.dtype != torch.uint8 and t.dtype not in allowed:
            raise ValueError(f"{source}: {name} tensor has dtype {t.dtype}, expected torch.uint8")
        if t.dim() != 4 or t.shape[1] != 3 or 0 in (t.shape[0], t.shape[2], t.shape[3]):
            raise ValueError(
                f"{source}: {name} tensor has shape {tuple(t.shape)}, "
                "expected (N, 3, H, W) with N, H, W > 0"
            )
        if t.layout != torch.strided or t.device.type != "cpu":
            raise ValueError(
                f"{source}: {name} tensor is a {t.layout} tensor on {t.device}, expected a "
                "plain (strided) CPU tensor"
            )
        stored = t.untyped_storage().nbytes()
        if t.numel() * t.element_size() > stored:  # zero or overlapping strides: a few bytes
            raise ValueError(  # would read as an enormous batch
                f"{source}: {name} tensor of shape {tuple(t.shape)} repeats its data (strides "
                f"{t.stride()}, {stored} byte{'s' * (stored != 1)} stored); expected one value "
                "stored per pixel (save it after .contiguous())"
            )
    if first.shape != second.shape:
        raise ValueError(
            f"{source}: the two tensors differ in shape: {tuple(first.shape)} vs "
            f"{tuple(second.shape)}"
        )
    return first, second


def load_pair_file(path) -> tuple[Tensor, Tensor]:
    """A course file (``train_data.pkl`` / ``val_data.pkl``): a saved tuple of two uint8
    N x 3 x H x W tensors (noisy/noisy for training, noisy/clean for validation)."""
    data = safe_load(path, "pair file")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(
            f"pair file {path}: expected a tuple of two tensors, got "
            f"{type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        )
    return check_pairs(data[0], data[1], f"pair file {path}")


GREY_FORMATS = {"PNG", "JPEG", "TIFF"}  # Pillow formats that store greyscale as greyscale
PROFILE_FORMATS = {"PNG", "JPEG", "TIFF", "WEBP"}  # ... that store a colour profile (not BMP)
# A denoised photo saved lossily: high quality, and JPEG's colour at full resolution (Pillow's
# defaults, quality 75 with colour at half resolution, cost a denoised test photo 1-2 dB)
LOSSY_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}


class Picture(NamedTuple):
    rgb: Tensor  # uint8 (3, H, W)
    alpha: Tensor | None  # uint8 (1, H, W) or None
    grey: bool  # the file was greyscale
    deep: bool = False  # the file had more than 8 bits a channel (16-bit or float), read as 8
    icc: bytes | None = None  # the file's colour profile, when it fits the values read
    pages: int = 1  # a multi-page TIFF's pages (the first is read)
    exif: bytes | None = None  # the file's EXIF block (camera, date, ...), orientation applied
    dpi: tuple | None = None  # the file's resolution, (x, y) dots per inch
    lost: tuple = ()  # what the file says of its colours that the values read leave out


def _profile(icc, grey: bool) -> bytes | None:
    """An embedded ICC profile kept only when its colour space (header bytes 16-19) is the
    one the values are read in: "RGB " or, for greyscale, "GRAY" (a CMYK JPEG's profile does
    not describe its RGB conversion)."""
    if not isinstance(icc, bytes) or len(icc) < 20:
        return None
    return icc if icc[16:20] == (b"GRAY" if grey else b"RGB ") else None


def _lost(info: dict, icc, grey: bool) -> tuple:
    """What a file says of its colours that the values read leave out: a colour profile of
    another colour space than theirs (a CMYK JPEG's: its conversion to RGB is Pillow's plain
    one), and a PNG's gamma (gAMA) other than sRGB's, which viewers apply where there is no
    profile or sRGB chunk."""
    lost = []
    if isinstance(icc, bytes) and len(icc) >= 20 and _profile(icc, grey) is None:
        space = icc[16:20].decode("latin-1").strip() or "unknown"
        lost.append(f"its {space} colour profile (the colours are converted without it)")
    gamma = info.get("gamma")
    if isinstance(gamma, (int, float)) and abs(gamma - 1 / 2.2) > 1e-3 and not icc:
        if "srgb" not in info:
            lost.append(f"its gamma of {gamma} (a PNG gAMA chunk; written as sRGB's)")
    return tuple(lost)


def _dpi(value) -> tuple | None:
    """A resolution as Pillow reads it (floats, or a TIFF's rationals), as two floats, kept only
    when both are positive and finite."""
    if isinstance(value, tuple) and len(value) == 2:
        try:
            x, y = (float(v) for v in value)
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        if all(0 < v < float("inf") for v in (x, y)):
            return x, y
    return None


def _raw_mode(tile) -> str:
    """The raw mode a Pillow decoder tile reads ("RGB;16B", "LA;16B", "I;16B", ...)."""
    args = getattr(tile, "args", None)
    first = args[0] if isinstance(args, tuple) and args else ""
    return str(args if isinstance(args, str) else first)


def _ppm_maxval(tile) -> int:
    """The maxval of a Pillow PPM decoder tile (its args: raw mode, maxval), else 0."""
    args = getattr(tile, "args", None)
    maxval = args[1] if isinstance(args, tuple) and len(args) > 1 else 0
    return maxval if isinstance(maxval, int) else 0


def _sixteen_bit_channels(rawmode: str) -> bool:
    """Whether a raw mode holds 16 bits a channel that Pillow reads as their high byte
    (colour "RGB;16B", ..., and greyscale with alpha "LA;16B"; not "BGR;16", which is 16 bits
    a pixel, nor "I;16", which Pillow keeps whole)."""
    kind, _, bits = rawmode.partition(";")
    return kind in ("RGB", "RGBA", "RGBX", "LA") and bits.startswith("16")


def _key_alpha(values: Tensor, key: Tensor, size: tuple):
    """An "L" mask, 0 where a pixel's channels (the last axis of ``values``) all equal
    ``key`` (a PNG tRNS colour key), else 255."""
    from PIL import Image

    opaque = (values != key).any(-1).to(torch.uint8).mul_(255)
    return Image.frombytes("L", size, tensor_bytes(opaque))


def _hwc(pic, c: int) -> torch.Tensor:
    """The 8-bit pixels of a decoded Pillow image of ``c`` channels, as an (H, W, c) uint8
    tensor."""
    data = torch.frombuffer(bytearray(pic.tobytes()), dtype=torch.uint8)
    return data.view(pic.size[1], pic.size[0], c)


def _sixteen_bit_values(path, im) -> Tensor | None:
    """The whole 16-bit values, (H, W, bands) int32, of a PNG of 16 bits a channel that
    Pillow decoded to ``im`` (upright) keeping each value's high byte: the file (big-endian)
    is decoded once more as if little-endian, which reads the low bytes (the same picture,
    turned upright likewise). None where Pillow has no little-endian reader of the kind
    (greyscale with alpha: its high bytes are kept)."""
    from PIL import ImageOps

    bands = len(im.getbands())
    with open_image(path) as low:
        low.tile = [t._replace(args=_raw_mode(t).replace(";16B", ";16L")) for t in low.tile]
        try:
            low.load()
        except ValueError:  # "unknown raw mode" (before any byte is read)
            return None
        low = ImageOps.exif_transpose(low)
        return _hwc(im, bands).to(torch.int32) * 256 + _hwc(low, bands).to(torch.int32)


def _rounded_to_8_bits(values: Tensor, mode: str, size: tuple):
    """A Pillow image of ``mode`` from 16-bit ``values`` (H, W, bands), each rounded to 8
    bits as ``round(v / 257)`` (as 16-bit greyscale is read): 0 and 65535 stay black and
    white, and no value is darker by the dropped low byte."""
    from PIL import Image

    return Image.frombytes(mode, size, tensor_bytes(((values * 2 + 257) // 514).to(torch.uint8)))


class _Unreadable(ValueError):
    """An image refused with a message of our own (re-raised as it is by read_image)."""


def _float_as_8_bits(im, path):
    """A float ("F") image as 0-255 greyscale: a maximum up to 2, or values that
    ``Model.predict`` reads as 0-1 (:func:`~n2nfunc.base.pixel_scale`: with unclipped noise),
    reads the values on the 0-1 scale (with the overshoot of resampling or
    sharpening), others up to 300 on the 0-255 scale; both are clipped. Others, and NaN, are
    refused (there is no telling what they mean)."""
    low, high = im.getextrema()
    if not (-1e30 < low <= high <= 300):  # NaN fails too
        raise _Unreadable(
            f"cannot read image {path}: a float image with values from {low:g} to {high:g}; "
            "expected 0-1 or 0-255"
        )
    values = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.float32)  # mode F's values
    scale = 255 if high <= 2 or pixel_scale(values) == 1.0 else 1
    return im.point(lambda v: v * scale + 0.5).convert("L")  # convert clips to 0-255


def _int_top(im, path) -> int:
    """The highest value of a 32-bit integer ("I") image, refusing one with values outside
    0-65535 (clipping it to white would be a silent wrong picture)."""
    low, top = im.getextrema()
    if not (0 <= low and top <= 65535):
        raise _Unreadable(
            f"cannot read image {path}: a 32-bit integer image with values from {low} to {top}; "
            "expected 0-255 or 0-65535 (save it with 8 or 16 bits a channel)"
        )
    return int(top)


# The image formats n2nfunc opens, whatever a file's name: Pillow would otherwise pick any of
# its plugins by the file's first bytes -- EPS among them, which runs Ghostscript on the file
READ_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM", "AVIF")  # JPEG: MPO too
FORMAT_NAMES = "PNG, JPEG, BMP, TIFF, WebP, GIF, PPM or AVIF"


# TIFF tags that describe the picture (description, make, model, date, artist,
# copyright; the EXIF and GPS sub-directories), which a TIFF holds as tags of its own
TIFF_METADATA = {0x010E, 0x010F, 0x0110, 0x0132, 0x013B, 0x8298, 0x8769, 0x8825}
# TIFF tags that lay out the pixels (size, sample format, strips, tiles), which some cameras
# also write in their EXIF blocks: the TIFF writer would take them over its own
TIFF_LAYOUT = {
    *range(0x100, 0x104),
    0x106,
    0x111,
    *range(0x115, 0x118),
    0x11C,
    0x140,
    *range(0x142, 0x146),
    0x152,
    0x153,
    0x201,
    0x202,
}

# Pillow's warning on a damaged EXIF block, which cameras write often: the picture reads the
# same (without the orientation, where that is what is damaged)
CORRUPT_EXIF = "Corrupt EXIF"


@contextmanager
def _exif_warnings_hidden():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", CORRUPT_EXIF, UserWarning)
        yield


def open_image(path):
    """``PIL.Image.open`` limited to READ_FORMATS that this Pillow has (an image of another
    format is ``PIL.UnidentifiedImageError``, an OSError)."""
    from PIL import Image

    Image.init()  # registers the plugins, so that OPEN lists them
    with _exif_warnings_hidden():
        return Image.open(path, formats=[f for f in READ_FORMATS if f in Image.OPEN])


def _damaged(path) -> ValueError:
    return ValueError(
        f"cannot read image {path}: damaged, truncated, or not an image of a format n2nfunc "
        f"reads ({FORMAT_NAMES})"
    )


def read_image(path) -> Picture:
    """An image file as uint8 tensors. Greyscale becomes three equal channels (and
    ``grey`` is set); palette and other modes are converted to RGB; alpha is kept apart."""
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            # between Pillow's warning and its hard limit (2x), the tiled denoiser keeps the
            # memory bounded: no raw warning for a large photo
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", CORRUPT_EXIF, UserWarning)
            with open_image(path) as raw:
                frames = getattr(raw, "n_frames", 1)
                # an animation; a TIFF's first page and a camera JPEG's (MPO) main picture
                # are the image, read as before
                if frames > 1 and raw.format in ("GIF", "PNG", "WEBP"):
                    raise _Unreadable(
                        f"cannot read image {path}: an animation of {frames} frames; "
                        "n2nfunc reads still images only (save the frame you want as a PNG)"
                    )
                # Pillow reads 16-bit RGB as RGB and 16-bit greyscale with alpha as RGBA,
                # keeping each value's high byte: only the decoder's raw mode tells
                raw_modes = [_raw_mode(t) for t in raw.tile or ()]
                wide = any(_sixteen_bit_channels(m) for m in raw_modes)
                # a colour PPM of more than 8 bits, which Pillow scales to 8 itself
                wide_ppm = raw.format == "PPM" and any(_ppm_maxval(t) > 255 for t in raw.tile)
                key = raw.info.get("transparency")  # a PNG tRNS chunk: a transparent colour
                raw.load()
                im = ImageOps.exif_transpose(raw)  # upright, as viewers show it (phone portraits)
                floating = im.mode == "F"
                if floating:
                    im = _float_as_8_bits(im, path)
                alpha = None
                # 16-bit colour (and greyscale with alpha) PNGs: their whole values, rounded
                # to 8 bits as 16-bit greyscale is below (Pillow's high bytes were up to one
                # level darker); a tRNS colour compares all 16 bits
                values = _sixteen_bit_values(path, im) if wide and raw.format == "PNG" else None
                if values is not None:
                    if isinstance(key, tuple) and len(key) == 3:
                        key_values = torch.tensor(key, dtype=torch.int32)
                        alpha = _key_alpha(values[..., :3], key_values, im.size)
                    im = _rounded_to_8_bits(values, im.mode, im.size)
                elif im.mode.startswith("I;16") and isinstance(key, int):  # a 16-bit grey key
                    key_bytes = bytearray(im.convert("I").tobytes())
                    grey_values = torch.frombuffer(key_bytes, dtype=torch.int32).view(-1, 1)
                    alpha = _key_alpha(grey_values, torch.tensor([key]), im.size)
                elif "transparency" in im.info and im.mode in ("P", "L", "RGB", "1") and not wide:
                    im = im.convert("LA" if im.mode in ("L", "1") else "RGBA")  # an 8-bit key
                if im.mode in ("RGBA", "LA", "PA"):
                    alpha = im.getchannel("A")
                grey = im.mode in ("L", "LA", "I", "I;16", "I;16L", "I;16B", "F", "1") or any(
                    m.startswith("LA;") for m in raw_modes
                )
                icc = _profile(raw.info.get("icc_profile"), grey)
                lost = _lost(raw.info, raw.info.get("icc_profile"), grey)
                exif = im.info.get("exif")  # (exif_transpose took the orientation out)
                exif = exif if isinstance(exif, bytes) and exif else None
                if raw.format == "TIFF" and set(raw.getexif()) & TIFF_METADATA:
                    lost += ("its TIFF tags (camera, date, ...)",)
                dpi = _dpi(raw.info.get("dpi"))
                # 16-bit (0-65535) by its mode, however dark, as is a PGM of more than 8 bits
                # (Pillow scales its maxval to 65535); another 32-bit "I" image by its values
                scaled = im.mode.startswith("I;16") or (im.mode == "I" and raw.format == "PPM")
                top = _int_top(im, path) if im.mode == "I" and not scaled else 0
                sixteen = scaled or top > 255
                if sixteen:
                    im = im.convert("I").point(lambda v: v * (1 / 257) + 0.5)
                deep = sixteen or wide or wide_ppm or floating
                rgb = im.convert("RGB")
    except Image.DecompressionBombError as e:  # Pillow's guard; not an OSError
        raise ValueError(
            f"cannot read image {path}: it decodes to more pixels than Pillow's safety limit ({e})"
        ) from None
    except _Unreadable:
        raise
    except (OSError, SyntaxError, ValueError, TypeError, struct.error):
        # Pillow's text names its decoder's internals (a broken PNG chunk is a SyntaxError)
        raise _damaged(path) from None

    def to_tensor(pic, c):
        return _hwc(pic, c).permute(2, 0, 1).contiguous()

    alpha_values = to_tensor(alpha, 1) if alpha is not None else None
    pages = frames if raw.format == "TIFF" else 1
    return Picture(to_tensor(rgb, 3), alpha_values, grey, deep, icc, pages, exif, dpi, lost)


# The widest side each format stores (libjpeg's JPEG_MAX_DIMENSION; WebP's 14-bit sizes);
# Pillow finds out only while encoding, after a whole denoise, with "broken data stream"
MAX_SIDE = {".jpg": 65500, ".jpeg": 65500, ".webp": 16383}


def check_fits(path, width: int, height: int) -> None:
    """Refuse, before any work, an image of ``width`` x ``height`` that the format of ``path``
    (by its extension) cannot store."""
    path = Path(path)
    most = MAX_SIDE.get(path.suffix.lower())
    if most is not None and max(width, height) > most:
        raise ValueError(
            f"{path}: {path.suffix} images are at most {most} pixels a side, this one is "
            f"{width}x{height}; write it as .png or .tif"
        )


def keeps_profile(path, grey: bool = False) -> bool:
    """Whether :func:`write_image` keeps a colour profile in an image file of this name (by
    its extension): PNG, JPEG, TIFF and WebP store one, but a greyscale profile only in the
    formats that store greyscale (WebP writes grey images as RGB)."""
    from PIL import Image

    kind = Image.registered_extensions().get(Path(path).suffix.lower())
    return kind in PROFILE_FORMATS and (not grey or kind in GREY_FORMATS)


# the largest resolution (dpi) a format's field holds: JPEG's density is 16-bit; PNG and BMP
# store 32-bit pixels per metre (up to 1.09e8 dpi); a larger one is written as none
DPI_MAX = {"JPEG": 65535.0, "PNG": 1e8, "BMP": 1e8}
ALPHA_SUFFIXES = (".png", ".tif", ".tiff", ".webp")  # image files that keep transparency


def write_image(
    path,
    rgb: Tensor,
    alpha: Tensor | None = None,
    grey: bool = False,
    icc: bytes | None = None,
    exif: bytes | None = None,
    dpi: tuple | None = None,
) -> None:
    """Write a uint8 (3, H, W) tensor (and optional (1, H, W) alpha) as an image file;
    ``grey`` writes it as a greyscale (luminance) image, ``icc`` embeds a colour profile,
    ``exif`` an EXIF block and ``dpi`` a resolution (formats without them ignore them).
    Atomic (:func:`n2nfunc.checkpoint.write_atomic`); missing folders are made."""
    from PIL import Image

    h, w = rgb.shape[1:]
    im = Image.frombytes("RGB", (w, h), tensor_bytes(rgb.permute(1, 2, 0)))
    if grey:
        im = im.convert("L")
    if alpha is not None:
        im.putalpha(Image.frombytes("L", (w, h), tensor_bytes(alpha[0])))
    path = Path(path)
    kind = Image.registered_extensions().get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unknown image file extension {path.suffix!r}")
    if alpha is not None and path.suffix.lower() not in ALPHA_SUFFIXES:
        raise ValueError(
            f"{path}: {path.suffix} files have no transparency; write {', '.join(ALPHA_SUFFIXES)} "
            "or pass alpha=None"
        )
    encoded = io.BytesIO()
    if icc and not keeps_profile(path, grey):  # a grey one written as RGB would misfit
        icc = None
    if dpi and max(dpi) > DPI_MAX.get(kind, float("inf")):  # more than its field holds
        dpi = None
    options = dict(LOSSY_OPTIONS.get(kind, {}), **({"icc_profile": icc} if icc else {}))
    with _exif_warnings_hidden():
        exif = _exif_for(kind, exif)
        options.update({"exif": exif} if exif else {}, **({"dpi": dpi} if dpi else {}))
        im.save(encoded, format=kind, **options)
    # Ctrl-C or a full disk never leaves half an image; the command line checks the folder
    write_atomic(path, encoded.getvalue(), make_folders=True)


def _exif_for(kind: str | None, exif: bytes | None) -> bytes | None:
    """The EXIF block to write into an image of Pillow format ``kind``: for TIFF, without the
    layout tags that some cameras also write there (a TIFF of the camera's size, unreadable)."""
    if kind != "TIFF" or not exif:
        return exif
    from PIL import Image

    tags = Image.Exif()
    tags.load(exif)
    for tag in TIFF_LAYOUT & set(tags):
        del tags[tag]
    return tags.tobytes()


def exif_refused(path, exif: bytes) -> str | None:
    """Why an image file of this name (by its extension) cannot hold the EXIF block ``exif``
    (JPEG's 64 KB limit; a block that the TIFF writer cannot parse), else None: tried on a
    1 x 1 image, before the work whose result it would have failed to write."""
    from PIL import Image

    kind = Image.registered_extensions().get(Path(path).suffix.lower())
    try:
        with _exif_warnings_hidden():
            Image.new("RGB", (1, 1)).save(io.BytesIO(), format=kind, exif=_exif_for(kind, exif))
    except Exception as e:  # noqa: BLE001 (Pillow's writers raise several kinds)
        return str(e) or type(e).__name__
    return None


def list_images(folder, every_name: bool = False) -> list[Path]:
    """The image files of ``folder``: those with an image suffix, but hidden files (macOS's
    ._x.png beside x.png holds no image) and folders; with ``every_name``, every entry with
    an image suffix (what a run's folder digest recorded before they were left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES
        and (every_name or (not p.name.startswith(".") and p.is_file()))
    )


def same_image_files(a: Path, b: Path, subs=("",)) -> list[tuple[str, str]]:
    """Pairs of image files, one under ``a`` and one under ``b`` (in their sub-folders
    ``subs``; missing ones hold none), with the same bytes: validation or held-out images that
    are training images. Hashed only where the sizes match, each file once."""

    def files(root):
        return [p for sub in subs if (root / sub).is_dir() for p in list_images(root / sub)]

    by_size: dict[int, list[Path]] = {}
    for p in files(a):
        by_size.setdefault(p.stat().st_size, []).append(p)

    @functools.cache
    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    shared = []
    for q in files(b):
        candidates = by_size.get(q.stat().st_size, [])
        if candidates:
            mine = digest(q)
            shared += [(str(p), str(q)) for p in candidates if digest(p) == mine]
    return shared


def load_folder_pairs(
    root, patch: int = 32, stride: int = 32, announce: Callable[[str], object] | None = None
) -> tuple[Tensor, Tensor]:
    """Pairs from ``root/a`` and ``root/b``: images with the same file name in both (noisy/noisy
    for training, noisy/clean for validation), cut into ``patch x patch`` tiles.

    Images left out -- a name in only one folder, smaller than the patch, or a file that
    cannot be read -- are counted and named in one ``announce(message)``, so that a
    half-filled folder is not read quietly.
    """
    root = Path(root)
    a_dir, b_dir = root / "a", root / "b"
    names_a = {p.name: p for p in list_images(a_dir)}
    names_b = {p.name: p for p in list_images(b_dir)}
    common = sorted(set(names_a) & set(names_b))
    if not common:
        raise ValueError(f"{root}: no image file names common to {a_dir} and {b_dir}")
    skipped = [f"a/{n}" for n in sorted(set(names_a) - set(names_b))]
    skipped += [f"b/{n}" for n in sorted(set(names_b) - set(names_a))]
    small, unreadable, first_error = [], [], None
    firsts, seconds = [], []
    for name in common:
        try:
            a, b = read_image(names_a[name]).rgb, read_image(names_b[name]).rgb
        except (ValueError, OSError) as e:  # damaged, empty, not an image
            unreadable.append(name)
            first_error = first_error or e
            continue
        if a.shape != b.shape:
            (ha, wa), (hb, wb) = a.shape[1:], b.shape[1:]
            raise ValueError(f"{root}: {name} is {wa}x{ha} in a/ but {wb}x{hb} in b/")
        if min(a.shape[1:]) < patch:
            small.append(name)
            continue
        ta = a.unfold(1, patch, stride).unfold(2, patch, stride)
        tb = b.unfold(1, patch, stride).unfold(2, patch, stride)
        firsts.append(ta.permute(1, 2, 0, 3, 4).reshape(-1, 3, patch, patch))
        seconds.append(tb.permute(1, 2, 0, 3, 4).reshape(-1, 3, patch, patch))
    if not firsts and first_error is not None and not small:  # nothing readable: say why
        raise first_error
    if not firsts:
        why = "cannot be read or is" if unreadable else "is"
        raise ValueError(f"{root}: every image {why} smaller than the {patch}x{patch} patch")
    if announce is not None and (skipped or small or unreadable):
        announce(_skipped_note(root, skipped, small, patch, unreadable))
    return torch.cat(firsts), torch.cat(seconds)


def _skipped_note(root, unmatched: list, small: list, patch: int, unreadable=()) -> str:
    """One line on the images of a folder that were left out, naming a few."""

    def few(names):
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    parts = []
    if unmatched:
        parts.append(f"{len(unmatched)} without a partner of the same name ({few(unmatched)})")
    if small:
        parts.append(f"{len(small)} smaller than {patch}x{patch} ({few(small)})")
    if unreadable:
        parts.append(f"{len(unreadable)} that cannot be read ({few(list(unreadable))})")
    return f"note: {root}: left out " + "; ".join(parts)
