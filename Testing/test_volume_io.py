"""Geometry-preserving I/O, resampling and the bad-input errors of the readers."""

from __future__ import annotations


import numpy as np
import pytest

from conftest import SAMPLE_DEFECTIVE, oblique_direction, shell_skull
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.outputs import MANIFEST, staged_output
from SparseImplantLib.pipeline.io import read_mask, read_volume, write_volume
from SparseImplantLib.pipeline.volume import Volume, crop, foreground_box, paste, resample_mask, resample_mask_to_spacing


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".seg.nrrd", ".nii"])
def test_write_read_roundtrip_keeps_geometry(tmp_path, synthetic_skull, suffix):
    defective, _ = synthetic_skull
    path = write_volume(tmp_path / f"skull{suffix}", defective)
    loaded = read_mask(path)
    assert loaded.same_geometry(defective)
    np.testing.assert_array_equal(loaded.array, defective.array)


def test_sample_has_skullfix_geometry():
    volume = read_volume(SAMPLE_DEFECTIVE)
    assert volume.shape[:2] == (512, 512)
    assert set(np.unique(volume.array)) == {0, 1}
    assert np.allclose(np.linalg.norm(volume.direction, axis=0), 1.0)


def test_resample_roundtrip_preserves_shape(synthetic_skull):
    defective, _ = synthetic_skull
    coarse = resample_mask_to_spacing(defective, (1.6, 1.6, 1.6))
    assert np.allclose(coarse.spacing, 1.6)
    back = resample_mask(coarse, defective)
    assert back.same_geometry(defective)
    a, b = defective.array > 0, back.array > 0
    dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
    assert dice > 0.8
    # The physical centre of mass stays put (within one coarse voxel).
    def centre(volume: Volume) -> np.ndarray:
        index = np.argwhere(volume.array).mean(axis=0)
        return volume.index_to_lps()[:3, :3] @ index + volume.origin
    assert np.linalg.norm(centre(coarse) - centre(defective)) < 1.6


def test_crop_and_paste_are_inverse(synthetic_skull):
    defective, _ = synthetic_skull
    box = foreground_box(defective.array, margin=2)
    cropped = crop(defective, box)
    assert np.array_equal(paste(cropped.array, box, defective.shape), defective.array)
    first = np.array([s.start for s in box], dtype=float)
    assert np.allclose(cropped.origin, defective.index_to_lps()[:3] @ np.append(first, 1.0))


def test_multilabel_needs_label(tmp_path, synthetic_skull):
    defective, implant = synthetic_skull
    labels = defective.with_array((defective.array + 2 * implant.array).astype(np.uint8))
    path = write_volume(tmp_path / "labels.nrrd", labels)
    with pytest.raises(SparseImplantError, match="--label"):
        read_mask(path)
    assert np.array_equal(read_mask(path, label=2).array, implant.array)
    with pytest.raises(SparseImplantError, match="label 7 does not occur"):
        read_mask(path, label=7)


def test_ct_threshold(tmp_path, synthetic_skull):
    defective, _ = synthetic_skull
    ct = defective.with_array(np.where(defective.array > 0, 1200, -1000).astype(np.int16))
    path = write_volume(tmp_path / "ct.nii.gz", ct)
    assert np.array_equal(read_mask(path, threshold_hu=300).array, defective.array)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda v: v.with_array(np.zeros(v.shape, np.uint8)), "empty mask"),
        (lambda v: v.with_array(np.ones(v.shape, np.uint8)), "foreground everywhere"),
        (lambda v: v.with_array(np.where(v.array > 0, np.nan, 0.0).astype(np.float32)), "NaN"),
    ],
)
def test_bad_masks_are_rejected(tmp_path, synthetic_skull, make, message):
    path = write_volume(tmp_path / "bad.nrrd", make(synthetic_skull[0]))
    with pytest.raises(SparseImplantError, match=message):
        read_mask(path)


def test_2d_and_4d_are_rejected(tmp_path):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 8), np.uint8)), str(tmp_path / "flat.nrrd"))
    with pytest.raises(SparseImplantError, match="2D image"):
        read_mask(tmp_path / "flat.nrrd")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 8, 8, 8), np.uint8)), str(tmp_path / "time.nrrd"))
    with pytest.raises(SparseImplantError, match="4D"):
        read_mask(tmp_path / "time.nrrd")


def test_truncated_and_missing_files(tmp_path):
    data = SAMPLE_DEFECTIVE.read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(data[: len(data) // 2])
    with pytest.raises(SparseImplantError, match="unreadable or truncated"):
        read_mask(tmp_path / "cut.nrrd")
    with pytest.raises(SparseImplantError, match="does not exist"):
        read_mask(tmp_path / "missing.nrrd")
    (tmp_path / "skull.txt").write_text("hello")
    with pytest.raises(SparseImplantError, match="unsupported file type"):
        read_mask(tmp_path / "skull.txt")


def test_staged_output_leaves_nothing_on_error(tmp_path, synthetic_skull):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_output(out, ["a.nrrd"]) as staging:
            write_volume(staging / "a.nrrd", synthetic_skull[0])
            raise RuntimeError("boom")
    assert not out.exists()  # the folder it created goes too
    with staged_output(out, ["a.nrrd"]) as staging:
        write_volume(staging / "a.nrrd", synthetic_skull[0])
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "a.nrrd"]
    with pytest.raises(SparseImplantError, match="already holds a.nrrd"):
        with staged_output(out, ["a.nrrd"]):
            pass


def test_written_files_get_the_usual_permissions(tmp_path, synthetic_skull):
    """Atomic writing goes through mkstemp (0600); results must still be readable like any new file."""
    import os

    umask = os.umask(0o022)
    try:
        path = write_volume(tmp_path / "mask.nrrd", synthetic_skull[0])
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_mask_averaged_over_blocks_resamples_as_the_whole_one(monkeypatch):
    """``block_mean`` before a wide blur (a 4 mm grid's, from a CT's 0.48 x 0.48 x 0.63 mm voxels) gives
    what blurring the whole mask gives, to a few voxels of the coarse grid, on an oblique grid."""
    import SparseImplantLib.pipeline.volume as volume_module

    shell, _ = shell_skull(shape=(150, 150, 110), radius=60.0, thickness=13.0)  # 29 mm radius, 6-8 mm thick
    fine = Volume(shell.astype(np.uint8), (0.48, 0.48, 0.63), (3.0, -2.0, 1.0), oblique_direction())
    coarse = volume_module.grid_with_spacing(fine, (4.0, 4.0, 4.0))
    reduced = resample_mask(fine, coarse, smoothing=0.5).array
    assert volume_module.block_mean(fine, (2.0, 2.0, 2.0))[0].spacing.tolist() == pytest.approx([0.96, 0.96, 0.63])
    monkeypatch.setattr(volume_module, "block_mean",
                        lambda volume, sigma: (volume.with_array(volume.array.astype(np.float32)), list(sigma)))
    whole = resample_mask(fine, coarse, smoothing=0.5).array
    assert whole.sum() > 500
    assert np.count_nonzero(reduced != whole) <= 0.02 * whole.sum()
