"""Metrics on embeddings, free of models and files so each is checkable by hand.

Conventions follow the papers the numbers are compared with:
- CLIP R-precision (DreamFusion, reused by DreamBooth3D): each rendered view retrieves
  the prompt with the highest CLIP similarity among the true prompt and distractors;
  the score is the fraction of views that retrieve the true one.
- CLIP-I / DINO (DreamBooth): mean cosine similarity over all (generated, real) pairs.
- CLIP-T (DreamBooth): mean cosine similarity between each generated image and the prompt.
"""
from __future__ import annotations

import torch


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, D] x [M, D] -> [N, M] cosine similarities (inputs need not be normalised)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected embeddings [N, D] and [M, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    return l2_normalize(a) @ l2_normalize(b).T


def mean_pairwise_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs (a_i, b_j): CLIP-I, DINO, and CLIP-T with b = [prompt]."""
    if len(a) == 0 or len(b) == 0:
        raise ValueError("mean_pairwise_similarity needs at least one embedding on each side")
    return cosine_similarity_matrix(a, b).mean().item()


def true_prompt_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, true_index: int) -> torch.Tensor:
    """0-based rank of the true prompt for each image: how many other prompts score at
    least as high. Ties count against the true prompt, so a model that cannot tell the
    prompts apart (all scores equal) never gets credit."""
    if not 0 <= true_index < len(text_emb):
        raise IndexError(f"true_index {true_index} out of range for {len(text_emb)} prompts")
    sim = cosine_similarity_matrix(image_emb, text_emb)  # [N, P]
    true_sim = sim[:, true_index : true_index + 1]
    others = torch.ones(sim.shape[1], dtype=torch.bool)
    others[true_index] = False
    return (sim[:, others] >= true_sim).sum(dim=1)


def r_precision(image_emb: torch.Tensor, text_emb: torch.Tensor, true_index: int, k: int = 1) -> float:
    """Fraction of images whose true prompt is among their top-``k`` retrieved prompts
    (``k=1`` is the paper's R-precision)."""
    if len(image_emb) == 0:
        raise ValueError("r_precision needs at least one image embedding")
    return (true_prompt_ranks(image_emb, text_emb, true_index) < k).float().mean().item()


# ----------------------------------------------------------------------------- Janus score

JANUS_VIEWS = ("front", "side", "back")  # the order of the view prompts' embeddings


def view_prompt_texts(class_noun: str) -> list:
    """The view prompts a frame is compared with, in :data:`JANUS_VIEWS` order."""
    noun = " ".join(class_noun.split())
    return [f"the {v} of a {noun}" for v in JANUS_VIEWS]


def turntable_azimuths(n_frames: int) -> torch.Tensor:
    """Azimuth (degrees) of each frame of threestudio's test turntable: its test split places
    ``n`` cameras at ``linspace(0, 360, n)`` (frame 0 at azimuth 0, the front)."""
    if n_frames < 1:
        raise ValueError("turntable_azimuths needs at least one frame")
    return torch.linspace(0, 360.0, n_frames)


def janus_score(frame_emb: torch.Tensor, view_text_emb: torch.Tensor, azimuth_deg,
                back_threshold: float = 45.0, front_threshold: float = 45.0) -> dict:
    """How often the back of the asset looks like its front (the Janus, multi-face, failure).

    ``view_text_emb`` [3, D]: the prompts of :func:`view_prompt_texts` (front, side, back).
    Each frame is labelled with the view prompt it is most similar to; a frame is
    back-facing when its camera is within ``back_threshold`` degrees of azimuth 180 and
    front-facing within ``front_threshold`` of 0 (threestudio's view thresholds, azimuth
    0 = front). Returns ``janus``: the fraction of back-facing frames labelled "front"
    (None without back-facing frames), ``back_frames``, ``front_accuracy`` (front-facing
    frames labelled "front"), and every frame's ``labels``.
    """
    if view_text_emb.shape[0] != len(JANUS_VIEWS):
        raise ValueError(f"expected {len(JANUS_VIEWS)} view prompt embeddings (front, side, back), "
                         f"got {view_text_emb.shape[0]}")
    azimuth = torch.as_tensor(azimuth_deg, dtype=torch.float32).reshape(-1)
    if len(azimuth) != len(frame_emb):
        raise ValueError(f"{len(azimuth)} azimuths for {len(frame_emb)} frames")
    labels = cosine_similarity_matrix(frame_emb, view_text_emb).argmax(dim=1)
    wrapped = (azimuth + 180) % 360 - 180
    back = wrapped.abs() > 180 - back_threshold
    front = wrapped.abs() < front_threshold
    is_front = labels == JANUS_VIEWS.index("front")
    n_back = int(back.sum())
    n_front = int(front.sum())
    return {
        "janus": (is_front & back).sum().item() / n_back if n_back else None,
        "back_frames": n_back,
        "front_accuracy": (is_front & front).sum().item() / n_front if n_front else None,
        "labels": [JANUS_VIEWS[i] for i in labels.tolist()],
    }
