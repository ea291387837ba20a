"""Both gradients of a strided convolution on the implicit-GEMM engine: the weight gradient by
its taps, the input gradient by the polyphase product."""

from typing import NamedTuple

from torch import Tensor

from . import direct
from .direct import reduce_matmul, sum_over_blocks
from .polyphase import PhasePlan, combine, phase_plan, polyphase_cols, polyphase_forward
from .relayout import relaid
from .s2d import (
    S2DPlan,
    _taps_view,
    s2d_conv_weight_grad,
    s2d_weight_grad_to_conv,
    space_to_depth,
    tap_sum,
    taps_to_conv,
)


class TapWeightGrad(NamedTuple):
    """``g -> dW`` of the implicit-GEMM engine (shaped ``shape`` [O, C, kh, kw]) for a
    convolution of an ``in_hw`` input ``x`` (NHWC), whose space-to-depth copy ``z`` of the
    forward pass is formed again when the gradient is asked for: the input is kept anyway (by
    the activation before, or by the caller), the copy, with its padding, is larger and would
    be alive beside the later layers' backward passes (default network, float32, batch 100:
    the peak of live tensors 45.3 -> 39.1 MB).

    ``dW[a] = sum_r z[r]^T g[r - a]`` (:func:`s2d_conv_weight_grad`). Where the polyphase
    engine's im2col of ``g`` -- the (U x U)-window matrix of ``g`` padded by U - 1 that the
    input gradient multiplies (:func:`conv_input_grad`) -- has the z grid for its window
    starts, its column block ``j`` at row ``r`` is ``g[r + j - (U - 1)]``, what tap ``a = U - 1
    - j`` multiplies: ``dW = flip(cols^T @ z)``, one im2col copy of ``g`` instead of a frame of
    it per tap (the default network's transposed 48 -> 48 layer's kernel gradient, batch 100,
    float32: 2.80 -> 2.65 ms), which the input gradient then shares (:func:`_phase_grads`).

    The gradient is the sum of its blocks of images' (:meth:`block`, :func:`image_blocks`),
    so that z and the im2col of ``g`` exist for one block at a time."""

    x: Tensor
    plan: S2DPlan
    shape: tuple
    in_hw: tuple
    kept: Tensor | None = None  # z itself, where the gradient is asked for at once

    def z(self) -> Tensor:
        """The space-to-depth input of the forward pass (:func:`space_to_depth`)."""
        return space_to_depth(self.x, self.plan) if self.kept is None else self.kept

    def phase_plans(self) -> tuple[PhasePlan, PhasePlan] | None:
        """``(py, px)`` of the input gradient's polyphase engine when its im2col lines up with
        the z grid (see the class docstring), else None."""
        (kh, kw), (ho, wo), pads = self.shape[2:], self.plan.out_hw, self.plan.pads
        py = phase_plan("transpose", ho, self.in_hw[0], kh, self.plan.stride[0], pads[0], 1)
        px = phase_plan("transpose", wo, self.in_hw[1], kw, self.plan.stride[1], pads[2], 1)
        lined_up = all(
            p.width == u and p.pad_before == u - 1 and p.starts == m
            for p, u, m in zip((py, px), self.plan.taps, self.plan.grid)
        )
        return (py, px) if lined_up else None

    def image_bytes(self) -> int:
        """The bytes of z per image (the lined-up im2col of ``g`` is as large)."""
        (mh, mw), (sy, sx) = self.plan.grid, self.plan.stride
        return mh * mw * sy * sx * self.x.shape[3] * self.x.element_size()

    def block(self, n0: int, n1: int) -> "TapWeightGrad":
        """The same for images ``n0:n1`` of ``x`` (the gradient of a block of images)."""
        grid = self.plan.grid[0] * self.plan.grid[1]
        rows_ = self.plan.rows - (self.x.shape[0] - (n1 - n0)) * grid
        kept = None if self.kept is None else self.kept[n0 * grid : n1 * grid]
        return self._replace(x=self.x[n0:n1], plan=self.plan._replace(rows=rows_), kept=kept)

    def products(self, g: Tensor, plans, cols: Tensor | None = None) -> Tensor:
        """The raw sums for ``g`` that :meth:`finish` makes ``dW``: ``cols^T @ z`` with the
        lined-up im2col ``cols`` of ``g`` (formed here unless given) where ``plans`` (see
        :meth:`phase_plans`), else the tap gradients (:func:`s2d_conv_weight_grad`)."""
        if plans is None:
            return s2d_conv_weight_grad(self.z(), g, self.plan)
        if cols is None:
            cols = polyphase_cols(g, plans[0], plans[1])
        return reduce_matmul(cols.t(), self.z())

    def finish(self, sums: Tensor, plans) -> Tensor:
        """``dW`` from the (added) :meth:`products`."""
        if plans is None:
            return s2d_weight_grad_to_conv(sums, self.plan, self.shape)
        (uy, ux), o = self.plan.taps, self.shape[0]
        plan, shape = self.plan, self.shape

        def arrange(m):  # rows (jy, jx, o); tap a = U - 1 - j
            return taps_to_conv(m.flip(0, 1).transpose(2, 3), plan, shape)

        return relaid(
            sums, (uy, ux, o, sums.shape[1]), arrange, ("phase_taps", plan.taps, plan.stride, shape)
        )

    def __call__(self, g: Tensor) -> Tensor:
        """``dW`` for the NHWC output gradient ``g``, by blocks of images (their z and
        im2col copies formed a block at a time, :func:`image_blocks`)."""
        plans = self.phase_plans()

        def block_term(n0: int, n1: int) -> Tensor:
            return self.block(n0, n1).products(g[n0:n1], plans)

        return self.finish(sum_over_blocks(self.x.shape[0], self.image_bytes(), block_term), plans)


def _phase_grads(wg: TapWeightGrad, g: Tensor, weight: Tensor):
    """``(dW, dx)`` of a strided convolution of the implicit-GEMM engine from one im2col
    matrix of ``g`` (see :class:`TapWeightGrad`), or None where it does not line up (default
    network, 48 -> 48, k4 s2, float32, both gradients 5.6 -> 5.0 ms at batch 100, 2.15 -> 1.76
    ms at batch 32; 2-core Xeon)."""
    plans = wg.phase_plans()
    if plans is None or weight.shape[1] < direct.THIN:
        return None
    w_eff = combine(weight.permute(2, 3, 0, 1), *plans)
    dx = g.new_empty(g.shape[0], *wg.in_hw, weight.shape[1])

    def block_term(n0: int, n1: int) -> Tensor:
        _, cols = polyphase_forward(g[n0:n1], w_eff, None, *plans, wg.in_hw, out=dx[n0:n1])
        return wg.block(n0, n1).products(g[n0:n1], plans, cols)

    return wg.finish(sum_over_blocks(g.shape[0], wg.image_bytes(), block_term), plans), dx


def _s2d_conv_and_grad(
    x: Tensor, w_taps: Tensor, bias: Tensor | None, wg: TapWeightGrad, a: Tensor
) -> tuple[Tensor, Tensor]:
    """``(y, dW)`` of the implicit-GEMM engine for the output gradient ``a``, both at once
    (:func:`conv_and_weight_grad`'s ``grad_for``): each block of images' space-to-depth copy
    gives its outputs (:func:`tap_sum`) and its share of ``dW``."""
    n, plans, plan = x.shape[0], wg.phase_plans(), wg.plan
    sums = x.new_empty(n, plan.out_hw[0] * plan.grid[1] - (plan.taps[1] - 1), w_taps.shape[-1])

    def block_term(n0: int, n1: int) -> Tensor:
        block = wg.block(n0, n1)
        z = block.z()
        tap_sum(z, w_taps, bias, block.plan, n1 - n0, out=sums[n0:n1])
        return block._replace(kept=z).products(a[n0:n1], plans)

    return _taps_view(sums, plan), wg.finish(
        sum_over_blocks(n, wg.image_bytes(), block_term), plans
    )
