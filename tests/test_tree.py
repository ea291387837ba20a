import collections

import pytest
import torch

from n2nfunc import tree


def test_flatten_unflatten_round_trip_and_paths():
    t = {"0": {"weight": torch.ones(2), "bias": torch.zeros(1)}, "1": {}, "2": [torch.ones(3)]}
    flat = tree.flatten(t)
    assert [p for p, _ in flat] == ["0.weight", "0.bias", "2.0"]
    back = tree.unflatten(t, {p: v * 2 for p, v in flat})
    assert torch.equal(back["0"]["weight"], torch.full((2,), 2.0)) and back["1"] == {}


def test_unflatten_names_missing_and_unexpected_keys():
    with pytest.raises(KeyError, match=r"missing keys \['a.b'\], unexpected keys \['a.c'\]"):
        tree.unflatten({"a": {"b": torch.ones(1)}}, {"a.c": torch.ones(1)})


def test_map_and_in_place_helpers():
    a = {"x": torch.ones(2), "y": [torch.ones(1)]}
    b = tree.map(lambda u, v: u + v, a, a)
    assert torch.equal(b["y"][0], torch.tensor([2.0]))
    tree.add_(a, b)
    assert torch.equal(a["x"], torch.full((2,), 3.0))
    z = tree.zeros_like(a)
    assert float(z["x"].abs().sum()) == 0 and z["x"] is not a["x"]
    tree.zero_(a)
    assert tree.vdot(a, b) == 0.0
    with pytest.raises(ValueError, match="keys differ"):
        tree.map(lambda u, v: u, {"a": 1}, {"b": 1})


def test_structure_errors_name_the_path():
    a = {"decoder": {"0": {"weight": torch.ones(1), "bias": torch.ones(1)}}}
    b = {"decoder": {"0": {"weight": torch.ones(1)}}}
    with pytest.raises(ValueError, match=r"at 'decoder.0': keys differ: \['bias', 'weight'\]"):
        tree.map(lambda u, v: u, a, b)
    with pytest.raises(ValueError, match=r"at 'decoder': a leaf vs keys"):
        tree.map(lambda u, v: u, {"decoder": torch.ones(1)}, {"decoder": {"w": torch.ones(1)}})
    with pytest.raises(ValueError, match=r"at 'x': a list of length 2 vs a list of length 1"):
        tree.map(lambda u, v: u, {"x": [1, 2]}, {"x": [1]})


@pytest.mark.parametrize("trees", [1, 2, 3])
def test_map_of_one_two_or_more_trees_agree(trees):
    """map has a walk written out for one tree and for two, and the general one for more:
    the same results, containers and leaf order, and the same errors naming the path."""
    point = collections.namedtuple("point", "x y")
    a = {"b": [torch.ones(2), (3.0, point(torch.zeros(1), 2))], "a": {}, "c": None}
    seen = []
    out = tree.map(lambda *xs: seen.append(xs[0]) or xs, a, *[a] * (trees - 1))
    assert seen == tree.leaves(a) == [leaf for _, leaf in tree.flatten(a)]
    assert list(out) == ["b", "a", "c"] and out["a"] == {} and out["c"] == (None,) * trees
    assert type(out["b"][1]) is tuple and type(out["b"][1][1]) is point
    assert out["b"][1][1].y == (2,) * trees
    if trees > 1:
        other = {"b": [torch.ones(2), (3.0, [torch.zeros(1)])], "a": {}, "c": None}
        with pytest.raises(ValueError, match=r"at 'b.1.1': a point of length 2 vs a list of "):
            tree.map(lambda *xs: xs, a, *[a] * (trees - 2), other)


def test_detach_returns_the_same_tree_unless_a_leaf_requires_grad():
    w = torch.ones(2)
    t = {"w": w, "n": [3]}
    assert tree.detach(t) is t  # nothing to cut: no walk, no new containers
    p = torch.nn.Parameter(torch.ones(2))
    cut = tree.detach({"w": w, "p": p})
    assert cut["w"] is w and not cut["p"].requires_grad
    assert cut["p"].data_ptr() == p.data_ptr()


def test_vdot_pairs_leaves_by_key_and_refuses_other_structures():
    a = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor([10.0])}
    b = {"y": torch.tensor([20.0]), "x": torch.tensor([3.0, 4.0])}  # other insertion order
    assert tree.vdot(a, b) == 1 * 3 + 2 * 4 + 10 * 20
    with pytest.raises(ValueError, match="keys differ"):
        tree.vdot(a, {"x": torch.ones(2)})


@pytest.mark.parametrize("op", ["add", "add_", "copy_", "vdot"])
def test_leafwise_pairs_refuse_other_shapes_naming_the_leaf(op):
    """(2, 2) + (2,) broadcast silently, and vdot of them read 4.0; (2,) + (3,) raised
    PyTorch's own error, with no path."""
    for other in (torch.ones(2), torch.ones(3), torch.ones(1, 2, 2)):
        a = {"w": torch.ones(2, 2), "b": torch.ones(2)}
        with pytest.raises(ValueError, match=rf"tree.{op}: 'w' has shape \(2, 2\) in the first"):
            getattr(tree, op)(a, {"w": other, "b": torch.ones(2)})
        a = {"b": torch.ones(2), "w": torch.ones(2, 2)}  # 'b' paired first, then the bad 'w'
        with pytest.raises(ValueError, match=rf"tree.{op}: 'w' has shape \(2, 2\) in the first"):
            getattr(tree, op)(a, {"b": torch.full((2,), 5.0), "w": other})
        assert torch.equal(a["w"], torch.ones(2, 2)) and torch.equal(a["b"], torch.ones(2))
    a, same = {"w": torch.ones(2, 2), "b": torch.ones(2)}, {"w": torch.eye(2), "b": torch.ones(2)}
    out = getattr(tree, op)(a, same)
    assert out == 4.0 if op == "vdot" else torch.equal(out["w"], same["w"] + (op != "copy_"))


def test_named_tuples_keep_their_type():
    from typing import NamedTuple

    class Block(NamedTuple):
        weight: torch.Tensor
        bias: torch.Tensor

    t = {"b": Block(torch.ones(2), torch.ones(1))}
    z = tree.zeros_like(t)
    assert isinstance(z["b"], Block) and torch.equal(z["b"].weight, torch.zeros(2))
    doubled = tree.map_with_path(lambda path, u, v: (path, u + v), t, t)
    path, bias = doubled["b"].bias
    assert path == "b.1" and torch.equal(bias, torch.full((1,), 2.0))  # paths as in flatten


def test_check_like_refuses_other_shapes_dtypes_and_none():
    params = {"w": torch.ones(3, 1), "b": torch.ones(4)}
    tree.check_like({"w": torch.ones(3, 1), "b": torch.ones(4)}, params, "grads")
    with pytest.raises(
        ValueError, match=r"grads: 'w' has shape \(3,\).*parameter has shape \(3, 1\)"
    ):
        tree.check_like({"w": torch.ones(3), "b": torch.ones(4)}, params, "grads")
    with pytest.raises(ValueError, match=r"'b' has shape \(4,\) and dtype torch.float64"):
        tree.check_like({"w": torch.ones(3, 1), "b": torch.ones(4).double()}, params, "grads")
    with pytest.raises(ValueError, match=r"^grads: 'b' is None$"):
        tree.check_like({"w": torch.ones(3, 1), "b": None}, params, "grads")
    with pytest.raises(ValueError, match=r"grads and the parameters differ in structure"):
        tree.check_like({"w": torch.ones(3, 1)}, params, "grads")
    with pytest.raises(TypeError, match=r"zeros_like: 'b' is NoneType, not a tensor"):
        tree.zeros_like({"w": torch.ones(1), "b": None})


def test_a_none_parameter_is_named_once():
    with pytest.raises(ValueError, match=r"^g: the parameter 'w' is None$"):
        tree.check_like({"w": torch.ones(1)}, {"w": None}, "g")


def _adam_like(g, m, v):
    m = m.lerp(g, 0.1)
    v = v.mul(0.999).addcmul_(g, g, value=0.001)
    return m.div(v.sqrt().add_(1e-8)).mul_(-0.01), m, v


def _trees(dtype_b=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def tree_(shift):
        return {
            "b": torch.randn(3, generator=gen, dtype=dtype_b) + shift,
            "a": [torch.randn(2, 1, 3, generator=gen), torch.randn((), generator=gen)],
        }

    return tree_(0.0), tree_(0.5), tree.map(lambda t: t.abs(), tree_(1.0))


@pytest.mark.parametrize("dtype_b", [torch.float32, torch.float64])  # one kind, two kinds
def test_map_raveled_equals_map_bit_for_bit(dtype_b):
    """With ravel=True, one call on raveled leaves (one dtype) or one call per leaf (two
    dtypes): the same values as tree.map, bit for bit, in trees shaped like the first; with
    one dtype the leaves of each result are views of one vector."""
    g, m, v = _trees(dtype_b)
    v = {"a": v["a"], "b": v["b"]}  # another key order: leaves are paired by key
    calls = []

    def counted(*xs):
        calls.append(xs[0].numel())
        return _adam_like(*xs)

    results = tree.map_raveled(counted, g, m, v, outputs=3, ravel=True)
    for i, got in enumerate(results):
        assert list(got) == ["b", "a"] and isinstance(got["a"], list)
        want = dict(tree.flatten(tree.map(lambda *xs, i=i: _adam_like(*xs)[i], g, m, v)))
        for path, leaf in tree.flatten(got):
            assert torch.equal(leaf, want[path]) and leaf.dtype == want[path].dtype, path
    one_kind = dtype_b == torch.float32
    assert calls == ([3 + 6 + 1] if one_kind else [3, 6, 1])
    bases = {leaf.untyped_storage().data_ptr() for leaf in tree.leaves(results[0])}
    assert (len(bases) == 1) == one_kind


def test_map_raveled_goes_leaf_by_leaf_on_the_cpu_by_default():
    g, m, _ = _trees()
    calls = []
    tree.map_raveled(lambda a, b: calls.append(a.numel()) or a - b, g, m)
    assert calls == [3, 6, 1]
    meta = tree.map(lambda t: t.to("meta"), g)  # off the CPU: one call
    tree.map_raveled(lambda a, b: calls.append(a.numel()) or a - b, meta, meta)
    assert calls[3:] == [10]


def test_map_raveled_single_output_empty_and_mismatch():
    g, m, _ = _trees()
    out = tree.map_raveled(lambda a, b: a - b, g, m)
    assert torch.equal(out["a"][0], g["a"][0] - m["a"][0])
    assert tree.map_raveled(lambda a: a, {"x": {}, "y": []}) == {"x": {}, "y": []}
    assert tree.map_raveled(lambda a: (a, a), {}, outputs=2) == ({}, {})
    assert tree.map_raveled(lambda a: a * 2, {"n": 3}) == {"n": 6}  # numbers: leaf by leaf
    with pytest.raises(ValueError, match="at 'a': a list of length 2 vs a list of length 1"):
        tree.map_raveled(lambda a, b: a, g, {"b": g["b"], "a": [g["a"][0]]})


def test_two_leaves_on_one_path_are_refused():
    """Paths name leaves in state dicts, checkpoints and check_vjp's lookups: keys 1 and "1",
    or "a.b" beside {"a": {"b": ...}}, had given two leaves one path, and unflatten had
    filled both from one value."""
    t = torch.zeros(1)
    for twins, path in (({1: t, "1": t}, "'1'"), ({"a.b": t, "a": {"b": t}}, "'a.b'")):
        with pytest.raises(ValueError, match=f"tree: two leaves have the path {path}"):
            tree.flatten(twins)
    assert [p for p, _ in tree.flatten({1: t, "2": {"1": t}})] == ["1", "2.1"]


def test_raveled_finds_views_of_one_vector_back_to_back():
    """raveled: the vector itself for its consecutive views in order (no copy: writing to it
    writes the leaves), None for any other layout."""
    vector = torch.arange(10.0)
    a, b, c = vector[:6].view(2, 3), vector[6:9], vector[9:].view(())
    joined = tree.raveled([a, b, c])
    assert joined is not None and torch.equal(joined, vector)
    joined[7] = -1.0
    assert b[1] == -1.0
    assert torch.equal(tree.raveled([b, c]), vector[6:])
    memory = bytearray(40)  # two tensors in separate storages, adjacent in memory
    first = torch.frombuffer(memory, dtype=torch.float32, count=6)
    second = torch.frombuffer(memory, dtype=torch.float32, offset=24)
    assert second.data_ptr() == first.data_ptr() + 24
    parameters = [torch.nn.Parameter(vector[:6]), torch.nn.Parameter(vector[6:])]
    complex_vector = torch.zeros(4, dtype=torch.complex64)
    for leaves in (
        [b, a, c],  # out of order
        [a, c],  # a gap
        [vector[:6].view(3, 2).t(), b],  # not contiguous
        [vector[:6], vector.view(torch.int32)[6:]],  # another dtype
        [first, second],  # separate storages
        parameters,  # autograd would send every gradient to the first
        [complex_vector[:2], complex_vector[2:].conj()],  # a conjugate bit
        [torch.zeros(2), torch.zeros(3)],  # separate tensors
        [torch.zeros(3).to_sparse()],  # no storage of its own
        [a, 1.0],  # not a tensor
        [],
    ):
        assert tree.raveled(leaves) is None


def test_zeros_like_makes_one_vector_where_it_can():
    g, _, _ = _trees()
    z = tree.zeros_like(g)
    assert tree.raveled(tree.leaves(z)) is not None
    assert all(torch.equal(x, torch.zeros_like(y)) for x, y in zip(tree.leaves(z), tree.leaves(g)))
    mixed = tree.zeros_like(_trees(torch.float64)[0])  # two dtypes: a tensor each
    assert tree.raveled(tree.leaves(mixed)) is None
    assert [t.dtype for t in tree.leaves(mixed)] == [torch.float64] + [torch.float32] * 2


def test_map_raveled_on_the_cpu_runs_once_where_every_tree_is_one_vector():
    """On the CPU: one call when every tree is already one vector (an optimizer's state from
    zeros_like, the gradients of a Module), the same values as leaf by leaf, its results one
    vector again; leaf by leaf where a tree would need a copy."""
    g, m, v = _trees()
    g0, m0, v0 = (tree.copy_(tree.zeros_like(t), t) for t in (g, m, v))
    calls = []

    def counted(*xs):
        calls.append(xs[0].numel())
        return _adam_like(*xs)

    results = tree.map_raveled(counted, g0, m0, v0, outputs=3)
    assert calls == [10]
    for i, got in enumerate(results):
        assert tree.raveled(tree.leaves(got)) is not None
        want = tree.map(lambda *xs, i=i: _adam_like(*xs)[i], g, m, v)
        assert all(map(torch.equal, tree.leaves(got), tree.leaves(want)))
    tree.map_raveled(counted, g, results[1], results[2], outputs=3)  # g to copy: leaf by leaf
    assert calls[1:] == [3, 6, 1]


@pytest.mark.parametrize("raveled", [False, True])
def test_in_place_ops_on_raveled_trees(raveled):
    """add_, copy_ and zero_ give the same leaves whether the trees are raveled (one op on
    each vector) or not, and check shapes either way."""
    g, m, _ = _trees()
    a = tree.zeros_like(g) if raveled else tree.map(torch.zeros_like, g)
    b = tree.zeros_like(m) if raveled else tree.map(torch.zeros_like, m)
    assert (tree.raveled(tree.leaves(a)) is not None) == raveled
    tree.copy_(a, g)
    tree.copy_(b, m)
    tree.add_(a, b)
    for x, y, z in zip(tree.leaves(a), tree.leaves(g), tree.leaves(m)):
        assert torch.equal(x, y + z)
    tree.zero_(a)
    assert all(not x.any() for x in tree.leaves(a))
    other = {"b": g["b"], "a": [g["a"][0].view(3, 2, 1), g["a"][1]]}  # a leaf of another shape
    with pytest.raises(ValueError, match="'a.0' has shape"):
        tree.add_(a, tree.copy_(tree.zeros_like(other), other) if raveled else other)
    buf = torch.zeros(9)  # partly overlapping trees: leaf by leaf, as before
    left, right = [buf[0:3], buf[3:6]], [buf[3:6], buf[6:9]]
    tree.copy_(right, [torch.ones(3), torch.full((3,), 2.0)])
    tree.add_(left, right)
    assert buf.tolist() == [1.0] * 3 + [3.0] * 3 + [2.0] * 3


def test_map_raveled_refuses_leaves_of_other_shapes_and_keeps_autograd():
    """Paired leaves of different shapes with equal totals are not summed misaligned, and
    parameters sharing one storage get their own gradients."""
    with pytest.raises(RuntimeError):
        tree.map_raveled(
            lambda x, y: x + y,
            tree.zeros_like([torch.zeros(4), torch.zeros(6)]),
            [torch.arange(6.0), torch.arange(4.0)],
            ravel=True,
        )
    vector = torch.arange(10.0)
    params = [torch.nn.Parameter(vector[:6]), torch.nn.Parameter(vector[6:])]
    with torch.enable_grad():
        out = tree.map_raveled(lambda x: x * 2, params, ravel=True)
        sum((t * (i + 1)).sum() for i, t in enumerate(out)).backward()
    assert torch.equal(params[0].grad, torch.full((6,), 2.0))
    assert torch.equal(params[1].grad, torch.full((4,), 4.0))


def test_zeros_like_leaves_free_their_vector_when_moved():
    """Module.to gives each gradient leaf new memory (``.data``): the zeros_like vector is not
    kept alive by the leaves' views of it."""
    z = tree.zeros_like([torch.zeros(2, 3), torch.zeros(4)])
    assert all(t._base is None for t in z)
    for t in z:
        t.data = t.data.double()
    assert tree.raveled(z) is None and all(t.dtype == torch.float64 for t in z)


def test_into_one_vector_moves_values_and_keeps_the_tensor_objects():
    a, b = torch.arange(6.0).view(2, 3), torch.full((4,), 7.0)
    held = [a, b]
    assert tree.raveled(held) is None
    assert tree.into_one_vector_(held)
    assert held[0] is a and held[1] is b  # the same objects, new memory
    assert torch.equal(a, torch.arange(6.0).view(2, 3)) and torch.equal(b, torch.full((4,), 7.0))
    vector = tree.raveled([a, b])
    assert vector is not None
    vector.zero_()
    assert not a.any() and not b.any()
    assert tree.into_one_vector_([a, b])  # already one vector: nothing to do
    buf = torch.zeros(5)
    tied = [buf[:3], buf[2:]]  # sharing memory: left as they are
    parameter = torch.nn.Parameter(torch.zeros(2))
    for tensors in (
        tied,
        [torch.zeros(2), parameter],
        [torch.zeros(2), torch.zeros(2).double()],
        [torch.zeros(2), torch.zeros(0)],  # empty: never found by raveled
        [torch.zeros(2, dtype=torch.complex64), torch.zeros(2, dtype=torch.complex64)],
    ):
        pointers = [t.data_ptr() for t in tensors]
        assert not tree.into_one_vector_(tensors)
        assert [t.data_ptr() for t in tensors] == pointers
    with torch.inference_mode():
        made_there = torch.full((3,), 4.0)
    kept = [torch.full((2,), 3.0), made_there]  # set_ refused on an inference tensor
    assert not tree.into_one_vector_(kept)
    assert kept[0].tolist() == [3.0] * 2 and kept[1].tolist() == [4.0] * 3
