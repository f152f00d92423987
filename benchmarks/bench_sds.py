"""Seconds and peak memory per SDS step: ``dreambooth-sds-guidance`` vs threestudio's
``stable-diffusion-guidance``, both loading the same model folder.

One step is what a threestudio system does with the guidance each training step: call
it on a rendered batch [B, H, W, 3] (requires grad) with threestudio's prompt utils and
backpropagate ``loss_sds`` to the render. Both run with their default settings (fp16
weights on CUDA, fp32 on CPU; guidance scale 100; t in [0.02, 0.98]; view-dependent
prompts). Needs threestudio: ``$THREESTUDIO_ROOT`` or an installed package. On a CPU,
``cpu.compat.enable()`` makes it importable.

threestudio's guidance always resizes renders to 512 px before the VAE, so the model
must be 512 px native for both to run the same UNet at the same size: on a CPU use
``--model tiny-512`` (the default there), on a GPU ``--model sd21-random``.

    THREESTUDIO_ROOT=/path/to/threestudio python benchmarks/bench_sds.py --model tiny-512 --steps 20
    THREESTUDIO_ROOT=/path/to/threestudio python benchmarks/bench_sds.py --model sd21-random --steps 50
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def import_threestudio(device: torch.device):
    """threestudio with our adapters registered; CPU mode only on a CPU run."""
    from threestudio_dreambooth3d.cpu import compat as cpu_compat
    from threestudio_dreambooth3d.environment.threestudio_root import locate_threestudio
    from threestudio_dreambooth3d.errors import ThreestudioNotFoundError

    try:
        root = locate_threestudio(need_launch=False)
    except ThreestudioNotFoundError as e:
        sys.exit(str(e))
    cpu_compat.enable(root, cpu=device.type != "cuda")
    import threestudio

    return threestudio


def main(argv=None) -> dict:
    parser = common.make_parser(__doc__.split("\n")[0], steps=10, warmup=2)
    parser.set_defaults(model="sd21-random" if torch.cuda.is_available() else "tiny-512")
    parser.add_argument("--batch-size", type=int, default=1, help="renders per step (dreamfusion-sd uses 1)")
    parser.add_argument("--render-size", type=int, default=64, help="render height/width before the 512 px upsampling")
    args = parser.parse_args(argv)
    device = common.setup(args)
    model = common.resolve_model(args.model, args.models_dir)
    from threestudio_dreambooth3d.core.sd_models import load_sd_components

    resolution = load_sd_components(model).resolution
    if resolution != 512:
        sys.exit(f"--model {args.model} is {resolution} px native, but threestudio's stable-diffusion-guidance always "
                 "upsamples renders to 512 px, so the two guidances would run the UNet at different sizes. "
                 "Use --model tiny-512 (CPU) or sd21-random (GPU).")

    threestudio = import_threestudio(device)
    common_cfg = {"pretrained_model_name_or_path": model, "guidance_scale": 100.0, "min_step_percent": 0.02,
                  "max_step_percent": 0.98, "weighting_strategy": "sds",
                  "half_precision_weights": device.type == "cuda"}
    ours = threestudio.find("dreambooth-sds-guidance")(common_cfg)
    stock = threestudio.find("stable-diffusion-guidance")(common_cfg)
    # the prompt processor caches embeddings under ./.threestudio_cache
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bench-sds-") as tmp:
        os.chdir(tmp)
        try:
            processor = threestudio.find("dreambooth-prompt-processor")(
                {"pretrained_model_name_or_path": model, "prompt": "a sks dog"})
            prompt_utils = processor()
        finally:
            os.chdir(cwd)

    b, size = args.batch_size, args.render_size
    generator = torch.Generator().manual_seed(0)
    rgb = torch.rand(b, size, size, 3, generator=generator).to(device).requires_grad_(True)
    elevation = (torch.rand(b, generator=generator) * 40 - 10).to(device)
    azimuth = (torch.rand(b, generator=generator) * 360 - 180).to(device)
    camera_distances = (torch.rand(b, generator=generator) * 0.5 + 1.0).to(device)

    def step_with(guidance):
        def step():
            rgb.grad = None
            out = guidance(rgb, prompt_utils, elevation, azimuth, camera_distances, rgb_as_latents=False)
            out["loss_sds"].backward()
        return step

    variants = {"ours (dreambooth-sds-guidance)": step_with(ours),
                "threestudio stable-diffusion-guidance": step_with(stock)}
    memory = common.PeakMemory(device)
    results = common.compare(variants, device, args.steps, args.warmup, args.repeats, memory)
    extra = {"setup": (f"batch {b} renders {size}x{size} -> 512 px, UNet {ours.unet.dtype}, "
                       f"same weights from {model}; step = guidance call + loss_sds.backward()")}
    name_ours, name_ref = variants
    return common.report("SDS guidance step", args, device, results, name_ours, name_ref, memory, extra)


if __name__ == "__main__":
    main()
