"""The MVDream prior inside threestudio: dreambooth-mvdream-guidance, dreambooth-multiview-camera-datamodule,
dreambooth-mixed-guidance and the prompt processor on a converted (tiny) MVDream folder."""
import random

import pytest
import torch

from threestudio_dreambooth3d.core import cameras, mvsds

MV_NAMES = ("dreambooth-mvdream-guidance", "dreambooth-multiview-camera-datamodule", "dreambooth-mixed-guidance")


@pytest.fixture(scope="module")
def tiny_mv_path(tmp_path_factory):
    from threestudio_dreambooth3d.tiny_models.mvdream import build_tiny_mvdream

    return build_tiny_mvdream(tmp_path_factory.mktemp("models") / "tiny-mvdream")


def make_mv_guidance(threestudio, model, **kw):
    return threestudio.find("dreambooth-mvdream-guidance")(
        {"pretrained_model_name_or_path": str(model), "half_precision_weights": False, **kw})


def make_prompt_processor(threestudio, model, **kw):
    return threestudio.find("dreambooth-prompt-processor")(
        {"pretrained_model_name_or_path": str(model), "prompt": "a sks dog", **kw})


def four_view_batch(n_objects=1, size=24, seed=0):
    b = cameras.multiview_cameras(n_objects, 4, generator=torch.Generator().manual_seed(seed), height=size, width=size)
    return {k: b[k] for k in ("elevation", "azimuth", "camera_distances", "c2w")}


def test_names_are_registered_to_our_modules(threestudio):
    for name in MV_NAMES:
        module = threestudio.find(name).__module__
        assert module.startswith("threestudio_dreambooth3d.") and module.split(".")[1] in ("guidance", "data"), module


def test_guidance_is_the_core_multiview_sds_with_the_batch_cameras(threestudio, tiny_mv_path, in_tmp_project):
    from threestudio_dreambooth3d.core.mvdream import mvdream_camera

    guidance = make_mv_guidance(threestudio, tiny_mv_path)
    prompt_utils = make_prompt_processor(threestudio, tiny_mv_path)()
    guidance.update_step(0, 0)
    batch = four_view_batch(n_objects=2)
    rgb = torch.rand(8, 24, 24, 3, requires_grad=True)
    torch.manual_seed(0)
    out = guidance(rgb, prompt_utils, **batch)
    assert torch.isfinite(out["loss_sds"]) and out["loss_sds"] > 0
    out["loss_sds"].backward()
    assert rgb.grad.abs().sum(dim=(1, 2, 3)).min() > 0  # every view receives gradient
    # the same draws through the core with the camera of each view's c2w
    emb = prompt_utils.get_text_embeddings(batch["elevation"], batch["azimuth"], batch["camera_distances"], False)
    torch.manual_seed(0)
    ref = mvsds.multiview_score_distillation(
        guidance.components.unet, guidance.components.vae, rgb.detach(), emb, mvdream_camera(batch["c2w"]),
        guidance.components.scheduler.alphas_cumprod, (guidance.min_step, guidance.max_step),
        mvsds.MVSDSConfig(guidance_scale=50.0, recon_loss=True, recon_std_rescale=0.5), image_size=32)
    torch.testing.assert_close(out["loss_sds"].detach(), ref["loss_sds"], rtol=1e-5, atol=1e-6)


def test_step_schedule_is_mvdreams(threestudio, tiny_mv_path):
    guidance = make_mv_guidance(threestudio, tiny_mv_path, min_step_percent=[0, 0.98, 0.02, 8000],
                                max_step_percent=[0, 0.98, 0.50, 8000])
    guidance.update_step(0, 0)
    assert (guidance.min_step, guidance.max_step) == (980, 980)
    guidance.update_step(0, 4000)
    assert (guidance.min_step, guidance.max_step) == (500, 740)
    guidance.update_step(0, 9000)
    assert (guidance.min_step, guidance.max_step) == (20, 500)


def test_guidance_refuses_a_plain_sd_folder_and_a_partial_object(threestudio, tiny_sd_path, tiny_mv_path, in_tmp_project):
    from threestudio_dreambooth3d.errors import ConfigError

    with pytest.raises(ConfigError, match="convert-mvdream"):
        make_mv_guidance(threestudio, tiny_sd_path)
    guidance = make_mv_guidance(threestudio, tiny_mv_path)
    prompt_utils = make_prompt_processor(threestudio, tiny_mv_path)()
    batch = {k: v[:3] for k, v in four_view_batch().items()}
    with pytest.raises(ValueError, match="n_view=4"):
        guidance(torch.rand(3, 24, 24, 3), prompt_utils, **batch)


def test_prompt_processor_embeds_with_the_mvdream_folders_text_encoder(threestudio, tiny_mv_path, in_tmp_project):
    from threestudio_dreambooth3d.core.sd_models import load_sd_components

    prompt_utils = make_prompt_processor(threestudio, tiny_mv_path)()
    comps = load_sd_components(tiny_mv_path)
    expected = comps.encode_prompts(["a sks dog"])
    torch.testing.assert_close(prompt_utils.text_embeddings.cpu(), expected, rtol=1e-5, atol=1e-5)


def test_mixed_guidance_is_both_guidances_each_under_its_name(threestudio, tiny_sd_path, tiny_mv_path, in_tmp_project):
    sd_cfg = {"pretrained_model_name_or_path": str(tiny_sd_path), "half_precision_weights": False}
    mv_cfg = {"pretrained_model_name_or_path": str(tiny_mv_path), "half_precision_weights": False}
    mixed = threestudio.find("dreambooth-mixed-guidance")({
        "sd_guidance": sd_cfg, "mv_guidance": mv_cfg,
        # its own prompt (and text encoder): what the 2D model sees is not the system's embedding
        "sd_prompt_processor": {"pretrained_model_name_or_path": str(tiny_sd_path), "prompt": "a photo of a sks dog"}})
    mv_prompts = make_prompt_processor(threestudio, tiny_mv_path)()
    mixed.do_update_step(0, 0)  # threestudio's recursive update reaches both
    assert mixed.sd.min_step == 20 and mixed.mv.min_step == 20
    batch = four_view_batch()
    rgb = torch.rand(4, 24, 24, 3)
    torch.manual_seed(0)
    out = mixed(rgb, mv_prompts, **batch)
    assert {"loss_sds_2d", "loss_sds_mv", "grad_norm_2d", "grad_norm_mv"} <= set(out)
    torch.manual_seed(0)
    sd_alone = threestudio.find("dreambooth-sds-guidance")(sd_cfg)
    sd_alone.update_step(0, 0)
    sd_out = sd_alone(rgb, make_prompt_processor(threestudio, tiny_sd_path, prompt="a photo of a sks dog")(), **batch)
    mv_out = mixed.mv(rgb, mv_prompts, **batch)
    torch.testing.assert_close(out["loss_sds_2d"], sd_out["loss_sds"])
    torch.testing.assert_close(out["loss_sds_mv"], mv_out["loss_sds"])


TINY = dict(width=[16, 32], height=[16, 32], batch_size=[8, 4], resolution_milestones=[3], n_view=4,
            camera_distance_range=[0.8, 1.0], fovy_range=[15, 60], elevation_range=[0, 30], eval_height=16,
            eval_width=16, n_val_views=4, n_test_views=4, eval_camera_distance=3.0, eval_fovy_deg=40.0)


def test_datamodule_gives_whole_objects_and_switches_size_at_the_milestone(threestudio, tmp_path):
    from threestudio_dreambooth3d.core.pseudo_views import write_pseudo_views

    cams = cameras.orbit_cameras(4, 15.0, 2.0, 60.0, 20, 20)
    pseudo = write_pseudo_views(tmp_path / "pseudo", torch.rand(4, 20, 20, 3), cams, captions="a sks dog",
                                masks=torch.ones(4, 20, 20, 1))
    dm = threestudio.find("dreambooth-multiview-camera-datamodule")({**TINY, "pseudo_views_dir": str(pseudo)})
    dm.setup("fit")
    random.seed(0)
    torch.manual_seed(0)
    batch = dm.train_dataset.collate(None)
    assert batch["rays_o"].shape == (8, 16, 16, 3) and (batch["height"], batch["width"]) == (16, 16)
    az = batch["azimuth"].view(2, 4)
    torch.testing.assert_close(az[:, 1:] - az[:, :-1], torch.full((2, 3), 90.0), atol=1e-4, rtol=0)
    assert batch["pseudo"]["rgb"].shape == (1, 16, 16, 3)  # the reconstruction view at the first size
    dm.train_dataset.update_step(0, 3)
    batch = dm.train_dataset.collate(None)
    assert batch["rays_o"].shape == (4, 32, 32, 3)
    # threestudio's ray directions for these cameras
    from threestudio.utils.ops import get_ray_directions, get_rays

    focal = 0.5 * 32 / torch.tan(0.5 * batch["fovy"])
    dirs = get_ray_directions(32, 32, 1.0)[None].repeat(4, 1, 1, 1)
    dirs[..., :2] = dirs[..., :2] / focal[:, None, None, None]
    rays_o, rays_d = get_rays(dirs, batch["c2w"], keepdim=True)
    torch.testing.assert_close(batch["rays_d"], rays_d, atol=1e-5, rtol=1e-5)


def test_datamodule_refuses_a_batch_that_splits_an_object(threestudio):
    from threestudio_dreambooth3d.errors import ConfigError

    with pytest.raises(ConfigError, match="multiples of data.n_view"):
        threestudio.find("dreambooth-multiview-camera-datamodule")({**TINY, "batch_size": [8, 6]})
