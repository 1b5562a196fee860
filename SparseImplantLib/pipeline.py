"""``generate``: defective skull in, completed skull, implant, meshes, distance map and preview out.

The one function the CLI and the Slicer module (through the CLI in a subprocess) call. Stages report
``ProgressEvent``s; every output is staged and moved into the output folder only when all succeeded.
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch

from . import __version__
from .errors import SparseImplantError
from .evaluate import COMPLETED_FILE, IMPLANT_FILE, evaluate_case
from .io import read_mask, write_volume
from .models.completion import CompletionNet
from .models.registry import ModelInfo, find_model, find_refiner, load_network
from .outputs import check_output, staged_output
from .postprocess import extract_implant
from .progress import ProgressCallback, ProgressEvent, ignore_progress
from .sparse import from_mask
from .superres import refine_skull
from .volume import Volume, crop, foreground_box, grid_with_spacing, paste, resample_mask, resample_soft_mask

MESH_FORMATS = ("stl", "obj", "ply", "vtk")
MESH_STEMS = ("completed_skull", "defective_skull", "implant")  # defective: the fit check beside the implant
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class GenerateOptions:
    model: Optional[str] = None
    device: str = "auto"
    label: Optional[int] = None
    threshold_hu: Optional[float] = None
    reference: Optional[Path] = None  # ground-truth implant mask: adds metrics, distances against it
    mesh_formats: Sequence[str] = ("stl",)
    overwrite: bool = False
    preview_size: Tuple[int, int] = (1800, 600)
    model_dir: Optional[Path] = None
    averaged: bool = True  # average the network over AVERAGED_PASSES (False: one pass, a quarter of the compute)
    refine_model: Optional[str] = "auto"  # super-resolution model: a name, "auto" (the registry's, if any) or "none"


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
                  model_dir: Optional[Path] = None) -> Networks:
    info = find_model(model, "completion", model_dir)
    refiner_info = find_refiner(refine_model, info, model_dir)
    refiner = load_network(refiner_info, device) if refiner_info is not None else None
    return Networks(load_network(info, device), info, refiner, refiner_info)


@dataclass
class StageClock:
    """Wall-clock seconds per stage, for the report."""

    timings: Dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


def select_device(requested: str = "auto") -> torch.device:
    if requested not in DEVICES:
        raise SparseImplantError(f"unknown device '{requested}': use one of {', '.join(DEVICES)}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SparseImplantError("--device cuda was asked for but no CUDA GPU is available: use --device cpu or auto")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


# Gaussian sigma, in model-grid voxels, applied to the network's mask before it is interpolated back to
# the CT grid: smooths the voxel-level raggedness of a coarse prediction. Chosen on training cases 040,
# 041, 043 (0.4 -> 1.0: mean implant DSC 0.822 -> 0.833, HD95 2.62 -> 2.55 mm), never on validation cases.
# The super-resolution network's mask gets the same (in its own grid's voxels): on training cases 040-044
# 0.4 -> 1.0 raised its mean implant DSC 0.896 -> 0.899 (a 1 mm model, 1,250 iterations into its training,
# refining the bundled 2 mm one; README, "Shape super-resolution").
OUTPUT_SMOOTHING = 1.0

# Test-time augmentation: (left-right flip, shift in grid voxels) of each network pass, averaged. The
# output depends on the side of the defect and on where the skull falls in the network's stride-64
# cells; the flip is the one training used (array axis 0, left-right in axial CT). On training cases
# 040-044 one pass -> flip -> shift -> both: mean implant DSC 0.878 -> 0.892 -> 0.894 -> 0.900 (eight
# passes, shifts 0/8/16/24 with and without the flip: 0.893); four passes take 1.0 s instead of 0.25 s
# on SkullFix 050 at 2 mm (2 CPU cores).
AVERAGED_PASSES = ((False, 0), (True, 0), (False, 8), (True, 8))
SINGLE_PASS = ((False, 0),)


def network_passes(averaged: bool) -> Tuple[Tuple[bool, int], ...]:
    return AVERAGED_PASSES if averaged else SINGLE_PASS


def model_grid_input(defective: Volume, info: ModelInfo) -> Tuple[Volume, Tuple[slice, slice, slice], Volume]:
    """The defective skull on the model's grid, cropped to the skull plus a margin for missing bone.

    Returns (cropped mask, crop box, the uncropped model grid)."""
    grid = grid_with_spacing(defective, info.spacing_mm)
    on_grid = resample_mask(defective, grid)
    if not on_grid.array.any():
        raise SparseImplantError(
            f"the skull vanishes at the model's {info.spacing_mm} mm grid (too thin or too small): check the input mask"
        )
    margin = int(np.ceil(info.crop_margin_mm / min(info.spacing_mm)))
    box = foreground_box(on_grid.array, margin)
    return crop(on_grid, box), box, on_grid


@torch.no_grad()
def predict_mask(network: CompletionNet, mask: np.ndarray, device: torch.device) -> np.ndarray:
    """Run the network on one binary mask; voxels it generates outside the array are dropped.

    Each kernel map of the network is used once, so none is cached: a full-resolution ch1 forward
    then peaks at 1.4 GB above baseline (results/bench/network.md; about 5 GB with cached maps)."""
    result = network(from_mask(mask.astype(bool), device=device, cache_maps=False))
    coordinates = result.output.C[:, 1:].cpu().numpy()
    inside = np.all((coordinates >= 0) & (coordinates < np.asarray(mask.shape)), axis=1)
    completed = np.zeros(mask.shape, dtype=np.uint8)
    completed[tuple(coordinates[inside].T)] = 1
    return completed


def predict_fraction(network: CompletionNet, mask: np.ndarray, device: torch.device,
                     passes: Sequence[Tuple[bool, int]] = AVERAGED_PASSES) -> np.ndarray:
    """Share of the (flip, shift) passes whose prediction keeps each voxel, as float32 in [0, 1]."""
    kept = np.zeros(mask.shape, dtype=np.float32)
    for flip, shift in passes:
        view = mask[::-1] if flip else mask
        predicted = predict_mask(network, np.pad(view, [(shift, 0)] * 3), device)[shift:, shift:, shift:]
        kept += predicted[::-1] if flip else predicted
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


def coarse_skull(defective: Volume, networks: Networks, device: torch.device,
                 progress: ProgressCallback = ignore_progress, averaged: bool = True) -> Tuple[Volume, torch.device]:
    """The completion network's skull on its (uncropped) grid, as the share of passes keeping each voxel."""
    cropped, box, grid = model_grid_input(defective, networks.info)
    passes = network_passes(averaged)
    stage = ProgressEvent("network", 0.2, f"{int(cropped.array.sum())} voxels on a {cropped.shape} grid, "
                                          f"{len(passes)} pass(es)")
    progress(stage)
    fraction, device = with_cpu_fallback(lambda on: predict_fraction(networks.completion, cropped.array, on, passes),
                                         networks, device, progress, stage)
    return grid.with_array(paste(fraction, box, grid.shape)), device


def refined_skull(coarse: Volume, defective: Volume, networks: Networks, device: torch.device,
                  progress: ProgressCallback = ignore_progress) -> Tuple[Volume, torch.device]:
    """The super-resolution network's skull on its finer grid (see ``superres``)."""
    info = networks.refiner_info
    stage = ProgressEvent("refine", 0.45, f"super-resolution on a {info.spacing_mm} mm grid ({info.name})")
    progress(stage)
    return with_cpu_fallback(lambda on: refine_skull(coarse, defective, networks.refiner, info.spacing_mm, on,
                                                     OUTPUT_SMOOTHING), networks, device, progress, stage)


def design_implant(defective: Volume, networks: Networks, device: torch.device,
                   progress: ProgressCallback = ignore_progress, clock: Optional[StageClock] = None,
                   averaged: bool = True) -> Tuple[Volume, Volume, torch.device]:
    """(completed skull, implant, device used) on the input's geometry; completed = defective | implant."""
    clock = clock or StageClock()
    with clock.stage("network"):
        coarse, device = coarse_skull(defective, networks, device, progress, averaged)
        if networks.refiner is None:
            progress(ProgressEvent("restore", 0.6, "resampling to the input grid"))
            completed_raw = resample_soft_mask(coarse, defective, smoothing=OUTPUT_SMOOTHING)
    if networks.refiner is not None:
        with clock.stage("refine"):
            fine, device = refined_skull(coarse, defective, networks, device, progress)
            progress(ProgressEvent("restore", 0.6, "resampling to the input grid"))
            completed_raw = resample_mask(fine, defective, smoothing=OUTPUT_SMOOTHING)
    progress(ProgressEvent("implant", 0.7, "extracting the implant"))
    with clock.stage("implant"):
        implant_array = extract_implant(completed_raw.array, defective.array, defective.spacing)
        if not implant_array.any():
            warnings.warn("the network added no bone: the implant is empty (is the skull already complete?)")
    implant = defective.with_array(implant_array.astype(np.uint8))
    completed = defective.with_array(((defective.array > 0) | implant_array).astype(np.uint8))
    return completed, implant, device


def predict_cases(data_root: Path, output_dir: Path, cases: Optional[Sequence[str]] = None, model: Optional[str] = None,
                  device: str = "auto", model_dir: Optional[Path] = None, overwrite: bool = False,
                  progress: ProgressCallback = ignore_progress, keep_logit: Optional[float] = None,
                  averaged: bool = True, refine_model: Optional[str] = "auto") -> list[dict]:
    """Batch prediction over a SkullFix/SkullBreak folder: OUTDIR/<case>/{completed_skull,implant}.nrrd,
    the layout ``evaluate`` reads. ``keep_logit`` overrides the completion model's pruning threshold
    (tuning); ``averaged`` and ``refine_model`` as in ``GenerateOptions``.
    Returns one timing record per case."""
    from .data.datasets import NOT_BINARY_REMEDY, list_cases

    selected = list_cases(data_root, cases=cases, with_implants=False)
    for files in selected:
        check_output(Path(output_dir) / files.key, [COMPLETED_FILE, IMPLANT_FILE], overwrite)
    chosen = select_device(device)
    networks = load_networks(model, refine_model, chosen, model_dir)
    if keep_logit is not None:
        networks.completion.keep_logit = keep_logit
    records = []
    for index, files in enumerate(selected):
        progress(ProgressEvent("predict", index / len(selected), files.key))
        clock = StageClock()
        with staged_output(Path(output_dir) / files.key, [COMPLETED_FILE, IMPLANT_FILE], overwrite) as staging:
            with clock.stage("read"):
                defective = read_mask(files.defective_path, remedy=NOT_BINARY_REMEDY)
            completed, implant, used = design_implant(defective, networks, chosen, clock=clock, averaged=averaged)
            with clock.stage("write"):
                write_volume(staging / COMPLETED_FILE, completed)
                write_volume(staging / IMPLANT_FILE, implant)
        records.append({"case": files.key, "device": used.type, "timings_s": clock.timings,
                        "refinement": networks.refiner_info.name if networks.refiner_info else None})
    progress(ProgressEvent("done", 1.0, f"{len(selected)} case(s) in {output_dir}"))
    return records


def output_names(mesh_formats: Sequence[str]) -> list[str]:
    meshes = [f"{stem}.{fmt}" for stem in MESH_STEMS for fmt in mesh_formats]
    return [COMPLETED_FILE, IMPLANT_FILE, *meshes, "distance_map.vtk", "preview.png", "report.json"]


def _check_options(input_path: Path, output_dir: Path, options: GenerateOptions) -> None:
    unknown = sorted(set(options.mesh_formats) - set(MESH_FORMATS))
    if unknown or not options.mesh_formats:
        raise SparseImplantError(f"unknown mesh format(s) {unknown or '(none)'}: choose from {', '.join(MESH_FORMATS)}")
    resolved_input = input_path.resolve()
    if any((output_dir / name).resolve() == resolved_input for name in output_names(options.mesh_formats)):
        raise SparseImplantError(f"the output folder would overwrite the input '{input_path}': choose another folder")


def generate(input_path: Path, output_dir: Path, options: GenerateOptions = GenerateOptions(),
             progress: ProgressCallback = ignore_progress) -> dict:
    """Run the whole job and return the report (also written as report.json)."""
    from .geometry import add_signed_distance, distance_statistics, export_mesh, surface_from_mask, vertices_near_changes
    from .render import render_three_panel

    input_path, output_dir = Path(input_path), Path(output_dir)
    _check_options(input_path, output_dir, options)
    clock = StageClock()
    with staged_output(output_dir, output_names(options.mesh_formats), options.overwrite) as staging:
        progress(ProgressEvent("read", 0.0, f"reading {input_path.name}"))
        with clock.stage("read"):
            defective = read_mask(input_path, options.label, options.threshold_hu)
            reference = (read_mask(options.reference, remedy="the reference must be a binary implant mask (0 and 1)")
                         if options.reference else None)
            if reference is not None and not reference.same_geometry(defective):
                raise SparseImplantError("the reference implant's geometry differs from the input's: resample it onto the input")
            device = select_device(options.device)
            networks = load_networks(options.model, options.refine_model, device, options.model_dir)
        progress(ProgressEvent("network", 0.1, f"model {networks.info.name} on {device.type}"))
        completed, implant, device = design_implant(defective, networks, device, progress, clock, options.averaged)
        implant_array = implant.array > 0
        progress(ProgressEvent("meshes", 0.8, "surfaces and distances"))
        with clock.stage("meshes"):
            completed_surface = surface_from_mask(completed)
            defective_surface = surface_from_mask(defective)
            implant_surface = surface_from_mask(implant) if implant_array.any() else None
            if reference is not None:
                truth = defective.with_array(((defective.array > 0) | (reference.array > 0)).astype(np.uint8))
                distance_surface = add_signed_distance(completed_surface, surface_from_mask(truth),
                                                       where=vertices_near_changes(completed_surface, completed, truth))
            else:
                distance_surface = add_signed_distance(completed_surface, defective_surface,
                                                       where=vertices_near_changes(completed_surface, completed, defective))
            distances = distance_statistics(_point_array(distance_surface, "SignedDistance_mm"))
        progress(ProgressEvent("write", 0.9, "writing results"))
        with clock.stage("write"):
            write_volume(staging / COMPLETED_FILE, completed)
            write_volume(staging / IMPLANT_FILE, implant)
            for fmt in options.mesh_formats:
                export_mesh(completed_surface, staging / f"completed_skull.{fmt}")
                export_mesh(defective_surface, staging / f"defective_skull.{fmt}")
                if implant_surface is not None:
                    export_mesh(implant_surface, staging / f"implant.{fmt}")
            export_mesh(distance_surface, staging / "distance_map.vtk")
            render_three_panel(completed_surface, defective_surface, implant_surface, distance_surface,
                               staging / "preview.png", size=options.preview_size)
        report = {
            "input": str(input_path),
            "model": networks.describe(),
            "device": device.type,
            "timings_s": clock.timings,
            "threads": _threads(),
            "network_passes": len(network_passes(options.averaged)),
            "voxels": {
                "defective": int(np.count_nonzero(defective.array)),
                "completed": int(np.count_nonzero(completed.array)),
                "implant": int(implant_array.sum()),
            },
            "implant_volume_ml": round(float(implant_array.sum()) * defective.voxel_volume_mm3 / 1000.0, 3),
            "distance": distances,
            "versions": _versions(),
        }
        if reference is not None:
            report["metrics"] = evaluate_case(implant, reference, defective, completed, case=input_path.name)
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    progress(ProgressEvent("done", 1.0, f"results in {output_dir}"))
    return report


def _point_array(surface, name: str) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(surface.GetPointData().GetArray(name))


def _threads() -> dict:
    """What the timings depend on besides the hardware: CPU threads and how idle OpenMP threads wait."""
    return {"torch": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}


def _versions() -> dict:
    import vtk

    return {
        "sparseimplant": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "vtk": vtk.vtkVersion.GetVTKVersion(),
    }
