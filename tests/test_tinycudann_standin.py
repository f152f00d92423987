"""The pure-torch tinycudann stand-in against hand-computed values (no threestudio, no GPU needed)."""
import math

import pytest
import torch

from threestudio_dreambooth3d.cpu import tinycudann as tcnn

# 3 levels on a 3-D grid: scale = 4 * 2**l - 1 = 3, 7, 15 -> 4, 8, 16 vertices per side;
# 4**3 = 64 and 8**3 = 512 entries fit a 2**10 table (dense), 16**3 = 4096 do not (hashed)
SMALL = dict(otype="HashGrid", n_levels=3, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4,
             per_level_scale=2.0)


def small_grid(**kw) -> tcnn.Encoding:
    return tcnn.Encoding(3, {**SMALL, **kw})


def test_grid_layout_follows_tinycudann():
    enc = small_grid()
    g = enc.grid
    assert g.level_resolutions == [4, 8, 16]
    assert g.level_dense == [True, True, False]
    assert g.level_sizes == [64, 512, 1024]
    assert g.level_offsets == [0, 64, 576]
    assert enc.params.shape == ((64 + 512 + 1024) * 2,) and enc.n_output_dims == 6
    assert float(enc.params.detach().abs().max()) <= 1e-4  # tinycudann's uniform(-1e-4, 1e-4) init
    # threestudio's ProgressiveBandHashGrid config: 16 levels up to 4096, 2**19 tables
    real = tcnn.Encoding(3, dict(otype="Grid", type="Hash", n_levels=16, n_features_per_level=2, log2_hashmap_size=19,
                                 base_resolution=16, per_level_scale=1.447269237440378))
    # scale 16 * 1.4473**l - 1 = 15, 22.16, 32.51 -> ceil + 1 = 16, 24, 34 vertices
    assert real.grid.level_resolutions[:3] == [16, 24, 34] and real.grid.level_resolutions[-1] == 4096
    assert real.grid.level_dense == [True] * 5 + [False] * 11  # 71**3 < 2**19 < 102**3
    assert real.n_output_dims == 32


def test_corner_indices_dense_and_hashed():
    """Cell (1, 2, 3) on every level; corner c is +1 along dim d when bit (2 - d) of c is set."""
    g = small_grid().grid
    index = g.level_index(torch.tensor([[[1, 2, 3]] * 3]))[0].tolist()
    corners = [(1, 2, 3), (1, 2, 4), (1, 3, 3), (1, 3, 4), (2, 2, 3), (2, 2, 4), (2, 3, 3), (2, 3, 4)]
    # dense, x fastest: x + 4y + 16z, wrapped into the 64-entry table
    assert index[0] == [(x + 4 * y + 16 * z) % 64 for x, y, z in corners] == [57, 9, 61, 13, 58, 10, 62, 14]
    assert index[1] == [x + 8 * y + 64 * z for x, y, z in corners]
    # hashed: x*1 XOR (y*2654435761 mod 2**32) XOR (z*805459861 mod 2**32), mod 1024, e.g.
    # (1, 2, 3): 1 ^ 1013904226 ^ 2416379583 = 2892625372 -> 476
    assert index[2][0] == 2892625372 % 1024 == 476
    assert index[2][1] == 4234652983 % 1024  # (1, 2, 4)
    assert index[2][2] == 1252092845 % 1024  # (1, 3, 3)
    assert index[2][4] == 2892625375 % 1024  # (2, 2, 3): only the x term changed
    assert index[2][7] == 447689541 % 1024   # (2, 3, 4)


def test_interpolation_weights_at_a_known_point():
    """x = (0.6, 0.25, 0.1) on level 0 (scale 3): position x*3 + 0.5 = (2.3, 1.25, 0.8), cell (2, 1, 0)."""
    enc = small_grid()
    with torch.no_grad():
        table = enc.params.view(-1, 2)
        table.zero_()
        table[3 + 1 * 4 + 1 * 16, 0] = 1.0  # corner (3, 1, 1): weight 0.3 * 0.75 * 0.8
        table[2 + 1 * 4 + 0 * 16, 1] = 1.0  # corner (2, 1, 0): weight 0.7 * 0.75 * 0.2
    out = enc(torch.tensor([[0.6, 0.25, 0.1]]))[0]
    torch.testing.assert_close(out[:2], torch.tensor([0.3 * 0.75 * 0.8, 0.7 * 0.75 * 0.2]))
    assert out[2:].abs().max() == 0  # other levels read other entries


def test_trilinear_interpolation_reproduces_a_linear_field():
    """Entry value = its dense index x + 8y + 64z on level 1: the interpolant is exactly that of the position."""
    enc = small_grid()
    with torch.no_grad():
        table = enc.params.view(-1, 2)
        table.zero_()
        table[64:576, 1] = torch.arange(512, dtype=torch.float32)
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.05
    pos = x * 7 + 0.5
    expected = pos[:, 0] + 8 * pos[:, 1] + 64 * pos[:, 2]
    torch.testing.assert_close(enc(x)[:, 3], expected, rtol=1e-5, atol=1e-3)


def test_grid_gradients_in_float64():
    tiny = dict(otype="HashGrid", n_levels=2, n_features_per_level=2, log2_hashmap_size=4, base_resolution=2,
                per_level_scale=2.0)  # level 1 (4**3 = 64 > 16) is hashed
    enc = tcnn.Encoding(3, tiny, dtype=torch.float64).double()
    assert enc.grid.level_dense == [True, False]
    with torch.no_grad():
        enc.params.normal_()
    x = (torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1).requires_grad_()
    params = enc.params.detach().clone().requires_grad_()
    f = lambda x, p: enc.grid(x, p)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, params))
    # analytic normals differentiate the density w.r.t. the points, then train through that
    assert torch.autograd.gradgradcheck(f, (x, params))


def tcnn_sh_degree4(x, y, z):
    """tinycudann's hard-coded SH basis for degree 4 (encodings/spherical_harmonics.h)."""
    xy, xz, yz, x2, y2, z2 = x * y, x * z, y * z, x * x, y * y, z * z
    return [
        0.28209479177387814,
        -0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x,
        1.0925484305920792 * xy, -1.0925484305920792 * yz, 0.94617469575755997 * z2 - 0.31539156525251999,
        -1.0925484305920792 * xz, 0.54627421529603959 * x2 - 0.54627421529603959 * y2,
        0.59004358992664352 * y * (-3.0 * x2 + y2), 2.8906114426405538 * xy * z,
        0.45704579946446572 * y * (1.0 - 5.0 * z2), 0.3731763325901154 * z * (5.0 * z2 - 3.0),
        0.45704579946446572 * x * (1.0 - 5.0 * z2), 1.4453057213202769 * z * (x2 - y2),
        0.59004358992664352 * x * (-x2 + 3.0 * y2),
    ]


def test_spherical_harmonics_at_known_directions():
    enc = tcnn.Encoding(3, {"otype": "SphericalHarmonics", "degree": 4})
    assert enc.n_output_dims == 16 and enc.params.numel() == 0
    s = 1 / math.sqrt(3)
    dirs = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, -1.0), (s, -s, s), (0.6, 0.0, -0.8)]
    d = torch.tensor(dirs, dtype=torch.float64)
    out = enc((d + 1) / 2)  # tinycudann takes directions mapped to [0, 1]
    expected = torch.tensor([tcnn_sh_degree4(*v) for v in dirs], dtype=torch.float32)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_spherical_harmonics_are_orthonormal_up_to_degree_8():
    """The recurrence beyond the hard-coded degrees: integral over the sphere of Y_i Y_j = delta_ij."""
    n = 40000  # Fibonacci sphere: near-uniform points, equal area each
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = torch.sqrt(1 - z * z)
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    y = tcnn.spherical_harmonics(dirs, 8)
    gram = y.T @ y * (4 * math.pi / n)
    torch.testing.assert_close(gram, torch.eye(64, dtype=torch.float64), atol=2e-3, rtol=0)


def test_frequency_and_identity_encodings():
    freq = tcnn.Encoding(2, {"otype": "Frequency", "n_frequencies": 2})
    assert freq.n_output_dims == 8
    out = freq(torch.tensor([[0.25, 0.5]]))[0]
    # per input dim: sin(pi x), cos(pi x), sin(2 pi x), cos(2 pi x)
    h = math.sqrt(0.5)
    torch.testing.assert_close(out, torch.tensor([h, h, 1.0, 0.0, 1.0, 0.0, 0.0, -1.0]), atol=1e-6, rtol=0)
    ident = tcnn.Encoding(3, {"otype": "Identity", "scale": 2.0, "offset": -1.0})
    torch.testing.assert_close(ident(torch.tensor([[0.0, 0.5, 1.0]])), torch.tensor([[-1.0, 0.0, 1.0]]))


def test_unknown_types_fail_clearly():
    with pytest.raises(ValueError, match="OneBlob"):
        tcnn.Encoding(3, {"otype": "OneBlob"})
    with pytest.raises(ValueError, match="n_neurons must be one of"):
        tcnn.Network(3, 1, {"otype": "FullyFusedMLP", "n_neurons": 20, "n_hidden_layers": 1})
    with pytest.raises(ValueError, match="Swish"):
        tcnn.Network(3, 1, {"otype": "CutlassMLP", "activation": "Swish", "n_neurons": 8, "n_hidden_layers": 1})


def test_network_layers_and_activations():
    net = tcnn.Network(3, 1, {"otype": "CutlassMLP", "activation": "ReLU", "output_activation": "Sigmoid",
                              "n_neurons": 2, "n_hidden_layers": 1})
    assert [tuple(l.weight.shape) for l in net.layers] == [(2, 3), (1, 2)]
    assert all(l.bias is None for l in net.layers)  # tinycudann MLPs have no biases
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))
        net.layers[1].weight.copy_(torch.tensor([[1.0, 1.0]]))
    # hidden = relu(2, -3) = (2, 0); out = sigmoid(2 + 0)
    torch.testing.assert_close(net(torch.tensor([[2.0, 3.0, 5.0]])), torch.tensor([[1 / (1 + math.exp(-2))]]))
    deep = tcnn.Network(5, 4, {"otype": "FullyFusedMLP", "activation": "Softplus", "output_activation": "None",
                               "n_neurons": 16, "n_hidden_layers": 3})
    assert [tuple(l.weight.shape) for l in deep.layers] == [(16, 5), (16, 16), (16, 16), (4, 16)]
    assert deep(torch.randn(7, 5)).shape == (7, 4)
    # tinycudann's softplus is log(1 + exp(10 x)) / 10
    soft = tcnn.Network(1, 1, {"otype": "CutlassMLP", "activation": "Softplus", "n_neurons": 1, "n_hidden_layers": 1})
    with torch.no_grad():
        soft.layers[0].weight.fill_(1.0)
        soft.layers[1].weight.fill_(1.0)
    torch.testing.assert_close(soft(torch.tensor([[0.0]])), torch.tensor([[math.log(2) / 10]]))


def test_network_with_input_encoding_chains_and_trains():
    both = tcnn.NetworkWithInputEncoding(3, 2, SMALL, {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1})
    x = torch.rand(10, 3)
    torch.testing.assert_close(both(x), both.network(both.encoding(x)))
    assert both.network.n_input_dims == 6
    both(x).square().sum().backward()
    assert both.encoding.params.grad.abs().sum() > 0 and both.network.layers[0].weight.grad.abs().sum() > 0


def test_output_dtype_and_shape():
    enc = small_grid()
    half = tcnn.Encoding(3, SMALL, dtype=torch.float16)
    x = torch.rand(2, 5, 3)
    assert enc(x).shape == (2, 5, 6) and enc(x).dtype == torch.float32
    assert half(x).dtype == torch.float16
    assert list(enc.state_dict()) == ["params"]  # tinycudann's key: checkpoints move between the two
    tcnn.free_temporary_memory()
