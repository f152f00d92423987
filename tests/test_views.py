"""View names and view prompts agree with threestudio's prompt processor."""
import pytest
import torch

from threestudio_dreambooth3d.core import cameras

from threestudio_dreambooth3d.core import views


def _threestudio_direction_idx(ele, azi, front=45.0, back=45.0, overhead=60.0):
    # threestudio's DirectionConfig conditions (suffix style), applied in its order
    shift = lambda a: (a + 180) % 360 - 180  # noqa: E731
    conditions = [
        ("side", lambda e, a: torch.ones_like(e, dtype=torch.bool)),
        ("front", lambda e, a: (shift(a) > -front) & (shift(a) < front)),
        ("back", lambda e, a: (shift(a) > 180 - back) | (shift(a) < -180 + back)),
        ("overhead", lambda e, a: e > overhead),
    ]
    idx = torch.zeros_like(ele, dtype=torch.long)
    for i, (_, cond) in enumerate(conditions):
        idx[cond(ele, azi)] = i
    return idx


@pytest.mark.parametrize("elevation,azimuth,expected", [
    (0, 0, "front"), (10, 44.9, "front"), (10, -44.9, "front"), (10, 45, "side"), (10, -45, "side"),
    (0, 90, "side"), (0, 135, "side"), (0, 135.1, "back"), (0, 180, "back"), (0, -180, "back"),
    (0, -135, "side"), (0, -135.1, "back"), (0, 315, "side"), (0, 316, "front"), (0, 540, "back"),
    (60, 0, "front"), (60.1, 0, "overhead"), (89, 180, "overhead"), (-10, 180, "back"),
])
def test_view_name_thresholds(elevation, azimuth, expected):
    assert views.view_name(elevation, azimuth) == expected


def test_view_indices_match_threestudio_on_a_dense_grid():
    ele, azi = torch.meshgrid(torch.arange(-10.0, 90.0, 2.5), torch.arange(-360.0, 360.0, 2.5), indexing="ij")
    assert torch.equal(views.view_indices(ele, azi), _threestudio_direction_idx(ele, azi))
    custom = dict(front_threshold=30.0, back_threshold=60.0, overhead_threshold=45.0)
    assert torch.equal(views.view_indices(ele, azi, **custom), _threestudio_direction_idx(ele, azi, 30.0, 60.0, 45.0))
    assert views.VIEWS == ("side", "front", "back", "overhead")  # threestudio's direction order


def test_view_names_of_an_orbit():
    cam = cameras.orbit_cameras(8, elevation_deg=15.0)
    assert views.view_names(cam["elevation"], cam["azimuth"]) == [
        "front", "side", "side", "side", "back", "side", "side", "side"]


def test_view_prompt_uses_threestudios_suffix():
    assert views.view_prompt("a sks dog", "back") == "a sks dog, back view"
    assert views.view_prompt("a sks dog", "overhead") == "a sks dog, overhead view"
    assert views.view_prompt("a sks dog", None) == "a sks dog"
    with pytest.raises(ValueError, match="unknown view 'top'"):
        views.view_prompt("a sks dog", "top")


def test_view_prompts_take_thresholds_and_style_from_a_prompt_processor_config():
    # threestudio's prefix style (view_dependent_prompt_front) says "backside view of", not "back view of"
    vp = views.ViewPrompts.from_config({"front_threshold": 30.0, "back_threshold": 60.0, "overhead_threshold": 50.0,
                                        "view_dependent_prompt_front": True, "prompt": "ignored"})
    ele = torch.tensor([0.0, 0.0, 0.0, 55.0, 10.0])
    azi = torch.tensor([20.0, 40.0, 130.0, 0.0, -170.0])
    assert vp.names(ele, azi) == ["front", "side", "back", "overhead", "back"]
    assert vp.names(ele, azi) == [views.VIEWS[i] for i in _threestudio_direction_idx(ele, azi, 30.0, 60.0, 50.0)]
    assert vp.prompts("a sks dog", ele, azi) == [
        "front view of a sks dog", "side view of a sks dog", "backside view of a sks dog",
        "overhead view of a sks dog", "backside view of a sks dog"]
    # absent keys (and None) keep threestudio's defaults; the suffix style is the default
    default = views.ViewPrompts.from_config({"front_threshold": None})
    assert default == views.ViewPrompts() and default.thresholds["front_threshold"] == 45.0
    assert default.prompts("a sks dog", ele, azi)[1] == "a sks dog, front view"


def test_view_prompts_read_attribute_configs_too():
    from dataclasses import dataclass

    @dataclass
    class PromptProcessorConfig:  # the shape of threestudio's parsed Config
        front_threshold: float = 10.0
        view_dependent_prompt_front: bool = False

    vp = views.ViewPrompts.from_config(PromptProcessorConfig())
    assert vp.front_threshold == 10.0 and vp.back_threshold == 45.0
    assert vp.names(0.0, 20.0) == ["side"]
