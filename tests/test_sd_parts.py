"""Part-wise loading: each user loads only the components it runs, with only their checkpoint weights,
and gets the same tensors as loading the whole model did."""
import pytest
import torch

from threestudio_dreambooth3d.core import checkpoints, lora
from threestudio_dreambooth3d.core.sd_models import DENOISING_PARTS, TEXT_PARTS, load_sd_components
from threestudio_dreambooth3d.tiny_models.sd import save_random_lora_checkpoint

PROMPTS = ["a sks dog", "a sks dog, back view", ""]


@pytest.fixture(scope="module")
def te_and_unet_lora(tiny_sd_path, tmp_path_factory):
    """A checkpoint with LoRA layers on both the UNet and the text encoder (non-zero, so they change outputs)."""
    return save_random_lora_checkpoint(tiny_sd_path, tmp_path_factory.mktemp("ckpt") / "full", rank=4, std=0.5)


@pytest.fixture
def loads(monkeypatch):
    """Names of the components read from the model folder, and checkpoint files opened."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    seen = {"components": [], "files": []}
    for cls, name in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae"), (CLIPTextModel, "text_encoder")):
        original = cls.from_pretrained.__func__

        def spy(klass, *a, _name=name, _original=original, **kw):
            seen["components"].append(_name)
            return _original(klass, *a, **kw)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    original_load = checkpoints.load_file
    monkeypatch.setattr(checkpoints, "load_file", lambda f, *a, **kw: seen["files"].append(f.split("/")[-1])
                        or original_load(f, *a, **kw))
    return seen


def test_prompt_processor_parts_load_no_unet_or_vae_and_embed_as_before(tiny_sd_path, te_and_unet_lora, loads):
    text = load_sd_components(tiny_sd_path, checkpoint=te_and_unet_lora, parts=TEXT_PARTS)
    assert loads["components"] == ["text_encoder"] and loads["files"] == ["text_encoder.safetensors"]
    assert text.unet is None and text.vae is None and text.scheduler is None
    whole = load_sd_components(tiny_sd_path, checkpoint=te_and_unet_lora)
    base = load_sd_components(tiny_sd_path, parts=TEXT_PARTS)
    new, old = text.encode_prompts(PROMPTS, "cpu"), whole.encode_prompts(PROMPTS, "cpu")
    assert torch.equal(new, old)
    assert not torch.allclose(new, base.encode_prompts(PROMPTS, "cpu"))  # the checkpoint's encoder was applied


def test_guidance_parts_load_no_text_encoder_and_denoise_as_before(tiny_sd_path, te_and_unet_lora, loads):
    den = load_sd_components(tiny_sd_path, checkpoint=te_and_unet_lora, parts=DENOISING_PARTS)
    assert sorted(loads["components"]) == ["unet", "vae"] and loads["files"] == ["unet.safetensors"]
    assert den.text_encoder is None and den.tokenizer is None
    assert lora.lora_shape(den.unet) is None  # merged, as the whole-model load does
    whole = load_sd_components(tiny_sd_path, checkpoint=te_and_unet_lora)
    sample = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = whole.encode_prompts(["a sks dog"], "cpu")
    t = torch.tensor([500])
    with torch.no_grad():
        assert torch.equal(den.unet(sample, t, cond).sample, whole.unet(sample, t, cond).sample)
        assert torch.equal(den.vae.decode(sample).sample, whole.vae.decode(sample).sample)


def test_unknown_part_is_named(tiny_sd_path):
    with pytest.raises(ValueError, match="unknown Stable Diffusion components.*'unte'"):
        load_sd_components(tiny_sd_path, parts=("unte",))
