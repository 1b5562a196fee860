"""Averaged network passes undo their flip and shift; a GPU out of memory retries on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SparseImplantLib import pipeline
from SparseImplantLib.models.completion import CompletionNet
from SparseImplantLib.progress import ProgressEvent


def test_averaged_passes_undo_their_flip_and_shift(monkeypatch):
    rng = np.random.default_rng(0)
    mask = (rng.random((10, 7, 9)) > 0.6).astype(np.uint8)

    monkeypatch.setattr(pipeline, "predict_mask", lambda network, view, device: view.copy())
    np.testing.assert_array_equal(pipeline.predict_fraction(None, mask, "cpu"), mask)  # identity stays identity

    def keep_even_rows(network, view, device):  # depends on where a voxel sits in the pass's own frame
        return view * (np.arange(view.shape[0]) % 2 == 0)[:, None, None]

    monkeypatch.setattr(pipeline, "predict_mask", keep_even_rows)
    averaged = pipeline.predict_fraction(None, mask, "cpu")
    # 10 rows: the flipped passes keep the odd rows, the others the even ones, so every voxel gets 0.5.
    np.testing.assert_array_equal(averaged, 0.5 * mask)
    single = pipeline.predict_fraction(None, mask, "cpu", pipeline.SINGLE_PASS)
    np.testing.assert_array_equal(single, keep_even_rows(None, mask, "cpu"))


def test_cuda_out_of_memory_retries_on_the_cpu():
    networks = pipeline.Networks(CompletionNet((2,) * 7), info=None)
    calls, events = [], []

    def run(device):
        calls.append(device.type)
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return "done"

    with pytest.warns(UserWarning, match="GPU out of memory"):
        result, used = pipeline.with_cpu_fallback(run, networks, torch.device("cuda"), events.append,
                                                  ProgressEvent("refine", 0.45, ""))
    assert (result, used.type, calls) == ("done", "cpu", ["cuda", "cpu"])
    assert [(e.stage, e.fraction) for e in events] == [("refine", 0.45)]
