"""The completion network written with MinkowskiEngine layers (reference for parity tests only).

Same module names and shapes as ``SparseImplantLib.models.completion.CompletionNet`` (which follows
the authors' MinkowskiEngine code), so ``load_state_dict`` of our weights works unchanged.
"""

from __future__ import annotations

import MinkowskiEngine as ME
import torch
from torch import nn

LEVELS = 6


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
            self.add_module(f"enc_block_s{2 ** level}s{2 ** (level + 1)}", _down(c[level], c[level + 1]))
        for level in reversed(range(LEVELS)):
            self.add_module(f"dec_block_s{2 ** (level + 1)}s{2 ** level}", _up(c[level + 1], c[level], 4 if level == LEVELS - 1 else 2))
            self.add_module(f"dec_s{2 ** level}_cls", ME.MinkowskiConvolution(c[level], 1, kernel_size=1, bias=True, dimension=3))
        self.pruning = ME.MinkowskiPruning()

    def forward(self, partial: ME.SparseTensor):
        """Eval-mode completion: per-scale logits (coarse to fine) and the final pruned tensor."""
        encoded = [self.enc_block_s1(partial)]
        for level in range(LEVELS):
            encoded.append(getattr(self, f"enc_block_s{2 ** level}s{2 ** (level + 1)}")(encoded[-1]))
        decoded, logits = encoded[-1], []
        for level in reversed(range(LEVELS)):
            decoded = getattr(self, f"dec_block_s{2 ** (level + 1)}s{2 ** level}")(decoded) + encoded[level]
            scores = getattr(self, f"dec_s{2 ** level}_cls")(decoded)
            logits.append(scores)
            keep = (scores.F > 0).squeeze(1)
            if keep.sum() == 0:
                return logits, None
            decoded = self.pruning(decoded, keep)
        return logits, decoded
