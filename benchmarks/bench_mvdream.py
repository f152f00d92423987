"""Seconds and peak memory per MVDream UNet pass: our MultiViewUNet vs the original MultiViewUNetModel.

Both run the same random weights (the original's, converted with our converter's key map) on
the same batch: ``--objects`` objects x 4 views with their cameras, the shape of one
multi-view SDS step (MVDream-threestudio's batch 8 at 256 px = 2 objects, 32x32 latents).
Also printed: the relative difference of the two outputs (fp32 only).

Needs the original code: a checkout of github bytedance/MVDream named by ``MVDREAM_SRC``.

    MVDREAM_SRC=/path/to/MVDream python benchmarks/bench_mvdream.py --model tiny --steps 5
    MVDREAM_SRC=/path/to/MVDream python benchmarks/bench_mvdream.py --model sd21-4view --device cuda --dtype fp16
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODELS = ("tiny", "sd21-4view")


def original_class():
    src = os.environ.get("MVDREAM_SRC")
    if src:
        sys.path.insert(0, src)
    try:
        from mvdream.ldm.modules.diffusionmodules.openaimodel import MultiViewUNetModel
    except ImportError as e:
        sys.exit(f"the original MVDream code is not importable ({e}); set MVDREAM_SRC to a checkout of "
                 "github.com/bytedance/MVDream")
    return MultiViewUNetModel


def main() -> None:
    p = common.make_parser(__doc__.splitlines()[0], steps=5, warmup=1, repeats=3)
    p.set_defaults(model="tiny")
    p.add_argument("--objects", type=int, default=2, help="objects per batch (4 views each)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    args = p.parse_args()
    if args.model not in MODELS:
        sys.exit(f"--model must be one of {', '.join(MODELS)}")
    device = common.setup(args)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]

    from threestudio_dreambooth3d.core.mvdream import standard_cameras
    from threestudio_dreambooth3d.core.mvdream_convert import SD21_4VIEW_UNET, unet_from_original
    from threestudio_dreambooth3d.tiny_models.mvdream import TINY_UNET_PARAMS

    params = dict(TINY_UNET_PARAMS if args.model == "tiny" else SD21_4VIEW_UNET)
    torch.manual_seed(0)
    original = original_class()(**params).eval()
    with torch.no_grad():  # the original zero-initialises output layers: give every weight a value
        for q in original.parameters():
            q.normal_(0, 0.02)
    ours = unet_from_original(original.state_dict(), params, source="random weights").eval()
    original.to(device, dtype)
    ours.to(device, dtype)

    n = 4 * args.objects
    size = params["image_size"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, size, size, generator=g).to(device, dtype)
    ctx = torch.randn(n, 77, params["context_dim"], generator=g).to(device, dtype)
    cam = standard_cameras(4).repeat(args.objects, 1).to(device, dtype)
    t = torch.full((n,), 500, device=device)

    @torch.no_grad()
    def run_original():
        return original(x, t, context=ctx, camera=cam, num_frames=4)

    @torch.no_grad()
    def run_ours():
        return ours(x, t, encoder_hidden_states=ctx, camera=cam, num_frames=4).sample

    extra = {"objects": args.objects, "dtype": args.dtype, "latent_size": size}
    if dtype == torch.float32:
        a, b = run_ours().float(), run_original().float()
        extra["relative_difference"] = ((a - b).norm() / b.norm()).item()
        print(f"[bench] relative difference ours vs original: {extra['relative_difference']:.3g}", flush=True)
    memory = common.PeakMemory(device)
    results = common.compare({"original MultiViewUNetModel": run_original, "ours MultiViewUNet": run_ours},
                             device, args.steps, args.warmup, args.repeats, memory)
    common.report(f"MVDream UNet pass, {args.objects} objects x 4 views, {args.dtype}", args, device, results,
                  ours="ours MultiViewUNet", reference="original MultiViewUNetModel", memory=memory, extra=extra)


if __name__ == "__main__":
    main()
