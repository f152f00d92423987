"""The guided noise prediction (core/guidance_math.py): threestudio's timesteps, v-prediction, Perp-Neg by hand."""

import pytest
import torch

from threestudio_dreambooth3d.core import guidance_math


def test_step_range_and_timesteps_match_threestudio():
    assert guidance_math.step_range(1000, 0.02, 0.98) == (20, 980)
    assert guidance_math.step_range(1000, 0.5, 0.5) == (500, 500)  # sqrt_anneal collapses the range
    assert guidance_math.step_range(999, 0.02, 0.98) == (19, 979)  # int() truncates like threestudio
    with pytest.raises(ValueError, match="min_step_percent"):
        guidance_math.step_range(1000, 0.9, 0.1)
    t = guidance_math.sample_timesteps(4000, 20, 980, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) == 20 and int(t.max()) == 980  # inclusive bounds
    again = guidance_math.sample_timesteps(4000, 20, 980, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def test_v_prediction_converts_to_epsilon(tiny):
    torch.manual_seed(1)
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 400, 990])
    sched = tiny.scheduler
    x_t = sched.add_noise(x0, eps, t)
    v = sched.get_velocity(x0, eps, t)  # diffusers' own definition of the v target
    ac = sched.alphas_cumprod
    torch.testing.assert_close(guidance_math.to_epsilon(v, x_t, t, ac, "v_prediction"), eps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(guidance_math.to_epsilon(x0, x_t, t, ac, "sample"), eps, rtol=1e-3, atol=1e-3)
    assert guidance_math.to_epsilon(eps, x_t, t, ac, "epsilon") is eps
    with pytest.raises(ValueError, match="prediction_type"):
        guidance_math.to_epsilon(eps, x_t, t, ac, "flow")


def test_perpendicular_component_by_hand():
    x = torch.tensor([[1.0, 1.0], [3.0, 4.0], [2.0, -1.0]]).view(3, 2, 1, 1)
    y = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]).view(3, 2, 1, 1)
    out = guidance_math.perpendicular_component(x, y).view(3, 2)
    # (1,1) minus its projection on (1,0); (3,4) on (0,2); a zero y leaves x unchanged (1e-6 floor, no NaN)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0], [3.0, 0.0], [2.0, -1.0]]))


def _rows(*vectors):
    return torch.tensor(vectors, dtype=torch.float32).view(len(vectors), 2, 1, 1)


def test_perp_neg_guidance_by_hand():
    # B = 2 items, K = 2 negatives each; rows: pos (2), uncond (2), neg (item0: k0,k1, item1: k0,k1)
    noise_pred = _rows([3, 1], [0, 5],  # pos
                       [1, 1], [0, 1],  # uncond
                       [1, 3], [2, 2],  # item 0 negatives
                       [7, 1], [0, 9])  # item 1 negatives
    weights = torch.tensor([[-0.5, -2.0], [1.0, 0.25]])
    out = guidance_math.perp_neg_guidance(noise_pred, weights, guidance_scale=10.0).view(2, 2)
    # item 0: e_pos = (2,0); e_0 = (0,2) -> perp (0,2); e_1 = (1,1) -> perp (0,1)
    #         eps = (1,1) + 10 * ((2,0) - 0.5 (0,2) - 2 (0,1)) = (21, -29)
    # item 1: e_pos = (0,4); e_0 = (7,0) -> perp (7,0); e_1 = (0,8) -> perp (0,0)
    #         eps = (0,1) + 10 * ((0,4) + 1 (7,0) + 0.25 (0,0)) = (70, 41)
    torch.testing.assert_close(out, torch.tensor([[21.0, -29.0], [70.0, 41.0]]))
    with pytest.raises(ValueError, match=r"cat\(\[pos, uncond, neg\]\) = 8 rows"):
        guidance_math.perp_neg_guidance(noise_pred[:6], weights, 10.0)
