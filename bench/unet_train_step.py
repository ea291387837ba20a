"""Training-step throughput of the U-Net: n2nfunc (functional, hand-written gradients)
against its torch.nn + autograd twin (bench/unet_twin.py), same weights, data and Adam
update, interleaved in one process (only the ratio is meaningful on a shared machine).

    python bench/unet_train_step.py                       # default and paper shapes
    python bench/unet_train_step.py --crop 64 --batch 8 --arch 4:32,64,48,24
    python bench/unet_train_step.py --device cuda

One step = forward + MSE + backward + Adam update, on a batch of crops.
"""

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import interleaved  # noqa: E402
from unet_twin import TorchUNet  # noqa: E402

import n2nfunc as nf  # noqa: E402
from n2nfunc.unet import unet  # noqa: E402

LR = 1e-3


def parse_arch(text: str) -> dict:
    """``DEPTH:ENC,DEC,A,B`` -> unet kwargs."""
    depth, _, widths = text.partition(":")
    return {"depth": int(depth), "widths": tuple(int(v) for v in widths.split(","))}


def contenders(arch: dict, crop: int, batch: int, device: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, crop, crop, generator=g).to(device)
    y = torch.rand(batch, 3, crop, crop, generator=g).to(device)
    layer = unet(**arch)
    _, params = layer.init(torch.Generator().manual_seed(seed), (-1, 3, -1, -1))
    params = nf.tree.map(lambda t: t.to(device), params)
    opt = nf.adam(LR)
    box = {"params": params, "state": opt.init(params)}
    step = nf.make_train_step(layer, nf.mse, opt)

    def n2nfunc_step():
        box["params"], box["state"], _ = step(box["params"], box["state"], x, y)

    twin = TorchUNet(**arch).to(device).load_n2nfunc(params)
    topt = torch.optim.Adam(twin.parameters(), lr=LR)

    def torch_step():
        with torch.enable_grad():
            topt.zero_grad()
            torch.nn.functional.mse_loss(twin(x), y).backward()
            topt.step()

    return {"n2nfunc": n2nfunc_step, "torch.nn": torch_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", action="append", help="DEPTH:ENC,DEC,A,B (repeatable)")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    archs = [parse_arch(a) for a in args.arch or ["4:32,64,48,24", "5:48,96,64,32"]]
    torch.set_grad_enabled(False)
    print(
        f"crop {args.crop}, batch {args.batch}, device {args.device}, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"{'depth:widths':<22}{'n2nfunc ms':>12}{'torch ms':>10}{'ratio':>8}{'img/s':>8}")
    for arch in archs:
        c = contenders(arch, args.crop, args.batch, args.device)
        if args.device != "cpu":
            c = {k: (lambda f=f: (f(), torch.cuda.synchronize())) for k, f in c.items()}
        t = interleaved(c, warmup=2, repeats=args.repeats, rounds=args.rounds)
        label = f"{arch['depth']}:{','.join(map(str, arch['widths']))}"
        print(
            f"{label:<22}{t['n2nfunc'] * 1e3:>12.1f}{t['torch.nn'] * 1e3:>10.1f}"
            f"{t['torch.nn'] / t['n2nfunc']:>8.2f}{args.batch / t['n2nfunc']:>8.1f}"
        )


if __name__ == "__main__":
    main()
