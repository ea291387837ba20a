"""The block class behind every class wrapper: :class:`Module` holds a functional layer's
params, accumulated gradients and the pullback of its last ``forward``, and delegates every
computation to the layer (see :mod:`n2nfunc.modules`)."""

import copy
from collections.abc import Iterator
from typing import Any, NamedTuple, TypeGuard, TypeVar

from torch import Generator, Tensor
from torch import dtype as torch_dtype

from .. import tree
from ..base import FLOAT32, FLOAT64, DeviceLike, Layer, flag, is_int, pull, released
from ..stateful import StatefulLayer, lift
from ..train import described

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
            kind = next(c.__name__ for c in type(self).__mro__ if _ours(c))
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
        self._grads_into_one_vector()
        return self

    def _grads_into_one_vector(self) -> None:
        """Its gradient buffers, its blocks' included, moved into one vector
        (:func:`~n2nfunc.tree.into_one_vector_`: the same tensors and values, new memory), so
        that an optimizer's update runs once on it, and on its state, rather than once per
        tensor (a block's own buffers are one vector from the start: ``tree.zeros_like``)."""
        tree.into_one_vector_([g for _, g in self.param()])

    def double(self: _M) -> _M:
        return self.to(dtype=FLOAT64)

    def float(self: _M) -> _M:
        return self.to(dtype=FLOAT32)

    def cpu(self: _M) -> _M:
        return self.to("cpu")

    def cuda(self: _M, device: DeviceLike = None) -> _M:
        return self.to("cuda" if device is None else device)

    def __repr__(self):
        return f"{self.name}({self.layer_description()})"  # "ReLU()" too, as torch's

    def layer_description(self) -> str:
        return ""


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


def _ours(cls: type) -> bool:
    """Whether ``cls`` is one of this package's blocks (not a user's subclass of one)."""
    return cls.__module__.startswith(__name__.rpartition(".")[0] + ".")
