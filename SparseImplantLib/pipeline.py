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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from . import __version__
from .errors import SparseImplantError
from .evaluate import COMPLETED_FILE, IMPLANT_FILE, evaluate_case
from .io import read_mask, staged_output, write_volume
from .inference import (
    OUTPUT_SMOOTHING,
    Networks,
    coarse_skull,
    load_networks,
    network_passes,
    refined_skull,
    select_device,
)
from .postprocess import extract_implant
from .progress import ProgressCallback, ProgressEvent, ignore_progress
from .volume import Volume, resample_mask, resample_soft_mask

MESH_FORMATS = ("stl", "obj", "ply", "vtk", "vtp")
MESH_STEMS = ("completed_skull", "defective_skull", "implant")  # defective: the fit check beside the implant


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
    preview: bool = True  # preview.png; the Slicer module draws its own views and skips it
    full_resolution_meshes: bool = False  # whole-skull meshes as extracted, not their display copies (geometry.display_mesh)


@dataclass
class StageClock:
    """Wall-clock seconds per stage, for the report."""

    timings: Dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


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
    from .data.datasets import list_cases

    selected = list_cases(data_root, cases=cases)
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
                defective = read_mask(files.defective_path)
            completed, implant, used = design_implant(defective, networks, chosen, clock=clock, averaged=averaged)
            with clock.stage("write"):
                write_volume(staging / COMPLETED_FILE, completed)
                write_volume(staging / IMPLANT_FILE, implant)
        records.append({"case": files.key, "device": used.type, "timings_s": clock.timings,
                        "refinement": networks.refiner_info.name if networks.refiner_info else None})
    progress(ProgressEvent("done", 1.0, f"{len(selected)} case(s) in {output_dir}"))
    return records


def output_names(mesh_formats: Sequence[str], preview: bool = True) -> list[str]:
    from .geometry import DISTANCE_FILE

    meshes = [f"{stem}.{fmt}" for stem in MESH_STEMS for fmt in mesh_formats]
    return [COMPLETED_FILE, IMPLANT_FILE, *meshes, DISTANCE_FILE, *(["preview.png"] if preview else []), "report.json"]


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

    The whole skulls are written and shown as display meshes (``geometry.display_mesh``: within
    ``DISPLAY_TOLERANCE_MM`` of the full-resolution surfaces, a fifth of their triangles) unless
    ``options.full_resolution_meshes``; the implant mesh, which is printed, is always full resolution.
    The distance map is the completed skull's display mesh, its vertices measured against the
    full-resolution reference surface."""
    from .geometry import (DISTANCE_FILE, add_signed_distance, display_mesh, distance_statistics, export_mesh,
                           surface_from_mask, vertices_near_changes)

    input_path, output_dir = Path(input_path), Path(output_dir)
    _check_options(input_path, output_dir, options)
    clock = StageClock()
    with staged_output(output_dir, output_names(options.mesh_formats, options.preview), options.overwrite) as staging:
        progress(ProgressEvent("read", 0.0, f"reading {input_path.name}"))
        with clock.stage("read"):
            defective = read_mask(input_path, options.label, options.threshold_hu)
            reference = read_mask(options.reference) if options.reference else None
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
            completed_view, defective_view = display_mesh(completed_surface), display_mesh(defective_surface)
            if reference is not None:
                against = defective.with_array(((defective.array > 0) | (reference.array > 0)).astype(np.uint8))
                against_surface = surface_from_mask(against)
            else:
                against, against_surface = defective, defective_surface
            distance_surface = add_signed_distance(completed_view, against_surface,
                                                   where=vertices_near_changes(completed_view, completed, against))
            distances = distance_statistics(_point_array(distance_surface, "SignedDistance_mm"))
        whole_skulls = ({"completed_skull": completed_surface, "defective_skull": defective_surface}
                        if options.full_resolution_meshes else
                        {"completed_skull": completed_view, "defective_skull": defective_view})
        progress(ProgressEvent("write", 0.9, "writing results"))
        with clock.stage("write"):
            write_volume(staging / COMPLETED_FILE, completed)
            write_volume(staging / IMPLANT_FILE, implant)
            for fmt in options.mesh_formats:
                for stem, surface in whole_skulls.items():
                    export_mesh(surface, staging / f"{stem}.{fmt}")
                if implant_surface is not None:
                    export_mesh(implant_surface, staging / f"implant.{fmt}")
            export_mesh(distance_surface, staging / DISTANCE_FILE)
        if options.preview:
            from .render import render_three_panel

            with clock.stage("preview"):
                render_three_panel(completed_view, defective_view, implant_surface, distance_surface,
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
