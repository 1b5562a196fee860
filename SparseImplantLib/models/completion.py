"""The sparse skull-completion network of Li et al. (Sci Rep 2023), built on the bundled engine.

Its layout and ``state_dict`` keys follow MinkowskiEngine's ``examples/completion.py`` that the authors'
code builds on (``enc_block_s1``, ``enc_block_s1s2`` ... ``dec_block_s2s1``, ``dec_s32_cls`` ...
``dec_s1_cls``), so a checkpoint of the authors' MinkowskiEngine network loads unchanged. The
decoder generates new voxels with transposed convolutions and prunes them with a classifier at every
scale; the voxels that survive the last (stride-1) classifier form the completed skull.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
from torch import nn

from ..sparse import (
    BatchNorm,
    Conv3d,
    GenerativeConvTranspose3d,
    ReLU,
    SparseTensor,
    prune,
    target_mask,
)

CHANNEL_PRESETS = {
    "ch1": (8, 8, 16, 16, 32, 32, 64),
    "ch2": (22, 32, 32, 128, 156, 256, 388),
}
LEVELS = 6  # down-sampling steps: the deepest tensor has stride 2**LEVELS = 64


# Layer names of MinkowskiEngine's completion example, which the authors' checkpoints carry; the dense
# twin and the MinkowskiEngine twin find their counterparts by the same names.
def encoder_name(level: int) -> str:
    """The block down-sampling stride 2**level to 2**(level + 1)."""
    return f"enc_block_s{2 ** level}s{2 ** (level + 1)}"


def decoder_name(level: int) -> str:
    """The block up-sampling stride 2**(level + 1) to 2**level."""
    return f"dec_block_s{2 ** (level + 1)}s{2 ** level}"


def classifier_name(level: int) -> str:
    """The classifier that prunes the voxels at stride 2**level."""
    return f"dec_s{2 ** level}_cls"


def _down_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        Conv3d(in_channels, out_channels, kernel_size=2, stride=2),
        BatchNorm(out_channels),
        ReLU(),
        Conv3d(out_channels, out_channels, kernel_size=3),
        BatchNorm(out_channels),
        ReLU(),
    )


def _up_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        GenerativeConvTranspose3d(in_channels, out_channels, kernel_size=kernel_size, stride=2),
        BatchNorm(out_channels),
        ReLU(),
        Conv3d(out_channels, out_channels, kernel_size=3),
        BatchNorm(out_channels),
        ReLU(),
    )


@dataclass
class CompletionOutput:
    """Per-scale classifier logits (coarse to fine), their targets when a target was given, and the
    final sparse tensor whose coordinates are the predicted skull voxels."""

    logits: List[SparseTensor] = field(default_factory=list)
    targets: List[torch.Tensor] = field(default_factory=list)
    output: Optional[SparseTensor] = None


class CompletionNet(nn.Module):
    """Encoder-decoder over sparse voxels; ``channels`` lists the width at strides 1, 2, ..., 64;
    ``in_channels`` is 1 for completion (the defective skull) and 2 for super-resolution (``superres``)."""

    def __init__(self, channels: Sequence[int] = CHANNEL_PRESETS["ch1"], in_channels: int = 1) -> None:
        super().__init__()
        if len(channels) != LEVELS + 1:
            raise ValueError(f"channels needs {LEVELS + 1} entries (strides 1..64), got {len(channels)}")
        self.channels = tuple(int(c) for c in channels)
        self.in_channels = int(in_channels)
        # A voxel survives a scale's classifier when its logit exceeds this (0: probability 0.5). A model's
        # registry entry may lower it when validation shows the network prunes too eagerly.
        self.keep_logit = 0.0
        c = self.channels
        self.enc_block_s1 = nn.Sequential(Conv3d(self.in_channels, c[0], kernel_size=3), BatchNorm(c[0]), ReLU())
        for level in range(LEVELS):
            self.add_module(encoder_name(level), _down_block(c[level], c[level + 1]))
        for level in reversed(range(LEVELS)):
            # The deepest up block uses kernel 4 so the coarsest voxels can grow beyond their cell.
            kernel_size = 4 if level == LEVELS - 1 else 2
            self.add_module(decoder_name(level), _up_block(c[level + 1], c[level], kernel_size))
            self.add_module(classifier_name(level), Conv3d(c[level], 1, kernel_size=1, bias=True))

    def forward(self, partial: SparseTensor, target_coordinates: Optional[torch.Tensor] = None,
                keep_targets: Optional[bool] = None) -> CompletionOutput:
        """Complete ``partial`` (features: ones). ``target_coordinates`` (M, 4), the complete skull at
        stride 1, gives each scale's classification target; the target voxels are also kept at every
        scale but the last when ``keep_targets`` (default: in training), so the decoder learns from
        the right places (benchmarks use it in eval mode for a converged network's workload)."""
        keep_targets = self.training if keep_targets is None else keep_targets
        encoded = [self.enc_block_s1(partial)]
        for level in range(LEVELS):
            encoded.append(getattr(self, encoder_name(level))(encoded[-1]))

        result = CompletionOutput()
        decoded = encoded[-1]
        for level in reversed(range(LEVELS)):
            decoded = getattr(self, decoder_name(level))(decoded)
            decoded = decoded + encoded[level]
            logits = getattr(self, classifier_name(level))(decoded)
            keep = logits.F.reshape(-1) > self.keep_logit
            if target_coordinates is not None:
                target = target_mask(logits, target_coordinates)
                result.targets.append(target)
                if keep_targets and level > 0:
                    keep = keep | target
            result.logits.append(logits)
            decoded = prune(decoded, keep)
        result.output = decoded
        return result


def completion_loss(result: CompletionOutput) -> torch.Tensor:
    """The paper's loss: sum over scales of the binary cross-entropy of each classifier."""
    if not result.targets:
        raise ValueError("the forward pass was run without target coordinates")
    # Start from 0 * logits so the loss stays in the graph even when every scale is empty.
    loss = sum(logits.F.sum() * 0.0 for logits in result.logits)
    for logits, target in zip(result.logits, result.targets):
        if len(target):
            loss = loss + nn.functional.binary_cross_entropy_with_logits(logits.F.reshape(-1), target.to(logits.F.dtype))
    return loss
