"""Inference throughput: ``Model.predict`` against the same torch.nn network's forward.

    python bench/inference.py

Inputs: 1,000 x 3 x 32 x 32 (uint8) and 1 x 3 x 512 x 512; the shipped architecture and
weights; contenders interleaved, median of several runs.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, torch_net  # noqa: E402

from n2nfunc.model import Model  # noqa: E402


def main(threads: int = 2) -> None:
    torch.set_grad_enabled(False)
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    shipped = Model()
    shipped.load_pretrained_model()
    compare(shipped, "the shipped network and weights")
    compare(
        Model({"widths": (32, 64), "kernel": 3, "upsampling": "nearest"}),
        "the required network with nearest x2 + 3x3 conv upsampling, widths 32/64",
    )


def compare(model: Model, label: str) -> None:
    ref = torch_net(model.config, model.net.state_dict())
    print(
        f"\n{label}: widths {model.config['widths']}, kernel {model.config['kernel']}, "
        f"upsampling {model.config['upsampling']}"
    )
    print(f"{'input':<22}{'contender':<26}{'ms':>9}{'img/s':>9}{'ratio':>7}")
    g = torch.Generator().manual_seed(0)
    for label, x in [
        (
            "1000 x 3 x 32 x 32",
            torch.randint(0, 256, (1000, 3, 32, 32), generator=g, dtype=torch.uint8),
        ),
        (
            "1 x 3 x 512 x 512",
            torch.randint(0, 256, (1, 3, 512, 512), generator=g, dtype=torch.uint8),
        ),
    ]:
        xf = x.float() / 255
        assert torch.allclose(model.predict(x) / 255, ref(xf), atol=1e-5)
        times = interleaved(
            {
                "n2nfunc Model.predict": lambda: model.predict(x),
                "torch.nn forward": lambda: ref(x.float() / 255).clamp(0, 1) * 255,
            },
            2,
            5,
        )
        base = times["torch.nn forward"]
        for name, t in times.items():
            print(f"{label:<22}{name:<26}{t * 1000:>9.1f}{x.shape[0] / t:>9.0f}{base / t:>7.2f}")


def footer() -> None:
    print(
        "\nratio = torch time / n2nfunc time (>1: n2nfunc faster); both include the 0-255 scaling."
    )


if __name__ == "__main__":
    main()
    footer()
