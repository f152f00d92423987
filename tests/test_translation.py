"""Stage 2's translation prompt: subject (the paper), scene (the stage's prompt) or custom text."""
import pytest

from threestudio_dreambooth3d.core.translation import translation_base_prompt
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
