"""The completion network, sparse versus its dense twin (and MinkowskiEngine's network with the same
weights when ME and that network import), on real skulls at the paper's grids.

Every (method, grid, mode) runs in a fresh subprocess (``worker``) so its peak resident memory is its
own. Pruning is the oracle a converged network approximates, in inference and in the training step:
each scale keeps the complete skull's voxels (classifiers biased to reject, targets kept), so the work
does not depend on how well a randomly initialised network guesses. Sparse inference runs as the
pipeline does, without caching kernel maps. A dense case whose activations would not fit in the
memory available is reported as out of memory with the computed need, not attempted.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..errors import SparseImplantError
from ..models.completion import CHANNEL_PRESETS, LEVELS, CompletionNet, completion_loss
from ..models.dense_twin import GRID_MULTIPLE, DenseCompletionNet
from ..outputs import atomic_write
from ..sparse import Conv3d, GenerativeConvTranspose3d, from_mask
from .memory import available_mb, current_rss_mb, peak_rss_mb, reset_peak
from .report import markdown_table, write_results

# MinkowskiEngine and its twin of the network are test-only references that an installed package does
# not have: the twin is the module Testing/minkowski/me_completion.py, importable once that folder is
# on PYTHONPATH (and ME built by Testing/minkowski/build.sh).
ME_TWIN_MODULE = "me_completion"
GRIDS = {64: 8, 128: 4, 256: 2, 512: 1}  # in-plane size -> down-sampling factor (64^2 x Z/8 ... 512^2 x Z)
REJECT_BIAS = -1e4
MAX_TIMED_PASSES = 5
REPEAT_BUDGET_S = 3.0  # repeat a pass only while the passes so far took less than this
FLOAT_BYTES = 4


def load_case(data_root: Path, case: str, factor: int):
    """(defective, complete) boolean arrays on the grid ``factor`` times coarser than the CT's."""
    from ..pipeline.io import read_mask
    from ..pipeline.volume import resample_mask_to_spacing

    arrays = []
    for folder in ("defective_skull", "complete_skull"):
        mask = read_mask(Path(data_root) / folder / f"{case}.nrrd")
        if factor > 1:
            mask = resample_mask_to_spacing(mask, mask.spacing * factor)
        arrays.append(mask.array > 0)
    return arrays


def _padded(array: np.ndarray) -> np.ndarray:
    pad = [(0, (-n) % GRID_MULTIPLE) for n in array.shape]
    return np.pad(array, pad)


def dense_memory_mb(shape: Sequence[int], channels: Sequence[int], training: bool) -> float:
    """Activation memory of the dense twin: encoder outputs kept for the skips, plus the few tensors a
    block holds at once (inference), or every layer's saved output and its gradient (training)."""
    voxels = [int(np.prod([n // 2**level for n in shape])) for level in range(LEVELS + 1)]
    layer = [voxels[level] * channels[level] * FLOAT_BYTES for level in range(LEVELS + 1)]
    if training:
        # ~8 saved tensors per level (conv, BN, ReLU twice; decoder and skip) and gradients of the same size.
        return 2 * 8 * sum(layer) / 2**20
    return (sum(layer) + 4 * max(layer) + voxels[0] * FLOAT_BYTES) / 2**20


def _oracle(network: torch.nn.Module) -> None:
    for name, module in network.named_modules():
        if name.endswith("_cls") or (name.startswith("classifiers.") and isinstance(module, torch.nn.Conv3d)):
            module.bias.data.fill_(REJECT_BIAS)


def _sparse_counts(network: CompletionNet):
    """Forward hooks recording active voxels and multiply-adds (from the kernel maps) per layer."""
    records: List[dict] = []

    def hook(module, inputs, output):
        x = inputs[0]
        if isinstance(module, GenerativeConvTranspose3d):
            pairs = module.kernel.shape[0] * len(x)
        elif module.kernel_size == 1 and module.stride == 1:
            pairs = len(x)
        else:
            offsets = x.coordinate_manager.convolution_pairs(x.coordinate_set, output.coordinate_set, module.kernel_size, x.tensor_stride)
            pairs = sum(len(rows) for rows, _ in offsets)
        records.append({"voxels": len(output), "macs": pairs * module.in_channels * module.out_channels})

    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, (Conv3d, GenerativeConvTranspose3d))]
    return records, handles


def _dense_counts(network: DenseCompletionNet):
    records: List[dict] = []

    def hook(module, inputs, output):
        voxels = int(np.prod(output.shape[2:]))
        kernel = int(np.prod(module.kernel_size))
        in_voxels = int(np.prod(inputs[0].shape[2:]))
        macs = (in_voxels if isinstance(module, torch.nn.ConvTranspose3d) else voxels) * kernel * module.in_channels * module.out_channels
        records.append({"voxels": voxels, "macs": macs})

    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    return records, handles


def minkowski_missing() -> Optional[str]:
    """Why the MinkowskiEngine rows cannot run here, or None when they can."""
    if importlib.util.find_spec("MinkowskiEngine") is None:
        return "MinkowskiEngine is not installed (Testing/minkowski/build.sh builds it)"
    if importlib.util.find_spec(ME_TWIN_MODULE) is None:
        return f"its twin of the network ('{ME_TWIN_MODULE}') is not importable: put Testing/minkowski on PYTHONPATH"
    return None


def minkowski_available() -> bool:
    return minkowski_missing() is None


def _minkowski_counts(network: torch.nn.Module) -> tuple:
    """Active voxels per layer (multiply-adds are the sparse engine's: same maps, same layers)."""
    import MinkowskiEngine as me

    records: List[dict] = []

    def hook(module, inputs, output):
        records.append({"voxels": len(output), "macs": 0})

    kinds = (me.MinkowskiConvolution, me.MinkowskiGenerativeConvolutionTranspose)
    return records, [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, kinds)]


def _dense_targets(complete: np.ndarray) -> List[torch.Tensor]:
    grid = torch.from_numpy(_padded(complete)).float()[None, None]
    return [torch.nn.functional.max_pool3d(grid, 2**level) > 0 if level else grid > 0 for level in reversed(range(LEVELS))]


def worker(method: str, size: int, mode: str, data_root: Path, case: str, channels: str, seed: int = 0) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    missing = minkowski_missing() if method == "minkowski" else None
    if missing is not None:
        raise SparseImplantError(f"cannot run the MinkowskiEngine network: {missing}")
    torch.manual_seed(seed)
    defective, complete = load_case(data_root, case, GRIDS[size])
    result = {"method": method, "size": size, "mode": mode, "grid": list(defective.shape),
              "input_voxels": int(defective.sum()), "complete_voxels": int(complete.sum())}
    training = mode == "train"
    if method == "sparse":
        network = CompletionNet(CHANNEL_PRESETS[channels])
        target = from_mask(complete).C
        counters = _sparse_counts

        def training_loss():
            return completion_loss(network(from_mask(defective), target))

        def inference():  # as the pipeline runs it: no kernel map kept (each is used once)
            network(from_mask(defective, cache_maps=False), target, keep_targets=True)
    elif method == "minkowski":
        import MinkowskiEngine as ME

        twin = importlib.import_module(ME_TWIN_MODULE)
        # Seeded like the sparse case, so this is the same network with the same weights.
        network = twin.load_ours(twin.MinkowskiCompletionNet(CHANNEL_PRESETS[channels]),
                                 CompletionNet(CHANNEL_PRESETS[channels]).state_dict())
        coordinates = from_mask(defective).C.int().contiguous()
        target = from_mask(complete).C
        counters = _minkowski_counts

        def partial():
            return ME.SparseTensor(torch.ones(len(coordinates), 1), coordinates)

        def training_loss():
            logits, targets, _ = network(partial(), target)
            return sum(torch.nn.functional.binary_cross_entropy_with_logits(l.F.reshape(-1), t.float())
                       for l, t in zip(logits, targets) if len(t))

        def inference():
            network(partial(), target, keep_targets=True)
    elif method == "dense":
        network = DenseCompletionNet(CHANNEL_PRESETS[channels])
        volume = torch.from_numpy(_padded(defective)).float()[None, None]
        targets = _dense_targets(complete)
        result["grid"] = list(volume.shape[2:])
        counters = _dense_counts

        def training_loss():
            logits = network(volume, targets)
            return sum(torch.nn.functional.binary_cross_entropy_with_logits(l, t.float()) for l, t in zip(logits, targets))

        def inference():
            network(volume, targets)
    else:
        raise ValueError(f"unknown method {method}")

    _oracle(network)
    network.train(training)

    def timed_pass() -> float:
        start = time.perf_counter()
        if training:
            network.zero_grad()
            training_loss().backward()
        else:
            with torch.no_grad():
                inference()
        return time.perf_counter() - start

    reset_peak()
    base = current_rss_mb()
    passes = [timed_pass()]
    result["peak_mb"] = peak_rss_mb()
    result["peak_extra_mb"] = result["peak_mb"] - base
    # Memory is the first pass's; time is the median over passes repeated while they fit a small budget,
    # since a single pass of tens of milliseconds (the small grids) is mostly the machine's noise.
    while len(passes) < MAX_TIMED_PASSES and sum(passes) < REPEAT_BUDGET_S:
        passes.append(timed_pass())
    result["passes_s"] = passes
    result["seconds"] = float(np.median(passes))

    # Voxels and multiply-adds per layer from a second, untimed inference pass with counting hooks
    # (the oracle keeps the same voxels in training), so counting costs the measurement nothing.
    records, handles = counters(network)
    network.eval()
    with torch.no_grad():
        inference()
    for handle in handles:
        handle.remove()
    result["layers"] = list(records)
    result["gmacs"] = sum(r["macs"] for r in records) / 1e9
    result["max_layer_voxels"] = max((r["voxels"] for r in records), default=0)
    return result


def _spawn(method: str, size: int, mode: str, data_root: Path, case: str, channels: str, timeout_s: float) -> dict:
    command = [sys.executable, "-m", "SparseImplantLib.bench", "worker", "--method", method, "--size", str(size),
               "--mode", mode, "--data", str(data_root), "--case", case, "--channels", channels]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"method": method, "size": size, "mode": mode, "status": f"timeout after {timeout_s:.0f} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        status = "out of memory (killed)" if done.returncode in (-9, 137) else f"failed: {last}"
        return {"method": method, "size": size, "mode": mode, "status": status}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["status"] = "ok"
    return result


def _plot(results: List[dict], path: Path) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, style in (("sparse", "o-"), ("dense", "s--"), ("minkowski", "^:")):
        for mode, colour in (("inference", "tab:blue"), ("train", "tab:orange")):
            points = sorted((r["size"], r) for r in results if r["method"] == method and r["mode"] == mode and r["status"] == "ok")
            if not points:
                continue
            sizes = [p[0] for p in points]
            axes[0].plot(sizes, [p[1]["peak_extra_mb"] / 1024 for p in points], style, color=colour, label=f"{method} {mode}")
            axes[1].plot(sizes, [p[1]["seconds"] for p in points], style, color=colour, label=f"{method} {mode}")
    for axis, label in zip(axes, ("peak memory (GB, above baseline)", "time (s)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(list(GRIDS), [f"{s}²" for s in GRIDS])
        axis.set_xlabel("grid (in-plane; Z scaled alike)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("Completion network ch1 on SkullFix: this sparse engine vs dense twin vs MinkowskiEngine "
                    f"({os.cpu_count()} CPU cores)")
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))
    plt.close(figure)
    return path


def run(data_root: Path, case: str, sizes: Sequence[int], channels: str, output_dir: Path, timeout_s: float,
        modes: Sequence[str] = ("inference", "train")) -> dict:
    results = []
    preset = CHANNEL_PRESETS[channels]
    missing = minkowski_missing()
    methods = ("sparse", "dense") + (("minkowski",) if missing is None else ())
    if missing is not None:
        print(f"no MinkowskiEngine rows: {missing}", flush=True)
    for size in sizes:
        for method in methods:
            for mode in modes:
                if method == "dense":
                    defective, _ = load_case(data_root, case, GRIDS[size])
                    shape = [n + (-n) % GRID_MULTIPLE for n in defective.shape]
                    need = dense_memory_mb(shape, preset, mode == "train")
                    if need > 0.8 * available_mb():
                        results.append({"method": method, "size": size, "mode": mode, "grid": shape,
                                        "status": f"out of memory (needs {need / 1024:.1f} GB)", "estimated_mb": need})
                        print(f"{method:6s} {size:4d} {mode:9s} skipped: needs ~{need / 1024:.1f} GB", flush=True)
                        continue
                result = _spawn(method, size, mode, data_root, case, channels, timeout_s)
                if method == "dense" and result.get("status") == "ok":
                    result["estimated_mb"] = dense_memory_mb(result["grid"], preset, mode == "train")
                results.append(result)
                print(f"{method:6s} {size:4d} {mode:9s} {result.get('status')} "
                      f"{result.get('seconds', float('nan')):.2f} s {result.get('peak_extra_mb', float('nan')):.0f} MB", flush=True)
    rows = []
    for r in results:
        ok = r["status"] == "ok"
        rows.append([f"{r['size']}²", r["method"], r["mode"], "x".join(map(str, r.get("grid", []))),
                     r.get("input_voxels", "") if ok else "", r.get("max_layer_voxels", "") if ok else "",
                     round(r["gmacs"], 1) if ok and r["gmacs"] else "", round(r["seconds"], 2) if ok else r["status"],
                     round(r["peak_extra_mb"]) if ok else (f"~{r['estimated_mb']:.0f} (computed)" if "estimated_mb" in r else "")])
    table = markdown_table(["grid", "method", "mode", "voxels grid", "input voxels", "largest layer voxels", "GMAC",
                            "time s", "peak MB above baseline"], rows)
    plot = _plot(results, Path(output_dir) / "network.png")
    notes = (f"SkullFix case {case}, channels {channels} {list(preset)}, oracle pruning (each scale keeps the complete "
             "skull's voxels), a fresh process per row; memory is the first pass's peak RSS above the process's RSS "
             f"before it; time is the median of up to {MAX_TIMED_PASSES} passes, repeated while they took under "
             f"{REPEAT_BUDGET_S:g} s in all (one pass on the large grids). "
             "'minkowski' is MinkowskiEngine 0.5.4 running the same network with the same weights (its GMACs equal "
             "the sparse row's: same kernel maps)." + (f" No MinkowskiEngine rows: {missing}." if missing else ""))
    write_results(output_dir, "network", {"case": case, "channels": channels, "results": results,
                                           "plot": str(plot) if plot else None}, table, notes)
    return {"results": results}
