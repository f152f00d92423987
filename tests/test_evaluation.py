"""Evaluation mechanics with hand-built embeddings and tiny random CLIP/DINO models.

The tiny models' numbers mean nothing; these tests check what the numbers are made of:
identical images score 1, retrieval finds the prompt the towers were built to agree on
(and misses when they agree on a distractor), the CLI writes what it promises.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from threestudio_dreambooth3d.cli import main as cli_main
from threestudio_dreambooth3d.evaluation.encoders import ClipEncoder, DinoEncoder, ModelLoadError, load_image_processor
from threestudio_dreambooth3d.evaluation.metrics import mean_pairwise_similarity, r_precision, true_prompt_ranks
from threestudio_dreambooth3d.evaluation.run_eval import (
    EVAL_JSON, GRID_PNG, EvalConfig, EvalInputError, candidate_prompts, clip_text_prompt,
    default_distractors, evaluate, find_run_views, read_distractors,
)
from threestudio_dreambooth3d.tiny_models.clip import build_tiny_clip, save_tiny_clip, save_tiny_dino

PROMPT = "a sks dog wearing a hat"
DISTRACTORS = ["a purple cat", "a red backpack", "a photo of the toy"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("eval-models") / "clip")


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory) -> Path:
    return save_tiny_dino(tmp_path_factory.mktemp("eval-models") / "dino")


def _noise_image(seed: int, size=(32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _strip(panels) -> Image.Image:
    """threestudio's test frame: panels of equal size side by side."""
    w, h = panels[0].size
    out = Image.new("RGB", (w * len(panels), h))
    for i, p in enumerate(panels):
        out.paste(p, (i * w, 0))
    return out


# --- metrics on hand-built embeddings -------------------------------------------------

def test_r_precision_counts_views_retrieving_the_true_prompt():
    text = torch.eye(3)  # three orthogonal prompts
    images = torch.tensor([[0.1, 1.0, 0.0], [0.0, 0.9, 0.2], [0.9, 0.1, 0.0], [0.2, 0.3, 0.1]])
    assert true_prompt_ranks(images, text, true_index=1).tolist() == [0, 0, 1, 0]
    assert r_precision(images, text, true_index=1) == pytest.approx(0.75)
    assert r_precision(images, text, true_index=0) == pytest.approx(0.25)
    assert true_prompt_ranks(images, text, true_index=0).tolist() == [1, 2, 0, 1]
    assert r_precision(images, text, true_index=0, k=2) == pytest.approx(0.75)
    assert r_precision(images, text, true_index=0, k=3) == pytest.approx(1.0)
    # scale does not matter (cosine), and a tie never counts as a hit
    assert r_precision(images * 7.0, text * 0.5, true_index=1) == pytest.approx(0.75)
    assert r_precision(images, torch.ones(3, 3), true_index=0) == 0.0
    with pytest.raises(IndexError):
        r_precision(images, text, true_index=3)


def test_mean_pairwise_similarity_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert mean_pairwise_similarity(a[:1], a[:1] * 3) == pytest.approx(1.0)
    assert mean_pairwise_similarity(a[:1], a[1:]) == pytest.approx(0.0)
    # all four pairs of {e0, e1} x {e0, (e0+e1)/sqrt2}: (1 + 1/sqrt2 + 0 + 1/sqrt2) / 4
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert mean_pairwise_similarity(a, b) == pytest.approx((1 + 2 ** -0.5 * 2) / 4)


# --- encoders --------------------------------------------------------------------------

def test_preprocess_is_the_transformers_pil_processor(tiny_clip, tiny_dino, monkeypatch):
    """Encoders preprocess with transformers' own PIL-backend processor, asked for by name,
    so the numbers do not depend on whether torchvision is installed (it is with threestudio)."""
    import transformers
    from transformers import AutoImageProcessor

    pil = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}
    images = [_noise_image(0, (50, 40)), _noise_image(1, (30, 70)).convert("RGBA")]  # landscape, portrait+alpha
    for folder, encoder in ((tiny_clip, ClipEncoder), (tiny_dino, DinoEncoder)):
        enc = encoder.load(folder, device="cpu")
        assert not type(enc.processor).__name__.endswith("Fast")
        if hasattr(transformers, "image_processing_backends"):  # transformers 5
            assert isinstance(enc.processor, transformers.image_processing_backends.PilBackend)
        ours = enc.preprocess(images)
        reference = AutoImageProcessor.from_pretrained(folder, **pil)
        theirs = reference(images=[i.convert("RGB") for i in images], return_tensors="pt")["pixel_values"]
        assert ours.shape == theirs.shape == (2, 3, 32, 32)
        assert torch.equal(ours, theirs)

    # the backend is requested explicitly, also where only PIL is installed and auto would pick it
    seen = []
    real = AutoImageProcessor.from_pretrained
    monkeypatch.setattr(AutoImageProcessor, "from_pretrained", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    load_image_processor(tiny_clip)
    assert seen and all(kw.items() >= pil.items() for kw in seen)


def test_identical_images_give_similarity_one(tiny_clip, tiny_dino):
    clip, dino = ClipEncoder.load(tiny_clip, device="cpu"), DinoEncoder.load(tiny_dino, device="cpu")
    a, b = _noise_image(0), _noise_image(1)
    for enc in (clip, dino):
        emb = enc.embed_images([a, a.copy(), b], batch_size=2)  # split across batches
        assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
        assert mean_pairwise_similarity(emb[:1], emb[1:2]) == pytest.approx(1.0, abs=1e-5)
        assert mean_pairwise_similarity(emb[:1], emb[2:]) < 0.9999
    text = clip.embed_texts(["a dog", "a dog", "a purple cat"])
    assert mean_pairwise_similarity(text[:1], text[1:2]) == pytest.approx(1.0, abs=1e-5)
    assert mean_pairwise_similarity(text[:1], text[2:]) < 0.9999


def test_load_errors_name_the_source(tmp_path):
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        ClipEncoder.load(tmp_path)  # an empty folder
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-clip"):
        ClipEncoder.load("no-such-org/no-such-clip")


# --- prompts ---------------------------------------------------------------------------

def test_prompt_and_distractor_handling(tmp_path):
    assert clip_text_prompt("a sks dog, sks-like", "sks") == "a dog, -like"
    assert clip_text_prompt("a sksdog", "sks") == "a sksdog"
    assert clip_text_prompt(" a sks dog ", "") == "a sks dog"
    defaults = default_distractors("a dog wearing a hat")
    assert "a dog" not in defaults and "a cat" in defaults and len(defaults) > 30
    assert candidate_prompts("a dog", ["A dog", "a cat", "a cat"]) == ["a dog", "a cat"]
    with pytest.raises(EvalInputError):
        candidate_prompts("a dog", ["a dog"])
    f = tmp_path / "d.txt"
    f.write_text("# comment\na cat\n\n a toy \n")
    assert read_distractors(f) == ["a cat", "a toy"]


# --- finding views ---------------------------------------------------------------------

def test_run_folder_heuristic_prefers_stage3_test_frames(tmp_path):
    def frames(folder, n=2, mtime=None):
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _noise_image(i).save(folder / f"{i}.png")
            if mtime is not None:
                os.utime(folder / f"{i}.png", (mtime, mtime))
        return folder

    run = tmp_path / "run"
    frames(run / "stage3" / "trial" / "save", mtime=4e9)  # validation images: newest, not a test folder
    old3 = frames(run / "stage3" / "trial" / "save" / "it500-test", mtime=1e9)
    frames(run / "stage1" / "trial" / "save" / "it1000-test", mtime=3e9)  # newer but stage 1
    frames(run / "eval", mtime=5e9)
    (run / "eval" / EVAL_JSON).write_text("{}")  # our own output is never scored
    assert find_run_views(run) == old3
    new3 = frames(run / "stage3" / "trial" / "save" / "it1000-test", mtime=2e9)
    assert find_run_views(run) == new3
    with pytest.raises(EvalInputError, match="No folder with PNG views"):
        find_run_views(_empty(tmp_path))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir(exist_ok=True)
    return d


def test_empty_views_folder_is_a_clear_error(tmp_path, tiny_clip, capsys):
    empty = _empty(tmp_path)
    (empty / "notes.txt").write_text("not a view")
    with pytest.raises(EvalInputError, match=f"No rendered views .* in folder {empty}.*--views"):
        evaluate(EvalConfig(prompt=PROMPT, views=str(empty), clip_models=[str(tiny_clip)], dino_model=None))
    rc = cli_main(["eval", "--views", str(empty), "--prompt", PROMPT, "--clip-models", str(tiny_clip)])
    assert rc == 2
    assert f"in folder {empty}" in capsys.readouterr().err
    assert not (empty / "eval").exists()


# --- end to end ------------------------------------------------------------------------

def _clip_agreeing_on(text: str, folder: Path) -> Path:
    """A tiny CLIP whose image tower maps every image onto ``text``'s embedding.

    The vision post-layernorm gets weight 0 and bias b, so the pooled image feature is b
    whatever the image; the visual projection is then the rank-1 map b -> t(text).
    """
    model, tokenizer, _ = build_tiny_clip(seed=0)
    ids = tokenizer([text], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        t = model.text_projection(model.text_model(**ids).pooler_output)[0]
        ln = model.vision_model.post_layernorm
        ln.weight.zero_()
        ln.bias.copy_(torch.linspace(-1.0, 1.0, ln.bias.numel()))
        b = ln.bias
        model.visual_projection.weight.copy_(torch.outer(t, b) / b.dot(b))
    return save_tiny_clip(folder, model=model)


@pytest.mark.parametrize("agree_with, expected", [("a dog wearing a hat", 1.0), ("a red backpack", 0.0)])
def test_retrieval_finds_the_prompt_the_towers_agree_on(tmp_path, subject_dir, agree_with, expected):
    clip = _clip_agreeing_on(agree_with, tmp_path / "clip")
    views = tmp_path / "views"
    views.mkdir()
    for i in range(3):
        _noise_image(i).save(views / f"{i}.png")
    res = evaluate(EvalConfig(prompt=PROMPT, views=str(views), clip_models=[str(clip)], dino_model=None,
                              identifier="sks", out=str(tmp_path / "out")))
    scores = res["clip"][str(clip)]
    assert res["clip_prompt"] == "a dog wearing a hat"
    assert scores["r_precision"] == expected
    if expected == 1.0:
        assert scores["clip_t"] == pytest.approx(1.0, abs=1e-5)
        assert scores["true_prompt_rank"] == [0, 0, 0]
    else:  # every view retrieves the distractor, so the true prompt ranks second at best
        assert scores["clip_t"] < 0.9999
        assert min(scores["true_prompt_rank"]) >= 1


def test_cli_writes_eval_json_table_and_grid(tmp_path, subject_dir, tiny_clip, tiny_dino, capsys):
    # five threestudio-style frames (rgb | normal | opacity): the rgb panel is a subject photo
    photo = Image.open(sorted(subject_dir.glob("*.png"))[0]).convert("RGB")
    views = tmp_path / "run" / "stage3" / "save" / "it100-test"
    views.mkdir(parents=True)
    for i in range(5):
        _strip([photo, _noise_image(10 + i, photo.size), _noise_image(20 + i, photo.size)]).save(views / f"{i}.png")
    subject = tmp_path / "subject"
    subject.mkdir()
    shutil.copy(sorted(subject_dir.glob("*.png"))[0], subject / "photo.png")
    distractors = tmp_path / "distractors.txt"
    distractors.write_text("\n".join(DISTRACTORS))

    argv = ["eval", "--run", str(tmp_path / "run"), "--prompt", PROMPT, "--subject", str(subject),
            "--distractors", str(distractors), "--clip-models", str(tiny_clip), "--dino-model", str(tiny_dino),
            "--device", "cpu", "--grid-views", "4"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "run" / "eval"
    res = json.loads((out / EVAL_JSON).read_text())
    assert {"prompt", "clip_prompt", "views", "subject", "distractors", "clip", "dino", "grid", "config"} <= set(res)
    assert res["views"]["count"] == 5 and res["views"]["folder"] == str(views.resolve())
    assert res["distractors"]["prompts"] == DISTRACTORS
    clip, dino = res["clip"][str(tiny_clip)], res["dino"][str(tiny_dino)]
    assert set(clip) == {"r_precision", "clip_t", "clip_i", "true_prompt_rank"}
    assert len(clip["true_prompt_rank"]) == 5 and 0.0 <= clip["r_precision"] <= 1.0
    # the rgb panel of every view is the photo itself
    assert clip["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert dino["dino"] == pytest.approx(1.0, abs=1e-5)
    for name in (str(tiny_clip), str(tiny_dino), "R-prec", "CLIP-T", "CLIP-I", "DINO", "1.0000"):
        assert name in printed
    grid = Image.open(out / GRID_PNG)
    grid.load()
    assert grid.size == (2 * 128, 2 * 128)  # 4 square thumbnails of the cropped views
    assert np.asarray(grid)[64, 64].tolist() == [220, 30, 30]  # the red disc, not a noise panel

    # whole strips instead of the rgb panel: no longer the photo
    assert cli_main(argv + ["--no-panel-crop", "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / EVAL_JSON).read_text())
    assert whole["clip"][str(tiny_clip)]["clip_i"] < 0.9999
    assert whole["dino"][str(tiny_dino)]["dino"] < 0.9999


# --- offline first -----------------------------------------------------------------------

def test_hub_models_offline_fail_before_any_work_naming_the_flags(tiny_clip, tiny_dino, tmp_path, monkeypatch):
    from threestudio_dreambooth3d.evaluation.run_eval import check_models_available, unavailable_models

    never = dict(cached=lambda s: None, reachable=lambda: pytest.fail("no probe when offline"))
    cfg = EvalConfig(views=str(tmp_path), prompt=PROMPT, subject=str(tmp_path),
                     clip_models=[str(tiny_clip), "org/clip"], dino_model="org/dino")
    with pytest.raises(EvalInputError) as e:
        check_models_available(cfg, offline=lambda: True, **never)
    msg = str(e.value)
    assert "org/clip, org/dino" in msg and "HF_HUB_OFFLINE" in msg
    assert "--clip-models DIR" in msg and "--dino-model DIR" in msg and "save_pretrained" in msg
    # no network (not offline by flag): the same, after one quick probe
    missing, why = unavailable_models(["org/clip"], cached=lambda s: None, offline=lambda: False, reachable=lambda: False)
    assert missing == ["org/clip"] and "cannot be reached" in why
    # local folders, a cached hub id, or a reachable hub: nothing to report
    assert unavailable_models([str(tiny_clip), str(tiny_dino)], offline=lambda: True, **never) == ([], "")
    assert unavailable_models(["org/clip"], cached=lambda s: "/cache/config.json", offline=lambda: True)[0] == []
    assert unavailable_models(["org/clip"], cached=lambda s: None, offline=lambda: False, reachable=lambda: True)[0] == []
    # DINO is only loaded with subject photos: without --subject its hub id does not matter
    check_models_available(EvalConfig(views=str(tmp_path), prompt=PROMPT, clip_models=[str(tiny_clip)],
                                      dino_model="org/dino"), offline=lambda: True, **never)


def test_eval_cli_offline_with_hub_ids_exits_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("threestudio_dreambooth3d.hub.hub_reachable", lambda timeout=3.0: pytest.fail("probed"))
    views = tmp_path / "views"
    views.mkdir()
    _noise_image(0).save(views / "0.png")
    code = cli_main(["eval", "--views", str(views), "--prompt", PROMPT, "--clip-models", "org/no-such-clip",
                     "--dino-model", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "org/no-such-clip" in err and "--clip-models DIR" in err and "save_pretrained" in err
    assert not (views / "eval").exists()


def test_mesh_pictures_show_the_mesh_in_its_colours(tmp_path):
    import trimesh

    from threestudio_dreambooth3d.pipeline.artifacts import render_mesh_views

    for name, rgb in (("red", (220, 20, 20, 255)), ("blue", (20, 20, 220, 255))):
        box = trimesh.creation.box(extents=(1.0, 0.6, 0.8))
        box.visual.vertex_colors = np.tile(rgb, (len(box.vertices), 1))
        obj = tmp_path / f"{name}.obj"
        box.export(obj)
        strip = np.asarray(Image.open(render_mesh_views(obj, tmp_path / f"{name}.png", n_views=4, size=64)))
        assert strip.shape == (64, 256, 3)
        for k in range(4):  # every view shows the box: non-white pixels of its colour
            panel = strip[:, 64 * k: 64 * (k + 1)].reshape(-1, 3).astype(int)
            drawn = panel[panel.sum(1) < 700]
            assert len(drawn) > 200
            main, other = (0, 2) if name == "red" else (2, 0)
            assert (drawn[:, main] > 2 * drawn[:, other]).mean() > 0.9


def test_eval_warns_when_the_prompt_lacks_the_identifier(tmp_path, tiny_clip):
    views = tmp_path / "views"
    views.mkdir()
    _noise_image(0).save(views / "0.png")
    results = evaluate(EvalConfig(views=str(views), prompt="a dog wearing a hat", clip_models=[str(tiny_clip)],
                                  dino_model=None, device="cpu"))
    assert any("does not contain the identifier 'sks'" in w for w in results["warnings"])
    assert json.loads(Path(results["eval_json"]).read_text())["warnings"] == results["warnings"]
    ok = evaluate(EvalConfig(views=str(views), prompt=PROMPT, clip_models=[str(tiny_clip)], dino_model=None,
                             device="cpu", out=str(tmp_path / "e2")))
    assert ok["warnings"] == []
