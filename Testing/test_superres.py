"""Super-resolution refinement: which region is refined, what the network sees, how the model is chosen,
and the pipeline end to end with a refinement model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import shell_skull
from SparseImplantLib.cli import main
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.models.completion import CHANNEL_PRESETS, CompletionNet
from SparseImplantLib.models.registry import ModelInfo, find_model, find_refiner, load_registry, save_network, write_registry
from SparseImplantLib.pipeline import superres
from SparseImplantLib.pipeline.io import write_volume
from SparseImplantLib.pipeline.volume import Volume


def add_refiner(model_dir, name="tiny-sr", input_spacing=(2.0, 2.0, 2.0), training=None) -> ModelInfo:
    """Append an untrained two-channel super-resolution model to ``model_dir``'s registry."""
    torch.manual_seed(2)
    info = ModelInfo(name=name, kind="super_resolution", channels=list(CHANNEL_PRESETS["ch1"]), spacing_mm=[1.0] * 3,
                     file=f"{name}.safetensors", licence="test", in_channels=2, input_spacing_mm=list(input_spacing),
                     training=training or {}, directory=model_dir)
    save_network(CompletionNet(info.channels, in_channels=2), info)
    write_registry(load_registry(model_dir) + [info], model_dir)
    return info


def test_added_bone_ignores_surface_fringe_and_keeps_both_sides():
    defective, implant = shell_skull(shape=(48, 48, 40), thickness=4.0)
    coarse = defective | implant
    coarse[1:, :, :] |= defective[:-1, :, :]  # a one-voxel fringe all over the skull, as resampling leaves
    two_sided = coarse.copy()
    two_sided[2:8, 20:28, 2:8] = 1  # a second, smaller added piece away from the cap
    added = superres.added_bone(two_sided, defective)
    assert added[implant > 0].mean() > 0.5  # opening trims the plate's edges; the box margin covers them
    assert added[2:8, 20:28, 2:8].all()
    fringe = (coarse > 0) & (defective == 0) & (implant == 0)
    assert fringe.sum() > 500 and not added[fringe].any()
    box = superres.refine_box(coarse, defective, spacing=(1.0, 1.0, 1.0))
    cap = np.argwhere(implant)
    for axis, piece in enumerate(box):  # the whole cap, and (below it) no more than the margin of skull
        assert piece.start <= cap[:, axis].min() and piece.stop > cap[:, axis].max()
    assert box[2].start >= cap[:, 2].min() - superres.REFINE_MARGIN_MM
    assert superres.refine_box(defective, defective, spacing=(1.0, 1.0, 1.0)) is None


def test_input_voxels_mark_each_mask_in_its_channel():
    coarse = np.zeros((4, 4, 4), np.uint8)
    defective = np.zeros((4, 4, 4), np.uint8)
    coarse[0, 0, 0] = coarse[1, 1, 1] = 1
    defective[1, 1, 1] = defective[2, 2, 2] = 1
    voxels, features = superres.input_voxels(coarse, defective)
    by_voxel = {tuple(v): tuple(f) for v, f in zip(voxels.tolist(), features.tolist())}
    assert by_voxel == {(0, 0, 0): (1.0, 0.0), (1, 1, 1): (1.0, 1.0), (2, 2, 2): (0.0, 1.0)}


def test_refine_skull_redraws_only_the_box_and_keeps_the_defective_skull(monkeypatch):
    defective, implant = shell_skull(shape=(64, 64, 56), radius=24.0, thickness=8.0)  # 4 mm of bone
    geometry = dict(spacing=(0.5, 0.5, 0.5), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    defective_volume = Volume(defective, **geometry)
    coarse = Volume((defective | implant).astype(np.float32), **geometry)
    seen = {}

    def network_keeps_the_coarse_channel_only_above_half_height(network, coarse_box, defective_box, device):
        seen["shapes"] = coarse_box.shape, defective_box.shape
        kept = coarse_box.copy()
        kept[:, :, : coarse_box.shape[2] // 2] = 0
        return kept

    monkeypatch.setattr(superres, "refine_mask", network_keeps_the_coarse_channel_only_above_half_height)
    fine = superres.refine_skull(coarse, defective_volume, None, (1.0, 1.0, 1.0), "cpu", smoothing=1.0, margin_mm=8.0)
    # The canonical grid over the defective skull's 24 x 24 x 14 mm box (the cap is cut off) plus 8 mm each side.
    assert fine.shape == (40, 40, 30) and np.allclose(fine.spacing, 1.0) and np.allclose(fine.direction, np.eye(3))
    assert seen["shapes"][0] == seen["shapes"][1]
    on_fine = superres.resample_mask(defective_volume, fine).array
    assert (fine.array[on_fine > 0] == 1).all()  # the defective skull is always kept
    upsampled = superres.upsample_coarse(coarse, fine, smoothing=1.0)
    box = superres.refine_box(upsampled, on_fine, (1.0, 1.0, 1.0))
    outside = np.ones(fine.shape, bool)
    outside[box] = False
    np.testing.assert_array_equal(fine.array[outside], (upsampled | on_fine)[outside])
    inside = fine.array[box]
    assert not (inside[:, :, : inside.shape[2] // 2] & ~on_fine[box][:, :, : inside.shape[2] // 2]).any()


def test_refine_mask_runs_a_two_channel_network():
    torch.manual_seed(0)
    network = CompletionNet((4, 4, 4, 4, 4, 4, 4), in_channels=2).eval()
    defective, implant = shell_skull(shape=(24, 24, 20), radius=9.0)
    refined = superres.refine_mask(network, defective | implant, defective, torch.device("cpu"))
    assert refined.shape == defective.shape and refined.dtype == np.uint8
    assert set(np.unique(refined)) <= {0, 1}


def test_refinement_model_choice(model_dir):
    completion = find_model(model_dir=model_dir)
    assert find_refiner("auto", completion, model_dir) is None  # the registry has none yet
    add_refiner(model_dir, "for-4mm", input_spacing=(4.0, 4.0, 4.0))
    assert find_refiner("auto", completion, model_dir) is None  # made for another grid: not picked
    add_refiner(model_dir)
    assert find_refiner("auto", completion, model_dir).name == "tiny-sr"
    assert find_refiner(None, completion, model_dir).name == "tiny-sr"
    assert find_refiner("none", completion, model_dir) is None
    add_refiner(model_dir, "for-another-model", training={"coarse_model": {"name": "other", "sha256": "0" * 64}})
    add_refiner(model_dir, "for-tiny", training={"coarse_model": {"name": "tiny", "sha256": completion.sha256}})
    assert find_refiner("auto", completion, model_dir).name == "for-tiny"  # trained on this model's predictions
    with pytest.raises(SparseImplantError, match=r"refines a \[4.0, 4.0, 4.0\] mm grid but 'tiny' completes"):
        find_refiner("for-4mm", completion, model_dir)
    with pytest.raises(SparseImplantError, match="'tiny' is a completion model but a super_resolution model is needed"):
        find_refiner("tiny", completion, model_dir)


def test_generate_with_a_refinement_model(tmp_path, capsys, model_dir, synthetic_skull):
    add_refiner(model_dir)
    skull = write_volume(tmp_path / "defective.nrrd", synthetic_skull[0])
    common = ["--model-dir", str(model_dir), "--device", "cpu", "--no-test-time-augmentation", "--no-preview"]  # neither is under test
    assert main(["generate", str(skull), "-o", str(tmp_path / "refined"), "--progress", "none", *common]) == 0
    report = json.loads((tmp_path / "refined" / "report.json").read_text())
    assert report["model"]["refinement"]["name"] == "tiny-sr" and "refine" in report["timings_s"]
    assert main(["generate", str(skull), "-o", str(tmp_path / "plain"), "--progress", "none",
                 "--refine-model", "none", *common]) == 0
    assert "refinement" not in json.loads((tmp_path / "plain" / "report.json").read_text())["model"]
    code = main(["generate", str(skull), "-o", str(tmp_path / "refused"), "--refine-model", "tiny", *common])
    assert code != 0 and "super_resolution model is needed" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists() or list((tmp_path / "refused").iterdir()) == []


def test_slicer_job_turns_refinement_off_only_when_asked(tmp_path):
    from SparseImplantLib.slicer.job import GenerateRequest

    assert "--refine-model" not in GenerateRequest(tmp_path / "in.nrrd", tmp_path / "out").command()
    command = GenerateRequest(tmp_path / "in.nrrd", tmp_path / "out", refine=False).command()
    assert command[command.index("--refine-model") + 1] == "none"
