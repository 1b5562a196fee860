"""Parity of the bundled engine with MinkowskiEngine 0.5.4: same weights, same outputs (<= 1e-5).

Skipped unless MinkowskiEngine imports (build it with Testing/minkowski/build.sh). Rows are compared
after sorting both sides by packed coordinate key, since the engines order voxels differently.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ME = pytest.importorskip("MinkowskiEngine")
pytestmark = pytest.mark.minkowski

from SparseImplantLib.models.completion import CHANNEL_PRESETS, CompletionNet  # noqa: E402
from SparseImplantLib.sparse import (  # noqa: E402
    BatchNorm, Conv3d, GenerativeConvTranspose3d, SparseTensor, pack, prune,
)

sys.path.insert(0, str(Path(__file__).parent / "minkowski"))
from me_completion import MinkowskiCompletionNet  # noqa: E402

TOLERANCE = 1e-5


def random_voxels(count: int = 600, extent: int = 24, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    xyz = torch.unique(torch.randint(0, extent, (count, 3), generator=generator), dim=0)
    return torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], dim=1)


def by_key(coordinates: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(pack(coordinates.long()))
    return coordinates.long()[order], features[order]


def assert_same(ours: SparseTensor, theirs, tolerance: float = TOLERANCE) -> float:
    our_c, our_f = by_key(ours.C, ours.F)
    their_c, their_f = by_key(theirs.C, theirs.F)
    assert torch.equal(our_c, their_c), "different output voxels"
    difference = float((our_f - their_f).abs().max()) if len(our_f) else 0.0
    assert difference <= tolerance, difference
    return difference


def pair(channels: int = 3, seed: int = 0, stride: int = 1):
    coordinates = random_voxels(seed=seed) * stride
    features = torch.randn(len(coordinates), channels, generator=torch.Generator().manual_seed(seed + 1))
    ours = SparseTensor(features.clone().requires_grad_(True), coordinates, tensor_stride=stride)
    theirs = ME.SparseTensor(features.clone().requires_grad_(True), coordinates.int(), tensor_stride=stride)
    return ours, theirs


@pytest.mark.parametrize("kernel_size,stride,bias", [(1, 1, False), (2, 2, True), (3, 1, True), (3, 2, False)])
def test_convolution_and_its_gradients(kernel_size, stride, bias):
    ours_in, theirs_in = pair()
    ours = Conv3d(3, 4, kernel_size=kernel_size, stride=stride, bias=bias)
    theirs = ME.MinkowskiConvolution(3, 4, kernel_size=kernel_size, stride=stride, bias=bias, dimension=3)
    theirs.load_state_dict(ours.state_dict())
    ours_out, theirs_out = ours(ours_in), theirs(theirs_in)
    assert_same(ours_out, theirs_out)
    _, weights = by_key(ours_out.C, torch.arange(len(ours_out), dtype=torch.float32)[:, None].repeat(1, 4))
    (ours_out.F * torch.cos(ours_out.F.detach())).sum().backward()
    (theirs_out.F * torch.cos(theirs_out.F.detach())).sum().backward()
    assert float((ours.kernel.grad - theirs.kernel.grad).abs().max()) <= 1e-4
    _, our_grad = by_key(ours_in.C, ours_in.F.grad)
    _, their_grad = by_key(theirs_in.C, theirs_in.F.grad)
    assert float((our_grad - their_grad).abs().max()) <= TOLERANCE


@pytest.mark.parametrize("kernel_size", [2, 4])
def test_generative_transposed_convolution(kernel_size):
    ours_in, theirs_in = pair(stride=4)
    ours = GenerativeConvTranspose3d(3, 2, kernel_size=kernel_size, stride=2)
    theirs = ME.MinkowskiGenerativeConvolutionTranspose(3, 2, kernel_size=kernel_size, stride=2, dimension=3)
    theirs.load_state_dict(ours.state_dict())
    ours_out, theirs_out = ours(ours_in), theirs(theirs_in)
    assert_same(ours_out, theirs_out)
    ours_out.F.pow(2).sum().backward()
    theirs_out.F.pow(2).sum().backward()
    assert float((ours.kernel.grad - theirs.kernel.grad).abs().max()) <= 1e-4


def test_pruning_batch_norm_and_union_add():
    ours_in, theirs_in = pair(channels=4)
    ours_bn, theirs_bn = BatchNorm(4), ME.MinkowskiBatchNorm(4)
    assert_same(ours_bn(ours_in), theirs_bn(theirs_in))
    keep_ours = (ours_in.C[:, 1:].sum(dim=1) % 3) != 0  # decided by coordinates, so both engines agree
    keep_theirs = (theirs_in.C[:, 1:].long().sum(dim=1) % 3) != 0
    ours_pruned = prune(ours_in, keep_ours)
    theirs_pruned = ME.MinkowskiPruning()(theirs_in, keep_theirs)
    assert_same(ours_pruned, theirs_pruned)
    # Union add of tensors with different voxel sets (the decoder's skip connections).
    conv_ours = Conv3d(4, 4, kernel_size=3)
    conv_theirs = ME.MinkowskiConvolution(4, 4, kernel_size=3, dimension=3)
    conv_theirs.load_state_dict(conv_ours.state_dict())
    assert_same(conv_ours(ours_pruned) + ours_in, conv_theirs(theirs_pruned) + theirs_in)


def test_whole_completion_network_with_the_same_state_dict():
    torch.manual_seed(0)
    ours = CompletionNet(CHANNEL_PRESETS["ch1"]).eval()
    for name, parameter in ours.named_parameters():
        if name.endswith("_cls.bias"):
            parameter.data.fill_(0.5)  # keep voxels at every scale so all layers are compared
    theirs = MinkowskiCompletionNet(CHANNEL_PRESETS["ch1"]).eval()
    theirs.load_state_dict(ours.state_dict())
    coordinates = random_voxels(count=3000, extent=40, seed=3)
    ours_out = ours(SparseTensor(torch.ones(len(coordinates), 1), coordinates))
    theirs_logits, theirs_final = theirs(ME.SparseTensor(torch.ones(len(coordinates), 1), coordinates.int()))
    differences = [assert_same(a, b, tolerance=1e-4) for a, b in zip(ours_out.logits, theirs_logits)]
    assert len(differences) == 6
    if theirs_final is not None:
        assert_same(ours_out.output, theirs_final, tolerance=1e-4)
