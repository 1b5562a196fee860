"""``generate``: defective skull in, completed skull, implant, meshes, distance map and preview out.

The job around the networks (``inference``): read, design the implant, surfaces, write, report. The one
function the CLI and the Slicer module (through the CLI in a subprocess) call. Stages report
``ProgressEvent``s; every output is staged and moved into the output folder only when all succeeded.
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import __version__, contract
from ..contract import COMPLETED_FILE, IMPLANT_FILE, MESH_FORMATS, METHODS, output_names
from ..errors import SparseImplantError
from ..evaluate import evaluate_case
from ..metrics import dice
from ..outputs import staged_output
from ..progress import ProgressCallback, ProgressEvent, ignore_progress
from .doubts import design_doubts, fallback_message, fitted_fills_instead
from .inference import (
    OUTPUT_SMOOTHING,
    Networks,
    coarse_skull,
    load_networks,
    model_grid_input,
    network_passes,
    refined_skull,
    select_device,
)
from .io import read_mask, write_volume
from .pose import measure_head, straighten_head
from .postprocess import extract_implant
from .priors import Priors, estimate_priors
from .volume import Volume, paste, resample_mask, resample_soft_mask

if TYPE_CHECKING:  # VTK is imported where surfaces are made: a design alone does not load it
    from vtkmodules.vtkCommonDataModel import vtkPolyData


@dataclass
class GenerateOptions:
    """What ``generate`` does beyond its input and output paths; the defaults are the CLI's.

    Attributes:
        model (str, optional): the completion model's registry name; None: the registry's first
            completion model.
        device (str): ``"auto"`` (CUDA when available, else the CPU), ``"cpu"`` or ``"cuda"``. On CUDA
            out-of-memory the networks move to the CPU and the run goes on there (the report says
            which device finished).
        label (int, optional): the skull's value in a multi-label input; None: the input must be
            binary (one non-zero value). Excludes ``threshold_hu``.
        threshold_hu (float, optional): treat the input as a CT and take voxels at or above this
            value (HU) as bone. Excludes ``label``.
        reference (Path, optional): ground-truth implant mask on the input's geometry: adds
            ``metrics`` to the report and measures the distance map against defective + reference.
        mesh_formats (Sequence[str]): formats of every mesh, from ``contract.MESH_FORMATS``
            (stl, obj, ply, vtk, vtp). Default ``("stl",)``.
        overwrite (bool): replace results already in the output folder; without it such a folder
            is refused. Default False.
        preview_size (tuple[int, int]): preview.png's (width, height) in pixels. Default (1800, 600).
        model_dir (Path, optional): folder holding the model registry; None:
            ``registry.default_model_dir()`` (``SPARSEIMPLANT_MODEL_DIR`` or the bundled models).
        test_time_augmentation (bool): average the completion network over
            ``inference.AUGMENTED_PASSES`` (4 passes); False: one pass, a quarter of the compute.
            Default True.
        keep_logit (float, optional): the completion model's pruning threshold (a voxel is kept
            where its logit exceeds it) instead of its registry value, for tuning.
        refine_model (str, optional): super-resolution model: a name, ``"auto"`` (the registry's
            model for the completion model's grid, if any) or ``"none"``. Default ``"auto"``.
        preview (bool): write preview.png; the Slicer module draws its own views and skips it.
            Default True.
        full_resolution_meshes (bool): write the whole-skull meshes as extracted instead of their
            display copies. Default False.
        straighten (bool): lay the network's grid with the scan's bottom cut level and the head
            facing forward (``pose``). Default True.
        method (str): how the skull is completed (``contract.METHODS``): ``"auto"`` (default: the
            network, or the fitted mean skull where the network leaves most of the opening open,
            ``doubts.fitted_fills_instead``), ``"network"`` alone, or one prior alone, ``"mirror"`` or
            ``"fitted"`` (``priors.Priors.completed``).
    """

    model: Optional[str] = None
    device: str = "auto"
    label: Optional[int] = None
    threshold_hu: Optional[float] = None
    reference: Optional[Path] = None  # ground-truth implant mask: adds metrics, distances against it
    mesh_formats: Sequence[str] = ("stl",)
    overwrite: bool = False
    preview_size: Tuple[int, int] = (1800, 600)
    model_dir: Optional[Path] = None
    test_time_augmentation: bool = True  # average the network over AUGMENTED_PASSES (False: one pass, a quarter of the compute)
    keep_logit: Optional[float] = None  # the completion model's pruning threshold instead of its registry value (tuning)
    refine_model: Optional[str] = "auto"  # super-resolution model: a name, "auto" (the registry's, if any) or "none"
    preview: bool = True  # preview.png; the Slicer module draws its own views and skips it
    full_resolution_meshes: bool = False  # whole-skull meshes as extracted, not their display copies (display_meshes.display_mesh)
    straighten: bool = True  # lay the network's grid with the scan's bottom cut level and the head facing forward (pose)
    method: str = "auto"  # how the skull is completed (METHODS): the network or, where it leaves the opening, the fitted mean skull


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
        implant (with auto, "network" or "fitted"; a fallback is also the first warning).

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
        by_fitted = priors.added(cropped.array, "fitted")
        expected = priors.added(cropped.array, "mirror") | by_fitted
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
        completed_on_grid = priors.completed(model_input.cropped.array, method).astype(np.float32)
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


def _check_options(input_path: Path, output_dir: Path, options: GenerateOptions) -> None:
    unknown = sorted(set(options.mesh_formats) - set(MESH_FORMATS))
    if unknown or not options.mesh_formats:
        raise SparseImplantError(f"unknown mesh format(s) {unknown or '(none)'}: choose from {', '.join(MESH_FORMATS)}")
    resolved_input = input_path.resolve()
    if any((output_dir / name).resolve() == resolved_input for name in output_names(options.mesh_formats, options.preview)):
        raise SparseImplantError(f"the output folder would overwrite the input '{input_path}': choose another folder")


def generate(input_path: Path, output_dir: Path, options: GenerateOptions = GenerateOptions(),
             progress: ProgressCallback = ignore_progress) -> dict:
    """Run the whole job and return the report (also written as report.json).

    The whole skulls are written and shown as display meshes (``display_meshes.display_mesh``: within
    ``DISPLAY_TOLERANCE_MM`` of the full-resolution surfaces, a fifth of their triangles) unless
    ``options.full_resolution_meshes``; the implant mesh, which is printed, is always full resolution.
    The distance map is the completed skull's display mesh, its vertices measured against the
    full-resolution reference surface.

    Writes into ``output_dir`` (``contract.output_names``): completed_skull.nrrd and implant.nrrd on
    the input's geometry, completed_skull, defective_skull and implant meshes in each of
    ``options.mesh_formats`` (no implant mesh for an empty implant), distance_map.vtp (per-vertex
    ``SignedDistance_mm``), preview.png when ``options.preview``, and report.json. The files are
    staged and moved in together only if every step succeeded (``outputs.staged_output``).

    Args:
        input_path (Path or str): the defective skull: a binary or label mask, or a CT with
            ``options.threshold_hu`` (NRRD, NIfTI, MHA/MHD).
        output_dir (Path or str): the results' folder, created if missing.
        options (GenerateOptions): see its attributes. Default ``GenerateOptions()``.
        progress (ProgressCallback): receives ``ProgressEvent``s from read (0.0) to done (1.0).
            Default: ignored.

    Returns:
        dict: the report: input, model, device (the one that finished), timings_s (per stage),
        threads, network_passes, voxels (defective, completed, implant counts), implant_volume_ml,
        implant_report (None for an empty implant), warnings, pose, priors, distance (mean_abs,
        mean_signed, max_abs, p95_abs in mm), versions, and metrics when ``options.reference``.

    Raises:
        SparseImplantError: a user error, with its fix in the message: unknown mesh format, model or
            label; an unknown or unavailable device; label and threshold together; an unreadable,
            non-3D or non-binary input; a reference of another geometry; an output folder that would
            overwrite the input, is not writable, or holds results without ``options.overwrite``; the
            skull vanishing on the model's grid. On any error nothing is moved into the output folder.
    """
    from ..surfaces.distances import DistanceTo, NearChanges, add_signed_distance, distance_statistics
    from ..surfaces.from_masks import surface_from_mask
    from ..surfaces.implant_report import implant_report

    input_path, output_dir = Path(input_path), Path(output_dir)
    _check_options(input_path, output_dir, options)
    clock = StageClock()
    with staged_output(output_dir, output_names(options.mesh_formats, options.preview), options.overwrite) as staging:
        progress(ProgressEvent("read", 0.0, f"reading {input_path.name}"))
        with clock.stage("read"):
            defective = read_mask(input_path, options.label, options.threshold_hu)
            reference = (read_mask(options.reference, remedy="the reference must be a binary implant mask (0 and 1)")
                         if options.reference else None)
            if reference is not None and not reference.same_geometry(defective):
                raise SparseImplantError("the reference implant's geometry differs from the input's: resample it onto the input")
            device = select_device(options.device)
            networks = load_networks(options.model, options.refine_model, device, options.model_dir,
                                     options.keep_logit)
        progress(ProgressEvent("read", 0.05, f"model {networks.info.name} on {device.type}"))
        # Surfaces run beside the main line, on the core that its numpy, scipy and sequential VTK steps
        # leave idle (VTK releases the GIL): the input skull's beside the design; the implant's and the
        # completed skull's as soon as the first cut is made, beside the priors that decide whether it
        # stands, while this thread makes the lab report, the masks' files and the distances' search
        # structure; the mesh files beside the preview. The executor waits for its work on errors too.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="beside") as beside:
            input_skull = beside.submit(_surfaces_of_input, defective)
            started: List[_StartedSurfaces] = []

            def start_surfaces(completed: Volume, implant: Volume) -> None:
                started.append(_StartedSurfaces(completed, beside.submit(_printable_implant, implant, input_skull),
                                                beside.submit(surface_from_mask, completed)))

            design = design_implant(defective, networks, device, progress, clock, options.test_time_augmentation,
                                    options.straighten, options.method, on_cut=start_surfaces)
            completed, implant, device = design.completed, design.implant, design.device
            progress(ProgressEvent("meshes", 0.75, "surfaces of the implant and the completed skull"))
            with clock.stage("meshes"):  # several seconds: each step moves the bar
                surfaces = next((surfaces for surfaces in started if surfaces.completed is completed), None)
                for replaced in started:
                    if replaced is not surfaces:  # the fitted skull shape's cut replaced the first one
                        replaced.cancel()
                if surfaces is None:
                    start_surfaces(completed, implant)
                    surfaces = started[-1]
                defective_surface, defective_view = input_skull.result()
                implant_surface = surfaces.implant.result()
                completed_skull = beside.submit(_surfaces_of_completed, completed, surfaces.extracted,
                                                defective_surface, _own_copy(implant_surface))  # the lab report uses the original
                # What a lab checks before printing: volume, area, thickness, border fit, watertightness.
                fit = (implant_report(implant_surface, implant, defective_surface).to_json()
                       if implant_surface is not None else None)
                write_volume(staging / COMPLETED_FILE, completed)
                write_volume(staging / IMPLANT_FILE, implant)
                # The distances' search structure is built here, while the completed skull's surface is
                # made: built beside the design instead, it slowed the network's two threads down.
                if reference is not None:
                    against = defective.with_array(((defective.array > 0) | (reference.array > 0)).astype(np.uint8))
                    distance_to_against = DistanceTo(surface_from_mask(against))
                else:
                    against, distance_to_against = defective, DistanceTo(defective_surface)
                near_changes = NearChanges(completed, against)
                if options.preview:  # its VTK modules load while the completed skull's surface is made
                    from ..surfaces.render import render_three_panel
                completed_surface, completed_view = completed_skull.result()
                progress(ProgressEvent("meshes", 0.85, "signed distances"))
                distance_surface = add_signed_distance(completed_view, distance_to_against, where=near_changes.at(completed_view))
                distances = distance_statistics(_point_array(distance_surface, contract.DISTANCE_ARRAY))
            whole_skulls = ((completed_surface, defective_surface) if options.full_resolution_meshes
                            else (completed_view, defective_view))
            meshes = {contract.mesh_file(stem, fmt): surface for fmt in options.mesh_formats
                      for stem, surface in zip(contract.MESH_STEMS, (*whole_skulls, implant_surface))
                      if surface is not None}  # the implant at full resolution; none for an empty implant
            meshes[contract.DISTANCE_MAP_FILE] = distance_surface
            progress(ProgressEvent("write", 0.9, "writing results"))
            # The files are written beside the preview, each from its own copy: VTK's writers and renderer
            # walk a mesh's cells with state kept in the mesh.
            written = beside.submit(_export_meshes, {name: _own_copy(surface) for name, surface in meshes.items()},
                                    staging)
            if options.preview:
                with clock.stage("preview"):
                    render_three_panel(completed_view, defective_view, implant_surface, distance_surface,
                                       staging / contract.PREVIEW_FILE, size=options.preview_size)
            with clock.stage("write"):  # what of the writing the preview did not hide
                written.result()
        report = {
            "input": str(input_path),
            "model": networks.describe(),
            "device": device.type,
            "timings_s": clock.timings,
            "threads": _threads(),
            "method": options.method,
            "completed_by": design.completed_by,
            "network_passes": len(network_passes(options.test_time_augmentation)),
            "voxels": {
                "defective": int(np.count_nonzero(defective.array)),
                "completed": int(np.count_nonzero(completed.array)),
                "implant": int(np.count_nonzero(implant.array)),
            },
            "implant_volume_ml": round(design.implant_ml, 3),
            "implant_report": fit,
            "warnings": design.warnings,
            "notes": design.notes,
            "pose": design.pose,
            "priors": design.priors,
            "distance": distances,
            "versions": _versions(),
        }
        if reference is not None:
            report["metrics"] = evaluate_case(implant, reference, defective, completed, case=input_path.name)
        (staging / contract.REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    progress(ProgressEvent("done", 1.0, f"results in {output_dir}"))
    return report


@dataclass
class _StartedSurfaces:
    """The surfaces of one cut, under way beside the main line: the printed implant's and the extracted
    surface of the completed skull's mask."""

    completed: Volume
    implant: Future
    extracted: Future

    def cancel(self) -> None:
        self.implant.cancel()
        self.extracted.cancel()


def _printable_implant(implant: Volume, input_skull: Future) -> Optional[vtkPolyData]:
    """The implant's mesh as printed (None for an empty implant), against the input skull's surface."""
    from ..surfaces.from_masks import printable_implant_surface

    return printable_implant_surface(implant, input_skull.result()[0]) if implant.array.any() else None


def _surfaces_of_completed(completed: Volume, extracted: Future, skull_surface: vtkPolyData,
                           implant_surface: Optional[vtkPolyData]) -> Tuple[vtkPolyData, vtkPolyData]:
    """The completed skull's full-resolution surface (from ``extracted``, the surface of its mask; its added
    bone as the printed implant) and its display mesh. Run beside VTK work on other objects: of
    ``skull_surface`` it reads the points only."""
    from ..surfaces.display_meshes import display_mesh
    from ..surfaces.from_masks import completed_skull_surface

    surface = completed_skull_surface(completed, skull_surface, implant_surface, extracted.result())
    return surface, display_mesh(surface)


def _export_meshes(meshes: Dict[str, vtkPolyData], folder: Path) -> None:
    from ..surfaces.meshes import export_mesh

    for name, surface in meshes.items():
        export_mesh(surface, folder / name)


def _own_copy(surface: Optional[vtkPolyData]) -> Optional[vtkPolyData]:
    """A deep copy, for work in another thread: VTK builds some of a surface's structures when first
    asked (bounds, cell links), which two threads must not do at once."""
    if surface is None:
        return None
    from vtkmodules.vtkCommonDataModel import vtkPolyData

    copy = vtkPolyData()
    copy.DeepCopy(surface)
    return copy


def _surfaces_of_input(skull: Volume) -> Tuple[vtkPolyData, vtkPolyData]:
    """``skull``'s full-resolution surface and its display mesh."""
    from ..surfaces.display_meshes import display_mesh
    from ..surfaces.from_masks import surface_from_mask

    surface = surface_from_mask(skull)
    return surface, display_mesh(surface)


def _point_array(surface, name: str) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(surface.GetPointData().GetArray(name))


def _threads() -> dict:
    """What the timings depend on besides the hardware: CPU threads and how idle OpenMP threads wait."""
    return {"torch": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}


def _versions() -> dict:
    from vtkmodules.vtkCommonCore import vtkVersion

    return {
        "sparseimplant": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "vtk": vtkVersion.GetVTKVersion(),
    }
