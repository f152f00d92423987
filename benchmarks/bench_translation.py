"""Seconds and peak memory to translate a stage-2 orbit: batched over views vs one call per view.

Both variants are ``threestudio_dreambooth3d.core.img2img.translate`` (SDEdit through
diffusers' img2img pipeline) on the same components, views, prompts and per-view seeds;
they differ only in how many views share one pipeline call: ``--batch-sizes`` views
(stage 2's config uses 4) against 1. One step translates all ``--views`` renders.
Defaults follow configs/dreambooth3d-stage2.yaml: 16 views rendered at 512 px (its
``data.eval_width``/``eval_height``: stage 2 translates test renders), strength 0.5, guidance
7.5, 50 DDIM steps (25 of them run at strength 0.5). ``--render-size`` changes only the
size of the random renders; translate() resizes them to the model's resolution either way.

    python benchmarks/bench_translation.py --model tiny --steps 3
    python benchmarks/bench_translation.py --model sd21-random --device cuda --steps 2 --batch-sizes 4,8,16
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VIEW_NAMES = ("front", "side", "back", "side")


def main(argv=None) -> dict:
    parser = common.make_parser(__doc__.split("\n")[0], steps=2, warmup=1)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--render-size", type=int, default=512)
    parser.add_argument("--batch-sizes", default="4,16", help="comma-separated views per pipeline call to compare with 1")
    parser.add_argument("--inference-steps", type=int, default=50)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    args = parser.parse_args(argv)
    device = common.setup(args)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if not batch_sizes or min(batch_sizes) < 1:
        sys.exit("--batch-sizes must list positive integers, e.g. 4,16")
    model = common.resolve_model(args.model, args.models_dir)

    from threestudio_dreambooth3d.core.img2img import translate
    from threestudio_dreambooth3d.core.sd_models import load_sd_components

    dtype = torch.float16 if device.type == "cuda" else torch.float32  # as the guidance loads it
    components = load_sd_components(model, device=device, dtype=dtype).freeze()
    n = args.views
    views = torch.rand(n, 3, args.render_size, args.render_size, generator=torch.Generator().manual_seed(0)).to(device)
    prompts = [f"a sks dog, {VIEW_NAMES[(4 * i) // n % 4]} view" for i in range(n)]

    def step_with(batch_size):
        def step():
            return translate(components, views, prompts, strength=args.strength, guidance_scale=args.guidance_scale,
                             num_inference_steps=args.inference_steps, seed=0, batch_size=batch_size)
        return step

    variants = {f"ours, batched ({b} views/call)": step_with(b) for b in batch_sizes}
    variants["one call per view"] = step_with(1)
    memory = common.PeakMemory(device)
    results = common.compare(variants, device, args.steps, args.warmup, args.repeats, memory)
    ref = "one call per view"
    extra = {
        "setup": (f"{n} views {args.render_size}px -> {components.resolution}px, strength {args.strength}, "
                  f"{args.inference_steps} DDIM steps, CFG {args.guidance_scale}, {dtype}; step = the whole orbit"),
        "speedups": ", ".join(f"{b} views/call: {results[ref].seconds / results[k].seconds:.2f}x"
                              for b, k in zip(batch_sizes, variants)),
    }
    return common.report("Stage-2 translation", args, device, results, next(iter(variants)), ref, memory, extra)


if __name__ == "__main__":
    main()
