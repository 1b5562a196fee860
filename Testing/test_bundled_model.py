"""The model that ships in Resources/Models, on the bundled sample (SkullFix 050, a validation case).

This is what `make demo` and "Generate Implant" run right after install: the weights must load with
their checksum and the implant must match the ground truth about as well as the model card says.
"""

from __future__ import annotations

import json

import pytest
from conftest import SAMPLE_DEFECTIVE, SAMPLE_IMPLANT

from SparseImplantLib.cli import main
from SparseImplantLib.models.registry import find_model, load_network

# The model card reports 050 at DSC 0.911 / HD95 1.56 mm; these floors leave room for CPU/BLAS noise
# while still failing on a broken model, a wrong pruning threshold or a geometry mix-up.
MIN_IMPLANT_DSC = 0.87
MAX_HD95_MM = 2.5


def test_registry_describes_the_bundled_model():
    model = find_model()  # the default: what Generate Implant uses without --model
    assert model.kind == "completion" and model.licence.startswith("CC BY-NC-SA 4.0")
    assert model.metrics["validation_mean"]["dsc"] > 0.5
    load_network(model)  # verifies the sha256


@pytest.mark.slow
def test_bundled_model_designs_the_sample_implant(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["generate", str(SAMPLE_DEFECTIVE), "-o", str(out), "--device", "cpu", "--progress", "none",
                 "--reference", str(SAMPLE_IMPLANT)])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    assert metrics["dsc"] >= MIN_IMPLANT_DSC, metrics
    assert metrics["hd95_mm"] <= MAX_HD95_MM, metrics
