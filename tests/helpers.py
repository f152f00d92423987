"""Test-only helpers (not shipped in the package)."""
import torch


def latent_distance_to_subject(latents: torch.Tensor, subject_latents: torch.Tensor) -> float:
    """Mean over samples of the MSE to the nearest subject latent: how 'subject-like' samples are."""
    d = ((latents[:, None] - subject_latents[None]) ** 2).mean(dim=(2, 3, 4))
    return d.min(dim=1).values.mean().item()
