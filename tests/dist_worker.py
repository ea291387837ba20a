"""One rank of the data-parallel checks in test_distributed.py (run as a script with RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT set). Writes ``OUT/rank{r}.ckpt`` with what it saw."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from n2nfunc import checkpoint, distributed, tree
from n2nfunc.data import make_pairs
from n2nfunc.losses import mse
from n2nfunc.model import Model
from n2nfunc.optim import adam, chain
from n2nfunc.train import make_train_step

TINY = {"widths": (6, 8), "batch_size": 8, "augment": False, "seed": 3}


def data(dtype):
    """Odd-sized, non-square noisy pairs: 40 pairs of 3 x 12 x 20, as floats in [0, 1]."""
    a, b = make_pairs(40, "train", seed=5)
    return a[:, :, :12, :20].to(dtype) / 255, b[:, :, :12, :20].to(dtype) / 255


def model_params(dtype, parallel=None, epochs=1):
    """Parameters after ``epochs`` epochs of Model training (Adam, schedule) in ``dtype``."""
    model = Model({**TINY, "num_epochs": epochs})
    x, y = data(dtype)
    for e in range(epochs):
        model.train_epoch(x, y, e, epochs, parallel=parallel)
    return dict(model.net.state_dict()), model.optimizer.state


def functional_params(dtype, rank=0, size=1):
    """Parameters after 5 steps of make_train_step(chain(mean_gradients(), adam)) where this
    rank takes its slice of each global batch of 8."""
    model = Model(TINY)
    params = tree.map(lambda t: t.to(dtype), model.net.params)
    opt = chain(distributed.mean_gradients(), adam(1e-2))
    step = make_train_step(model.net.layer, mse, opt)
    state = opt.init(params)
    x, y = data(dtype)
    per = 8 // size
    for b in range(5):
        lo = b * 8 + rank * per
        params, state, _ = step(params, state, x[lo : lo + per], y[lo : lo + per])
    return params


def main(out: Path) -> None:
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    dp = distributed.init_from_env(torch.device("cpu"), timeout_s=30)
    r, n = dp.rank, dp.size
    calls = []
    real = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        calls.append(tensor.numel())
        return real(tensor, *args, **kwargs)

    dist.all_reduce = counting
    mixed = {
        "a": torch.full((2, 3), float(r + 1)),
        "b": [torch.arange(5, dtype=torch.float64) * (r + 1), torch.tensor(r * 2.0)],
    }
    mean = distributed.all_reduce_mean(mixed)
    reduce_calls = list(calls)
    try:
        distributed.all_reduce_mean({"i": torch.arange(3)})
        type_error = ""
    except TypeError as e:
        type_error = str(e)
    dist.all_reduce = real
    sent = [
        torch.arange(12, dtype=torch.uint8).view(3, 4) * 2,
        torch.ones(2, dtype=torch.float64),
        torch.tensor([[-300, 7], [512, 0]], dtype=torch.int16).t(),  # gloo has no int16
    ]
    received = dp.broadcast(sent if r == 0 else [])
    p64, s64 = model_params(torch.float64, dp, epochs=2)
    p32, _ = model_params(torch.float32, dp)
    f64 = functional_params(torch.float64, r, n)
    x, y = data(torch.float32)  # a shard of its own on each rank: refused on every rank
    own = slice(20 * r, 20 * r + 20)
    try:
        Model(TINY).train_epoch(x[own], y[own], 0, 1, parallel=dp)
        sharded = ""
    except ValueError as e:
        sharded = str(e)
    checkpoint.save(
        out / f"rank{r}.ckpt",
        {
            "mean": mean,
            "reduce_calls": reduce_calls,
            "type_error": type_error,
            "received": received,
            "model64": p64,
            "adam64": {"m": s64["m"], "v": s64["v"], "step": s64["step"]},
            "model32": p32,
            "functional64": f64,
            "sharded": sharded,
        },
    )
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
