"""The paper's Latent-NeRF + DreamBooth baseline: threestudio's latentnerf-system with our
guidance on the full checkpoint, parsed by threestudio and trained through launch.py
with the CPU override set."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from threestudio_dreambooth3d.pipeline import smoke

from test_registration_configs import CONFIGS, load_config
from test_stages import fresh_system, launch, metrics, project, state_dict  # noqa: F401 (project is a fixture)

NAME = "latentnerf-dreambooth-baseline"


def test_config_is_threestudios_latentnerf_with_our_guidance(threestudio, threestudio_root, tmp_path):
    cfg = load_config(CONFIGS / f"{NAME}.yaml", 'system.prompt_processor.prompt="a sks dog"',
                      f"system.guidance.checkpoint={tmp_path / 'ckpt'}")
    assert threestudio.find(cfg.system_type) is threestudio.find("latentnerf-system")
    assert threestudio.find(cfg.system.guidance_type) is threestudio.find("dreambooth-sds-guidance")
    assert threestudio.find(cfg.system.prompt_processor_type) is threestudio.find("dreambooth-prompt-processor")
    assert cfg.system.guidance.checkpoint_name == "full"  # the paper's baseline uses the fully trained model
    pp, g = cfg.system.prompt_processor, cfg.system.guidance
    assert (pp.pretrained_model_name_or_path, pp.checkpoint, pp.checkpoint_name) == (
        g.pretrained_model_name_or_path, g.checkpoint, g.checkpoint_name)
    OmegaConf.structured(threestudio.find(cfg.system_type).Config(**cfg.system))
    OmegaConf.structured(threestudio.find("dreambooth-sds-guidance").Config(**cfg.system.guidance))
    # everything but the prompt processor and the guidance is threestudio's own latentnerf.yaml
    stock = load_config(threestudio_root / "configs" / "latentnerf.yaml", 'system.prompt_processor.prompt="a sks dog"')
    for key in ("geometry_type", "geometry", "material_type", "material", "background_type", "background",
                "renderer_type", "renderer", "loss", "optimizer", "scheduler"):
        assert cfg.system[key] == stock.system[key], key
    assert cfg.data == stock.data and cfg.data_type == stock.data_type and cfg.trainer == stock.trainer
    for key in ("guidance_scale", "weighting_strategy"):
        assert g[key] == stock.system.guidance[key], key


def test_latentnerf_baseline_trains_and_decodes_its_renders(threestudio, project, threestudio_root,
                                                                    tiny_sd_path, dreambooth_run):
    # the real config with the CPU override set (pipeline/smoke.py): hash grid stand-in, 16 x 16 latent renders
    trial = launch(project, threestudio_root, "latentnerf", "--train",
                   f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
                   f"system.guidance.checkpoint={dreambooth_run}", name=NAME)
    m = metrics(trial)
    assert math.isfinite(m["train/loss_sds"]) and m["train/loss_sds"] > 0
    ckpt = state_dict(trial / "ckpts" / "last.ckpt")
    assert ckpt["global_step"] == smoke.TRAIN_STEPS
    # the NeRF moved, and its test renders are latents decoded by our guidance.decode_latents
    # (32 x 32 evaluation latents resized to the tiny model's 16 -> 32 px images)
    from PIL import Image

    init, _ = fresh_system(threestudio, trial)
    trained = ckpt["state_dict"]
    moved = [k for k, v in init.state_dict().items() if k.startswith("geometry.") and not torch.equal(v, trained[k])]
    assert moved and all(torch.isfinite(trained[k]).all() for k in moved)
    frames = sorted((trial / "save" / f"it{smoke.TRAIN_STEPS}-test").glob("*.png"))
    assert len(frames) == smoke.TURNTABLE_VIEWS and Image.open(frames[0]).size[1] == smoke.RENDER_SIZE


def test_export_material_turns_latents_into_rgb_with_latentnerfs_matrix(threestudio, tmp_path):
    # the export swaps no-material for latent-rgb-material (pipeline/steps.py Export.dotlist): it
    # must accept the latentnerf config's material block and export RGB albedo, not latents
    cfg = load_config(CONFIGS / f"{NAME}.yaml", 'system.prompt_processor.prompt="a sks dog"',
                      f"system.guidance.checkpoint={tmp_path / 'ckpt'}")
    material = threestudio.find("latent-rgb-material")(cfg.system.material)
    latents = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    albedo = material.export(features=latents, points=torch.zeros(3, 3))["albedo"]
    # Latent-NeRF's rows (R, G, B) for L1 and L4, mapped from [-1, 1] to [0, 1] by hand
    expected = torch.tensor([[(1 + 0.298) / 2, (1 + 0.207) / 2, (1 + 0.208) / 2],
                             [(1 - 0.184) / 2, (1 - 0.271) / 2, (1 - 0.473) / 2],
                             [0.5, 0.5, 0.5]])
    assert torch.allclose(albedo, expected, atol=1e-6)
    # no-material, which the Latent-NeRF trains with, would export the latents themselves
    stock = threestudio.find(cfg.system.material_type)(cfg.system.material)
    assert not torch.allclose(stock.export(features=latents)["albedo"], expected)
