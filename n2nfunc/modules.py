"""Class wrappers with the exercise grader's names and methods.

Each block holds state -- parameters, accumulated gradients, the pullback of its last
``forward`` (until the next one, or a ``backward(..., retain_graph=False)``) -- and
delegates every computation to the functional core:

    conv = Conv2d(3, 16, 3, stride=2, padding=1)
    y = conv.forward(x)                 # layer.vjp(params, x)
    dx = conv.backward(dy)              # pullback(dy); grads += ct_params
    for p, g in conv.param(): ...       # (parameter, gradient) pairs

Parameters are created like ``torch.nn``'s: with no ``generator`` the global RNG is used,
so ``torch.manual_seed(0); Conv2d(3, 3, 3)`` holds the weights of
``torch.manual_seed(0); torch.nn.Conv2d(3, 3, 3)``.

Blocks around a :class:`~n2nfunc.stateful.StatefulLayer` (``BatchNorm2d``, ``Dropout``, a
``Sequential`` holding one) also carry its ``state`` (running statistics), replaced after
every ``forward``, and an ``rng`` generator for dropout masks. ``train()`` / ``eval()`` set
the ``training`` flag, recursively, as in ``torch.nn``; ``state_dict()`` holds parameters
and running statistics under ``torch.nn``'s names (``"1.running_mean"``).
"""

import copy
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeGuard, TypeVar

from torch import Generator, Tensor, empty
from torch import dtype as torch_dtype

from . import optim, tree
from .base import (
    DeviceLike,
    IntPair,
    Layer,
    ScalePair,
    check_cotangent,
    flag,
    is_int,
    output_of,
    positive_int,
    pull,
    released,
)
from .combinators import NAMED, layer_error, serial
from .layers import avg_pool2d, batch_norm2d, dense, dropout, flatten, max_pool2d
from .layers.activations import (
    elu,
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    softmax,
    softplus,
    tanh,
)
from .layers.conv import conv2d, conv_transpose2d, nearest_upsample, upsample
from .losses import (
    Loss,
    binary_cross_entropy_with_logits,
    cross_entropy_with,
    huber,
    l1,
    mse,
)
from .optim import LearningRate
from .stateful import StatefulLayer, lift
from .train import described
from .unet import unet

# A forward pass keeps what its backward pass needs (inputs, im2col matrices, masks); a
# backward pass that succeeds releases it, as torch.autograd frees a graph's saved tensors,
# so a training loop holds one step's worth at a time (default network, batch 100: peak RSS
# 83 -> 75 MB). The pullback is then replaced by this marker.
_SPENT = "spent"


def _spent_pullback(name: str):
    """In place of a pullback that has run with ``release=True``: a call raises
    :class:`~n2nfunc.base.ReleasedError` (as the pullback itself would)."""

    def pullback(ct, **options):
        raise released(name)

    return pullback


# What an assignment to a fixed option (Module._fix) may have meant, said in its refusal.
_FIXED_HINTS = {
    ("Dropout", "p"): " (or call .eval() to turn dropout off)",
    ("BatchNorm2d", "momentum"): (
        " and load this one's state_dict into it (or call .eval() to use the running "
        "statistics and keep them as they are)"
    ),
    ("BatchNorm2d", "eps"): " and load this one's state_dict into it",
}

NO_FORWARD = "backward() called before forward(), or after a forward() that failed"


class Unpicklable:
    """Copied as plain Python objects are (``copy.copy``, ``copy.deepcopy``), but refused by
    ``pickle`` and so ``torch.save`` in a sentence saying what to save instead: the object
    holds the functions its layers were built as, which pickle cannot store (it had failed
    on a closure deep inside, "Can't pickle local object ...")."""

    save_instead = (
        "save its state_dict() instead (n2nfunc.save or torch.save) and load_state_dict it "
        "into a new one"
    )

    def __reduce_ex__(self, protocol):
        raise TypeError(
            f"{type(self).__name__} cannot be pickled (nor given to torch.save): it holds the "
            f"functions of its layers; {self.save_instead}"
        )

    def __copy__(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo):
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new


_M = TypeVar("_M", bound="Module")  # a block's own class, returned by train(), to(), ...


class Module(Unpicklable):
    """A stateful block around a functional :class:`~n2nfunc.base.Layer` (or
    :class:`~n2nfunc.stateful.StatefulLayer`, with its ``state`` and ``rng``)."""

    def __init_subclass__(cls, **kwargs):
        """A block's constructor errors start with the block's name: ``Linear(3, 0)`` says
        ``Linear: dense(out_features=0, ...): ...``, not only the functional layer's words."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        def checked_init(self, *args, **kw):
            try:
                init(self, *args, **kw)
            except (ValueError, TypeError) as e:
                name = type(self).__name__
                if type(e) not in (ValueError, TypeError) or str(e).startswith(name):
                    raise
                raise type(e)(f"{name}: {e}").with_traceback(e.__traceback__) from None

        checked_init.__doc__, checked_init.__wrapped__ = init.__doc__, init
        cls.__init__ = checked_init

    def __init__(
        self,
        layer: Layer | StatefulLayer,
        params: dict,
        name: str | None = None,
        state: dict | None = None,
        rng: Generator | None = None,
    ):
        if not isinstance(layer, (Layer, StatefulLayer)):
            raise TypeError(f"Module: expected a Layer, got {described(layer)}")
        if name is not None and not isinstance(name, str):
            raise TypeError(
                f"Module: name must be a str, got {type(name).__name__} (a stateful layer's "
                "state goes by keyword: Module(layer, params, state=state))"
            )
        self.layer = layer
        self.params = params
        self.state = {} if state is None else state
        self.rng = rng
        self.training = True
        self.grads = tree.zeros_like(params)
        self.name = name or type(self).__name__
        self._pullback: Any = None  # the last forward's pullback, None or _SPENT

    def _fix(self, **options) -> None:
        """Keep torch.nn's constructor ``options`` of this block as attributes that read as
        torch's do (``conv.stride``, ``dropout.p``) and refuse an assignment: the layer was
        built from them, so a new value would be ignored, silently."""
        self.__dict__.setdefault("_fixed", {}).update(options)

    def __getattr__(self, key):  # (only for names that are not attributes)
        fixed = self.__dict__.get("_fixed", {})
        if key in fixed:
            return fixed[key]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    def __setattr__(self, key, value):
        fixed = self.__dict__.get("_fixed", {})
        if key in fixed and not _same(value, fixed[key]):  # (the same value: as it is)
            kind = next(c.__name__ for c in type(self).__mro__ if c.__module__ == __name__)
            raise AttributeError(
                f"{self.name}: {key} is fixed when the block is built ({key}={fixed[key]!r}); "
                f"build a new {kind} with {key}={value!r}{_FIXED_HINTS.get((kind, key), '')}"
            )
        if key not in fixed:
            super().__setattr__(key, value)

    @classmethod
    def from_layer(
        cls,
        layer: Layer | StatefulLayer,
        in_shape,
        generator: Generator | None = None,
        name: str | None = None,
        rng: Generator | None = None,
    ) -> "Module":
        """Wrap any functional layer, initialising its params (and state) for ``in_shape``;
        ``rng`` feeds a stateful layer's randomness (dropout) in training mode."""
        _, params, state = lift(layer).init(generator, in_shape)
        return Module(layer, params, name, state, rng)

    def forward(self, *inputs: Any) -> Any:
        x = tree.detach(inputs[0] if len(inputs) == 1 else inputs)
        self._pullback = None  # a forward that fails leaves nothing to differentiate
        if isinstance(self.layer, StatefulLayer):
            y, new_state, self._pullback = self.layer.vjp(
                tree.detach(self.params), self.state, x, train=self.training, rng=self.rng
            )
            _assign(self.state, new_state)
        else:
            y, self._pullback = self.layer.vjp(tree.detach(self.params), x)
        return y

    def train(self: _M, mode: bool = True) -> _M:
        """Set training mode (``False``: evaluation) here and in every sub-block; returns self."""
        if not isinstance(mode, bool):
            raise ValueError(f"{self.name}.train: mode must be a bool, got {mode!r}")
        self.training = mode
        for child in self.children():
            child.train(mode)
        return self

    def eval(self: _M) -> _M:
        """``train(False)``."""
        return self.train(False)

    def named_children(self) -> list[tuple[str, "Module"]]:
        """The direct sub-blocks with their names: the blocks held in attributes (as
        ``torch.nn.Module`` registers them), e.g. ``self.inner = Linear(3, 3)`` of a block
        of your own; none for a library block."""
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Module)]

    def children(self) -> list["Module"]:
        """The direct sub-blocks (:meth:`named_children`)."""
        return [m for _, m in self.named_children()]

    def modules(self) -> Iterator["Module"]:
        """This block, then every block inside it, each once (as ``torch.nn.Module``'s)."""
        seen: set = set()
        todo = [self]
        while todo:
            m = todo.pop(0)
            if id(m) not in seen:
                seen.add(id(m))
                yield m
                todo[:0] = m.children()

    def __call__(self, *inputs: Any) -> Any:
        return self.forward(*inputs)

    def backward(
        self, *grad_wrt_output: Any, input_grad: bool = True, retain_graph: bool = True
    ) -> Any:
        """Accumulate the parameter gradients of the last ``forward`` and return the gradient
        wrt its input (``None`` with ``input_grad=False``, which may skip that work).

        What that forward kept stays until the next ``forward``, so a second backward (another
        output gradient, say) adds its parameter gradients again, as a hand-written block that
        keeps its input does. ``retain_graph=False`` (torch.autograd's default) releases it
        as the backward pass goes, each block's as soon as it has run -- a lower peak of
        memory in a training loop (``Model.train`` does so) -- and a second backward then
        needs a new forward."""
        release = not flag(retain_graph, "retain_graph", f"{self.name}.backward")
        input_grad = flag(input_grad, "input_grad", f"{self.name}.backward")
        self._check_backward()
        if not grad_wrt_output:
            raise TypeError(
                f"{type(self).__name__}.backward() needs the gradient wrt the output of its "
                "forward (a loss block's backward() gives it)"
            )
        ct = tree.detach(grad_wrt_output[0] if len(grad_wrt_output) == 1 else grad_wrt_output)
        # a call that fails on a bad cotangent may be retried; one that failed partway has
        # released part of the network, and its pullback then says so (ReleasedError)
        ct_x = self._pull(self._pullback, ct, input_grad, release)
        if release:
            self._pullback = _SPENT
        return ct_x

    def _pull(self, pullback, ct, input_grad: bool, release: bool):
        """Run ``pullback`` (one of this block's forward passes), add its parameter
        gradients to ``grads``, return the input gradient."""
        ct_params, ct_x = pull(self.layer.vjp, pullback, ct, input_grad, release)
        tree.add_(self.grads, ct_params)
        return ct_x

    def _check_backward(self) -> None:
        if self._pullback is None:
            raise ValueError(f"{self.name}: {NO_FORWARD}")
        if self._pullback is _SPENT:
            raise ValueError(
                f"{self.name}: backward() called twice after one forward(); the first, with "
                "retain_graph=False, released what forward() kept: run forward() again"
            )

    def param(self) -> list[tuple[Tensor, Tensor]]:
        """``(parameter, gradient)`` pairs, in ``state_dict`` order: this block's, then its
        sub-blocks' (:meth:`children`), each pair once."""
        own = zip(tree.leaves(self.params), tree.leaves(self.grads))
        return _each_once([*own, *(pg for child in self.children() for pg in child.param())])

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Fill the gradients with zeros. ``set_to_none`` is taken for torch's signature; the
        gradients stay tensors either way (``param()``'s pairs are kept by optimizers)."""
        flag(set_to_none, "set_to_none", f"{self.name}.zero_grad")
        tree.zero_([g for _, g in self.param()])  # (a block's own param() included)

    def state_dict(self) -> dict:
        """``{path: tensor}``: the parameters, then the state (running statistics), paths as
        in the functional trees (``"0.weight"``, ``"1.running_mean"``), then each sub-block's
        entries under its name (``"inner.weight"``)."""
        own = dict(tree.flatten(self.params) + tree.flatten(self.state))
        for name, child in self.named_children():
            own.update({f"{name}.{k}": v for k, v in child.state_dict().items()})
        return own

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> "IncompatibleKeys":
        """Copy parameters and state in place (optimizers keep their references); keys and
        shapes must match, and a floating-point entry must be given as one (an integer or
        complex tensor would be cast, its fractions or imaginary part dropped). With
        ``strict=False`` the keys present in both are copied (their shapes still checked).
        Returns the missing and unexpected keys, as torch does."""
        given, own = dict(state_dict), self.state_dict()
        keys = self.check_state_dict(given, strict)
        for path, p in own.items():
            if path in given:
                p.copy_(given[path].detach())  # (a requires-grad source: no autograd graph)
        return keys

    def check_state_dict(self, state_dict: dict, strict: bool = True) -> "IncompatibleKeys":
        """Raise as :meth:`load_state_dict` would, copying nothing (on a Module formed on the
        meta device, it checks a file's tensors against a network that takes no memory)."""
        given, own = dict(state_dict), self.state_dict()
        missing = [k for k in own if k not in given]
        unexpected = [k for k in given if k not in own]
        if flag(strict, "strict", f"{self.name}.load_state_dict") and (missing or unexpected):
            raise StateDictKeyError(
                f"{self.name}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
            )
        for path, p in own.items():
            if path not in given:
                continue
            v = given[path]
            if not isinstance(v, Tensor) or v.shape != p.shape:
                got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise StateDictValueError(
                    f"{self.name}.load_state_dict: '{path}' has shape {got}, "
                    f"expected {tuple(p.shape)}"
                )
            if p.is_floating_point() and not v.is_floating_point():  # cast, fractions lost
                raise StateDictValueError(
                    f"{self.name}.load_state_dict: '{path}' is {v.dtype}, expected a "
                    "floating-point tensor"
                )
        return IncompatibleKeys(missing, unexpected)

    def to(self: _M, *args: Any, **kwargs: Any) -> _M:
        """Move parameters, gradients and state, each tensor in place as ``torch.nn.Module.to``
        does (so an optimizer or a ``param()`` list made before keeps working; integer state
        such as ``num_batches_tracked`` keeps its dtype); returns self. Takes torch's forms:
        ``to(device)``, ``to(dtype)``, ``to(device, dtype)``, ``to(tensor)``, keywords; the
        dtype a floating-point one."""
        device, dtype = _to_args(self.name, args, kwargs)

        def move(t):
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        for d in (self.params, self.grads, self.state):
            _move_in_place(d, move)
        for child in self.children():  # (a Sequential's: its params are theirs, moved already)
            child.to(device, dtype)
        return self

    def double(self: _M) -> _M:
        return self.to(dtype=_FLOAT64)

    def float(self: _M) -> _M:
        return self.to(dtype=_FLOAT32)

    def cpu(self: _M) -> _M:
        return self.to("cpu")

    def cuda(self: _M, device: DeviceLike = None) -> _M:
        return self.to("cuda" if device is None else device)

    def __repr__(self):
        return f"{self.name}({self.layer_description()})" if self.layer_description() else self.name

    def layer_description(self) -> str:
        return ""


_FLOAT32, _FLOAT64 = empty(0).float().dtype, empty(0).double().dtype


def _each_once(pairs: list) -> list:
    """``(parameter, gradient)`` pairs in order, each pair only at its first place."""
    return list({(id(p), id(g)): (p, g) for p, g in pairs}.values())


class StateDictKeyError(KeyError, RuntimeError):
    """Missing or unexpected keys of ``load_state_dict`` (a RuntimeError too, as torch's)."""


class StateDictValueError(ValueError, RuntimeError):
    """An entry of ``load_state_dict`` of the wrong shape or kind (a RuntimeError too, as
    torch's)."""


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` found missing in, and unexpected in, the dict it was given."""

    missing_keys: list
    unexpected_keys: list


def _to_args(name: str, args: tuple, kwargs: dict):
    """``(device, dtype)`` of ``torch.nn.Module.to``'s arguments."""
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    kwargs.pop("non_blocking", None)
    kwargs.pop("memory_format", None)  # (the layers take any layout of their weights)
    if kwargs or len(args) > 3:
        raise TypeError(f"{name}.to: unexpected arguments {list(kwargs) or args}")
    for a in args:
        if a is None or isinstance(a, bool):  # (a bool: torch's positional non_blocking)
            continue
        if isinstance(a, torch_dtype):
            dtype = a
        elif isinstance(a, Tensor):
            device, dtype = a.device, a.dtype
        else:
            device = a
    if dtype is not None and not (isinstance(dtype, torch_dtype) and dtype.is_floating_point):
        raise TypeError(f"{name}.to: the dtype must be a floating-point one, got {dtype!r}")
    return device, dtype


def _assign(d: dict, new: dict) -> None:
    """Put the leaves of ``new`` into the nested dict ``d``, keeping ``d``'s dict objects (a
    ``Sequential``'s state shares its blocks' dicts) and, where they match, its tensors: a
    running mean is updated in place, as torch.nn's buffers are."""
    for k, v in new.items():
        old = d.get(k)
        if isinstance(v, dict) and isinstance(old, dict):
            _assign(old, v)
        elif _same_kind(old, v):
            if old is not v:
                old.copy_(v)
        else:
            d[k] = v


def _move_in_place(d: dict, move) -> None:
    """Replace each tensor of the nested dict ``d`` by ``move(tensor)`` in place (its
    ``.data``), so references stay valid; where torch cannot swap the data (the meta device,
    some backends) the dict entry is replaced, as torch.nn does then."""
    for k, v in d.items():
        if isinstance(v, dict):
            _move_in_place(v, move)
            continue
        new = move(v)
        try:
            v.data = new
        except RuntimeError:
            d[k] = new


def _same_kind(a, b) -> TypeGuard[Tensor]:
    """Two tensors of one shape, dtype and device (``a`` may then take ``b``'s values)."""
    return (
        isinstance(a, Tensor)
        and isinstance(b, Tensor)
        and (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device)
    )


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
            raise ValueError(f"{self.name}: was built with bias=False, so it has no {key}")
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

    weight = property(lambda self: self.params["weight"], lambda self, v: self._set("weight", v))
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


def _same(value, fixed) -> bool:
    """Whether assigning ``value`` to a fixed option leaves it as it is (``2`` for a
    convolution's stride ``(2, 2)`` too)."""
    try:
        return bool(value == fixed) or (isinstance(fixed, tuple) and _as_pair(value) == fixed)
    except Exception:  # noqa: BLE001 -- a value that cannot be compared is another value
        return False


def _as_pair(value):
    """An int as torch.nn's convolutions keep it, ``(v, v)``; a list as a tuple; else as it is."""
    if is_int(value):
        return (int(value), int(value))
    return tuple(value) if isinstance(value, list) else value


def _options(**kw):
    return ", ".join(f"{k}={v}" for k, v in kw.items())


def _unless_default(dilation, bias) -> dict:
    """The options torch.nn's repr shows only when they differ from their defaults."""
    return {
        k: v for k, v, default in (("dilation", dilation, 1), ("bias", bias, True)) if v != default
    }


def _checked_flags(name: str, bias, groups=1, padding_mode="zeros") -> bool:
    """torch.nn's positional order is kept, so a misplaced argument must not pass quietly:
    ``bias`` is True or False (or 1, 0, a NumPy bool, as torch takes), ``groups`` (not
    supported) is 1, ``padding_mode`` is ``"zeros"``. Returns ``bias`` as a bool."""
    bias = flag(bias, "bias", name)
    if groups != 1 or isinstance(groups, bool):
        raise ValueError(f"{name}: groups={groups!r} is not supported (only 1)")
    if padding_mode != "zeros":
        raise ValueError(f"{name}: padding_mode={padding_mode!r} is not supported (only 'zeros')")
    return bias


class Conv2d(_WeightBias):
    """``torch.nn.Conv2d``-like block, arguments in its order (``groups`` must be 1);
    ``weight`` [out, in, kh, kw], ``bias`` [out]."""

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
        bias = _checked_flags("Conv2d", bias, groups, padding_mode)
        layer = conv2d(out_channels, kernel_size, stride, padding, dilation, bias)
        self._fix_conv(in_channels, out_channels, kernel_size, stride, padding, dilation)
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
            ),
            device=device,
            dtype=dtype,
        )


class TransposeConv2d(_WeightBias):
    """``torch.nn.ConvTranspose2d``-like block, arguments in its order (``groups`` must be 1);
    ``weight`` [in, out, kh, kw], ``bias`` [out]."""

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
        bias = _checked_flags("TransposeConv2d", bias, groups, padding_mode)
        layer = conv_transpose2d(
            out_channels, kernel_size, stride, padding, output_padding, dilation, bias
        )
        self._fix_conv(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self._fix(output_padding=_as_pair(output_padding))
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
            ),
            device=device,
            dtype=dtype,
        )


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
                **_unless_default(dilation, True),
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
        if self.size is not None:
            return f"size={self.size!r}"
        return f"scale_factor={self.scale_factor!r}"


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
    """A block without parameters around ``layer``, described by its options."""

    def __init__(self, layer: Layer, description: str = ""):
        super().__init__(layer, {})
        self._description = description

    def layer_description(self) -> str:
        return self._description


class Flatten(_Parameterless):
    """``torch.nn.Flatten()``: (N, C, H, W) -> (N, C*H*W) in PyTorch's order; ``start_dim``
    and ``end_dim`` only at torch's defaults (1 and -1)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        _only_defaults("Flatten", start_dim=(start_dim, 1), end_dim=(end_dim, -1))
        super().__init__(flatten())


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
        super().__init__(leaky_relu(negative_slope), _options(negative_slope=negative_slope))
        self._fix(negative_slope=negative_slope)


class Tanh(_Parameterless):
    """``torch.nn.Tanh()``."""

    def __init__(self) -> None:
        super().__init__(tanh())


class GELU(_Parameterless):
    """The exact (erf) GELU; ``approximate="tanh"`` is not provided."""

    def __init__(self, approximate: str = "none"):
        if approximate != "none":
            raise ValueError(f"GELU: only approximate='none' is provided, got {approximate!r}")
        super().__init__(gelu())


class ELU(_Parameterless):
    """``torch.nn.ELU(alpha=1.0)``: ``x`` where ``x > 0``, else ``alpha (exp(x) - 1)``."""

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        _only_defaults("ELU", inplace=(inplace, False))
        super().__init__(elu(alpha), _options(alpha=alpha))
        self._fix(alpha=alpha)


class Softplus(_Parameterless):
    """``torch.nn.Softplus(beta=1.0, threshold=20.0)``: ``log(1 + exp(beta x)) / beta``, and
    ``x`` itself where ``beta x > threshold``."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__(softplus(beta, threshold), _options(beta=beta, threshold=threshold))
        self._fix(beta=beta, threshold=threshold)


class LogSoftmax(_Parameterless):
    """``torch.nn.LogSoftmax(dim)``."""

    def __init__(self, dim: int):
        super().__init__(log_softmax(dim), _options(dim=dim))
        self._fix(dim=dim)


class Softmax(_Parameterless):
    """``torch.nn.Softmax(dim)``."""

    def __init__(self, dim: int):
        super().__init__(softmax(dim), _options(dim=dim))
        self._fix(dim=dim)


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
        layer = batch_norm2d(eps, momentum)
        self._fix(num_features=num_features, eps=eps, momentum=momentum)
        description = _options(num_features=num_features, eps=eps, momentum=momentum)
        super().__init__(
            layer, num_features, None, description, size="num_features", device=device, dtype=dtype
        )

    running_mean = property(lambda self: self.state["running_mean"])
    running_var = property(lambda self: self.state["running_var"])
    num_batches_tracked = property(lambda self: self.state["num_batches_tracked"])


class Dropout(Module):
    """``torch.nn.Dropout``-like block. Its masks are drawn from the generator ``rng``: with
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


def _backward_options(block: Module, input_grad: bool, release: bool) -> dict:
    """The options of a releasing or input-gradient-free backward pass that ``block``'s own
    ``backward`` takes: one written as the course's ``backward(*grad)`` gets neither, one
    written before ``retain_graph``, ``backward(g, input_grad)``, keeps what it kept."""
    params = inspect.signature(block.backward).parameters.values()

    def takes(name: str) -> bool:
        return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)

    options = {"input_grad": input_grad} if takes("input_grad") else {}
    return {**options, "retain_graph": False} if release and takes("retain_graph") else options


class Sequential(Module):
    """Runs its blocks in order; ``backward`` runs them in reverse. Its functional twin is
    ``serial`` of the blocks' layers, with params ``{"0": block0.params, ...}`` (shared)."""

    def __init__(self, *modules: Module):
        layers = (Layer, StatefulLayer)
        first = modules[0] if len(modules) == 1 else None
        if isinstance(first, (list, tuple)) and not isinstance(first, layers):  # (named tuples)
            modules = tuple(first)
        for i, m in enumerate(modules):
            if isinstance(m, layers):
                raise TypeError(
                    f"Sequential: block {i} is a functional {type(m).__name__}, not a Module: "
                    "wrap it with Module.from_layer(layer, in_shape), or use serial(...) "
                    "for a functional network"
                )
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: block {i} is a {type(m).__name__}, not a Module")
        self.blocks = list(modules)
        super().__init__(
            serial(*(m.layer for m in modules)),
            {str(i): m.params for i, m in enumerate(modules)},
            state={str(i): m.state for i, m in enumerate(modules)},
        )
        self.grads = {str(i): m.grads for i, m in enumerate(modules)}

    def forward(self, *inputs: Any) -> Any:
        """Run the blocks in order, keeping each one's pullback of *this* call, so that
        ``backward`` differentiates this forward pass even if a block runs again meanwhile
        (a probe of an intermediate output, a block shared with another Sequential, the
        same block twice in this one), as torch.autograd keeps one graph per call."""
        x = inputs[0] if len(inputs) == 1 else inputs
        pullbacks, self._pullback = [], None
        for i, m in enumerate(self.blocks):
            try:
                x = m.forward(x)
            except NAMED as e:  # named by its position
                raise layer_error(str(i), e).with_traceback(e.__traceback__) from e.__cause__
            pullbacks.append(m._pullback)
        self._pullback = pullbacks
        self._out = output_of(x) if isinstance(x, Tensor) else None
        return x

    def backward(
        self, *grad_wrt_output: Any, input_grad: bool = True, retain_graph: bool = True
    ) -> Any:
        """As :meth:`Module.backward`, the output gradient checked against this Sequential's
        output first (else a wrong one was blamed on its last block)."""
        self._check_backward()
        if len(grad_wrt_output) == 1 and self._out is not None:
            grad_wrt_output = (check_cotangent(grad_wrt_output[0], self._out, "Sequential"),)
        return super().backward(*grad_wrt_output, input_grad=input_grad, retain_graph=retain_graph)

    def _pull(self, pullbacks, ct, input_grad: bool, release: bool):
        """The blocks' pullbacks in reverse; with ``release``, each dropped once it has run,
        and with it what its forward pass kept (a layer without a release of its own, as an
        activation, kept its output to the end of the whole backward pass: default network,
        float32, batch 100, peak of live tensors 39.1 -> 32.9 MB)."""
        for i in reversed(range(len(self.blocks))):
            m, wanted = self.blocks[i], input_grad or i > 0
            try:
                if type(m).backward not in (Module.backward, Sequential.backward):
                    # a block with a backward of its own, which knows its last forward only
                    ct = m.backward(ct, **_backward_options(m, wanted, release))
                    continue
                # a Sequential inside runs the pullbacks of the forward pass this one made,
                # not those of its own last forward (a probe since, a block used twice)
                ct = m._pull(pullbacks[i], ct, wanted, release)
            except NAMED as e:  # named by its position
                raise layer_error(str(i), e).with_traceback(e.__traceback__) from e.__cause__
            if release:
                if m._pullback is pullbacks[i]:  # the block's own last forward: now spent
                    m._pullback = _SPENT
                if not isinstance(pullbacks[i], list):  # (a Sequential's: spent one by one)
                    pullbacks[i] = _spent_pullback(f"Sequential block {i}")
        return ct

    def param(self) -> list[tuple[Tensor, Tensor]]:
        """The blocks' ``param()`` pairs in order (a block of your own with a ``param()`` of
        its own too), each pair once: a block used twice is stepped once, as torch's
        ``parameters()`` lists it once (weights tied by assignment keep a pair per block,
        whose gradients torch would add up in one ``.grad``)."""
        return _each_once([pg for m in self.blocks for pg in m.param()])

    def named_children(self) -> list[tuple[str, Module]]:
        return [(str(i), m) for i, m in enumerate(self.blocks)]

    def state_dict(self) -> dict:
        """The blocks' state dicts, in order, keys prefixed with the block index (as
        ``torch.nn.Sequential``'s)."""
        return {f"{i}.{k}": v for i, m in enumerate(self.blocks) for k, v in m.state_dict().items()}

    def __getitem__(self, i):
        """Block ``i``; a slice is a ``Sequential`` of those blocks (shared), as torch's."""
        if isinstance(i, slice):
            return Sequential(*self.blocks[i])
        try:  # an int, a NumPy one or an integer tensor, as torch's (operator.index)
            k = i.__index__()
        except (AttributeError, TypeError, RuntimeError):
            k = None
        if k is None or isinstance(i, bool) or not -len(self.blocks) <= k < len(self.blocks):
            raise IndexError(f"Sequential: no block {i!r} among {len(self.blocks)}")
        return self.blocks[k]

    def __len__(self):
        return len(self.blocks)

    def __repr__(self):
        inner = ",\n".join(repr(m) for m in self.blocks).replace("\n", "\n  ")
        return f"Sequential(\n  {inner}\n)"


class LossModule(Unpicklable):
    """A loss as a block: ``forward(pred, target)`` returns the value, ``backward()`` its
    gradient wrt ``pred``. The value is the mean over elements: ``reduction`` (a keyword,
    as torch.nn's losses take) can only be ``"mean"``."""

    save_instead = "a loss holds no state: build a new one"

    def __init__(self, loss: Loss, name: str, reduction: str = "mean"):
        if reduction != "mean":
            raise ValueError(f"{name}: reduction={reduction!r} is not supported (only 'mean')")
        self.loss, self.name = loss, name
        self._grad: Tensor | None = None

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        self._grad = None  # a forward that fails leaves nothing to differentiate
        value, self._grad = self.loss.value_and_grad(*tree.detach((pred, target)))
        return value

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.forward(pred, target)

    def backward(self) -> Tensor:
        if self._grad is None:
            raise ValueError(f"{self.name}: {NO_FORWARD}")
        return self._grad

    def param(self) -> list:
        return []

    def __repr__(self):
        return f"{self.name}()"


class MSE(LossModule):
    """Mean squared error, ``mean((pred - target)^2)``."""

    def __init__(self, *, reduction: str = "mean"):
        super().__init__(mse, "MSE", reduction)


class L1Loss(LossModule):
    """Mean absolute error, ``mean|pred - target|``."""

    def __init__(self, *, reduction: str = "mean"):
        super().__init__(l1, "L1Loss", reduction)


class HuberLoss(LossModule):
    """``torch.nn.HuberLoss(reduction="mean", delta=1.0)``, arguments in its order."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0):
        super().__init__(huber(delta), "HuberLoss", reduction)


class BCEWithLogitsLoss(LossModule):
    """``torch.nn.BCEWithLogitsLoss()``: ``forward(logits, target_probabilities)``; torch's
    ``weight`` and ``pos_weight`` only at their default, None."""

    def __init__(self, weight: None = None, *, reduction: str = "mean", pos_weight: None = None):
        _only_defaults("BCEWithLogitsLoss", weight=(weight, None), pos_weight=(pos_weight, None))
        super().__init__(binary_cross_entropy_with_logits, "BCEWithLogitsLoss", reduction)


class CrossEntropyLoss(LossModule):
    """``torch.nn.CrossEntropyLoss(label_smoothing=0.0)``: ``forward(logits, labels)`` with
    logits (N, K) and integer labels (N,); ``backward()`` is the gradient wrt the logits.
    Class weights (torch's first argument, ``weight``) are not supported: only None; nor is
    ``ignore_index`` other than torch's default (-100, which no valid label is)."""

    def __init__(
        self,
        weight: None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ):
        _only_defaults("CrossEntropyLoss", ignore_index=(ignore_index, -100))
        if weight is not None:
            raise TypeError(
                "CrossEntropyLoss: class weights (weight) are not supported; "
                "label smoothing is the keyword label_smoothing"
            )
        super().__init__(cross_entropy_with(label_smoothing), "CrossEntropyLoss", reduction)


ParamPairs = Module | Iterable[tuple[Tensor, Tensor]]  # a block, or its param() pairs


class Optimizer(Unpicklable):
    """Applies a functional optimizer in place to ``(parameter, gradient)`` pairs.

    ``lr`` (a number or a schedule ``step -> lr``) is read at every step, so it may be
    changed between steps. A parameter listed twice is updated once, as ``torch.optim`` does
    with ``parameters()``: with the sum of its distinct gradient tensors (one for a block used
    twice in a ``Sequential``; two for weights tied by assignment, ``dec.weight =
    enc.weight``, each block keeping its own gradient, which torch would accumulate).

    ``zero_grad`` fills the gradients with zeros, as torch's ``zero_grad(set_to_none=False)``
    and optax do: every parameter moves at every ``step``, so one that got no gradient since
    (an unused branch, a network that trains in turns with another under the same optimizer)
    still gets its weight decay, momentum and Adam step, where torch's default (gradients set
    to None) skips it. Give such networks an optimizer each.

    As in torch: ``param_groups`` (one group; its ``"lr"`` may be set, the other
    hyperparameters are read-only), and ``state_dict()`` / ``load_state_dict()`` (the state
    tree and a fixed ``lr``; :func:`n2nfunc.save` stores the dict). The parameters are updated
    in place through detached views, so ``nn.Parameter`` objects are stepped as
    ``torch.optim`` steps them, under no grad.
    """

    save_instead = "save its state_dict() with n2nfunc.save instead and load_state_dict it"

    def __init__(
        self,
        params: ParamPairs,
        transformation: Callable[..., optim.GradientTransformation],
        name: str,
        lr: LearningRate,
        **hyperparameters: Any,
    ):
        """``transformation(lr, **hyperparameters)`` (:mod:`n2nfunc.optim`'s function) over
        ``params``; numeric hyperparameters are checked here, errors naming the class."""
        numbers = {
            k: v for k, v in hyperparameters.items() if not isinstance(v, (bool, tuple, list))
        }
        optim.check_hyperparameters(name, lr=lr, **numbers)
        if isinstance(params, Module):
            params = params.param()
        params = list(params)
        if any(isinstance(pg, dict) for pg in params):
            raise TypeError(
                f"{name}: takes one group of (parameter, gradient) pairs; for torch.optim's "
                "parameter groups (dicts), use the functional n2nfunc.multi_transform"
            )
        if not all(isinstance(pg, (tuple, list)) and len(pg) == 2 for pg in params):
            raise TypeError(
                f"{name}: params must be a list of (parameter, gradient) pairs "
                "as returned by Module.param()"
            )
        for i, (p, g) in enumerate(params):
            if not isinstance(p, Tensor) or not isinstance(g, Tensor) or p.shape != g.shape:
                raise ValueError(f"{name}: pair {i} must hold two tensors of equal shape")
        self.name = name
        self._make = lambda lr_: transformation(lr_, **hyperparameters)
        groups: dict = {}
        for p, g in params:
            grads = groups.setdefault(id(p), (p, {}))[1]
            grads.setdefault(id(g), g)
        self.params = [p for p, _ in groups.values()]
        self.param_groups = [ParamGroup(name, params=self.params, lr=lr, **hyperparameters)]
        self.grads = [list(grads.values()) for _, grads in groups.values()]
        self.transform = self._make(self._lr_at)
        if not params:  # after the hyperparameters, as torch.optim: a step would do nothing
            raise ValueError(f"{name}: got an empty parameter list: nothing to train")
        self.state = self.transform.init(self.params)
        self._placement = self._placement_now()

    @property
    def lr(self) -> LearningRate:
        """The learning rate (a number or a schedule ``step -> lr``): ``param_groups[0]["lr"]``."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: LearningRate) -> None:
        self.param_groups[0]["lr"] = value  # checked there

    def _lr_at(self, step):
        """The learning rate at ``step``: ``lr``, or ``lr(step)`` for a schedule (read at every
        step, so that ``lr`` may change between steps)."""
        return self.lr(step) if callable(self.lr) else self.lr

    def state_dict(self) -> dict:
        """``{"state": the optimizer state tree, "lr": the learning rate}`` (no ``"lr"`` for a
        schedule, which is code: give it to the new optimizer). References, not copies, as
        torch's; :func:`n2nfunc.save` writes it."""
        return {"state": self.state, **({} if callable(self.lr) else {"lr": self.lr})}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take a :meth:`state_dict` of an optimizer of the same kind over parameters of the
        same shapes and dtypes (copied in, on this optimizer's devices)."""
        what = f"{self.name}.load_state_dict"
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            raise ValueError(f"{what}: expected a dict with a 'state' key, as state_dict() gives")
        unexpected = sorted(set(state_dict) - {"state", "lr"})
        if unexpected:
            raise ValueError(f"{what}: unexpected keys {unexpected}")
        state = _checked_state(state_dict["state"], self.state, what)
        if "lr" in state_dict:
            try:
                self.lr = state_dict["lr"]
            except ValueError as e:
                raise ValueError(f"{what}: {e}") from None
        self.state = state

    def __copy__(self):
        new = super().__copy__()
        new.param_groups = [copy.copy(g) for g in self.param_groups]  # its own lr
        new.transform = new._make(new._lr_at)  # the copy's own lr, not the original's
        return new

    def __deepcopy__(self, memo):
        new = super().__deepcopy__(memo)
        new.transform = new._make(new._lr_at)
        return new

    def step(self) -> None:
        if self._placement_now() != self._placement:
            self._follow_params()
        grads = [sum(gs[1:], gs[0]) for gs in self.grads]
        updates, self.state = self.transform.update(grads, self.state, self.params)
        tree.add_(tree.detach(self.params), updates)  # checked by the update; no autograd

    def _placement_now(self) -> list:
        return [(p.device, p.dtype) for p in self.params]

    def _follow_params(self) -> None:
        """After ``Module.to`` (which moves the parameters in place), move the state's
        parameter-shaped tensors to each parameter's device and dtype."""

        def follow(t, p):
            return t if (t.device, t.dtype) == (p.device, p.dtype) else t.to(p.device, p.dtype)

        for key, value in self.state.items():
            if isinstance(value, list) and len(value) == len(self.params):
                self.state[key] = tree.map(follow, value, self.params)
        self._placement = self._placement_now()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Fill the gradients with zeros (see the class docstring; ``set_to_none`` is taken
        for torch's signature)."""
        flag(set_to_none, "set_to_none", f"{self.name}.zero_grad")
        tree.zero_(self.grads)

    def __repr__(self):
        group = self.param_groups[0]
        settings = ", ".join(f"{k}={v!r}" for k, v in group.items() if k != "params")
        return f"{self.name}({len(self.params)} parameters, {settings})"


def _checked_state(state, like, what: str):
    """A copy of ``state`` with each tensor on the device of ``like``'s and, where both are
    floating, of its dtype (as torch's ``load_state_dict`` casts them), if it then has
    ``like``'s structure, shapes and dtypes."""

    def placed(t, old):
        if not (isinstance(t, Tensor) and isinstance(old, Tensor)):
            return t
        dtype = old.dtype if t.is_floating_point() and old.is_floating_point() else t.dtype
        return t.to(old.device, dtype, copy=True)

    try:
        state = tree.map(placed, state, like)
    except ValueError:
        pass  # a difference of structure, said below
    tree.check_like(state, like, f"{what}: the state given", "optimizer's own state")
    return state


class ParamGroup(dict):
    """torch.optim's ``param_groups[0]``: the parameters and hyperparameters. Setting ``"lr"``
    (checked here) changes the rate of the next steps; the others are fixed at
    construction, and setting one is refused rather than ignored."""

    def __init__(self, name: str, **items):
        super().__init__(**items)
        self.name = name
        self["lr"] = items["lr"]

    def _checked(self, key, value):
        """``value`` as ``key`` takes it, or the error of setting a fixed one."""
        if key != "lr" and key in self:
            raise ValueError(
                f"{self.name}: param_groups[0][{key!r}] is fixed at construction; only 'lr' "
                "may change between steps (make a new optimizer for other values)"
            )
        if key == "lr":  # a number as a Python float (n2nfunc.save takes no NumPy scalar)
            (value,) = optim.check_hyperparameters(self.name, lr=value)
        return value

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, self._checked(key, value))

    def update(self, *args, **kwargs) -> None:
        """Set every entry or, if one is refused, none."""
        items = {k: self._checked(k, v) for k, v in dict(*args, **kwargs).items()}
        for key, value in items.items():
            super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        raise ValueError(f"{self.name}: param_groups[0][{key!r}] cannot be removed")

    def pop(self, key, *default):
        raise ValueError(f"{self.name}: param_groups[0][{key!r}] cannot be removed")

    def __ior__(self, other):  # type: ignore[misc]
        self.update(other)
        return self

    def setdefault(self, key, default=None):  # (torch's schedulers add "initial_lr" so)
        if key not in self:
            self[key] = default
        return self[key]

    def popitem(self):
        raise ValueError(f"{self.name}: param_groups[0]'s entries cannot be removed")

    def clear(self) -> None:
        raise ValueError(f"{self.name}: param_groups[0]'s entries cannot be removed")


class SGD(Optimizer):
    """``torch.optim.SGD``-like: ``SGD(model.param(), lr, momentum=0.9)``, its arguments in
    torch's order and ``lr`` 1e-3 by default as there (``nf.sgd``, optax-like, puts
    ``nesterov`` third)."""

    def __init__(
        self,
        params: ParamPairs,
        lr: LearningRate = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ):
        super().__init__(
            params,
            optim.sgd,
            "SGD",
            lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )


class Adam(Optimizer):
    """``torch.optim.Adam``-like: ``Adam(model.param(), lr=1e-3)``."""

    def __init__(
        self,
        params: ParamPairs,
        lr: LearningRate = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ):
        hyperparameters = dict(betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, optim.adam, "Adam", lr, **hyperparameters)


class AdamW(Optimizer):
    """``torch.optim.AdamW``-like: ``AdamW(model.param(), lr=1e-3, weight_decay=1e-2)``."""

    def __init__(
        self,
        params: ParamPairs,
        lr: LearningRate = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ):
        hyperparameters = dict(betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, optim.adamw, "AdamW", lr, **hyperparameters)


class RMSprop(Optimizer):
    """``torch.optim.RMSprop``-like: ``RMSprop(model.param(), lr=1e-2, momentum=0.9)``."""

    def __init__(
        self,
        params: ParamPairs,
        lr: LearningRate = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ):
        super().__init__(
            params,
            optim.rmsprop,
            "RMSprop",
            lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
        )
