"""Faster CPU kernels for two layers of the nodule UNet, with the same weights and the same results.

PyTorch runs 3-D convolutions on the CPU through oneDNN, which is fast for layers with many channels and slow
for the two single-channel layers at the top of MONAI's UNet, at full window resolution:

- the output ``Conv3d(1, 1, 3)`` (the last residual unit's convolution): oneDNN took ~40 ms for a batch of four
  64^3 windows, as long as a 16-channel layer; 27 shifted multiply-adds of the padded input take ~4 ms;
- the last ``ConvTranspose3d(C, 1, 3, stride 2)``: PyTorch's own (im2col) kernel,
  ``aten::slow_conv_transpose3d``, took about half of oneDNN's time there.

Together they were about a quarter of the network's CPU time per window batch on the 2-core development
machine (``benchmarks/cpu_layers.py`` measures the network with and without, in one process). Every other layer
stays on oneDNN, which is faster for them (measured: up to 15x).

:func:`use_cpu_layers` switches such modules of a network in place to subclasses whose ``forward`` takes the
faster path for CPU tensors and the layer's own otherwise (CUDA, or a layer outside the cases above), so the
state dict, the parameters and every other device are untouched. The shifted adds give the convolution's sum
in another order (float32 rounding, ~1e-6 of the logits); the transposed convolution is PyTorch's own kernel.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


def _shift_add_eligible(conv: nn.Conv3d) -> bool:
    return (
        conv.in_channels == 1
        and conv.out_channels == 1
        and conv.groups == 1
        and tuple(conv.stride) == (1, 1, 1)
        and tuple(conv.dilation) == (1, 1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _native_transpose_eligible(conv: nn.ConvTranspose3d) -> bool:
    return conv.out_channels == 1 and conv.groups == 1 and conv.padding_mode == "zeros"


def _fast_path(input: torch.Tensor) -> bool:
    """A CPU float32 batch of volumes, no gradient to record, no autocast (else PyTorch's own layers run)."""
    return (
        input.device.type == "cpu"
        and input.dtype == torch.float32
        and input.dim() == 5
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


class ShiftAddConv3d(nn.Conv3d):
    """``Conv3d(1, 1, k)`` (stride 1, zero padding) computed on the CPU as one multiply-add per kernel tap."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not _fast_path(input):  # eligibility was checked when use_cpu_layers switched the class
            return super().forward(input)
        pz, py, px = (int(p) for p in self.padding)
        kz, ky, kx = self.kernel_size
        x = F.pad(input, (px, px, py, py, pz, pz)) if (pz or py or px) else input
        d, h, w = x.shape[2] - kz + 1, x.shape[3] - ky + 1, x.shape[4] - kx + 1
        weight = self.weight.detach()[0, 0].tolist()
        bias = 0.0 if self.bias is None else float(self.bias.detach()[0])
        out = input.new_full((input.shape[0], 1, d, h, w), bias)
        for i in range(kz):
            for j in range(ky):
                for k in range(kx):
                    out.add_(x[:, :, i : i + d, j : j + h, k : k + w], alpha=weight[i][j][k])
        return out


class NativeConvTranspose3d(nn.ConvTranspose3d):
    """``ConvTranspose3d(C, 1, ...)`` through PyTorch's own CPU kernel instead of oneDNN's."""

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if not _fast_path(input):
            return super().forward(input, output_size)
        padding = list(cast(tuple[int, ...], self.padding))  # an int tuple: transposed layers take no "same"
        output_padding = self._output_padding(
            input,
            output_size,
            list(self.stride),
            padding,
            list(self.kernel_size),
            3,
            list(self.dilation),
        )
        return torch.ops.aten.slow_conv_transpose3d(
            input.contiguous(),
            self.weight,
            list(self.kernel_size),
            self.bias,
            list(self.stride),
            padding,
            list(output_padding),
            list(self.dilation),
        )


def use_cpu_layers(network: nn.Module) -> dict[str, int]:
    """Switch the eligible layers of ``network`` (in place) to the classes above; return how many of each.

    Only the classes change: parameters, buffers, state-dict keys and the results on non-CPU devices stay as
    they were. Modules that are already switched, or that subclass ``Conv3d`` / ``ConvTranspose3d`` with a
    ``forward`` of their own, are left alone.
    """
    counts = {"shift_add_conv3d": 0, "native_conv_transpose3d": 0}
    for module in network.modules():
        if type(module) is nn.Conv3d and _shift_add_eligible(cast(nn.Conv3d, module)):
            module.__class__ = ShiftAddConv3d
            counts["shift_add_conv3d"] += 1
        elif type(module) is nn.ConvTranspose3d and _native_transpose_eligible(
            cast(nn.ConvTranspose3d, module)
        ):
            module.__class__ = NativeConvTranspose3d
            counts["native_conv_transpose3d"] += 1
    return counts
