"""Orbit cameras against hand-computed values in threestudio's conventions (z up,
azimuth from +x toward +y, OpenGL camera looking down -z, focal from fovy)."""
import math

import pytest
import torch

from threestudio_dreambooth3d.core import cameras as C


def test_azimuth_zero_is_on_plus_x_looking_at_the_origin_with_z_up():
    cam = C.camera_from_spherical(0.0, 0.0, 2.0, 60.0, 64, 64)
    c2w = cam["c2w"][0]
    torch.testing.assert_close(cam["camera_positions"][0], torch.tensor([2.0, 0.0, 0.0]))
    # columns: right, up, backward (= -lookat), position
    torch.testing.assert_close(c2w[:3, 0], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(c2w[:3, 2], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(c2w[:3, 3], torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(c2w[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert cam["elevation"].item() == 0 and cam["azimuth"].item() == 0 and cam["camera_distances"].item() == 2
    assert cam["fovy"].item() == pytest.approx(math.pi / 3)  # threestudio keeps fovy in radians
    assert cam["focal"].item() == pytest.approx(32 / math.tan(math.pi / 6))
    assert (cam["height"], cam["width"]) == (64, 64)
    torch.testing.assert_close(cam["light_positions"], cam["camera_positions"])


def test_azimuth_and_elevation_by_hand():
    cam = C.camera_from_spherical([0.0, 0.0, 30.0, -10.0], [90.0, 180.0, 45.0, -90.0], 2.0)
    r3, s = math.sqrt(3), math.sqrt(2) / 2
    expected = torch.tensor([[0.0, 2.0, 0.0], [-2.0, 0.0, 0.0], [r3 * s, r3 * s, 1.0],
                             [0.0, -2 * math.cos(math.radians(10)), -2 * math.sin(math.radians(10))]])
    torch.testing.assert_close(cam["camera_positions"], expected, atol=1e-6, rtol=0)
    # azimuth 90: camera on +y, so its right is -x and it looks down -y
    torch.testing.assert_close(cam["c2w"][0, :3, 0], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(cam["c2w"][0, :3, 2], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    # elevation 30: up tilts back toward the camera: (-sin30 cos45, -sin30 sin45, cos30)
    torch.testing.assert_close(cam["c2w"][2, :3, 1], torch.tensor([-0.5 * s, -0.5 * s, r3 / 2]), atol=1e-6, rtol=0)


def test_every_camera_is_a_rotation_looking_at_the_origin():
    g = torch.Generator().manual_seed(0)
    n = 64
    cam = C.camera_from_spherical(torch.rand(n, generator=g) * 178 - 89, torch.rand(n, generator=g) * 720 - 360,
                                  torch.rand(n, generator=g) * 2 + 0.5)
    rot = cam["c2w"][:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand(n, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(n), atol=1e-5, rtol=0)
    forward = -rot[:, :, 2]
    torch.testing.assert_close(forward, -cam["camera_positions"] / cam["camera_distances"][:, None], atol=1e-5, rtol=0)
    assert (rot[:, 2, 0].abs() < 1e-6).all()  # right stays horizontal: no roll
    torch.testing.assert_close(cam["camera_positions"].norm(dim=-1), cam["camera_distances"])


def test_centre_ray_hits_the_origin_and_edge_rays_span_the_fov():
    # odd size: the middle pixel's centre is the principal point
    cam = C.camera_from_spherical(20.0, 135.0, 1.7, 50.0, 7, 7, with_rays=True)
    o, d = cam["rays_o"][0, 3, 3], cam["rays_d"][0, 3, 3]
    assert d.norm().item() == pytest.approx(1.0)
    torch.testing.assert_close(o + 1.7 * d, torch.zeros(3), atol=1e-6, rtol=0)

    # the top edge of the image is fovy / 2 above the optical axis
    dirs = C.get_ray_directions(64, 64, C.focal_from_fovy(torch.tensor(math.radians(90.0)), 64).item(),
                                use_pixel_centers=False)
    torch.testing.assert_close(dirs[0, 32], torch.tensor([0.0, 1.0, -1.0]))  # 45 deg up
    torch.testing.assert_close(dirs[32, 0], torch.tensor([-1.0, 0.0, -1.0]))  # 45 deg left


def test_pixel_rays_and_mvp_projection_agree_for_a_wide_image():
    # A point on the ray of pixel (row j, col i) must project, through the mvp matrix
    # threestudio's rasteriser uses, to that pixel's centre: rays, c2w, focal and
    # projection describe one camera (square pixels, focal from the height).
    cam = C.camera_from_spherical(25.0, -60.0, 2.2, 40.0, height=6, width=10, with_rays=True)
    for j, i in [(0, 0), (5, 9), (2, 7)]:
        point = cam["rays_o"][0, j, i] + 1.3 * cam["rays_d"][0, j, i]
        clip = cam["mvp_mtx"][0] @ torch.cat([point, torch.ones(1)])
        ndc = clip[:3] / clip[3]
        expected = torch.tensor([2 * (i + 0.5) / 10 - 1, 2 * (j + 0.5) / 6 - 1])  # y flipped for nvdiffrast
        torch.testing.assert_close(ndc[:2], expected, atol=1e-5, rtol=0)


def test_get_rays_shapes_match_threestudio():
    cam = C.orbit_cameras(3, height=4, width=5)
    c2w = cam["c2w"]
    dirs = C.get_ray_directions(4, 5, 3.0)
    o, d = C.get_rays(dirs, c2w, keepdim=True, normalize=False)  # [H,W,3] x [B,4,4]
    assert o.shape == d.shape == (3, 4, 5, 3)
    torch.testing.assert_close(d[1, 2, 3], c2w[1, :3, :3] @ dirs[2, 3])
    torch.testing.assert_close(o[2, 0, 0], c2w[2, :3, 3])
    o1, d1 = C.get_rays(dirs, c2w[0])  # [H,W,3] x [4,4], flattened and normalised
    assert d1.shape == (20, 3) and torch.allclose(d1.norm(dim=-1), torch.ones(20))
    torch.testing.assert_close(d1.reshape(4, 5, 3), torch.nn.functional.normalize(d[0], dim=-1))
    flat = dirs.reshape(-1, 3)[:6]
    o2, d2 = C.get_rays(flat, c2w[:1].expand(6, 4, 4), normalize=False)  # [N,3] x [N,4,4]
    torch.testing.assert_close(d2, d[0].reshape(-1, 3)[:6])
    ob, db = C.get_rays(dirs[None].expand(3, -1, -1, -1), c2w, keepdim=True, normalize=False)  # [B,H,W,3]
    torch.testing.assert_close(db, d)


def test_orbit_cameras():
    cam = C.orbit_cameras(4)  # threestudio's eval camera: elevation 15, distance 1.5, fovy 70
    torch.testing.assert_close(cam["azimuth"], torch.tensor([0.0, 90.0, 180.0, 270.0]))
    torch.testing.assert_close(cam["elevation"], torch.full((4,), 15.0))
    torch.testing.assert_close(cam["camera_distances"], torch.full((4,), 1.5))
    torch.testing.assert_close(cam["fovy"], torch.full((4,), math.radians(70.0)))
    ramp = C.orbit_cameras(4, elevation_deg=(0.0, 30.0), azimuth_start_deg=-45.0)
    torch.testing.assert_close(ramp["elevation"], torch.tensor([0.0, 10.0, 20.0, 30.0]))
    torch.testing.assert_close(ramp["azimuth"], torch.tensor([-45.0, 45.0, 135.0, 225.0]))
    per_view = C.orbit_cameras(3, elevation_deg=[5.0, 0.0, 20.0])
    torch.testing.assert_close(per_view["elevation"], torch.tensor([5.0, 0.0, 20.0]))
    picked = C.select_cameras(ramp, [1, 3])
    torch.testing.assert_close(picked["c2w"], ramp["c2w"][[1, 3]])
    assert picked["height"] == ramp["height"] and picked["azimuth"].tolist() == [45.0, 225.0]
    with pytest.raises(ValueError, match="elevation_deg"):
        C.orbit_cameras(4, elevation_deg=[1.0, 2.0, 3.0])


def test_camera_batch_rebuilds_cameras_from_c2w():
    cam = C.orbit_cameras(5, elevation_deg=(0, 30), distance=2.0, fovy_deg=45.0, height=8, width=12, with_rays=True)
    again = C.camera_batch(cam["c2w"], 45.0, 8, 12, cam["elevation"], cam["azimuth"], with_rays=True)
    for key in ("c2w", "camera_positions", "camera_distances", "fovy", "focal", "mvp_mtx", "rays_o", "rays_d"):
        torch.testing.assert_close(again[key], cam[key], atol=1e-6, rtol=0)


def test_invalid_cameras_are_refused():
    with pytest.raises(ValueError, match="elevation must be in \\(-90, 90\\)"):
        C.camera_from_spherical(90.0, 0.0)
    with pytest.raises(ValueError, match="distance > 0"):
        C.camera_from_spherical(0.0, 0.0, distance=0.0)
    with pytest.raises(ValueError, match="fovy"):
        C.camera_from_spherical(0.0, 0.0, fovy_deg=180.0)


def test_random_cameras_are_seeded_and_stay_in_the_configured_ranges():
    kw = dict(elevation_range_deg=(-10.0, 45.0), azimuth_range_deg=(-180.0, 180.0), distance_range=(1.5, 2.0),
              fovy_range_deg=(40.0, 70.0), height=32, width=32)
    a, b, c = C.random_cameras(16, seed=3, **kw), C.random_cameras(16, seed=3, **kw), C.random_cameras(16, seed=4, **kw)
    torch.testing.assert_close(a["c2w"], b["c2w"], atol=0, rtol=0)
    assert not torch.allclose(a["c2w"], c["c2w"])
    assert ((a["elevation"] >= -10) & (a["elevation"] <= 45)).all()
    assert ((a["camera_distances"] >= 1.5) & (a["camera_distances"] <= 2.0)).all()
    fovy = torch.rad2deg(a["fovy"])
    assert ((fovy >= 40 - 1e-4) & (fovy <= 70 + 1e-4)).all()
    # stratified azimuth (threestudio's batch_uniform_azimuth): one view in each 22.5-degree slice
    slices = ((a["azimuth"] + 180) // 22.5).long()
    assert slices.tolist() == list(range(16))
    # the stored numbers are the camera: positions follow from (elevation, azimuth, distance) exactly
    torch.testing.assert_close(a["camera_positions"],
                               C.spherical_to_cartesian(a["elevation"], a["azimuth"], a["camera_distances"]))
    torch.testing.assert_close(torch.linalg.det(a["c2w"][:, :3, :3]), torch.ones(16), atol=1e-5, rtol=0)


def test_random_camera_elevations_mix_uniform_angle_and_uniform_sphere_like_threestudio():
    # threestudio draws elevation uniform in angle half the time, uniform on the sphere otherwise;
    # over (-10, 89) the share above 60 degrees is 0.293 for the first, 0.114 for the second
    cam = C.random_cameras(20000, elevation_range_deg=(-10.0, 89.0), seed=0)
    share = (cam["elevation"] > 60).float().mean().item()
    angle = 29 / 99
    sphere = (math.sin(math.radians(89)) - math.sin(math.radians(60))) / (
        math.sin(math.radians(89)) + math.sin(math.radians(10)))
    assert share == pytest.approx(0.5 * (angle + sphere), abs=0.015)


def test_random_cameras_reject_bad_ranges():
    with pytest.raises(ValueError, match="fovy_range_deg.*low <= high"):
        C.random_cameras(4, fovy_range_deg=(70.0, 40.0))
