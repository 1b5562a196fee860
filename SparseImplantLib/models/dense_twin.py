"""A dense twin of ``CompletionNet`` for benchmarks only: the same layers and channels with
``torch.nn.Conv3d`` / ``ConvTranspose3d`` on the whole grid, and pruning as masking.

It shows what the sparse engine saves (the paper's dense-versus-sparse comparison); it is never used
to design implants. ``copy_from_sparse`` gives it the sparse network's weights so both compute the
same function on occupied voxels.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from .completion import CHANNEL_PRESETS, LEVELS, CompletionNet, classifier_name, decoder_name, encoder_name

GRID_MULTIPLE = 2**LEVELS  # the dense grid must halve cleanly LEVELS times


class _BatchNorm3d(nn.BatchNorm3d):
    """Like the sparse ``BatchNorm``: a single value per channel has no batch statistics, so the
    output is the shift (the 1x1x1 deepest level of a 64^3 grid in training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2:].numel() < 2:
            return x * 0.0 * self.weight.reshape(1, -1, 1, 1, 1) + self.bias.reshape(1, -1, 1, 1, 1)
        return super().forward(x)


def _dense_down_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size=2, stride=2, bias=False), _BatchNorm3d(out_channels), nn.ReLU(),
        nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1, bias=False), _BatchNorm3d(out_channels), nn.ReLU(),
    )


def _dense_up_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose3d(in_channels, out_channels, kernel_size=kernel_size, stride=2, bias=False),
        _BatchNorm3d(out_channels), nn.ReLU(),
        nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1, bias=False), _BatchNorm3d(out_channels), nn.ReLU(),
    )


class DenseCompletionNet(nn.Module):
    """Input (B, 1, X, Y, Z) with X, Y, Z multiples of 64; returns the per-scale logits (coarse to fine)."""

    def __init__(self, channels: Sequence[int] = CHANNEL_PRESETS["ch1"]) -> None:
        super().__init__()
        c = self.channels = tuple(int(v) for v in channels)
        self.encoder = nn.ModuleList([nn.Sequential(nn.Conv3d(1, c[0], 3, padding=1, bias=False), _BatchNorm3d(c[0]), nn.ReLU())])
        self.encoder.extend(_dense_down_block(c[level], c[level + 1]) for level in range(LEVELS))
        self.decoder = nn.ModuleList(
            _dense_up_block(c[level + 1], c[level], 4 if level == LEVELS - 1 else 2) for level in reversed(range(LEVELS))
        )
        self.classifiers = nn.ModuleList(nn.Conv3d(c[level], 1, kernel_size=1) for level in reversed(range(LEVELS)))

    def forward(self, volume: torch.Tensor, targets: Optional[List[torch.Tensor]] = None) -> List[torch.Tensor]:
        """``targets`` (coarse to fine boolean grids) are kept, like the sparse network in training."""
        encoded = [volume]
        for block in self.encoder:
            encoded.append(block(encoded[-1]))
        encoded = encoded[1:]
        decoded, logits = encoded[-1], []
        for step, (block, classifier) in enumerate(zip(self.decoder, self.classifiers)):
            level = LEVELS - 1 - step
            decoded = block(decoded)
            skip = encoded[level]
            decoded = decoded[..., : skip.shape[2], : skip.shape[3], : skip.shape[4]] + skip  # kernel 4 overhangs
            scores = classifier(decoded)
            logits.append(scores)
            keep = scores > 0
            if targets is not None:
                keep = keep | targets[step]
            decoded = decoded * keep  # pruning, densely: zero the dropped voxels (they still cost memory and time)
        return logits


def _dense_kernel(kernel: torch.Tensor, transposed: bool) -> torch.Tensor:
    """(K, in, out), offsets x fastest (MinkowskiEngine) -> Conv3d (out, in, kx, ky, kz) or ConvTranspose3d (in, out, ...)."""
    k = round(kernel.shape[0] ** (1 / 3))
    grid = kernel.reshape(k, k, k, kernel.shape[1], kernel.shape[2])  # [kz, ky, kx, in, out]
    return grid.permute(3, 4, 2, 1, 0) if transposed else grid.permute(4, 3, 2, 1, 0)


def copy_from_sparse(dense: DenseCompletionNet, sparse: CompletionNet) -> DenseCompletionNet:
    """Load the sparse network's weights (and batch-norm statistics) into the twin."""
    def copy_block(target: nn.Sequential, source: nn.Sequential, transposed_first: bool = False) -> None:
        for index, (to_layer, from_layer) in enumerate(zip(target, source)):
            if isinstance(to_layer, (nn.Conv3d, nn.ConvTranspose3d)):
                to_layer.weight.data.copy_(_dense_kernel(from_layer.kernel.data, transposed_first and index == 0))
                if to_layer.bias is not None:
                    to_layer.bias.data.copy_(from_layer.bias.data.reshape(-1))
            elif isinstance(to_layer, _BatchNorm3d):
                to_layer.load_state_dict(from_layer.bn.state_dict())

    copy_block(dense.encoder[0], sparse.enc_block_s1)
    for level in range(LEVELS):
        copy_block(dense.encoder[level + 1], getattr(sparse, encoder_name(level)))
    for step, level in enumerate(reversed(range(LEVELS))):
        copy_block(dense.decoder[step], getattr(sparse, decoder_name(level)), transposed_first=True)
        classifier = getattr(sparse, classifier_name(level))
        dense.classifiers[step].weight.data.copy_(classifier.kernel.data[0].t().reshape(1, -1, 1, 1, 1))
        dense.classifiers[step].bias.data.copy_(classifier.bias.data.reshape(-1))
    return dense
