"""Pseudo-view sets on disk: exact round trip, cameras kept, readable by the DreamBooth
trainer, atomic rewrites, a labelled contact sheet, and errors that name the file."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from threestudio_dreambooth3d.core import cameras as C
from threestudio_dreambooth3d.core import pseudo_views as pv

N, H, W = 6, 12, 16


@pytest.fixture
def view_set():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
    masks = rng.integers(0, 256, (N, H, W), dtype=np.uint8)
    cams = C.orbit_cameras(N, elevation_deg=(0.0, 30.0), distance=1.5, fovy_deg=70.0, height=H, width=W)
    captions = [f"a sks dog, {v} view" for v in ("front", "side", "side", "back", "side", "side")]
    return images, masks, cams, captions


def test_round_trip_is_exact_and_keeps_the_cameras(tmp_path, view_set):
    images, masks, cams, captions = view_set
    folder = pv.write_pseudo_views(tmp_path / "pseudo", torch.from_numpy(images), cams, captions, masks=masks)
    got = pv.read_pseudo_views(folder)

    assert len(got) == N and got.names == [f"view_{i:03d}" for i in range(N)]
    assert got.images.shape == (N, H, W, 3) and got.images.dtype == torch.float32
    assert np.array_equal((got.images * 255).round().byte().numpy(), images)
    assert np.array_equal((got.masks[..., 0] * 255).round().byte().numpy(), masks)
    assert got.renders is None
    assert got.captions == captions

    for i, rec in enumerate(got.cameras):
        assert rec["elevation_deg"] == pytest.approx(cams["elevation"][i].item())
        assert rec["azimuth_deg"] == pytest.approx(cams["azimuth"][i].item())
        assert rec["distance"] == pytest.approx(1.5) and rec["fovy_deg"] == pytest.approx(70.0, abs=1e-4)
        assert (rec["height"], rec["width"]) == (H, W) and rec["caption"] == captions[i]
        assert rec["view"] == captions[i].split(", ")[1].split()[0]  # threestudio's name for that camera
    torch.testing.assert_close(torch.tensor([r["c2w"] for r in got.cameras]), cams["c2w"], atol=0, rtol=0)

    batch = got.camera_batch(with_rays=True)
    ref = C.camera_batch(cams["c2w"], 70.0, H, W, cams["elevation"], cams["azimuth"], with_rays=True)
    for key in ("c2w", "camera_positions", "fovy", "focal", "rays_o", "rays_d", "mvp_mtx"):
        torch.testing.assert_close(batch[key], ref[key], atol=1e-6, rtol=0)
    small = got.camera_batch(height=6, width=8, with_rays=True)  # same cameras, rays at a training size
    assert small["rays_d"].shape == (N, 6, 8, 3)
    torch.testing.assert_close(small["focal"], batch["focal"] * 6 / H)

    assert (folder / "images" / "view_003.txt").read_text().strip() == captions[3]
    assert (folder / "contact_sheet.png").is_file()


def test_the_dreambooth_trainer_reads_the_images_folder(tmp_path, view_set):
    from threestudio_dreambooth3d.core.subject import read_captioned_folder

    images, _, cams, captions = view_set
    folder = pv.write_pseudo_views(tmp_path / "pseudo", images, cams, captions)
    items = read_captioned_folder(folder / "images")
    assert [(p.name, c) for p, c in items] == [(f"view_{i:03d}.png", captions[i]) for i in range(N)]


def test_float_channel_first_views_and_other_camera_forms(tmp_path, view_set):
    _, _, cams, _ = view_set
    translated = torch.rand(N, 3, H, W, generator=torch.Generator().manual_seed(0))  # img2img's layout
    opacity = torch.rand(N, 1, H, W, generator=torch.Generator().manual_seed(1))
    per_view = [C.select_cameras(cams, i) for i in range(N)]
    a = pv.write_pseudo_views(tmp_path / "a", translated, per_view, "a sks dog", masks=opacity,
                              renders=translated.flip(-1))
    got = pv.read_pseudo_views(a)
    assert (got.images - translated.permute(0, 2, 3, 1)).abs().max() <= 0.5 / 255 + 1e-6
    assert (got.masks - opacity.permute(0, 2, 3, 1)).abs().max() <= 0.5 / 255 + 1e-6
    assert (got.renders - translated.flip(-1).permute(0, 2, 3, 1)).abs().max() <= 0.5 / 255 + 1e-6
    assert got.captions == ["a sks dog"] * N
    # render | translation side by side in the sheet
    sheet = Image.open(a / "contact_sheet.png")
    assert sheet.size[0] == 3 * 4 * 2 * W  # ceil(sqrt(6)) = 3 columns of double-width tiles, x4 to reach 128

    # a set read back can be rewritten from its own cameras.json entries, unchanged
    b = pv.write_pseudo_views(tmp_path / "b", got.images, got.cameras, got.captions, masks=got.masks,
                              renders=got.renders)
    assert json.loads((b / "cameras.json").read_text()) == json.loads((a / "cameras.json").read_text())


def test_rewrites_are_atomic(tmp_path, view_set, monkeypatch):
    images, _, cams, captions = view_set
    folder = pv.write_pseudo_views(tmp_path / "pseudo", images, cams, captions)
    (folder / "stale.txt").write_text("from an older run")
    pv.write_pseudo_views(folder, images[:2], C.select_cameras(cams, [0, 1]), captions[:2])
    assert not (folder / "stale.txt").exists() and len(pv.read_pseudo_views(folder)) == 2

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pv, "make_contact_sheet", crash)  # fails after the images are written
    with pytest.raises(RuntimeError, match="disk full"):
        pv.write_pseudo_views(folder, images, cams, captions)
    assert len(pv.read_pseudo_views(folder)) == 2  # the previous set, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pseudo"]  # no temporary folder left


def test_contact_sheet_grid_and_labels():
    rng = np.random.default_rng(1)
    tiles = rng.integers(0, 200, (5, 8, 10, 3), dtype=np.uint8)
    sheet = np.asarray(pv.make_contact_sheet(tiles, ["az0 el15", "az72 el15", "", "az216 el15", "az288 el15"],
                                             columns=3, label_height=14, min_tile_width=0))
    assert sheet.shape == (2 * (8 + 14), 3 * 10, 3)
    for i in range(5):
        y, x = (i // 3) * 22, (i % 3) * 10
        assert np.array_equal(sheet[y:y + 8, x:x + 10], tiles[i])
        strip = sheet[y + 8:y + 22, x:x + 10]
        assert (strip < 128).any() == (i != 2)  # text drawn under labelled tiles only
    assert (sheet[22:, 20:] == 255).all()  # the sixth cell stays empty
    # small renders are enlarged by a whole factor so they and their labels stay legible
    big = np.asarray(pv.make_contact_sheet(tiles[:1], ["000 az0 el15 front"], min_tile_width=128))
    assert big.shape == (8 * 13 + 14, 10 * 13, 3)
    assert np.array_equal(big[:104], tiles[0].repeat(13, 0).repeat(13, 1))
    with pytest.raises(ValueError, match="2 labels for 5 images"):
        pv.make_contact_sheet(tiles, ["a", "b"])


def test_bad_inputs_when_writing(tmp_path, view_set):
    images, masks, cams, captions = view_set
    with pytest.raises(pv.PseudoViewError, match="5 captions for 6 images"):
        pv.write_pseudo_views(tmp_path / "x", images, cams, captions[:5])
    with pytest.raises(pv.PseudoViewError, match="cameras hold 6 views for 2 images"):
        pv.write_pseudo_views(tmp_path / "x", images[:2], cams, captions[:2])
    with pytest.raises(pv.PseudoViewError, match=r"image 0: float values must be finite and in \[0, 1\]"):
        pv.write_pseudo_views(tmp_path / "x", images.astype(np.float32), cams, captions)  # 0-255 floats
    with pytest.raises(pv.PseudoViewError, match="image 0: expected HxWx3"):
        pv.write_pseudo_views(tmp_path / "x", images[..., :2], cams, captions)
    with pytest.raises(pv.PseudoViewError, match="masks 0 is 8x12, its image 16x12"):
        pv.write_pseudo_views(tmp_path / "x", images, cams, captions, masks=masks[:, :, :8])
    with pytest.raises(pv.PseudoViewError, match="expected a camera batch"):
        pv.write_pseudo_views(tmp_path / "x", images, [{"azimuth": 0}] * N, captions)
    assert not (tmp_path / "x").exists()


@pytest.fixture
def written(tmp_path, view_set):
    images, masks, cams, captions = view_set
    return pv.write_pseudo_views(tmp_path / "pseudo", images, cams, captions, masks=masks)


def test_missing_set_or_cameras_file_says_how_to_regenerate(tmp_path, written):
    with pytest.raises(FileNotFoundError, match="no pseudo-view set here. Rerun stage 2"):
        pv.read_pseudo_views(tmp_path / "nowhere")
    (written / "cameras.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"cameras\.json is missing.*Rerun stage 2"):
        pv.read_pseudo_views(written)


@pytest.mark.parametrize("content,message", [
    ("{not json", "cameras.json is not valid JSON"),
    ("[]", "cameras.json must hold a non-empty list"),
    ('{"views": []}', "cameras.json must hold a non-empty list"),
])
def test_invalid_cameras_file(written, content, message):
    (written / "cameras.json").write_text(content)
    with pytest.raises(pv.PseudoViewError, match=message + ".*Rerun stage 2"):
        pv.read_pseudo_views(written)


def test_invalid_camera_entries(written):
    records = json.loads((written / "cameras.json").read_text())
    broken = [dict(r) for r in records]
    del broken[1]["c2w"]
    (written / "cameras.json").write_text(json.dumps(broken))
    with pytest.raises(pv.PseudoViewError, match="entry 1 lacks c2w"):
        pv.read_pseudo_views(written)
    broken[1]["c2w"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    (written / "cameras.json").write_text(json.dumps(broken))
    with pytest.raises(pv.PseudoViewError, match="entry 1 has a c2w that is not a finite 4x4"):
        pv.read_pseudo_views(written)


def test_missing_or_corrupt_files_are_named(written):
    img = written / "images" / "view_002.png"
    img.write_bytes(b"not a png")
    with pytest.raises(pv.PseudoViewError, match=r"view_002\.png is not a readable image.*Rerun stage 2"):
        pv.read_pseudo_views(written)
    img.unlink()
    with pytest.raises(pv.PseudoViewError, match=r"images/view_002\.png is missing \(listed in cameras\.json, entry 2\)"):
        pv.read_pseudo_views(written)


def test_missing_caption_or_mask_and_wrong_size_are_named(tmp_path, view_set):
    images, masks, cams, captions = view_set
    folder = pv.write_pseudo_views(tmp_path / "a", images, cams, captions, masks=masks)
    (folder / "masks" / "view_004.png").unlink()
    with pytest.raises(pv.PseudoViewError, match=r"masks/view_004\.png is missing"):
        pv.read_pseudo_views(folder)

    folder = pv.write_pseudo_views(tmp_path / "b", images, cams, captions)
    (folder / "images" / "view_001.txt").unlink()
    with pytest.raises(pv.PseudoViewError, match=r"view_001\.txt is missing: the caption of view_001\.png"):
        pv.read_pseudo_views(folder)

    folder = pv.write_pseudo_views(tmp_path / "c", images, cams, captions)
    Image.fromarray(images[0][:6]).save(folder / "images" / "view_000.png")
    with pytest.raises(pv.PseudoViewError, match=r"view_000\.png is 16x6 but cameras\.json says 16x12"):
        pv.read_pseudo_views(folder)


def test_written_view_names_follow_the_given_names_not_the_default_thresholds(tmp_path, view_set):
    images, masks, cams, _ = view_set
    names = ["front", "front", "side", "back", "back", "front"]  # e.g. a prompt processor with wide thresholds
    folder = pv.write_pseudo_views(tmp_path / "p", images, cams, [f"front view of a sks dog"] * N, view_names=names)
    assert [r["view"] for r in pv.read_pseudo_views(folder).cameras] == names
    with pytest.raises(pv.PseudoViewError, match="2 view names for 6 images"):
        pv.write_pseudo_views(tmp_path / "q", images, cams, "a sks dog", view_names=["front", "back"])
