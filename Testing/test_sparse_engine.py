"""The bundled sparse engine against dense PyTorch (same maths on occupied sites) and its edge cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from SparseImplantLib.sparse import (
    BatchNorm, Conv3d, GenerativeConvTranspose3d, ReLU, SparseTensor, from_mask, pack, prune, target_mask, to_dense, unpack,
)
from SparseImplantLib.sparse.halo_table import HALO_TABLE_MIN_VOXELS, halo_table_for
from SparseImplantLib.sparse.kernel_map import CoordinateManager, kernel_offsets
from SparseImplantLib.sparse.keys import CoordinateSet


def dense_weight(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """(K, in, out) in MinkowskiEngine offset order (x fastest) -> conv3d's (out, in, kx, ky, kz)."""
    return kernel.reshape(k, k, k, kernel.shape[1], kernel.shape[2]).permute(4, 3, 2, 1, 0)


def random_tensor(shape=(9, 8, 7), density=0.4, channels=3, seed=0, full=False):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(shape, dtype=torch.bool) if full else torch.rand(shape, generator=generator) < density
    x = from_mask(mask)
    features = torch.randn(len(x), channels, generator=generator, requires_grad=True)
    return x.replace_features(features), mask


@pytest.mark.parametrize("full", [True, False])
def test_stride1_conv_equals_conv3d_at_active_sites(full):
    torch.manual_seed(0)
    x, mask = random_tensor(full=full)
    conv = Conv3d(3, 5, kernel_size=3, bias=True)
    out = conv(x)
    dense_in = to_dense(x, mask.shape)
    expected = F.conv3d(dense_in, dense_weight(conv.kernel, 3), conv.bias.reshape(-1), padding=1)
    actual = to_dense(out, mask.shape)
    torch.testing.assert_close(actual[:, :, mask], expected[:, :, mask], rtol=1e-5, atol=1e-5)
    # Gradients agree too.
    upstream = torch.randn_like(out.F)
    grads = torch.autograd.grad((out.F * upstream).sum(), [x.F, conv.kernel])
    x_dense = dense_in.detach().requires_grad_(True)
    weight = dense_weight(conv.kernel.detach(), 3).requires_grad_(True)
    dense_out = F.conv3d(x_dense, weight, padding=1)
    upstream_dense = to_dense(out.replace_features(upstream), mask.shape).detach()
    dense_grads = torch.autograd.grad((dense_out * upstream_dense).sum(), [x_dense, weight])
    torch.testing.assert_close(grads[0], dense_grads[0][0][:, mask].T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dense_weight(grads[1], 3), dense_grads[1], rtol=1e-4, atol=1e-4)


def test_stride2_kernel2_conv_equals_strided_conv3d():
    x, mask = random_tensor(shape=(8, 6, 4), full=True)
    conv = Conv3d(3, 4, kernel_size=2, stride=2)
    out = conv(x)
    assert out.tensor_stride == 2 and len(out) == 4 * 3 * 2
    expected = F.conv3d(to_dense(x, mask.shape), dense_weight(conv.kernel, 2), stride=2)
    torch.testing.assert_close(to_dense(out, (4, 3, 2)), expected, rtol=1e-5, atol=1e-5)


def test_generative_transposed_kernel2_equals_conv_transpose3d():
    x, mask = random_tensor(shape=(8, 6, 4), full=True)
    down = Conv3d(3, 3, kernel_size=2, stride=2)(x)
    up = GenerativeConvTranspose3d(3, 2, kernel_size=2, stride=2)
    out = up(down)
    assert out.tensor_stride == 1 and len(out) == 8 * 6 * 4
    weight = up.kernel.reshape(2, 2, 2, 3, 2).permute(3, 4, 2, 1, 0)  # (in, out, kx, ky, kz)
    expected = F.conv_transpose3d(to_dense(down, (4, 3, 2)), weight, stride=2)
    torch.testing.assert_close(to_dense(out, mask.shape), expected, rtol=1e-5, atol=1e-5)


def test_generative_kernel4_grows_beyond_the_cell():
    x = SparseTensor(torch.ones(1, 1), torch.tensor([[0, 8, 8, 8]]), tensor_stride=4)
    out = GenerativeConvTranspose3d(1, 1, kernel_size=4, stride=2)(x)
    assert out.tensor_stride == 2 and len(out) == 64
    assert out.C[:, 1:].min() == 8 and out.C[:, 1:].max() == 8 + 3 * 2


def test_strided_output_coordinates_follow_minkowski():
    coordinates = torch.tensor([[0, 5, 3, 1], [0, 7, 2, 0], [0, -3, 0, 0]])
    x = SparseTensor(torch.ones(3, 1), coordinates, tensor_stride=1)
    out = Conv3d(1, 1, kernel_size=2, stride=2)(x)
    assert sorted(map(tuple, out.C.tolist())) == [(0, -4, 0, 0), (0, 4, 2, 0), (0, 6, 2, 0)]
    out3 = Conv3d(1, 1, kernel_size=3, stride=3)(x)  # not a power of two: floored on coordinates
    assert sorted(map(tuple, out3.C.tolist())) == [(0, -3, 0, 0), (0, 3, 3, 0), (0, 6, 0, 0)]


def test_kernel_maps_are_cached_per_coordinates():
    x, _ = random_tensor()
    conv_a, conv_b = Conv3d(3, 3, 3), Conv3d(3, 3, 3)
    conv_a(x)
    maps_before = dict(x.coordinate_manager._maps)
    conv_b(x)
    assert x.coordinate_manager._maps.keys() == maps_before.keys()
    key = next(iter(maps_before))
    assert x.coordinate_manager.convolution_map(x.coordinate_set, x.coordinate_set, 3, 1) is maps_before[key]


@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (2, 2), (3, 2)])
def test_convolution_without_map_cache_gives_the_same_result_and_keeps_no_map(kernel_size, stride):
    cached, mask = random_tensor()
    streamed = from_mask(mask, cache_maps=False).replace_features(cached.F)
    conv = Conv3d(3, 4, kernel_size=kernel_size, stride=stride, bias=True)
    with torch.no_grad():
        expected, actual = conv(cached), conv(streamed)  # offset by offset, in the same order
    # Derived voxel sets keep only their keys until someone asks for coordinates.
    assert all(voxels._coordinates is None for voxels in streamed.coordinate_manager._strided.values())
    assert torch.equal(actual.C, expected.C) and torch.equal(actual.F, expected.F)
    assert not streamed.coordinate_manager._maps and cached.coordinate_manager._maps
    trained = conv(streamed)  # with autograd the whole map is built (backward needs it), still not cached
    assert torch.equal(trained.F, expected.F) and not streamed.coordinate_manager._maps
    trained.F.sum().backward()
    assert conv.kernel.grad is not None


@pytest.mark.parametrize("kernel_size,unit", [(3, 1), (2, 1), (5, 1), (3, 2), (3, 4)])
def test_halo_table_map_equals_sorted_key_search(kernel_size, unit):
    generator = torch.Generator().manual_seed(kernel_size * unit)
    batch = torch.randint(0, 2, (4000, 1), generator=generator)
    spatial = torch.randint(-12, 13, (4000, 3), generator=generator) * unit  # many 8^3 blocks, negatives
    coordinates = torch.unique(torch.cat([batch, spatial], 1), dim=0)
    voxels = CoordinateSet(coordinates[torch.randperm(len(coordinates), generator=generator)])
    offsets = kernel_offsets(kernel_size, unit, torch.device("cpu"))
    assert halo_table_for(voxels, offsets, unit) is not None
    with_table = CoordinateManager().convolution_map(voxels, voxels, kernel_size, unit)
    searched = CoordinateManager().convolution_map(voxels, CoordinateSet(voxels.coordinates), kernel_size, unit)
    assert len(with_table) == len(searched) == kernel_size**3
    for (table_in, table_out), (search_in, search_out) in zip(with_table, searched):
        assert torch.equal(table_in, search_in) and torch.equal(table_out, search_out)


def test_halo_table_declines_small_sets_voxels_off_the_grid_odd_steps_or_out_of_reach():
    cpu = torch.device("cpu")
    grid = torch.stack(torch.meshgrid(*[torch.arange(16)] * 3, indexing="ij"), -1).reshape(-1, 3)  # 4096 voxels
    on_grid = CoordinateSet(torch.cat([torch.zeros(len(grid), 1, dtype=torch.long), grid * 6], 1))
    assert halo_table_for(on_grid, kernel_offsets(3, 2, cpu), 2) is not None
    assert halo_table_for(on_grid, kernel_offsets(19, 2, cpu), 2) is None  # reach 9 steps > one block
    assert halo_table_for(on_grid, kernel_offsets(3, 3, cpu), 3) is None  # step not a power of two
    assert halo_table_for(on_grid, kernel_offsets(3, 4, cpu), 4) is None  # x = 6 is off the grid of 4
    few = CoordinateSet(on_grid.coordinates[:HALO_TABLE_MIN_VOXELS - 1])
    assert halo_table_for(few, kernel_offsets(3, 2, cpu), 2) is None  # searching is cheaper
    # Voxels off the stride grid (a row one apart at stride 2) still convolve correctly, through the
    # search: only those two apart are neighbours.
    for count in (2, HALO_TABLE_MIN_VOXELS):
        coordinates = torch.zeros(count, 4, dtype=torch.long)
        coordinates[:, 1] = torch.arange(count)
        x = SparseTensor(torch.randn(count, 1), coordinates, tensor_stride=2)
        conv = Conv3d(1, 1, 3)
        with torch.no_grad():
            torch.testing.assert_close(conv(x).F, x.F @ conv.kernel[13] + _even_neighbours(x, conv))


def _even_neighbours(x: SparseTensor, conv: Conv3d) -> torch.Tensor:
    """Contributions of the voxels two apart along x (offsets -1 and +1 at stride 2)."""
    features = x.F.reshape(-1)
    left, right = torch.zeros_like(features), torch.zeros_like(features)
    left[2:], right[:-2] = features[:-2], features[2:]
    return (left[:, None] @ conv.kernel[12]) + (right[:, None] @ conv.kernel[14])


def test_pack_round_trip_and_bounds():
    coordinates = torch.tensor([[0, -5, 0, 7], [511, 131071, -131072, 3]])
    assert torch.equal(unpack(pack(coordinates)), coordinates)
    with pytest.raises(ValueError, match="packed"):
        pack(torch.tensor([[0, 131072, 0, 0]]))
    with pytest.raises(ValueError, match="batch"):
        pack(torch.tensor([[512, 0, 0, 0]]))
    edge = SparseTensor(torch.ones(1, 1), torch.tensor([[0, 131071, 0, 0]]))
    with pytest.raises(ValueError, match="packed"):
        Conv3d(1, 1, 3)(edge)


def test_union_add_sums_on_the_union():
    a = SparseTensor(torch.tensor([[1.0], [2.0]]), torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]]))
    b = SparseTensor(torch.tensor([[10.0], [20.0]]), torch.tensor([[0, 1, 0, 0], [0, 2, 0, 0]]), coordinate_manager=a.coordinate_manager)
    total = a + b
    values = {tuple(c): float(f) for c, f in zip(total.C.tolist(), total.F.reshape(-1))}
    assert values == {(0, 0, 0, 0): 1.0, (0, 1, 0, 0): 12.0, (0, 2, 0, 0): 20.0}


def test_batch_norm_matches_batchnorm1d_and_prune_keeps_rows():
    x, _ = random_tensor(channels=4)
    bn = BatchNorm(4)
    torch.testing.assert_close(bn(x).F, torch.nn.BatchNorm1d(4)(x.F))
    keep = x.F[:, 0] > 0
    pruned = prune(x, keep)
    assert torch.equal(pruned.C, x.C[keep]) and torch.equal(pruned.F, x.F[keep])


def test_target_mask_marks_cells_holding_targets():
    x = SparseTensor(torch.ones(3, 1), torch.tensor([[0, 0, 0, 0], [0, 4, 0, 0], [0, 8, 4, 0]]), tensor_stride=4)
    targets = torch.tensor([[0, 5, 3, 2], [0, 9, 7, 3]])
    assert target_mask(x, targets).tolist() == [False, True, True]


def test_empty_tensors_flow_through_every_op():
    x, _ = random_tensor()
    empty = prune(x, torch.zeros(len(x), dtype=torch.bool))
    layers = torch.nn.Sequential(Conv3d(3, 4, 3), BatchNorm(4), ReLU(), Conv3d(4, 4, 2, stride=2),
                                 GenerativeConvTranspose3d(4, 2, 2, stride=2), Conv3d(2, 1, 1, bias=True))
    out = layers(empty)
    assert len(out) == 0 and out.F.shape == (0, 1)
    out.F.sum().backward()
    assert all(p.grad is not None for p in layers.parameters())
    assert len(empty + empty) == 0 and to_dense(empty).numel() == 0
