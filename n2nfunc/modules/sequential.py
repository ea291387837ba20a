"""``Sequential``: blocks run in order, as ``torch.nn.Sequential``, with one backward pass
through all of them."""

import inspect
from typing import Any

from torch import Tensor

from ..base import Layer, check_cotangent, output_of, public_name
from ..combinators import NAMED, layer_error, serial
from ..stateful import StatefulLayer
from .module import _SPENT, Module, _each_once, _spent_pullback


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
    ``serial`` of the blocks' layers, with params ``{"0": block0.params, ...}`` (shared).

    When made, it moves its blocks' gradient buffers into the memory of one vector (the same
    tensors and values; each block's ``param()`` pairs hold them as before), so that an
    optimizer updates all of them in one pass."""

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
            if isinstance(m, type) and issubclass(m, Module):
                raise TypeError(
                    f"Sequential: block {i} is the class {m.__name__}, not a Module: make one, "
                    f"{m.__name__}({'' if _no_arguments_needed(m) else '...'})"
                )
            if not isinstance(m, Module):
                kind = m if isinstance(m, type) else type(m)
                name = public_name(kind)
                article = "an" if name[0] in "aeiou" else "a"
                what = f"the class {name}" if m is kind else f"{article} {name}"
                torch_nn = kind.__module__.startswith("torch.nn.")
                raise TypeError(
                    f"Sequential: block {i} is {what}, not an n2nfunc Module"
                    + (" (torch.nn's modules do not mix in)" if torch_nn else "")
                )
        self.blocks = list(modules)
        super().__init__(
            serial(*(m.layer for m in modules)),
            {str(i): m.params for i, m in enumerate(modules)},
            state={str(i): m.state for i, m in enumerate(modules)},
        )
        self.grads = {str(i): m.grads for i, m in enumerate(modules)}
        self._grads_into_one_vector()

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


def _no_arguments_needed(cls) -> bool:
    """Whether ``cls()`` needs no argument (``SiLU()``, not ``Conv2d(...)``)."""
    try:
        inspect.signature(cls).bind()
    except TypeError:
        return False
    return True
