"""dreambooth-sds-guidance and dreambooth-prompt-processor inside threestudio, on the tiny model."""
import pytest
import torch


def make_prompt_processor(threestudio, model, run, name="partial", **kw):
    return threestudio.find("dreambooth-prompt-processor")(
        {"pretrained_model_name_or_path": str(model), "checkpoint": str(run), "checkpoint_name": name,
         "prompt": "a sks dog", **kw})


def make_guidance(threestudio, model, run, name="partial", **kw):
    return threestudio.find("dreambooth-sds-guidance")(
        {"pretrained_model_name_or_path": str(model), "checkpoint": str(run), "checkpoint_name": name,
         "half_precision_weights": False, **kw})


@pytest.fixture(scope="module")
def guidance(threestudio, tiny_sd_path, dreambooth_run):
    return make_guidance(threestudio, tiny_sd_path, dreambooth_run)


def test_sds_loss_is_finite_and_its_gradient_reaches_the_render(threestudio, tiny_sd_path, dreambooth_run, guidance,
                                                                in_tmp_project):
    prompt_utils = make_prompt_processor(threestudio, tiny_sd_path, dreambooth_run)()
    guidance.update_step(0, 0)
    torch.manual_seed(0)
    rgb = torch.rand(2, 24, 24, 3, requires_grad=True)  # a render smaller than the model: upsampled like 64 -> 512
    out = guidance(rgb, prompt_utils, elevation=torch.tensor([10.0, 70.0]), azimuth=torch.tensor([0.0, 180.0]),
                   camera_distances=torch.tensor([2.0, 2.0]))
    assert torch.isfinite(out["loss_sds"]) and out["loss_sds"] > 0
    assert (out["min_step"], out["max_step"]) == (20, 980)
    out["loss_sds"].backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all()
    assert rgb.grad.abs().sum(dim=(1, 2, 3)).min() > 0  # every view of the batch receives gradient


def test_t_range_follows_threestudio_schedules(threestudio, tiny_sd_path, dreambooth_run, in_tmp_project, monkeypatch):
    from threestudio_dreambooth3d.core import sds

    # C() schedules as threestudio writes them: max_step_percent 0.98 -> 0.5 over steps 0..100
    g = make_guidance(threestudio, tiny_sd_path, dreambooth_run, max_step_percent=[0, 0.98, 0.5, 100],
                      grad_clip=[0, 0.1, 1.0, 100])
    g.update_step(0, 50)
    assert (g.min_step, g.max_step) == (20, 740) and g.grad_clip_val == pytest.approx(0.55)
    g.update_step(0, 100)
    used = []
    real = sds.score_distillation

    def record_t(*a, **k):
        out = real(*a, **k)
        used.append(out["t"])
        return out

    monkeypatch.setattr(sds, "score_distillation", record_t)
    prompt_utils = make_prompt_processor(threestudio, tiny_sd_path, dreambooth_run)()
    for seed in range(4):
        torch.manual_seed(seed)
        out = g(torch.rand(1, 32, 32, 3), prompt_utils, torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]))
    assert (out["min_step"], out["max_step"]) == (20, 500)
    assert all(20 <= int(t) <= 500 for t in used) and len(set(int(t) for t in used)) > 1


def test_guidance_is_the_core_sds_on_base_plus_checkpoint(threestudio, tiny_sd_path, dreambooth_run, guidance, in_tmp_project):
    """Same seed, same render: the guidance's loss is the core's on load_sd_components(model, checkpoint)."""
    from threestudio_dreambooth3d.core import sds
    from threestudio_dreambooth3d.core.sd_models import load_sd_components

    prompt_utils = make_prompt_processor(threestudio, tiny_sd_path, dreambooth_run)()
    guidance.update_step(0, 0)
    rgb = torch.rand(1, 32, 32, 3)
    ele, azi, dist = torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([2.0])
    torch.manual_seed(1)
    ours = guidance(rgb, prompt_utils, ele, azi, dist)["loss_sds"]
    comps = load_sd_components(tiny_sd_path, checkpoint=dreambooth_run / "checkpoints" / "partial").freeze()
    emb = prompt_utils.get_text_embeddings(ele, azi, dist, True)
    torch.manual_seed(1)  # t is drawn inside, after encoding, as threestudio's guidance does
    core = sds.score_distillation(comps, rgb, emb, sds.SDSConfig(guidance_scale=100.0), steps=(20, 980))["loss_sds"]
    torch.testing.assert_close(ours, core)
    base = load_sd_components(tiny_sd_path).freeze()
    torch.manual_seed(1)
    plain = sds.score_distillation(base, rgb, emb, sds.SDSConfig(guidance_scale=100.0), steps=(20, 980))["loss_sds"]
    assert not torch.allclose(ours, plain)  # the DreamBooth weights are applied


def test_prompt_processor_embeds_with_the_checkpoints_text_encoder(threestudio, tiny_sd_path, dreambooth_run, in_tmp_project):
    from threestudio_dreambooth3d.core.sd_models import load_sd_components

    ours = make_prompt_processor(threestudio, tiny_sd_path, dreambooth_run, name="full", use_cache=True)()
    front = ours.prompts_vd.index("a sks dog, front view")
    tuned = load_sd_components(tiny_sd_path, checkpoint=dreambooth_run / "checkpoints" / "full").encode_prompts(["a sks dog, front view"])
    base = load_sd_components(tiny_sd_path).encode_prompts(["a sks dog, front view"])
    torch.testing.assert_close(ours.text_embeddings_vd[front], tuned[0])
    assert (tuned - base).abs().max() > 1e-3  # the run trained the text encoder
    # threestudio's stock processor would have embedded with the base encoder: the cache keys differ
    stock = threestudio.find("stable-diffusion-prompt-processor")(
        {"pretrained_model_name_or_path": str(tiny_sd_path), "prompt": "a sks dog", "spawn": False})
    torch.testing.assert_close(stock().text_embeddings_vd[front], base[0])
    # a second processor reads the cache and still gets the checkpoint's embeddings, not the stock ones
    again = make_prompt_processor(threestudio, tiny_sd_path, dreambooth_run, name="full", use_cache=True)()
    torch.testing.assert_close(again.text_embeddings_vd[front], tuned[0])
    # and the partial checkpoint's encoder is a different one
    partial = make_prompt_processor(threestudio, tiny_sd_path, dreambooth_run, name="partial", use_cache=True)()
    assert not torch.allclose(partial.text_embeddings_vd[front], tuned[0])


def test_translate_is_batched_img2img_with_the_full_model(threestudio, tiny_sd_path, dreambooth_run):
    from threestudio_dreambooth3d.core import img2img

    g = make_guidance(threestudio, tiny_sd_path, dreambooth_run, name="full", translation_steps=4, translation_batch_size=2,
                      keep_text_encoder=True)
    renders = torch.rand(3, 3, 24, 24)
    prompts = ["a sks dog, front view", "a sks dog, side view", "a sks dog, back view"]
    out = g.translate(renders, prompts, seed=3)
    assert out.shape == renders.shape and out.min() >= 0 and out.max() <= 1
    assert (out - renders).abs().mean() > 1e-3
    # batching does not change a view's result (one seed per view)
    alone = img2img.translate(g.components, renders[2:], prompts[2:], strength=0.5, num_inference_steps=4, seed=5)
    torch.testing.assert_close(out[2:], alone, atol=1e-5, rtol=0)


def test_text_encoder_is_not_loaded_unless_the_stage_translates(threestudio, tiny_sd_path, dreambooth_run, guidance):
    """SDS gets its embeddings from the prompt processor: the guidance loads no text encoder
    (a checkpoint that trained one still loads); translate() then says which key loads it."""
    assert guidance.components.text_encoder is None and guidance.components.tokenizer is None
    with pytest.raises(RuntimeError, match="keep_text_encoder=true"):
        guidance.translate(torch.rand(1, 3, 8, 8), ["a sks dog"])
    kept = make_guidance(threestudio, tiny_sd_path, dreambooth_run, name="full", keep_text_encoder=True)
    assert kept.components.text_encoder is not None and kept.components.tokenizer is not None
    # stage 2 (test_stages.py) translates through dreambooth3d-system, which sets keep_text_encoder itself



def test_config_is_a_superset_of_stable_diffusion_guidance(threestudio):
    """Every key of threestudio's guidance Config is accepted, with its default (bar the model id)."""
    import dataclasses

    stock = {f.name: f for f in dataclasses.fields(threestudio.find("stable-diffusion-guidance").Config)}
    ours = {f.name: f for f in dataclasses.fields(threestudio.find("dreambooth-sds-guidance").Config)}
    assert set(stock) <= set(ours), set(stock) - set(ours)

    def default(f):
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    differ = {k for k in stock if default(stock[k]) != default(ours[k])}
    assert differ == {"pretrained_model_name_or_path"}  # SD 2.1 base, the paper-era model threestudio's configs use


def test_unet_runs_in_fp32_under_bf16_autocast(threestudio, tiny_sd_path, dreambooth_run, guidance, in_tmp_project):
    """16-mixed wraps the training step in autocast; half_precision_weights=false must still mean fp32."""
    prompt_utils = make_prompt_processor(threestudio, tiny_sd_path, dreambooth_run)()
    guidance.update_step(0, 0)
    dtypes = []
    hook = guidance.unet.register_forward_hook(lambda m, a, out: dtypes.append(out.sample.dtype))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            guidance(torch.rand(1, 16, 16, 3), prompt_utils, torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]))
    finally:
        hook.remove()
    assert dtypes == [torch.float32]


def test_token_merging_patches_the_unet_and_names_the_package(threestudio, tiny_sd_path, monkeypatch):
    import sys
    import types

    calls = []
    monkeypatch.setitem(sys.modules, "tomesd", types.SimpleNamespace(apply_patch=lambda m, **kw: calls.append((m, kw))))
    g = threestudio.find("dreambooth-sds-guidance")({"pretrained_model_name_or_path": str(tiny_sd_path),
                                                     "token_merging": True, "token_merging_params": {"ratio": 0.5}})
    assert calls == [(g.unet, {"ratio": 0.5})]
    monkeypatch.setitem(sys.modules, "tomesd", None)  # not installed
    with pytest.raises(ImportError, match="pip install tomesd"):
        threestudio.find("dreambooth-sds-guidance")({"pretrained_model_name_or_path": str(tiny_sd_path),
                                                     "token_merging": True})


def test_sequential_cpu_offload_is_accepted(threestudio, tiny_sd_path, caplog):
    g = threestudio.find("dreambooth-sds-guidance")({"pretrained_model_name_or_path": str(tiny_sd_path),
                                                     "enable_sequential_cpu_offload": True})
    assert g.unet.device.type == "cpu"  # on a CPU run it has nothing to offload to
    assert "enable_sequential_cpu_offload has no effect" in caplog.text


def test_a_cold_and_a_warm_embedding_cache_leave_the_same_random_state(threestudio, tiny_sd_path, dreambooth_run,
                                                                       in_tmp_project):
    """A stage's random numbers (NeRF init, sampling) must not depend on whether the prompt
    embeddings were cached: computing them loads the checkpoint, which must draw no random numbers."""
    states = []
    for _ in range(2):  # the first fills OUT/.threestudio's cache, the second reads it
        torch.manual_seed(0)
        make_prompt_processor(threestudio, tiny_sd_path, dreambooth_run)()
        states.append(torch.random.get_rng_state())
    assert torch.equal(states[0], states[1])
