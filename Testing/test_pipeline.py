"""Averaged network passes: each flip and shift is undone before the passes are averaged."""

from __future__ import annotations

import numpy as np

from SparseImplantLib import pipeline


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
