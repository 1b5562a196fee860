"""Designing the implant: the skull completed on the network's grid (by the network, or by the fitted
skull shape where the network leaves the opening open or fills it short of that shape), brought back to the input's grid and cut into
an implant, with the doubts about it (no files, no surfaces: ``generate`` does those).

With the bundled network, which takes no priors, the network runs first and its cut is made in a
helper thread while the priors are estimated; the priors then decide whether the fitted skull shape
replaces it (``doubts.fitted_fills_instead``).
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..contract import METHODS
from ..errors import SparseImplantError
from ..metrics import dice
from ..progress import ProgressCallback, ProgressEvent, ignore_progress
from .doubts import design_doubts, fallback_message, fitted_fills_instead
from .inference import OUTPUT_SMOOTHING, Networks, coarse_skull, model_grid_input, refined_skull
from .pose import measure_head, straighten_head
from .postprocess import extract_implant
from .priors import Priors, estimate_priors
from .volume import Volume, paste, resample_mask, resample_soft_mask


@dataclass
class StageClock:
    """Wall-clock seconds per stage of the main line, for the report; work run beside it counts in
    the stage that waits for it (``generate``)."""

    timings: Dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


@dataclass
class Design:
    """What ``design_implant`` gives: the completed skull and the implant on the input's geometry
    (completed = defective | implant), the device used, and plain-language doubts about the result."""

    completed: Volume
    implant: Volume
    device: torch.device
    warnings: List[str] = field(default_factory=list)
    pose: Optional[dict] = None  # the scan's bottom cut and the head's turn as the network saw it (pose)
    priors: Optional[dict] = None  # the symmetry plane, the mean skull's fit and what they expect missing
    completed_by: str = "network"  # network, mirror or fitted: with method auto, the fitted skull shape when the network leaves the opening
    notes: List[str] = field(default_factory=list)  # how the implant was made, where that is no doubt (a fallback that meets the rim)

    @property
    def implant_ml(self) -> float:
        return self.implant.nonzero_ml


def design_implant(defective: Volume, networks: Networks, device: torch.device,
                   progress: ProgressCallback = ignore_progress, clock: Optional[StageClock] = None,
                   test_time_augmentation: bool = True, straighten: bool = True, method: str = "auto",
                   on_cut: Optional[Callable[[Volume, Volume], None]] = None) -> Design:
    """Complete the skull and cut the implant; every doubt is also issued as a warning. With
    ``straighten``, the network sees the skull with the scan's bottom cut level and the head facing
    forward, as it saw its training skulls (``pose.straighten_head``). ``method`` (``METHODS``): the
    network, falling back on the fitted mean skull where the network leaves most of the bone the priors
    expect missing open (auto), or either alone, or one prior alone, the baselines ``bench
    generalization`` sets beside it.

    Args:
        defective (Volume): the defective skull as a binary mask (``io.read_mask``), with its geometry.
        networks (Networks): the loaded models (``inference.load_networks``); the refiner, if any, is
            used only where the network completes the skull.
        device (torch.device): where the networks run.
        progress (ProgressCallback): receives stages pose, network, refine, priors and implant
            (fractions 0.1 to 0.72; the priors before the network for a model that takes them). Default:
            ignored.
        clock (StageClock, optional): adds this call's seconds per stage to it; default a new one.
        test_time_augmentation (bool): average 4 network passes (``inference.AUGMENTED_PASSES``)
            instead of one. Default True.
        straighten (bool): as above; False only measures the head's pose. Default True.
        method (str): ``"auto"``, ``"network"``, ``"mirror"`` or ``"fitted"``. Default ``"auto"``.
        on_cut (callable, optional): called with (completed, implant) of the first way of completing as
            soon as it is cut, from a helper thread, before the priors decide whether it stands (with
            auto, the fitted skull shape may replace it): work on its surfaces can start there.

    Returns:
        Design: ``completed`` and ``implant`` as uint8 masks on ``defective``'s geometry (completed
        = defective | implant), the device that finished (the CPU after a CUDA out-of-memory
        fallback), the doubts as ``warnings``, and the ``pose`` and ``priors`` reports (the latter
        with ``expected_missing_ml`` and ``agreement_dsc``, the Dice of the bone added on the model's
        grid with the priors' expected missing bone), and ``completed_by``: which method made the
        implant (with auto, "network" or "fitted"; a fallback is said as the first warning where the
        fitted shape meets the bone around the opening poorly, else as a note in ``notes``).

    Raises:
        SparseImplantError: ``method`` is unknown, or the skull vanishes on the model's grid.
    """
    if method not in METHODS:
        raise SparseImplantError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    clock = clock or StageClock()
    with clock.stage("pose"):
        progress(ProgressEvent("pose", 0.1, "finding the scan's bottom cut and the head's pose"))
        straightened = straighten_head(defective) if straighten else measure_head(defective)
    with clock.stage("network"):
        model_input = model_grid_input(defective, networks.info, straightened.axes)
    first = "network" if method == "auto" else method
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cut") as helper:
        if first == "network" and not networks.info.priors:
            # The network needs no priors: run it first, and cut its implant on the input's grid (SimpleITK
            # and scipy, which leave the GIL) in a helper thread while this one estimates the priors.
            skull = _skull_on_grid(model_input, None, networks, device, first, progress, clock,
                                   test_time_augmentation, defective)
            cut = helper.submit(_cut, defective, skull, on_cut)
            priors, expected, fitted_ml = _estimate_priors(model_input, progress, clock, 0.57)
        else:
            priors, expected, fitted_ml = _estimate_priors(model_input, progress, clock, 0.15)
            if networks.info.priors:
                model_input.priors = priors
            skull = _skull_on_grid(model_input, priors, networks, device, first, progress, clock,
                                   test_time_augmentation, defective)
            cut = helper.submit(_cut, defective, skull, on_cut)
        progress(ProgressEvent("implant", 0.7, "extracting the implant"))
        with clock.stage("implant"):  # what of the cut the priors did not hide
            outcome = _completion(skull, cut.result(), model_input, expected)
    expected_ml = float(expected.sum()) * model_input.cropped.voxel_volume_mm3 / 1000.0
    notes: List[str] = []
    fallback_doubts: List[str] = []
    if method == "auto" and fitted_fills_instead(fitted_ml, outcome.implant_ml, priors):
        # The network leaves most of what the fitted mean skull fills open: the fitted mean skull fills it,
        # if it fills more (on a complete skull it adds nothing either, and the network's result stands).
        progress(ProgressEvent("implant", 0.72, "the network left the opening open: completing by the fitted skull shape"))
        fitted_skull = _skull_on_grid(model_input, priors, networks, outcome.device, "fitted", ignore_progress, clock,
                                      test_time_augmentation, defective)
        with clock.stage("implant"):
            fitted = _completion(fitted_skull, _cut(defective, fitted_skull), model_input, expected)
        if fitted.implant_ml > outcome.implant_ml:
            # A fallback needs a fit, so the report is there.
            message, doubtful = fallback_message(outcome.implant_ml, fitted_ml, priors.fitted_bone_report)
            (fallback_doubts if doubtful else notes).append(message)
            outcome = fitted
    design = Design(outcome.completed, outcome.implant, outcome.device, pose=straightened.report(),
                    priors={**priors.report(model_input.grid.direction), "expected_missing_ml": round(expected_ml, 1),
                            "fitted_missing_ml": round(fitted_ml, 1),
                            "agreement_dsc": round(outcome.agreement, 3)}, completed_by=outcome.method,
                    notes=notes)
    design.warnings = fallback_doubts + design_doubts(model_input.cropped, design.implant_ml, straightened.pose, priors,
                                            expected_ml, outcome.agreement)
    for message in design.warnings:
        warnings.warn(message)
    return design


def _estimate_priors(model_input, progress: ProgressCallback, clock: StageClock,
                     fraction: float) -> Tuple[Priors, np.ndarray, float]:
    """The priors on the model's cropped grid, the bone either expects missing, and the ml the fitted one
    fills: the network's guides when it takes them, and a check on its result always."""
    with clock.stage("priors"):
        progress(ProgressEvent("priors", fraction, "mirroring the skull and fitting the mean skull"))
        cropped = model_input.cropped
        priors = estimate_priors(cropped.array, cropped.spacing[0])
        by_fitted = priors.added(cropped.array, "fitted", cropped.spacing[0])
        expected = priors.added(cropped.array, "mirror", cropped.spacing[0]) | by_fitted
    return priors, expected, float(by_fitted.sum()) * cropped.voxel_volume_mm3 / 1000.0


@dataclass
class _Skull:
    """A completed skull on the model's grid (``on_grid``, for the agreement with the priors) and what
    goes back to the input's grid (``restore``, through ``resample``: the refiner's finer skull, if any)."""

    method: str
    on_grid: Volume
    restore: Volume
    resample: Callable[..., Volume]
    device: torch.device


@dataclass
class _Completion:
    """One way of completing the skull, cut into an implant on the input's grid."""

    method: str
    completed: Volume
    implant: Volume
    device: torch.device
    agreement: float  # DSC on the model's grid of the bone added with the bone the priors expect missing

    @property
    def implant_ml(self) -> float:
        return self.implant.nonzero_ml


def _skull_on_grid(model_input, priors: Optional[Priors], networks: Networks, device: torch.device, method: str,
                   progress: ProgressCallback, clock: StageClock, test_time_augmentation: bool,
                   defective: Volume) -> _Skull:
    """The skull completed on the model's grid by ``method`` (network, mirror or fitted; the refiner, if
    any, after the network)."""
    if method != "network":
        cropped = model_input.cropped
        completed_on_grid = priors.completed(cropped.array, method, cropped.spacing[0]).astype(np.float32)
        on_grid = model_input.grid.with_array(paste(completed_on_grid, model_input.box, model_input.grid.shape))
        return _Skull(method, on_grid, on_grid, resample_soft_mask, device)
    with clock.stage("network"):
        on_grid, device = coarse_skull(model_input, networks, device, progress, test_time_augmentation)
    if networks.refiner is None:
        return _Skull(method, on_grid, on_grid, resample_soft_mask, device)  # the share of passes per voxel
    with clock.stage("refine"):
        refined, device = refined_skull(on_grid, defective, networks, device, progress)
    return _Skull(method, on_grid, refined, resample_mask, device)


@dataclass
class _Cut:
    """A completed skull and its implant, on the input's grid (completed = defective | implant)."""

    completed: Volume
    implant: Volume


def _cut(defective: Volume, skull: _Skull, on_cut: Optional[Callable[[Volume, Volume], None]] = None) -> _Cut:
    """``skull`` brought back to the input's grid and cut into an implant; ``on_cut`` hears of it."""
    completed_raw = skull.resample(skull.restore, defective, smoothing=OUTPUT_SMOOTHING)
    implant_array = extract_implant(completed_raw.array, defective.array, defective.spacing)
    cut = _Cut(defective.with_array(((defective.array > 0) | implant_array).astype(np.uint8)),
               defective.with_array(implant_array.astype(np.uint8)))
    if on_cut is not None:
        on_cut(cut.completed, cut.implant)
    return cut


def _completion(skull: _Skull, cut: _Cut, model_input, expected: np.ndarray) -> _Completion:
    """The completion of ``skull`` by its ``cut``, and its agreement with the bone the priors expect missing."""
    added = (skull.on_grid.array[model_input.box] >= 0.5) & ~(model_input.cropped.array > 0)
    agreement = dice(added, expected) if expected.any() or added.any() else 1.0
    return _Completion(skull.method, cut.completed, cut.implant, skull.device, agreement)
