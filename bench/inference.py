"""Inference: ``Model.predict`` (end to end: uint8 in, checks, scaling, padding, 0-255 out)
and the bare network forward, in float32 and bfloat16, against the same torch.nn network's
forward under ``torch.no_grad()`` in float32 and under autocast-bf16, NCHW and channels_last.

    python bench/inference.py

Inputs: 1,000 x 3 x 32 x 32 and 1 x 3 x 512 x 512 (uint8 for predict, float 0-1 for the
forwards); the default network with the shipped weights, and the reference nearest-upsampling
network; contenders alternate in rounds, median of >= 5. Ratios: the fastest torch contender
of the same precision's time / ours. Where ``Model.predict`` splits the batch into chunks
(``PREDICT_BYTES`` of computed numbers: 128 images of 32 x 32 in float32, 256 in bfloat16),
torch's forward is also timed on the same chunks (``... chunks of K``), which is faster for
it too, and counts as a reference like the others.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parent),
]  # this tree
from common import (  # noqa: E402
    channels_last,
    header,
    interleaved,
    synced,
    torch_device,
    torch_net,
)

import n2nfunc as nf  # noqa: E402
from n2nfunc.argtypes import int_range  # noqa: E402
from n2nfunc.model import Model, images_per_chunk  # noqa: E402
from n2nfunc.precision import compute_dtype  # noqa: E402


def contenders(model32: Model, model16: Model, x) -> dict:
    """name -> (precision, zero-argument function); torch's forwards also on
    ``Model.predict``'s chunks where it splits the batch."""
    xf = x.float() / 255
    xcl = xf.contiguous(memory_format=torch.channels_last)
    net, params = model32.net.layer, model32.net.params
    mp = nf.mixed_precision(net, "bfloat16")
    ref = torch_net(model32.config, model32.net.state_dict()).to(x.device)
    ref_cl = channels_last(torch_net(model32.config, model32.net.state_dict()).to(x.device))

    def autocast(r, xx):
        def run():
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return r(xx).float()

        return run

    torch_side = {
        "torch.nn fwd f32 NCHW": ("float32", ref, xf, False),
        "torch.nn fwd f32 ch-last": ("float32", ref_cl, xcl, False),
        "torch.nn fwd autocast NCHW": ("bfloat16", ref, xf, True),
        "torch.nn fwd autocast ch-last": ("bfloat16", ref_cl, xcl, True),
    }
    timed = {}
    for name, (precision, r, xx, cast) in torch_side.items():
        timed[name] = (precision, autocast(r, xx) if cast else lambda r=r, xx=xx: r(xx))
        per_chunk = predict_chunk(precision, x.shape, x.device.type)
        if per_chunk < x.shape[0]:
            chunks = list(xx.split(per_chunk))  # views in xx's layout (the batch is outermost)
            timed[f"{name} chunks of {per_chunk}"] = (precision, _on_chunks(r, chunks, cast))
    return {
        "n2nfunc Model.predict f32": ("float32", lambda: model32.predict(x)),
        "n2nfunc Model.predict bf16": ("bfloat16", lambda: model16.predict(x)),
        "n2nfunc network fwd f32": ("float32", lambda: net.apply(params, xf)),
        "n2nfunc network fwd bf16": ("bfloat16", lambda: mp.apply(params, xf)),
        **timed,
    }


def predict_chunk(precision: str, shape, device_type: str = "cpu") -> int:
    """Images per chunk of ``Model.predict`` on ``device_type`` for a batch of ``shape``."""
    return images_per_chunk(shape[2], shape[3], compute_dtype(precision), device_type)


def _on_chunks(net, chunks: list, cast: bool):
    """``net`` run chunk by chunk (under autocast-bf16 where ``cast``), outputs joined."""

    def run():
        with torch.autocast(chunks[0].device.type, dtype=torch.bfloat16, enabled=cast):
            outs = [net(c) for c in chunks]
        return torch.cat([o.float() for o in outs])

    return run


def compare(config: dict, label: str, shipped: bool, rounds: int, device: str = "cpu") -> None:
    model32, model16 = Model(config), Model({**config, "precision": "bfloat16"})
    if shipped:
        model32.load_pretrained_model()
        model16.load_pretrained_model()
    print(
        f"{label}: widths {config['widths']}, kernel {config['kernel']}, "
        f"upsampling {config['upsampling']}"
    )
    print(f"{'input':<20}{'contender':<44}{'ms':>9}{'img/s':>9}{'ratio':>7}")
    g = torch.Generator().manual_seed(0)
    for name, shape in [
        ("1000 x 3 x 32 x 32", (1000, 3, 32, 32)),
        ("1 x 3 x 512 x 512", (1, 3, 512, 512)),
    ]:
        x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(device)
        model32.predict(x[:1]), model16.predict(x[:1])  # the models move to the input's device
        cands = contenders(model32, model16, x)
        ref = cands["torch.nn fwd f32 NCHW"][1]()
        assert torch.allclose(model32.predict(x) / 255, ref.clamp(0, 1), atol=1e-5)
        times = interleaved(synced({k: fn for k, (_, fn) in cands.items()}, device), 2, 5, rounds)
        best = {
            p: min(times[k] for k, (q, _) in cands.items() if q == p and k.startswith("torch"))
            for p in ("float32", "bfloat16")
        }
        for k, t in times.items():
            ratio = best[cands[k][0]] / t
            print(f"{name:<20}{k:<44}{t * 1000:>9.1f}{shape[0] / t:>9.0f}{ratio:>7.2f}")
        print()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int_range(1), default=2)
    ap.add_argument("--rounds", type=int_range(1), default=5)
    ap.add_argument("--device", type=torch_device, default="cpu", help="cpu (default) or cuda[:N]")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    header(args.threads, args.device)
    compare(
        dict(Model().config), "default network, shipped weights", True, args.rounds, args.device
    )
    compare(
        {**Model().config, "widths": (32, 64), "kernel": 3, "upsampling": "nearest"},
        "reference network (nearest x2 + 3x3 conv upsampling)",
        False,
        args.rounds,
        args.device,
    )
    print(
        "ratio = time of the fastest torch.nn contender of the same precision (bare forward under "
        "no_grad; whole batch or Model.predict's chunks, either layout) / ours (>1: n2nfunc "
        "faster).\nModel.predict includes uint8 -> float, the "
        "input checks, padding to a multiple of 4, clamping and 0-255 scaling; the torch "
        "forward includes none of them."
    )


if __name__ == "__main__":
    main()
