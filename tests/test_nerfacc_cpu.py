"""The pure-torch nerfacc fallback against hand-computed cases (no threestudio needed)."""
import math

import pytest
import torch

from threestudio_dreambooth3d.cpu import nerfacc as nc

# three rays with 3, 2 and 2 samples, the example nerfacc's own docstrings use
RAY_INDICES = torch.tensor([0, 0, 0, 1, 1, 2, 2])
T_STARTS = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
T_ENDS = T_STARTS + 1.0
SIGMAS = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])


def test_pack_info_gives_start_and_count_per_ray():
    info = nc.pack_info(torch.tensor([0, 0, 2, 2, 2]), n_rays=4)
    assert info.tolist() == [[0, 2], [2, 0], [2, 3], [5, 0]]


def test_packed_scans_restart_at_each_ray():
    x = torch.arange(1.0, 10.0)
    info = torch.tensor([[0, 2], [2, 3], [5, 4]])
    assert nc.inclusive_sum(x, info).tolist() == [1, 3, 3, 7, 12, 6, 13, 21, 30]
    assert nc.exclusive_sum(x, info).tolist() == [0, 1, 0, 3, 7, 0, 6, 13, 21]
    assert nc.inclusive_prod(x, info).tolist() == [1, 2, 3, 12, 60, 6, 42, 336, 3024]
    assert nc.exclusive_prod(x, info).tolist() == [1, 1, 1, 3, 12, 1, 6, 42, 336]


def test_weights_from_density_match_the_closed_form():
    w, trans, alphas = nc.render_weight_from_density(T_STARTS, T_ENDS, SIGMAS, ray_indices=RAY_INDICES, n_rays=3)
    e = math.exp
    expected_trans = [1, e(-0.4), e(-1.2), 1, e(-0.8), 1, 1]
    expected_alpha = [1 - e(-s) for s in SIGMAS.tolist()]
    torch.testing.assert_close(trans, torch.tensor(expected_trans))
    torch.testing.assert_close(alphas, torch.tensor(expected_alpha))
    torch.testing.assert_close(w, torch.tensor(expected_trans) * torch.tensor(expected_alpha))
    # per ray, weights + final transmittance = 1 (energy is conserved)
    final_t = torch.tensor([e(-1.3), e(-0.9), e(-0.9)])
    per_ray = torch.zeros(3).index_add_(0, RAY_INDICES, w)
    torch.testing.assert_close(per_ray + final_t, torch.ones(3))


def test_weights_from_alpha_match_the_closed_form():
    alphas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
    w, trans = nc.render_weight_from_alpha(alphas, ray_indices=RAY_INDICES, n_rays=3)
    torch.testing.assert_close(trans, torch.tensor([1.0, 0.6, 0.12, 1.0, 0.2, 1.0, 1.0]))
    torch.testing.assert_close(w, torch.tensor([0.4, 0.48, 0.012, 0.8, 0.02, 0.0, 0.9]))


def test_packed_weights_have_the_same_gradient_as_a_dense_render():
    torch.manual_seed(0)
    sig = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    dt = 0.3
    # dense reference: one row per ray
    alpha = 1 - torch.exp(-sig * dt)
    trans = torch.cumprod(torch.cat([torch.ones(3, 1, dtype=sig.dtype), 1 - alpha[:, :-1]], 1), 1)
    (trans * alpha * torch.arange(5.0, dtype=sig.dtype)).sum().backward()
    g_dense = sig.grad.clone()
    sig.grad = None
    starts = torch.arange(5.0, dtype=sig.dtype).repeat(3) * dt
    w, _, _ = nc.render_weight_from_density(starts, starts + dt, sig.flatten(), ray_indices=torch.arange(3).repeat_interleave(5), n_rays=3)
    (w * torch.arange(5.0, dtype=sig.dtype).repeat(3)).sum().backward()
    torch.testing.assert_close(sig.grad, g_dense)


def test_ray_aabb_intersection():
    o = torch.tensor([[-3.0, 0.0, 0.0], [-3.0, 5.0, 0.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    t0, t1, hit = nc.ray_aabb_intersect(o, d, torch.tensor([-1.0, -1, -1, 1, 1, 1]))
    assert hit.tolist() == [True, False, True]
    torch.testing.assert_close(t0[[0, 2]], torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(t1[[0, 2]], torch.tensor([4.0, 1.0]))


AABB = torch.tensor([-1.0, -1, -1, 1, 1, 1])
RAYS_O = torch.tensor([[-3.0, 0.1, 0.1], [-3.0, 5.0, 0.0], [0.1, 0.1, -3.0]])
RAYS_D = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def test_occgrid_sampling_marches_the_box_in_packed_order():
    idx, ts, te = nc.occgrid_sampling(RAYS_O, RAYS_D, AABB, render_step_size=0.5)
    assert idx.tolist() == [0, 0, 0, 0, 2, 2, 2, 2]  # ray 1 misses the box
    torch.testing.assert_close(ts, torch.tensor([2.0, 2.5, 3.0, 3.5] * 2))
    torch.testing.assert_close(te - ts, torch.full((8,), 0.5))


def test_occgrid_sampling_skips_empty_cells():
    occupied = torch.zeros(2, 2, 2, dtype=torch.bool)
    occupied[1] = True  # only x > 0
    idx, ts, _ = nc.occgrid_sampling(RAYS_O, RAYS_D, AABB, binaries=occupied, render_step_size=0.5)
    assert idx.tolist() == [0, 0, 2, 2, 2, 2]
    torch.testing.assert_close(ts[:2], torch.tensor([3.0, 3.5]))


def test_occgrid_sampling_drops_samples_behind_an_opaque_one():
    def sigma_fn(t_starts, t_ends, ray_indices):
        return torch.where(t_starts < 2.25, torch.full_like(t_starts, 100.0), torch.zeros_like(t_starts))

    idx, ts, _ = nc.occgrid_sampling(RAYS_O[:1], RAYS_D[:1], AABB, sigma_fn=sigma_fn, render_step_size=0.5,
                                     early_stop_eps=1e-4, alpha_thre=0.0)
    assert ts.tolist() == [2.0]  # the rest are hidden behind an alpha ~ 1 sample
    assert idx.tolist() == [0]


def test_stratified_sampling_stays_inside_the_box():
    torch.manual_seed(0)
    idx, ts, te = nc.occgrid_sampling(RAYS_O, RAYS_D, AABB, render_step_size=0.5, stratified=True)
    assert (ts >= 2.0).all() and (te <= 4.0 + 1e-6).all()
    assert set(idx.tolist()) == {0, 2}


def test_install_routes_cpu_tensors_through_the_fallback():
    nerfacc = pytest.importorskip("nerfacc")
    assert nc.install()
    w, trans, alphas = nerfacc.render_weight_from_density(T_STARTS, T_ENDS, SIGMAS, ray_indices=RAY_INDICES, n_rays=3)
    # the values nerfacc documents for this example
    torch.testing.assert_close(trans, torch.tensor([1.00, 0.67, 0.30, 1.00, 0.45, 1.00, 1.00]), atol=5e-3, rtol=0)
    torch.testing.assert_close(w, torch.tensor([0.33, 0.37, 0.03, 0.55, 0.04, 0.00, 0.59]), atol=5e-3, rtol=0)
    est = nerfacc.OccGridEstimator(roi_aabb=AABB, resolution=2, levels=1)
    est.binaries.fill_(True)
    idx, ts, _ = est.sampling(RAYS_O, RAYS_D, sigma_fn=None, render_step_size=0.5, alpha_thre=0.0, stratified=False)
    assert idx.tolist() == [0, 0, 0, 0, 2, 2, 2, 2]
    # pure-torch parts of nerfacc keep working alongside
    acc = nerfacc.accumulate_along_rays(w, None, ray_indices=RAY_INDICES, n_rays=3)
    assert acc.shape == (3, 1)


class FakeCudaTensor:
    """Only ``is_cuda`` is read by the dispatch: stands in for a CUDA tensor on a machine without a GPU."""

    is_cuda = True


def test_cuda_tensors_take_the_fallback_when_nerfacc_kernels_cannot_load(monkeypatch):
    def kernel(*args, **kwargs):
        return "kernel"

    def pure_torch(*args, **kwargs):
        return "torch"

    dispatch = nc._kernel_or_torch(kernel, pure_torch)
    scan = nc._packed_scan(kernel, pure_torch)
    info = torch.tensor([[0, 1]])
    monkeypatch.setattr(nc, "_CUDA_KERNELS", False)  # the extension failed to build
    assert dispatch(FakeCudaTensor()) == "torch" and scan(FakeCudaTensor(), info) == "torch"
    assert dispatch(torch.zeros(1)) == "torch"
    monkeypatch.setattr(nc, "_CUDA_KERNELS", True)  # it loads: CUDA tensors keep nerfacc's kernels
    assert dispatch(FakeCudaTensor()) == "kernel" and scan(FakeCudaTensor(), info) == "kernel"
    assert dispatch(torch.zeros(1)) == "torch" and scan(torch.zeros(1), info) == "torch"
    assert scan(torch.zeros(1), None) == "kernel"  # unpacked scans are nerfacc's own torch code


def test_kernel_probe_warns_once_when_the_extension_is_missing(monkeypatch):
    import warnings

    monkeypatch.setattr(nc, "_CUDA_KERNELS", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = nc.cuda_kernels_available(), nc.cuda_kernels_available()
    assert first == second
    assert len([w for w in caught if "pure-torch" in str(w.message)]) == (0 if first else 1)
