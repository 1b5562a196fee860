"""Inputs that would exhaust memory are refused from their header or their shape, before the voxels are
allocated or meshed; real skulls and the tests' synthetic shells pass (issue 22, item 4)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from conftest import SAMPLE_DEFECTIVE, SAMPLE_IMPLANT, oblique_direction, require_skullfix, run_capped, shell_skull
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.pipeline.io import read_mask, write_volume
from SparseImplantLib.pipeline.refusals import check_header, check_skull_shape
from SparseImplantLib.pipeline.volume import Volume

GEOMETRY = dict(spacing=(0.8, 0.7, 1.1), origin=(-20.0, 10.0, 5.0), direction=oblique_direction())
CAP = 3 << 30  # the child may import torch, but not allocate the 8 GB these headers claim


def _nrrd_header(path, sizes: str, encoding: str, payload: bytes):
    path.write_bytes(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {sizes}\nencoding: {encoding}\n\n".encode() + payload)
    return path


@pytest.mark.parametrize("sizes, encoding, payload", [
    ("2000 2000 2000", "raw", b"\0" * 1024),  # a header that lies about 1 KB of data
    ("2048 2048 2048", "gzip", gzip.compress(bytes(1 << 20))),  # a decompression bomb's header
])
def test_a_huge_header_is_refused_before_its_voxels_are_allocated(tmp_path, sizes, encoding, payload):
    path = _nrrd_header(tmp_path / "huge.nrrd", sizes, encoding, payload)
    out = tmp_path / "out"
    result = run_capped(["-m", "SparseImplantLib.cli", "generate", str(path), "-o", str(out), "--progress", "none"], CAP)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("sparseimplant: error: 'huge.nrrd' has ") and result.stderr.count("\n") == 1
    assert "voxels" in result.stderr and "crop it" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("changes, message", [
    (dict(spacing=(20.0, 20.0, 20.0)), r"spans 960 mm along axis 0 \(48 voxels of 20 mm\)"),  # metres of "skull"
    (dict(origin=(1e300, 0.0, 0.0)), "places its first voxel at .*1e\\+300"),  # resampling would lose the skull
])
def test_an_implausible_geometry_is_refused_from_the_header(tmp_path, synthetic_skull, changes, message):
    defective = synthetic_skull[0]
    path = write_volume(tmp_path / "skull.nrrd", Volume(defective.array, **dict(GEOMETRY, **changes)))
    with pytest.raises(SparseImplantError, match=message):
        read_mask(path)


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (1.0, -0.5, 1.0), (1.0, 1.0, float("nan"))])
def test_non_positive_spacing_is_refused(spacing):
    with pytest.raises(SparseImplantError, match="spacings must be positive"):
        check_header("skull.nrrd", (10, 10, 10), spacing, (0.0, 0.0, 0.0))


@pytest.mark.parametrize("density, message", [
    (0.2, "speckle, not bone"),  # sparse noise: nearly every voxel is all surface
    (0.5, "speckle, not bone"),  # the noise mask, whose meshes ran past 8 GB
    (0.8, "fills 80% of its bounding box"),  # dense noise: solid with holes
])
def test_noise_is_not_a_skull(tmp_path, density, message):
    noise = (np.random.default_rng(0).random((48, 48, 40)) < density).astype(np.uint8)
    path = write_volume(tmp_path / "noise.nrrd", Volume(noise, **GEOMETRY))
    with pytest.raises(SparseImplantError, match=message):
        read_mask(path)


def test_a_solid_object_is_not_a_skull(tmp_path):
    block = np.zeros((48, 48, 40), np.uint8)
    block[8:40, 8:40, 6:34] = 1
    with pytest.raises(SparseImplantError, match="fills 100% of its bounding box, but a skull is a shell"):
        read_mask(write_volume(tmp_path / "head.nrrd", Volume(block, **GEOMETRY)))


# Every synthetic shell the test suite builds (shape, radius, thickness), as defective skull, implant
# and complete skull: all must pass as skulls.
SHELLS = [
    dict(), dict(shape=(36, 36, 32), radius=12.0, thickness=3.0), dict(shape=(36, 36, 32), radius=14.0, thickness=3.0),
    dict(shape=(32, 32, 28), radius=11.0, thickness=2.5), dict(shape=(32, 32, 32), radius=11.0),
    dict(shape=(24, 24, 20), radius=8.0, thickness=2.0), dict(shape=(24, 24, 20), radius=9.0),
    dict(shape=(96, 96, 80), radius=40.0, thickness=3.0), dict(shape=(64, 60, 52), radius=22.0),
    dict(shape=(56, 56, 48), radius=20.0, thickness=4.0), dict(shape=(48, 48, 40), thickness=4.0),
    dict(shape=(64, 64, 56), radius=24.0, thickness=8.0), dict(shape=(84, 84, 64), radius=38.0),
]


@pytest.mark.parametrize("shell", SHELLS, ids=str)
def test_synthetic_shells_pass_as_skulls(shell):
    defective, implant = shell_skull(**shell)
    for mask in (defective, implant, defective | implant):
        check_skull_shape(mask, "shell")


@pytest.mark.slow
def test_real_skulls_pass():
    for path in (SAMPLE_DEFECTIVE, SAMPLE_IMPLANT):
        read_mask(path)
    root = require_skullfix()
    for case in sorted((root / "defective_skull").glob("*.nrrd"))[::20]:
        for folder in ("defective_skull", "complete_skull", "implant"):
            read_mask(root / folder / case.name)


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_case_range_of_billions_is_refused_before_it_is_built(tmp_path, command):
    arguments = ["-m", "SparseImplantLib.cli", command, "--data", str(tmp_path), "--cases", "0-3000000000"]
    arguments += ["--predictions", str(tmp_path)] if command == "evaluate" else ["-o", str(tmp_path / "out")]
    result = run_capped(arguments, CAP)
    assert "selects 3,000,000,001 cases, more than the 100,000 any data set has: check --cases" in result.stderr
    assert "Traceback" not in result.stderr and result.returncode in (1, 2)  # argparse's own exit code for evaluate
