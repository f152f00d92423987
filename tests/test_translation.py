"""Stage 2's translation prompt: subject (the paper), scene (the stage's prompt) or custom text."""
import pytest
import torch

from threestudio_dreambooth3d.core.translation import translation_base_prompt, translation_prompts
from threestudio_dreambooth3d.core.views import ViewPrompts


def test_subject_scene_or_custom_prompt():
    read = []

    def subject():
        read.append(1)
        return "a sks dog"

    scene = "a sks dog wearing a red hat"
    assert translation_base_prompt(None, subject, scene) == "a sks dog"
    assert translation_base_prompt("subject", subject, scene) == "a sks dog"
    assert translation_base_prompt("scene", subject, scene) == scene
    assert translation_base_prompt(" a sks dog, studio photo ", subject, scene) == "a sks dog, studio photo"
    assert len(read) == 2  # the checkpoint's prompt is read only when it is the one used
    with pytest.raises(ValueError, match="'scene' but the stage has no prompt"):
        translation_base_prompt("scene", subject, " ")
    # then made view-dependent exactly as for the subject prompt
    assert ViewPrompts().prompts(translation_base_prompt("scene", subject, scene), [0.0], [180.0]) == [
        "a sks dog wearing a red hat, back view"]


def test_translation_prompts_name_each_camera_as_the_sds_prompts_do():
    elevation, azimuth = torch.tensor([0.0, 0.0, 0.0, 70.0]), torch.tensor([0.0, 90.0, 180.0, 0.0])
    assert translation_prompts("a sks dog", elevation, azimuth, ViewPrompts()) == [
        "a sks dog, front view", "a sks dog, side view", "a sks dog, back view", "a sks dog, overhead view"]
    assert translation_prompts("a sks dog", elevation, azimuth, None) == ["a sks dog"] * 4
