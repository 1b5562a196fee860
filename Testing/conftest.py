"""Shared fixtures and helpers: the real SkullFix data beside the project, small synthetic skulls, a tiny
model registry, and generate runs made once per session for the tests that only read their results.

Test modules import helpers from here (``from conftest import ...``), never from each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pytest

from SparseImplantLib.models.registry import ModelInfo
from SparseImplantLib.pipeline.volume import Volume

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SKULLFIX = PROJECT_ROOT.parent / "shared" / "data" / "skullfix"
SAMPLE_DEFECTIVE = PROJECT_ROOT / "Resources" / "SampleData" / "SkullFix_050_defective.nrrd"
SAMPLE_IMPLANT = PROJECT_ROOT / "Resources" / "SampleData" / "SkullFix_050_implant.nrrd"


def run_capped(arguments: Sequence[str], memory_bytes: int, **options) -> subprocess.CompletedProcess:
    """Run ``python arguments...`` with this worktree's code in a child whose address space is capped.

    What must fail before allocating is run this way: should it allocate after all, the child fails
    at the cap instead of swapping the machine, and the test sees the difference in its output."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, *arguments], preexec_fn=cap, capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": path}, timeout=600, **options)


def oblique_direction(angle_deg: float = 12.0) -> np.ndarray:
    angle = np.deg2rad(angle_deg)
    return np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(angle), -np.sin(angle)], [0.0, np.sin(angle), np.cos(angle)]]
    )


def shell_skull(shape=(48, 48, 40), radius=16.0, thickness=3.0, defect=True) -> tuple[np.ndarray, np.ndarray]:
    """A spherical shell 'skull' and, if ``defect``, the same shell with a cap cut out of its top.

    Returns (defective, implant) uint8 arrays; complete = defective | implant.
    """
    grid = np.indices(shape).astype(np.float64)
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    distance = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(axis=0))
    shell = (distance <= radius) & (distance > radius - thickness)
    shell &= grid[2] > centre[2] - radius * 0.6  # open at the bottom like a skull base
    if not defect:
        return shell.astype(np.uint8), np.zeros(shape, np.uint8)
    cap = (grid[2] - centre[2]) > radius * 0.6
    return (shell & ~cap).astype(np.uint8), (shell & cap).astype(np.uint8)


def synthetic_volumes() -> tuple[Volume, Volume]:
    """(defective, implant) of ``shell_skull`` on an oblique, anisotropic grid."""
    defective, implant = shell_skull()
    geometry = dict(spacing=(0.8, 0.7, 1.1), origin=(-20.0, 10.0, 5.0), direction=oblique_direction())
    return Volume(defective, **geometry), Volume(implant, **geometry)


@pytest.fixture
def synthetic_skull() -> tuple[Volume, Volume]:
    return synthetic_volumes()


def make_registry(directory: Path, kind: str = "completion") -> ModelInfo:
    """A registry in ``directory`` holding one small untrained ch1 model, 'tiny', on a 2 mm grid (seeded:
    the same weights every time)."""
    import torch

    from SparseImplantLib.models.completion import CHANNEL_PRESETS, CompletionNet
    from SparseImplantLib.models.registry import save_network, write_registry

    torch.manual_seed(1)
    info = ModelInfo(name="tiny", kind=kind, channels=list(CHANNEL_PRESETS["ch1"]), spacing_mm=[2.0, 2.0, 2.0],
                     file="tiny.safetensors", licence="test", directory=directory)
    save_network(CompletionNet(info.channels), info)
    write_registry([info], directory)
    return info


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A model folder with one small untrained completion model, 'tiny'."""
    directory = tmp_path / "models"
    directory.mkdir()
    make_registry(directory)
    return directory


class GenerateRun(NamedTuple):
    """A finished ``sparseimplant generate``: its input, the reference it was given, its output folder."""

    source: Path
    reference: Path
    output: Path


def _generate(folder: Path, source: Path, reference: Path, *options: str) -> GenerateRun:
    from SparseImplantLib.cli import main

    output = folder / "out"
    code = main(["generate", str(source), "-o", str(output), "--device", "cpu", "--progress", "none",
                 "--reference", str(reference), *options])
    assert code == 0, "the shared generate run failed"
    return GenerateRun(source, reference, output)


@pytest.fixture(scope="session")
def generated(tmp_path_factory) -> GenerateRun:
    """``generate`` with its defaults (four averaged passes, preview) of the tiny model on the synthetic
    skull, with its ground truth and STL, OBJ and VTK meshes: made once, for the tests that only read it."""
    from SparseImplantLib.pipeline.io import write_volume

    folder = tmp_path_factory.mktemp("generated")
    models = folder / "models"
    models.mkdir()
    make_registry(models)
    defective, implant = synthetic_volumes()
    return _generate(folder, write_volume(folder / "defective.nrrd", defective), write_volume(folder / "implant.nrrd", implant),
                     "--model-dir", str(models), "--mesh-formats", "stl,obj,vtk")


@pytest.fixture(scope="session")
def sample_generated(tmp_path_factory) -> GenerateRun:
    """What ``make demo`` runs: the bundled model on the bundled sample (SkullFix 050), four averaged
    passes, with its ground truth as reference; made once, for the tests that only read it."""
    return _generate(tmp_path_factory.mktemp("sample"), SAMPLE_DEFECTIVE, SAMPLE_IMPLANT)


def require_skullfix() -> Path:
    if not (SKULLFIX / "defective_skull" / "000.nrrd").is_file():
        pytest.skip("SkullFix data not found beside the project (../shared/data/skullfix)")
    return SKULLFIX


@pytest.fixture
def tiny_skullfix(tmp_path) -> Path:
    """Three synthetic cases (000-002) in the SkullFix layout, slightly oblique."""
    from SparseImplantLib.pipeline.io import write_volume

    root = tmp_path / "skullfix"
    for index, radius in enumerate((12.0, 13.0, 14.0)):
        defective, implant = shell_skull(shape=(36, 36, 32), radius=radius, thickness=3.0)
        geometry = dict(spacing=(1.0, 1.0, 1.2), origin=(0.0, 0.0, 0.0), direction=oblique_direction(5.0 * index))
        for folder, array in (("defective_skull", defective), ("implant", implant), ("complete_skull", defective | implant)):
            write_volume(root / folder / f"{index:03d}.nrrd", Volume(array, **geometry))
    return root


def skull_segmentation(scene, volume: Volume, name: str = "Defective skull"):
    """A segmentation node with one segment imported from ``volume``, as a user would have it."""
    import slicer

    from SparseImplantLib.slicer.scene_input import add_labelmap_node, enable_segmentations

    enable_segmentations(scene)
    labelmap = add_labelmap_node(scene, volume, name)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    scene.RemoveNode(labelmap)
    return segmentation


def load_utility(name: str):
    """A script of Utilities/ (not a package) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "Utilities" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_png(path: Path) -> np.ndarray:
    """(height, width, 3) RGB of a PNG, read with VTK as it was written."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    width, height, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[:, :, :3]


def shown_in_view(display, view) -> bool:
    """Whether a display node draws in ``view`` (visible, and the view is in its list or the list is empty)."""
    return bool(display.GetVisibility()) and (display.GetNumberOfViewNodeIDs() == 0
                                              or display.IsDisplayableInView(view.GetID()))
