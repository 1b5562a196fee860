"""Doubts about a design are said in plain words: a large opening left almost empty, a skull whose size
or proportions are far from the training skulls."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shell_skull
from SparseImplantLib.pipeline.doubts import skull_doubts, vault_opening
from SparseImplantLib.pipeline.volume import Volume


def on_grid(mask: np.ndarray, spacing: float = 2.0) -> Volume:
    return Volume(mask.astype(np.uint8), [spacing] * 3, (0.0, 0.0, 0.0), np.eye(3))


@pytest.fixture(scope="module")
def head():
    """A shell 176 mm across at 2 mm, 6 mm bone, open at the bottom, with a cap missing from the top."""
    defective, implant = shell_skull(shape=(94, 94, 84), radius=44.0, thickness=3.0)
    return defective, implant


def test_the_opening_of_a_vault_is_measured(head):
    defective, implant = head
    assert vault_opening(on_grid(defective | implant)).volume_ml < 1.0
    opening = vault_opening(on_grid(defective))
    cap_ml = implant.sum() * 8.0 / 1000
    assert 0.4 * cap_ml < opening.volume_ml < 1.2 * cap_ml


def test_a_large_opening_left_almost_empty_is_doubted(head):
    defective, implant = head
    cap_ml = implant.sum() * 8.0 / 1000
    assert skull_doubts(on_grid(defective), implant_ml=cap_ml) == []
    (message,) = skull_doubts(on_grid(defective), implant_ml=1.0)
    assert message.startswith("the network added only 1.0 ml of bone") and "do not use it unreviewed" in message


def test_a_skull_of_the_wrong_size_or_sideways_is_doubted(head):
    defective, implant = head
    complete = defective | implant
    tiny = skull_doubts(on_grid(complete, spacing=0.5), implant_ml=0.0)  # a header that says 0.5 mm for 2 mm voxels
    assert any("outside the" in message and "check the spacing" in message for message in tiny)
    sideways = complete[:, :70, :]  # 176 mm wide, 140 mm long
    assert any("wider left-right" in message for message in skull_doubts(on_grid(sideways), implant_ml=0.0))


def test_an_implant_far_from_what_the_priors_expect_is_doubted():
    from SparseImplantLib.pipeline.doubts import agreement_doubts

    assert agreement_doubts(expected_ml=60.0, implant_ml=55.0, agreement_dsc=0.7) == []
    assert "likely incomplete" in agreement_doubts(60.0, 12.0, 0.7)[0]
    assert "lies elsewhere" in agreement_doubts(60.0, 55.0, 0.1)[0]
    assert agreement_doubts(expected_ml=4.0, implant_ml=0.0, agreement_dsc=0.0) == []  # nothing much missing


def test_the_fitted_mean_skull_fills_in_only_where_the_network_leaves_the_opening_and_it_fits():
    from types import SimpleNamespace

    from SparseImplantLib.pipeline.doubts import fitted_fills_instead

    def fitted(residual_mm: float, at_scale_limit: bool = False, rim: float = 0.8) -> SimpleNamespace:
        return SimpleNamespace(fit=SimpleNamespace(residual_mm=residual_mm, at_scale_limit=at_scale_limit),
                               fitted_bone_report={"from": "mean skull", "agreement_around": {"mean skull": rim}})

    fits, poor = fitted(0.3), fitted(3.5)
    assert fitted_fills_instead(30.0, 2.0, fits)  # a lateral opening the network leaves empty
    assert fitted_fills_instead(3.0, 0.0, fits)  # a small craniotomy
    assert fitted_fills_instead(1.5, 0.0, fits)  # a 2 cm one (055's holds 1.2 ml)
    assert not fitted_fills_instead(30.0, 20.0, fits)  # the network fills most of it
    # Short of the fitted shape (a fifth of a bilateral opening left open): only where the shape meets the rim.
    meets_rim = fitted(0.3, rim=0.92)
    assert fitted_fills_instead(30.0, 24.0, meets_rim) and not fitted_fills_instead(30.0, 24.0, fits)
    assert not fitted_fills_instead(30.0, 28.0, meets_rim)  # 93 %: the network's design stands
    assert not fitted_fills_instead(30.0, 24.0, fitted(3.5, rim=0.92))
    assert fitted_fills_instead(0.9, 0.0, fits)  # a 2 cm craniotomy's plug (052's)
    assert not fitted_fills_instead(0.4, 0.0, fits)  # a speck: complete skulls get 0.0 ml from the fitted shape
    assert not fitted_fills_instead(30.0, 2.0, poor)  # the mean skull fits poorly: no better a guess
    assert not fitted_fills_instead(30.0, 2.0, SimpleNamespace(fit=None))
    assert not fitted_fills_instead(30.0, 2.0, fitted(0.3, at_scale_limit=True))  # a toy's size: no adult skull


def test_a_mean_skull_stretched_to_its_limit_is_no_fit():
    from SparseImplantLib.pipeline.priors import FIT_SCALE_LIMIT, ShapeFit

    def fit_with_scales(*scales: float) -> ShapeFit:
        return ShapeFit(np.diag(1.0 / np.array(scales)), np.zeros(3), 0.3, 0.6)

    assert not fit_with_scales(0.87, 1.0, 1.04).at_scale_limit  # the range SkullFix 050-059 fit in
    assert fit_with_scales(1.0, 1.0, np.exp(FIT_SCALE_LIMIT)).at_scale_limit
    assert fit_with_scales(np.exp(-FIT_SCALE_LIMIT - 0.05), 1.0, 1.0).at_scale_limit


def test_a_fallback_that_meets_the_rim_is_a_note_and_one_that_does_not_is_a_doubt():
    from SparseImplantLib.pipeline.doubts import FITTED_RIM_AGREEMENT, fallback_message

    def report(rim):
        return {"from": "shape model", "agreement_around": {"mean skull": 0.5, "shape model": rim}}

    message, doubtful = fallback_message(0.2, 31.4, report(FITTED_RIM_AGREEMENT + 0.03))
    assert not doubtful and "the implant is the shape model's instead" in message and "31 ml" in message
    assert "check its fit" not in message
    message, doubtful = fallback_message(0.2, 31.4, report(FITTED_RIM_AGREEMENT - 0.03))
    assert doubtful and "poorly" in message and "check its fit at the border before use" in message
    assert fallback_message(0.0, 3.0, report(None))[1]  # no ring to judge by: a doubt
