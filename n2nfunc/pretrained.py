"""Shipped networks by name, and any n2nfunc checkpoint as a ``(layer, params)`` pair.

    layer, params = n2nfunc.pretrained("unet-gaussian")
    clean = n2nfunc.denoise_image(layer, params, noisy).clamp(0, 1)

Names: ``"exercise"`` (the exercise's required network, ``weights/bestmodel.pth``) and the
U-Nets ``"unet-gaussian"``, ``"unet-poisson"``, ``"unet-aliasing"``
(``weights/<name>.pth``, made by ``bench/train_unet.py``). Every returned layer takes
(N, 3, H, W) images in [0, 1] of any size (padded to its multiple and cropped back).

A U-Net checkpoint records its architecture, so loading rebuilds the right network::

    {"network": "unet", "architecture": {"depth", "widths", "in_channels", "out_channels"},
     "params": <the layer's params>, "info": {...free-form: noise, training time, ...}}

Files are read with :func:`n2nfunc.checkpoint.load`, which never runs code from a file.
"""

from pathlib import Path

from . import checkpoint, tree
from .base import Layer, Params, PathLike
from .model import (
    ARCHITECTURE,
    DEFAULT_CONFIG,
    DEFAULT_WEIGHTS,
    EXERCISE_REACH,
    SHIPPED,
    architecture,
    build_network,
    check_exercise_form,
    check_exercise_params,
    check_finite,
    full_config,
)
from .tiling import with_footprint
from .unet import check_architecture, checkpoint_unet, padded_to_multiple, unet

WEIGHTS = Path(__file__).resolve().parent / "weights"
NAMES = SHIPPED
EXERCISE_MULTIPLE = 4  # the exercise's network halves the size twice


def weights_path(name: str) -> Path:
    """The shipped weights file of ``name``."""
    check_name(name)
    return DEFAULT_WEIGHTS if name == "exercise" else WEIGHTS / f"{name}.pth"


def check_name(name) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown pretrained network {name!r}; known: {', '.join(NAMES)}")
    return name


def shipped_weights(name: str) -> Path:
    """The weights file of ``name``; ``FileNotFoundError`` naming the training command if it
    is missing."""
    path = weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"the weights of {name!r} are not shipped yet ({path} is missing); train them "
            f"with: python bench/train_unet.py --name {name}"
        )
    return path


def pretrained(name: str) -> tuple[Layer, Params]:
    """``(layer, params)`` of a shipped network (float32, on the CPU)."""
    layer, params, _ = load_network(shipped_weights(name))
    return layer, params


def unet_payload(architecture: dict, params, info: dict | None = None) -> dict:
    """The checkpoint tree of a U-Net (see the module docstring)."""
    arch = check_architecture(**architecture)
    return {"network": "unet", "architecture": arch, "params": params, "info": dict(info or {})}


def save_unet(path, architecture: dict, params, info: dict | None = None) -> None:
    checkpoint.save(path, unet_payload(architecture, params, info))


def load_network(path: PathLike) -> tuple[Layer, Params, dict]:
    """``(layer, params, info)`` from any n2nfunc network checkpoint file (see
    :func:`network_from_payload`); the params float32, on the CPU."""
    return network_from_payload(checkpoint.load(path), str(path))


def network_from_payload(payload, source: str = "checkpoint") -> tuple[Layer, Params, dict]:
    """``(layer, params, info)`` from a loaded checkpoint tree: a U-Net checkpoint, or a
    ``Model`` checkpoint of the exercise's network (``info`` is then its config). Errors
    name ``source``."""
    if not isinstance(payload, dict):
        raise ValueError(f"{source}: not an n2nfunc network checkpoint")
    if payload.get("network") == "unet":
        return _unet_from(payload, source)
    if "params" in payload and "config" in payload and "network" not in payload:
        return _exercise_from(payload, source)
    raise ValueError(
        f"{source}: not an n2nfunc network checkpoint (expected a U-Net or a Model checkpoint, "
        f"got keys {sorted(map(str, payload))})"
    )


def _unet_from(payload: dict, source: str) -> tuple[Layer, Params, dict]:
    arch, params = checkpoint_unet(payload, source)
    check_finite(params, source)  # (as the file holds them: 1e300 is named as too large)
    params = tree.map(lambda t: t.float(), params)  # float32, as the exercise's
    info = payload.get("info")
    info = {} if info is None else info
    if not isinstance(info, dict):
        raise ValueError(f"{source}: 'info' must be a dict, got {type(info).__name__}")
    return unet(**arch), params, dict(info)


def _exercise_from(payload: dict, source: str) -> tuple[Layer, Params, dict]:
    if not isinstance(payload["config"], dict) or not isinstance(payload["params"], dict):
        raise ValueError(f"{source}: 'config' and 'params' must be dicts")
    theirs = {k: tuple(v) if isinstance(v, list) else v for k, v in payload["config"].items()}
    check_exercise_form(theirs, source)
    arch = architecture({**DEFAULT_CONFIG, **{k: theirs[k] for k in ARCHITECTURE if k in theirs}})
    params = dict(payload["params"])
    check_exercise_params(arch, params, source)  # before building for real
    check_finite(params, source)
    net = build_network(full_config(arch))  # (whole floats as ints: kernel 4.0)
    net.load_state_dict(params)
    layer = net.layer
    if not isinstance(layer, Layer):  # the exercise network has no state
        raise TypeError(f"{source}: expected a network without state")
    padded = padded_to_multiple(layer, EXERCISE_MULTIPLE)
    info = {**DEFAULT_CONFIG, **theirs}  # the file's own settings (seed, lr, ...), not ours
    return with_footprint(padded, EXERCISE_MULTIPLE, EXERCISE_REACH), net.params, info


__all__ = [
    "NAMES",
    "load_network",
    "network_from_payload",
    "pretrained",
    "save_unet",
    "shipped_weights",
    "unet_payload",
    "weights_path",
]
