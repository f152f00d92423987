"""The released MVDream checkpoint <-> our diffusers-style folder.

The released file (``sd-v2.1-base-4view.pt``) is one flat state dict of the original LDM
model: ``model.diffusion_model.*`` is the UNet (``MultiViewUNetModel``), the VAE and the
text encoder sit beside it and are ignored here (MVDream keeps SD 2.1's, so the folder
takes them from an SD 2.1 base). The UNet's layout follows the original's config
(``model.params.unet_config.params`` of its LDM yaml); :data:`SD21_4VIEW_UNET` is the
released one.

The key mapping is derived from the config, block by block, the same way both models are
built (input_blocks <-> down_blocks, middle_block <-> mid_block, output_blocks <-> up_blocks),
so it is exact for any layout the original accepts and is checked key for key and shape for
shape before anything is written.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..errors import ConfigError, MissingFileError, ModelLoadError
from ..fs import atomic_write_dir

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
UNET_PREFIX = "model.diffusion_model."

#: ``unet_config.params`` of MVDream's sd-v2.1-base-4view (its configs/sd-v2-base.yaml)
SD21_4VIEW_UNET: Dict[str, Any] = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_head_channels=64, use_spatial_transformer=True,
    use_linear_in_transformer=True, transformer_depth=1, context_dim=1024, legacy=False, camera_dim=16,
)

# original options whose non-default values change the architecture in ways we do not build
_UNSUPPORTED = {"num_classes": None, "use_scale_shift_norm": False, "resblock_updown": False,
                "disable_self_attentions": None, "num_attention_blocks": None, "disable_middle_self_attn": False,
                "use_new_attention_order": False, "n_embed": None, "adm_in_channels": None, "dims": 2,
                "conv_resample": True}

_RESNET_RENAMES = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
                   ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))


# -- config ---------------------------------------------------------------------------------------
def read_ldm_unet_params(config: Optional[PathLike]) -> Dict[str, Any]:
    """``model.params.unet_config.params`` of an original LDM yaml; the released layout when None."""
    if config is None:
        return dict(SD21_4VIEW_UNET)
    from omegaconf import OmegaConf

    path = Path(config)
    if not path.is_file():
        raise MissingFileError(f"MVDream config {path} does not exist (pass the original's LDM yaml, "
                               "e.g. mvdream/configs/sd-v2-base.yaml, or leave --config out for sd-v2.1-base-4view)")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    try:
        return dict(cfg["model"]["params"]["unet_config"]["params"])
    except (KeyError, TypeError):
        raise ConfigError(f"{path} has no model.params.unet_config.params: not an MVDream/LDM model config") from None


def _levels(p: Mapping[str, Any]) -> Tuple[List[int], List[int], List[bool], List[int]]:
    """Per level: channels, res blocks, has attention, attention heads (as the original computes them)."""
    mc, mult = int(p["model_channels"]), [int(m) for m in p["channel_mult"]]
    nrb = p["num_res_blocks"]
    nrb = [int(nrb)] * len(mult) if isinstance(nrb, int) else [int(n) for n in nrb]
    if len(nrb) != len(mult):
        raise ConfigError(f"num_res_blocks {nrb} must be an int or one per channel_mult level ({len(mult)})")
    attn_res = {int(r) for r in p["attention_resolutions"]}
    nh, nhc = int(p.get("num_heads", -1)), int(p.get("num_head_channels", -1))
    if nh == -1 and nhc == -1:
        raise ConfigError("the MVDream config sets neither num_heads nor num_head_channels")
    chans, attn, heads = [], [], []
    for level, m in enumerate(mult):
        ch = mc * m
        chans.append(ch)
        attn.append(2 ** level in attn_res)
        if nhc != -1:
            if ch % nhc:
                raise ConfigError(f"channels {ch} are not a multiple of num_head_channels {nhc}")
            heads.append(ch // nhc)
        else:
            heads.append(nh)
    return chans, nrb, attn, heads


def diffusers_unet_config(p: Mapping[str, Any]) -> Dict[str, Any]:
    """:class:`~.mvdream.MultiViewUNet` keywords for the original's ``unet_config.params``."""
    for key, default in _UNSUPPORTED.items():
        if p.get(key, default) != default:
            raise ConfigError(f"MVDream config: {key}={p[key]!r} is not supported (only {default!r})")
    if not p.get("use_spatial_transformer", False) or p.get("context_dim") is None:
        raise ConfigError("MVDream config: a text-conditioned UNet needs use_spatial_transformer and context_dim")
    depth = p.get("transformer_depth", 1)
    if not isinstance(depth, int):
        raise ConfigError(f"MVDream config: transformer_depth must be one int, not {depth!r}")
    context_dim = p["context_dim"]
    if isinstance(context_dim, (list, tuple)):
        if len(set(context_dim)) != 1:
            raise ConfigError(f"MVDream config: one context_dim expected, not {context_dim!r}")
        context_dim = context_dim[0]
    chans, nrb, attn, heads = _levels(p)
    camera_dim = p.get("camera_dim")
    return dict(
        sample_size=int(p.get("image_size", 32)),
        in_channels=int(p["in_channels"]),
        out_channels=int(p["out_channels"]),
        block_out_channels=tuple(chans),
        layers_per_block=nrb[0] if len(set(nrb)) == 1 else tuple(nrb),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        cross_attention_dim=int(context_dim),
        attention_head_dim=tuple(heads),  # diffusers' name for the number of heads per level
        use_linear_projection=bool(p.get("use_linear_in_transformer", False)),
        transformer_layers_per_block=depth,
        norm_num_groups=32,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
        class_embed_type="projection" if camera_dim else None,
        projection_class_embeddings_input_dim=int(camera_dim) if camera_dim else None,
    )


# -- keys -----------------------------------------------------------------------------------------
def _block_prefixes(p: Mapping[str, Any]) -> List[Tuple[str, str, bool]]:
    """(original prefix, diffusers prefix, is a ResBlock) for every module of the UNet."""
    chans, nrb, attn, _ = _levels(p)
    out: List[Tuple[str, str, bool]] = [
        ("time_embed.0.", "time_embedding.linear_1.", False), ("time_embed.2.", "time_embedding.linear_2.", False),
        ("camera_embed.0.", "class_embedding.linear_1.", False), ("camera_embed.2.", "class_embedding.linear_2.", False),
        ("input_blocks.0.0.", "conv_in.", False), ("out.0.", "conv_norm_out.", False), ("out.2.", "conv_out.", False),
        ("middle_block.0.", "mid_block.resnets.0.", True), ("middle_block.1.", "mid_block.attentions.0.", False),
        ("middle_block.2.", "mid_block.resnets.1.", True),
    ]
    k = 1
    for level in range(len(chans)):
        for j in range(nrb[level]):
            out.append((f"input_blocks.{k}.0.", f"down_blocks.{level}.resnets.{j}.", True))
            if attn[level]:
                out.append((f"input_blocks.{k}.1.", f"down_blocks.{level}.attentions.{j}.", False))
            k += 1
        if level != len(chans) - 1:
            out.append((f"input_blocks.{k}.0.op.", f"down_blocks.{level}.downsamplers.0.conv.", False))
            k += 1
    k = 0
    for up, level in enumerate(reversed(range(len(chans)))):
        for j in range(nrb[level] + 1):
            out.append((f"output_blocks.{k}.0.", f"up_blocks.{up}.resnets.{j}.", True))
            sub = 1
            if attn[level]:
                out.append((f"output_blocks.{k}.1.", f"up_blocks.{up}.attentions.{j}.", False))
                sub = 2
            if level and j == nrb[level]:
                out.append((f"output_blocks.{k}.{sub}.conv.", f"up_blocks.{up}.upsamplers.0.conv.", False))
            k += 1
    return out


def key_map(p: Mapping[str, Any], original_keys) -> Dict[str, str]:
    """original UNet key (without ``model.diffusion_model.``) -> diffusers key, for ``original_keys``."""
    prefixes = sorted(_block_prefixes(p), key=lambda t: -len(t[0]))
    mapping = {}
    for key in original_keys:
        for old, new, is_resnet in prefixes:
            if key.startswith(old):
                rest = key[len(old):]
                if is_resnet:
                    for a, b in _RESNET_RENAMES:
                        if rest.startswith(a):
                            rest = b + rest[len(a):]
                            break
                mapping[key] = new + rest
                break
    return mapping


def _check_fit(state: Mapping[str, torch.Tensor], model: torch.nn.Module, source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(s for s in (
            f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
            f"shape differs for {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:3]]}" if wrong else "",
        ) if s)
        raise ConfigError(f"{source}: the UNet weights do not fit the MVDream layout of the config ({detail}). "
                          "Pass the original's LDM yaml for this checkpoint with --config.")


def unet_from_original(state: Mapping[str, torch.Tensor], params: Mapping[str, Any], source: str = "checkpoint"):
    """A :class:`~.mvdream.MultiViewUNet` holding the original UNet weights ``state``
    (keys with or without ``model.diffusion_model.``; other keys ignored)."""
    from .mvdream import MultiViewUNet

    unet_state = {k[len(UNET_PREFIX):]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    if not unet_state:
        unet_state = dict(state)
    mapping = key_map(params, unet_state)
    unmapped = sorted(set(unet_state) - set(mapping))
    if unmapped:
        raise ConfigError(f"{source}: UNet keys the MVDream layout has no place for: {unmapped[:3]}. "
                          "Pass the original's LDM yaml for this checkpoint with --config.")
    converted = {mapping[k]: v.float() for k, v in unet_state.items()}
    # built without memory and given the checkpoint's tensors: no random init of 865M weights, no copy
    with torch.device("meta"):
        unet = MultiViewUNet(**diffusers_unet_config(params))
    _check_fit(converted, unet, source)
    unet.load_state_dict(converted, assign=True)
    return unet


def original_state_dict(unet: torch.nn.Module, params: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The released layout (``model.diffusion_model.*``) of a MultiViewUNet's weights: the
    converter's inverse, for tests and for exporting a finetuned model to the original code."""
    state = {k: v for k, v in unet.state_dict().items()}
    # invert the mapping on the original names the layout produces
    inverse = {}
    for old, new, is_resnet in _block_prefixes(params):
        renames = _RESNET_RENAMES if is_resnet else (("", ""),)
        for a, b in renames:
            inverse[new + b] = old + a
    out = {}
    for key, value in state.items():
        match = max((n for n in inverse if key.startswith(n)), key=len, default=None)
        if match is None:
            raise ConfigError(f"no original name for {key}")
        out[UNET_PREFIX + inverse[match] + key[len(match):]] = value.detach().cpu().contiguous()
    return out


# -- files ----------------------------------------------------------------------------------------
def read_original_checkpoint(path: PathLike) -> Dict[str, torch.Tensor]:
    """The flat state dict of a released checkpoint (.pt/.ckpt, or .safetensors); unwraps "state_dict"."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"MVDream checkpoint {path} does not exist. Download it first, e.g. "
                               "huggingface-cli download MVDream/MVDream sd-v2.1-base-4view.pt")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            try:  # memory-mapped: only the UNet's tensors are read from the 5 GB file
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a checkpoint in torch's legacy (non-zip) format cannot be mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"cannot read MVDream checkpoint {path}: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(k.startswith(UNET_PREFIX) for k in state):
        raise ConfigError(f"{path} holds no {UNET_PREFIX}* weights: not an MVDream (LDM) checkpoint")
    return state


_BASE_PARTS = {"vae": ("diffusers", "AutoencoderKL"), "text_encoder": ("transformers", "CLIPTextModel"),
               "tokenizer": ("transformers", "CLIPTokenizer"), "scheduler": ("diffusers", "DDPMScheduler")}


def _copy_base_parts(base: str, folder: Path) -> None:
    """VAE, text encoder, tokenizer and scheduler of an SD 2.1 base (folder or hub id) into ``folder``."""
    local = Path(base)
    if local.exists():
        missing = [p for p in _BASE_PARTS if not (local / p).is_dir()]
        if missing:
            raise MissingFileError(f"--base {base} lacks {', '.join(missing)}/: pass a Stable Diffusion 2.1 base "
                                   "diffusers folder or the hub id stabilityai/stable-diffusion-2-1-base")
        for part in _BASE_PARTS:
            shutil.copytree(local / part, folder / part)
        return
    import diffusers
    import transformers

    for part, (lib, cls) in _BASE_PARTS.items():
        module = diffusers if lib == "diffusers" else transformers
        try:
            getattr(module, cls).from_pretrained(base, subfolder=part).save_pretrained(folder / part)
        except OSError as e:
            raise ModelLoadError(f"cannot load {part} of --base {base} ({e}); pass a local SD 2.1 base folder") from e


def save_mvdream_folder(folder: Path, unet: torch.nn.Module, source: Dict[str, Any]) -> None:
    """Write ``unet/`` (safetensors) and ``model_index.json`` into ``folder`` (the base parts are already there)."""
    import diffusers

    unet.save_pretrained(folder / "unet", safe_serialization=True)
    index = {"_class_name": "MVDreamPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["threestudio_dreambooth3d", "MultiViewUNet"],
             **{p: list(v) for p, v in _BASE_PARTS.items()}, "mvdream": source}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def convert_mvdream_checkpoint(checkpoint: PathLike, base: str, out: PathLike,
                               config: Optional[PathLike] = None) -> Path:
    """Convert a released MVDream checkpoint into a diffusers-style folder at ``out``.

    Everything is checked (config, keys, shapes, the base's parts) before ``out`` appears;
    it is written atomically.
    """
    params = read_ldm_unet_params(config)
    state = read_original_checkpoint(checkpoint)
    unet = unet_from_original(state, params, source=str(checkpoint))
    del state
    source = {"checkpoint": str(Path(checkpoint).resolve()), "config": str(config) if config else "sd-v2.1-base-4view",
              "base": str(base), "unet_params": dict(params)}

    def write(tmp: Path) -> None:
        _copy_base_parts(str(base), tmp)
        save_mvdream_folder(tmp, unet, source)

    log.info("Writing the MVDream model folder %s", out)
    return atomic_write_dir(Path(out), write)
