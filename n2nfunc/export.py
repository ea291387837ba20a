"""Write a course submission: ``OUT_DIR/Miniproject_2/`` that a grader imports with only
torch installed.

Layout::

    Miniproject_2/
        __init__.py
        model.py          # the grader's names: Model, Conv2d, ..., SGD, Sequential
        bestmodel.pth     # the shipped (or a given) checkpoint
        others/n2nfunc/   # the library's compute code, copied from this package
            layers/       # its subpackages, copied whole

``model.py`` loads ``others/n2nfunc`` as a package under a private name with importlib,
so ``from model import Model`` (folder on ``sys.path``) and
``from Miniproject_2.model import Model`` both work, and an installed n2nfunc is never
touched. The copied files import only torch and the standard library; checkpoints are
read by a standard-library unpickler that refuses every global. Python >= 3.10, torch >= 2.0
(the package asks for 2.10, for its course-file reader, which the submission does not copy;
CI tests the version ``constraints.txt`` pins).
"""

import errno
import os
import shutil
from pathlib import Path

from . import checkpoint
from .model import DEFAULT_WEIGHTS, Model

SUBMISSION = "Miniproject_2"
PACKAGE = Path(__file__).resolve().parent
VENDORED = [
    "base.py",
    "nhwc.py",
    "torch_order.py",
    "device_conv.py",
    "init.py",
    "combinators.py",
    "tree.py",
    "losses.py",
    "optim.py",
    "train.py",
    "unet.py",
    "testing.py",
    "metrics.py",
    "model.py",
    "precision.py",
    "checkpoint.py",
    "stateful.py",
    "tiling.py",
]
SUBPACKAGES = ["kernels", "layers", "modules"]  # copied whole (every .py file)
NAMES = [
    "Model",
    "Conv2d",
    "TransposeConv2d",
    "NearestUpsampling",
    "Upsampling",
    "ReLU",
    "Sigmoid",
    "MSE",
    "SGD",
    "Sequential",
]

INIT = '''"""n2nfunc compute code, copied by `n2nfunc export-submission` (do not edit here)."""
from .base import Layer
from .combinators import fanin_concat, fanin_sum, fanout, parallel, residual, serial
from .layers import (batch_norm2d, conv2d, conv_transpose2d, dropout, identity,
                     nearest_upsample, relu, sigmoid, upsample)
from .losses import mse
from .modules import (MSE, SGD, Adam, BatchNorm2d, Conv2d, Dropout, Module, NearestUpsampling,
                      ReLU, Sequential, Sigmoid, TransposeConv2d, Upsampling)
from .optim import adam, sgd
from .stateful import StatefulLayer, lift
from .train import make_train_step, value_and_grad
'''

MODEL = '''"""Noise2Noise denoiser built with n2nfunc (hand-written gradients, no autograd).

The library's compute code is in others/n2nfunc (exported from n2nfunc {version}).
"""
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_CORE_DIR = os.path.join(_HERE, "others", "n2nfunc")
_CORE_NAME = "_n2nfunc_submission_" + str(abs(hash(_CORE_DIR)))


def _load_core():
    if _CORE_NAME in sys.modules:
        return sys.modules[_CORE_NAME]
    spec = importlib.util.spec_from_file_location(
        _CORE_NAME, os.path.join(_CORE_DIR, "__init__.py"), submodule_search_locations=[_CORE_DIR])
    core = importlib.util.module_from_spec(spec)
    sys.modules[_CORE_NAME] = core
    spec.loader.exec_module(core)
    return core


_core = _load_core()
_model = importlib.import_module(_CORE_NAME + ".model")
Conv2d, TransposeConv2d, Upsampling = _core.Conv2d, _core.TransposeConv2d, _core.Upsampling
NearestUpsampling, ReLU, Sigmoid = _core.NearestUpsampling, _core.ReLU, _core.Sigmoid
MSE, SGD, Sequential = _core.MSE, _core.SGD, _core.Sequential


class Model(_model.Model):
    """Network, optimizer and loss; ``load_pretrained_model`` reads bestmodel.pth beside
    this file."""

    def load_pretrained_model(self, path=None):
        super().load_pretrained_model(path or os.path.join(_HERE, "bestmodel.pth"))

    @classmethod
    def from_pretrained(cls, name="exercise"):
        """The Model with this submission's bestmodel.pth (the only network it ships)."""
        if name != "exercise":
            raise ValueError(
                "this submission ships one network, 'exercise' (bestmodel.pth), not " + repr(name)
            )
        model = cls()
        model.load_pretrained_model()
        return model


__all__ = {names!r}
'''


def submission_folder(out_dir) -> Path:
    """Where :func:`export_submission` writes: ``out_dir/Miniproject_2``, or ``out_dir`` itself
    where it is named ``Miniproject_2`` (``out/Miniproject_2``, or ``.`` inside one), rather
    than a second copy nested in the first."""
    out = Path(out_dir)
    whole = Path(os.path.abspath(out))  # ("." names its folder so)
    return whole if whole.name == SUBMISSION else out / SUBMISSION


def before_first_epoch(payload) -> bool:
    """Whether a checkpoint is a training state (``checkpoint.pth``) written before its run
    finished an epoch: its weights are those the run started from."""
    if not (isinstance(payload, dict) and "optimizer" in payload):
        return False
    epoch = payload.get("epoch")  # (a crafted file's may be a tensor of several values)
    return isinstance(epoch, int) and epoch == 0


def export_submission(out_dir, weights=None) -> Path:
    """Write ``out_dir/Miniproject_2`` (see :func:`submission_folder`) and return its path.
    In an existing folder only the files of :data:`GENERATED` are replaced; others (the
    report, ...) are kept."""
    from . import __version__

    weights = Path(weights) if weights else DEFAULT_WEIGHTS
    payload = checkpoint.load(weights)  # refuse to ship a damaged checkpoint
    if isinstance(payload, dict) and payload.get("network") == "unet":
        raise ValueError(
            f"{weights}: U-Net weights; a submission ships the course's required network "
            "(the weights of `n2nfunc train` with --network exercise, the default)"
        )
    if not isinstance(payload, dict) or "params" not in payload or "config" not in payload:
        raise ValueError(
            f"{weights}: not a checkpoint of the course's network (written by `n2nfunc train` "
            "or Model.save)"
        )
    if before_first_epoch(payload):
        raise ValueError(
            f"{weights}: the state of a run stopped in its first epoch, whose weights are those "
            "it started from (untrained); resume it, or export a run that finished an epoch"
        )
    model = Model()  # the grader's load_pretrained_model, run here: a file it refuses is not
    model.load_payload(payload, str(weights))  # shipped (wrong shapes, a config it rejects)
    shipped = {**model.payload(), **{k: payload[k] for k in ("noise",) if k in payload}}
    final = submission_folder(out_dir)
    if final.is_dir():
        _check_ours(final)  # before the first file is replaced: all or nothing
        _check_writable(final)
    folder = Path(os.path.realpath(final)).with_name(  # built whole, then renamed: beside
        f".{SUBMISSION}.{os.getpid()}.tmp"  # where the files go (a link's target's folder),
    )  # for a rename never crosses file systems
    try:
        _write_submission(folder, shipped, __version__)
    except OSError as e:  # a full disk, ...: nothing half-written is left
        shutil.rmtree(folder, ignore_errors=True)
        raise OSError(
            e.errno, f"cannot write the submission ({e.strerror or e})", str(final)
        ) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        if final.is_dir():  # (through a link too: the files go where it points)
            _move_into(folder, final)
        else:
            os.replace(folder, final)  # a file of that name is an error here
    except OSError as e:
        raise OSError(
            e.errno, f"cannot write the submission ({e.strerror or e})", str(final)
        ) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return final


def _check_ours(final: Path) -> None:
    """Refuse to replace files of GENERATED's names that no export wrote (the course's
    template, a solution of the user's own): an earlier export's model.py names
    others/n2nfunc, which it loads."""
    present = [name for name in GENERATED if (final / name).exists() or (final / name).is_symlink()]
    marks = {"model.py": "others/n2nfunc", "others/n2nfunc/__init__.py": "export-submission"}
    ours = False
    for name, mark in marks.items():  # (an export cut short may have lost its model.py)
        try:
            ours = ours or (
                (final / name).is_file() and mark in (final / name).read_text(errors="replace")
            )
        except OSError:
            pass
    others = final / "others"
    if others.is_symlink() or (others.exists() and not others.is_dir()):
        present.insert(0, "others")  # (replaced by the others/ folder: a file of the user's)
    if present and not ours:
        raise FileExistsError(
            errno.EEXIST,
            f"cannot write the submission: it holds {', '.join(present)}, not written by "
            f"n2nfunc export-submission; move {'it' if len(present) == 1 else 'them'} away, "
            "or export into another folder (nothing was replaced)",
            str(final),
        )


def _check_writable(final: Path) -> None:
    """Refuse an earlier export whose folders (``final``, ``others/`` and the library's copy
    in it) this process cannot change, before any of its files is replaced."""
    folders = [final]
    others = final / "others"
    if others.is_dir() and not others.is_symlink():
        folders.append(others)
        core = others / "n2nfunc"
        if core.is_dir() and not core.is_symlink():
            folders += [core] + [Path(d) for d, _, _ in os.walk(core)][1:]
    for folder in folders:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(
                errno.EACCES,
                "cannot write the submission (Permission denied; nothing was replaced)",
                str(folder),
            )


def _move_into(folder: Path, final: Path) -> None:
    """Move the GENERATED entries of ``folder`` into the existing ``final``, replacing what
    is there under those names (a file or link where a folder goes too); everything else
    the user put there (Report_2.pdf, ...) stays."""
    for name in ("others",) + GENERATED:
        target = final / name
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            target.unlink()
        elif target.is_dir() and name != "others":
            shutil.rmtree(target)
        if name == "others":
            target.mkdir(exist_ok=True)
        else:
            os.replace(folder / name, target)


# What export_submission writes into Miniproject_2/, replacing an earlier export's.
GENERATED = ("__init__.py", "model.py", "bestmodel.pth", "others/__init__.py", "others/n2nfunc")


def _write_submission(folder: Path, payload: dict, version: str) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    core = folder / "others" / "n2nfunc"
    core.mkdir(parents=True)
    for name in VENDORED:
        (core / name).parent.mkdir(exist_ok=True)
        shutil.copyfile(PACKAGE / name, core / name)
    for sub in SUBPACKAGES:
        (core / sub).mkdir(exist_ok=True)
        for path in sorted((PACKAGE / sub).glob("*.py")):
            shutil.copyfile(path, core / sub / path.name)
    (core / "__init__.py").write_text(INIT)
    (folder / "others" / "__init__.py").write_text("")
    (folder / "__init__.py").write_text('"""Miniproject 2: Noise2Noise with n2nfunc."""\n')
    (folder / "model.py").write_text(MODEL.format(version=version, names=NAMES))
    checkpoint.save(folder / "bestmodel.pth", payload)  # weights only, not a run's state
