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
from threestudio_dreambooth3d.evaluation.metrics import (
    janus_score, mean_pairwise_similarity, r_precision, true_prompt_ranks, turntable_azimuths, view_prompt_texts,
)
from threestudio_dreambooth3d.evaluation.prompt_sets import (
    OBJECT_CENTRIC_CAPTIONS, dataset_prompts, read_prompt_file, retrieval_prompts,
)
from threestudio_dreambooth3d.evaluation.run_eval import (
    EVAL_JSON, GRID_PNG, EvalConfig, EvalInputError, clip_text_prompt, evaluate, find_run_views, format_table,
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

def test_prompt_file_and_identifier_handling(tmp_path):
    assert clip_text_prompt("a sks dog, sks-like", "sks") == "a dog, -like"
    assert clip_text_prompt("a sksdog", "sks") == "a sksdog"
    assert clip_text_prompt(" a sks dog ", "") == "a sks dog"
    f = tmp_path / "d.txt"
    f.write_text("# comment\na cat\n\n a toy \n")
    assert read_prompt_file(f) == ["a cat", "a toy"]
    f.write_bytes(b"a cat\na \xff toy\n")
    with pytest.raises(EvalInputError, match="line 2, is not UTF-8"):
        read_prompt_file(f)


def test_retrieval_set_is_the_subjects_other_prompts_the_bare_class_and_captions():
    live = dataset_prompts("dog")
    assert "a sks dog wearing a red hat" in live and "a sks dog floating in an ocean of milk" not in live
    assert "a sks backpack floating in an ocean of milk" in dataset_prompts("backpack") and len(live) == 25
    prompts = retrieval_prompts("a sks dog wearing a red hat", "dog", live + ["A  SKS dog wearing a red hat"])
    assert prompts[0] == "a dog wearing a red hat"
    assert prompts.count("a dog wearing a red hat") == 1  # duplicates (case, spacing) once, the true one first
    assert "a dog in the jungle" in prompts and "a dog" in prompts  # same subject, other contexts; the bare subject
    assert not any("sks" in p for p in prompts)
    assert set(OBJECT_CENTRIC_CAPTIONS) <= set(prompts)
    assert "a dog running on a beach" in prompts  # a caption naming the class is not dropped any more
    with pytest.raises(EvalInputError):
        retrieval_prompts("a sks dog", None, ["a dog"], captions=[])


def _bag_of_words(texts, dim=64, seed=0):
    """Constructed text embeddings: the sum of one fixed random vector per content word."""
    gen = torch.Generator().manual_seed(seed)
    stop = {"a", "an", "the", "of", "in", "on", "with", "and"}
    vocab = {}
    rows = []
    for t in texts:
        v = torch.zeros(dim)
        for w in t.lower().replace(",", " ").split():
            if w in stop:
                continue
            if w not in vocab:
                vocab[w] = torch.randn(dim, generator=gen)
            v += vocab[w]
        rows.append(v)
    return torch.stack(rows), vocab


def test_r_precision_tests_the_context_not_only_the_subject():
    hat, jungle = "a sks dog wearing a red hat", "a sks dog in the jungle"
    for_hat = retrieval_prompts(hat, "dog", dataset_prompts("dog"))
    for_jungle = retrieval_prompts(jungle, "dog", dataset_prompts("dog"))
    # one shared word->vector table, so "dog" is the same vector in every prompt and render
    emb, vocab = _bag_of_words(sorted(set(for_hat) | set(for_jungle)))

    def embed(texts):
        index = {t: i for i, t in enumerate(sorted(set(for_hat) | set(for_jungle)))}
        return emb[[index[t] for t in texts]]

    hat_render = embed(["a dog wearing a red hat"])
    assert r_precision(hat_render, embed(for_hat), 0) == 1.0
    assert r_precision(hat_render, embed(for_jungle), 0) == 0.0  # a hat is not the jungle
    # a render that shows a dog and none of the context: a hit for no dog prompt of the dataset
    dog_render = vocab["dog"][None]
    for prompt in dataset_prompts("dog"):
        candidates = retrieval_prompts(prompt, "dog", dataset_prompts("dog"))
        assert r_precision(dog_render, embed(candidates), 0) == 0.0, prompt
    # the old set (the true prompt among other things) could not tell: the dog render was a hit
    old, _ = _bag_of_words(["a dog in the jungle", "a cat", "a backpack", "a teapot"])
    old_vocab_dog = _bag_of_words(["a dog"])[0]
    assert r_precision(old_vocab_dog, old, 0) == 1.0


def test_janus_score_counts_back_facing_frames_that_look_like_a_front():
    assert view_prompt_texts(" stuffed  animal") == [
        "the front of a stuffed animal", "the side of a stuffed animal", "the back of a stuffed animal"]
    views = torch.eye(3, 8)  # front, side, back prompt embeddings
    azimuth = torch.tensor([0.0, 90.0, 170.0, 180.0, 190.0, 270.0, -175.0])
    back = [2, 3, 4, 6]  # within 45 degrees of 180 (wrapped)
    labels = torch.tensor([0, 1, 2, 2, 2, 1, 2])  # a good asset: each frame looks like its side
    good = janus_score(views[labels] + 0.1, views, azimuth)
    assert good["janus"] == 0.0 and good["back_frames"] == 4 and good["front_accuracy"] == 1.0
    assert good["labels"] == ["front", "side", "back", "back", "back", "side", "back"]
    janus = labels.clone()
    janus[[3, 6]] = 0  # two of the four back views show a face
    janus[1] = 0  # a side view looking like a front is not Janus
    assert janus_score(views[janus], views, azimuth)["janus"] == 0.5
    assert janus_score(views[torch.zeros(7, dtype=torch.long)], views, azimuth)["janus"] == 1.0
    assert janus_score(views[:1], views, [0.0])["janus"] is None  # no back-facing frame: no score
    assert [round(a) for a in turntable_azimuths(5).tolist()] == [0, 90, 180, 270, 360]  # threestudio's test split
    with pytest.raises(ValueError):
        janus_score(views[:2], views[:2], [0.0, 180.0])


# --- finding views ---------------------------------------------------------------------

def _frames(folder, n=2, mtime=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _noise_image(i).save(folder / f"{i}.png")
        if mtime is not None:
            os.utime(folder / f"{i}.png", (mtime, mtime))
    return folder


def test_run_folder_heuristic_prefers_stage3_test_frames(tmp_path):
    run = tmp_path / "run"
    _frames(run / "stage3" / "trial" / "save", mtime=4e9)  # validation images: newest, not a test folder
    old3 = _frames(run / "stage3" / "trial" / "save" / "it500-test", mtime=1e9)
    stage1 = _frames(run / "stage1" / "trial" / "save" / "it1000-test", mtime=3e9)  # newer but stage 1
    _frames(run / "eval", mtime=5e9)
    (run / "eval" / EVAL_JSON).write_text("{}")  # our own output is never scored
    assert find_run_views(run) == (old3, "stage3")
    new3 = _frames(run / "stage3" / "trial" / "save" / "it1000-test", mtime=2e9)
    assert find_run_views(run) == (new3, "stage3")
    assert find_run_views(run, stage="1") == (stage1, "stage1")
    with pytest.raises(EvalInputError, match="No folder with PNG views"):
        find_run_views(_empty(tmp_path))


def test_a_run_without_final_frames_is_refused_unless_a_stage_is_named(tmp_path):
    run = tmp_path / "run"
    stage1 = _frames(run / "stage1" / "run" / "save" / "it100-test")
    with pytest.raises(EvalInputError, match=r"no rendered frames of the final stage.*stage1.*--stage 1"):
        find_run_views(run)
    assert find_run_views(run, stage="stage1") == (stage1, "stage1")
    # the manifest names the final step: a later round's stage 3, not round 1's
    _frames(run / "stage3" / "run" / "save" / "it100-test", mtime=3e9)
    (run / "manifest.json").write_text(json.dumps({"run": {"final_step": "stage3_r2"}}))
    with pytest.raises(EvalInputError, match="no rendered frames of step 'stage3_r2'"):
        find_run_views(run)
    r2 = _frames(run / "stage3_r2" / "run" / "save" / "it100-test", mtime=1e9)
    assert find_run_views(run) == (r2, "stage3_r2")
    with pytest.raises(EvalInputError, match="--stage .* with --run"):
        evaluate(EvalConfig(prompt=PROMPT, views=str(r2), stage="1", clip_models=[], dino_model=None))


def test_eval_of_a_run_takes_its_prompt_and_class_and_says_what_it_scored(tmp_path, tiny_clip):
    run = tmp_path / "run"
    frames = _frames(run / "stage3" / "run" / "save" / "it100-test", n=5)
    (run / "manifest.json").write_text(json.dumps({"run": {"prompt": PROMPT, "class_noun": "dog",
                                                            "final_step": "stage3"}}))
    res = evaluate(EvalConfig(run=str(run), clip_models=[str(tiny_clip)], dino_model=None, device="cpu"))
    assert res["prompt"] == PROMPT and res["views"]["stage"] == "stage3"
    assert res["views"]["folder"] == str(frames.resolve())
    assert "a dog in the jungle" in res["distractors"]["prompts"] and "a dog" in res["distractors"]["prompts"]
    assert res["janus_prompts"] == view_prompt_texts("dog")
    janus = res["clip"][str(tiny_clip)]["janus"]
    assert janus["back_frames"] == 1 and len(janus["labels"]) == 5  # azimuths 0, 90, 180, 270, 360: one back frame
    assert "5 views of stage3 from" in format_table(res) and "Janus" in format_table(res)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a sks dog on the moon\n")
    res = evaluate(EvalConfig(run=str(run), prompts_file=str(prompts), clip_models=[str(tiny_clip)],
                              dino_model=None, device="cpu", out=str(tmp_path / "e2")))
    assert "a dog on the moon" in res["distractors"]["prompts"]
    assert "a dog in the jungle" not in res["distractors"]["prompts"]


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


@pytest.mark.parametrize("agree_with, expected", [("a dog wearing a hat", 1.0), ("a teddy bear sitting on a bed", 0.0)])
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
    monkeypatch.setattr("threestudio_dreambooth3d.environment.hub.hub_reachable", lambda timeout=3.0: pytest.fail("probed"))
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
    ok = evaluate(EvalConfig(views=str(views), prompt=PROMPT, class_noun="dog", clip_models=[str(tiny_clip)],
                             dino_model=None, device="cpu", out=str(tmp_path / "e2")))
    assert ok["warnings"] == []
