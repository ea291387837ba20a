"""Weight relayouts by one gather: a weight-sized tensor permuted (flipped, transposed) into
another order, copied by ``index_select`` with an index made once per shape and device.

PyTorch's strided copy of a permutation that moves the innermost axis outward (a tap
gradient's output channels, innermost in the matmul's result, outermost in [O, C, kh, kw])
loops over runs of a few numbers: the default network's 48 -> 48 tap gradient took 172 us to
reorder, the gather 40 (2-core Intel Xeon). These copies cost the same at any batch size, so
they weigh most on small batches (a quarter of the default network's step at batch 1)."""

from collections.abc import Callable, Hashable

from torch import Tensor, arange

from ..base import inference_mode_on

# The largest tensor (in elements) reordered by a gather: its int64 index is kept, 8 bytes
# an element (a 512 x 512 x 3 x 3 weight: 19 MB); larger ones are copied as they are
GATHER_LIMIT = 1 << 20

_INDEX: dict = {}  # (key, shape, device) -> (flat index, shape of the result)
# Indices kept at most (then all are dropped and made again as needed): a network has a few
# dozen; a sweep over many architectures in one process would otherwise keep them all
INDEX_LIMIT = 256


def relaid(t: Tensor, shape: tuple, arrange: Callable[[Tensor], Tensor], key: Hashable) -> Tensor:
    """``arrange(t.reshape(shape))`` as a new contiguous tensor, for an ``arrange`` made of
    reorderings only (permute, transpose, flip, reshape: no arithmetic), by one gather from
    ``t`` with the index ``arrange`` makes of ``arange``; ``key`` names ``arrange`` (with
    ``shape`` and the device, the index's cache key)."""
    if t.numel() > GATHER_LIMIT:
        return arrange(t.reshape(shape)).contiguous()
    cache_key = (key, tuple(shape), t.device)
    found = _INDEX.get(cache_key)
    if found is None or (found[0].is_inference() and not inference_mode_on()):
        # (one made under torch.inference_mode is an inference tensor, which autograd refuses
        # to save for a gather's backward: made again outside it)
        if len(_INDEX) >= INDEX_LIMIT:
            _INDEX.clear()
        order = arrange(arange(t.numel(), device=t.device).view(shape))
        found = _INDEX[cache_key] = (order.reshape(-1), tuple(order.shape))
    index, out_shape = found
    return t.reshape(-1).index_select(0, index).view(out_shape)
