"""threestudio's own tinycudann users on the pure-torch stand-in: ProgressiveBandHashGrid, the
hash-grid geometry of our stage configs (analytic normals), the SH environment-map background."""
import sys
from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def stand_in(threestudio):
    from threestudio_dreambooth3d.cpu import tinycudann as pure_torch

    if sys.modules["tinycudann"] is not pure_torch:
        pytest.skip("a real tinycudann is installed: threestudio uses it, not the stand-in")
    return pure_torch


def stage_config(stage: int):
    from omegaconf import OmegaConf

    return OmegaConf.load(CONFIGS / f"dreambooth3d-stage{stage}.yaml")


def test_progressive_band_hash_grid_masks_levels_until_their_step(threestudio, stand_in):
    from threestudio.models.networks import get_encoding

    cfg = stage_config(1).system.geometry.pos_encoding_config
    enc = get_encoding(3, cfg)  # CompositeEncoding(ProgressiveBandHashGrid(tcnn.Encoding))
    grid = enc.encoding
    assert type(grid).__name__ == "ProgressiveBandHashGrid" and isinstance(grid.encoding, stand_in.Encoding)
    assert enc.n_output_dims == cfg.n_levels * cfg.n_features_per_level == 32
    with torch.no_grad():
        grid.encoding.params.fill_(1.0)  # every feature reads 1 where its level is on
    grid.update_step(0, 0)
    on = (enc(torch.rand(5, 3)) != 0).all(0)
    assert on[: cfg.start_level * 2].all() and not on[cfg.start_level * 2:].any()
    grid.update_step(0, cfg.start_step + cfg.update_steps)  # one more level after update_steps
    on = (enc(torch.rand(5, 3)) != 0).all(0)
    assert on[: (cfg.start_level + 1) * 2].all() and not on[(cfg.start_level + 1) * 2:].any()


def test_stage_geometry_trains_with_analytic_normals(threestudio, stand_in):
    """The real stage geometry (hash grid + VanillaMLP, blob density, analytic normals) forward and backward."""
    geometry_cfg = stage_config(1).system.geometry
    geometry = threestudio.find("implicit-volume")(geometry_cfg)
    geometry.encoding.encoding.update_step(0, 10**6)  # all levels on
    # inside the density blob (std 0.5): far out, softplus underflows and threestudio's normals vanish
    points = (torch.rand(64, 3) - 0.5) * 0.6
    out = geometry(points, output_normal=True)
    assert out["density"].shape == (64, 1) and out["normal"].shape == (64, 3)
    torch.testing.assert_close(out["normal"].norm(dim=-1), torch.ones(64))
    # threestudio's orientation loss trains through the normals: the double backward reaches the grid
    (out["normal"] * torch.randn(64, 3)).sum().backward()
    assert geometry.encoding.encoding.encoding.params.grad.abs().sum() > 0


def test_environment_map_background_uses_spherical_harmonics(threestudio, stand_in):
    background_cfg = stage_config(1).system.background
    background = threestudio.find("neural-environment-map-background")(background_cfg)
    assert isinstance(background.encoding.encoding.encoding, stand_in.Encoding)
    assert background.encoding.n_output_dims == 9  # threestudio's default: SH degree 3
    dirs = torch.nn.functional.normalize(torch.randn(2, 4, 4, 3), dim=-1)
    rgb = background(dirs)
    assert rgb.shape == (2, 4, 4, 3) and ((rgb > 0) & (rgb < 1)).all()
