"""Pure-torch ``tinycudann`` for threestudio when the real one cannot be imported.

Why this exists: threestudio's real configs (hash-grid geometry, spherical-harmonics
environment map) build tinycudann modules, and tinycudann has only CUDA kernels and is
the most common threestudio install failure on GPU machines too. ``cpu.compat`` puts
this module in ``sys.modules["tinycudann"]`` when the real one fails to import, with one
warning that it is slower, so the configs a GPU user runs are the configs the CPU tests
and the smoke preset run.

What it covers is what threestudio calls: ``Encoding`` (``HashGrid``/``DenseGrid``/``Grid``
with linear interpolation, ``SphericalHarmonics``, ``Frequency``, ``Identity``),
``Network`` (``FullyFusedMLP``/``CutlassMLP``), ``NetworkWithInputEncoding`` and
``free_temporary_memory``, with tinycudann's constructor signatures. Everything is
device-agnostic torch autograd (input gradients included, which analytic normals need).

The grid follows tinycudann's ``encodings/grid.h``, not the paper's rounding, so that a
checkpoint moves between the two: level ``l`` has ``scale = base_resolution *
per_level_scale**l - 1`` and ``resolution = ceil(scale) + 1`` vertices per side; a point
``x in [0, 1]`` sits at ``x * scale + 0.5`` on that lattice; a level is indexed densely
(x-fastest) when ``resolution**D`` entries fit in its table, else by the spatial hash
``XOR_d(c_d * prime_d) mod 2**32 mod table`` with primes (1, 2654435761, 805459861); every
level's table holds ``min(next_multiple(resolution**D, 8), 2**log2_hashmap_size)``
entries of ``n_features_per_level`` values, all levels in one flat ``params`` tensor
initialised uniformly in +-1e-4, as tinycudann lays them out.

Not copied: half-precision parameters (parameters stay float32; ``dtype`` sets the
output dtype), batch padding, and the network's parameter layout (an MLP's weights are
separate ``nn.Linear`` layers, so a tinycudann MLP checkpoint does not load silently
into the wrong layout; threestudio's configs use ``VanillaMLP`` anyway).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor, nn

__all__ = ["Encoding", "Network", "NetworkWithInputEncoding", "free_temporary_memory", "STAND_IN", "PRIMES"]

STAND_IN = True  # lets callers tell this module from the real tinycudann

PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)
_UINT32 = 0xFFFFFFFF


def free_temporary_memory() -> None:
    """tinycudann frees its scratch GPU memory here; torch's allocator owns ours."""


def _grid_scale(level: int, per_level_scale: float, base_resolution: int) -> float:
    # tinycudann computes in float32: exp2f(level * log2(per_level_scale)) * base - 1
    log2_scale = torch.tensor(math.log2(per_level_scale), dtype=torch.float32)
    return float(torch.exp2(level * log2_scale) * base_resolution - 1.0)


def _activation(name: Optional[str]):
    key = str(name or "None").lower()
    k_act = 10.0  # tinycudann's softplus/squareplus sharpness
    table = {
        "none": lambda x: x,
        "relu": torch.relu,
        "leakyrelu": lambda x: torch.where(x > 0, x, 0.01 * x),
        "exponential": torch.exp,
        "sine": torch.sin,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softplus": lambda x: nn.functional.softplus(x, beta=k_act),
        "squareplus": lambda x: 0.5 * (k_act * x + torch.sqrt((k_act * x) ** 2 + 4)) / k_act,
    }
    if key not in table:
        raise ValueError(f"tinycudann stand-in: unknown activation {name!r}; one of {', '.join(table)}")
    return table[key]


# -- encodings ----------------------------------------------------------------------------------
class _GridEncoding(nn.Module):
    """Multiresolution grid (instant-NGP), linear interpolation, tinycudann's layout and indexing."""

    def __init__(self, n_input_dims: int, cfg: Dict, grid_type: str) -> None:
        super().__init__()
        if str(cfg.get("interpolation", "Linear")).lower() != "linear":
            raise ValueError(f"tinycudann stand-in: grid interpolation {cfg['interpolation']!r} is not supported (Linear only)")
        if not 1 <= n_input_dims <= len(PRIMES):
            raise ValueError(f"tinycudann stand-in: a grid takes 1..{len(PRIMES)} input dims, got {n_input_dims}")
        self.grid_type = grid_type
        self.n_levels = int(cfg.get("n_levels", 16))
        self.n_features_per_level = int(cfg.get("n_features_per_level", 2))
        self.log2_hashmap_size = int(cfg.get("log2_hashmap_size", 19))
        self.base_resolution = int(cfg.get("base_resolution", 16))
        self.per_level_scale = float(cfg.get("per_level_scale", 2.0))
        self.n_output_dims = self.n_levels * self.n_features_per_level
        dims = n_input_dims
        scales, resolutions, sizes, offsets, dense = [], [], [], [0], []
        for level in range(self.n_levels):
            scale = _grid_scale(level, self.per_level_scale, self.base_resolution)
            resolution = math.ceil(scale) + 1
            size = -(-resolution**dims // 8) * 8
            if grid_type == "Hash":
                size = min(size, 2**self.log2_hashmap_size)
            scales.append(scale)
            resolutions.append(resolution)
            sizes.append(size)
            offsets.append(offsets[-1] + size)
            # tinycudann hashes only when the dense index would not fit the table
            dense.append(grid_type != "Hash" or resolution**dims <= size)
        self.level_scales, self.level_resolutions, self.level_sizes = scales, resolutions, sizes
        self.level_offsets, self.level_dense = offsets[:-1], dense
        self.n_params = offsets[-1] * self.n_features_per_level
        self.register_buffer("_scale", torch.tensor(scales, dtype=torch.float32), persistent=False)
        self.register_buffer("_size", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("_offset", torch.tensor(offsets[:-1], dtype=torch.int64), persistent=False)
        self.register_buffer("_dense", torch.tensor(dense), persistent=False)
        # dense index x + res*y + res^2*z (x fastest); only read on levels where it fits the table
        strides = [[resolution**d for d in range(dims)] for resolution in resolutions]
        self.register_buffer("_stride", torch.tensor(strides, dtype=torch.int64), persistent=False)
        self.register_buffer("_primes", torch.tensor(PRIMES[:dims], dtype=torch.int64), persistent=False)

    def initial_params(self, generator: Optional[torch.Generator] = None) -> Tensor:
        return torch.empty(self.n_params).uniform_(-1e-4, 1e-4, generator=generator)

    @staticmethod
    def _corners(per_dim: Tensor, combine) -> Tensor:
        """``[..., D, 2]`` per-dim values (lower, upper corner) -> ``[..., 2**D]`` combined over all corners.

        Corner ``c`` takes the upper value along dim ``d`` when bit ``D-1-d`` of ``c`` is set.
        """
        acc = per_dim[..., 0, :]
        for d in range(1, per_dim.shape[-2]):
            acc = combine(acc[..., :, None], per_dim[..., d, None, :]).flatten(-2)
        return acc

    def level_index(self, cell: Tensor) -> Tensor:
        """Table index (before the level offset) of the ``2**D`` corners ``[N, L, 2**D]`` of lattice cells ``[N, L, D]``."""
        corners = torch.stack([cell, cell + 1], -1)  # [N, L, D, 2]
        dense = self._corners(corners * self._stride[None, :, :, None], torch.add)
        # coherent_prime_hash: XOR over dims of c_d * prime_d in uint32 arithmetic
        hashed = self._corners((corners * self._primes[:, None]) & _UINT32, torch.bitwise_xor)
        index = torch.where(self._dense.view(1, -1, 1), dense, hashed)
        return index % self._size.view(1, -1, 1)

    def forward(self, x: Tensor, params: Tensor) -> Tensor:
        # [N, D] -> lattice position on every level [N, L, D]; floor is the cell, the rest the weight
        pos = x[:, None, :] * self._scale.to(x.dtype)[None, :, None] + 0.5
        cell = torch.floor(pos)
        frac = pos - cell
        index = self.level_index(cell.long()) + self._offset.view(1, -1, 1)
        weights = self._corners(torch.stack([1 - frac, frac], -1), torch.mul)  # [N, L, 2**D], trilinear
        # index_select: its backward is index_add, several times faster on a CPU than embedding's or indexing's
        feats = params.view(-1, self.n_features_per_level).index_select(0, index.reshape(-1))
        out = torch.einsum("nlc,nlcf->nlf", weights, feats.view(*index.shape, -1).to(x.dtype))
        return out.reshape(x.shape[0], self.n_output_dims)


def _legendre_q(lmax: int, z: Tensor) -> Dict:
    """Q_l^m(z) with P_l^m(z) = (1 - z^2)^(m/2) Q_l^m(z), Condon-Shortley phase included."""
    q = {}
    for m in range(lmax + 1):
        q[(m, m)] = torch.full_like(z, (-1) ** m * float(math.prod(range(2 * m - 1, 0, -2))))
        if m + 1 <= lmax:
            q[(m + 1, m)] = z * (2 * m + 1) * q[(m, m)]
        for l in range(m + 2, lmax + 1):
            q[(l, m)] = ((2 * l - 1) * z * q[(l - 1, m)] - (l + m - 1) * q[(l - 2, m)]) / (l - m)
    return q


def spherical_harmonics(dirs: Tensor, degree: int) -> Tensor:
    """tinycudann's SH basis of ``dirs [N, 3]`` (in [-1, 1], not renormalised): ``degree**2`` values.

    Real SH with the Condon-Shortley phase, ordered ``l*l + l + m`` for m = -l..l, as
    polynomials in x, y, z (sin/cos of m*phi times the sine power = Im/Re of (x + iy)^m).
    """
    x, y, z = dirs.unbind(-1)
    lmax = degree - 1
    q = _legendre_q(lmax, z)
    re, im = [torch.ones_like(x)], [torch.zeros_like(x)]
    for _ in range(lmax):
        re, im = re + [re[-1] * x - im[-1] * y], im + [re[-1] * y + im[-1] * x]
    out = []
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            am = abs(m)
            k = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am))
            if m == 0:
                out.append(k * q[(l, 0)])
            else:
                out.append(math.sqrt(2) * k * q[(l, am)] * (im[am] if m < 0 else re[am]))
    return torch.stack(out, -1)


class Encoding(nn.Module):
    """``tinycudann.Encoding(n_input_dims, encoding_config, seed=1337, dtype=None)``; inputs in [0, 1]."""

    def __init__(self, n_input_dims: int, encoding_config: Dict, seed: int = 1337, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        cfg = dict(encoding_config)
        otype = str(cfg.get("otype", ""))
        self.n_input_dims = int(n_input_dims)
        self.seed = seed
        self.dtype = dtype or torch.float32
        self.otype = otype
        self.grid: Optional[_GridEncoding] = None
        grid_types = {"HashGrid": "Hash", "DenseGrid": "Dense"}
        if otype in grid_types or otype == "Grid":
            grid_type = grid_types.get(otype) or str(cfg.get("type", "Hash"))
            if grid_type not in ("Hash", "Dense"):
                raise ValueError(f"tinycudann stand-in: Grid type {grid_type!r} is not one of Hash, Dense")
            self.grid = _GridEncoding(self.n_input_dims, cfg, grid_type)
            self.n_output_dims = self.grid.n_output_dims
            params = self.grid.initial_params(torch.Generator().manual_seed(seed))
        elif otype == "SphericalHarmonics":
            self.degree = int(cfg.get("degree", 4))
            if self.n_input_dims != 3 or not 1 <= self.degree <= 8:
                raise ValueError("tinycudann stand-in: SphericalHarmonics takes 3 input dims and degree 1..8")
            self.n_output_dims = self.degree**2
        elif otype == "Frequency":
            self.n_frequencies = int(cfg.get("n_frequencies", 12))
            self.n_output_dims = self.n_input_dims * self.n_frequencies * 2
        elif otype == "Identity":
            self.scale, self.offset = float(cfg.get("scale", 1.0)), float(cfg.get("offset", 0.0))
            self.n_output_dims = self.n_input_dims
        else:
            raise ValueError(
                f"tinycudann stand-in: encoding otype {otype!r} is not implemented (HashGrid, DenseGrid, "
                "Grid, SphericalHarmonics, Frequency, Identity are); install tinycudann for the others."
            )
        if self.grid is None:
            params = torch.empty(0)
        # tinycudann registers ``params`` on every module (empty when there are none): same state-dict keys
        self.params = nn.Parameter(params)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.n_input_dims:
            raise ValueError(f"tinycudann stand-in: expected [..., {self.n_input_dims}] inputs, got {tuple(x.shape)}")
        lead = x.shape[:-1]
        x = x.reshape(-1, self.n_input_dims)
        x = x if x.dtype == torch.float64 else x.float()  # float64 only for gradient checks
        with torch.autocast(x.device.type, enabled=False):  # an encoding computes in float32, as tinycudann's
            out = self._encode(x)
        return out.to(self.dtype).reshape(*lead, self.n_output_dims)

    def _encode(self, x: Tensor) -> Tensor:
        if self.grid is not None:
            return self.grid(x, self.params)
        if self.otype == "SphericalHarmonics":
            return spherical_harmonics(x * 2 - 1, self.degree)
        if self.otype == "Frequency":
            # feature j: input dim j // (2F), frequency 2^((j // 2) % F), sin for even j, cos for odd
            freqs = 2.0 ** torch.arange(self.n_frequencies, device=x.device, dtype=x.dtype)
            angles = x[:, :, None] * freqs * math.pi  # [N, D, F]
            return torch.stack([torch.sin(angles), torch.cos(angles)], -1).reshape(x.shape[0], -1)
        return x * self.scale + self.offset


# -- networks -----------------------------------------------------------------------------------
class Network(nn.Module):
    """``tinycudann.Network(n_input_dims, n_output_dims, network_config, seed=1337)``: a bias-free MLP.

    ``n_hidden_layers`` hidden layers of ``n_neurons`` (so n_hidden_layers + 1 matrices),
    ``activation`` after each hidden layer, ``output_activation`` at the end; Xavier-uniform
    initialisation, as tinycudann's FullyFusedMLP and CutlassMLP.
    """

    FULLY_FUSED_WIDTHS = (16, 32, 64, 128)

    def __init__(self, n_input_dims: int, n_output_dims: int, network_config: Dict, seed: int = 1337) -> None:
        super().__init__()
        cfg = dict(network_config)
        otype = str(cfg.get("otype", ""))
        if otype not in ("FullyFusedMLP", "CutlassMLP", "MegakernelMLP"):
            raise ValueError(f"tinycudann stand-in: network otype {otype!r} is not implemented (FullyFusedMLP, CutlassMLP are)")
        n_neurons, n_hidden = int(cfg.get("n_neurons", 128)), int(cfg.get("n_hidden_layers", 2))
        if otype == "FullyFusedMLP" and n_neurons not in self.FULLY_FUSED_WIDTHS:
            # the real FullyFusedMLP refuses other widths: fail here, not first on a GPU
            raise ValueError(f"FullyFusedMLP n_neurons must be one of {self.FULLY_FUSED_WIDTHS}, got {n_neurons}")
        self.n_input_dims, self.n_output_dims, self.seed = int(n_input_dims), int(n_output_dims), seed
        self.activation = _activation(cfg.get("activation", "ReLU"))
        self.output_activation = _activation(cfg.get("output_activation", "None"))
        widths = [self.n_input_dims] + [n_neurons] * n_hidden + [self.n_output_dims]
        generator = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layer = nn.Linear(fan_in, fan_out, bias=False)
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            with torch.no_grad():
                layer.weight.copy_(torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=generator))
            self.layers.append(layer)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        h = x.reshape(-1, self.n_input_dims)
        for i, layer in enumerate(self.layers):
            h = layer(h.to(layer.weight.dtype))
            h = self.activation(h) if i < len(self.layers) - 1 else self.output_activation(h)
        return h.reshape(*lead, self.n_output_dims)


class NetworkWithInputEncoding(nn.Module):
    """``tinycudann.NetworkWithInputEncoding(n_input_dims, n_output_dims, encoding_config, network_config)``."""

    def __init__(self, n_input_dims: int, n_output_dims: int, encoding_config: Dict, network_config: Dict,
                 seed: int = 1337) -> None:
        super().__init__()
        self.encoding = Encoding(n_input_dims, encoding_config, seed=seed)
        self.network = Network(self.encoding.n_output_dims, n_output_dims, network_config, seed=seed)
        self.n_input_dims, self.n_output_dims = int(n_input_dims), int(n_output_dims)

    def forward(self, x: Tensor) -> Tensor:
        return self.network(self.encoding(x))
