"""Issue 29, item 2: the printed implant's surface before and after its smoothing, on held-out cases.

For each SkullFix case the bundled network designs the implant once; its mesh is then made both ways,
the skulls' light smoothing (before) and ``from_masks.printable_implant_surface`` (after). Each mesh is
voxelised back onto the CT grid and scored against the true implant like a mask (DSC, border DSC,
HD95), and the lab report's border gap and overlap are taken from it. Ripples are counted as the
median absolute mean curvature of the vertices more than 5 mm from the skull (a 2 mm ripple of
0.1 mm height gives about 1/mm; a skull's vault about 1/80 per mm).

    .venv/bin/python Utilities/measure_implant_surface.py --cases 050-059 -o results/bench/implant-surface.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkFiltersCore import vtkTriangleFilter
from vtkmodules.vtkFiltersGeneral import vtkCurvatures
from vtkmodules.vtkImagingStencil import vtkImageStencilToImage, vtkPolyDataToImageStencil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from SparseImplantLib.data.datasets import parse_case_range  # noqa: E402
from SparseImplantLib.evaluate import evaluate_case  # noqa: E402
from SparseImplantLib.pipeline.design import design_implant  # noqa: E402
from SparseImplantLib.pipeline.inference import load_networks, select_device  # noqa: E402
from SparseImplantLib.pipeline.io import read_mask  # noqa: E402
from SparseImplantLib.pipeline.volume import Volume  # noqa: E402
from SparseImplantLib.surfaces.from_masks import (  # noqa: E402
    distance_to_vertices,
    printable_implant_surface,
    surface_from_mask,
    without_specks,
)
from SparseImplantLib.surfaces.implant_report import implant_report  # noqa: E402
from SparseImplantLib.surfaces.meshes import transform_polydata  # noqa: E402

FACE_FROM_SKULL_MM = 5.0


def voxelised(surface, like: Volume) -> Volume:
    """The voxels of ``like``'s grid whose centres lie inside the closed ``surface`` (LPS mm)."""
    in_index_space = transform_polydata(surface, np.linalg.inv(like.index_to_lps()))
    stencil = vtkPolyDataToImageStencil()
    stencil.SetInputData(in_index_space)
    stencil.SetOutputOrigin(0.0, 0.0, 0.0)
    stencil.SetOutputSpacing(1.0, 1.0, 1.0)
    stencil.SetOutputWholeExtent(0, like.shape[0] - 1, 0, like.shape[1] - 1, 0, like.shape[2] - 1)
    image = vtkImageStencilToImage()
    image.SetInputConnection(stencil.GetOutputPort())
    image.SetInsideValue(1)
    image.SetOutsideValue(0)
    image.SetOutputScalarTypeToUnsignedChar()
    image.Update()
    voxels = vtk_to_numpy(image.GetOutput().GetPointData().GetScalars()).reshape(like.shape[::-1]).transpose(2, 1, 0)
    return like.with_array(np.ascontiguousarray(voxels))


def ripple_per_mm(surface, skull_surface) -> float:
    """Median |mean curvature| (1/mm) of the vertices more than FACE_FROM_SKULL_MM from the skull."""
    triangles = vtkTriangleFilter()
    triangles.SetInputData(surface)
    curvatures = vtkCurvatures()
    curvatures.SetInputConnection(triangles.GetOutputPort())
    curvatures.SetCurvatureTypeToMean()
    curvatures.Update()
    output = curvatures.GetOutput()
    values = np.abs(vtk_to_numpy(output.GetPointData().GetArray("Mean_Curvature")))
    points = vtk_to_numpy(output.GetPoints().GetData()).astype(float)
    faces = distance_to_vertices(points, skull_surface, FACE_FROM_SKULL_MM) >= FACE_FROM_SKULL_MM
    return float(np.median(values[faces])) if faces.any() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/skullfix"))
    parser.add_argument("--cases", default="050-059")
    parser.add_argument("-o", "--output", type=Path, default=Path("output/implant-surface.json"))
    args = parser.parse_args()
    device = select_device("auto")
    networks = load_networks(None, "auto", device)
    rows = []
    for case in parse_case_range(args.cases):
        defective = read_mask(args.data / "defective_skull" / f"{case}.nrrd")
        truth = read_mask(args.data / "implant" / f"{case}.nrrd")
        implant = design_implant(defective, networks, device).implant
        skull_surface = surface_from_mask(defective)
        row = {"case": case, "mask": _scores(implant, truth, defective)}
        for name, make in (("before", lambda: without_specks(surface_from_mask(implant))),
                           ("after", lambda: printable_implant_surface(implant, skull_surface))):
            start = time.perf_counter()
            surface = make()
            seconds = time.perf_counter() - start
            fit = implant_report(surface, implant, skull_surface)
            row[name] = {**_scores(voxelised(surface, implant), truth, defective), "gap_mm": round(fit.gap_mm, 3),
                         "overlap_mm": round(fit.overlap_mm, 3), "volume_ml": round(fit.volume_ml, 3),
                         "watertight": fit.watertight, "ripple_per_mm": round(ripple_per_mm(surface, skull_surface), 4),
                         "mesh_seconds": round(seconds, 2)}
        row["skull_ripple_per_mm"] = round(ripple_per_mm(skull_surface, surface_from_mask(implant)), 4)
        rows.append(row)
        print(json.dumps(row))
    summary = {stage: {key: round(float(np.mean([r[stage][key] for r in rows])), 4)
                       for key in ("dsc", "bdsc", "hd95_mm") + (("gap_mm", "overlap_mm", "ripple_per_mm") if stage != "mask" else ())}
               for stage in ("mask", "before", "after")}
    summary["skull_ripple_per_mm"] = round(float(np.median([r["skull_ripple_per_mm"] for r in rows])), 4)
    print(json.dumps(summary, indent=1))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"rows": rows, "mean": summary}, indent=1) + "\n")


def _scores(implant: Volume, truth: Volume, defective: Volume) -> dict:
    scores = evaluate_case(implant, truth, defective, None)
    return {key: round(float(scores[key]), 4) for key in ("dsc", "bdsc", "hd95_mm")}


if __name__ == "__main__":
    main()
