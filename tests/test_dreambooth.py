import itertools
import json

import pytest
import torch
from safetensors.torch import load_file

from threestudio_dreambooth3d.core import checkpoints, lora
from threestudio_dreambooth3d.core.dreambooth import DreamBoothConfig, DreamBoothTrainer
from threestudio_dreambooth3d.core.sampling import generate_images
from threestudio_dreambooth3d.core.sd_models import load_sd_components
from helpers import latent_distance_to_subject


def make_cfg(tiny_sd_path, subject_dir, out, **kw):
    base = dict(
        pretrained_model=str(tiny_sd_path), subject_dir=str(subject_dir), class_noun="dog",
        output_dir=str(out), num_class_images=2, class_inference_steps=2, max_steps=6,
        checkpoint_steps={"partial": 2, "full": 6}, learning_rate=1e-3, lora_rank=4,
    )
    base.update(kw)
    return DreamBoothConfig(**base)


def test_loss_goes_down_on_a_fixed_batch(tiny_sd_path, subject_dir, tmp_path):
    trainer = DreamBoothTrainer(make_cfg(tiny_sd_path, subject_dir, tmp_path, prior_preservation=False, batch_size=4,
                                         learning_rate=1e-2))
    batch = trainer.sample_batch(torch.Generator().manual_seed(1))
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]

    def fixed_loss():
        return trainer.loss(batch, torch.Generator().manual_seed(2))["loss"]

    first = fixed_loss().item()
    for _ in range(50):
        trainer.optimizer.zero_grad()
        fixed_loss().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        trainer.optimizer.step()
    assert fixed_loss().item() < 0.75 * first


def test_samples_move_toward_subject_full_more_than_partial(personalised, tiny_sd_path, subject_latents):
    def dist(ckpt):
        comps = load_sd_components(tiny_sd_path, checkpoint=ckpt)
        lat = generate_images(comps, "a sks dog", num_images=4, num_inference_steps=10, guidance_scale=3.0,
                              seed=123, output_type="latent")
        return latent_distance_to_subject(lat, subject_latents)

    base, partial, full = dist(None), dist(personalised.checkpoints["partial"]), dist(personalised.checkpoints["full"])
    assert partial < base
    assert full < 0.8 * partial


def test_one_run_writes_named_checkpoints_at_their_steps(personalised):
    meta = {n: checkpoints.read_meta(p) for n, p in personalised.checkpoints.items()}
    assert (meta["partial"]["step"], meta["full"]["step"]) == (60, 300)
    assert all(m["mode"] == "lora" and not m["text_encoder_trained"] for m in meta.values())
    # LoRA checkpoints hold only adapter weights, not a UNet copy
    assert all("lora" in k for k in load_file(str(personalised.checkpoints["full"] / "unet.safetensors")))


def test_reloaded_checkpoint_reproduces_in_memory_model(tiny_sd_path, subject_dir, tmp_path):
    # alpha 16 on rank 4: the adapters' delta is scaled by 4, which the reload must keep
    trainer = DreamBoothTrainer(make_cfg(tiny_sd_path, subject_dir, tmp_path, train_text_encoder=True, lora_alpha=16))
    trainer.train()
    meta = checkpoints.read_meta(tmp_path / "checkpoints" / "full")
    assert (meta["lora_rank"], meta["lora_alpha"]) == (4, 16)
    unmerged = load_sd_components(tiny_sd_path, checkpoint=tmp_path / "checkpoints" / "full", merge_lora=False)
    assert lora.lora_shape(unmerged.unet) == lora.lora_shape(trainer.components.unet) == (4, 16)
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])
    ids = trainer.components.tokenize(["a sks dog", "a dog"])
    with torch.no_grad():
        mem_emb = trainer.components.text_encoder(ids)[0]
        mem_out = trainer.components.unet(x, t, encoder_hidden_states=mem_emb).sample
        loaded = load_sd_components(tiny_sd_path, checkpoint=tmp_path / "checkpoints" / "full")
        disk_emb = loaded.text_encoder(ids)[0]
        disk_out = loaded.unet(x, t, encoder_hidden_states=disk_emb).sample
        base_out = load_sd_components(tiny_sd_path).unet(x, t, encoder_hidden_states=mem_emb).sample
    assert torch.allclose(mem_emb, disk_emb, atol=1e-5)
    assert torch.allclose(mem_out, disk_out, atol=1e-4)
    assert not torch.allclose(mem_out, base_out, atol=1e-4)  # the checkpoint really changed the model


def test_each_named_checkpoint_holds_the_weights_after_its_step(tiny_sd_path, subject_dir, tmp_path):
    cfg = make_cfg(tiny_sd_path, subject_dir, tmp_path, prior_preservation=False, max_steps=3,
                   checkpoint_steps={"partial": 2, "full": 3})
    trainer = DreamBoothTrainer(cfg)
    after = {}  # step -> the adapters once that step's update is applied (copies: on a CPU they alias the weights)

    def keep(step, losses):
        after[step] = {k: v.clone() for k, v in lora.lora_state_dict(trainer.components.unet).items()}

    trainer.train(on_step=keep)
    assert any(not torch.equal(after[1][k], after[2][k]) for k in after[1])  # step 2 changed the weights
    for name, step in (("partial", 2), ("full", 3)):
        saved = load_file(str(tmp_path / "checkpoints" / name / "unet.safetensors"))
        assert saved.keys() == after[step].keys()
        assert all(torch.equal(saved[k], after[step][k]) for k in saved), name


def test_full_unet_mode_checkpoint_round_trip(tiny_sd_path, subject_dir, tmp_path):
    trainer = DreamBoothTrainer(make_cfg(tiny_sd_path, subject_dir, tmp_path, mode="full", learning_rate=1e-4))
    trainer.train()
    state = load_file(str(tmp_path / "checkpoints" / "full" / "unet.safetensors"))
    assert set(state) == set(trainer.components.unet.state_dict())
    loaded = load_sd_components(tiny_sd_path, checkpoint=tmp_path / "checkpoints" / "full")
    for k, v in trainer.components.unet.state_dict().items():
        assert torch.equal(v, loaded.unet.state_dict()[k]), k


def test_prior_preservation_mixes_class_images_and_reports_its_loss(tiny_sd_path, subject_dir, tmp_path):
    cfg = make_cfg(tiny_sd_path, subject_dir, tmp_path, batch_size=2, prior_loss_weight=0.5)
    trainer = DreamBoothTrainer(cfg)
    class_files = sorted((tmp_path / "class_images").glob("class_*.png"))
    assert len(class_files) == cfg.num_class_images
    batch = trainer.sample_batch(torch.Generator().manual_seed(0))
    assert batch["is_prior"].tolist() == [False, False, True, True]
    class_emb = trainer.components.encode_prompts(["a dog"])[0]
    inst_emb = trainer.components.encode_prompts(["a sks dog"])[0]
    assert torch.allclose(batch["cond"][2], class_emb) and torch.allclose(batch["cond"][0], inst_emb)
    losses = trainer.loss(batch, torch.Generator().manual_seed(0))
    assert torch.isclose(losses["loss"], losses["instance_loss"] + 0.5 * losses["prior_loss"])
    history = trainer.train().history
    assert all(h["prior_loss"] > 0 for h in history)
    # class images are cached: a second trainer reuses them rather than regenerating
    mtimes = [p.stat().st_mtime_ns for p in class_files]
    DreamBoothTrainer(make_cfg(tiny_sd_path, subject_dir, tmp_path / "again", class_images_dir=str(tmp_path / "class_images")))
    assert [p.stat().st_mtime_ns for p in class_files] == mtimes


def test_crash_keeps_finished_checkpoint_and_rerun_resumes_to_the_same_weights(tiny_sd_path, subject_dir, tmp_path):
    reference = DreamBoothTrainer(make_cfg(tiny_sd_path, subject_dir, tmp_path / "ref"))
    reference.train()

    class Crash(Exception):
        pass

    def crash_at_5(step, _):
        if step == 5:
            raise Crash

    out = tmp_path / "crashy"
    crashy = DreamBoothTrainer(make_cfg(tiny_sd_path, subject_dir, out, save_state_minutes=2 / 60))
    crashy.clock = itertools.count().__next__  # a fake clock read once per step: "1 s" per step, a state every 2 s
    with pytest.raises(Crash):
        crashy.train(on_step=crash_at_5)
    partial = out / "checkpoints" / "partial"
    assert checkpoints.read_meta(partial)["step"] == 2
    assert not (out / "checkpoints" / "full").exists()
    partial_bytes = (partial / "unet.safetensors").read_bytes()

    resumed = DreamBoothTrainer(make_cfg(tiny_sd_path, subject_dir, out))
    result = resumed.train()
    assert result.resumed_from == 4  # the last saved state, not step 0
    assert [h["step"] for h in result.history] == list(range(1, 7))
    assert (partial / "unet.safetensors").read_bytes() == partial_bytes
    ref_w = load_file(str(tmp_path / "ref" / "checkpoints" / "full" / "unet.safetensors"))
    got_w = load_file(str(out / "checkpoints" / "full" / "unet.safetensors"))
    for k in ref_w:
        assert torch.allclose(ref_w[k], got_w[k], atol=1e-6), k


def test_resume_refuses_a_run_with_different_inputs(tiny_sd_path, subject_dir, tmp_path):
    DreamBoothTrainer(make_cfg(tiny_sd_path, subject_dir, tmp_path)).train()
    with pytest.raises(RuntimeError, match="different inputs or settings.*new --out"):
        DreamBoothTrainer(make_cfg(tiny_sd_path, subject_dir, tmp_path, identifier="zwx")).train()


def test_multiview_finetune_continues_from_checkpoint_with_captions(personalised, tiny_sd_path, subject_dir, tmp_path):
    from PIL import Image

    views = tmp_path / "views"
    views.mkdir()
    for i, view in enumerate(["front", "back"]):
        Image.new("RGB", (32, 32), (200, 40, 40)).save(views / f"view_{i:03d}.png")
        (views / f"view_{i:03d}.txt").write_text(f"a sks dog, {view} view")
    from threestudio_dreambooth3d.core.subject import read_captioned_folder

    cfg = make_cfg(tiny_sd_path, subject_dir, tmp_path / "mv", init_checkpoint=str(personalised.checkpoints["full"]),
                   extra_images=read_captioned_folder(views), lora_rank=8, checkpoint_steps={"multiview": 6})
    trainer = DreamBoothTrainer(cfg)
    assert trainer.instance_prompts[-2:] == ["a sks dog, front view", "a sks dog, back view"]
    assert len(trainer.instance_prompts) == 4 + 2
    # before training, the model is the full checkpoint (continued, not restarted)
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([300])
    emb = trainer.components.encode_prompts(["a sks dog"])
    full = load_sd_components(tiny_sd_path, checkpoint=personalised.checkpoints["full"])
    with torch.no_grad():
        assert torch.allclose(trainer.components.unet(x, t, encoder_hidden_states=emb).sample,
                              full.unet(x, t, encoder_hidden_states=emb).sample, atol=1e-4)
    trainer.train()
    meta = json.loads((tmp_path / "mv" / "checkpoints" / "multiview" / "dreambooth.json").read_text())
    assert meta["init_checkpoint"] == str(personalised.checkpoints["full"]) and meta["num_extra_images"] == 2


def test_finetune_cli(tiny_sd_path, subject_dir, tmp_path, capsys):
    from threestudio_dreambooth3d.cli import main

    rc = main(["finetune", "--subject", str(subject_dir), "--class-noun", "dog", "--model", str(tiny_sd_path),
               "--out", str(tmp_path), "--steps", "4", "--num-class-images", "1", "--lora-rank", "2"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert checkpoints.read_meta(printed["partial"])["step"] == 1
    assert checkpoints.read_meta(printed["full"])["step"] == 4


def test_finetune_cli_reports_bad_subject_folder(tiny_sd_path, tmp_path, capsys):
    from threestudio_dreambooth3d.cli import main

    (tmp_path / "photos").mkdir()
    rc = main(["finetune", "--subject", str(tmp_path / "photos"), "--class-noun", "dog",
               "--model", str(tiny_sd_path), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "has no images" in capsys.readouterr().err


def test_model_folder_without_model_index_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a diffusers model folder.*save_pretrained"):
        load_sd_components(tmp_path)


def _continue(tiny_sd_path, subject_dir, out, init, **kw):
    """A short continued run (no prior images, so it takes a moment) from checkpoint ``init``."""
    cfg = make_cfg(tiny_sd_path, subject_dir, out, init_checkpoint=str(init), prior_preservation=False,
                   max_steps=2, checkpoint_steps={"multiview": 2}, **kw)
    trainer = DreamBoothTrainer(cfg)
    trainer.train()
    return trainer, out / "checkpoints" / "multiview"


def test_continued_checkpoint_keeps_the_text_encoder_it_started_from(tiny_sd_path, subject_dir, tmp_path):
    first = DreamBoothTrainer(make_cfg(tiny_sd_path, subject_dir, tmp_path / "first", prior_preservation=False,
                                       max_steps=3, checkpoint_steps={"full": 3}, train_text_encoder=True,
                                       learning_rate=1e-2))
    first.train()
    ids = first.components.tokenize(["a sks dog"])
    with torch.no_grad():
        trained_emb = first.components.text_encoder(ids)[0]
        base_emb = load_sd_components(tiny_sd_path).text_encoder(ids)[0]
    assert not torch.allclose(trained_emb, base_emb, atol=1e-4)  # the first run really trained it
    _, cont = _continue(tiny_sd_path, subject_dir, tmp_path / "cont", tmp_path / "first" / "checkpoints" / "full")
    with torch.no_grad():
        reloaded_emb = load_sd_components(tiny_sd_path, checkpoint=cont).text_encoder(ids)[0]
    assert torch.allclose(reloaded_emb, trained_emb, atol=1e-5)
    assert checkpoints.read_meta(cont)["text_encoder_trained"]


def test_lora_continued_from_a_full_unet_reloads_to_the_trained_weights(tiny_sd_path, subject_dir, tmp_path):
    DreamBoothTrainer(make_cfg(tiny_sd_path, subject_dir, tmp_path / "first", prior_preservation=False, mode="full",
                               max_steps=3, checkpoint_steps={"full": 3}, learning_rate=1e-3)).train()
    trainer, cont = _continue(tiny_sd_path, subject_dir, tmp_path / "cont", tmp_path / "first" / "checkpoints" / "full",
                              mode="lora", learning_rate=1e-2)
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])
    emb = trainer.components.encode_prompts(["a sks dog", "a dog"])
    with torch.no_grad():
        mem_out = trainer.components.unet(x, t, encoder_hidden_states=emb).sample
        disk_out = load_sd_components(tiny_sd_path, checkpoint=cont).unet(x, t, encoder_hidden_states=emb).sample
        full_out = load_sd_components(tiny_sd_path, checkpoint=tmp_path / "first" / "checkpoints" / "full").unet(
            x, t, encoder_hidden_states=emb).sample
    assert torch.allclose(disk_out, mem_out, atol=1e-5)
    assert not torch.allclose(disk_out, full_out, atol=1e-4)  # the LoRA run changed it further
    # the LoRA itself stays an adapter file; the full UNet it sits on is kept beside it
    assert all("lora" in k for k in load_file(str(cont / "unet.safetensors")))


@pytest.mark.parametrize("first_mode, first_te, mode, te", [
    ("lora", True, "full", False),   # LoRA text encoder kept while the UNet goes full
    ("lora", False, "lora", True),   # continued UNet LoRA keeps its own rank; new text-encoder LoRA
    ("full", True, "full", False),   # full text encoder kept
])
def test_every_chain_reloads_exactly_what_was_in_memory(tiny_sd_path, subject_dir, tmp_path, first_mode, first_te, mode, te):
    DreamBoothTrainer(make_cfg(tiny_sd_path, subject_dir, tmp_path / "first", prior_preservation=False, mode=first_mode,
                               max_steps=2, checkpoint_steps={"full": 2}, train_text_encoder=first_te,
                               learning_rate=1e-2, lora_rank=2)).train()
    trainer, cont = _continue(tiny_sd_path, subject_dir, tmp_path / "cont", tmp_path / "first" / "checkpoints" / "full",
                              mode=mode, train_text_encoder=te, learning_rate=1e-3, lora_rank=4)
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])
    ids = trainer.components.tokenize(["a sks dog", "a dog"])
    loaded = load_sd_components(tiny_sd_path, checkpoint=cont)
    with torch.no_grad():
        mem_emb, disk_emb = trainer.components.text_encoder(ids)[0], loaded.text_encoder(ids)[0]
        mem_out = trainer.components.unet(x, t, encoder_hidden_states=mem_emb).sample
        disk_out = loaded.unet(x, t, encoder_hidden_states=mem_emb).sample
    assert torch.allclose(disk_emb, mem_emb, atol=1e-5)
    assert torch.allclose(disk_out, mem_out, atol=1e-5)


class _StubScheduler:
    """add_noise hands the UNet the noise itself, so a stub UNet can return noise + a known error."""

    config = type("Cfg", (), {"num_train_timesteps": 1000})()

    def add_noise(self, latents, noise, t):
        return noise


class _StubUNet(torch.nn.Module):
    """Prediction = input + the per-item error carried in the text conditioning's first entry."""

    dtype = torch.float32

    def forward(self, noisy, t, encoder_hidden_states):
        return type("Out", (), {"sample": noisy + encoder_hidden_states[:, :1, :1, None]})()


@pytest.mark.parametrize("is_prior", [[False, False, True, True], [True, False, True, False]])
def test_instance_and_prior_losses_average_their_own_rows(is_prior):
    from types import SimpleNamespace

    trainer = DreamBoothTrainer.__new__(DreamBoothTrainer)  # no model: loss() on a stub UNet
    trainer.cfg = SimpleNamespace(prior_loss_weight=0.5)
    trainer.device = torch.device("cpu")
    trainer.components = SimpleNamespace(unet=_StubUNet(), scheduler=_StubScheduler(), prediction_type="epsilon")
    errors = torch.tensor([1.0, 2.0, 3.0, 4.0])  # per-item MSE = error^2 = 1, 4, 9, 16
    batch = {"latents": torch.zeros(4, 4, 2, 2), "cond": errors[:, None, None].expand(4, 3, 5).clone(),
             "is_prior": torch.tensor(is_prior)}
    out = trainer.loss(batch, torch.Generator().manual_seed(0))
    sq = errors ** 2
    prior = torch.tensor(is_prior)
    assert out["instance_loss"].item() == pytest.approx(sq[~prior].mean().item())
    assert out["prior_loss"].item() == pytest.approx(sq[prior].mean().item())
    assert out["loss"].item() == pytest.approx(sq[~prior].mean().item() + 0.5 * sq[prior].mean().item())
