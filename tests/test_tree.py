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
