"""DreamBooth finetuning (instance + class-prior loss) with named checkpoints from one run.

DreamBooth3D needs two models from the *same* run (an early "partial" checkpoint for
stage 1 and the "full" one for stage 2) and later a multi-view run that continues
from "partial" (paper Fig. 2) on real photos plus captioned pseudo views. One trainer
does all three; a continued run's checkpoints also hold the weights it started from and
did not train (:mod:`.checkpoints`), so they load to exactly the model in memory.

Inputs never change during a run (no augmentation), so VAE latent distributions and,
with a frozen text encoder, prompt embeddings are computed once up front instead of
every step as diffusers' example script does.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoints
from . import lora
from . import train_options as opts
from .sd_models import SDComponents, load_sd_components, resolve_device
from .subject import load_images, load_subject_images
from ..defaults import MIXED_PRECISIONS, TRAIN_MODES, MixedPrecision, TrainMode
from ..errors import ConfigError, RunMismatchError, TrainingDivergedError
from ..fs import atomic_write_file, fingerprint, sha256_files

log = logging.getLogger(__name__)

STATE_FILE = "state/latest.pt"


@dataclass
class DreamBoothConfig:
    pretrained_model: str
    subject_dir: str
    class_noun: str
    output_dir: str
    identifier: str = "sks"
    instance_prompt: Optional[str] = None  # default "a {identifier} {class_noun}"
    class_prompt: Optional[str] = None  # default "a {class_noun}"
    # multi-view finetuning: extra (image path, caption) pairs and the checkpoint to continue from
    extra_images: List[Tuple[str, str]] = field(default_factory=list)
    init_checkpoint: Optional[str] = None
    prior_preservation: bool = True
    prior_loss_weight: float = 1.0
    num_class_images: int = 200
    class_images_dir: Optional[str] = None  # default {output_dir}/class_images; shareable between runs
    class_inference_steps: int = 25
    resolution: Optional[int] = None  # default: the model's native resolution
    batch_size: int = 1
    max_steps: int = 800
    checkpoint_steps: Dict[str, int] = field(default_factory=lambda: {"partial": 200, "full": 800})
    mode: TrainMode = "lora"
    lora_rank: int = 16
    lora_alpha: Optional[float] = None  # default: rank
    learning_rate: Optional[float] = None  # default 1e-4 (lora) / 5e-6 (full)
    train_text_encoder: bool = False
    text_encoder_learning_rate: Optional[float] = None  # default: learning_rate
    max_grad_norm: float = 1.0
    mixed_precision: MixedPrecision = "auto"  # bf16/fp16 on CUDA, fp32 on a CPU (train_options.select_amp_dtype)
    gradient_checkpointing: Optional[bool] = None  # default: on in full mode
    use_8bit_adam: bool = False  # bitsandbytes' AdamW8bit (pip install threestudio-dreambooth3d[8bit])
    save_state_minutes: float = 10.0  # resumable state: written this often and at the end
    seed: int = 0
    device: Optional[str] = None

    def __post_init__(self) -> None:
        if self.mode not in TRAIN_MODES:
            raise ConfigError(f"mode must be one of {', '.join(TRAIN_MODES)}, not {self.mode!r}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, not {self.mixed_precision!r}")
        if not self.save_state_minutes > 0:
            raise ConfigError(f"save_state_minutes must be > 0, not {self.save_state_minutes}")
        bad = {k: s for k, s in self.checkpoint_steps.items() if not 0 < int(s) <= self.max_steps}
        if bad:
            raise ConfigError(f"checkpoint steps {bad} must lie in 1..max_steps ({self.max_steps})")
        self.checkpoint_steps = {k: int(v) for k, v in self.checkpoint_steps.items()}
        for name, lr in (("learning_rate", self.learning_rate), ("text_encoder_learning_rate", self.text_encoder_learning_rate)):
            if lr is not None and not (math.isfinite(lr) and lr > 0):
                raise ConfigError(f"{name} must be a finite number above 0, not {lr} (e.g. --lr 1e-4)")
        if not self.class_noun.strip() or not self.identifier.strip():
            raise ConfigError("class_noun and identifier must not be empty (they make the prompt 'a sks dog')")
        self.extra_images = [(str(p), str(c)) for p, c in self.extra_images]

    @property
    def instance_prompt_text(self) -> str:
        return self.instance_prompt or f"a {self.identifier} {self.class_noun}"

    @property
    def class_prompt_text(self) -> str:
        return self.class_prompt or f"a {self.class_noun}"

    @property
    def lr(self) -> float:
        return self.learning_rate or (1e-4 if self.mode == "lora" else 5e-6)

    @property
    def class_dir(self) -> Path:
        return Path(self.class_images_dir or Path(self.output_dir) / "class_images")


@dataclass
class TrainResult:
    checkpoints: Dict[str, Path]
    history: List[Dict[str, float]]
    resumed_from: int = 0


def run_fingerprint(cfg: DreamBoothConfig, subject_paths: Sequence[Path]) -> str:
    """What must match for a saved training state to be resumed."""
    d = asdict(cfg)
    for k in ("output_dir", "device", "save_state_minutes", "class_images_dir", "gradient_checkpointing"):
        d.pop(k)
    d["subject_digest"] = sha256_files(subject_paths)
    d["extra_digest"] = sha256_files([p for p, _ in cfg.extra_images])
    return fingerprint(d)[:16]


def ensure_class_images(cfg: DreamBoothConfig, components: SDComponents) -> List[Path]:
    """Generate (once) and cache the prior-preservation images from the base model."""
    from PIL import Image

    folder = cfg.class_dir
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("class_*.png"))
    missing = cfg.num_class_images - len(existing)
    if missing > 0:
        from .sampling import generate_images

        log.info("Generating %d class images for %r into %s", missing, cfg.class_prompt_text, folder)
        start = len(existing)
        for i in tqdm(range(missing), desc="class images", leave=False):
            img = generate_images(components, cfg.class_prompt_text, 1, cfg.class_inference_steps, seed=cfg.seed + 10_000 + start + i)[0]
            arr = (img.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
            path = folder / f"class_{start + i:05d}.png"
            atomic_write_file(path, lambda tmp, arr=arr: Image.fromarray(arr).save(tmp, format="PNG"))
    return sorted(folder.glob("class_*.png"))[: cfg.num_class_images]


class DreamBoothTrainer:
    """Build with a config, call :meth:`train`. See the module docstring for what it caches."""

    clock: Callable[[], float] = staticmethod(time.monotonic)  # read once per step by the state-save policy

    def __init__(self, cfg: DreamBoothConfig, components: Optional[SDComponents] = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        # precision is settled before anything loads (fp16 on a CPU is refused here)
        self.amp_dtype = opts.select_amp_dtype(cfg.mixed_precision, self.device.type,
                                               opts.device_supports_bf16(self.device))
        opts.enable_tf32(self.device)
        self.out = Path(cfg.output_dir)
        self.components = components or load_sd_components(cfg.pretrained_model)
        self.components.to(self.device).freeze()
        self.resolution = cfg.resolution or self.components.resolution
        # photos are validated before anything slow happens
        self.instance_pixels, self.subject_paths = load_subject_images(cfg.subject_dir, self.resolution)
        self.instance_prompts = [cfg.instance_prompt_text] * len(self.subject_paths)
        if cfg.extra_images:
            extra = load_images([p for p, _ in cfg.extra_images], self.resolution, min_side=1)
            self.instance_pixels = torch.cat([self.instance_pixels, extra])
            self.instance_prompts += [c for _, c in cfg.extra_images]
        self.class_pixels = self._load_class_pixels() if cfg.prior_preservation else None
        self._prepare_trainable()
        self._cache_inputs()

    # -- setup -------------------------------------------------------------------------------
    def _load_class_pixels(self) -> Optional[torch.Tensor]:
        """The prior-preservation images, generated by the base model before any training."""
        class_paths = ensure_class_images(self.cfg, self.components)
        return load_images(class_paths, self.resolution, min_side=1) if class_paths else None

    def _prepare_trainable(self) -> None:
        cfg, comps = self.cfg, self.components
        trained = {"unet": True, "text_encoder": cfg.train_text_encoder}
        # which modules' plain weights differ from the base model's (saved whole in checkpoints)
        self.base_changed = {name: trained[name] and cfg.mode == "full" for name in checkpoints.MODULES}
        if cfg.init_checkpoint:
            init_layers = checkpoints.weight_layers(checkpoints.read_meta(cfg.init_checkpoint))
            # an init LoRA stays an adapter where it still is one: continued by a LoRA run, or
            # not trained at all; a full run folds it into the weights it then trains
            merge = [n for n in init_layers if trained[n] and cfg.mode == "full"]
            checkpoints.apply_checkpoint(comps, cfg.init_checkpoint, merge_lora=merge)
            for name, layers in init_layers.items():
                self.base_changed[name] |= name in merge or any(layer["kind"] == "full" for layer in layers)
        torch.manual_seed(cfg.seed)  # LoRA init is random: same seed, same run (and resumable)
        for name in [n for n in checkpoints.MODULES if trained[n]]:
            module = getattr(comps, name)
            if cfg.mode == "lora":
                if lora.lora_shape(module) is None:
                    lora.add_lora(module, cfg.lora_rank, cfg.lora_alpha or cfg.lora_rank, checkpoints.LORA_TARGETS[name])
                for n, p in module.named_parameters():
                    p.requires_grad_("lora_" in n)
            else:
                module.requires_grad_(True)
            module.train()
            # trainable weights in fp32 even when the frozen rest runs in half precision
            for p in module.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        opts.cast_frozen(comps.modules(), self.amp_dtype)
        if opts.wants_gradient_checkpointing(cfg.gradient_checkpointing, cfg.mode):
            opts.enable_gradient_checkpointing(comps.unet, comps.text_encoder if cfg.train_text_encoder else None)
        groups = [{"params": [p for p in comps.unet.parameters() if p.requires_grad], "lr": cfg.lr}]
        if cfg.train_text_encoder:
            groups.append({"params": [p for p in comps.text_encoder.parameters() if p.requires_grad],
                           "lr": cfg.text_encoder_learning_rate or cfg.lr})
        self.optimizer = opts.make_optimizer(groups, cfg.use_8bit_adam)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    @torch.no_grad()
    def _encode_pixels(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        means, stds = [], []
        vae = self.components.vae
        for chunk in pixels.split(8):
            dist = vae.encode(chunk.to(self.device, vae.dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        return torch.cat(means), torch.cat(stds)

    def _cache_inputs(self) -> None:
        self.inst_mean, self.inst_std = self._encode_pixels(self.instance_pixels)
        self.inst_ids = self.components.tokenize(self.instance_prompts)
        if self.class_pixels is not None:
            self.cls_mean, self.cls_std = self._encode_pixels(self.class_pixels)
            self.cls_ids = self.components.tokenize([self.cfg.class_prompt_text])
        if not self.cfg.train_text_encoder:
            with torch.no_grad():
                self.inst_emb = self.components.text_encoder(self.inst_ids)[0]
                if self.class_pixels is not None:
                    self.cls_emb = self.components.text_encoder(self.cls_ids)[0]

    # -- one step ----------------------------------------------------------------------------
    def _embed(self, ids: torch.Tensor, cached: Optional[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        if cached is not None:
            return cached[index]
        return self.components.text_encoder(ids[index])[0]

    def sample_batch(self, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """Latents, text conditioning and an is-prior mask; class images fill the second half."""
        n = self.cfg.batch_size
        idx = torch.randint(len(self.inst_mean), (n,), generator=generator).to(self.device)
        eps = torch.randn(self.inst_mean[idx].shape, generator=generator).to(self.device)
        latents = self.inst_mean[idx] + self.inst_std[idx] * eps
        cond = self._embed(self.inst_ids, getattr(self, "inst_emb", None), idx)
        is_prior = torch.zeros(n, dtype=torch.bool, device=self.device)
        if self.class_pixels is not None:
            cidx = torch.randint(len(self.cls_mean), (n,), generator=generator).to(self.device)
            ceps = torch.randn(self.cls_mean[cidx].shape, generator=generator).to(self.device)
            latents = torch.cat([latents, self.cls_mean[cidx] + self.cls_std[cidx] * ceps])
            zero = torch.zeros(n, dtype=torch.long, device=self.device)
            cond = torch.cat([cond, self._embed(self.cls_ids, getattr(self, "cls_emb", None), zero)])
            is_prior = torch.cat([is_prior, torch.ones(n, dtype=torch.bool, device=self.device)])
        latents = latents * self.components.vae.config.scaling_factor
        return {"latents": latents, "cond": cond, "is_prior": is_prior}

    def loss(self, batch: Dict[str, torch.Tensor], generator: torch.Generator) -> Dict[str, torch.Tensor]:
        sched = self.components.scheduler
        latents = batch["latents"]
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(self.device)
        noisy = sched.add_noise(latents, noise, t)
        target = sched.get_velocity(latents, noise, t) if self.components.prediction_type == "v_prediction" else noise
        unet = self.components.unet
        pred = unet(noisy.to(unet.dtype), t, encoder_hidden_states=batch["cond"].to(unet.dtype)).sample.float()
        per_item = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        prior = batch["is_prior"]
        instance_loss = per_item[~prior].mean()
        out = {"instance_loss": instance_loss, "loss": instance_loss}
        if prior.any():
            out["prior_loss"] = per_item[prior].mean()
            out["loss"] = instance_loss + self.cfg.prior_loss_weight * out["prior_loss"]
        return out

    # -- state -------------------------------------------------------------------------------
    def _trainable_state(self) -> Dict[str, Dict[str, torch.Tensor]]:
        comps = self.components
        mods = {"unet": comps.unet, **({"text_encoder": comps.text_encoder} if self.cfg.train_text_encoder else {})}
        return {k: {n: p.detach().cpu().clone() for n, p in m.named_parameters() if p.requires_grad} for k, m in mods.items()}

    def _save_state(self, step: int, generator: torch.Generator, fingerprint: str, history) -> None:
        checkpoints.atomic_torch_save(
            {"step": step, "fingerprint": fingerprint, "params": self._trainable_state(),
             "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
             "generator": generator.get_state(), "history": history},
            self.out / STATE_FILE,
        )

    def _load_state(self, fingerprint: str, generator: torch.Generator):
        path = self.out / STATE_FILE
        if not path.exists():
            return 0, []
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["fingerprint"] != fingerprint:
            raise RunMismatchError(
                f"{self.out} holds a finetuning run with different inputs or settings ({path}). "
                "Use a new --out folder, or delete that folder to start over."
            )
        mods = {"unet": self.components.unet, "text_encoder": self.components.text_encoder}
        for key, params in state["params"].items():
            named = dict(mods[key].named_parameters())
            with torch.no_grad():
                for n, v in params.items():
                    named[n].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        return state["step"], state["history"]

    def save_named_checkpoint(self, name: str, step: int) -> Path:
        cfg = self.cfg
        meta = {
            "name": name, "step": step, "mode": cfg.mode, "base_model": checkpoints.model_source(cfg.pretrained_model),
            "lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha or cfg.lora_rank,
            "train_text_encoder": cfg.train_text_encoder,
            "identifier": cfg.identifier, "class_noun": cfg.class_noun,
            "instance_prompt": cfg.instance_prompt_text, "init_checkpoint": cfg.init_checkpoint,
            "num_extra_images": len(cfg.extra_images),
        }
        modules = {name: (getattr(self.components, name), self.base_changed[name]) for name in checkpoints.MODULES}
        return checkpoints.save_checkpoint(self.out / "checkpoints" / name, modules, meta)

    # -- loop --------------------------------------------------------------------------------
    def train_step(self, generator: torch.Generator) -> Dict[str, float]:
        """One optimiser step on a fresh batch; returns its losses (floats)."""
        cfg = self.cfg
        with opts.autocast(self.device, self.amp_dtype):
            losses = self.loss(self.sample_batch(generator), generator)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: v.item() for k, v in losses.items()}

    def _diverged(self, what: str, step: int) -> TrainingDivergedError:
        cfg = self.cfg
        return TrainingDivergedError(
            f"DreamBooth training diverged: {what} at step {step} (learning rate {cfg.lr:g}, mixed precision "
            f"{cfg.mixed_precision}); no checkpoint was written at or after it. The same options diverge "
            "again: lower --lr (e.g. to a tenth) or train in fp32 (--mixed-precision no), with a new --out.")

    def train(self, on_step: Optional[Callable[[int, Dict[str, float]], None]] = None) -> TrainResult:
        """Run (or resume) to ``max_steps``; ``on_step(step, losses)`` is called after each step."""
        cfg = self.cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        fingerprint = run_fingerprint(cfg, self.subject_paths)
        start, history = self._load_state(fingerprint, generator)
        ckpt_at = {s: n for n, s in cfg.checkpoint_steps.items()}
        saves = opts.StateSavePolicy(cfg.save_state_minutes * 60, self.clock())
        bar = tqdm(range(start + 1, cfg.max_steps + 1), initial=start, total=cfg.max_steps, desc="DreamBooth")
        for step in bar:
            record = {"step": step, **self.train_step(generator)}
            if not math.isfinite(record["loss"]):
                raise self._diverged(f"the loss became {record['loss']}", step)
            now = self.clock()
            save_state = saves.due(step, cfg.max_steps, now)
            saving = step in ckpt_at or save_state
            bad = checkpoints.nonfinite_tensors(self._trainable_state()) if saving else []
            if bad:  # the last update may have broken the weights with a finite loss: nothing NaN is saved
                raise self._diverged(f"{len(bad)} trained tensors became NaN/inf (e.g. {bad[0]})", step)
            history.append(record)
            bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "step"})
            if step in ckpt_at:
                self.save_named_checkpoint(ckpt_at[step], step)
            if save_state:
                self._save_state(step, generator, fingerprint, history)
                saves.saved(now)
            if on_step is not None:
                on_step(step, record)
        bar.close()
        return TrainResult(
            checkpoints={n: self.out / "checkpoints" / n for n in cfg.checkpoint_steps},
            history=history,
            resumed_from=start,
        )


def train_dreambooth(cfg: DreamBoothConfig, on_step=None) -> TrainResult:
    # a config subclass names its own trainer (MVDreamBoothConfig -> core.mvdreambooth)
    return getattr(cfg, "trainer_class", DreamBoothTrainer)(cfg).train(on_step=on_step)
