"""Evenly spaced picks and the contact sheet without labels (core/images.py); the labelled
pseudo-view sheet is tested with the set (test_pseudo_views.py)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from threestudio_dreambooth3d.core.images import evenly_spaced, make_contact_sheet, save_gif


def test_evenly_spaced_keeps_the_first_and_last_and_never_repeats():
    assert evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert evenly_spaced(list(range(3)), 8) == [0, 1, 2]
    assert evenly_spaced(["only"], 5) == ["only"] and evenly_spaced(list(range(5)), 1) == [0]


def test_thumbnail_sheet_resizes_every_view_to_one_height_without_label_strips():
    views = [Image.new("RGB", (200, 100), (10 * i, 0, 0)) for i in range(5)]
    sheet = make_contact_sheet(views, tile_height=32)
    assert sheet.size == (3 * 64, 2 * 32)  # 3 columns x 2 rows of 64x32 thumbnails, no strips
    arr = np.asarray(sheet)
    assert arr[16, 64 + 32].tolist() == [10, 0, 0] and arr[48, 128 + 32].tolist() == [255, 255, 255]  # empty slot


def test_gif_loops_forever_with_every_frame_in_order(tmp_path):
    frames = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(4)]
    path = save_gif(frames, tmp_path / "sub" / "turntable.gif", frame_ms=120)
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.info["loop"] == 0 and gif.info["duration"] == 120  # GIF stores centiseconds
        reds = []
        for i in range(4):
            gif.seek(i)
            reds.append(gif.convert("RGB").getpixel((4, 4))[0])
    assert reds == sorted(reds) and reds[0] < 20 < reds[-1]
