"""Convolution kernels on channels-last (N, H, W, C) tensors.

Two formulations underlie every convolution-like layer and its gradients:

* **direct**: ``y = im2col(pad(x)) @ W`` -- one matmul with a
  (N*Ho*Wo, kh*kw*C) matrix of kernel windows, built from a strided view. Any
  convolution: ``conv2d``, the input gradient of ``conv_transpose2d`` (the adjoint of a
  transposed convolution is a convolution) and of a stride-1 ``conv2d`` (a convolution
  with the flipped kernel).

* **polyphase** (sub-pixel): a map that upsamples by ``s`` -- a transposed
  convolution, or nearest upsampling followed by a convolution -- is, for each of
  the ``s*s`` output phases ``(o mod s)``, a small stride-1 convolution of the
  low-resolution input. Writing output ``o = s*m + rho``,

      y[s*m + rho] = sum_j x[m + off[rho] + j] @ K[rho, j],   j < U,

  so all phases come from one matmul ``im2col_U(x) @ W_eff`` with
  ``W_eff`` of shape (U*U*Cin, s*s*Cout), followed by an interleave of the phases.
  Nearest x2 + 3x3 conv needs U = 2: 16 instead of 36 multiply-adds per
  low-resolution pixel and channel pair. For ``conv_transpose2d``, ``upsample`` and
  the input gradient of a strided ``conv2d``.

``W_eff = combine(w)`` is linear in the kernel: ``W_eff[j, rho] = sum_t A[rho, j, t] w[t]``
per spatial dim, with a 0/1 matrix ``A`` from :func:`phase_plan`; its gradient is
the transposed map, :func:`uncombine`.

In float32 and float64 on the CPU, faster engines built from shifted views take over where
they apply (each says when): the implicit GEMM of strided layers over a space-to-depth copy
(:func:`s2d_applies`), the row taps of stride-1 layers (:func:`rows_applies`) and their
kernel taps on large images (:func:`kernel_taps_pay`), or taps on pairs of columns for a
narrow output (:func:`pair_taps_pay`). Which engine computes which pass is
decided mostly in the entry points of ``dispatch`` (:func:`conv_and_weight_grad`,
:func:`conv_input_grad`, :func:`conv_grads`, :func:`conv`, :func:`conv_weight_grad`), each of
which says how; also in :func:`polyphase_forward` (taps or im2col) and, for ``upsample``'s
backward pass, in :mod:`n2nfunc.layers.upsampling`.

The engines live in submodules, one each: ``direct`` (im2col), ``polyphase``, ``s2d`` (the
implicit GEMM over space-to-depth copies), ``strided`` (both gradients of a strided
convolution on it), ``row_taps``, ``nearest_grad`` (``upsample``'s 16-bit weight gradient
from box sums of the output gradient), and ``dispatch``, whose entry points choose among them.
Their public functions are imported here. The block sizes and engine thresholds are constants
of the submodule that defines them, read from there at each call (``direct.THIN``,
``direct.GRAD_BLOCK_BYTES``, ``s2d.WIDE_TAPS``, ``row_taps.KERNEL_TAPS_PIXELS``, ...): set one
there, as ``kernels.s2d.WIDE_TAPS = 32``; the package does not copy them.
"""

from .direct import (
    ColsWeightGrad,
    channel_sums,
    cols_products,
    conv_cols,
    conv_forward,
    conv_matrix,
    fast_width,
    im2col_matmul,
    image_blocks,
    matrix_to_weight,
    reduce_matmul,
    rows,
    sum_over_blocks,
    weight_grad,
    widened,
)
from .dispatch import (
    conv,
    conv_and_weight_grad,
    conv_grads,
    conv_input_grad,
    conv_weight_grad,
    shares_row_taps,
    thin_output_pays,
)
from .nearest_grad import nearest_conv_weight_grad
from .polyphase import (
    PhasePlan,
    combine,
    interleaved,
    nearest_conv_kernel,
    nearest_conv_kernel_grad,
    phase_plan,
    phase_slices,
    phase_taps_pay,
    polyphase_backward,
    polyphase_cols,
    polyphase_forward,
    uncombine,
)
from .row_taps import (
    RowWeightGrad,
    kernel_taps_pay,
    pair_taps_forward,
    pair_taps_pay,
    row_taps_conv,
    rows_applies,
    stride_one_forward,
)
from .s2d import (
    S2DPlan,
    s2d_applies,
    s2d_conv_forward,
    s2d_conv_weight_grad,
    s2d_plan,
    s2d_weight_grad_to_conv,
    s2d_weights,
    space_to_depth,
    tap_sum,
)
from .strided import (
    TapWeightGrad,
)

__all__ = [
    "ColsWeightGrad", "channel_sums", "cols_products", "conv_cols", "conv_forward",
    "conv_matrix", "fast_width", "im2col_matmul", "image_blocks", "matrix_to_weight",
    "reduce_matmul", "rows", "sum_over_blocks", "weight_grad", "widened", "conv",
    "conv_and_weight_grad", "conv_weight_grad", "conv_grads", "conv_input_grad",
    "shares_row_taps", "thin_output_pays", "PhasePlan", "combine", "interleaved",
    "nearest_conv_kernel", "nearest_conv_kernel_grad", "nearest_conv_weight_grad", "phase_plan",
    "phase_slices", "phase_taps_pay",
    "polyphase_backward", "polyphase_cols", "polyphase_forward", "uncombine", "RowWeightGrad",
    "kernel_taps_pay", "pair_taps_forward", "pair_taps_pay", "row_taps_conv", "rows_applies",
    "stride_one_forward", "S2DPlan",
    "s2d_applies", "s2d_conv_forward", "s2d_conv_weight_grad", "s2d_plan",
    "s2d_weight_grad_to_conv", "s2d_weights", "space_to_depth", "tap_sum", "TapWeightGrad",
]  # fmt: skip
