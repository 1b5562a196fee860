"""Parity of the bundled engine with MinkowskiEngine 0.5.4: same weights, same outputs (<= 1e-5).

Weights always travel from ME into ours (``ours.load_state_dict(theirs.state_dict())``), the direction
that matters for the authors' checkpoints. Skipped unless MinkowskiEngine imports (build it with
Testing/minkowski/build.sh). Rows are compared after sorting both sides by packed coordinate key, since
the engines order voxels differently. Kernel gradients sum thousands of float32 products in a different
order, so they are compared relative to their magnitude; in float64 everything agrees to ~1e-13.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ME = pytest.importorskip("MinkowskiEngine")
pytestmark = pytest.mark.minkowski

from SparseImplantLib.models.completion import CHANNEL_PRESETS, CompletionNet, completion_loss  # noqa: E402
from SparseImplantLib.sparse import (  # noqa: E402
    BatchNorm, Conv3d, GenerativeConvTranspose3d, SparseTensor, pack, prune,
)

sys.path.insert(0, str(Path(__file__).parent / "minkowski"))
from me_completion import MinkowskiCompletionNet  # noqa: E402

TOLERANCE = 1e-5
DTYPES = [torch.float32, torch.float64]


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


def assert_same_kernel_gradient(ours, theirs) -> None:
    """ME keeps a kernel-volume-1 kernel as (in, out), we keep (1, in, out)."""
    their_grad = theirs.kernel.grad.reshape(ours.kernel.grad.shape)
    scale = float(their_grad.abs().max())
    assert float((ours.kernel.grad - their_grad).abs().max()) <= TOLERANCE * max(scale, 1.0)


def pair(channels: int = 3, seed: int = 0, stride: int = 1, dtype: torch.dtype = torch.float32):
    coordinates = random_voxels(seed=seed) * stride
    generator = torch.Generator().manual_seed(seed + 1)
    features = torch.randn(len(coordinates), channels, generator=generator, dtype=dtype)
    our_leaf, their_leaf = features.clone().requires_grad_(True), features.clone().requires_grad_(True)
    ours = SparseTensor(our_leaf, coordinates, tensor_stride=stride)
    theirs = ME.SparseTensor(their_leaf, coordinates.int(), tensor_stride=stride)
    return ours, theirs, our_leaf, their_leaf


def assert_same_input_gradient(our_leaf: torch.Tensor, their_leaf: torch.Tensor) -> None:
    """Both engines received the same rows in the same order, so the leaves' gradients align."""
    assert float((our_leaf.grad - their_leaf.grad).abs().max()) <= TOLERANCE


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_size,stride,bias", [(1, 1, False), (1, 1, True), (2, 2, True), (3, 1, True), (3, 2, False)])
def test_convolution_and_its_gradients(kernel_size, stride, bias, dtype):
    ours_in, theirs_in, our_leaf, their_leaf = pair(dtype=dtype)
    theirs = ME.MinkowskiConvolution(3, 4, kernel_size=kernel_size, stride=stride, bias=bias, dimension=3).to(dtype)
    ours = Conv3d(3, 4, kernel_size=kernel_size, stride=stride, bias=bias).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    ours_out, theirs_out = ours(ours_in), theirs(theirs_in)
    assert_same(ours_out, theirs_out)
    (ours_out.F * torch.cos(ours_out.F.detach())).sum().backward()
    (theirs_out.F * torch.cos(theirs_out.F.detach())).sum().backward()
    assert_same_kernel_gradient(ours, theirs)
    assert_same_input_gradient(our_leaf, their_leaf)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_size", [2, 4])
def test_generative_transposed_convolution(kernel_size, dtype):
    ours_in, theirs_in, our_leaf, their_leaf = pair(stride=4, dtype=dtype)
    theirs = ME.MinkowskiGenerativeConvolutionTranspose(3, 2, kernel_size=kernel_size, stride=2, dimension=3).to(dtype)
    ours = GenerativeConvTranspose3d(3, 2, kernel_size=kernel_size, stride=2).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    ours_out, theirs_out = ours(ours_in), theirs(theirs_in)
    assert_same(ours_out, theirs_out)
    ours_out.F.pow(2).sum().backward()
    theirs_out.F.pow(2).sum().backward()
    assert_same_kernel_gradient(ours, theirs)
    assert_same_input_gradient(our_leaf, their_leaf)


def test_pruning_batch_norm_and_union_add():
    ours_in, theirs_in, _, _ = pair(channels=4)
    ours_bn, theirs_bn = BatchNorm(4), ME.MinkowskiBatchNorm(4)
    assert_same(ours_bn(ours_in), theirs_bn(theirs_in))
    keep_ours = (ours_in.C[:, 1:].sum(dim=1) % 3) != 0  # decided by coordinates, so both engines agree
    keep_theirs = (theirs_in.C[:, 1:].long().sum(dim=1) % 3) != 0
    ours_pruned = prune(ours_in, keep_ours)
    theirs_pruned = ME.MinkowskiPruning()(theirs_in, keep_theirs)
    assert_same(ours_pruned, theirs_pruned)
    # Union add of tensors with different voxel sets (the decoder's skip connections).
    conv_theirs = ME.MinkowskiConvolution(4, 4, kernel_size=3, dimension=3)
    conv_ours = Conv3d(4, 4, kernel_size=3)
    conv_ours.load_state_dict(conv_theirs.state_dict())
    assert_same(conv_ours(ours_pruned) + ours_in, conv_theirs(theirs_pruned) + theirs_in)


def test_whole_completion_network_with_the_same_state_dict():
    torch.manual_seed(0)
    theirs = MinkowskiCompletionNet(CHANNEL_PRESETS["ch1"]).eval()
    for name, parameter in theirs.named_parameters():
        if name.endswith("_cls.bias"):
            parameter.data.fill_(0.5)  # keep voxels at every scale so all layers are compared
    ours = CompletionNet(CHANNEL_PRESETS["ch1"]).eval()
    ours.load_state_dict(theirs.state_dict())  # an ME checkpoint loads unchanged
    coordinates = random_voxels(count=3000, extent=40, seed=3)
    ours_out = ours(SparseTensor(torch.ones(len(coordinates), 1), coordinates))
    theirs_logits, _, theirs_final = theirs(ME.SparseTensor(torch.ones(len(coordinates), 1), coordinates.int()))
    differences = [assert_same(a, b, tolerance=1e-4) for a, b in zip(ours_out.logits, theirs_logits)]
    assert len(differences) == 6
    if theirs_final is not None:
        assert_same(ours_out.output, theirs_final, tolerance=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_whole_network_training_step(dtype):
    """One training step (batch statistics, targets kept, the paper's loss): same logits and loss in
    float32 and float64; the same gradient for every parameter in float64 (1e-10 relative: the same
    maths). float32 gradients are not compared: batch statistics amplify summation-order rounding
    backwards through 13 batch norms, to percent level in a few small-gradient layers, and differently
    from run to run on more than one thread (in either engine)."""
    torch.manual_seed(0)
    theirs = MinkowskiCompletionNet(CHANNEL_PRESETS["ch1"]).to(dtype).train()
    for name, parameter in theirs.named_parameters():
        if name.endswith("_cls.bias"):
            parameter.data.fill_(-1e4)  # keep exactly the targets, so both sides prune alike
    ours = CompletionNet(CHANNEL_PRESETS["ch1"]).to(dtype).train()
    ours.load_state_dict(theirs.state_dict())
    coordinates = random_voxels(count=4000, extent=160, seed=5)  # >1 voxel at stride 64 (ME's batch norm needs 2)
    target = random_voxels(count=6000, extent=160, seed=6)
    ours_out = ours(SparseTensor(torch.ones(len(coordinates), 1, dtype=dtype), coordinates), target)
    our_loss = completion_loss(ours_out)
    their_logits, their_targets, _ = theirs(ME.SparseTensor(torch.ones(len(coordinates), 1, dtype=dtype), coordinates.int()), target)
    their_loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(logits.F.reshape(-1), mask.to(dtype))
                     for logits, mask in zip(their_logits, their_targets) if len(mask))
    for a, b in zip(ours_out.logits, their_logits):
        assert_same(a, b, tolerance=1e-3 if dtype == torch.float32 else 1e-10)
    assert abs(float(our_loss) - float(their_loss)) <= 1e-5 * abs(float(their_loss))
    if dtype != torch.float64:
        return
    our_loss.backward()
    their_loss.backward()
    theirs_parameters = dict(theirs.named_parameters())
    for name, parameter in ours.named_parameters():
        their_grad = theirs_parameters[name].grad.reshape(parameter.grad.shape)
        scale = max(float(their_grad.abs().max()), 1e-12)
        assert float((parameter.grad - their_grad).abs().max()) <= 1e-10 * scale, name
