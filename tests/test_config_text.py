"""Prompts reach threestudio literally (issue 20, item 4): through OmegaConf's command-line
parsing, threestudio's load_config steps (merge, resolve) and a part's own structured parse."""
from dataclasses import dataclass

import pytest
from omegaconf import OmegaConf

from threestudio_dreambooth3d.core.config_text import decode_literal, encode_literal
from threestudio_dreambooth3d.errors import ConfigError
from threestudio_dreambooth3d.pipeline.commands import KEYS, dot

PROMPTS = ["a sks toy in ${oc.env:HOME}", "a sks toy ${nope}", "a \\${x} sks toy: 50% $5 {braces}",
           "dreambooth3d-literal:a sks toy", "a sks toy"]


@dataclass
class PromptConfig:  # as a threestudio part parses its config (parse_structured)
    prompt: str = ""


def through_threestudio_loading(dotlist):
    """What threestudio's load_config then a prompt processor's parse_structured do to a value."""
    base = OmegaConf.create({"system": {"prompt_processor": {"prompt": "x"}, "translation_prompt": None}})
    cfg = OmegaConf.merge(base, OmegaConf.from_cli(dotlist))
    OmegaConf.resolve(cfg)
    part = OmegaConf.structured(PromptConfig(**cfg.system.prompt_processor))
    return part.prompt, cfg.system.translation_prompt


@pytest.mark.parametrize("prompt", PROMPTS)
def test_a_prompt_reaches_the_prompt_processor_literally(prompt):
    seen, translation = through_threestudio_loading([dot(KEYS["prompt"], prompt), dot(KEYS["translation_prompt"], prompt)])
    assert decode_literal(seen) == prompt
    assert decode_literal(translation) == prompt


def test_plain_prompts_are_passed_unchanged():
    assert encode_literal("a sks dog, wearing a hat") == "a sks dog, wearing a hat"
    assert dot(KEYS["prompt"], "a sks dog") == "system.prompt_processor.prompt=a sks dog"


def test_a_path_holding_an_interpolation_is_refused():
    with pytest.raises(ConfigError, match=r"contains '\$\{'"):
        dot("exp_root_dir", "/tmp/${oc.env:HOME}")
