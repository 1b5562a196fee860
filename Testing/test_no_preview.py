"""``generate --no-preview`` (what the Slicer module runs) writes everything but preview.png."""

from __future__ import annotations

from SparseImplantLib.cli import main
from SparseImplantLib.contract import output_names
from SparseImplantLib.outputs import MANIFEST
from SparseImplantLib.pipeline.io import write_volume


def test_no_preview_writes_every_output_but_the_png(tmp_path, model_dir, synthetic_skull):
    source = write_volume(tmp_path / "defective.nrrd", synthetic_skull[0])
    out = tmp_path / "out"
    code = main(["generate", str(source), "-o", str(out), "--model-dir", str(model_dir), "--device", "cpu",
                 "--progress", "none", "--mesh-formats", "vtk", "--no-test-time-augmentation", "--no-preview"])
    assert code == 0
    written = {p.name for p in out.iterdir()} - {MANIFEST}  # the run's own record of what it wrote
    # The untrained test model adds no bone, so there is no implant mesh; everything else is written.
    assert written == set(output_names(("vtk",), preview=False)) - {"implant.vtk"}
    assert "preview.png" in output_names(("vtk",)) and "preview.png" not in output_names(("vtk",), preview=False)
