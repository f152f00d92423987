"""Stage 2's captions name cameras exactly as threestudio's prompt processor does for SDS."""
import pytest
import torch


@pytest.mark.parametrize("settings", [
    {},
    {"front_threshold": 30.0, "back_threshold": 60.0, "overhead_threshold": 40.0, "view_dependent_prompt_front": True},
])
def test_view_prompts_equal_the_prompt_processors_view_dependent_prompts(threestudio, tiny_sd_path, dreambooth_run,
                                                                         in_tmp_project, settings):
    from threestudio_dreambooth3d.core import cameras
    from threestudio_dreambooth3d.core.views import ViewPrompts

    pp = threestudio.find("dreambooth-prompt-processor")(
        {"pretrained_model_name_or_path": str(tiny_sd_path), "checkpoint": str(dreambooth_run),
         "checkpoint_name": "full", "prompt": "a sks dog", **settings})
    cams = cameras.random_cameras(64, (-10.0, 80.0), seed=0)
    ele, azi, dist = cams["elevation"], cams["azimuth"], cams["camera_distances"]
    # threestudio's own decision: the last direction whose condition holds
    idx = torch.zeros_like(ele, dtype=torch.long)
    for i, d in enumerate(pp.directions):
        idx[d.condition(ele, azi, dist)] = i
    expected = [pp.prompts_vd[i] for i in idx.tolist()]
    ours = ViewPrompts.from_config(pp.cfg)
    assert ours.prompts("a sks dog", ele, azi) == expected
    assert ours.names(ele, azi) == [pp.directions[i].name for i in idx.tolist()]
    assert len(set(expected)) == 4  # every view occurs, so every threshold was exercised
