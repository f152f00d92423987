"""Which prompt stage 2 translates its renders with (``system.translation_prompt``).

* ``subject`` (or unset; the paper): the prompt the DreamBooth checkpoint was trained on,
  "a sks dog": most faithful to the subject, the scene's context left to stage 3's SDS;
* ``scene``: the stage's own prompt, "a sks dog wearing a red hat": the pseudo views carry
  the context (accessories, colour and material edits), so stage 3's reconstruction loss
  keeps it instead of pulling the NeRF back to the plain subject;
* anything else: that text, as given.

Either is then made view-dependent per camera (:class:`.views.ViewPrompts`). When each helps:
docs/PSEUDO_VIEWS.md.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Union

import torch

from .views import ViewPrompts

SUBJECT, SCENE = "subject", "scene"


def translation_base_prompt(setting: Optional[str], subject_prompt: Union[str, Callable[[], str]],
                            scene_prompt: str) -> str:
    """The prompt for ``setting`` (module docstring). ``subject_prompt`` may be a callable, read
    only when the subject prompt is the one chosen (it comes from the checkpoint's metadata)."""
    choice = (setting or "").strip()
    if choice in ("", SUBJECT):
        return subject_prompt() if callable(subject_prompt) else subject_prompt
    if choice == SCENE:
        if not scene_prompt or not scene_prompt.strip():
            raise ValueError("system.translation_prompt is 'scene' but the stage has no prompt "
                             "(system.prompt_processor.prompt): set it, or use 'subject'")
        return scene_prompt
    return choice


def translation_prompts(prompt: str, elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor,
                        view_prompts: Optional[ViewPrompts]) -> List[str]:
    """One img2img prompt per render: ``prompt`` made view-dependent as the SDS prompts are
    (``view_prompts``, the prompt processor's settings), or the same prompt for all (None)."""
    if view_prompts is None:
        return [prompt] * len(elevation_deg)
    return view_prompts.prompts(prompt, elevation_deg, azimuth_deg)
