"""One 3x3x3 8->8 sparse convolution on ~1M surface-like voxels: kernel-map build and compute,
this engine versus MinkowskiEngine (when importable) in the same run."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch

from ..sparse import Conv3d, SparseTensor, pack
from .memory import current_rss_mb, peak_rss_mb, reset_peak
from .report import markdown_table, write_results


def shell_coordinates(voxels: int, thickness: float = 3.0) -> torch.Tensor:
    """A spherical shell ``thickness`` voxels thick with about ``voxels`` voxels: a skull's density."""
    radius = float(np.sqrt(voxels / (4.0 * np.pi * thickness))) + thickness / 2
    side = int(np.ceil(2 * radius + 4))
    axis = np.arange(side, dtype=np.float32) - side / 2
    coordinates = []
    for z in range(side):  # slice by slice: a dense distance grid of 1M-voxel shells would be 36M floats
        distance = np.sqrt(axis[:, None] ** 2 + axis[None, :] ** 2 + axis[z] ** 2)
        x, y = np.nonzero((distance <= radius) & (distance > radius - thickness))
        coordinates.append(np.stack([np.zeros_like(x), x, y, np.full_like(x, z)], axis=1))
    return torch.from_numpy(np.concatenate(coordinates)).long()


def _timed(function: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """(median seconds, peak extra MB over the RSS before the first call, last result)."""
    times, result = [], None
    reset_peak()
    base = current_rss_mb()
    for _ in range(repeats):
        result = None  # the previous result is freed first: the peak is that of one call
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_rss_mb() - base, result


def bench_ours(coordinates: torch.Tensor, features: torch.Tensor, kernel: torch.Tensor, repeats: int) -> Dict[str, object]:
    conv = Conv3d(kernel.shape[1], kernel.shape[2], kernel_size=3)
    conv.kernel.data.copy_(kernel)

    def build_map():
        x = SparseTensor(features, coordinates)
        x.coordinate_manager.convolution_map(x.coordinate_set, x.coordinate_set, 3, 1)
        return x

    map_s, map_mb, x = _timed(build_map, repeats)
    with torch.no_grad():
        forward_s, forward_mb, out = _timed(lambda: conv(x), repeats)
    upstream = torch.ones(len(x), kernel.shape[2])

    def forward_backward():
        conv.zero_grad()
        conv(x).F.mul(upstream).sum().backward()

    train_s, train_mb, _ = _timed(forward_backward, repeats)
    keys = pack(out.C)
    return {"map_build_s": map_s, "map_build_peak_mb": map_mb, "forward_s": forward_s, "forward_peak_mb": forward_mb,
            "forward_backward_s": train_s, "forward_backward_peak_mb": train_mb,
            "output": out.F[torch.argsort(keys)]}


def bench_minkowski(coordinates: torch.Tensor, features: torch.Tensor, kernel: torch.Tensor, repeats: int) -> Optional[Dict[str, object]]:
    try:
        import MinkowskiEngine as ME
    except ImportError:
        return None
    conv = ME.MinkowskiConvolution(kernel.shape[1], kernel.shape[2], kernel_size=3, dimension=3)
    conv.kernel.data.copy_(kernel)
    coordinates_int = coordinates.int()

    def first_forward():  # a fresh manager: kernel map built inside the first call
        x = ME.SparseTensor(features, coordinates_int)
        with torch.no_grad():
            return x, conv(x)

    first_s, map_mb, (x, _) = _timed(first_forward, repeats)
    with torch.no_grad():
        forward_s, forward_mb, out = _timed(lambda: conv(x), repeats)

    def forward_backward():
        conv.zero_grad()
        conv(x).F.sum().backward()

    train_s, train_mb, _ = _timed(forward_backward, repeats)
    keys = pack(out.C.long())
    return {"map_build_s": max(first_s - forward_s, 0.0), "map_build_peak_mb": map_mb, "forward_s": forward_s,
            "forward_peak_mb": forward_mb, "forward_backward_s": train_s, "forward_backward_peak_mb": train_mb,
            "output": out.F[torch.argsort(keys)], "version": ME.__version__}


def run(voxels: int, channels: int, repeats: int, output_dir: Path) -> dict:
    torch.manual_seed(0)
    coordinates = shell_coordinates(voxels)
    features = torch.randn(len(coordinates), channels)
    kernel = torch.randn(27, channels, channels) / np.sqrt(27 * channels)
    results = {"ours": bench_ours(coordinates, features, kernel, repeats)}
    minkowski = bench_minkowski(coordinates, features, kernel, repeats)
    if minkowski is not None:
        results["minkowski"] = minkowski
    data = {"voxels": len(coordinates), "channels": channels, "kernel_size": 3, "repeats": repeats, "engines": {}}
    outputs = {name: result.pop("output") for name, result in results.items()}
    if minkowski is not None:
        minkowski["max_abs_diff_vs_ours"] = float((outputs["minkowski"] - outputs["ours"]).abs().max())
    rows = []
    for name, result in results.items():
        data["engines"][name] = result
        rows.append([name, result["map_build_s"], result["forward_s"], result["forward_backward_s"],
                     result["map_build_peak_mb"], result["forward_peak_mb"], result["forward_backward_peak_mb"]])
    notes = f"{len(coordinates):,} voxels (spherical shell, 3 voxels thick), {channels}->{channels} channels, median of {repeats}."
    if "minkowski" in data["engines"]:
        ours, theirs = data["engines"]["ours"], data["engines"]["minkowski"]
        data["ratio_ours_over_minkowski"] = {
            key: ours[key] / theirs[key] for key in ("map_build_s", "forward_s", "forward_backward_s") if theirs[key] > 0
        }
        data["ratio_ours_over_minkowski"]["map_plus_forward"] = (ours["map_build_s"] + ours["forward_s"]) / (
            theirs["map_build_s"] + theirs["forward_s"])
        notes += (f"\nRatio ours/ME (same run): map+forward {data['ratio_ours_over_minkowski']['map_plus_forward']:.2f}, "
                  f"forward+backward {data['ratio_ours_over_minkowski'].get('forward_backward_s', float('nan')):.2f}; "
                  f"max |difference| of outputs {theirs['max_abs_diff_vs_ours']:.2e}.")
    else:
        notes += "\nMinkowskiEngine is not importable here (Testing/minkowski/build.sh builds it)."
    table = markdown_table(["engine", "map build s", "forward s", "fwd+bwd s", "map MB", "forward MB", "fwd+bwd MB"], rows)
    write_results(output_dir, "engine", data, table, notes)
    return data
