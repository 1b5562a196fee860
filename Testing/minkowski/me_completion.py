"""The completion network written with MinkowskiEngine layers: the reference for parity tests and the
network benchmark (never needed at run time).

Same module names as ``SparseImplantLib.models.completion.CompletionNet`` (which follows the authors'
MinkowskiEngine code), so an ME state dict loads into ours unchanged; ME keeps the 1x1x1 classifier
kernels as (in, out), which ``load_ours`` adapts for the other direction.
"""

from __future__ import annotations

from typing import Dict, Optional

import MinkowskiEngine as ME
import torch
from torch import nn

from SparseImplantLib.models.completion import LEVELS, classifier_name, decoder_name, encoder_name


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        ME.MinkowskiConvolution(in_channels, out_channels, kernel_size=2, stride=2, dimension=3),
        ME.MinkowskiBatchNorm(out_channels), ME.MinkowskiReLU(),
        ME.MinkowskiConvolution(out_channels, out_channels, kernel_size=3, dimension=3),
        ME.MinkowskiBatchNorm(out_channels), ME.MinkowskiReLU(),
    )


def _up(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        ME.MinkowskiGenerativeConvolutionTranspose(in_channels, out_channels, kernel_size=kernel_size, stride=2, dimension=3),
        ME.MinkowskiBatchNorm(out_channels), ME.MinkowskiReLU(),
        ME.MinkowskiConvolution(out_channels, out_channels, kernel_size=3, dimension=3),
        ME.MinkowskiBatchNorm(out_channels), ME.MinkowskiReLU(),
    )


class MinkowskiCompletionNet(nn.Module):
    def __init__(self, channels) -> None:
        super().__init__()
        c = list(channels)
        self.enc_block_s1 = nn.Sequential(ME.MinkowskiConvolution(1, c[0], kernel_size=3, dimension=3),
                                          ME.MinkowskiBatchNorm(c[0]), ME.MinkowskiReLU())
        for level in range(LEVELS):
            self.add_module(encoder_name(level), _down(c[level], c[level + 1]))
        for level in reversed(range(LEVELS)):
            self.add_module(decoder_name(level), _up(c[level + 1], c[level], 4 if level == LEVELS - 1 else 2))
            self.add_module(classifier_name(level), ME.MinkowskiConvolution(c[level], 1, kernel_size=1, bias=True, dimension=3))
        self.pruning = ME.MinkowskiPruning()

    def forward(self, partial: ME.SparseTensor, target_coordinates: Optional[torch.Tensor] = None,
                keep_targets: Optional[bool] = None):
        """(per-scale logits coarse to fine, their boolean targets, the pruned stride-1 output), with
        the arguments and pruning rule of ``CompletionNet.forward``."""
        keep_targets = self.training if keep_targets is None else keep_targets
        target_key = None
        if target_coordinates is not None:
            target_key, _ = partial.coordinate_manager.insert_and_map(
                target_coordinates.to(dtype=torch.int32).contiguous(), string_id="target")
        encoded = [self.enc_block_s1(partial)]
        for level in range(LEVELS):
            encoded.append(getattr(self, encoder_name(level))(encoded[-1]))
        decoded, logits, targets = encoded[-1], [], []
        for level in reversed(range(LEVELS)):
            decoded = getattr(self, decoder_name(level))(decoded) + encoded[level]
            scores = getattr(self, classifier_name(level))(decoded)
            logits.append(scores)
            keep = scores.F.reshape(-1) > 0
            if target_key is not None:
                target = _target_mask(decoded, target_key)
                targets.append(target)
                if keep_targets and level > 0:
                    keep = keep | target
            decoded = self.pruning(decoded, keep)
        return logits, targets, decoded


def _target_mask(tensor: ME.SparseTensor, target_key) -> torch.Tensor:
    """(N,) bool: voxels of ``tensor`` whose cell at its stride holds a target voxel."""
    with torch.no_grad():
        mask = torch.zeros(len(tensor), dtype=torch.bool)
        manager = tensor.coordinate_manager
        strided_target = manager.stride(target_key, tensor.tensor_stride[0])
        kernel_map = manager.kernel_map(tensor.coordinate_map_key, strided_target, kernel_size=1)
        for rows in kernel_map.values():
            mask[rows[0].long()] = True
    return mask


def load_ours(network: nn.Module, state: Dict[str, torch.Tensor]) -> nn.Module:
    """Load one of our state dicts into an ME module, reshaping each tensor to the shape ME expects."""
    expected = network.state_dict()
    network.load_state_dict({name: value.reshape(expected[name].shape) for name, value in state.items()})
    return network
