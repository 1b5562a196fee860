"""The command line end to end on a small synthetic skull, and every bad input it must refuse."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import PROJECT_ROOT, make_registry
from SparseImplantLib.cli import main
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.outputs import MANIFEST
from SparseImplantLib.pipeline.io import read_mask, write_volume
from SparseImplantLib.pipeline.volume import Volume
from SparseImplantLib.progress import ProgressEvent
from SparseImplantLib.surfaces.meshes import read_mesh


@pytest.fixture
def skull_file(tmp_path, synthetic_skull):
    return write_volume(tmp_path / "defective.nrrd", synthetic_skull[0])


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_writes_every_output(generated):
    """The shared run: generate with its defaults, a reference and STL, OBJ and VTK meshes."""
    out = generated.output
    names = {p.name for p in out.iterdir()}
    assert {"completed_skull.nrrd", "implant.nrrd", "completed_skull.stl", "completed_skull.obj",
            "defective_skull.stl", "defective_skull.obj", "distance_map.vtp", "preview.png", "report.json"} <= names
    assert {name for name in names if name.startswith(".")} == {MANIFEST}  # no staging folder left
    assert json.loads((out / MANIFEST).read_text())["files"] == sorted(names - {MANIFEST})
    report = json.loads((out / "report.json").read_text())
    assert report["device"] == "cpu" and report["model"]["name"] == "tiny"
    assert set(report["metrics"]) == {"dsc", "bdsc", "hd95_mm", "skull_dsc"}
    assert {"read", "pose", "network", "implant", "meshes", "write"} <= set(report["timings_s"])
    assert report["network_passes"] == 4
    assert set(report["pose"]) == {"straightened", "cut_tilt_deg", "cut_area_cm2", "yaw_undone_deg", "turn_deg",
                                   "about_left_right_deg", "about_front_back_deg", "about_vertical_deg", "template_match"}
    completed = sitk.ReadImage(str(out / "completed_skull.nrrd"))
    source = sitk.ReadImage(str(generated.source))
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
                                  "--progress", "none", "--mesh-formats", "vtk", "--no-test-time-augmentation", "--no-preview", *flag)
        assert code == 0, stderr
        cells[bool(flag)] = read_mesh(out / "defective_skull.vtk").GetNumberOfCells()
    assert cells[False] < cells[True]


def test_no_straighten_leaves_the_skull_unstraightened(tmp_path, capsys, skull_file, model_dir):
    out = tmp_path / "kept"
    code, _, stderr = run_cli(capsys, "generate", skull_file, "-o", out, "--model-dir", model_dir, "--device", "cpu",
                              "--progress", "none", "--no-test-time-augmentation", "--no-preview", "--no-straighten")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["pose"]["straightened"] is False and report["pose"]["cut_tilt_deg"] is None
    assert report["pose"]["yaw_undone_deg"] == 0


def test_json_progress_lines_through_the_entry_point(tmp_path, skull_file, model_dir):
    out = tmp_path / "out"
    process = subprocess.run(
        [sys.executable, "-m", "SparseImplantLib.cli", "generate", str(skull_file), "-o", str(out),
         "--model-dir", str(model_dir), "--progress", "json", "--no-test-time-augmentation"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600,
    )
    assert process.returncode == 0, process.stderr
    events = [ProgressEvent.from_line(line) for line in process.stdout.splitlines()]
    events = [e for e in events if e is not None]
    assert events[0].stage == "read" and events[-1].stage == "done" and events[-1].fraction == 1.0
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions)
    assert max(b - a for a, b in zip(fractions, fractions[1:])) <= 0.36  # no long stall: the network's passes report
    stages = [stage for i, stage in enumerate(e.stage for e in events) if i == 0 or events[i - 1].stage != stage]
    assert len(stages) == len(set(stages)), stages  # each stage once, in order (no network -> pose -> network)


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
    assert not out.exists()  # a failed run leaves no new, empty output folder (issue 22, item 9)


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
        assert not out.exists()


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
                                   "--model-dir", model_dir, "--device", "cpu", "--no-test-time-augmentation")
    assert code == 0, stderr
    assert sorted(p.name for p in predictions.iterdir()) == ["001", "002", "predict_summary.json"]
    assert {p.name for p in (predictions / "001").iterdir()} == {"completed_skull.nrrd", "implant.nrrd", "report.json",
                                                                 MANIFEST}
    report = json.loads((predictions / "001" / "report.json").read_text())
    assert report["case"] == "001" and report["device"] == "cpu" and report["pose"]["straightened"] is True
    assert {"read", "pose", "priors", "network", "implant", "write"} <= set(report["timings_s"])
    assert "agreement_dsc" in report["priors"] and isinstance(report["implant_volume_ml"], float)
    summary = json.loads((predictions / "predict_summary.json").read_text())
    assert [case["case"] for case in summary["cases"]] == ["001", "002"]
    doubtful = [case["case"] for case in summary["cases"] if case["warning_count"]]
    assert [case["case"] for case in summary["doubtful"]] == doubtful
    assert stdout.splitlines()[-1].endswith(f"summary in {predictions / 'predict_summary.json'}")
    code, stdout, stderr = run_cli(capsys, "evaluate", "--predictions", predictions, "--data", tiny_skullfix,
                                   "--cases", "001-002", "-o", tmp_path / "evaluation")
    assert code == 0, stderr
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert len(report["cases"]) == 2


def eager_model_dir(tmp_path, model_dir):
    """The tiny model keeping every voxel it generates: an implant however untrained it is."""
    registry = json.loads((model_dir / "registry.json").read_text())
    registry["models"][0]["keep_logit"] = -1e6
    eager = tmp_path / "eager"
    eager.mkdir()
    (eager / "registry.json").write_text(json.dumps(registry))
    (eager / "tiny.safetensors").write_bytes((model_dir / "tiny.safetensors").read_bytes())
    return eager


@pytest.mark.slow
def test_overwrite_removes_the_earlier_runs_stale_files(tmp_path, capsys, skull_file, model_dir):
    """Issue 22, item 1: an input with no implant, rerun over a run that had one."""
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, "generate", skull_file, "-o", out, "--model-dir", eager_model_dir(tmp_path, model_dir),
                              "--progress", "none", "--no-test-time-augmentation")
    assert code == 0, stderr
    assert (out / "implant.stl").is_file()
    (out / "notes.txt").write_text("the user's own file")
    with pytest.warns(UserWarning, match="the implant is empty"):
        code, _, stderr = run_cli(capsys, "generate", skull_file, "-o", out, "--model-dir", model_dir, "--progress", "none",
                                  "--no-test-time-augmentation", "--overwrite")
    assert code == 0, stderr
    assert json.loads((out / "report.json").read_text())["voxels"]["implant"] == 0
    assert not (out / "implant.stl").exists()  # the earlier run's implant would contradict the report
    assert (out / "notes.txt").read_text() == "the user's own file"


def output_path(tmp_path, kind: str):
    """An output folder that cannot be written, of each kind a user runs into."""
    if kind == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "out"
    if kind == "unwritable":  # sysfs: no one may create files there, root included
        if not Path("/sys/kernel").is_dir():
            pytest.skip("needs Linux's /sys")
        return Path("/sys/kernel/sparseimplant-out")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker if kind == "file" else blocker / "out"


@pytest.mark.parametrize("command", ["generate", "predict", "evaluate"])
@pytest.mark.parametrize("kind", ["file", "under-a-file", "unwritable", "read-only"])
def test_output_folders_that_cannot_be_written(tmp_path, capsys, skull_file, model_dir, tiny_skullfix, command, kind):
    out = output_path(tmp_path, kind)
    arguments = {
        "generate": ["generate", skull_file, "--model-dir", model_dir, "--progress", "none"],
        "predict": ["predict", "--data", tiny_skullfix, "--cases", "001", "--model-dir", model_dir],
        "evaluate": ["evaluate", "--predictions", tiny_skullfix, "--data", tiny_skullfix, "--cases", "001"],
    }[command]
    if command == "evaluate":  # the ground truth as the prediction: only the output folder can fail
        (tiny_skullfix / "001").mkdir()
        (tiny_skullfix / "001" / "implant.nrrd").write_bytes((tiny_skullfix / "implant" / "001.nrrd").read_bytes())
    code, _, stderr = run_cli(capsys, *arguments, "-o", out)
    last = stderr.splitlines()[-1]  # after the progress bar of predict and evaluate
    assert code == 1 and last.startswith("sparseimplant: error: ") and "Traceback" not in stderr
    if "file" in kind:  # predict names its case folder, which lies under the file
        assert re.search(r"output path '.*' (is a file|lies under the file '.*'): give a folder$", last)
    else:
        assert "cannot write into output folder" in last and "choose a folder you can write to" in last


def test_a_failed_predict_leaves_no_case_folder(tmp_path, capsys, tiny_skullfix, model_dir):
    """Issue 22, item 9: the first case fails, so nothing of the run may remain."""
    write_volume(tiny_skullfix / "defective_skull" / "001.nrrd",
                 read_mask(tiny_skullfix / "defective_skull" / "000.nrrd").with_array(np.zeros((36, 36, 32), np.uint8)))
    predictions = tmp_path / "predictions"
    code, _, stderr = run_cli(capsys, "predict", "--data", tiny_skullfix, "--cases", "001-002", "-o", predictions,
                              "--model-dir", model_dir, "--no-test-time-augmentation")
    assert code == 1 and "empty mask" in stderr
    assert not predictions.exists()


@pytest.mark.parametrize("option, value", [("--keep-logit", "nan"), ("--keep-logit", "-inf"), ("--threshold", "inf")])
def test_numeric_options_must_be_finite(tmp_path, capsys, skull_file, tiny_skullfix, model_dir, option, value):
    """Issue 22, item 8: predict --keep-logit nan gave empty implants and exit code 0."""
    command = (["predict", "--data", tiny_skullfix, "--cases", "001"] if option == "--keep-logit"
               else ["generate", skull_file, "--progress", "none"])
    code, _, stderr = run_cli(capsys, *command, "-o", tmp_path / "out", "--model-dir", model_dir, f"{option}={value}")
    assert code == 1 and stderr == f"sparseimplant: error: {option} is {float(value)}: give a finite number\n"
    assert not (tmp_path / "out").exists()


def test_a_folder_or_an_unreadable_file_is_not_reported_missing(tmp_path, capsys, skull_file, model_dir):
    """Issue 22, item 9."""
    code, _, stderr = run_cli(capsys, "generate", tmp_path, "-o", tmp_path / "out", "--model-dir", model_dir)
    assert code == 1 and "is a folder, not a file" in stderr and "does not exist" not in stderr
    skull_file.chmod(0)
    try:
        with as_unprivileged_user(), pytest.raises(SparseImplantError, match="may not be read") as error:
            read_mask(skull_file)  # what generate reads its input with
    finally:
        skull_file.chmod(0o644)
    assert "does not exist" not in str(error.value)


@contextlib.contextmanager
def as_unprivileged_user():
    """Root reads every file: act as 'nobody' (effective ids only, restored after) so permissions apply."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_a_far_origin_is_not_reported_as_a_vanishing_skull(tmp_path, capsys, synthetic_skull, model_dir):
    """Issue 22, item 9: origin 1e300."""
    defective = synthetic_skull[0]
    far = Volume(defective.array, defective.spacing, (1e300, 0.0, 0.0), defective.direction)
    path = write_volume(tmp_path / "far.nrrd", far)
    code, _, stderr = run_cli(capsys, "generate", path, "-o", tmp_path / "out", "--model-dir", model_dir, "--progress", "none")
    assert code == 1 and "fix the origin in the file's header" in stderr and "vanishes" not in stderr


def test_a_bad_refine_model_names_its_own_option(tmp_path, capsys, skull_file, model_dir):
    """Issue 22, item 9: not "check --model"."""
    code, _, stderr = run_cli(capsys, "generate", skull_file, "-o", tmp_path / "out", "--model-dir", model_dir,
                              "--progress", "none", "--refine-model", "nosuch")
    assert code == 1 and "unknown model 'nosuch' (available: tiny): check --refine-model" in stderr
    code, _, stderr = run_cli(capsys, "generate", skull_file, "-o", tmp_path / "out", "--model-dir", model_dir,
                              "--progress", "none", "--refine-model", "tiny")
    assert code == 1 and "completion model but a super_resolution model is needed: choose another --refine-model" in stderr
    assert not (tmp_path / "out").exists()


def test_nan_weights_are_refused(tmp_path, capsys, skull_file):
    """Issue 22, item 9: not "is the skull already complete?" after a network that returns nothing."""
    import torch

    from SparseImplantLib.models.completion import CompletionNet
    from SparseImplantLib.models.registry import ModelInfo, save_network, write_registry

    network = CompletionNet((2,) * 7)
    with torch.no_grad():
        network.dec_s1_cls.bias.fill_(float("nan"))  # what a diverged training run saves
    info = save_network(network, ModelInfo(name="diverged", kind="completion", channels=[2] * 7, spacing_mm=[2.0] * 3,
                                           file="diverged.safetensors", directory=tmp_path))
    write_registry([info], tmp_path)
    code, _, stderr = run_cli(capsys, "generate", skull_file, "-o", tmp_path / "out", "--model-dir", tmp_path,
                              "--progress", "none")
    assert code == 1 and "weights of model 'diverged' contain NaN or infinite values" in stderr
    assert "already complete" not in stderr


def test_predict_runs_on_unlabelled_cases(tmp_path, capsys, tiny_skullfix, model_dir):
    """Issue 22, item 6: a test set without implants is what users predict on; evaluate still needs them."""
    import shutil

    shutil.rmtree(tiny_skullfix / "implant")
    predictions = tmp_path / "predictions"
    code, _, stderr = run_cli(capsys, "predict", "--data", tiny_skullfix, "--cases", "001", "-o", predictions,
                              "--model-dir", model_dir, "--no-test-time-augmentation")
    assert code == 0, stderr
    assert (predictions / "001" / "implant.nrrd").is_file()
    code, _, stderr = run_cli(capsys, "evaluate", "--predictions", predictions, "--data", tiny_skullfix)
    assert code == 1 and "has no 'implant' folder" in stderr


def test_label_zero_is_refused(tmp_path, capsys, synthetic_skull, model_dir):
    """Issue 22, item 7: the background is not a skull."""
    path = write_volume(tmp_path / "labels.nrrd", bad_volume("labels", synthetic_skull))
    code, _, stderr = run_cli(capsys, "generate", path, "-o", tmp_path / "out", "--model-dir", model_dir,
                              "--progress", "none", "--label", "0")
    assert code == 1 and "label 0 is the background of 'labels.nrrd'" in stderr
    assert not (tmp_path / "out").exists()


def test_a_ct_without_threshold_is_told_about_threshold(tmp_path, capsys, synthetic_skull, model_dir):
    """Issue 22, item 9: --label would not help a CT."""
    defective = synthetic_skull[0]
    ct = write_volume(tmp_path / "ct.nii.gz", defective.with_array(np.where(defective.array > 0, 1200, -1000).astype(np.int16)))
    code, _, stderr = run_cli(capsys, "generate", ct, "-o", tmp_path / "out", "--model-dir", model_dir, "--progress", "none")
    assert code == 1 and "values from -1000 to 1200, like a CT" in stderr and "--threshold" in stderr
    assert "--label" not in stderr


def test_evaluate_does_not_point_to_options_it_lacks(tmp_path, capsys, tiny_skullfix):
    """Issue 22, item 9: a non-binary prediction in evaluate."""
    labels = read_mask(tiny_skullfix / "implant" / "001.nrrd")
    write_volume(tmp_path / "pred" / "001" / "implant.nrrd", labels.with_array(labels.array * 2 + (labels.array == 0)))
    code, _, stderr = run_cli(capsys, "evaluate", "--predictions", tmp_path / "pred", "--data", tiny_skullfix, "--cases", "001")
    assert code == 1 and "predictions must be binary masks" in stderr and "--label" not in stderr


def test_method_fitted_completes_the_skull_with_the_fitted_mean_skull(tmp_path):
    """--method picks how the skull is completed; the report says which. On the sample, the fitted mean
    skull alone fills its opening (no network involved)."""
    from conftest import SAMPLE_DEFECTIVE

    out = tmp_path / "fitted"
    assert main(["generate", str(SAMPLE_DEFECTIVE), "-o", str(out), "--method", "fitted", "--device", "cpu",
                 "--progress", "none", "--no-preview", "--mesh-formats", "vtk"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["method"] == report["completed_by"] == "fitted"
    assert report["implant_volume_ml"] > 20  # the sample's opening is about 47 ml


def test_method_auto_fills_what_the_network_leaves_open_with_the_fitted_mean_skull(tmp_path, monkeypatch, capsys):
    """--method auto (the default): a network that adds no bone to the sample's 47 ml opening is
    replaced by the fitted mean skull, and the report and warnings say so, the progress never going
    back; --method network keeps the network's empty implant."""
    from conftest import SAMPLE_DEFECTIVE
    from SparseImplantLib.pipeline import design
    from SparseImplantLib.pipeline.doubts import FITTED_RIM_AGREEMENT
    from SparseImplantLib.pipeline.volume import paste

    def adds_nothing(model_input, networks, device, progress, test_time_augmentation):
        skull = model_input.cropped.array.astype(np.float32)
        return model_input.grid.with_array(paste(skull, model_input.box, model_input.grid.shape)), device

    monkeypatch.setattr(design, "coarse_skull", adds_nothing)
    reports, fractions = {}, {}
    for method in ("auto", "network"):
        out = tmp_path / method
        assert main(["generate", str(SAMPLE_DEFECTIVE), "-o", str(out), "--method", method, "--device", "cpu",
                     "--progress", "json", "--no-preview", "--mesh-formats", "vtk"]) == 0
        reports[method] = json.loads((out / "report.json").read_text(encoding="utf-8"))
        events = [ProgressEvent.from_line(line) for line in capsys.readouterr().out.splitlines()]
        fractions[method] = [event.fraction for event in events if event is not None]
    assert fractions["auto"] == sorted(fractions["auto"]) and fractions["auto"][-1] == 1.0
    auto, network = reports["auto"], reports["network"]
    assert auto["completed_by"] == "fitted" and auto["implant_volume_ml"] > 20
    chosen = auto["priors"]["fitted_bone"]["from"]  # whichever candidate meets the rim best
    assert chosen in auto["priors"]["fitted_bone"]["agreement_around"]
    # The command line's summary and the Slicer results table's "Designed by" name the shape that filled.
    from SparseImplantLib.contract import designer_in_words
    assert designer_in_words(auto) == f"fitted skull shape ({chosen})" and designer_in_words(network) == "network"
    said = [message for message in auto["warnings"] + auto["notes"] if f"the implant is the {chosen}'s instead" in message]
    assert len(said) == 1  # a note where the fitted shape meets the rim well, else the first warning
    rim = auto["priors"]["fitted_bone"]["agreement_around"][chosen]
    assert (said[0] in auto["notes"]) == (rim >= FITTED_RIM_AGREEMENT)
    assert said[0] in auto["notes"] or said[0] == auto["warnings"][0]
    # The surfaces begun on the network's (empty) cut are dropped: the mesh is the fitted implant's.
    from SparseImplantLib.surfaces.meshes import enclosed_volume_mm3

    implant_mesh_ml = enclosed_volume_mm3(read_mesh(tmp_path / "auto" / "implant.vtk")) / 1000
    assert implant_mesh_ml == pytest.approx(auto["implant_volume_ml"], rel=0.1)
    assert network["completed_by"] == "network" and network["implant_volume_ml"] == 0
    assert not (tmp_path / "network" / "implant.vtk").exists()
    assert any("likely incomplete" in message for message in network["warnings"])


def test_method_auto_keeps_the_networks_result_when_the_fitted_mean_skull_adds_no_more(monkeypatch):
    """On a complete skull whose mirror image 'expects' bone missing (an asymmetric forehead), neither the
    network nor the fitted mean skull adds any: the network's (empty) result stands, without a note
    that the fitted mean skull designed it."""
    from conftest import SAMPLE_DEFECTIVE
    from SparseImplantLib.pipeline import design as designing
    from SparseImplantLib.pipeline.inference import load_networks

    defective = read_mask(SAMPLE_DEFECTIVE)
    tried = []

    def nothing_added(model_input, priors, networks, device, method, *rest):
        tried.append(method)
        skull = model_input.grid.with_array(np.zeros(model_input.grid.shape, np.float32))
        return designing._Skull(method, skull, skull, None, device)

    monkeypatch.setattr(designing, "_skull_on_grid", nothing_added)
    def no_implant(defective, skull, on_cut=None):
        return designing._Cut(defective, defective.with_array(np.zeros_like(defective.array)))

    monkeypatch.setattr(designing, "_cut", no_implant)
    design = designing.design_implant(defective, load_networks(None, "none", "cpu"), "cpu", method="auto")
    assert tried == ["network", "fitted"]  # the sample's 47 ml opening is expected missing: the fallback is tried
    assert design.completed_by == "network" and design.implant_ml == 0
    assert not any("'s instead" in message for message in design.warnings + design.notes)


def test_run_as_the_program_generate_has_the_process_to_itself_and_in_process_callers_are_left_alone(monkeypatch,
                                                                                                        tmp_path):
    """The allocator is tuned, and the process ended at once, only when the process is the command's own
    (no argv given)."""
    from SparseImplantLib import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("tuned"))
    monkeypatch.setattr(cli, "leave_now", lambda code: calls.append(f"left with {code}"))
    arguments = ["generate", str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "out")]
    assert cli.main(arguments) == 1 and calls == []
    monkeypatch.setattr(sys, "argv", ["sparseimplant", *arguments])
    cli.main()
    assert calls == ["tuned", "left with 1"]
    monkeypatch.setattr(sys, "argv", ["sparseimplant", "evaluate", "--data", str(tmp_path), "--predictions", str(tmp_path),
                                      "-o", str(tmp_path / "evaluation")])
    cli.main()
    assert calls == ["tuned", "left with 1"]


def test_leave_now_runs_exit_handlers_flushes_and_keeps_the_exit_code():
    script = ("import atexit, sys; from SparseImplantLib.process import leave_now; "
              "atexit.register(lambda: print('handler ran')); sys.stdout.write('buffered '); leave_now(3)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 3 and done.stdout == "buffered handler ran\n"


def test_keep_freed_memory_leaves_a_working_allocator():
    """In a process of its own: arrays are made, freed and made again after the tuning."""
    script = ("from SparseImplantLib.process import keep_freed_memory; import numpy as np; keep_freed_memory(); "
              "sums = [float(np.full(30_000_000, i, dtype=np.float32).sum()) for i in range(3)]; "
              "assert sums == [0.0, 3e7, 6e7], sums")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
