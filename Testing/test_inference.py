"""The canonical frame makes the network see a skull the same way however the file stores it; averaged
passes undo their flip and shift; a GPU out of memory retries on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SAMPLE_IMPLANT, oblique_direction
from SparseImplantLib.models.completion import CompletionNet
from SparseImplantLib.models.registry import ModelInfo
from SparseImplantLib.pipeline import inference
from SparseImplantLib.pipeline.io import read_mask
from SparseImplantLib.pipeline.priors import Priors
from SparseImplantLib.pipeline.volume import Volume, reorient, undo_reorient
from SparseImplantLib.progress import ProgressEvent


def test_averaged_passes_undo_their_flip_and_shift(monkeypatch):
    rng = np.random.default_rng(0)
    mask = (rng.random((10, 7, 9)) > 0.6).astype(np.uint8)

    monkeypatch.setattr(inference, "predict_mask", lambda network, view, device, priors=None: view.copy())
    np.testing.assert_array_equal(inference.predict_fraction(None, mask, "cpu"), mask)  # identity stays identity

    # The priors go through each pass's flip and shift with the skull: a network that returns the
    # mirror prior gives it back in place.
    mirror = (rng.random(mask.shape) > 0.5)
    priors = Priors(mirror, np.zeros(mask.shape, np.float32), None, None)
    monkeypatch.setattr(inference, "predict_mask", lambda network, view, device, priors=None: priors.mirror.copy())
    np.testing.assert_array_equal(inference.predict_fraction(None, mask, "cpu", priors=priors), mirror)

    def keep_even_rows(network, view, device, priors=None):  # depends on where a voxel sits in the pass's own frame
        return view * (np.arange(view.shape[0]) % 2 == 0)[:, None, None]

    monkeypatch.setattr(inference, "predict_mask", keep_even_rows)
    averaged = inference.predict_fraction(None, mask, "cpu")
    # 10 rows: the flipped passes keep the odd rows, the others the even ones, so every voxel gets 0.5.
    np.testing.assert_array_equal(averaged, 0.5 * mask)
    single = inference.predict_fraction(None, mask, "cpu", inference.SINGLE_PASS)
    np.testing.assert_array_equal(single, keep_even_rows(None, mask, "cpu"))


def test_cuda_out_of_memory_retries_on_the_cpu():
    networks = inference.Networks(CompletionNet((2,) * 7), info=None)
    calls, events = [], []

    def run(device):
        calls.append(device.type)
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return "done"

    with pytest.warns(UserWarning, match="GPU out of memory"):
        result, used = inference.with_cpu_fallback(run, networks, torch.device("cuda"), events.append,
                                                  ProgressEvent("refine", 0.45, ""))
    assert (result, used.type, calls) == ("done", "cpu", ["cuda", "cpu"])
    assert [(e.stage, e.fraction) for e in events] == [("refine", 0.45)]


STORED_OTHERWISE = [((2, 0, 1), (False, False, False)), ((0, 1, 2), (False, True, False)),
                    ((0, 1, 2), (True, False, True)), ((1, 2, 0), (True, True, False))]


@pytest.mark.parametrize("order, flips", STORED_OTHERWISE)
def test_the_model_grid_does_not_depend_on_how_the_file_stores_the_skull(synthetic_skull, order, flips):
    defective, _ = synthetic_skull
    info = ModelInfo("m", "completion", [8] * 7, [2.0] * 3, "m.safetensors", crop_margin_mm=6.0)
    original = inference.model_grid_input(defective, info).cropped
    copy = inference.model_grid_input(reorient(defective, order, flips), info).cropped
    assert np.allclose(copy.direction, np.eye(3)) and np.allclose(copy.origin, original.origin)
    np.testing.assert_array_equal(copy.array, original.array)


@pytest.mark.slow
def test_implants_agree_however_the_sample_is_stored(sample_generated):
    """The bundled model on SkullFix 050 stored permuted and flipped (as a RAS NIfTI would be): the same
    implant (Dice >= 0.98) as generate made from the file as stored (the session's run). Resampled onto
    a 0.7 mm grid tilted by 20 degrees, the input itself changes at the voxel level: straightening finds
    its cut and yaw 0.28 degrees away from the stored file's, and the 2 mm network answers with an
    implant that agrees less (Dice 0.91 measured) but fits the ground truth as well (within 0.03)."""
    from SparseImplantLib.metrics import dice
    from SparseImplantLib.pipeline.design import design_implant
    from SparseImplantLib.pipeline.volume import corners_lps, find_foreground_box, resample_mask

    cpu = torch.device("cpu")
    defective = read_mask(sample_generated.source)
    networks = inference.load_networks(None, "auto", cpu)  # as generate loads them
    implant = read_mask(sample_generated.output / "implant.nrrd")
    for order, flips in STORED_OTHERWISE:
        copy = design_implant(reorient(defective, order, flips), networks, cpu).implant
        assert dice(undo_reorient(copy.array, order, flips), implant.array) >= 0.98
    corners = corners_lps(defective, find_foreground_box(defective.array))
    shape, spacing, direction = np.array([300, 320, 300]), 0.7, oblique_direction(20.0)
    origin = (corners.min(axis=0) + corners.max(axis=0)) / 2 - direction @ ((shape - 1) / 2 * spacing)
    oblique = Volume(np.zeros(tuple(shape), np.uint8), [spacing] * 3, origin, direction)
    design = design_implant(resample_mask(defective, oblique), networks, cpu)
    tilted = design.implant
    agreement = dice(tilted.array, resample_mask(implant, oblique).array)
    # The sample lies at the edge of method auto's choice (the network fills 90 % of the bone the fitted
    # shape fills, doubts.SHORT_OF_FITTED): tilted, it may be designed by the other, which agrees less
    # (0.88 measured, the fitted shape's) and still fits the ground truth as well.
    stored_by = json.loads((sample_generated.output / "report.json").read_text(encoding="utf-8"))["completed_by"]
    assert agreement >= (0.89 if design.completed_by == stored_by else 0.85)
    truth = read_mask(SAMPLE_IMPLANT)
    assert dice(tilted.array, resample_mask(truth, oblique).array) >= dice(implant.array, truth.array) - 0.03
