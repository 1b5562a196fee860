"""The model that ships in Resources/Models, on the bundled sample (SkullFix 050, a validation case).

This is what `make demo` and "Generate Implant" run right after install: the weights must load with
their checksum and the implant file written must match the ground truth about as well as the model
card says. The implant is scored here from the files, not taken from the run's own report.
"""

from __future__ import annotations

import json

import pytest

from SparseImplantLib.metrics import dice, hd95
from SparseImplantLib.models.registry import find_model, load_network
from SparseImplantLib.pipeline.io import read_mask

# The model card (README, "Bundled model") lists case 050; these floors leave room for CPU/BLAS noise
# while still failing on a broken model, a wrong pruning threshold or a geometry mix-up.
MIN_IMPLANT_DSC = 0.87
MAX_HD95_MM = 2.5


def test_the_default_model_is_the_bundled_completion_model():
    model = find_model()  # what Generate Implant uses without --model
    assert model.kind == "completion" and model.licence.startswith("CC BY-NC-SA 4.0")
    load_network(model)  # verifies the sha256


@pytest.mark.slow
def test_bundled_model_designs_the_sample_implant(sample_generated):
    truth = read_mask(sample_generated.reference)
    implant = read_mask(sample_generated.output / "implant.nrrd")
    assert implant.same_geometry(truth)
    scores = {"dsc": dice(implant.array, truth.array), "hd95_mm": hd95(implant.array, truth.array, truth.spacing)}
    assert scores["dsc"] >= MIN_IMPLANT_DSC, scores
    assert scores["hd95_mm"] <= MAX_HD95_MM, scores
    reported = json.loads((sample_generated.output / "report.json").read_text())["metrics"]
    assert {key: reported[key] for key in scores} == pytest.approx(scores)  # the report says what the files hold
