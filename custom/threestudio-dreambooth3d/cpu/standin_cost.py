"""What a pure-torch stand-in costs on this GPU, for ``dreambooth3d run`` to say once on the terminal.

Why this exists: on a GPU machine where tinycudann or nerfacc's CUDA kernels are missing,
``cpu.compat`` quietly runs the pure-torch versions (:mod:`.tinycudann`, :mod:`.nerfacc`); their
warning lands in each stage's log, where a user starting a 2.5-hour run does not look. ``run``
therefore measures, before the first step, what the stand-in costs per NeRF training step here
(one forward + backward of the stage configs' hash grid on a step's worth of points; the packed
transmittance scan on a step's samples) and prints it with the fix. The real extensions are not
timed: they are not installed.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

import torch

# the stage configs' position encoding (configs/dreambooth3d-stage1.yaml) as a plain hash grid
HASH_GRID = {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
             "base_resolution": 16, "per_level_scale": 1.447269237440378}
POINTS_PER_STEP = 2**18  # samples a 64 x 64 training render evaluates after occupancy pruning, roughly
RAYS_PER_STEP, SAMPLES_PER_RAY = 64 * 64, 64
NERF_STEPS = 20_000  # stages 1 and 3 of the default run
PIECES = {"tinycudann": "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch",
          "nerfacc kernels": "install the CUDA toolkit (nvcc) matching torch so nerfacc can build its kernels"}


def _timed(fn: Callable[[], None], device: torch.device, repeats: int = 3) -> float:
    fn()  # warm-up (allocations, kernel selection)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / repeats


def measure(piece: str, device: torch.device, scale: float = 1.0) -> float:
    """Seconds the stand-in for ``piece`` takes per NeRF training step on ``device`` (``scale``
    shrinks the workload, for tests)."""
    if piece == "tinycudann":
        from .tinycudann import Encoding

        enc = Encoding(3, HASH_GRID).to(device)
        x = torch.rand(max(1, int(POINTS_PER_STEP * scale)), 3, device=device)

        def step() -> None:
            enc(x).float().sum().backward()

        return _timed(step, device)
    if piece == "nerfacc kernels":
        from .nerfacc import render_weight_from_density

        rays, samples = max(1, int(RAYS_PER_STEP * scale)), SAMPLES_PER_RAY
        ray_indices = torch.arange(rays, device=device).repeat_interleave(samples)
        t_starts = torch.rand(rays * samples, device=device).sort().values
        t_ends = t_starts + 1e-3
        sigmas = torch.rand(rays * samples, device=device, requires_grad=True)

        def step() -> None:
            weights = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices=ray_indices, n_rays=rays)[0]
            weights.sum().backward()

        return _timed(step, device)
    raise ValueError(f"no stand-in called {piece!r}; one of {', '.join(PIECES)}")


def standin_notice(gpu: bool, missing: List[str], seconds: Callable[[str], float]) -> Optional[str]:
    """The terminal line for CUDA pieces replaced by stand-ins on a GPU (None on a CPU or when
    nothing is replaced): what each costs per step, measured by ``seconds(piece)``, and over the
    default run's NeRF steps."""
    if not gpu or not missing:
        return None
    parts = []
    for piece in missing:
        s = seconds(piece)
        parts.append(f"{piece} is missing on this GPU: its pure-torch stand-in runs instead, measured here at "
                     f"{s * 1000:.0f} ms per NeRF training step (~{s * NERF_STEPS / 3600:.1f} h over the default "
                     f"run's {NERF_STEPS:,} NeRF steps; fix: {PIECES[piece]})")
    return "; ".join(parts)


def gpu_standins(rows) -> List[str]:
    """The stand-in pieces doctor's rows (``check_cuda_pieces`` on a GPU) report as replaced."""
    return [r.name for r in rows if r.name in PIECES and r.status == "warn"]


def measured_notice(rows, gpu: bool, device: Optional[torch.device] = None) -> Optional[str]:
    """:func:`standin_notice` for doctor's rows, measuring on ``device`` (default: the GPU)."""
    device = device or torch.device("cuda")
    cache: Dict[str, float] = {}
    return standin_notice(gpu, gpu_standins(rows), lambda p: cache.setdefault(p, measure(p, device)))
