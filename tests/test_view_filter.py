"""Pseudo-view filtering (core.view_filter): the render difference by hand, the selection
rules, and a filtered set on disk (only the kept views are the set; the sheet marks the rest)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from threestudio_dreambooth3d.core import cameras as C
from threestudio_dreambooth3d.core import pseudo_views as pv
from threestudio_dreambooth3d.core.subject import read_captioned_folder
from threestudio_dreambooth3d.core.view_filter import (
    ViewFilterConfig, filter_views, render_difference, select_views, subject_similarity,
)
from threestudio_dreambooth3d.errors import ConfigError

H = W = 32


def _blob(cx: int, colour=(1.0, 0.2, 0.2), r: int = 8, size: int = H) -> torch.Tensor:
    """[H, W, 3]: a coloured square on grey, centred at (cx, size/2)."""
    img = torch.full((size, size, 3), 0.5)
    img[size // 2 - r: size // 2 + r, max(0, cx - r): cx + r] = torch.tensor(colour)
    return img


def test_render_difference_is_masked_and_low_frequency():
    render = _blob(16, (0.8, 0.3, 0.3))[None]
    mask = torch.zeros(1, H, W, 1)
    mask[:, 8:24, 8:24] = 1.0  # the object
    assert render_difference(render, render, mask).item() == 0.0
    # inverted colours inside the mask: the largest difference at that colour
    inverted = render.clone()
    inverted[:, 8:24, 8:24] = 1 - inverted[:, 8:24, 8:24]
    expected = (1 - 2 * torch.tensor([0.8, 0.3, 0.3])).abs().mean().item()  # |1-2c| averaged over channels
    assert render_difference(inverted, render, mask).item() == pytest.approx(expected, abs=1e-6)
    # a changed background is not compared
    background = render.clone()
    background[:, :4] = 0.0
    assert render_difference(background, render, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert render_difference(background, render, None).item() > 0.01  # ... unless there is no mask
    # fine detail (a +-0.2 checkerboard) is what img2img adds: low-passed away; a moved object is not
    checker = ((torch.arange(H)[:, None] + torch.arange(W)[None, :]) % 2 * 0.4 - 0.2)[None, :, :, None]
    detailed = (render + checker).clamp(0, 1)
    moved = _blob(8)[None]
    assert render_difference(detailed, render, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert render_difference(moved, render, mask).item() > 0.1
    assert render_difference(detailed, render, mask, size=H).item() == pytest.approx(0.2)  # no low-pass: all of it
    # channel-first input is the same; an empty mask is the worst agreement
    assert render_difference(moved.permute(0, 3, 1, 2), render.permute(0, 3, 1, 2), mask.permute(0, 3, 1, 2)).item() \
        == pytest.approx(render_difference(moved, render, mask).item())
    assert render_difference(render, render, torch.zeros_like(mask)).item() == 1.0


def test_subject_similarity_is_mean_cosine_to_the_photos():
    photos = torch.eye(4)[:2]  # two photos: e0, e1
    views = torch.tensor([[1.0, 1.0, 0, 0], [0, 0, 3.0, 0]])
    sim = subject_similarity(views, photos)
    assert sim.tolist() == pytest.approx([2 ** -0.5, 0.0])


def test_select_views_thresholds_then_keep_fraction_with_reasons():
    diff = torch.tensor([0.05, 0.30, 0.10, 0.02, 0.20, 0.08, 0.12, 0.09])
    # render difference only: keep 75% of 8 = 6; drop the two worst (0.30, 0.20)
    d = select_views(diff, None, ViewFilterConfig(keep_fraction=0.75))
    assert [x.index for x in d if not x.keep] == [1, 4]
    assert "render difference 0.300 (rank 8/8)" in d[1].reason and d[0].reason is None
    # a threshold drops first, and says so; keep_fraction then tops up to 6
    d = select_views(diff, None, ViewFilterConfig(keep_fraction=0.75, max_render_difference=0.25))
    assert d[1].reason == "differs from its render: 0.300 > 0.25" and not d[4].keep
    assert sum(x.keep for x in d) == 6
    # photo similarity joins the ranking (mean of the two ranks): keeping 5 of 8, view 7 (a middling
    # difference, but a different object) goes instead of view 6 (the third largest difference)
    sim = torch.tensor([0.9, 0.8, 0.85, 0.9, 0.7, 0.88, 0.86, 0.1])
    assert [x.index for x in select_views(diff, None, ViewFilterConfig(keep_fraction=0.625)) if not x.keep] == [1, 4, 6]
    d = select_views(diff, sim, ViewFilterConfig(keep_fraction=0.625))
    assert [x.index for x in d if not x.keep] == [1, 4, 7]
    assert "photo similarity 0.100 (rank 8/8)" in d[7].reason
    d = select_views(diff, sim, ViewFilterConfig(keep_fraction=1.0, min_subject_similarity=0.5))
    assert [x.index for x in d if not x.keep] == [7] and "unlike the subject photos: 0.100 < 0.5" == d[7].reason
    # never fewer than min_views, whatever the thresholds say
    d = select_views(diff, None, ViewFilterConfig(keep_fraction=0.1, max_render_difference=0.0, min_views=3))
    assert sum(x.keep for x in d) == 3 and [x.index for x in d if x.keep] == [0, 3, 5]
    # the one switch
    d = select_views(diff, sim, ViewFilterConfig(enabled=False, max_render_difference=0.0))
    assert all(x.keep for x in d)


def test_filter_config_is_checked():
    with pytest.raises(ConfigError, match="keep_fraction"):
        ViewFilterConfig.from_dict({"keep_fraction": 0})
    with pytest.raises(ConfigError, match="pseudo_view_filter.keepfraction is not an option"):
        ViewFilterConfig.from_dict({"keepfraction": 0.5})
    with pytest.raises(ConfigError, match="subject_dir"):
        ViewFilterConfig.from_dict({"subject_encoder": "models/clip"})


def test_a_filtered_set_holds_only_the_kept_views_and_the_sheet_marks_the_rest(tmp_path):
    n = 6
    renders = torch.stack([_blob(16, (0.2, 0.2 + 0.1 * i, 0.9)) for i in range(n)])
    translated = renders.clone()
    translated[2] = _blob(6, (1.0, 1.0, 0.0))  # a translation that moved and recoloured the object
    masks = torch.zeros(n, H, W, 1)
    masks[:, 8:24, 8:24] = 1.0
    decisions, report = filter_views(translated, renders, masks, ViewFilterConfig(keep_fraction=0.8))
    assert [d.index for d in decisions if not d.keep] == [2]
    cams = C.orbit_cameras(n, elevation_deg=15.0, distance=1.5, fovy_deg=40.0, height=H, width=W)
    folder = pv.write_pseudo_views(tmp_path / "pv", translated, cams, "a sks toy", masks=masks, renders=renders,
                                   decisions=decisions, filter_info=report)
    got = pv.read_pseudo_views(folder)
    assert got.names == ["view_000", "view_001", "view_003", "view_004", "view_005"]  # what stage 3 learns from
    assert [p.name for p, _ in read_captioned_folder(folder / "images")] == [f"{s}.png" for s in got.names]
    assert (folder / "dropped" / "view_002.png").is_file()  # kept for a person to look at
    saved = json.loads((folder / "filter.json").read_text())
    assert saved["kept"] == 5 and saved["views"][2]["keep"] is False and "rank 6/6" in saved["views"][2]["reason"]
    sheet = np.asarray(Image.open(folder / "contact_sheet.png").convert("RGB")).astype(int)
    red = (sheet[..., 0] > 180) & (sheet[..., 1] < 40) & (sheet[..., 2] < 40)
    tile_w = sheet.shape[1] // 3  # 6 tiles in 3 columns; tile 2 is the third of the first row
    assert red[:, 2 * tile_w:].sum() > 100 and red[:, :2 * tile_w].sum() == 0  # only the dropped tile is framed
    # filtering off: every view is the set, no filter marks
    decisions, report = filter_views(translated, renders, masks, ViewFilterConfig(enabled=False))
    folder = pv.write_pseudo_views(tmp_path / "all", translated, cams, "a sks toy", masks=masks, renders=renders,
                                   decisions=decisions, filter_info=report)
    assert len(pv.read_pseudo_views(folder)) == n and not (folder / "dropped").exists()
