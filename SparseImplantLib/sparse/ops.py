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
    """Sparse convolution: stride 1 keeps the voxels, stride s maps them to ``floor(c / (ts*s)) * ts*s``.

    MinkowskiEngine's ``MinkowskiConvolution`` (dimension 3, no coordinate expansion): output voxel j
    gets ``sum_k F[i] @ kernel[k]`` over the offsets o_k of ``kernel_offsets(kernel_size, ts)``
    (x fastest; centred for odd k, ``[0, k) * ts`` for even) and the input voxels i at ``j + o_k``,
    plus ``bias``; ts is the input's tensor stride.

    Args:
        in_channels (int): C_in, input feature channels.
        out_channels (int): C_out, output feature channels.
        kernel_size (int): k along each axis (kernel volume k**3).
        stride (int): the output tensor stride is ``ts * stride``. Default 1.
        bias (bool): add a learned ``(1, C_out)`` bias. Default False, as MinkowskiEngine.

    Attributes:
        kernel (nn.Parameter): ``(k**3, C_in, C_out)``, row k for offset row k; initialised uniform
            in ``+-1/sqrt(C_in * k**3)`` as MinkowskiEngine. A 1x1x1 kernel saved by MinkowskiEngine
            as ``(C_in, C_out)`` loads too.
        bias (nn.Parameter or None): ``(1, C_out)``, same initialisation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, transposed=False)

    def forward(self, x: SparseTensor) -> SparseTensor:
        """Convolve ``x``.

        Args:
            x (SparseTensor): (N, C_in) features at tensor stride ts.

        Returns:
            SparseTensor: (M, C_out) features at stride ``ts * stride`` with ``x``'s coordinate manager.
            Stride 1: ``x``'s own coordinate set (M = N, same rows). Otherwise the distinct voxels
            ``floor(c / (ts*stride)) * ts*stride`` of ``x``, keys ascending. A 1x1x1 kernel at stride 1
            is a plain ``F @ kernel[0]``; without a map cache and without gradients the map is built
            and dropped one offset at a time.

        Raises:
            ValueError: an output voxel plus a kernel offset leaves the packable coordinate range.
        """
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
    ``input + offset`` at the finer stride, for every kernel offset.

    MinkowskiEngine's ``MinkowskiGenerativeConvolutionTranspose`` (dimension 3): with output stride
    ``ts_out = ts / stride`` and offsets o_k of ``kernel_offsets(kernel_size, ts_out)`` (x fastest;
    centred for odd k, ``[0, k) * ts_out`` for even), input voxel i adds ``F[i] @ kernel[k]`` to voxel
    ``c_i + o_k``; contributions meeting on one voxel are summed, then ``bias`` is added.

    Args:
        in_channels (int): C_in, input feature channels.
        out_channels (int): C_out, output feature channels.
        kernel_size (int): k along each axis (kernel volume k**3).
        stride (int): the factor the tensor stride is divided by (no default).
        bias (bool): add a learned ``(1, C_out)`` bias. Default False, as MinkowskiEngine.

    Attributes:
        kernel (nn.Parameter): ``(k**3, C_in, C_out)``, row k for offset row k; initialised uniform
            in ``+-1/sqrt(C_out * k**3)`` as MinkowskiEngine does for transposed convolutions.
        bias (nn.Parameter or None): ``(1, C_out)``, same initialisation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, transposed=True)

    def forward(self, x: SparseTensor) -> SparseTensor:
        """Grow and up-sample ``x``.

        Args:
            x (SparseTensor): (N, C_in) features at tensor stride ts, a multiple of ``stride``.

        Returns:
            SparseTensor: (M, C_out) features at stride ``ts // stride`` on the distinct voxels
            ``c_i + o_k`` (keys ascending, M <= N * k**3), with ``x``'s coordinate manager.

        Raises:
            ValueError: ts is not divisible by ``stride``, or a generated voxel leaves the packable
                coordinate range.
        """
        if x.tensor_stride % self.stride:
            raise ValueError(f"tensor stride {x.tensor_stride} cannot be divided by the transposed stride {self.stride}")
        out_stride = x.tensor_stride // self.stride
        outputs, kernel_map = x.coordinate_manager.generative_transposed(x.coordinate_set, self.kernel_size, out_stride)
        features = self._scatter(x, kernel_map, len(outputs))
        return SparseTensor(self._finish(features), tensor_stride=out_stride, coordinate_manager=x.coordinate_manager,
                            coordinate_set=outputs)


class BatchNorm(nn.Module):
    """Batch norm over the active voxels (``bn`` is a ``BatchNorm1d``, as in MinkowskiEngine).

    Args:
        num_features (int): C, the feature channels.
        eps (float): added to the variance. Default 1e-5.
        momentum (float): running-statistics update factor. Default 0.1.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:
        """Normalise ``x``'s features.

        Args:
            x (SparseTensor): (N, C) features; the statistics are taken over all N voxels of all
                batch items together (running statistics in eval mode).

        Returns:
            SparseTensor: (N, C) on ``x``'s voxels. In training with N < 2 every row is ``bn.bias``
            and the running statistics are not updated.
        """
        if self.training and len(x) < 2:
            # Fewer than two voxels have no batch statistics: (x - mean) is 0, so the output is the shift.
            return x.replace_features(x.F * 0.0 * self.bn.weight + self.bn.bias)
        return x.replace_features(self.bn(x.F))


class ReLU(nn.Module):
    """ReLU of the features; the voxels stay (MinkowskiEngine's ``MinkowskiReLU``)."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        """Apply ReLU to ``x``'s features.

        Args:
            x (SparseTensor): (N, C) features.

        Returns:
            SparseTensor: (N, C) ``relu(x.F)`` on ``x``'s coordinate set.
        """
        return x.replace_features(torch.relu(x.F))


def prune(x: SparseTensor, keep: torch.Tensor) -> SparseTensor:
    """The voxels where ``keep`` (N,) is true, in their order.

    MinkowskiEngine's ``MinkowskiPruning``.

    Args:
        x (SparseTensor): (N, C) features.
        keep (torch.Tensor): N entries in any shape (flattened), cast to bool on ``x``'s device.

    Returns:
        SparseTensor: (M, C) with M the number kept, at ``x``'s stride and with its coordinate
        manager, on a new ``CoordinateSet`` (so no kernel map is shared with ``x``).

    Raises:
        ValueError: ``keep`` does not have N entries.
    """
    keep = keep.reshape(-1).to(device=x.device, dtype=torch.bool)
    if len(keep) != len(x):
        raise ValueError(f"keep mask has {len(keep)} entries for {len(x)} voxels")
    return SparseTensor(x.F[keep], tensor_stride=x.tensor_stride, coordinate_manager=x.coordinate_manager,
                        coordinate_set=x.coordinate_set.subset(keep))
