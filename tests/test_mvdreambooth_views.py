"""The MVDream DreamBooth continued on a stage-2 pseudo-view set (``--extra-views``): the views train
as 4-view sets at the cameras they were rendered from, each with its caption."""
import pytest
import torch

from threestudio_dreambooth3d.core import cameras
from threestudio_dreambooth3d.core.mvdream import mvdream_camera
from threestudio_dreambooth3d.core.mvdreambooth import MVDreamBoothConfig, MVDreamBoothTrainer, load_view_sets
from threestudio_dreambooth3d.core.pseudo_views import write_pseudo_views


@pytest.fixture(scope="module")
def pseudo_set(tmp_path_factory):
    """Eight 24 px pseudo views at random cameras, captioned by view."""
    cams = cameras.random_cameras(8, (0, 30), (-180, 180), (1.5, 2.0), (40, 60), 24, 24, seed=3)
    images = torch.rand(8, 24, 24, 3, generator=torch.Generator().manual_seed(0))
    captions = [f"a sks dog, view {i}" for i in range(8)]
    return write_pseudo_views(tmp_path_factory.mktemp("pseudo") / "set", images, cams, captions=captions), cams


def test_view_sets_keep_each_views_camera_and_caption(pseudo_set):
    folder, cams = pseudo_set
    pixels, cam16, captions = load_view_sets(folder, 32)
    assert pixels.shape == (8, 3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    order = [int(c.rsplit(" ", 1)[1]) for c in captions]
    assert sorted(order) == list(range(8))
    torch.testing.assert_close(cam16, mvdream_camera(cams["c2w"][order]))


def test_continued_finetune_trains_one_pseudo_set_per_step_at_four_views(tiny_mvdream_path, subject_dir, pseudo_set,
                                                                         tmp_path, monkeypatch):
    folder, _ = pseudo_set
    cfg = MVDreamBoothConfig(pretrained_model=str(tiny_mvdream_path), subject_dir=str(subject_dir), class_noun="dog",
                             output_dir=str(tmp_path), prior_preservation=False, max_steps=1,
                             checkpoint_steps={"multiview": 1}, lora_rank=4, extra_views=str(folder))
    trainer = MVDreamBoothTrainer(cfg)
    calls = []
    forward = trainer.components.unet.forward

    def spy(sample, timestep, encoder_hidden_states, camera=None, num_frames=1, **kw):
        calls.append({"n": sample.shape[0], "num_frames": num_frames, "camera": camera, "t": timestep,
                      "cond": encoder_hidden_states})
        return forward(sample, timestep, encoder_hidden_states, camera=camera, num_frames=num_frames, **kw)

    monkeypatch.setattr(trainer.components.unet, "forward", spy)
    g = torch.Generator().manual_seed(0)
    losses = trainer.loss(trainer.sample_batch(g), g)
    assert "views_loss" in losses and "prior_loss" not in losses
    instance, views = calls
    assert (instance["num_frames"], instance["camera"]) == (1, None)  # the photos: 2D mode
    assert (views["n"], views["num_frames"]) == (4, 4) and len(set(views["t"].tolist())) == 1
    rows = [i for i in range(0, 8, 4) if torch.allclose(views["camera"].float(), trainer.view_cameras[i:i + 4])]
    assert len(rows) == 1  # one whole set with its own cameras
    emb = trainer.components.text_encoder(trainer.view_ids[rows[0]:rows[0] + 4])[0]
    torch.testing.assert_close(views["cond"].float(), emb)  # each view its own caption
    expected = losses["instance_loss"] + losses["views_loss"] + losses.get("param_loss", 0)
    torch.testing.assert_close(losses["loss"], expected)
