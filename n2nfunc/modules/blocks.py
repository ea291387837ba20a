"""The named blocks, each a :class:`~n2nfunc.modules.module.Module` around one functional
layer, with ``torch.nn``'s constructor arguments in its order (those it does not provide only
at their defaults, refused by name otherwise)."""

from collections.abc import Sequence
from typing import Any

from torch import Generator, Tensor, empty
from torch import dtype as torch_dtype

from ..base import DeviceLike, IntPair, Layer, ScalePair, flag, is_int, positive_int
from ..layers import (
    avg_pool2d,
    batch_norm2d,
    bilinear_upsample,
    dense,
    dropout,
    flatten,
    global_avg_pool,
    group_norm,
    instance_norm,
    layer_norm,
    max_pool2d,
    pixel_shuffle,
    pixel_unshuffle,
)
from ..layers.activations import (
    elu,
    gelu,
    identity,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    silu,
    softmax,
    softplus,
    tanh,
)
from ..layers.conv import conv2d, conv_transpose2d
from ..layers.upsampling import nearest_upsample, upsample
from ..stateful import lift
from ..unet import unet
from .module import Module, _as_pair


class _WeightBias(Module):
    """A block whose params are ``{"weight", "bias"}``, exposed as attributes like torch.nn's."""

    def __init__(
        self,
        layer,
        in_channels,
        generator,
        description,
        in_shape=None,
        size="in_channels",
        device=None,
        dtype=None,
    ):
        name = type(self).__name__
        in_channels = positive_int(in_channels, size, name)
        if dtype is not None and not (isinstance(dtype, torch_dtype) and dtype.is_floating_point):
            raise TypeError(f"{name}: dtype must be a floating-point torch.dtype, got {dtype!r}")
        _, params, state = lift(layer).init(generator, in_shape or (-1, in_channels, -1, -1))
        super().__init__(layer, params, state=state)
        self._description = description
        if device is not None or dtype is not None:  # drawn as on the CPU in float32, then moved
            self.to(device, dtype)

    def layer_description(self) -> str:
        return self._description

    def _fix_conv(self, in_channels, out_channels, kernel_size, stride, padding, dilation):
        """A convolution's options, read as ``torch.nn.Conv2d``'s: sizes as pairs (no stride
        where it has none)."""
        self._fix(
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=_as_pair(kernel_size),
            padding=_as_pair(padding),
            dilation=_as_pair(dilation),
        )
        if stride is not None:
            self._fix(stride=_as_pair(stride))

    def _set(self, key, value):
        old = self.params.get(key)
        if old is None:
            how = "with bias=False" if self.params else "without affine params"
            raise ValueError(f"{self.name}: was built {how}, so it has no {key}")
        if not isinstance(value, Tensor) or value.shape != old.shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{self.name}: {key} must have shape {tuple(old.shape)}, got {got}")
        if (value.dtype, value.device) != (old.dtype, old.device):
            raise ValueError(
                f"{self.name}: {key} must be {old.dtype} on {old.device} like the block's other "
                f"tensors and gradients, got {value.dtype} on {value.device} (use .to() to "
                "change the whole block)"
            )
        self.params[key] = value

    weight = property(
        lambda self: self.params.get("weight"), lambda self, v: self._set("weight", v)
    )
    bias = property(lambda self: self.params.get("bias"), lambda self, v: self._set("bias", v))


def _only_defaults(name: str, **given_and_default) -> None:
    """torch.nn's arguments this block takes only at their defaults, ``option=(given,
    default)``: another value is refused by name, never ignored (``inplace=True`` would leave
    the input as it was; ``ceil_mode=True`` would give another output size)."""
    for option, (given, default) in given_and_default.items():
        if not (given is default or (default is not None and given == default)):
            raise ValueError(
                f"{name}: {option}={given!r} is not supported (only {default!r}, torch's default)"
            )


def _float_eps(eps):
    """A wrapper's ``eps`` for its functional layer, which refuses an int (a channel count in
    the functional's place): torch.nn takes ``eps=1`` as 1.0."""
    return float(eps) if is_int(eps) else eps


def _options(**kw):
    return ", ".join(f"{k}={v}" for k, v in kw.items())


def _unless_default(dilation, bias) -> dict:
    """The options torch.nn's repr shows only when they differ from their defaults."""
    return {
        k: v for k, v, default in (("dilation", dilation, 1), ("bias", bias, True)) if v != default
    }


def _checked_flags(name: str, bias, padding_mode="zeros") -> bool:
    """torch.nn's positional order is kept, so a misplaced argument must not pass quietly:
    ``bias`` is True or False (or 1, 0, a NumPy bool, as torch takes), ``padding_mode`` is
    ``"zeros"``. Returns ``bias`` as a bool."""
    bias = flag(bias, "bias", name)
    if padding_mode != "zeros":
        raise ValueError(f"{name}: padding_mode={padding_mode!r} is not supported (only 'zeros')")
    return bias


def _checked_groups(name: str, groups, in_channels, out_channels) -> int:
    """``groups`` as torch.nn takes it: a positive int that divides both channel counts."""
    groups = positive_int(groups, "groups", name)
    for size, what in ((in_channels, "in_channels"), (out_channels, "out_channels")):
        if positive_int(size, what, name) % groups:
            raise ValueError(
                f"{name}: {what} {size} do not split into groups={groups} groups of equal size"
            )
    return groups


class Conv2d(_WeightBias):
    """``torch.nn.Conv2d``-like block, arguments in its order; ``weight``
    [out, in / groups, kh, kw], ``bias`` [out]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair | str = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: DeviceLike = None,
        dtype: torch_dtype | None = None,
        *,
        generator: Generator | None = None,
    ):
        bias = _checked_flags("Conv2d", bias, padding_mode)
        groups = _checked_groups("Conv2d", groups, in_channels, out_channels)
        layer = conv2d(out_channels, kernel_size, stride, padding, dilation, bias, groups=groups)
        self._fix_conv(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self._fix(groups=groups)
        super().__init__(
            layer,
            in_channels,
            generator,
            _options(
                in_channels=in_channels,
                out_channels=out_channels,
                kernel_size=kernel_size,
                stride=stride,
                padding=padding,
                **_unless_default(dilation, bias),
                **({} if groups == 1 else {"groups": groups}),
            ),
            device=device,
            dtype=dtype,
        )


class TransposeConv2d(_WeightBias):
    """``torch.nn.ConvTranspose2d``-like block, arguments in its order;
    ``weight`` [in, out / groups, kh, kw], ``bias`` [out]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        output_padding: IntPair = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: IntPair = 1,
        padding_mode: str = "zeros",
        device: DeviceLike = None,
        dtype: torch_dtype | None = None,
        *,
        generator: Generator | None = None,
    ):
        name = type(self).__name__  # (ConvTranspose2d, torch's name, too)
        bias = _checked_flags(name, bias, padding_mode)
        groups = _checked_groups(name, groups, in_channels, out_channels)
        layer = conv_transpose2d(
            out_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
            dilation,
            bias,
            groups=groups,
        )
        self._fix_conv(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self._fix(output_padding=_as_pair(output_padding), groups=groups)
        super().__init__(
            layer,
            in_channels,
            generator,
            _options(
                in_channels=in_channels,
                out_channels=out_channels,
                kernel_size=kernel_size,
                stride=stride,
                padding=padding,
                output_padding=output_padding,
                **_unless_default(dilation, bias),
                **({} if groups == 1 else {"groups": groups}),
            ),
            device=device,
            dtype=dtype,
        )


class ConvTranspose2d(TransposeConv2d):
    """``torch.nn.ConvTranspose2d``: :class:`TransposeConv2d` (the exercise's name) under
    torch's, for code ported from torch."""


class Upsampling(_WeightBias):
    """Nearest upsampling by ``scale_factor`` then a stride-1 convolution; exposes the
    convolution's ``weight`` / ``bias``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        scale_factor: ScalePair = 2,
        padding: IntPair | str = 0,
        bias: bool = True,
        *,
        dilation: IntPair = 1,
        device: DeviceLike = None,
        dtype: torch_dtype | None = None,
        generator: Generator | None = None,
    ):
        bias = _checked_flags("Upsampling", bias)
        layer = upsample(out_channels, kernel_size, scale_factor, padding, dilation, bias=bias)
        self._fix_conv(in_channels, out_channels, kernel_size, None, padding, dilation)
        self._fix(scale_factor=scale_factor)
        super().__init__(
            layer,
            in_channels,
            generator,
            _options(
                in_channels=in_channels,
                out_channels=out_channels,
                kernel_size=kernel_size,
                scale_factor=scale_factor,
                padding=padding,
                **_unless_default(dilation, bias),
            ),
            device=device,
            dtype=dtype,
        )


class Linear(_WeightBias):
    """``torch.nn.Linear``-like block on (N, *, in_features); ``weight`` [out, in],
    ``bias`` [out]."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: DeviceLike = None,
        dtype: torch_dtype | None = None,
        *,
        generator: Generator | None = None,
    ):
        bias = _checked_flags("Linear", bias)
        self._fix(in_features=in_features, out_features=out_features)
        super().__init__(
            dense(out_features, bias),
            in_features,
            generator,
            _options(in_features=in_features, out_features=out_features, bias=bias),
            in_shape=(-1, in_features),
            size="in_features",
            device=device,
            dtype=dtype,
        )


class NearestUpsampling(Module):
    """Nearest upsampling by a whole ``scale_factor`` (2 by default), or to ``size=(H, W)``
    as ``torch.nn.UpsamplingNearest2d(size=...)`` (by keyword: the first argument here is
    the scale factor, the exercise's)."""

    def __init__(self, scale_factor: ScalePair | None = None, size: IntPair | None = None):
        super().__init__(nearest_upsample(scale_factor, size), {})
        self._fix(scale_factor=2 if scale_factor is None and size is None else scale_factor)
        self._fix(size=size)

    def layer_description(self) -> str:
        return _size_or_scale(self)


def _size_or_scale(block) -> str:
    """An upsampling block's size (when it was given) or scale factor, for its repr."""
    if block.size is not None:
        return f"size={block.size!r}"
    return f"scale_factor={block.scale_factor!r}"


class BilinearUpsampling(Module):
    """Bilinear resizing by ``scale_factor`` (2 by default) or to ``size=(H, W)``, as
    ``torch.nn.Upsample(mode="bilinear", align_corners=...)`` (by keyword: the first argument
    here is the scale factor, as :class:`NearestUpsampling`'s, where torch's is the size;
    ``align_corners=None``, torch's default, is False)."""

    def __init__(
        self,
        scale_factor: ScalePair | None = None,
        size: IntPair | None = None,
        align_corners: bool | None = False,
    ):
        align_corners = False if align_corners is None else align_corners
        super().__init__(bilinear_upsample(scale_factor, size, align_corners), {})
        self._fix(scale_factor=2 if scale_factor is None and size is None else scale_factor)
        self._fix(size=size, align_corners=align_corners)

    def layer_description(self) -> str:
        return f"{_size_or_scale(self)}, align_corners={self.align_corners!r}"


class Upsample(Module):
    """``torch.nn.Upsample(size=None, scale_factor=None, mode="nearest", align_corners=None)``,
    torch's argument order, for code ported from torch: ``mode="nearest"`` is
    :class:`NearestUpsampling` (whole factors, or a ``size``), ``mode="bilinear"``
    :class:`BilinearUpsampling`; other modes, and ``recompute_scale_factor``, are refused by
    name."""

    def __init__(
        self,
        size: IntPair | None = None,
        scale_factor: ScalePair | None = None,
        mode: str = "nearest",
        align_corners: bool | None = None,
        recompute_scale_factor: bool | None = None,
    ):
        recompute = None if recompute_scale_factor is False else recompute_scale_factor
        _only_defaults("Upsample", recompute_scale_factor=(recompute, None))
        if size is None and scale_factor is None:
            raise ValueError("Upsample: give size or scale_factor (torch's takes no default)")
        if mode == "nearest":
            if align_corners is not None:
                raise ValueError(
                    "Upsample: align_corners can only be set with mode='bilinear' (as torch's)"
                )
            layer = nearest_upsample(scale_factor, size)
        elif mode == "bilinear":
            corners = False if align_corners is None else align_corners  # (checked there)
            layer = bilinear_upsample(scale_factor, size, corners)
        else:
            raise ValueError(
                f"Upsample: mode={mode!r} is not provided (only 'nearest' and 'bilinear')"
            )
        super().__init__(layer, {})
        kept: Any = scale_factor  # as torch keeps it: floats
        if isinstance(scale_factor, (tuple, list)):
            kept = tuple(float(f) for f in scale_factor)
        elif scale_factor is not None:
            kept = float(scale_factor)
        self._fix(size=size, scale_factor=kept, mode=mode, align_corners=align_corners)
        self._fix(recompute_scale_factor=recompute_scale_factor)

    def layer_description(self) -> str:
        return f"{_size_or_scale(self)}, mode={self.mode!r}"


class ReLU(Module):
    """``torch.nn.ReLU()``: ``max(x, 0)``; its gradient is 0 at 0, as torch's."""

    def __init__(self, inplace: bool = False):
        _only_defaults("ReLU", inplace=(inplace, False))
        super().__init__(relu(), {})


class Sigmoid(Module):
    """``torch.nn.Sigmoid()``: ``1 / (1 + exp(-x))``."""

    def __init__(self) -> None:
        super().__init__(sigmoid(), {})


class _Parameterless(Module):
    """A block without parameters around ``layer``, described by its options: torch.nn's
    constructor ``options``, where given, are its description and its fixed attributes
    (:meth:`Module._fix`)."""

    def __init__(self, layer: Layer, description: str = "", **options: Any):
        super().__init__(layer, {})
        self._description = description or _options(**options)
        if options:
            self._fix(**options)

    def layer_description(self) -> str:
        return self._description


class Flatten(_Parameterless):
    """``torch.nn.Flatten()``: (N, C, H, W) -> (N, C*H*W) in PyTorch's order; ``start_dim``
    and ``end_dim`` only at torch's defaults (1 and -1)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        _only_defaults("Flatten", start_dim=(start_dim, 1), end_dim=(end_dim, -1))
        super().__init__(flatten())


class Identity(_Parameterless):
    """``torch.nn.Identity()``: its input, unchanged (torch's arguments are ignored, as
    torch ignores them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(identity())


class AdaptiveAvgPool2d(_Parameterless):
    """``torch.nn.AdaptiveAvgPool2d(1)``: (N, C, H, W) -> (N, C, 1, 1), each channel's mean
    (``global_avg_pool(keepdims=True)``); ``output_size`` only 1 (or (1, 1))."""

    def __init__(self, output_size: IntPair) -> None:
        sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
        if not all(type(v) is int and v == 1 for v in sizes) or len(sizes) not in (1, 2):
            ints = all(is_int(v) for v in sizes)  # (a float or a string: the wrong kind)
            raise (ValueError if ints else TypeError)(
                f"AdaptiveAvgPool2d: only output_size=1 is provided, got {output_size!r}"
            )
        super().__init__(global_avg_pool(keepdims=True), output_size=output_size)


class MaxPool2d(_Parameterless):
    """``torch.nn.MaxPool2d(kernel_size, stride=None, padding=0)``; torch's other arguments
    only at their defaults."""

    def __init__(
        self,
        kernel_size: IntPair,
        stride: IntPair | None = None,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ):
        _only_defaults(
            "MaxPool2d",
            dilation=(1 if _as_pair(dilation) == (1, 1) else dilation, 1),
            return_indices=(return_indices, False),
            ceil_mode=(ceil_mode, False),
        )
        super().__init__(
            max_pool2d(kernel_size, stride, padding),
            _options(kernel_size=kernel_size, stride=stride, padding=padding),
        )
        self._fix(kernel_size=kernel_size, stride=kernel_size if stride is None else stride)
        self._fix(padding=padding)


class AvgPool2d(_Parameterless):
    """``torch.nn.AvgPool2d(kernel_size, stride=None, padding=0)`` (``count_include_pad``);
    torch's other arguments only at their defaults."""

    def __init__(
        self,
        kernel_size: IntPair,
        stride: IntPair | None = None,
        padding: IntPair = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ):
        _only_defaults(
            "AvgPool2d",
            ceil_mode=(ceil_mode, False),
            count_include_pad=(count_include_pad, True),
            divisor_override=(divisor_override, None),
        )
        super().__init__(
            avg_pool2d(kernel_size, stride, padding),
            _options(kernel_size=kernel_size, stride=stride, padding=padding),
        )
        self._fix(kernel_size=kernel_size, stride=kernel_size if stride is None else stride)
        self._fix(padding=padding)


class LeakyReLU(_Parameterless):
    """``torch.nn.LeakyReLU(negative_slope=0.01)``: ``x`` where ``x > 0``, else
    ``negative_slope * x``."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        _only_defaults("LeakyReLU", inplace=(inplace, False))
        super().__init__(leaky_relu(negative_slope), negative_slope=negative_slope)


class Tanh(_Parameterless):
    """``torch.nn.Tanh()``."""

    def __init__(self) -> None:
        super().__init__(tanh())


class GELU(_Parameterless):
    """``torch.nn.GELU(approximate="none")``: the exact (erf) GELU, or with
    ``approximate="tanh"`` torch's tanh form."""

    def __init__(self, approximate: str = "none"):
        description = "" if approximate == "none" else f"approximate={approximate!r}"
        super().__init__(gelu(approximate), description)
        self._fix(approximate=approximate)


class SiLU(_Parameterless):
    """``torch.nn.SiLU()``: ``x sigmoid(x)``."""

    def __init__(self, inplace: bool = False):
        _only_defaults("SiLU", inplace=(inplace, False))
        super().__init__(silu())


class PixelShuffle(_Parameterless):
    """``torch.nn.PixelShuffle(upscale_factor)``: (N, C r^2, H, W) -> (N, C, H r, W r)."""

    def __init__(self, upscale_factor: int):
        super().__init__(pixel_shuffle(upscale_factor), upscale_factor=upscale_factor)


class PixelUnshuffle(_Parameterless):
    """``torch.nn.PixelUnshuffle(downscale_factor)``: (N, C, H r, W r) -> (N, C r^2, H, W)."""

    def __init__(self, downscale_factor: int):
        super().__init__(pixel_unshuffle(downscale_factor), downscale_factor=downscale_factor)


class ELU(_Parameterless):
    """``torch.nn.ELU(alpha=1.0)``: ``x`` where ``x > 0``, else ``alpha (exp(x) - 1)``."""

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        _only_defaults("ELU", inplace=(inplace, False))
        super().__init__(elu(alpha), alpha=alpha)


class Softplus(_Parameterless):
    """``torch.nn.Softplus(beta=1.0, threshold=20.0)``: ``log(1 + exp(beta x)) / beta``, and
    ``x`` itself where ``beta x > threshold``."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__(softplus(beta, threshold), beta=beta, threshold=threshold)


class LogSoftmax(_Parameterless):
    """``torch.nn.LogSoftmax(dim)``."""

    def __init__(self, dim: int):
        super().__init__(log_softmax(dim), dim=dim)


class Softmax(_Parameterless):
    """``torch.nn.Softmax(dim)``."""

    def __init__(self, dim: int):
        super().__init__(softmax(dim), dim=dim)


class BatchNorm2d(_WeightBias):
    """``torch.nn.BatchNorm2d``-like block: ``weight`` / ``bias`` [C] (ones / zeros), and
    ``running_mean``, ``running_var``, ``num_batches_tracked`` in its state; batch statistics
    in training mode, running statistics in evaluation mode."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: DeviceLike = None,
        dtype: torch_dtype | None = None,
    ):
        _only_defaults(
            "BatchNorm2d", affine=(affine, True), track_running_stats=(track_running_stats, True)
        )
        layer = batch_norm2d(_float_eps(eps), momentum)
        self._fix(num_features=num_features, eps=eps, momentum=momentum)
        description = _options(num_features=num_features, eps=eps, momentum=momentum)
        super().__init__(
            layer, num_features, None, description, size="num_features", device=device, dtype=dtype
        )

    running_mean = property(lambda self: self.state["running_mean"])
    running_var = property(lambda self: self.state["running_var"])
    num_batches_tracked = property(lambda self: self.state["num_batches_tracked"])


class GroupNorm(_WeightBias):
    """``torch.nn.GroupNorm``-like block: ``weight`` / ``bias`` [C] (ones / zeros; none, and
    ``weight`` / ``bias`` None, with ``affine=False``); each sample's groups of
    ``num_channels / num_groups`` channels normalised by their own statistics, the same in
    training and evaluation mode."""

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: DeviceLike = None,
        dtype: torch_dtype | None = None,
    ):
        groups = positive_int(num_groups, "num_groups", "GroupNorm")
        channels = positive_int(num_channels, "num_channels", "GroupNorm")
        layer = group_norm(num_groups, _float_eps(eps), affine, channels)
        if channels % groups:
            raise ValueError(
                f"GroupNorm: num_channels {channels} must divide into num_groups {groups} "
                "groups of equal size"
            )
        self._fix(num_groups=num_groups, num_channels=num_channels, eps=eps, affine=affine)
        description = _options(num_groups=num_groups, num_channels=num_channels, eps=eps)
        if not affine:
            description += ", affine=False"
        super().__init__(
            layer, num_channels, None, description, size="num_channels", device=device, dtype=dtype
        )


class InstanceNorm2d(_WeightBias):
    """``torch.nn.InstanceNorm2d``-like block: each sample's channel normalised over its own
    pixels; ``weight`` / ``bias`` [C] (ones / zeros) with ``affine=True``, none (and
    ``weight`` / ``bias`` None) by default, as torch's; ``track_running_stats`` only False
    (``momentum``, as in torch, then does nothing)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device: DeviceLike = None,
        dtype: torch_dtype | None = None,
    ):
        _only_defaults("InstanceNorm2d", track_running_stats=(track_running_stats, False))
        features = positive_int(num_features, "num_features", "InstanceNorm2d")
        layer = instance_norm(_float_eps(eps), affine, features)
        self._fix(num_features=num_features, eps=eps, momentum=momentum, affine=affine)
        self._fix(track_running_stats=False)
        description = _options(num_features=features, eps=eps, momentum=momentum)
        if affine:
            description += ", affine=True"
        super().__init__(
            layer, features, None, description, size="num_features", device=device, dtype=dtype
        )


class LayerNorm(_WeightBias):
    """``torch.nn.LayerNorm``-like block over the last axes of (N, *, ...) inputs:
    ``normalized_shape`` is F (or ``(F,)``), or the sizes of the last k axes (``(C, H, W)``,
    normalised together), which inputs must have; ``weight`` / ``bias`` of that shape (ones /
    zeros; none with ``elementwise_affine=False``; ``bias=False`` only then)."""

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: DeviceLike = None,
        dtype: torch_dtype | None = None,
    ):
        affine = flag(elementwise_affine, "elementwise_affine", "LayerNorm")
        if flag(bias, "bias", "LayerNorm") is False and affine:
            # torch's bias=False keeps a weight: no layer of ours has one alone
            _only_defaults("LayerNorm", bias=(bias, True))
        given = normalized_shape
        shape = tuple(given) if isinstance(given, (tuple, list)) else (given,)
        if not shape:
            raise ValueError("LayerNorm: normalized_shape must give at least one size, got ()")
        shape = tuple(positive_int(d, "normalized_shape", "LayerNorm") for d in shape)
        one = len(shape) == 1  # the last axis: the plain layer, named as such
        axes, sizes = (-1, shape[0]) if one else (tuple(range(-len(shape), 0)), shape)
        self._fix(normalized_shape=shape, eps=eps, elementwise_affine=affine)
        description = _options(normalized_shape=shape, eps=eps)
        super().__init__(
            layer_norm(axes, eps=eps, affine=affine, size=sizes),
            shape[0],
            None,
            description if affine else description + ", elementwise_affine=False",
            in_shape=(-1, *shape),
            size="normalized_shape",
            device=device,
            dtype=dtype,
        )


class Dropout(Module):
    """``torch.nn.Dropout``-like block. Its masks are drawn from its generator (the ``rng``
    attribute): with
    ``generator`` given, one of its own, seeded with one draw from ``generator`` at
    construction; without, one seeded with a draw from torch's global generator at each
    forward pass in training mode (so ``torch.manual_seed`` before a pass repeats its mask, as
    torch.nn's, and building the block, or running it in evaluation mode, leaves the global
    generator as torch.nn's does: the blocks built after it get torch's initial weights for
    the same seed).
    Arguments in torch's order: ``inplace`` may only be False (a new tensor is returned)."""

    def __init__(
        self, p: float = 0.5, inplace: bool = False, *, generator: Generator | None = None
    ):
        if isinstance(inplace, Generator):
            raise TypeError("Dropout: the generator is keyword-only: Dropout(p, generator=g)")
        _only_defaults("Dropout", inplace=(inplace, False))
        if generator is not None and not isinstance(generator, Generator):
            kind = type(generator).__name__
            raise TypeError(f"Dropout: generator must be a torch.Generator or None, got {kind}")
        layer = dropout(p)
        super().__init__(layer, {}, state={}, rng=None if generator is None else _seeded(generator))
        self._fix(p=p)

    @property
    def rng(self) -> Generator | None:
        """The masks' generator; one set here is the block's own from then on (None: a fresh
        one seeded from torch's global generator at each forward pass in training mode)."""
        return self.__dict__["_rng"]

    @rng.setter
    def rng(self, generator: Generator | None) -> None:
        if generator is not None and generator is self.__dict__.get("_rng"):
            return  # (the one it holds, given back: no change of where masks come from)
        self.__dict__.update(_rng=generator, _global_rng=generator is None)

    def forward(self, *inputs: Any) -> Any:
        if self._global_rng and self.training:
            self.__dict__["_rng"] = _seeded(None)
        return super().forward(*inputs)

    def layer_description(self) -> str:
        return f"p={self.p}"


def _seeded(generator: Generator | None) -> Generator:
    """A CPU generator seeded with one draw from ``generator`` (None: torch's global one)."""
    device = generator.device if generator is not None else None
    return Generator().manual_seed(
        int(empty((), device=device).long().random_(generator=generator))
    )


class UNet(Module):
    """The Noise2Noise U-Net (:func:`n2nfunc.unet`) as one block: ``depth`` poolings,
    ``widths = (encoder, decoder, last_a, last_b)``, ``in_channels`` to ``out_channels``; any
    H x W input (padded inside)."""

    def __init__(
        self,
        depth: int = 4,
        widths: Sequence[int] = (32, 64, 48, 24),
        in_channels: int = 3,
        out_channels: int = 3,
        *,
        generator: Generator | None = None,
    ):
        layer = unet(depth, widths, in_channels, out_channels)
        _, params = layer.init(generator, (-1, in_channels, -1, -1))
        super().__init__(layer, params)
        self._fix(depth=depth, widths=tuple(widths))
        self._fix(in_channels=in_channels, out_channels=out_channels)

    def layer_description(self) -> str:
        channels = (self.in_channels, self.out_channels)
        more = (
            "" if channels == (3, 3) else f", in_channels={channels[0]}, out_channels={channels[1]}"
        )
        return f"depth={self.depth}, widths={self.widths}{more}"
