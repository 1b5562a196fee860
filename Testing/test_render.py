"""The offscreen three-panel preview shows geometry in each third and both colours of the map."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from conftest import read_png, shell_skull
from SparseImplantLib.pipeline.volume import Volume
from SparseImplantLib.surfaces import from_masks
from SparseImplantLib.surfaces.distances import add_signed_distance
from SparseImplantLib.surfaces.render import (
    BACKGROUND,
    defect_camera,
    diverging_lookup_table,
    headless_linux,
    offscreen_window,
    render_three_panel,
)


def test_lookup_table_is_diverging_and_centred():
    table = diverging_lookup_table(5.0)
    assert table.GetRange() == (-5.0, 5.0)
    def color(value: float) -> np.ndarray:
        rgb = [0.0, 0.0, 0.0]
        table.GetColor(value, rgb)
        return np.array(rgb)

    low, middle, high = (color(v) for v in (-5.0, 0.0, 5.0))
    assert low[2] > low[0] and high[0] > high[2] and np.allclose(middle, middle.mean(), atol=0.05)


def test_three_panel_render(tmp_path):
    defective, implant = shell_skull(shape=(48, 48, 40))
    volume_kwargs = dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    # Distance panel: a solid ball against a prediction that misses a slab (negative distances, blue)
    # and adds a bump (positive, red).
    grid = np.indices((48, 48, 48))
    ball = (((grid - 23.5) ** 2).sum(axis=0) <= 15**2).astype(np.uint8)
    prediction = ball.copy()
    prediction[32:] = 0
    prediction[20:28, 20:28, 36:44] = 1
    surfaces = [from_masks.surface_from_mask(Volume(a, **volume_kwargs)) for a in (prediction, defective, implant)]
    distance = add_signed_distance(surfaces[0], from_masks.surface_from_mask(Volume(ball, **volume_kwargs)))
    path = render_three_panel(surfaces[0], surfaces[1], surfaces[2], distance, tmp_path / "preview.png", size=(600, 200))
    pixels = read_png(path).astype(int)
    assert pixels.shape == (200, 600, 3)
    background = np.round(np.array(BACKGROUND) * 255).astype(int)
    geometry_pixels = np.abs(pixels - background).sum(axis=2) > 30
    for third in range(3):
        assert geometry_pixels[:, third * 200:(third + 1) * 200].mean() > 0.03
    # Third panel, left of the legend: red-ish and blue-ish surface pixels.
    panel = pixels[:, 400:560]
    reddish = (panel[:, :, 0] > panel[:, :, 2] + 60).sum()
    bluish = (panel[:, :, 2] > panel[:, :, 0] + 60).sum()
    assert reddish > 20 and bluish > 20


@pytest.mark.parametrize("platform, display, wayland, egl", [
    ("linux", None, None, True),
    ("linux", ":0", None, False),
    ("linux", None, "wayland-0", False),
    ("win32", None, None, False),
    ("darwin", None, None, False),
])
def test_egl_is_chosen_only_on_linux_without_a_display(monkeypatch, platform, display, wayland, egl):
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.delenv("VTK_DEFAULT_OPENGL_WINDOW", raising=False)
    for name, value in (("DISPLAY", display), ("WAYLAND_DISPLAY", wayland)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert headless_linux() is egl
    offscreen_window((8, 8))
    assert (os.environ.get("VTK_DEFAULT_OPENGL_WINDOW") == "vtkEGLRenderWindow") is egl


@pytest.mark.parametrize("side", [(1, 0, 0), (-1, 0, 0), (0, -1, 0)])
def test_the_camera_faces_the_implant_wherever_it_is(side):
    """A defect on the left, the right or the front is looked at from its own side."""
    grid = np.indices((60, 60, 60)) - 29.5
    distance = np.sqrt((grid**2).sum(axis=0))
    shell = (distance <= 26) & (distance > 22)
    patch = shell & (np.tensordot(np.asarray(side, float), grid, axes=1) > 18)
    volume = dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    completed = from_masks.surface_from_mask(Volume(shell.astype(np.uint8), **volume))
    implant = from_masks.surface_from_mask(Volume(patch.astype(np.uint8), **volume))
    camera = defect_camera(completed, implant)
    view = np.array(camera.GetPosition()) - np.array(camera.GetFocalPoint())
    assert np.dot(view / np.linalg.norm(view), side) > 0.95
