"""Generate Implant without Qt: scene segment -> subprocess -> results in the scene, cancel and errors."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is part of the test extras")

from conftest import shown_in_view, skull_segmentation  # noqa: E402
from SparseImplantLib.errors import SparseImplantError  # noqa: E402
from SparseImplantLib.outputs import MANIFEST  # noqa: E402
from SparseImplantLib.pipeline.io import read_mask, read_volume  # noqa: E402
from SparseImplantLib.slicer import scene_input, scene_results, scene_views  # noqa: E402
from SparseImplantLib.slicer.designer import LIBRARY_PARENT, DesignInputs, ImplantDesigner  # noqa: E402


def run_to_end(job, timeout_s: float = 300.0):
    events, deadline = [], time.monotonic() + timeout_s
    while not job.finished:
        assert time.monotonic() < deadline, "generate subprocess did not finish"
        events += job.poll()
        time.sleep(0.05)
    return events + job.poll()


def in_study(scene, node) -> int:
    """Put ``node`` under a new patient and study, as DICOM loading files it; returns the study's item."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient"), "Study")
    hierarchy.CreateItem(study, node)  # slicer-core has no plugin logic that gives new nodes an item
    return study


def study_of(scene, node) -> int:
    """The study item above ``node``'s subject-hierarchy item (0 if none)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(node)
    return hierarchy.GetItemAncestorAtLevel(item, "Study") if item else 0


def test_generate_implant_from_a_segment(tmp_path, model_dir, synthetic_skull, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    scene = slicer.vtkMRMLScene()
    skull = skull_segmentation(scene, synthetic_skull[0])
    reference = skull_segmentation(scene, synthetic_skull[1], "Ground truth")
    segment_id = skull.GetSegmentation().GetNthSegmentID(0)
    before = scene_input.segment_to_volume(skull, segment_id)
    designer = ImplantDesigner(scene, work_root=tmp_path / "work", model_dir=model_dir)
    inputs = DesignInputs(skull, segment_id, device="cpu", reference_segmentation_node=reference,
                          reference_segment_id=reference.GetSegmentation().GetNthSegmentID(0))
    request = designer.prepare(inputs)
    prepared = read_mask(request.input_path)  # the segment's extent grown by a margin (no reference geometry)
    assert prepared.array.sum() == before.array.sum()
    assert all(grown > original for grown, original in zip(prepared.shape, synthetic_skull[0].shape))
    job = designer.start(request)
    events = run_to_end(job)
    assert job.succeeded, job.log
    fractions = [event.fraction for event in events]
    assert fractions == sorted(fractions) and events[-1].stage == "done" and len(events) >= 4
    report = json.loads((request.output_dir / "report.json").read_text())
    assert report["threads"]["omp_wait_policy"] == "PASSIVE"  # idle OpenMP threads sleep beside Slicer
    # The worker writes only what the module loads: no preview, no second mesh format.
    written = {p.name for p in request.output_dir.iterdir()} - {MANIFEST}  # the run's own record of what it wrote
    assert written == {p.name for p in scene_results.result_files(request.output_dir).values()}
    skull.CreateDefaultDisplayNodes()
    study = in_study(scene, skull)
    result = designer.load(request, "Implant design", inputs)
    designer.discard(request)
    views = scene_views.three_view_nodes(scene)
    assert not any(shown_in_view(skull.GetDisplayNode(), view) for view in views)
    assert study_of(scene, result.segmentation) == study == study_of(scene, skull)
    assert all(study_of(scene, node) == study for node in result.all_nodes() if node is not result.legend)
    assert not request.input_path.parent.exists()
    segments = result.segmentation.GetSegmentation()
    assert [segments.GetNthSegment(i).GetName() for i in range(2)] == [scene_results.COMPLETED_SEGMENT, scene_results.IMPLANT_SEGMENT]
    completed = scene_input.segment_to_volume(result.segmentation, segments.GetNthSegmentID(0))
    assert completed.same_geometry(prepared)
    assert (completed.array[prepared.array > 0] == 1).all()  # the completed skull contains the input
    assert result.metrics_table is not None  # a reference was given
    # The input segmentation is exactly as it was.
    assert skull.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(scene_input.segment_to_volume(skull, segment_id).array, before.array)


def test_library_errors_come_back_as_one_line(tmp_path, synthetic_skull):
    scene = slicer.vtkMRMLScene()
    skull = skull_segmentation(scene, synthetic_skull[0])
    empty_models = tmp_path / "no-models"
    empty_models.mkdir()
    designer = ImplantDesigner(scene, work_root=tmp_path / "work", model_dir=empty_models)
    nodes_before = scene.GetNumberOfNodes()
    job = designer.start(designer.prepare(DesignInputs(skull, skull.GetSegmentation().GetNthSegmentID(0), device="cpu")))
    run_to_end(job)
    assert not job.succeeded and job.returncode != 0
    assert "registry" in job.error_message() and "\n" not in job.error_message()
    assert scene.GetNumberOfNodes() == nodes_before


def test_bad_inputs_are_refused_before_any_subprocess(tmp_path, synthetic_skull):
    scene = slicer.vtkMRMLScene()
    designer = ImplantDesigner(scene, work_root=tmp_path / "work")
    with pytest.raises(SparseImplantError, match="no input selected"):
        designer.prepare(DesignInputs())
    empty = skull_segmentation(scene, synthetic_skull[0].with_array(np.zeros(synthetic_skull[0].shape, np.uint8)))
    with pytest.raises(SparseImplantError):
        designer.prepare(DesignInputs(empty, empty.GetSegmentation().GetNthSegmentID(0)))
    assert list((tmp_path / "work").iterdir()) == []  # failed preparations leave nothing behind


def test_cancel_mid_run_kills_the_process_tree_and_leaves_the_scene_alone(tmp_path, model_dir, synthetic_skull):
    scene = slicer.vtkMRMLScene()
    skull = skull_segmentation(scene, synthetic_skull[0])
    designer = ImplantDesigner(scene, work_root=tmp_path / "work", model_dir=model_dir)
    request = designer.prepare(DesignInputs(skull, skull.GetSegmentation().GetNthSegmentID(0), device="cpu"))
    nodes_before = scene.GetNumberOfNodes()
    job = designer.start(request)
    deadline = time.monotonic() + 60
    while not job.poll():  # the worker has started working: cancel now means something
        assert time.monotonic() < deadline and not job.finished, job.log
        time.sleep(0.01)
    job.cancel()
    assert job.cancelled and not job.succeeded
    if os.name == "posix":
        assert job.returncode == -signal.SIGKILL
        with pytest.raises(ProcessLookupError):  # nothing of its process group is left
            os.killpg(job._process.pid, 0)
    time.sleep(1.0)  # a worker that had survived would keep writing
    assert not (request.output_dir / "report.json").exists()
    designer.discard(request)
    assert not request.input_path.parent.exists()
    assert scene.GetNumberOfNodes() == nodes_before


def test_a_missing_worker_is_one_user_error_and_leaves_no_work_folder(tmp_path, synthetic_skull):
    scene = slicer.vtkMRMLScene()
    skull = skull_segmentation(scene, synthetic_skull[0])
    designer = ImplantDesigner(scene, python=str(tmp_path / "bin" / "PythonSlicer"), work_root=tmp_path / "work")
    request = designer.prepare(DesignInputs(skull, skull.GetSegmentation().GetNthSegmentID(0)))
    with pytest.raises(SparseImplantError, match="cannot start the worker .*PythonSlicer"):
        designer.start(request)
    assert list((tmp_path / "work").iterdir()) == []


def test_the_worker_starts_from_the_given_environment(tmp_path):
    designer = ImplantDesigner(slicer.vtkMRMLScene(), work_root=tmp_path,
                               environment={"PATH": "/usr/bin", "PYTHONPATH": "/user/site", "OMP_WAIT_POLICY": "ACTIVE"})
    env = designer.worker_environment()
    assert env["PYTHONPATH"].split(os.pathsep) == [str(LIBRARY_PARENT), "/user/site"]
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and env["PYTHONUNBUFFERED"] == "1"
    assert set(env) == {"PATH", "PYTHONPATH", "OMP_WAIT_POLICY", "PYTHONUNBUFFERED"}  # nothing of this process's


@pytest.mark.parametrize("straighten, method", [(True, "Auto"), (False, "Fitted skull shape")])
def test_the_panels_choices_reach_the_workers_command_line(tmp_path, synthetic_skull, straighten, method):
    """Parameter node -> DesignInputs -> request -> command: the advanced options, the straightening switch
    and the design method too."""
    from types import SimpleNamespace

    from SparseImplantLib.slicer.designer import design_inputs

    scene = slicer.vtkMRMLScene()
    skull = skull_segmentation(scene, synthetic_skull[0])
    parameters = SimpleNamespace(inputSegmentation=skull, inputSegmentId=skull.GetSegmentation().GetNthSegmentID(0),
                                 inputVolume=None, boneThreshold=300.0, referenceSegmentation=None,
                                 referenceSegmentId="", model="tiny", device="CPU", refine=False, straighten=straighten,
                                 method=method)
    inputs = design_inputs(parameters, {"Auto": "auto", "GPU": "cuda", "CPU": "cpu"},
                           {"Auto": "auto", "Network": "network", "Fitted skull shape": "fitted", "Mirror image": "mirror"})
    assert inputs.straighten is straighten and inputs.segmentation_node is skull
    request = ImplantDesigner(scene, work_root=tmp_path / "work").prepare(inputs)
    command = request.command("python")
    assert ("--no-straighten" in command) is not straighten
    assert command[command.index("--method") + 1] == {"Auto": "auto", "Fitted skull shape": "fitted"}[method]
    assert command[command.index("--device") + 1] == "cpu" and command[command.index("--model") + 1] == "tiny"
    assert command[command.index("--refine-model") + 1] == "none" and "--threshold" not in command


def test_results_of_a_ct_run_are_filed_with_the_ct(tmp_path, generated, synthetic_skull):
    """``load`` with a CT input (the shared run's output stands for the CT run's, on the same grid): the
    results go into the CT's study and the CT is the segmentation's reference geometry; a segment chosen
    beside it would have been the input instead."""
    from SparseImplantLib.slicer.job import GenerateRequest
    from SparseImplantLib.surfaces.meshes import image_data, vtk_matrix

    scene = slicer.vtkMRMLScene()
    grid = synthetic_skull[0]
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    ct.SetAndObserveImageData(image_data(np.where(grid.array > 0, 1000, -1000).astype(np.int16)))
    ct.SetIJKToRASMatrix(vtk_matrix(grid.index_to_ras()))
    study = in_study(scene, ct)
    designer = ImplantDesigner(scene, work_root=tmp_path / "work")
    request = GenerateRequest(generated.source, generated.output)
    result = designer.load(request, "Implant design", DesignInputs(ct_volume_node=ct, threshold_hu=300.0))
    segmentation = result.segmentation
    assert segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()) is ct
    assert all(study_of(scene, node) == study for node in result.all_nodes() if node is not result.legend)
    for name, path in ((scene_results.COMPLETED_SEGMENT, "completed_mask"), (scene_results.IMPLANT_SEGMENT, "implant_mask")):
        written = read_volume(scene_results.result_files(generated.output)[path])
        back = scene_input.segment_to_volume(segmentation, segmentation.GetSegmentation().GetSegmentIdBySegmentName(name))
        assert back.same_geometry(written) and back.same_geometry(grid)
        np.testing.assert_array_equal(back.array, written.array)
    # With a segment chosen, the segmentation is the input, even with the CT still selected.
    skull = skull_segmentation(scene, grid)
    other = in_study(scene, skull)
    inputs = DesignInputs(skull, skull.GetSegmentation().GetNthSegmentID(0), ct_volume_node=ct)
    again = designer.load(request, "Implant design", inputs)
    assert study_of(scene, again.segmentation) == other
    assert again.segmentation.GetNodeReference(again.segmentation.GetReferenceImageGeometryReferenceRole()) is None
