"""Classify scikit-learn's handwritten digits (8x8 images, 10 classes) with a small CNN
written with the functional API: conv, batch norm, ReLU, max-pool, flatten, dropout, dense.

    pip install -c constraints.txt -e ".[examples]"   # scikit-learn, for the data set (offline)
    python examples/classify_digits.py

Batch norm and dropout make the network a ``StatefulLayer``: the training step takes and
returns the running statistics (``state``) and draws dropout masks from an explicit
generator (``rng``); evaluation uses the running statistics and no dropout.
"""

import argparse
import time

import torch

import n2nfunc as nf

EPOCHS = 15
BATCH_SIZE = 32
LR = 3e-3


def load_digits_split(seed: int = 0, dtype=torch.float32):
    """``(x_train, y_train, x_test, y_test)``: images (N, 1, 8, 8) scaled to [0, 1] and integer
    labels, with a held-out 20% test split drawn with ``seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=dtype).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = len(y) // 5
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def network() -> nf.StatefulLayer:
    """(N, 1, 8, 8) -> (N, 10) class scores (logits)."""
    return nf.serial(
        nf.conv2d(16, 3, padding=1, bias=False),  # batch norm has the bias
        nf.batch_norm2d(),
        nf.relu(),
        nf.max_pool2d(2),  # 4x4
        nf.conv2d(32, 3, padding=1, bias=False),
        nf.batch_norm2d(),
        nf.relu(),
        nf.max_pool2d(2),  # 2x2
        nf.flatten(),
        nf.dropout(0.25),
        nf.dense(10),
    )


def batch_order(n: int, epochs: int, seed: int = 1) -> list:
    """The index batches of every epoch (a fresh permutation each epoch; the last partial
    batch is dropped so that batch norm always sees several images)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        batches += [perm[i : i + BATCH_SIZE] for i in range(0, n - BATCH_SIZE + 1, BATCH_SIZE)]
    return batches


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean())


def main() -> None:
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)  # tensors this small gain nothing from more threads
    x_train, y_train, x_test, y_test = load_digits_split()
    start = time.perf_counter()
    net = network()
    _, params, state = net.init(torch.Generator().manual_seed(0), (-1, 1, 8, 8))
    batches = batch_order(len(y_train), EPOCHS)
    optimizer = nf.adam(nf.cosine_decay(LR, len(batches)))
    train_step = nf.make_train_step(net, nf.cross_entropy, optimizer)
    opt_state = optimizer.init(params)
    rng = torch.Generator().manual_seed(2)  # dropout masks
    for step, idx in enumerate(batches):
        params, state, opt_state, loss = train_step(
            params, state, opt_state, x_train[idx], y_train[idx], rng
        )
        if step % 200 == 0:
            print(f"step {step:4d}/{len(batches)}  loss {float(loss):.4f}")
    logits, _ = net.apply(params, state, x_test, train=False)
    seconds = time.perf_counter() - start
    print(
        f"test accuracy {accuracy(logits, y_test):.2%} on {len(y_test)} held-out digits; "
        f"trained {EPOCHS} epochs in {seconds:.1f} s"
    )


if __name__ == "__main__":
    argparse.ArgumentParser(  # --help prints the docstring above
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    main()
