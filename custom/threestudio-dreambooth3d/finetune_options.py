"""The options of ``dreambooth3d finetune``, in one typed place.

:class:`FinetuneOptions` is what the command line means: the ``finetune`` CLI builds its
argparse options from the fields (flag, help, type and choices in each field's metadata), the
pipeline's steps read a finetune command's options through :meth:`FinetuneOptions.parse`
rather than through the CLI, and :meth:`FinetuneOptions.dreambooth_config` is the one mapping
to the trainer's :class:`~threestudio_dreambooth3d.core.dreambooth.DreamBoothConfig`.
Torch-free: ``--help`` is built from it without loading a model library.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

from .defaults import BASE_MODELS, DEFAULT_MODEL, MIXED_PRECISIONS, TRAIN_MODES

if TYPE_CHECKING:
    from .core.dreambooth import DreamBoothConfig


def parse_checkpoints(text: str) -> Dict[str, int]:
    """``partial=200,full=800`` -> {"partial": 200, "full": 800}."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, step = item.partition("=")
        if not sep or not name or not step.isdigit():
            raise argparse.ArgumentTypeError(f"bad checkpoint spec {item!r}; expected NAME=STEP, e.g. partial=200,full=800")
        out[name] = int(step)
    if not out:
        raise argparse.ArgumentTypeError("at least one NAME=STEP checkpoint is needed")
    return out


def learning_rate(text: str) -> float:
    """``--lr``: a finite number above zero (nan, inf, 0 or a negative rate cannot train)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; e.g. --lr 1e-4") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a finite positive learning rate; e.g. --lr 1e-4")
    return value


def nonempty(text: str) -> str:
    """A word the prompts are built from: an empty one would train on "a sks "."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (e.g. dog, backpack, toy)")
    return text.strip()


class _RaisingParser(argparse.ArgumentParser):
    """Parsing a command line the pipeline builds: a bad option raises instead of exiting."""

    def error(self, message: str):  # type: ignore[override]
        from .errors import ConfigError

        raise ConfigError(f"dreambooth3d finetune: {message}")


def _option(help: str, default: Any = MISSING, type: Optional[Callable] = None, flag: Optional[str] = None,
            **argparse_kwargs: Any) -> Any:
    """A field that is also a command-line option: ``flag`` defaults to ``--field-name``."""
    meta = {"help": help, "type": type, "flag": flag, "argparse": argparse_kwargs}
    return field(default=default, metadata=meta)


@dataclass
class FinetuneOptions:
    subject: str = _option("folder with 3-6 photos of the subject (png/jpg/webp)")
    class_noun: str = _option("what the subject is, e.g. dog, backpack, toy", type=nonempty)
    out: str = _option("output folder (checkpoints/, class_images/, state/)")
    model: str = _option(f"base Stable Diffusion: hub id or local diffusers folder (default {DEFAULT_MODEL})",
                         DEFAULT_MODEL)
    base_model: str = _option(
        "sd: Stable Diffusion (--model an SD hub id/folder); mvdream: MVDream's multi-view model (--model a "
        "folder from `dreambooth3d convert-mvdream`): photos train as single views, a multi-view class prior "
        "(4-view sets at MVDream's standard cameras) and parameter preservation keep it multi-view (default sd)",
        "sd", choices=BASE_MODELS)
    param_preservation_weight: float = _option(
        "mvdream: weight of the parameter-preservation loss ||theta - theta_0||_1 / N (MVDream paper; 0: off; "
        "default 1.0)", 1.0, float)
    identifier: str = _option("rare token naming the subject in prompts (default sks)", "sks", nonempty)
    instance_prompt: Optional[str] = _option("prompt for the photos (default 'a {identifier} {class}')", None)
    steps: int = _option("total training steps (default 800)", 800, int)
    checkpoints: Optional[Dict[str, int]] = _option(
        "named checkpoints as NAME=STEP,... (default partial=STEPS/4,full=STEPS, i.e. partial=200,full=800)",
        None, parse_checkpoints)
    mode: str = _option("train LoRA adapters or the whole UNet (default lora)", "lora", choices=TRAIN_MODES)
    lora_rank: int = _option("LoRA rank in lora mode (default 16)", 16, int)
    lora_alpha: Optional[float] = _option("LoRA alpha: the adapters' output is scaled by alpha/rank "
                                          "(default: the rank, a scale of 1)", None, float)
    lr: Optional[float] = _option("learning rate (default 1e-4 lora, 5e-6 full)", None, learning_rate)
    train_text_encoder: bool = _option("also finetune the text encoder", False, action="store_true")
    prior: bool = _option("no class-prior preservation (it is on by default)", True, flag="--no-prior",
                          action="store_false")
    prior_weight: float = _option("weight of the class-prior loss (default 1.0)", 1.0, float)
    num_class_images: int = _option("class images generated by the base model (default 200)", 200, int)
    class_images_dir: Optional[str] = _option("cache of class images (default OUT/class_images)", None)
    batch_size: int = _option("subject images per step, as many class images are added (default 1)", 1, int)
    resolution: Optional[int] = _option("training resolution (default: the model's, 512 for SD)", None, int)
    extra_images: Optional[str] = _option(
        "multi-view finetuning: folder of extra images, each with a caption IMAGE_STEM.txt "
        "(e.g. a stage-2 pseudo-view set's images/ folder)", None)
    extra_views: Optional[str] = _option(
        "mvdream: a pseudo-view set (stage 2's folder: images/, cameras.json, captions) trained as 4-view sets "
        "at the cameras the views were rendered from", None)
    init_checkpoint: Optional[str] = _option("continue from this checkpoint (multi-view finetuning)", None)
    mixed_precision: str = _option("autocast dtype; trained weights and optimizer state stay fp32 (default auto: "
                                   "bf16 on a GPU that has it, else fp16; fp32 on a CPU)", "auto",
                                   choices=MIXED_PRECISIONS)
    gradient_checkpointing: Optional[bool] = _option(
        "recompute activations in the backward pass: less GPU memory, slower steps "
        "(default: on with --mode full, off with lora)", None, action=argparse.BooleanOptionalAction)
    use_8bit_adam: bool = _option("bitsandbytes' 8-bit AdamW: optimizer state 2 instead of 8 bytes per trained "
                                  "parameter (pip install 'threestudio-dreambooth3d[8bit]')", False,
                                  action="store_true")
    save_state_minutes: float = _option("write the resumable training state (OUT/state/latest.pt, replaced each "
                                        "time) this often and at the end (default 10.0)", 10.0, float)
    seed: int = _option("random seed (default 0)", 0, int)
    device: Optional[str] = _option("cuda, cuda:1, cpu (default: cuda if available)", None)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One option per field, in field order; fields without a default are required."""
        for f in fields(cls):
            meta = f.metadata
            kwargs: Dict[str, Any] = {"dest": f.name, "help": meta["help"], **meta["argparse"]}
            if f.default is MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.default
            if meta["type"] is not None:
                kwargs["type"] = meta["type"]
            parser.add_argument(meta["flag"] or "--" + f.name.replace("_", "-"), **kwargs)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "FinetuneOptions":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    @classmethod
    def parse(cls, argv: Sequence[str]) -> "FinetuneOptions":
        """The options a ``dreambooth3d finetune ARGV`` command line gives (later flags win)."""
        parser = _RaisingParser(prog="dreambooth3d finetune")
        cls.add_arguments(parser)
        return cls.from_namespace(parser.parse_args(list(argv)))

    @property
    def checkpoint_steps(self) -> Dict[str, int]:
        return self.checkpoints or {"partial": max(1, self.steps // 4), "full": self.steps}

    def dreambooth_config(self) -> "DreamBoothConfig":
        """The trainer's config for these options (reads the captions of ``extra_images``)."""
        from .core.dreambooth import DreamBoothConfig
        from .core.subject import read_captioned_folder

        extra = [(str(p), c) for p, c in read_captioned_folder(self.extra_images)] if self.extra_images else []
        config_cls, more = DreamBoothConfig, {}
        if self.base_model == "mvdream":
            from .core.mvdreambooth import MVDreamBoothConfig

            config_cls, more = MVDreamBoothConfig, {"param_preservation_weight": self.param_preservation_weight,
                                                    "extra_views": self.extra_views}
        elif self.extra_views:
            from .errors import ConfigError

            raise ConfigError("--extra-views (pseudo views as 4-view sets) needs --base-model mvdream; "
                              "for Stable Diffusion pass the set's images/ folder as --extra-images")
        return config_cls(
            pretrained_model=self.model,
            subject_dir=self.subject,
            class_noun=self.class_noun,
            output_dir=self.out,
            identifier=self.identifier,
            instance_prompt=self.instance_prompt,
            extra_images=extra,
            init_checkpoint=self.init_checkpoint,
            prior_preservation=self.prior,
            prior_loss_weight=self.prior_weight,
            num_class_images=self.num_class_images,
            class_images_dir=self.class_images_dir,
            resolution=self.resolution,
            batch_size=self.batch_size,
            max_steps=self.steps,
            checkpoint_steps=self.checkpoint_steps,
            mode=self.mode,
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            learning_rate=self.lr,
            train_text_encoder=self.train_text_encoder,
            mixed_precision=self.mixed_precision,
            gradient_checkpointing=self.gradient_checkpointing,
            use_8bit_adam=self.use_8bit_adam,
            save_state_minutes=self.save_state_minutes,
            seed=self.seed,
            device=self.device,
            **more,
        )


def continuation_args(first: FinetuneOptions) -> List[str]:
    """What a continued (multi-view) finetune keeps from the run it continues: it trains what the
    first run trained (a full UNet stays full, a trained text encoder keeps training)."""
    return ["--mode", first.mode] + (["--train-text-encoder"] if first.train_text_encoder else [])
