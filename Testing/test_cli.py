"""The command line end to end on a small synthetic skull, and every bad input it must refuse."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import PROJECT_ROOT
from SparseImplantLib.cli import main
from SparseImplantLib.geometry import read_mesh
from SparseImplantLib.io import write_volume
from SparseImplantLib.progress import ProgressEvent
from test_models import make_registry


@pytest.fixture
def skull_file(tmp_path, synthetic_skull):
    return write_volume(tmp_path / "defective.nrrd", synthetic_skull[0])


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_writes_every_output(tmp_path, capsys, skull_file, model_dir, synthetic_skull):
    out = tmp_path / "out"
    reference = write_volume(tmp_path / "implant.nrrd", synthetic_skull[1])
    code, stdout, stderr = run_cli(capsys, "generate", skull_file, "-o", out, "--model-dir", model_dir,
                                   "--device", "cpu", "--progress", "none", "--mesh-formats", "stl,obj",
                                   "--reference", reference)
    assert code == 0, stderr
    names = {p.name for p in out.iterdir()}
    assert {"completed_skull.nrrd", "implant.nrrd", "completed_skull.stl", "completed_skull.obj",
            "defective_skull.stl", "defective_skull.obj", "distance_map.vtp", "preview.png", "report.json"} <= names
    assert not any(name.startswith(".") for name in names)
    report = json.loads((out / "report.json").read_text())
    assert report["device"] == "cpu" and report["model"]["name"] == "tiny"
    assert set(report["metrics"]) == {"dsc", "bdsc", "hd95_mm", "skull_dsc"}
    assert {"read", "network", "implant", "meshes", "write"} <= set(report["timings_s"])
    assert report["network_passes"] == 4
    completed = sitk.ReadImage(str(out / "completed_skull.nrrd"))
    source = sitk.ReadImage(str(skull_file))
    assert completed.GetSize() == source.GetSize()
    assert np.allclose(completed.GetDirection(), source.GetDirection())
    assert np.allclose(completed.GetOrigin(), source.GetOrigin())
    # The completed skull contains the defective one.
    defective = sitk.GetArrayFromImage(source) > 0
    assert (sitk.GetArrayFromImage(completed)[defective] == 1).all()


def test_full_resolution_meshes_only_on_request(tmp_path, capsys, skull_file, model_dir):
    cells = {}
    for flag in ((), ("--full-resolution-meshes",)):
        out = tmp_path / ("full" if flag else "display")
        code, _, stderr = run_cli(capsys, "generate", skull_file, "-o", out, "--model-dir", model_dir, "--device", "cpu",
                                  "--progress", "none", "--mesh-formats", "vtk", "--single-pass", "--no-preview", *flag)
        assert code == 0, stderr
        cells[bool(flag)] = read_mesh(out / "defective_skull.vtk").GetNumberOfCells()
    assert cells[False] < cells[True]


def test_json_progress_lines_through_the_entry_point(tmp_path, skull_file, model_dir):
    out = tmp_path / "out"
    process = subprocess.run(
        [sys.executable, "-m", "SparseImplantLib.cli", "generate", str(skull_file), "-o", str(out),
         "--model-dir", str(model_dir), "--progress", "json"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600,
    )
    assert process.returncode == 0, process.stderr
    events = [ProgressEvent.from_line(line) for line in process.stdout.splitlines()]
    events = [e for e in events if e is not None]
    assert events[0].stage == "read" and events[-1].stage == "done" and events[-1].fraction == 1.0
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions)


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "generate" in capsys.readouterr().out


def bad_volume(kind: str, synthetic_skull):
    defective = synthetic_skull[0]
    return {
        "empty": defective.with_array(np.zeros(defective.shape, np.uint8)),
        "full": defective.with_array(np.ones(defective.shape, np.uint8)),
        "labels": defective.with_array((defective.array + 2 * synthetic_skull[1].array).astype(np.uint8)),
        "nan": defective.with_array(np.where(defective.array > 0, np.nan, 0).astype(np.float32)),
    }[kind]


@pytest.mark.parametrize(
    "kind, message",
    [("empty", "empty mask"), ("full", "foreground everywhere"), ("labels", "--label"), ("nan", "NaN")],
)
def test_bad_masks_fail_cleanly(tmp_path, capsys, synthetic_skull, model_dir, kind, message):
    path = write_volume(tmp_path / f"{kind}.nrrd", bad_volume(kind, synthetic_skull))
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, "generate", path, "-o", out, "--model-dir", model_dir, "--progress", "none")
    assert code == 1
    assert message in stderr and stderr.count("\n") == 1 and stderr.startswith("sparseimplant: error: ")
    assert not out.exists() or list(out.iterdir()) == []


def test_bad_files_fail_cleanly(tmp_path, capsys, model_dir, skull_file):
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 8), np.uint8)), str(flat))
    stack = tmp_path / "stack.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 8, 8, 8), np.uint8)), str(stack))
    truncated = tmp_path / "truncated.nrrd"
    truncated.write_bytes(skull_file.read_bytes()[:300])
    for path, message in [(flat, "2D image"), (stack, "4D"), (truncated, "unreadable or truncated"),
                          (tmp_path / "nope.nrrd", "does not exist")]:
        out = tmp_path / f"out_{path.stem}"
        code, _, stderr = run_cli(capsys, "generate", path, "-o", out, "--model-dir", model_dir, "--progress", "none")
        assert code == 1 and message in stderr and stderr.count("\n") == 1
        assert not out.exists() or list(out.iterdir()) == []


def test_missing_and_wrong_weights(tmp_path, capsys, skull_file):
    wrong_kind = tmp_path / "sr"
    wrong_kind.mkdir()
    make_registry(wrong_kind, kind="super_resolution")
    code, _, stderr = run_cli(capsys, "generate", skull_file, "-o", tmp_path / "o1", "--model-dir", wrong_kind,
                              "--model", "tiny", "--progress", "none")
    assert code == 1 and "completion model is needed" in stderr
    missing = tmp_path / "missing"
    missing.mkdir()
    make_registry(missing).path.unlink()
    code, _, stderr = run_cli(capsys, "generate", skull_file, "-o", tmp_path / "o2", "--model-dir", missing,
                              "--progress", "none")
    assert code == 1 and "missing" in stderr
    assert not (tmp_path / "o2").exists() or list((tmp_path / "o2").iterdir()) == []


def test_existing_results_are_not_overwritten(tmp_path, capsys, skull_file, model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "implant.nrrd").write_text("earlier result")
    code, _, stderr = run_cli(capsys, "generate", skull_file, "-o", out, "--model-dir", model_dir, "--progress", "none")
    assert code == 1 and "--overwrite" in stderr
    assert (out / "implant.nrrd").read_text() == "earlier result"


def test_unknown_mesh_format(tmp_path, capsys, skull_file, model_dir):
    code, _, stderr = run_cli(capsys, "generate", skull_file, "-o", tmp_path / "o", "--model-dir", model_dir,
                              "--mesh-formats", "stl,fbx", "--progress", "none")
    assert code == 1 and "fbx" in stderr


def test_predict_then_evaluate(tmp_path, capsys, tiny_skullfix, model_dir):
    predictions = tmp_path / "predictions"
    code, stdout, stderr = run_cli(capsys, "predict", "--data", tiny_skullfix, "--cases", "001-002", "-o", predictions,
                                   "--model-dir", model_dir, "--device", "cpu", "--single-pass")
    assert code == 0, stderr
    assert sorted(p.name for p in predictions.iterdir()) == ["001", "002"]
    assert {p.name for p in (predictions / "001").iterdir()} == {"completed_skull.nrrd", "implant.nrrd"}
    code, stdout, stderr = run_cli(capsys, "evaluate", "--predictions", predictions, "--data", tiny_skullfix,
                                   "--cases", "001-002", "-o", tmp_path / "evaluation")
    assert code == 0, stderr
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert len(report["cases"]) == 2
