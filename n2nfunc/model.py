"""The Noise2Noise denoiser with the exercise grader's interface.

    model = Model()
    model.load_pretrained_model()          # the shipped weights
    model.train(noisy_a, noisy_b, num_epochs=5)   # fine-tunes them (a tenth of the lr)
    denoised = model.predict(noisy)

The network is the required one, built from the library's blocks (``train`` puts it in
training mode, ``predict`` in evaluation mode, which only matters for networks with batch
norm or dropout):
``Sequential(Conv2d(stride 2), ReLU, Conv2d(stride 2), ReLU, Upsampling, ReLU,
Upsampling, Sigmoid)``, where each Upsampling is a stride-2 transposed convolution
(default) or nearest x2 upsampling followed by a convolution.

``Model(config={"network": "unet"})`` trains and predicts with the Noise2Noise U-Net
(:class:`~n2nfunc.modules.UNet`; ``depth`` and four ``widths``) instead, and
``Model.from_pretrained(name)`` returns a ready Model for any shipped network
(:data:`n2nfunc.pretrained.NAMES`). A checkpoint records its architecture: loading one
rebuilds the network it holds.

``Model(config={"precision": "bfloat16"})`` trains and predicts with bfloat16 matmul operands
(:func:`n2nfunc.mixed_precision`); weights, optimizer state, loss and checkpoints stay float32.
The default is "float32"; the class wrappers never switch precision on their own.

Scale rule for inputs: ``uint8`` (and other integer types) mean 0-255; a floating-point
tensor whose maximum is <= 1, or whose mean is <= 2 and maximum <= 16 (a 0-1 image with
unclipped noise, which may go well above 1), means 0-1, otherwise 0-255; a training target
takes the second reading only beside a 0-1 input. ``predict`` returns a float
tensor of the input's shape, in the input's scale, on the input's device.
"""

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Protocol

from torch import Generator, Tensor, cat, device, empty

from . import optim, tree
from .base import (
    BOOL,
    FLOAT32,
    NOISY_MAX,
    NOISY_MEAN,
    Layer,
    PathLike,
    is_int,
    is_number,
    pixel_scale,
    positive_int,
    seed_error,
)
from .modules import (
    MSE,
    SGD,
    Adam,
    Conv2d,
    Module,
    ReLU,
    Sequential,
    Sigmoid,
    TransposeConv2d,
    UNet,
    Unpicklable,
    Upsampling,
)
from .precision import compute_dtype, mixed_precision
from .stateful import StatefulLayer
from .tiling import footprint, tile_settings, tiled, with_footprint
from .unet import MAX_WIDTH, check_architecture, checkpoint_unet, edge_pad


class Parallel(Protocol):
    """What :meth:`Model.train_epoch` trains data parallel with (as
    :class:`n2nfunc.distributed.DataParallel`): this process's ``rank`` of ``size``, and
    ``mean(tree)``, the mean of a tree over all ranks."""

    rank: int
    size: int

    def mean(self, values: Any) -> Any: ...


NETWORKS = ("exercise", "unet")
ARCHITECTURE = ("widths", "kernel", "upsampling")  # what defines the exercise's network
# How far from an output pixel of the exercise's networks (kernels up to 5) the input pixels
# it depends on can lie: a bound (kernel 5: 4 + 8 + 8 + 4 pixels through its four layers,
# plus the stride-2 rounding); tests/test_pretrained.py measures 3 to 15 on the networks.
EXERCISE_REACH = 27
UNET_ARCHITECTURE = ("depth", "widths")
DEFAULT_CONFIG = {
    "network": "exercise",  # the exercise's required network, or "unet"
    "widths": (48, 48),  # channels after the first and the second convolution
    "depth": 4,  # U-Net only: the number of 2x2 poolings
    "kernel": 4,
    "upsampling": "transpose",  # or "nearest" (nearest x2 + convolution)
    "optimizer": "adam",  # or "sgd" (with momentum)
    "lr": 6e-3,
    "momentum": 0.9,
    "batch_size": 32,
    "num_epochs": 12,
    "warmup_steps": 200,
    "final_lr_fraction": 0.02,
    "finetune_lr_scale": 0.1,  # peak lr multiplier when training after loading weights
    "augment": True,  # random flips / quarter turns of each batch
    "seed": 0,
    "precision": "float32",  # or "bfloat16": matmuls on bfloat16 operands, float32 weights
}
UNET_DEFAULTS = {"widths": (32, 64, 48, 24), "lr": 1e-3}  # where "unet" differs
# Settings of one network only: Model refuses them set away from their defaults for the other
NETWORK_ONLY = {"depth": "unet", "kernel": "exercise", "upsampling": "exercise"}
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "bestmodel.pth"
SHIPPED = ("exercise", "unet-gaussian", "unet-poisson", "unet-aliasing")  # shipped networks


def architecture(config: dict) -> dict:
    """The config entries that define the network (checkpoints must match them)."""
    network = config.get("network", "exercise")
    keys = UNET_ARCHITECTURE if network == "unet" else ARCHITECTURE
    return {"network": network, **{k: config[k] for k in keys}}


def build_network(config: dict, generator: Generator | None = None) -> Module:
    """The network of a config: the exercise's (widths, kernel, upsampling) or, with
    ``network="unet"``, the U-Net (depth, widths)."""
    if config.get("network", "exercise") == "unet":
        return UNet(config["depth"], config["widths"], generator=generator)
    w1, w2 = config["widths"]
    k = config["kernel"]
    pad = (k - 1) // 2  # stride-2 convs map H to H/2 for k in 2..5
    if config["upsampling"] == "transpose":

        def up(cin, cout):  # (H-1)*2 - 2p + k + op = 2H  =>  op = 2 + 2p - k
            return TransposeConv2d(
                cin,
                cout,
                k,
                stride=2,
                padding=pad,
                output_padding=2 + 2 * pad - k,
                generator=generator,
            )
    elif config["upsampling"] == "nearest":
        if k % 2 == 0:
            raise ValueError("nearest upsampling needs an odd kernel to keep the size")

        def up(cin, cout):
            return Upsampling(cin, cout, k, scale_factor=2, padding=pad, generator=generator)
    else:
        raise ValueError(
            f"upsampling must be 'transpose' or 'nearest', got {config['upsampling']!r}"
        )
    return Sequential(
        Conv2d(3, w1, k, stride=2, padding=pad, generator=generator),
        ReLU(),
        Conv2d(w1, w2, k, stride=2, padding=pad, generator=generator),
        ReLU(),
        up(w2, w1),
        ReLU(),
        up(w1, 3),
        Sigmoid(),
    )


# Integer images are 0-255; unclipped noise may take a wider integer target this far past
# either end (Gaussian sigma 50 reaches some 250), but not a 16-bit image's 65,535
INTEGER_SLACK = 255


def to_unit_range(x, name: str, scale: float | None = None, noisy_max: float = NOISY_MAX):
    """Validate an image batch and return ``(x as float in [0, 1], scale)``, scale being the
    value of white: 255 for integers; for floats ``scale`` if given (see :func:`white_of`),
    else 1 when the maximum is at most 1 or the mean at most ``NOISY_MEAN`` and the maximum at
    most ``noisy_max`` (0-1 images with unclipped noise; 0 reads only a batch within [0, 1] as
    0-1), else 255."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    x = x.detach()  # the result never joins the caller's autograd graph
    if not (x.is_floating_point() or _is_integer(x)):
        raise ValueError(
            f"{name} must hold numbers (uint8 or float), got dtype {x.dtype} "
            f"with shape {tuple(x.shape)}"
        )
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape (N, 3, H, W), got {tuple(x.shape)}{_layout_hint(x)}"
        )
    if x.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if x.is_floating_point():
        low, high = float(x.min()), float(x.max())  # NaN and +-inf show here
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{name} contains NaN or infinite values (shape {tuple(x.shape)})")
        if scale is None:
            scale = pixel_scale(x, noisy_max)
        else:
            _not_far_above_white(x, name, scale)
    else:
        if scale not in (None, 255.0):
            raise ValueError(
                f"{name}: integer images hold 0-255 (uint8), so scale must be 255 or None "
                f"for them, got scale={scale:g}"
            )
        wide = x if x.is_signed() or x.element_size() == 1 else x.double()  # (uint16-64 have
        low, high = int(wide.min()), int(wide.max())  # no min / max of their own)
        if scale is not None:  # the caller vouches for the scale: any unclipped noise
            _not_far_above_white(x, name, scale)
        elif low < -INTEGER_SLACK or high > 255 + INTEGER_SLACK:
            raise ValueError(
                f"{name}: integer images hold 0-255 (uint8), got values from {low} to {high} "
                f"(shape {tuple(x.shape)}); give 16-bit images as 0-255 or as floats in [0, 1]"
                + (
                    " (0-255 targets with unclipped noise: pass scale=255)"
                    if "target" in name
                    else ""
                )
            )
        scale = 255.0
    dtype = x.dtype if x.is_floating_point() and x.element_size() >= 4 else FLOAT32
    y = x.to(dtype=dtype)
    if scale == 1.0:
        return y, scale
    return (y / scale if y is x else y.div_(scale)), scale


def _not_far_above_white(x: Tensor, name: str, scale: float) -> None:
    """Refuse images whose mean is far above the white ``scale`` their caller gave (summed in
    float32 without a float copy of an integer batch: 50,000 pairs' targets, 614 MB)."""
    if (mean := float(x.sum(dtype=FLOAT32)) / x.numel()) > NOISY_MEAN * scale:
        raise ValueError(
            f"{name}: the mean value {mean:.4g} is far above white "
            f"(scale={scale:g}): the images are on a larger scale than that"
        )


def _check_prepared(x, y) -> None:
    """Refuse to train on what :meth:`Model.prepare_pairs` does not give: float32 / float64
    pairs of one shape (N, 3, H, W). The weights follow the data's dtype: uint8 data would
    truncate them, 16-bit floats round them."""
    for name, t in (("x", x), ("y", y)):
        if not (isinstance(t, Tensor) and t.is_floating_point() and t.element_size() >= 4):
            got = f"{t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"Model.train_epoch: {name} must be float32 or float64 images in [0, 1] (as "
                f"Model.prepare_pairs gives them), got {got}"
            )
    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(
            f"Model.train_epoch: x and y must be (N, 3, H, W) of one shape, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )


def _layout_hint(x: Tensor) -> str:
    """How a batch of the wrong shape may be meant: one image, or channels last."""
    if x.dim() == 3 and x.shape[0] == 3:
        return " (one image: add the batch dim, x[None])"
    if x.dim() in (3, 4) and x.shape[-1] == 3:
        fix = "x.permute(2, 0, 1)[None]" if x.dim() == 3 else "x.permute(0, 3, 1, 2)"
        return f" (channels last? {fix})"
    return ""


def white_of(scale, where: str) -> float | None:
    """A caller's ``scale`` argument -- the value of white of its images, 1 or 255 say, or None
    to infer it -- as a float, refusing anything but a positive finite number."""
    if scale is None:
        return None
    if not is_number(scale) or not (0 < float(scale) < math.inf):
        raise ValueError(
            f"{where}: scale must be the value of white (a positive number such as 1 or "
            f"255) or None to infer it, got {scale!r}"
        )
    return float(scale)


def _is_integer(x: Tensor) -> bool:
    return not x.is_floating_point() and not x.is_complex() and x.dtype != BOOL


def _dihedral(x: Tensor, k: int) -> Tensor:
    """One of the 8 symmetries of the square: ``k // 2`` quarter turns, then a flip if k is odd."""
    x = x.rot90(k // 2 % 4, (2, 3)) if k // 2 % 4 else x
    return x.flip(3) if k % 2 else x


def _inference_only(*_):
    raise TypeError("Model.predict's tiled network is for inference only")


def _inference(net: Module, x: Tensor) -> Tensor:
    """The network's output in its current mode, without keeping a pullback; computed in
    ``x``'s dtype (on a converted copy of the weights if theirs differs)."""
    params = net.params
    if tree.leaves(params)[0].dtype != x.dtype:
        params = tree.map(lambda t: t.to(dtype=x.dtype) if t.is_floating_point() else t, params)
    if isinstance(net.layer, StatefulLayer):
        return net.layer.apply(params, net.state, x, train=net.training, rng=net.rng)[0]
    return net.layer.apply(params, x)


# Images per forward pass in Model.predict, as pixels times the bytes of one computed number:
# small enough that the activations stay in cache-sized, reusable buffers (docs/performance.md,
# 'The engines' constants').
PREDICT_BYTES = 1 << 19

# Images of more pixels than PREDICT_TILE**2 are denoised tile by tile (overlapping by the
# network's reach, see n2nfunc.denoise_image), so that memory stays bounded: the U-Net keeps
# about 1 KB of float32 activations per pixel, so a 1500 x 2000 photo took 2.9 GB in one
# pass, and a phone's 12-megapixel one would take 12.
PREDICT_TILE = 1024


def images_per_chunk(h: int, w: int, computed, device_type: str = "cpu") -> int:
    """Images of h x w pixels per forward pass of :meth:`Model.predict` by default, for
    numbers computed in the dtype ``computed``: ``PREDICT_BYTES`` of them on the CPU,
    ``PREDICT_TILE``**2 pixels on a GPU; at least one image."""
    if device_type == "cpu":
        max_pixels = PREDICT_BYTES // empty((), dtype=computed).element_size()
    else:
        max_pixels = PREDICT_TILE**2  # a GPU pays a fixed launch cost per chunk
    return max(1, max_pixels // (h * w))


def _plain(v) -> bool:
    """A Python or NumPy number, not a bool, string or tensor."""
    return (
        hasattr(type(v), "__float__")
        and not isinstance(v, (bool, str, complex, Tensor))
        and getattr(v, "ndim", 0) == 0
    )


def _finite(v) -> bool:
    """Whether the plain number ``v`` is finite as a float (an int past float's range is not:
    no setting or statistic needs one)."""
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _brief(v) -> str:
    """``repr(v)`` for an error message, an int of hundreds of digits said by its length."""
    if isinstance(v, int) and abs(v) >= 10**30:  # (str() refuses past 4,300 digits)
        digits = len(str(abs(v))) if abs(v).bit_length() < 10_000 else "thousands of"
        return f"an int of {digits} digits"
    return repr(v)


def _int_if_whole(v):
    """``v`` as an int where it is a whole plain number (2.0, NumPy's 2), else ``v`` unchanged
    (for the checks that follow to refuse)."""
    return int(v) if _plain(v) and _finite(v) and int(v) == v else v


def _whole(v, key: str, low=None) -> int:
    """``v`` as an int (2.0 and NumPy ints are), at least ``low`` if given."""
    integral = _plain(v) and _finite(v) and int(v) == v
    if not integral or (low is not None and v < low):
        low_text = "" if low is None else f" >= {low}"
        raise ValueError(f"{key} must be an int{low_text}, got {_brief(v)}")
    return int(v)


def _applies(key: str, network: str) -> bool:
    """Whether the setting ``key`` is one of ``network``'s (all but NETWORK_ONLY's others)."""
    return NETWORK_ONLY.get(key, network) == network


def _differs(value, key: str) -> bool:
    """Whether ``value`` is not ``key``'s default (any value that cannot be compared is)."""
    try:
        return bool(value != DEFAULT_CONFIG[key])
    except Exception:  # a tensor of several values, an object whose != raises
        return True


def check_config(config: dict) -> None:
    """Each training setting must be of its kind and range (a negative final learning-rate
    fraction would turn the end of every run into gradient ascent)."""

    def whole(key, low=None):
        config[key] = _whole(config[key], key, low)

    def number(key, low, high=None, low_open=False, high_open=True):
        v = config[key]
        ok = _plain(v) and _finite(v)
        ok = ok and (v > low if low_open else v >= low)
        ok = ok and (high is None or (v < high if high_open else v <= high))
        if not ok:
            span = f"{'>' if low_open else '>='} {low}" + (
                "" if high is None else f" and {'<' if high_open else '<='} {high}"
            )
            raise ValueError(f"{key} must be a finite number {span}, got {_brief(v)}")
        config[key] = v if isinstance(v, int) else float(v)

    whole("batch_size", 1)
    whole("num_epochs", 0)
    whole("warmup_steps", 0)
    whole("seed")
    if error := seed_error(config["seed"]):
        raise ValueError(error)
    number("lr", 0, low_open=True)
    number("momentum", 0, 1)
    number("final_lr_fraction", 0, 1, high_open=False)
    number("finetune_lr_scale", 0, low_open=True)
    if not isinstance(config["augment"], bool):
        raise ValueError(f"augment must be True or False, got {config['augment']!r}")
    if config["optimizer"] not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {config['optimizer']!r}")
    if config.get("network", "exercise") == "unet":
        return
    widths = config["widths"]
    if not (
        isinstance(widths, tuple)
        and len(widths) == 2
        and all(is_int(v) and 1 <= v <= MAX_WIDTH for v in widths)  # (NumPy ints too)
    ):
        raise ValueError(f"widths must be 2 ints from 1 to {MAX_WIDTH}, got {widths!r}")
    whole("kernel", 2)
    if config["kernel"] > 5:
        raise ValueError(f"kernel must be from 2 to 5, got {config['kernel']!r}")
    if config["upsampling"] not in ("transpose", "nearest"):
        raise ValueError(
            f"upsampling must be 'transpose' or 'nearest', got {config['upsampling']!r}"
        )


class Model(Unpicklable):
    """Network, optimizer and loss of the Noise2Noise denoiser; the networks, precision and
    scale rule are described in the docstring of :mod:`n2nfunc.model`.

    ``Model(config)`` takes the keys of :data:`n2nfunc.model.DEFAULT_CONFIG` (an unknown key
    is refused with the list of known ones); ``Model()`` is the exercise's network with the
    grader's behaviour. After :meth:`load_pretrained_model` (or :meth:`from_pretrained`),
    :meth:`train` fine-tunes: its peak learning rate is ``lr * finetune_lr_scale`` (0.1 by
    default), so the loaded weights are refined rather than trained over.
    """

    save_instead = (
        "use model.save(path) instead (weights and config; Model().load_pretrained_model(path) "
        "reads them)"
    )

    def __init__(self, config: dict | None = None):
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"Model: config must be a dict, got {type(config).__name__}")
        unknown = set(config or {}) - set(DEFAULT_CONFIG)
        if unknown:
            raise ValueError(
                f"Model: unknown config keys {sorted(unknown, key=repr)}; "
                f"known: {sorted(DEFAULT_CONFIG)}"
            )
        self._given = dict(config or {})
        network = self._given.get("network", DEFAULT_CONFIG["network"])
        other = [  # set away from its default for a network that ignores it
            k for k, v in self._given.items() if not _applies(k, network) and _differs(v, k)
        ]
        if other and network in NETWORKS:
            kind = "is a setting" if len(other) == 1 else "are settings"
            raise ValueError(
                f"Model: {', '.join(map(repr, other))} {kind} of network "
                f"{NETWORK_ONLY[other[0]]!r} only; this config's network is {network!r}"
            )
        self._configure(self._given)  # (checks each setting's value)
        optimizer = self.config["optimizer"]
        if optimizer == "adam" and _differs(self.config["momentum"], "momentum"):
            raise ValueError(  # (it would be dropped: Adam has no momentum setting)
                f"Model: 'momentum' is a setting of optimizer 'sgd' only; this config's "
                f"optimizer is {optimizer!r}"
            )
        self.loss = MSE()
        self.pretrained = False

    @classmethod
    def from_pretrained(cls, name: str = "exercise") -> "Model":
        """A Model holding the shipped network ``name`` (see :data:`n2nfunc.pretrained.NAMES`)."""
        from .pretrained import shipped_weights

        model = cls()
        model.load_pretrained_model(shipped_weights(name))
        return model

    def _configure(self, config: dict) -> None:
        """Set the config (:func:`full_config`) and build a fresh network and optimizer."""
        try:
            config = full_config(config)
        except ValueError as e:
            raise ValueError(f"Model: {e}") from None
        self.config = config
        self.generator = Generator().manual_seed(self.config["seed"])
        self.net = build_network(self.config, self.generator)
        self._fresh_rng = self.generator.get_state()  # a new network's data order starts here
        self._new_optimizer()

    def _new_optimizer(self) -> None:
        """A fresh optimizer (no moments, step 0) over the network's parameters."""
        self.optimizer: Adam | SGD
        if self.config["optimizer"] == "adam":
            self.optimizer = Adam(self.net.param(), lr=self.config["lr"])
        else:
            self.optimizer = SGD(
                self.net.param(), lr=self.config["lr"], momentum=self.config["momentum"]
            )
        self._snapshot: tuple | None = None  # (params, optimizer state)
        self._said_precision = False  # the note on an emulated bfloat16, said once

    # ------------------------------------------------------------------ weights
    def load_pretrained_model(self, path: PathLike | None = None) -> None:
        """Load weights saved by :meth:`save` (default: the shipped ``bestmodel.pth``). The
        optimizer starts afresh, and a later :meth:`train` fine-tunes at ``finetune_lr_scale``
        (0.1 by default) times the peak learning rate."""
        from . import checkpoint

        path = DEFAULT_WEIGHTS if path is None else path
        try:
            payload = checkpoint.load(path)
        except FileNotFoundError as e:
            if path in SHIPPED:  # a shipped network's name, given as a path
                raise FileNotFoundError(
                    f"{e}; a shipped network by name: Model.from_pretrained({path!r})"
                ) from None
            raise
        self.load_payload(payload, str(path))

    def load_payload(self, payload: dict, source: str) -> None:
        """Load a checkpoint tree (a Model's or a U-Net's, see :meth:`payload`); a network of
        another architecture than this Model's is rebuilt first (as the file records it)."""
        theirs, params = checkpoint_network(payload, source)
        check_finite(params, source)
        before = (self.config, self.generator, self.net, self.optimizer, self._snapshot)
        try:  # a file refused halfway leaves this Model as it was
            if theirs != architecture(self.config):
                given = {  # the settings of the network loaded, not the one replaced
                    k: v for k, v in self._given.items() if _applies(k, theirs["network"])
                }
                self._configure({**given, **theirs})
            device = tree.leaves(self.net.params)[0].device
            self.net.load_state_dict({k: v.to(device) for k, v in params.items()})
            self.generator.set_state(self._fresh_rng)  # as a new Model's, whatever ran before
        except (KeyError, ValueError, TypeError) as e:
            self.config, self.generator, self.net, self.optimizer, self._snapshot = before
            message = e.args[0] if isinstance(e, KeyError) and e.args else e  # no quotes
            raise ValueError(f"{source}: {message}") from None
        self._new_optimizer()  # fine-tuning starts afresh, whatever was trained before
        self.pretrained = True

    def payload(self) -> dict:
        """Config and parameters, ready for :func:`n2nfunc.checkpoint.save`: ``{"config",
        "params"}`` (flat), or for the U-Net the format of :mod:`n2nfunc.pretrained` with the
        config added (so :func:`n2nfunc.load_network` reads either)."""
        if self.config["network"] == "unet":
            arch = check_architecture(self.config["depth"], self.config["widths"])
            return {
                "network": "unet",
                "architecture": arch,
                "params": self.net.params,
                "info": {},
                "config": dict(self.config),
            }
        return {"config": dict(self.config), "params": dict(self.net.state_dict())}

    def save(self, path: PathLike) -> None:
        """Config and weights into the file ``path`` (its folder must exist), for
        ``Model().load_pretrained_model(path)`` (``Model.from_pretrained`` takes the
        shipped networks' names)."""
        from . import checkpoint

        checkpoint.save(path, self.payload())

    # ------------------------------------------------------------------ training
    def _runner(self, x: Tensor, name: str) -> Module:
        """The module that computes: ``self.net`` in float32, else a module sharing its params
        and gradients whose layer is ``mixed_precision(net, precision)`` (float32 weights,
        optimizer state and loss; bfloat16 matmul operands)."""
        precision = self.config["precision"]
        if precision == "float32":
            return self.net
        if x.dtype != FLOAT32:
            raise ValueError(
                f"Model: precision {precision!r} computes on float32 data with float32 master "
                f"weights; {name} is {x.dtype} (shape {tuple(x.shape)}). Pass float32 or uint8 "
                "images, or use precision 'float32' for float64"
            )
        if not self._said_precision:  # once per Model: every step comes here
            self._said_precision = True
            if problem := _bfloat16_problem(x.device):
                warnings.warn(f"Model: precision {precision!r}: {problem}", stacklevel=3)
        layer = self.net.layer
        if isinstance(layer, StatefulLayer):  # the denoiser networks have no state
            raise ValueError(f"Model: precision {precision!r} needs a network without state")
        runner = Module(mixed_precision(layer, precision), self.net.params, "Model")
        runner.grads = self.net.grads
        return runner

    def _move_to(self, device, dtype=None) -> None:
        """Move the network's parameters and gradients in place to ``device`` (and
        ``dtype``); the optimizer's state follows at its next step."""
        first = tree.leaves(self.net.params)[0]
        dtype = dtype or first.dtype
        if first.device == device and first.dtype == dtype:
            return
        self.net.to(device=device, dtype=dtype)  # in place: the optimizer follows at its step

    def train(
        self,
        train_input: Tensor,
        train_target: Tensor,
        num_epochs: int | None = None,
        callback: Callable | None = None,
        scale: float | None = None,
    ) -> list:
        """Train on noisy/noisy pairs (N, 3, H, W); returns the mean loss of each epoch.
        After :meth:`load_pretrained_model`, at ``finetune_lr_scale`` (0.1 by default) times
        the peak learning rate.

        ``callback(epoch, step, steps_per_epoch, loss)`` is called after every step. If the
        loss (or, after an epoch's last update, a parameter) becomes NaN or infinite, the
        parameters and the optimizer state from before the offending update are restored and
        ``FloatingPointError`` is raised. ``scale``: the value of white of float images (1,
        255), inferred when None (see :meth:`prepare_pairs`).
        """
        epochs = self.config["num_epochs"] if num_epochs is None else num_epochs
        epochs = _whole(epochs, "num_epochs", 0)  # as the config takes it
        if callback is not None and not callable(callback):
            raise TypeError(f"Model.train: callback must be callable, got {_brief(callback)}")
        x, y = self.prepare_pairs(train_input, train_target, scale)
        return [self.train_epoch(x, y, e, epochs, callback) for e in range(epochs)]

    def prepare_pairs(
        self, train_input: Tensor, train_target: Tensor, scale: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """Validate a training set and return it as float tensors in [0, 1]: divided by
        ``scale`` (the value of white) when given, else each by the scale rule. A target is
        read as 0-1 with unclipped noise only beside a 0-1 input (a pair of views of one 0-255
        image whose target is that dark is 0-255 too), and there by its mean alone, whatever
        its maximum: Poisson noise at a peak below 1 lifts an unclipped 0-1 target far above
        NOISY_MAX (peak 0.3: 20), and such a target is the other view of images the input
        shows on the 0-1 scale. An integer target beside an integer input is read as 0-255
        whatever its range (the built-in pairs' int16 targets: unclipped noise), unless its mean
        is far above white."""
        given = white_of(scale, "Model.train")
        x, scale = to_unit_range(train_input, "train_input", given)
        if (
            given is None
            and _is_integer(train_input)
            and isinstance(train_target, Tensor)
            and _is_integer(train_target)
        ):
            given = 255.0  # the other view of those 0-255 images, with any unclipped noise
        y, _ = to_unit_range(
            train_target, "train_target", given, noisy_max=math.inf if scale == 1.0 else 0.0
        )
        if x.shape != y.shape:
            raise ValueError(
                f"train_input shape {tuple(x.shape)} does not match train_target "
                f"shape {tuple(y.shape)}"
            )
        if x.shape[2] < 4 or x.shape[3] < 4:
            raise ValueError(
                f"train_input: training images must be at least 4x4, got {tuple(x.shape)}"
            )
        if self.config["network"] != "unet" and (x.shape[2] % 4 or x.shape[3] % 4):
            raise ValueError(
                f"train_input: the exercise's network trains on images whose height and width "
                f"are multiples of 4 (two stride-2 convolutions), got {tuple(x.shape)}; crop "
                "the pairs (predict pads any size; the U-Net trains on any size from 4x4)"
            )
        return x, y.to(dtype=x.dtype)

    def train_epoch(
        self,
        x: Tensor,
        y: Tensor,
        epoch: int,
        total_epochs: int,
        callback: Callable | None = None,
        parallel: Parallel | None = None,
    ) -> float:
        """One pass over prepared pairs (see :meth:`prepare_pairs`), as epoch ``epoch`` of a
        run of ``total_epochs`` (the learning-rate schedule spans the whole run), in full
        batches of ``batch_size`` (or of all pairs, if fewer) in a fresh random order: the N
        mod ``batch_size`` pairs after the last full batch wait for a later epoch, as with
        PyTorch's ``drop_last`` (50 pairs at batch 32: 32 of them an epoch).

        Data parallel (``parallel`` from :mod:`n2nfunc.distributed`, with ``rank``, ``size``
        and ``mean(tree)``): every rank holds all pairs and draws the same global batches;
        it trains on the ``rank``-th of ``size`` equal slices of each batch (the batch size
        must divide by ``size``), and the loss and gradients are averaged over ranks before
        the update, which is therefore the whole batch's update on every rank.
        """
        total_epochs = _whole(total_epochs, "Model.train_epoch: total_epochs", 1)
        epoch = _whole(epoch, "Model.train_epoch: epoch", 0)
        if epoch >= total_epochs:
            raise ValueError(
                f"Model.train_epoch: epoch {epoch} is not one of the run's total_epochs "
                f"{total_epochs} (epochs count from 0)"
            )
        if callback is not None and not callable(callback):
            raise TypeError(f"Model.train_epoch: callback must be callable, got {_brief(callback)}")
        _check_prepared(x, y)
        net = self._runner(x, "train_input")  # (refuses a dtype before the weights move)
        self._move_to(x.device, x.dtype)
        self.net.train()
        n = x.shape[0]
        bs = min(self.config["batch_size"], n)
        steps = n // bs
        lo, hi = 0, bs  # this rank's slice of each batch
        if parallel is not None and parallel.size > 1:
            if bs % parallel.size:
                raise ValueError(
                    f"Model.train_epoch: the global batch size {bs} does not divide by the "
                    f"{parallel.size} processes; choose a batch size that does"
                )
            lo, hi = parallel.rank * bs // parallel.size, (parallel.rank + 1) * bs // parallel.size
            _check_same_pairs(parallel, x, y)
        else:
            parallel = None
        peak = self.config["lr"] * (self.config["finetune_lr_scale"] if self.pretrained else 1.0)
        total = max(1, total_epochs * steps)
        schedule = optim.cosine_decay(
            peak,
            total + 1,
            self.config["final_lr_fraction"],
            min(self.config["warmup_steps"], total // 10),
        )
        params = [p for p, _ in self.net.param()]
        grads = [g for _, g in self.net.param()]
        order = empty(n).uniform_(generator=self.generator).argsort().to(x.device)
        running = 0.0
        for b in range(steps):
            idx = order[b * bs + lo : b * bs + hi]
            xb, yb = x[idx], y[idx]
            if self.config["augment"]:
                k = int(empty(1).random_(8, generator=self.generator))
                xb, yb = _dihedral(xb, k), _dihedral(yb, k)
            loss = self.loss.forward(net.forward(xb), yb)
            self.net.zero_grad()
            net.backward(self.loss.backward(), input_grad=False, retain_graph=False)
            if parallel is not None:  # one collective for the loss and all the gradients
                loss, mean_grads = parallel.mean((loss, grads))
                tree.copy_(grads, mean_grads)
            value = float(loss)
            if not math.isfinite(value):
                self._diverged(
                    params, f"the loss became {value} at epoch {epoch + 1}, step {b + 1}"
                )
            # undo point for a NaN: the optimizer's update makes a new state (no copy needed)
            self._snapshot = ([p.clone() for p in params], self.optimizer.state)
            self.optimizer.lr = schedule(epoch * steps + b)
            self.optimizer.step()
            running += value
            if callback is not None:
                callback(epoch, b, steps, value)
        if steps and not all(bool(p.isfinite().all()) for p in params):  # the last update's
            self._diverged(params, f"the parameters became NaN or infinite at epoch {epoch + 1}")
        return running / max(steps, 1)

    def _diverged(self, params: list, what: str) -> NoReturn:
        """Restore ``params`` and the optimizer state from before the last update (if there
        was one) and raise ``FloatingPointError`` saying ``what`` happened."""
        snapshot, undone = self._snapshot, ""  # none before a run's first update
        if snapshot is not None:
            tree.copy_(params, snapshot[0])
            self.optimizer.state = snapshot[1]
            undone = "the parameters and optimizer state from before the last update were "
            undone += "restored; "
        raise FloatingPointError(
            f"Model.train: {what}; {undone}check the data (its scale) or lower the learning rate."
        )

    # ------------------------------------------------------------------ inference
    def predict(
        self, test_input: Tensor, max_pixels: int | None = None, scale: float | None = None
    ) -> Tensor:
        """Denoise a batch (N, 3, H, W) -- or one image (3, H, W) -- of any size; same shape,
        scale and device as the input.
        ``scale``: the value of white of float images (1, 255), inferred when None (0-255, or
        0-1 when the maximum is at most 1 or, for unclipped noise, the mean at most
        ``NOISY_MEAN`` and the maximum at most ``NOISY_MAX``; give it for noisier 0-1 images).

        The batch runs in chunks of about ``max_pixels`` pixels (at least one image); by
        default ``PREDICT_BYTES`` over the bytes of one computed number (2**17 pixels in
        float32, 2**18 in bfloat16) on the CPU, ``PREDICT_TILE``**2 on a GPU (1,000 images
        of 32 x 32 took 22.9 ms in chunks of 2**17 pixels on an H200, against 4.1 ms for the
        bare network on all of them: each chunk pays the kernel launches again). An image
        of more than ``PREDICT_TILE``**2 pixels runs in overlapping tiles of that size
        (:func:`n2nfunc.denoise_image`), which bounds the memory and gives the untiled result
        up to rounding."""
        if max_pixels is not None:
            positive_int(max_pixels, "max_pixels", "Model.predict")
        if isinstance(test_input, Tensor) and test_input.dim() == 3 and len(test_input) == 3:
            if not test_input.numel():  # (named by the shape given, not the batch of one)
                raise ValueError(f"test_input is empty: shape {tuple(test_input.shape)}")
            return self.predict(test_input[None], max_pixels, scale)[0]  # one image
        x, scale = to_unit_range(test_input, "test_input", white_of(scale, "Model.predict"))
        self._move_to(x.device)  # the weights keep their dtype: float64 images use a copy
        self.net.eval()
        runner = self._runner(x, "test_input")
        n, _, h, w = x.shape
        if max_pixels is None:
            computed = x.dtype if runner is self.net else compute_dtype(self.config["precision"])
            per_chunk = images_per_chunk(h, w, computed, x.device.type)
        else:
            per_chunk = max(1, max_pixels // (h * w))
        multiple = 1 if self.config["network"] == "unet" else 4  # the U-Net pads itself

        def run(chunk):
            hc, wc = chunk.shape[2], chunk.shape[3]
            padded = edge_pad(chunk, -hc % multiple, -wc % multiple)
            return _inference(runner, padded)[:, :, :hc, :wc]

        if h * w > PREDICT_TILE**2:  # one large image at a time, in tiles
            fp = footprint(runner.layer) or (multiple, EXERCISE_REACH)  # the U-Net's own
            layer = Layer(_inference_only, lambda _, chunk: run(chunk), _inference_only)
            layer = with_footprint(layer, *fp)
            tile = max(PREDICT_TILE, tile_settings(layer)[0])  # deep U-Nets reach further
            outs = [tiled(layer, None, x[i : i + 1], tile) for i in range(n)]
        else:
            outs = [run(x[start : start + per_chunk]) for start in range(0, n, per_chunk)]
        out = cat(outs) if len(outs) > 1 else outs[0]  # a new tensor either way
        out = out.clamp_(0, 1)
        return (out.mul_(scale) if scale != 1.0 else out).contiguous()


def full_config(config: dict) -> dict:
    """The defaults, then the network's own defaults, then ``config``, checked: a ValueError
    names the first setting out of its kind or range."""
    network = config.get("network", DEFAULT_CONFIG["network"])
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    own, given = UNET_DEFAULTS if network == "unet" else {}, set(config)
    config = {**DEFAULT_CONFIG, **own, **config}
    if isinstance(config["widths"], (tuple, list)):  # whole numbers as ints, as every count
        config["widths"] = tuple(map(_int_if_whole, config["widths"]))
    config["depth"] = _int_if_whole(config["depth"])
    try:
        check_config(config)
        compute_dtype(config["precision"])
        if (
            network == "exercise"
            and config["upsampling"] == "nearest"
            and config["kernel"] % 2 == 0
        ):
            raise ValueError(
                f"upsampling 'nearest' needs an odd kernel (3 or 5) to keep the size, got kernel "
                f"{config['kernel']}"
                + (" (the default): give kernel=3" if "kernel" not in given else "")
            )
        if network == "unet":  # recorded as it checks them: Python ints (checkpoints store)
            arch = check_architecture(config["depth"], config["widths"])
            config["depth"], config["widths"] = arch["depth"], arch["widths"]
        else:
            config["widths"] = tuple(int(v) for v in config["widths"])
    except (TypeError, ValueError) as e:
        raise ValueError(str(e)) from None
    return config


def _check_same_pairs(parallel, x: Tensor, y: Tensor) -> None:
    """Every rank of a data-parallel epoch must hold the same pairs (each trains on its slice
    of the same global batches; a rank given a shard of its own had trained on half of it,
    unnoticed). Compared by count and by sums of a sample, in one collective: the mean over
    ranks equals each rank's own only where all are equal."""
    rows = slice(None, None, max(1, x.shape[0] // 16))  # (a copy of 16 pairs at most)

    def sample_sum(t: Tensor) -> Tensor:  # NaN and inf as numbers: data that holds them is
        return t[rows].nan_to_num(0.0, 1.0, -1.0).sum().reshape(1).to(x.dtype)  # the same

    mine = cat([x.new_full((1,), x.shape[0]), sample_sum(x), sample_sum(y)])
    mean = parallel.mean(mine)
    if not bool(((mean - mine).abs() <= 1e-5 * mine.abs() + 1e-6).all()):
        raise ValueError(
            f"Model.train_epoch: rank {parallel.rank} of {parallel.size} holds other training "
            f"pairs than the others ({x.shape[0]} pairs here, {float(mean[0]):g} on average): "
            "every rank must hold all the pairs (each trains on its slice of every batch)"
        )


def check_finite(params, source: str) -> None:
    """Refuse weights holding NaN or infinite values (a diverged run's: every prediction
    would be NaN, a denoised image black), or values that float32, in which a Model keeps its
    weights, cannot hold (1e300 in a float64 file), naming the first such parameter."""
    for path, leaf in tree.flatten(params):
        if not (isinstance(leaf, Tensor) and leaf.is_floating_point()):
            continue
        if not leaf.isfinite().all():
            raise ValueError(f"{source}: parameter {path!r} holds NaN or infinite values")
        if leaf.element_size() > 4 and not leaf.float().isfinite().all():
            raise ValueError(
                f"{source}: parameter {path!r} holds values too large for float32 "
                f"(largest magnitude {float(leaf.abs().max()):.3g})"
            )


def checkpoint_network(payload, source: str) -> tuple[dict, dict]:
    """``(architecture, {path: tensor})`` of a checkpoint tree, checked for its form."""
    if isinstance(payload, dict) and payload.get("network") == "unet":
        arch, params = checkpoint_unet(payload, source)  # this layout, or the earlier one
        channels = (arch["in_channels"], arch["out_channels"])
        if channels != (3, 3):  # (3 and 3 when not recorded)
            raise ValueError(
                f"{source} holds a U-Net of {channels[0]} input and {channels[1]} output "
                "channels; a Model denoises RGB to RGB (3 and 3)"
            )
        return {"network": "unet", "depth": arch["depth"], "widths": arch["widths"]}, dict(
            tree.flatten(params)
        )
    if not isinstance(payload, dict) or "params" not in payload or "config" not in payload:
        raise ValueError(f"{source}: not a Model checkpoint (no 'params' / 'config')")
    if not isinstance(payload["config"], dict):
        raise ValueError(f"{source}: its 'config' is not a dict")
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in payload["config"].items()}
    missing = [k for k in ARCHITECTURE if k not in config]
    if missing:
        raise ValueError(f"{source}: not a Model checkpoint (config lacks {missing})")
    if not isinstance(payload["params"], dict):
        raise ValueError(f"{source}: its 'params' is not a dict")
    check_exercise_form(config, source)
    bad = [k for k, v in payload["params"].items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{source}: parameter {bad[0]!r} is not a tensor")
    arch = {"network": "exercise", **{k: config[k] for k in ARCHITECTURE}}
    check_exercise_params(arch, payload["params"], source)
    return arch, payload["params"]


def check_exercise_form(config: dict, source: str) -> None:
    """A checkpoint of the exercise network's form (flat params beside a config) must not
    name another network in that config (a U-Net's has a form of its own)."""
    if config.get("network", "exercise") != "exercise":
        raise ValueError(
            f"{source}: its config names network {config['network']!r}, but it holds the "
            "exercise network's checkpoint form"
        )


def check_exercise_params(arch: dict, params: dict, source: str) -> None:
    """The exercise network's architecture (checked as a config is) and a file's params for
    it (paths, shapes, floating point), compared with the network formed on the meta
    device: a crafted file asking for widths 4096 costs no memory (built for real, 10-13
    GB) before it is refused. Errors name ``source``."""
    try:
        config = full_config(dict(arch))
        with device("meta"):
            build_network(config).check_state_dict(params)
    except (KeyError, ValueError, TypeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e  # no quotes
        raise ValueError(f"{source}: {message}") from None


def _bfloat16_problem(where: device) -> str | None:
    """:func:`n2nfunc.hardware.bfloat16_problem` (I/O: it reads /proc/cpuinfo); None in the
    grader's submission, which ships the compute code only."""
    try:
        from . import hardware
    except ImportError:
        return None
    return hardware.bfloat16_problem(where)
