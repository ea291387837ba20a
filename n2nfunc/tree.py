"""Parameter trees: nested dicts, lists and tuples whose leaves are tensors (or numbers).

Paths join keys with dots, like a ``torch.nn.Module.state_dict``: ``{"0": {"weight": w}}``
has the single leaf ``"0.weight"``. Empty containers have no leaves.
"""

import math
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, cat

Tree = Any


def map(fn: Callable, tree: Tree, *rest: Tree) -> Tree:  # noqa: A001 (mirrors jax.tree.map)
    """Apply ``fn`` leafwise over trees of the same structure, returning a tree of results.

    Dicts are matched by key, sequences by position; a difference in structure raises
    ``ValueError`` naming the path where it is."""
    try:
        if not rest:
            return _map_one(fn, tree)
        if len(rest) == 1:
            return _map_two(fn, tree, rest[0])
        return _map(fn, tree, rest)
    except _Mismatch:
        _find_mismatch((), tree, rest)  # raises, naming the path (a second walk, off the hot path)
        raise AssertionError("unreachable") from None


def map_raveled(fn: Callable, tree: Tree, *rest: Tree, outputs: int = 1, ravel=None):
    """:func:`map` for an elementwise ``fn``, called once for all leaves where that pays.

    Where every leaf is a tensor, all share one dtype and device, and ``ravel`` says so, each
    tree's leaves are joined into one flat vector (as ``jax.flatten_util.ravel_pytree``): with
    no copy where they are already views of one vector, back to back (:func:`raveled`: what
    this function returns and :func:`zeros_like` makes), else by one ``cat``. ``fn`` runs once
    on these vectors, and its results are cut back into trees shaped like ``tree`` whose
    leaves are views of them; otherwise ``fn`` runs leaf by leaf. The results are the same
    either way (paired leaves of one shape). ``ravel`` None: off the CPU, where each call of an
    operation is a kernel launch; on the CPU where no tree needs a copy, as for an optimizer
    over a :class:`~n2nfunc.modules.Sequential`'s parameters (its state and their gradients
    are each one vector: the default network's class-wrapper step at batch 32 1.01x, 2-core
    Xeon), not where a tree needs one: the copies had cost more than the calls they saved
    (joining the gradients of a functional U-Net step by a ``cat``: 0.98-0.99x; joining every
    tree, Adam over its 34 leaves 1.6 against 4.0 ms, 2-core AMD EPYC). ``fn`` returns
    ``outputs`` tensors (a tuple of them when ``outputs`` > 1), and so does this function
    (trees)."""
    aligned: list[tuple] = []
    map(lambda *xs: aligned.append(xs), tree, *rest)  # leaves paired as map pairs them
    kinds = {(x.dtype, x.device) if isinstance(x, Tensor) else None for xs in aligned for x in xs}
    kind = next(iter(kinds)) if len(kinds) == 1 else None  # (dtype, device) of every leaf
    if kind is not None and (
        ravel is False or not all(x.shape == xs[0].shape for xs in aligned for x in xs)
    ):
        kind = None  # leaf by leaf (paired leaves of other shapes: map's error)
    columns = list(zip(*aligned))
    vectors = [raveled(column) for column in columns] if kind is not None else []
    if ravel is None and kind is not None:
        ravel = kind[1].type != "cpu" or all(v is not None for v in vectors)
    if kind is not None and ravel:
        joined = [_joined(c) if v is None else v for v, c in zip(vectors, columns)]
        out = fn(*joined)
        shapes = [(xs[0].shape, _contiguous_strides(xs[0].shape)) for xs in aligned]
        results = [_cut(v, shapes) for v in (out if outputs > 1 else [out])]
    else:
        per_leaf = [fn(*xs) for xs in aligned]
        results = [list(c) for c in zip(*per_leaf)] if outputs > 1 else [per_leaf]
        results += [[]] * (outputs - len(results))  # no leaves
    trees = tuple(_refill(tree, column) for column in results)
    return trees if outputs > 1 else trees[0]


def _joined(column) -> Tensor:
    """Tensors joined into one flat vector by a copy."""
    return cat([x.reshape(-1) for x in column])


def raveled(leaves: Iterable) -> Tensor | None:
    """The flat vector of which ``leaves`` are consecutive pieces -- contiguous tensors of one
    dtype and device, back to back in one block of memory, as :func:`map_raveled` cuts its
    results and :func:`zeros_like` makes its leaves -- so that joining them takes no copy;
    None where they are not (or there are none), for leaves that require grad (the vector
    would send every gradient to the first), and for complex ones (conjugate bits). A
    view of the first leaf's memory: where the others lie past its end, ``as_strided``
    refuses and this is None too, as for tensors without memory of their own (sparse)."""
    leaves = list(leaves)
    if not leaves or not all(isinstance(x, Tensor) for x in leaves):
        return None
    first = leaves[0]
    try:
        at, size = first.data_ptr(), first.element_size()
        for x in leaves:
            if x.data_ptr() != at or not _joinable(x, first):
                return None
            at += x.numel() * size
        return first.as_strided(((at - first.data_ptr()) // size,), (1,), first.storage_offset())
    except (RuntimeError, NotImplementedError):  # no storage, or separate blocks (see above)
        return None


def _joinable(t: Tensor, first: Tensor) -> bool:
    """Whether ``t`` can be a piece of one flat vector with ``first``: its dtype and device,
    contiguous, not requiring grad (the vector would send every gradient to the first), and
    real (complex tensors' conjugate and negative bits: not worth the checks)."""
    return (
        t.dtype == first.dtype
        and t.device == first.device
        and not t.requires_grad
        and not t.is_complex()
        and t.is_contiguous()
    )


def into_one_vector_(tensors: Iterable) -> bool:
    """In place: the values of ``tensors`` moved into consecutive pieces of one new vector,
    each tensor object kept (``set_``), so that its holders see the same values and
    :func:`raveled` finds them (an optimizer's update then runs once on the vector: used for
    gradient buffers, which nothing watches). Only for contiguous, non-empty real tensors of
    one dtype and device, none requiring grad and no two sharing memory; returns whether
    they are one vector now (False: each keeps its values, some possibly moved)."""
    tensors = list(tensors)
    if raveled(tensors) is not None:
        return True
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        return False
    first, spans = tensors[0], []
    try:
        for t in tensors:
            if not t.numel() or not _joinable(t, first):
                return False
            spans.append((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()))
        spans.sort()
        if any(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:])):  # shared memory: tied
            return False
        _point_into(cat([t.reshape(-1) for t in tensors]), tensors, [t.shape for t in tensors])
    except (RuntimeError, NotImplementedError):  # no storage (sparse); set_ refused (an
        return False  # inference-mode tensor): each keeps its values
    return True


def _point_into(vector: Tensor, targets: list, shapes: list) -> None:
    """In place: each of ``targets`` set (``set_``) to its consecutive piece of the contiguous
    ``vector``, shaped as in ``shapes``: pieces sharing its memory but not views of it (no
    ``_base`` keeps the vector alive once a piece is given other memory)."""
    memory, at = vector.untyped_storage(), vector.storage_offset()
    for t, shape in zip(targets, shapes):
        t.set_(memory, at, shape, _contiguous_strides(shape))
        at += math.prod(shape)


def _cut(vector: Tensor, shapes: list) -> list:
    """``vector`` (contiguous) cut into consecutive views of the given ``(shape, strides)``
    (contiguous strides), one ``as_strided`` each."""
    vector = vector.contiguous()
    out, at = [], vector.storage_offset()
    for shape, strides in shapes:
        out.append(vector.as_strided(shape, strides, at))
        at += math.prod(shape)
    return out


def _contiguous_strides(shape) -> tuple:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _refill(tree: Tree, leaves_in_order: list) -> Tree:
    """``tree`` with its leaves replaced, in :func:`map`'s order."""
    it = iter(leaves_in_order)
    return map(lambda _: next(it), tree)


def map_with_path(fn: Callable, tree: Tree, *rest: Tree) -> Tree:
    """Like :func:`map`, calling ``fn(path, leaf, *other_leaves)`` with the dotted path."""
    _find_mismatch((), tree, rest)
    return _map_path(fn, (), tree, rest)


class _Mismatch(Exception):
    """The trees differ in structure (where is found by :func:`_find_mismatch`)."""


# map of one tree and of two, the optimizers' and the training step's usual cases, written
# out: 2-2.4x faster than the general walk below (a U-Net's tree of 34 leaves in 109
# nodes: 74 -> 32 us for one tree, 101 -> 50 us for two; 2-core Intel Xeon)


def _map_one(fn: Callable, tree: Tree) -> Tree:
    if isinstance(tree, dict):
        return {k: _map_one(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return _rebuild(tree, [_map_one(fn, v) for v in tree])
    return fn(tree)


def _map_two(fn: Callable, tree: Tree, other: Tree) -> Tree:
    if isinstance(tree, dict):
        if not isinstance(other, dict) or other.keys() != tree.keys():
            raise _Mismatch
        return {k: _map_two(fn, v, other[k]) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        if not isinstance(other, (list, tuple)) or len(other) != len(tree):
            raise _Mismatch
        return _rebuild(tree, [_map_two(fn, v, w) for v, w in zip(tree, other)])
    if isinstance(other, (dict, list, tuple)):
        raise _Mismatch
    return fn(tree, other)


def _map(fn: Callable, tree: Tree, rest: tuple) -> Tree:
    if isinstance(tree, dict):
        for other in rest:
            if not isinstance(other, dict) or other.keys() != tree.keys():
                raise _Mismatch
        return {k: _map(fn, v, tuple(r[k] for r in rest)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        for other in rest:
            if not isinstance(other, (list, tuple)) or len(other) != len(tree):
                raise _Mismatch
        return _rebuild(tree, [_map(fn, v, tuple(r[i] for r in rest)) for i, v in enumerate(tree)])
    for other in rest:
        if isinstance(other, (dict, list, tuple)):
            raise _Mismatch
    return fn(tree, *rest)


def _map_path(fn: Callable, path: tuple, tree: Tree, rest: tuple) -> Tree:
    """:func:`_map` for trees known to match, calling ``fn(dotted path, *leaves)``."""
    if isinstance(tree, dict):
        return {
            k: _map_path(fn, path + (k,), v, tuple(r[k] for r in rest)) for k, v in tree.items()
        }
    if isinstance(tree, (list, tuple)):
        return _rebuild(
            tree,
            [_map_path(fn, path + (i,), v, tuple(r[i] for r in rest)) for i, v in enumerate(tree)],
        )
    return fn(_dotted(path), tree, *rest)


def _rebuild(sequence, items: list):
    """A list or tuple (named tuples included) of ``sequence``'s type holding ``items``."""
    return type(sequence)(*items) if hasattr(sequence, "_fields") else type(sequence)(items)


def _find_mismatch(path: tuple, tree: Tree, rest: tuple) -> None:
    """Raise ``ValueError`` at the first place where ``rest`` differs from ``tree``."""
    if isinstance(tree, dict):
        for other in rest:
            if not isinstance(other, dict) or other.keys() != tree.keys():
                raise ValueError(
                    f"tree.map: {_at(path)}keys differ: {sorted(tree)} vs {_keys(other)}"
                )
        for k, v in tree.items():
            _find_mismatch(path + (k,), v, tuple(r[k] for r in rest))
    elif isinstance(tree, (list, tuple)):
        for other in rest:
            if not isinstance(other, (list, tuple)) or len(other) != len(tree):
                raise ValueError(f"tree.map: {_at(path)}{_shape_of(tree)} vs {_shape_of(other)}")
        for i, v in enumerate(tree):
            _find_mismatch(path + (i,), v, tuple(r[i] for r in rest))
    else:
        for other in rest:
            if isinstance(other, (dict, list, tuple)):
                raise ValueError(f"tree.map: {_at(path)}a leaf vs {_shape_of(other)}")


def _dotted(path: tuple) -> str:
    return ".".join(str(k) for k in path)


def _at(path: tuple) -> str:
    return f"at '{_dotted(path)}': " if path else ""


def _keys(node) -> str:
    return str(sorted(node)) if isinstance(node, dict) else _shape_of(node)


def _shape_of(node) -> str:
    """A few words on a tree node, for errors."""
    if isinstance(node, dict):
        return f"keys {sorted(node)}"
    if isinstance(node, (list, tuple)):
        return f"a {type(node).__name__} of length {len(node)}"
    return "a leaf" if node is not None else "None"


def check_like(
    tree: Tree, like: Tree, what: str, like_what: str = "parameter", device: bool = False
) -> None:
    """Raise ``ValueError`` unless ``tree`` has ``like``'s structure and each of its tensor
    leaves ``like``'s shape and dtype (no broadcasting: a gradient or update must match its
    parameter, as torch requires of ``.grad``), and with ``device`` its device too, naming
    the first leaf that differs."""

    def check(path, x, y):
        where = f"'{path}' " if path else ""
        if x is None:
            raise ValueError(f"{what}: {where}is None")
        if y is None:
            raise ValueError(f"{what}: the {like_what} {where}is None")
        if hasattr(y, "shape") and not hasattr(x, "shape"):
            raise ValueError(
                f"{what}: {where}is a {type(x).__name__}, not a tensor like the {like_what}"
            )
        if hasattr(x, "shape") and hasattr(y, "shape") and (x.shape, x.dtype) != (y.shape, y.dtype):
            raise ValueError(
                f"{what}: {where}has shape {tuple(x.shape)} and dtype {x.dtype}, but the "
                f"{like_what} has shape {tuple(y.shape)} and dtype {y.dtype}"
            )
        if device and _device(x) != _device(y):
            raise ValueError(
                f"{what}: {where}is on {_device(x)}, but the {like_what} is on {_device(y)}"
            )

    try:
        pairs: list = []
        map(lambda x, y: pairs.append((x, y)), tree, like)
        if all(_alike(x, y) and (not device or _device(x) == _device(y)) for x, y in pairs):
            return  # the usual case, without building paths
        map_with_path(check, tree, like)
    except ValueError as e:
        message = str(e)
        if message.startswith("tree.map: "):
            message = f"{what} and the {like_what}s differ in structure, " + message[10:]
        raise ValueError(message) from None


def _device(x) -> Any:
    return getattr(x, "device", None)


def _alike(x, y) -> bool:
    if x is None or y is None:
        return False
    if hasattr(x, "shape") and hasattr(y, "shape"):
        return x.shape == y.shape and x.dtype == y.dtype
    return not hasattr(y, "shape")  # a tensor's place must hold a tensor


def flatten(tree: Tree, prefix: str = "") -> list[tuple[str, Any]]:
    """All leaves with their dotted paths, in insertion order. Two leaves on one path (keys
    ``1`` and ``"1"``, or ``"a.b"`` beside ``{"a": {"b": ...}}``) are refused: a path names
    one leaf in state dicts, checkpoints and gradient checks."""
    out, seen = _flatten(tree, prefix), set()
    for path, _ in out:
        if path in seen:
            raise ValueError(f"tree: two leaves have the path {path!r}; keys must differ as text")
        seen.add(path)
    return out


def _flatten(tree: Tree, prefix: str) -> list[tuple[str, Any]]:
    items: Iterable[tuple[Any, Any]]
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return [(prefix, tree)]
    out = []
    for key, sub in items:
        out += _flatten(sub, f"{prefix}.{key}" if prefix else str(key))
    return out


def leaves(tree: Tree) -> list:
    """The leaves, in the order of :func:`flatten` (without its paths: 2.7x faster)."""
    return _leaves(tree, [])


def _leaves(tree: Tree, out: list) -> list:
    if isinstance(tree, dict):
        for sub in tree.values():
            _leaves(sub, out)
    elif isinstance(tree, (list, tuple)):
        for sub in tree:
            _leaves(sub, out)
    else:
        out.append(tree)
    return out


def unflatten(template: Tree, values: dict[str, Any], what: str = "tree") -> Tree:
    """A tree shaped like ``template`` with its leaves taken from ``values`` by path.

    Missing or unexpected paths raise ``KeyError`` naming all of them.
    """
    paths = [p for p, _ in flatten(template)]
    missing = [p for p in paths if p not in values]
    unexpected = [p for p in values if p not in set(paths)]
    if missing or unexpected:
        raise KeyError(f"{what}: missing keys {missing}, unexpected keys {unexpected}")
    return map_with_path(lambda path, _: values[path], template)


def zeros_like(tree: Tree) -> Tree:
    """A tree of zero tensors shaped like ``tree``'s leaves: where they share one dtype and
    device, consecutive pieces of one zero vector (:func:`raveled`), so that an optimizer's
    state or a block's gradients are joined for :func:`map_raveled` with no copy."""

    def check(path, t):
        if not hasattr(t, "new_zeros"):
            raise TypeError(f"tree.zeros_like: '{path}' is {type(t).__name__}, not a tensor")
        return t

    items = leaves(map_with_path(check, tree))
    if len({(t.dtype, t.device) for t in items}) != 1 or not isinstance(items[0], Tensor):
        return map(lambda t: t.new_zeros(t.shape), tree)
    vector = items[0].new_zeros(sum(t.numel() for t in items))
    pieces = [vector.new_empty(0) for _ in items]  # set_, not views: a leaf given new memory
    _point_into(vector, pieces, [t.shape for t in items])  # (Module.to) frees the old
    return _refill(tree, pieces)


def _pairwise(name: str, op: Callable, a: Tree, b: Tree) -> Tree:
    """:func:`map` of ``op`` over ``a`` and ``b`` whose paired tensor leaves must have the same
    shape: nothing is broadcast (a gradient of shape (2,) added to a (2, 2) parameter, or a
    dot product of them, is a bug, not a sum); else ``ValueError`` naming the leaf, before
    ``op`` has run on any pair (an in-place op leaves ``a`` as it was)."""
    pairs: list = []
    map(lambda x, y: pairs.append((x, y)), a, b)
    if all(x.shape == y.shape for x, y in pairs if hasattr(x, "shape") and hasattr(y, "shape")):
        return map(op, a, b)

    def named(path, x, y):
        if hasattr(x, "shape") and hasattr(y, "shape") and x.shape != y.shape:
            where = f"'{path}' " if path else ""
            raise ValueError(
                f"tree.{name}: {where}has shape {tuple(x.shape)} in the first tree and "
                f"{tuple(y.shape)} in the second; leaves must match (nothing is broadcast)"
            )

    map_with_path(named, a, b)
    raise AssertionError("unreachable")


def detach(tree: Tree) -> Tree:
    """The tree with each tensor leaf cut from torch.autograd's graph (a view, no copy; a
    tensor that does not require grad is itself, so that a pullback's watch on its input,
    :class:`n2nfunc.base.Unchanged`, is on the caller's own tensor); other leaves as they
    are. The gradients here are hand-written: with autograd on (torch's default), inputs or
    parameters that require grad (``nn.Parameter``s) would have every operation recorded
    (and max pooling's in-place routing refused), and each training step's returned
    parameters would carry that step's whole graph into the next, memory growing without
    bound. A tree with no such leaf is returned as it is (the usual case, with grad mode
    off: no walk rebuilding it)."""
    if not any(isinstance(t, Tensor) and t.requires_grad for t in leaves(tree)):
        return tree
    return map(lambda t: t.detach() if isinstance(t, Tensor) and t.requires_grad else t, tree)


def add(a: Tree, b: Tree) -> Tree:
    """Leafwise ``a + b`` (paired tensors of the same shape)."""
    return _pairwise("add", lambda x, y: x + y, a, b)


def scale(c: float, tree: Tree) -> Tree:
    """Leafwise ``c * x``."""
    return map(lambda x: x * c, tree)


def add_(a: Tree, b: Tree) -> Tree:
    """In place: every leaf of ``a`` gets ``+= `` the matching leaf of ``b`` (of its shape);
    returns ``a``. Leaf by leaf, also where the leaves are one vector: each leaf's own
    version counter moves, which a pullback's watch on a weight reads (an optimizer step
    before the backward pass)."""
    _pairwise("add_", lambda x, y: x.add_(y), a, b)
    return a


def copy_(a: Tree, b: Tree) -> Tree:
    """In place: every leaf of ``a`` is overwritten with the matching leaf of ``b`` (of its
    shape); returns ``a``."""
    _pairwise("copy_", lambda x, y: x.copy_(y), a, b)
    return a


def zero_(tree: Tree) -> Tree:
    """In place: every leaf is set to zero; returns ``tree``."""
    map(lambda x: x.zero_(), tree)
    return tree


def vdot(a: Tree, b: Tree) -> float:
    """``sum_leaves <a, b>`` as a Python float, leaves paired as by :func:`map` (each pair of
    one shape)."""
    return sum(float(d) for d in leaves(_pairwise("vdot", lambda x, y: (x * y).sum(), a, b)))
