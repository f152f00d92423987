import numpy as np
import pytest
from PIL import Image

from threestudio_dreambooth3d.core.subject import (
    SubjectImageError,
    load_image,
    load_subject_images,
    read_captioned_folder,
)


def _save(path, arr, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


def test_loads_all_images_centre_cropped_to_resolution(tmp_path):
    wide = np.zeros((80, 160, 3), np.uint8)
    wide[:, 40:120] = 255  # the centre square is white, the sides black
    _save(tmp_path / "a.png", wide)
    _save(tmp_path / "b.jpg", np.full((100, 100, 3), 128, np.uint8))
    _save(tmp_path / "c.webp", np.full((90, 120, 3), 30, np.uint8))
    pixels, paths = load_subject_images(tmp_path, resolution=32)
    assert [p.name for p in paths] == ["a.png", "b.jpg", "c.webp"]
    assert pixels.shape == (3, 3, 32, 32)
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert pixels[0].mean() > 0.95  # the crop kept the white centre only


def test_large_jpeg_is_decoded_reduced_and_matches_a_full_decode(tmp_path, monkeypatch):
    """DreamBooth-dataset photos are up to 2048 px: JPEG draft mode decodes them at a fraction
    of the size (much less work and memory), with the same picture after the resize."""
    h, w = 1536, 2048
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], -1).astype(np.uint8)
    arr[h // 2 - 200:h // 2 + 200, w // 2 - 200:w // 2 + 200] = (250, 20, 20)  # a red square in the centre
    path = _save(tmp_path / "big.jpg", arr, quality=95)
    with Image.open(path) as im:  # reference: full decode, centre square, resize
        full = im.convert("RGB")
    left = (w - h) // 2
    reference = np.asarray(full.crop((left, 0, left + h, h)).resize((64, 64), Image.BICUBIC), np.float32)

    resized_from = []
    real_resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: resized_from.append(self.size) or
                        real_resize(self, *a, **k))
    got = np.asarray(load_image(path, resolution=64), np.float32)
    assert got.shape == (64, 64, 3)
    assert max(resized_from[-1]) <= h // 4  # decoded at 1/4 scale or less, not 2048 px
    assert np.abs(got - reference).mean() < 4.0  # the same picture
    assert tuple(got[32, 32].round()) == pytest.approx((250, 20, 20), abs=12)


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((64, 64, 4), np.uint8)
    arr[..., 0] = 255  # red but fully transparent everywhere...
    arr[16:48, 16:48, 3] = 255  # ...except an opaque red square
    img = load_image(_save(tmp_path / "x.png", arr), resolution=64)
    a = np.asarray(img)
    assert tuple(a[0, 0]) == (255, 255, 255)
    assert tuple(a[32, 32]) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((64, 128, 3), np.uint8)
    arr[:, :64] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    shown = np.asarray(load_image(tmp_path / "r.jpg", resolution=64))
    # after rotating 90° clockwise the white half is on top; the centre crop then shows white above black
    assert shown[5, 32].mean() > 200 and shown[58, 32].mean() < 50


def test_empty_folder(tmp_path):
    with pytest.raises(SubjectImageError, match="has no images"):
        load_subject_images(tmp_path, 32)


def test_missing_folder(tmp_path):
    with pytest.raises(SubjectImageError, match="does not exist"):
        load_subject_images(tmp_path / "nope", 32)


def test_non_image_file_is_named(tmp_path):
    _save(tmp_path / "a.png", np.zeros((64, 64, 3), np.uint8))
    (tmp_path / "notes.pdf").write_bytes(b"%PDF")
    with pytest.raises(SubjectImageError, match=r"notes\.pdf is not an image.*Move it out"):
        load_subject_images(tmp_path, 32)


def test_corrupt_file_is_named(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(SubjectImageError, match=r"broken\.jpg cannot be read"):
        load_subject_images(tmp_path, 32)


def test_too_small_image_is_named(tmp_path):
    _save(tmp_path / "tiny.png", np.zeros((40, 200, 3), np.uint8))
    with pytest.raises(SubjectImageError, match=r"tiny\.png is 200x40.*at least 64"):
        load_subject_images(tmp_path, 32)


def test_16_bit_image_is_refused(tmp_path):
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(SubjectImageError, match=r"deep\.png has unsupported image mode.*8-bit"):
        load_subject_images(tmp_path, 32)


def test_captioned_folder_needs_sidecar_captions(tmp_path):
    _save(tmp_path / "view_000.png", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(SubjectImageError, match=r"view_000\.png has no caption file view_000\.txt"):
        read_captioned_folder(tmp_path)
    (tmp_path / "view_000.txt").write_text("a sks dog, back view\n")
    [(path, caption)] = read_captioned_folder(tmp_path)
    assert path.name == "view_000.png" and caption == "a sks dog, back view"
