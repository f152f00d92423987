"""Our names are registered with threestudio and every config in configs/ parses with its loader."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def load_config(path, *overrides: str):
    """Parse with threestudio's own loader and launch.py-style dotlist overrides."""
    from threestudio.utils.config import load_config as ts_load_config

    return ts_load_config(str(path), cli_args=list(overrides), n_gpus=1)

OUR_NAMES = ("dreambooth-sds-guidance", "dreambooth-prompt-processor", "pseudo-multiview-datamodule", "dreambooth3d-system",
             "dreambooth-mvdream-guidance", "dreambooth-multiview-camera-datamodule", "dreambooth-mixed-guidance")
MODEL_SECTIONS = ("geometry_type", "geometry", "material_type", "material", "background_type", "background",
                  "renderer_type", "renderer")
# our system's configs; latentnerf-dreambooth-baseline.yaml is threestudio's latentnerf-system
# with our guidance (tests/integration/test_latentnerf_baseline.py)
ALL_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("latentnerf-"))


def test_our_modules_are_registered(threestudio):
    for name in OUR_NAMES:
        cls = threestudio.find(name)
        package, role = cls.__module__.split(".")[:2]
        assert package == "threestudio_dreambooth3d", (name, cls.__module__)
        assert role in ("guidance", "prompt_processors", "data", "systems"), (name, cls.__module__)


def overrides_for(path: Path, tmp_path: Path):
    out = ['system.prompt_processor.prompt="a sks dog"', f"system.guidance.checkpoint={tmp_path / 'ckpt'}",
           f"exp_root_dir={tmp_path / 'outputs'}"]
    if "stage2" in path.name:
        out.append(f"system.pseudo_views_dir={tmp_path / 'pseudo'}")
    if "stage3" in path.name:
        out.append(f"data.pseudo_views_dir={tmp_path / 'pseudo'}")
    if "mvdream" in path.name:
        out.append("system.guidance.pretrained_model_name_or_path=MV")  # a converted MVDream folder
    return out


MV_CONFIGS = ("dreambooth3d-mvdream-stage1.yaml", "dreambooth3d-mvdream-stage3.yaml")
DATAMODULES = {"pseudo-multiview-datamodule": "PseudoMultiviewDataModule",
               "dreambooth-multiview-camera-datamodule": "MultiviewCameraDataModule"}


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=[p.name for p in ALL_CONFIGS])
def test_config_parses_with_threestudio_loader(threestudio, path, tmp_path):
    cfg = load_config(path, *overrides_for(path, tmp_path))
    assert threestudio.find(cfg.system_type) is threestudio.find("dreambooth3d-system")
    expected_data = "dreambooth-multiview-camera-datamodule" if path.name in MV_CONFIGS else "pseudo-multiview-datamodule"
    assert cfg.data_type == expected_data
    sys_cfg = threestudio.find(cfg.system_type).Config
    # the system's and datamodule's structured configs accept every key the file sets
    OmegaConf.structured(sys_cfg(**cfg.system))
    OmegaConf.structured(threestudio.find(cfg.data_type).config_class(**cfg.data))
    # the prompt processor follows the guidance's model and checkpoint
    pp, g = cfg.system.prompt_processor, cfg.system.guidance
    assert (pp.pretrained_model_name_or_path, pp.checkpoint, pp.checkpoint_name) == (
        g.pretrained_model_name_or_path, g.checkpoint, g.checkpoint_name)
    assert cfg.tag == "a_sks_dog"


def test_mvdream_stages_are_mvdream_threestudios_sizes_on_our_nerf(threestudio, tmp_path):
    """64 px x 8 views then 256 px x 4 from step 5000, 4-view objects, the multi-view guidance with the
    partial then the multi-view checkpoint; the NeRF is the 2D stages' (stage 2 loads it)."""
    stage2 = load_config(CONFIGS / "dreambooth3d-stage2.yaml", *overrides_for(CONFIGS / "dreambooth3d-stage2.yaml", tmp_path))
    names = []
    for name in MV_CONFIGS:
        cfg = load_config(CONFIGS / name, *overrides_for(CONFIGS / name, tmp_path))
        assert (list(cfg.data.width), list(cfg.data.batch_size), list(cfg.data.resolution_milestones), cfg.data.n_view) == (
            [64, 256], [8, 4], [5000], 4)
        g = cfg.system.guidance
        assert threestudio.find(cfg.system.guidance_type) is threestudio.find("dreambooth-mvdream-guidance")
        OmegaConf.structured(threestudio.find(cfg.system.guidance_type).Config(**g))
        assert (g.guidance_scale, g.recon_loss, g.recon_std_rescale) == (50.0, True, 0.5)
        assert list(g.min_step_percent) == [0, 0.98, 0.02, 8000] and list(g.max_step_percent) == [0, 0.98, 0.50, 8000]
        for key in MODEL_SECTIONS:
            assert cfg.system[key] == stage2.system[key], (name, key)
        names.append(g.checkpoint_name)
    assert names == ["partial", "multiview"]


def test_mix_config_weighs_the_2d_and_the_multiview_sds(threestudio, tmp_path):
    path = CONFIGS / "mix" / "dreambooth3d-mvdream-mix.yaml"
    cfg = load_config(path, 'system.prompt_processor.prompt="a sks dog"', f"exp_root_dir={tmp_path}",
                      "system.guidance.sd_guidance.checkpoint=SD_CKPT", "system.guidance.mv_guidance.checkpoint=MV_CKPT",
                      "system.guidance.mv_guidance.pretrained_model_name_or_path=MV", "system.loss.lambda_sds_2d=0.25")
    assert threestudio.find(cfg.system.guidance_type) is threestudio.find("dreambooth-mixed-guidance")
    OmegaConf.structured(threestudio.find("dreambooth3d-system").Config(**cfg.system))
    g = cfg.system.guidance
    OmegaConf.structured(threestudio.find("dreambooth-sds-guidance").Config(**g.sd_guidance))
    OmegaConf.structured(threestudio.find("dreambooth-mvdream-guidance").Config(**g.mv_guidance))
    # each model embeds with its own checkpoint's text encoder, the same prompt
    assert (g.sd_prompt_processor.checkpoint, g.sd_prompt_processor.prompt) == ("SD_CKPT", "a sks dog")
    assert (cfg.system.prompt_processor.checkpoint, cfg.system.prompt_processor.pretrained_model_name_or_path) == (
        "MV_CKPT", "MV")
    # the guidance's loss_sds_2d / loss_sds_mv meet a weight each (DreamFusion's lambda_<name>)
    assert (cfg.system.loss.lambda_sds_2d, cfg.system.loss.lambda_sds_mv) == (0.25, 1.0)
    assert "lambda_sds" not in cfg.system.loss


def test_stages_share_one_nerf(threestudio, tmp_path):
    """Stage 2 loads the stage-1 checkpoint and stage 3 may start from it: same model sections."""
    cfgs = {}
    for stage in (1, 2, 3):
        path = CONFIGS / f"dreambooth3d-stage{stage}.yaml"
        cfgs[stage] = load_config(path, *overrides_for(path, tmp_path))
    for key in MODEL_SECTIONS:
        assert cfgs[1].system[key] == cfgs[2].system[key] == cfgs[3].system[key], key
    assert [cfgs[s].system.stage for s in (1, 2, 3)] == [1, 2, 3]
    assert [cfgs[s].system.guidance.checkpoint_name for s in (1, 2, 3)] == ["partial", "full", "multiview"]


def test_baseline_is_plain_sds_with_the_full_model(threestudio, tmp_path):
    path = CONFIGS / "dreamboothfusion-baseline.yaml"
    cfg = load_config(path, *overrides_for(path, tmp_path))
    assert cfg.system.stage == 1 and cfg.system.guidance.checkpoint_name == "full"
    assert cfg.system.loss.lambda_rec == 0 and cfg.data.pseudo_views_dir is None


def test_magic3d_refinement_runs_on_our_guidance(threestudio, tmp_path):
    """Mixing with threestudio's systems: Magic3D refinement parses with our guidance and prompt processor."""
    path = CONFIGS / "mix" / "magic3d-refine-dreambooth.yaml"
    from threestudio_dreambooth3d.pipeline import smoke

    # the CPU override set applies to it too (stepping it needs threestudio's load/tets files)
    cfg = load_config(path, *overrides_for(path, tmp_path), f"system.geometry_convert_from={tmp_path / 'last.ckpt'}",
                      *smoke.STAGE[:2], *smoke.STAGE[4:6])
    assert (cfg.data.width, cfg.trainer.max_steps) == (smoke.RENDER_SIZE, smoke.TRAIN_STEPS)
    assert threestudio.find(cfg.system_type) is threestudio.find("magic3d-system")
    assert threestudio.find(cfg.system.guidance_type) is threestudio.find("dreambooth-sds-guidance")
    assert threestudio.find(cfg.system.prompt_processor_type) is threestudio.find("dreambooth-prompt-processor")
    OmegaConf.structured(threestudio.find(cfg.system_type).Config(**cfg.system))
    guidance_cfg = OmegaConf.structured(threestudio.find("dreambooth-sds-guidance").Config(**cfg.system.guidance))
    assert guidance_cfg.checkpoint_name == "multiview" and guidance_cfg.max_step_percent == 0.5
    # the refinement mesh starts from our NeRF: same radius and hash-grid layout as stage 3
    stage3 = load_config(CONFIGS / "dreambooth3d-stage3.yaml", *overrides_for(CONFIGS / "dreambooth3d-stage3.yaml", tmp_path))
    assert cfg.system.geometry.radius == stage3.system.geometry.radius
    for key in ("n_levels", "n_features_per_level", "log2_hashmap_size", "base_resolution", "per_level_scale"):
        assert cfg.system.geometry.pos_encoding_config[key] == stage3.system.geometry.pos_encoding_config[key], key
