"""Layers on sparse tensors with MinkowskiEngine semantics and parameter layout.

Convolutions gather the input rows of each kernel offset, multiply them by that offset's
``(in, out)`` weight and scatter-add them into the output rows (``index_add_``). Their backward pass
is written out (``_GatherGemmScatter``) so that training keeps only the input features and the kernel
map, as MinkowskiEngine does, not every offset's gathered copy. Parameters are named and shaped as in
MinkowskiEngine (``kernel``: ``(kernel_volume, in, out)``, ``bias``: ``(1, out)``, batch norm as
``bn``) so its state dicts load.
"""

from __future__ import annotations

import math
from typing import Iterable, Tuple

import torch
from torch import nn

from .tensor import SparseTensor


def _gather_gemm_scatter(features: torch.Tensor, kernel: torch.Tensor, kernel_map: Iterable[Tuple[torch.Tensor, torch.Tensor]],
                         out_rows_count: int) -> torch.Tensor:
    """output[out_rows[k]] += features[in_rows[k]] @ kernel[k], summed over kernel offsets k in order."""
    output = features.new_zeros(out_rows_count, kernel.shape[2])
    for (in_rows, out_rows), weight in zip(kernel_map, kernel):
        output.index_add_(0, out_rows, features.index_select(0, in_rows) @ weight)
    return output


class _GatherGemmScatter(torch.autograd.Function):
    """``_gather_gemm_scatter`` with a backward pass that keeps only the features, kernel and map."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, kernel: torch.Tensor, kernel_map, out_rows_count: int) -> torch.Tensor:
        output = _gather_gemm_scatter(features, kernel, kernel_map, out_rows_count)
        ctx.save_for_backward(features, kernel)
        ctx.kernel_map = kernel_map
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        features, kernel = ctx.saved_tensors
        grad_features = torch.zeros_like(features) if ctx.needs_input_grad[0] else None
        grad_kernel = torch.zeros_like(kernel) if ctx.needs_input_grad[1] else None
        for k, ((in_rows, out_rows), weight) in enumerate(zip(ctx.kernel_map, kernel)):
            grad_rows = grad_output.index_select(0, out_rows)
            if grad_kernel is not None:
                grad_kernel[k] = features.index_select(0, in_rows).T @ grad_rows
            if grad_features is not None:
                grad_features.index_add_(0, in_rows, grad_rows @ weight.T)
        return grad_features, grad_kernel, None, None


class _Convolution(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool, transposed: bool) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.kernel = nn.Parameter(torch.empty(kernel_size**3, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(1, out_channels)) if bias else None
        # MinkowskiEngine's initialisation: uniform in +-1/sqrt(fan), fan over the kernel volume.
        fan = (out_channels if transposed else in_channels) * kernel_size**3
        bound = 1.0 / math.sqrt(fan)
        nn.init.uniform_(self.kernel, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # MinkowskiEngine stores a 1x1x1 kernel as (in, out), without the kernel-volume axis: accept it.
        kernel = state_dict.get(prefix + "kernel")
        if kernel is not None and kernel.dim() == 2 and self.kernel.shape[0] == 1:
            state_dict[prefix + "kernel"] = kernel.unsqueeze(0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _scatter(self, x: SparseTensor, kernel_map, out_rows_count: int) -> torch.Tensor:
        return _GatherGemmScatter.apply(x.F, self.kernel, kernel_map, out_rows_count)

    def _finish(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.bias if self.bias is not None else features

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, bias={self.bias is not None}"


class Conv3d(_Convolution):
    """Sparse convolution: stride 1 keeps the voxels, stride s maps them to ``floor(c / (ts*s)) * ts*s``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, transposed=False)

    def forward(self, x: SparseTensor) -> SparseTensor:
        out_stride = x.tensor_stride * self.stride
        manager = x.coordinate_manager
        outputs = x.coordinate_set if self.stride == 1 else manager.strided(x.coordinate_set, out_stride)
        if self.kernel_size == 1 and self.stride == 1:
            features = x.F @ self.kernel[0]
        elif manager.cache_maps or torch.is_grad_enabled():
            kernel_map = manager.convolution_map(x.coordinate_set, outputs, self.kernel_size, x.tensor_stride)
            features = self._scatter(x, kernel_map, len(outputs))
        else:  # inference without a map cache: each offset's pairs are built, used and dropped
            pairs = manager.convolution_pairs(x.coordinate_set, outputs, self.kernel_size, x.tensor_stride)
            features = _gather_gemm_scatter(x.F, self.kernel, pairs, len(outputs))
        return SparseTensor(self._finish(features), tensor_stride=out_stride, coordinate_manager=manager, coordinate_set=outputs)


class GenerativeConvTranspose3d(_Convolution):
    """Transposed convolution that creates its output voxels: every input voxel writes to
    ``input + offset`` at the finer stride, for every kernel offset."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, transposed=True)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.tensor_stride % self.stride:
            raise ValueError(f"tensor stride {x.tensor_stride} cannot be divided by the transposed stride {self.stride}")
        out_stride = x.tensor_stride // self.stride
        outputs, kernel_map = x.coordinate_manager.generative_transposed(x.coordinate_set, self.kernel_size, out_stride)
        features = self._scatter(x, kernel_map, len(outputs))
        return SparseTensor(self._finish(features), tensor_stride=out_stride, coordinate_manager=x.coordinate_manager,
                            coordinate_set=outputs)


class BatchNorm(nn.Module):
    """Batch norm over the active voxels (``bn`` is a ``BatchNorm1d``, as in MinkowskiEngine)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.training and len(x) < 2:
            # Fewer than two voxels have no batch statistics: (x - mean) is 0, so the output is the shift.
            return x.replace_features(x.F * 0.0 * self.bn.weight + self.bn.bias)
        return x.replace_features(self.bn(x.F))


class ReLU(nn.Module):
    """ReLU of the features; the voxels stay (MinkowskiEngine's ``MinkowskiReLU``)."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_features(torch.relu(x.F))


def prune(x: SparseTensor, keep: torch.Tensor) -> SparseTensor:
    """The voxels where ``keep`` (N,) is true, in their order."""
    keep = keep.reshape(-1).to(device=x.device, dtype=torch.bool)
    if len(keep) != len(x):
        raise ValueError(f"keep mask has {len(keep)} entries for {len(x)} voxels")
    return SparseTensor(x.F[keep], tensor_stride=x.tensor_stride, coordinate_manager=x.coordinate_manager,
                        coordinate_set=x.coordinate_set.subset(keep))
