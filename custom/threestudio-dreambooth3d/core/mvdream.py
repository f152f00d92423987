"""MVDream's multi-view UNet in diffusers form, and its camera input.

MVDream (Shi et al. 2023, arXiv 2308.16512) is Stable Diffusion 2.1's UNet with two changes:

* a camera embedding: the flattened 4x4 camera-to-world matrix (16 numbers) through
  linear-SiLU-linear, added to the time embedding (diffusers' ``class_embed_type="projection"``);
* multi-view self-attention: every transformer block's self-attention attends over the
  tokens of all ``num_frames`` views of one object; cross-attention stays per view.

The batch holds ``num_frames`` consecutive views per object: ``[obj0_view0 .. obj0_view3,
obj1_view0 ..]``. ``num_frames=1`` with ``camera=None`` is MVDream's 2D mode (plain SD).

Usage::

    from threestudio_dreambooth3d.core.mvdream import MultiViewUNet, mvdream_camera, standard_cameras

    unet = MultiViewUNet.from_pretrained(folder + "/unet")      # written by `dreambooth3d convert-mvdream`
    camera = mvdream_camera(c2w)                                # threestudio c2w [B, 4, 4] -> [B, 16]
    eps = unet(latents, t, encoder_hidden_states=text, camera=camera, num_frames=4).sample
    eps_2d = unet(latents, t, encoder_hidden_states=text).sample  # 2D mode

    from threestudio_dreambooth3d.core.sd_models import load_mvdream_components, load_mvdream_unet
    comps = load_mvdream_components(folder_or_checkpoint)      # SDComponents, unet is a MultiViewUNet
    unet = load_mvdream_unet(folder_or_checkpoint, device="cuda", dtype=torch.float16)

Those two loaders (in :mod:`.sd_models`, beside ``load_sd_components``) also take a
DreamBooth checkpoint of ``dreambooth3d finetune --base-model mvdream``: pass the checkpoint
folder; its ``base_model`` names the MVDream folder.
The converter and the original checkpoint layout live in :mod:`.mvdream_convert`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

PathLike = Union[str, Path]

#: MVDream's views per object (the released sd-v2.1-base-4view model)
NUM_VIEWS = 4
#: the unet/config.json class name that marks a folder as multi-view
UNET_CLASS_NAME = "MultiViewUNet"


class MultiViewAttnProcessor:
    """Runs an attention processor over all views of an object for self-attention.

    The tokens ``[(objects * views), tokens, C]`` become ``[objects, views * tokens, C]``,
    so each token attends to every view of its own object and never to another object's.
    Cross-attention (``encoder_hidden_states`` given) and ``num_frames=1`` go straight through.
    """

    def __init__(self, inner: Optional[Any] = None):
        self.inner = inner if inner is not None else AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 num_frames: int = 1) -> torch.Tensor:
        if encoder_hidden_states is not None or num_frames == 1:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if attention_mask is not None:
            raise ValueError("multi-view self-attention takes no attention mask")
        bf, n, c = hidden_states.shape
        joint = hidden_states.reshape(bf // num_frames, num_frames * n, c)
        return self.inner(attn, joint, None, None, temb).reshape(bf, n, c)


class MultiViewUNet(UNet2DConditionModel):
    """SD's ``UNet2DConditionModel`` with MVDream's camera input and multi-view self-attention.

    The camera embedding is diffusers' projection class embedding
    (``class_embed_type="projection"``, ``projection_class_embeddings_input_dim=16``);
    without it (``class_embed_type=None``) the model takes no camera. Loads and saves
    like any diffusers model (its ``__init__`` is diffusers', so the config round-trips);
    every forward first makes sure each attention processor is a :class:`MultiViewAttnProcessor`.
    """

    def set_attn_processor(self, processor, *args, **kwargs) -> None:
        """As diffusers', but every processor keeps attending over all views."""
        wrap = lambda p: p if isinstance(p, MultiViewAttnProcessor) else MultiViewAttnProcessor(p)
        processor = {k: wrap(p) for k, p in processor.items()} if isinstance(processor, dict) else wrap(processor)
        super().set_attn_processor(processor, *args, **kwargs)

    def _keep_multiview(self) -> None:
        # paths such as enable_xformers_memory_efficient_attention set processors module by module
        for module in self.modules():
            if isinstance(module, Attention) and not isinstance(module.processor, MultiViewAttnProcessor):
                module.processor = MultiViewAttnProcessor(module.processor)

    def get_class_embed(self, sample: torch.Tensor, class_labels: Optional[torch.Tensor]):
        if class_labels is None:  # 2D mode: the time embedding alone, as MVDream without a camera
            return None
        if self.class_embedding is None:
            raise ValueError("this MultiViewUNet has no camera embedding (class_embed_type is None); pass camera=None")
        return self.class_embedding(class_labels.to(self.class_embedding.linear_1.weight.dtype)).to(sample.dtype)

    def forward(self, sample: torch.Tensor, timestep: Union[torch.Tensor, float, int],
                encoder_hidden_states: torch.Tensor, camera: Optional[torch.Tensor] = None,
                num_frames: int = 1, class_labels: Optional[torch.Tensor] = None,
                cross_attention_kwargs: Optional[Dict[str, Any]] = None, return_dict: bool = True, **kwargs):
        """Noise prediction for ``sample`` [objects * num_frames, C, H, W].

        ``camera`` [B, 16] (see :func:`mvdream_camera`) or None; ``class_labels`` is accepted
        as its alias so diffusers pipelines can call this model.
        """
        if camera is None:
            camera = class_labels
        num_frames = int(num_frames)
        if num_frames < 1 or sample.shape[0] % num_frames:
            raise ValueError(f"batch {sample.shape[0]} is not a whole number of {num_frames}-view objects")
        if camera is not None and camera.shape[0] != sample.shape[0]:
            raise ValueError(f"{camera.shape[0]} cameras for a batch of {sample.shape[0]}")
        self._keep_multiview()
        kw = {**(cross_attention_kwargs or {}), "num_frames": num_frames}
        return super().forward(sample, timestep, encoder_hidden_states, class_labels=camera,
                               cross_attention_kwargs=kw, return_dict=return_dict, **kwargs)


def mvdream_camera(c2w: torch.Tensor) -> torch.Tensor:
    """threestudio camera-to-world matrices [B, 4, 4] -> MVDream's camera input [B, 16].

    As MVDream-threestudio's guidance: threestudio's c2w is already in the coordinates
    MVDream was trained in (no OpenGL->Blender flip); the camera position is scaled onto
    the unit sphere (``/ (norm + 1e-8)``) and the matrix flattened row by row. The input
    is not modified.
    """
    m = c2w.reshape(-1, 4, 4).clone()
    t = m[:, :3, 3]
    m[:, :3, 3] = t / (torch.norm(t, dim=1, keepdim=True) + 1e-8)
    return m.reshape(-1, 16)


def standard_cameras(num_frames: int = NUM_VIEWS, elevation: float = 15.0, azimuth_start: float = 0.0,
                     azimuth_span: float = 360.0) -> torch.Tensor:
    """MVDream's sampling cameras [num_frames, 16]: unit distance, equal azimuth gaps, one elevation.

    The orbit MVDream's text-to-image script samples at (its ``get_camera``): camera on the
    unit sphere at (elevation, azimuth) in OpenGL y-up coordinates, looking at the origin,
    then turned to the z-up frame the model was trained in.
    """
    az = torch.deg2rad(torch.arange(num_frames, dtype=torch.float64) * (azimuth_span / num_frames) + azimuth_start)
    el = torch.deg2rad(torch.tensor(float(elevation), dtype=torch.float64)).expand_as(az)
    pos = torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], -1)
    forward = -pos / pos.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(forward)
    right = torch.linalg.cross(forward, up)
    right = right / right.norm(dim=-1, keepdim=True)
    new_up = torch.linalg.cross(right, forward)
    new_up = new_up / new_up.norm(dim=-1, keepdim=True)
    c2w = torch.eye(4, dtype=torch.float64).repeat(num_frames, 1, 1)
    c2w[:, :3, :3] = torch.stack([right, new_up, -forward], -1)
    c2w[:, :3, 3] = pos
    # y-up (OpenGL) -> z-up: (x, y, z) -> (x, -z, y)
    flip = torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    return (flip @ c2w).reshape(num_frames, 16).float()


def is_mvdream_folder(folder: PathLike) -> bool:
    """Whether ``folder`` is a diffusers model folder whose UNet is a :class:`MultiViewUNet`."""
    config = Path(folder) / "unet" / "config.json"
    if not config.is_file():
        return False
    return json.loads(config.read_text()).get("_class_name") == UNET_CLASS_NAME
