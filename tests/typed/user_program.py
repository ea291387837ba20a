"""A fully annotated user of n2nfunc's public API, type-checked by ``mypy --strict`` in
tests/test_typing.py (n2nfunc ships py.typed: its annotations are part of its interface).
Runs as written, too."""

import tempfile
from pathlib import Path

import torch
from torch import Tensor

import n2nfunc as nf


def functional() -> float:
    torch.set_grad_enabled(False)
    layer: nf.Layer = nf.conv2d(16, 3, stride=2, padding=1)
    out_shape, params = layer.init(torch.Generator().manual_seed(0), (-1, 3, 32, 32))
    x = torch.randn(8, 3, 32, 32)
    y: Tensor = layer.apply(params, x)
    y, pullback = layer.vjp(params, x)
    ct_params, ct_x = pullback(torch.randn_like(y))
    net: nf.Layer = nf.serial(
        layer, nf.relu(), nf.conv_transpose2d(3, 4, stride=2, padding=1), nf.sigmoid()
    )
    _, params = net.init(torch.Generator().manual_seed(0), (-1, 3, 32, 32))
    two: nf.Layer = nf.serial(nf.fanout(2), nf.parallel(nf.identity(), nf.relu()), nf.fanin_sum())
    skip: nf.Layer = nf.residual(nf.conv2d(3, 3, padding=1))
    opt: nf.GradientTransformation = nf.chain(nf.clip_by_global_norm(1.0), nf.adam(1e-3))
    state = opt.init(params)
    step = nf.make_train_step(net, nf.mse, opt)
    loss = torch.zeros(())
    for _ in range(2):
        params, state, loss = step(params, state, x, torch.rand(8, 3, 32, 32))
    grads = nf.tree.map(torch.zeros_like, params)
    updates, state = opt.update(grads, state, params)
    params = nf.apply_updates(params, updates)
    mixed: nf.Layer = nf.mixed_precision(net, "bfloat16")
    del out_shape, ct_params, ct_x, two, skip, mixed
    return float(loss)


def stateful() -> Tensor:
    net = nf.serial(nf.conv2d(4, 3, padding=1), nf.batch_norm2d(), nf.relu())
    assert isinstance(net, nf.StatefulLayer)
    _, params, state = net.init(torch.Generator().manual_seed(0), (-1, 3, 8, 8))
    y, state = net.apply(params, state, torch.randn(2, 3, 8, 8), train=True)
    opt = nf.sgd(0.1)
    opt_state = opt.init(params)
    step = nf.make_train_step(net, nf.mse, opt)
    x, target = torch.rand(2, 3, 8, 8), torch.rand(2, 4, 8, 8)
    params, state, opt_state, loss = step(params, state, opt_state, x, target)
    frozen: nf.Layer = nf.stateful.fixed(net, state, train=False)
    out: Tensor = frozen.apply(params, torch.randn(2, 3, 8, 8))
    return out + float(y.mean()) + float(loss)


def wrappers() -> None:
    model = nf.Sequential(nf.Conv2d(3, 8, 3, padding=1), nf.ReLU(), nf.Sigmoid())
    model = model.eval().train()
    criterion = nf.MSE()
    optimizer = nf.SGD(model.param(), lr=0.1)
    x = torch.randn(2, 3, 8, 8)
    loss: Tensor = criterion.forward(model.forward(x), torch.rand(2, 8, 8, 8))
    optimizer.zero_grad()
    model.backward(criterion.backward())
    optimizer.step()
    optimizer.lr = 0.05
    pooled = nf.Sequential(
        nf.Conv2d(3, 8, (3, 3), padding="same", device="cpu", dtype=torch.float32),
        nf.MaxPool2d(2),
        nf.AvgPool2d(2, stride=(1, 1)),
        nf.NearestUpsampling(size=(4, 4)),
        nf.TransposeConv2d(8, 3, 4, stride=2, padding=1),
        nf.UNet(depth=2, widths=[8, 8, 8, 8]),
    ).to("cpu")
    adam = nf.Adam(pooled, lr=lambda step: 1e-3, betas=(0.9, 0.99))
    adam.step()
    del loss


def denoiser() -> float:
    model = nf.Model()
    model.load_pretrained_model()
    noisy = torch.randint(0, 256, (2, 3, 32, 32)).float()
    out: Tensor = model.predict(noisy)
    layer, params = nf.pretrained("exercise")
    clean: Tensor = nf.denoise_image(layer, params, noisy[0] / 255, overlap=8, align=4)
    gains: dict[str, float] = nf.evaluate(model, noisy, noisy.round().clamp(0, 255))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.pth"
        nf.save(path, {"w": clean})
        model.save(Path(folder) / "model.pth")
        back = nf.load(path)
    return nf.psnr(out / 255, noisy / 255) + float(back["w"].mean()) + gains["gain"]


if __name__ == "__main__":
    print(functional(), stateful().shape, denoiser())
    wrappers()
