"""Parameter trees: nested dicts, lists and tuples whose leaves are tensors (or numbers).

Paths join keys with dots, like a ``torch.nn.Module.state_dict``: ``{"0": {"weight": w}}``
has the single leaf ``"0.weight"``. Empty containers have no leaves.
"""

from collections.abc import Callable, Iterable
from typing import Any

Tree = Any


def map(fn: Callable, tree: Tree, *rest: Tree) -> Tree:  # noqa: A001 (mirrors jax.tree.map)
    """Apply ``fn`` leafwise over trees of the same structure, returning a tree of results."""
    if isinstance(tree, dict):
        for other in rest:
            if not isinstance(other, dict) or set(other) != set(tree):
                raise ValueError(
                    f"tree.map: keys differ: {sorted(tree)} vs "
                    f"{sorted(other) if isinstance(other, dict) else type(other).__name__}"
                )
        return {k: map(fn, tree[k], *(r[k] for r in rest)) for k in tree}
    if isinstance(tree, (list, tuple)):
        for other in rest:
            if not isinstance(other, (list, tuple)) or len(other) != len(tree):
                raise ValueError("tree.map: sequences differ in length or type")
        return type(tree)(map(fn, *items) for items in zip(tree, *rest))
    return fn(tree, *rest)


def flatten(tree: Tree, prefix: str = "") -> list[tuple[str, Any]]:
    """All leaves with their dotted paths, in insertion order."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return [(prefix, tree)]
    out = []
    for key, sub in items:
        out += flatten(sub, f"{prefix}.{key}" if prefix else str(key))
    return out


def leaves(tree: Tree) -> list:
    """The leaves, in the order of :func:`flatten`."""
    return [leaf for _, leaf in flatten(tree)]


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


def map_with_path(fn: Callable, tree: Tree, prefix: str = "") -> Tree:
    """Like :func:`map` over one tree, calling ``fn(path, leaf)``."""
    if isinstance(tree, dict):
        return {
            k: map_with_path(fn, v, f"{prefix}.{k}" if prefix else str(k)) for k, v in tree.items()
        }
    if isinstance(tree, (list, tuple)):
        return type(tree)(
            map_with_path(fn, v, f"{prefix}.{i}" if prefix else str(i)) for i, v in enumerate(tree)
        )
    return fn(prefix, tree)


def zeros_like(tree: Tree) -> Tree:
    """A tree of zero tensors shaped like ``tree``'s leaves."""
    return map(lambda t: t.new_zeros(t.shape), tree)


def add(a: Tree, b: Tree) -> Tree:
    """Leafwise ``a + b``."""
    return map(lambda x, y: x + y, a, b)


def scale(c: float, tree: Tree) -> Tree:
    """Leafwise ``c * x``."""
    return map(lambda x: x * c, tree)


def add_(a: Tree, b: Tree) -> Tree:
    """In place: every leaf of ``a`` gets ``+= `` the matching leaf of ``b``; returns ``a``."""
    map(lambda x, y: x.add_(y), a, b)
    return a


def copy_(a: Tree, b: Tree) -> Tree:
    """In place: every leaf of ``a`` is overwritten with the matching leaf of ``b``; returns
    ``a``."""
    map(lambda x, y: x.copy_(y), a, b)
    return a


def zero_(tree: Tree) -> Tree:
    """In place: every leaf is set to zero; returns ``tree``."""
    map(lambda x: x.zero_(), tree)
    return tree


def vdot(a: Tree, b: Tree) -> float:
    """``sum_leaves <a, b>`` as a Python float."""
    return sum(float((x * y).sum()) for x, y in zip(leaves(a), leaves(b)))
