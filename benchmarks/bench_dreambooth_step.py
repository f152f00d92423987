"""Seconds and peak memory per DreamBooth training step: our trainer vs a re-encoding loop.

Ours: ``DreamBoothTrainer.train_step()`` (the body of ``train()``) with the default settings (LoRA rank 16 on the UNet
attention, batch 1 instance + 1 class image, prior preservation, fp32), which
VAE-encodes the photos and text-encodes the prompts once up front.

Reference: the inner loop of diffusers' ``examples/dreambooth/train_dreambooth_lora.py``
(no pre-computed text embeddings, the default): every step it VAE-encodes the pixel
batch, tokenizes and text-encodes the prompts, then noise, UNet, MSE with the prior
term, backward, grad clipping, optimizer and LR-scheduler step. It runs on the *same*
components (the trainer's, LoRA included) and the same batch composition. Pixels are
held in memory rather than decoded from disk each step as the example's dataset does,
which only flatters the reference.

    python benchmarks/bench_dreambooth_step.py --model tiny --steps 20
    python benchmarks/bench_dreambooth_step.py --model sd21-random --device cuda --steps 20
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the trainer's progress bar would interleave with the table

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


class ReEncodingLoop:
    """diffusers' train_dreambooth_lora.py inner loop, with prior preservation, on given components."""

    def __init__(self, components, instance_pixels, class_pixels, instance_prompts, class_prompt, params,
                 lr, max_grad_norm, prior_loss_weight, batch_size, device, seed=0):
        from diffusers.optimization import get_scheduler

        self.c = components
        self.instance_pixels, self.class_pixels = instance_pixels, class_pixels
        self.instance_prompts, self.class_prompt = instance_prompts, class_prompt
        self.params = list(params)
        self.max_grad_norm, self.prior_loss_weight = max_grad_norm, prior_loss_weight
        self.batch_size, self.device = batch_size, device
        # the example's defaults: AdamW betas (0.9, 0.999), weight decay 1e-2, eps 1e-8; constant LR
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.lr_scheduler = get_scheduler("constant", optimizer=self.optimizer)
        self.generator = torch.Generator().manual_seed(seed)

    def _batch(self):
        # DreamBoothDataset items + collate_fn: instance examples first, then class examples
        n = self.batch_size
        i = torch.randint(len(self.instance_pixels), (n,), generator=self.generator)
        j = torch.randint(len(self.class_pixels), (n,), generator=self.generator)
        pixel_values = torch.cat([self.instance_pixels[i], self.class_pixels[j]])
        prompts = [self.instance_prompts[k] for k in i.tolist()] + [self.class_prompt] * n
        tok = self.c.tokenizer
        input_ids = tok(prompts, truncation=True, padding="max_length", max_length=tok.model_max_length,
                        return_tensors="pt").input_ids
        return pixel_values, input_ids

    def step(self) -> float:
        # the other variant shares these LoRA weights and may have left gradients behind
        for p in self.params:
            p.grad = None
        c, device = self.c, self.device
        pixel_values, input_ids = self._batch()
        pixel_values = pixel_values.to(device, dtype=c.vae.dtype)
        model_input = c.vae.encode(pixel_values).latent_dist.sample() * c.vae.config.scaling_factor
        noise = torch.randn_like(model_input)
        bsz = model_input.shape[0]
        timesteps = torch.randint(0, c.scheduler.config.num_train_timesteps, (bsz,), device=device).long()
        noisy_model_input = c.scheduler.add_noise(model_input, noise, timesteps)
        encoder_hidden_states = c.text_encoder(input_ids.to(device), attention_mask=None, return_dict=False)[0]
        model_pred = c.unet(noisy_model_input, timesteps, encoder_hidden_states).sample
        if c.scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = c.scheduler.get_velocity(model_input, noise, timesteps)
        model_pred, model_pred_prior = torch.chunk(model_pred, 2, dim=0)
        target, target_prior = torch.chunk(target, 2, dim=0)
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        prior_loss = F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="mean")
        loss = loss + self.prior_loss_weight * prior_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        return loss.detach().item()


def write_class_images(folder: Path, n: int, size: int) -> Path:
    """Stand-in prior images named as the trainer caches them, so no sampling is needed."""
    from threestudio_dreambooth3d.tiny_models.sd import make_subject_images

    if len(list(folder.glob("class_*.png"))) >= n:
        return folder
    make_subject_images(folder, n=n, size=size, color=(40, 90, 200), seed=1)
    for i, p in enumerate(sorted(folder.glob("subject_*.png"))):
        p.rename(folder / f"class_{i:05d}.png")
    return folder


def main(argv=None) -> dict:
    parser = common.make_parser(__doc__.split("\n")[0], steps=10)
    parser.add_argument("--num-class-images", type=int, default=8,
                        help="prior images (synthetic stand-ins); the per-step cost does not depend on it")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    device = common.setup(args)
    model = common.resolve_model(args.model, args.models_dir)

    from threestudio_dreambooth3d.core import train_options
    from threestudio_dreambooth3d.core.dreambooth import DreamBoothConfig, DreamBoothTrainer
    from threestudio_dreambooth3d.core.sd_models import load_sd_components
    from threestudio_dreambooth3d.tiny_models.sd import make_subject_images

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench-dreambooth-")
    work = Path(args.workdir or tmp.name)
    components = load_sd_components(model)
    size = max(64, components.resolution)
    subject = make_subject_images(work / "subject", n=4, size=size)
    class_dir = write_class_images(work / "class_images", args.num_class_images, size)
    total = args.warmup + args.steps * args.repeats
    cfg = DreamBoothConfig(
        pretrained_model=model, subject_dir=str(subject), class_noun="dog", output_dir=str(work / "run"),
        class_images_dir=str(class_dir), num_class_images=args.num_class_images,
        max_steps=total, checkpoint_steps={"full": total},
        device=str(device),
    )
    print(f"[bench] building the trainer (caches latents and embeddings of {len(list(subject.iterdir()))} "
          f"photos + {args.num_class_images} class images)", flush=True)
    trainer = DreamBoothTrainer(cfg, components=components)
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    reference = ReEncodingLoop(
        trainer.components, trainer.instance_pixels, trainer.class_pixels, trainer.instance_prompts,
        cfg.class_prompt_text, params, lr=cfg.lr, max_grad_norm=cfg.max_grad_norm,
        prior_loss_weight=cfg.prior_loss_weight, batch_size=cfg.batch_size, device=device, seed=cfg.seed,
    )
    generator = torch.Generator().manual_seed(cfg.seed)

    def reference_step() -> float:
        # the example script runs under accelerate's autocast: the same dtype as ours
        with train_options.autocast(device, trainer.amp_dtype):
            return reference.step()

    variants = {"ours (DreamBoothTrainer)": lambda: trainer.train_step(generator), "re-encode every step": reference_step}
    memory = common.PeakMemory(device)
    results = common.compare(variants, device, args.steps, args.warmup, args.repeats, memory)
    extra = {
        "setup": (f"{cfg.mode} rank {cfg.lora_rank}, batch {cfg.batch_size} instance + {cfg.batch_size} class, "
                  f"{components.resolution} px, {sum(p.numel() for p in params) / 1e6:.2f}M trainable params, "
                  f"mixed_precision={cfg.mixed_precision} (autocast {trainer.amp_dtype or 'off'})"),
    }
    ours, ref = variants
    summary = common.report("DreamBooth training step", args, device, results, ours, ref, memory, extra)
    if tmp is not None:
        tmp.cleanup()
    return summary


if __name__ == "__main__":
    main()
