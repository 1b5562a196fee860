"""Running the networks: the completion network's skull in the canonical frame, test-time augmentation,
the optional super-resolution stage, and the fallback to the CPU when a GPU runs out of memory.

The network always sees the skull on a grid with axes along L, P and S (``volume.canonical_grid``),
whatever the file's axis order, flips or obliquity; results go back onto the input's own grid by
resampling in physical space. Training (``train``) builds its examples in the same frame.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch

from ..contract import DEVICES
from ..errors import SparseImplantError
from ..models.completion import CompletionNet
from ..models.registry import ModelInfo, find_model, find_refiner, load_network
from ..progress import ProgressCallback, ProgressEvent, ignore_progress
from ..sparse import to_mask
from .priors import Priors, channel_input
from .superres import batch_input, refine_skull
from .volume import Box, Volume, canonical_grid, crop, foreground_box, paste, resample_mask


# Gaussian sigma, in model-grid voxels, applied to the network's mask before it is interpolated back to
# the CT grid: it smooths the voxel-level raggedness of a coarse prediction. The super-resolution
# network's mask gets the same, in its own grid's voxels. Chosen on training cases (README, "Bundled model").
OUTPUT_SMOOTHING = 1.0

# Test-time augmentation: (left-right flip, shift in grid voxels) of each network pass, averaged. The
# output depends on the side of the defect and on where the skull falls in the network's stride-64
# cells; the flip is the one training uses (grid axis 0 is left-right in the canonical frame).
AUGMENTED_PASSES = ((False, 0), (True, 0), (False, 8), (True, 8))
SINGLE_PASS = ((False, 0),)


@dataclass
class Networks:
    """The loaded completion network and, when one is used, the super-resolution network refining it."""

    completion: CompletionNet
    info: ModelInfo
    refiner: Optional[CompletionNet] = None
    refiner_info: Optional[ModelInfo] = None

    def to(self, device: torch.device) -> "Networks":
        self.completion.to(device)
        if self.refiner is not None:
            self.refiner.to(device)
        return self

    def describe(self) -> dict:
        """The models, for report.json."""
        described = {"name": self.info.name, "kind": self.info.kind, "spacing_mm": self.info.spacing_mm,
                     "licence": self.info.licence}
        if self.refiner_info is not None:
            described["refinement"] = {"name": self.refiner_info.name, "spacing_mm": self.refiner_info.spacing_mm,
                                       "licence": self.refiner_info.licence}
        return described


def load_networks(model: Optional[str], refine_model: Optional[str], device: torch.device,
                  model_dir: Optional[Path] = None, keep_logit: Optional[float] = None) -> Networks:
    """The completion model (``keep_logit``: its pruning threshold instead of the registry's) and its
    super-resolution model, if any, on ``device``."""
    info = find_model(model, "completion", model_dir)
    refiner_info = find_refiner(refine_model, info, model_dir)
    refiner = load_network(refiner_info, device) if refiner_info is not None else None
    completion = load_network(info, device)
    if keep_logit is not None:
        completion.keep_logit = keep_logit
    return Networks(completion, info, refiner, refiner_info)


def select_device(requested: str = "auto") -> torch.device:
    if requested not in DEVICES:
        raise SparseImplantError(f"unknown device '{requested}': use one of {', '.join(DEVICES)}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SparseImplantError("--device cuda was asked for but no CUDA GPU is available: use --device cpu or auto")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def network_passes(test_time_augmentation: bool) -> Tuple[Tuple[bool, int], ...]:
    return AUGMENTED_PASSES if test_time_augmentation else SINGLE_PASS


@dataclass
class ModelInput:
    """The defective skull on the model's canonical grid (``grid``), and cropped to the skull plus the
    model's margin for missing bone (``cropped``, at ``box`` of the grid): what the network sees,
    with the priors on the cropped grid when the model takes them (``priors.estimate_priors``)."""

    cropped: Volume
    box: Box
    grid: Volume
    priors: Optional[Priors] = None


def model_grid_input(defective: Volume, info: ModelInfo, axes: Optional[np.ndarray] = None) -> ModelInput:
    """``axes``: the grid's axes (columns, LPS) when the skull is straightened (``pose.straighten``); default L, P, S."""
    grid = canonical_grid(defective, info.spacing_mm, info.crop_margin_mm, axes)
    on_grid = resample_mask(defective, grid)
    if not on_grid.array.any():
        raise SparseImplantError(
            f"the skull vanishes at the model's {info.spacing_mm} mm grid (too thin or too small): check the input mask"
        )
    margin = int(np.ceil(info.crop_margin_mm / min(info.spacing_mm)))
    box = foreground_box(on_grid.array, margin)
    return ModelInput(crop(on_grid, box), box, on_grid)


@torch.no_grad()
def predict_mask(network: CompletionNet, mask: np.ndarray, device: torch.device,
                 priors: Optional[Priors] = None) -> np.ndarray:
    """Run the network on one binary mask (and its priors, for a model that takes them); voxels it
    generates outside the array are dropped.

    Each kernel map of the network is used once, so none is cached: that keeps the peak memory of a
    forward pass near its features' (results/bench/network.md)."""
    result = network(batch_input([channel_input(mask, priors)], device, cache_maps=False))
    return to_mask(result.output, mask.shape)


def _pass_view(array: np.ndarray, flip: bool, shift: int) -> np.ndarray:
    return np.pad(array[::-1] if flip else array, [(shift, 0)] * 3)


def predict_fraction(network: CompletionNet, mask: np.ndarray, device: torch.device,
                     passes: Sequence[Tuple[bool, int]] = AUGMENTED_PASSES, priors: Optional[Priors] = None,
                     after_pass: Callable[[int], None] = lambda done: None) -> np.ndarray:
    """Share of the (flip, shift) passes whose prediction keeps each voxel, as float32 in [0, 1];
    ``after_pass(done)`` hears of each pass finished (the progress bar moves)."""
    kept = np.zeros(mask.shape, dtype=np.float32)
    for done, (flip, shift) in enumerate(passes, start=1):
        view_priors = None
        if priors is not None:
            view_priors = Priors(_pass_view(priors.mirror, flip, shift), _pass_view(priors.fitted, flip, shift),
                                 priors.plane, priors.fit)
        predicted = predict_mask(network, _pass_view(mask, flip, shift), device, view_priors)[shift:, shift:, shift:]
        kept += predicted[::-1] if flip else predicted
        after_pass(done)
    return kept / len(passes)


Result = TypeVar("Result")


def with_cpu_fallback(run: Callable[[torch.device], Result], networks: Networks, device: torch.device,
                      progress: ProgressCallback, stage: ProgressEvent) -> Tuple[Result, torch.device]:
    """``run(device)``; on CUDA out-of-memory move the networks to the CPU and retry there, with a
    warning reported at ``stage``'s progress."""
    try:
        return run(device), device
    except torch.cuda.OutOfMemoryError:
        if device.type != "cuda":
            raise
        message = "GPU out of memory: running on the CPU instead (slower)"
        warnings.warn(message)
        progress(ProgressEvent(stage.stage, stage.fraction, message))
        torch.cuda.empty_cache()
        cpu = torch.device("cpu")
        networks.to(cpu)
        return run(cpu), cpu


def coarse_skull(model_input: ModelInput, networks: Networks, device: torch.device,
                 progress: ProgressCallback = ignore_progress,
                 test_time_augmentation: bool = True) -> Tuple[Volume, torch.device]:
    """The completion network's skull on its canonical grid, as the share of passes keeping each voxel."""
    cropped, grid = model_input.cropped, model_input.grid
    passes = network_passes(test_time_augmentation)
    stage = ProgressEvent("network", 0.2, f"{int(cropped.array.sum())} voxels on a {cropped.shape} grid, "
                                          f"{len(passes)} pass(es)")
    progress(stage)
    def after_pass(done: int) -> None:
        progress(ProgressEvent("network", 0.2 + 0.35 * done / len(passes), f"pass {done} of {len(passes)} done"))

    fraction, device = with_cpu_fallback(
        lambda on: predict_fraction(networks.completion, cropped.array, on, passes, model_input.priors, after_pass),
        networks, device, progress, stage)
    return grid.with_array(paste(fraction, model_input.box, grid.shape)), device


def refined_skull(coarse: Volume, defective: Volume, networks: Networks, device: torch.device,
                  progress: ProgressCallback = ignore_progress) -> Tuple[Volume, torch.device]:
    """The super-resolution network's skull on its finer grid (see ``superres``)."""
    info = networks.refiner_info
    stage = ProgressEvent("refine", 0.45, f"super-resolution on a {info.spacing_mm} mm grid ({info.name})")
    progress(stage)
    return with_cpu_fallback(lambda on: refine_skull(coarse, defective, networks.refiner, info.spacing_mm, on,
                                                     OUTPUT_SMOOTHING, info.crop_margin_mm),
                             networks, device, progress, stage)
