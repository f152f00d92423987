"""Test-only helpers (not shipped in the package)."""
from types import SimpleNamespace

import torch


def latent_distance_to_subject(latents: torch.Tensor, subject_latents: torch.Tensor) -> float:
    """Mean over samples of the MSE to the nearest subject latent: how 'subject-like' samples are."""
    d = ((latents[:, None] - subject_latents[None]) ** 2).mean(dim=(2, 3, 4))
    return d.min(dim=1).values.mean().item()


def cfg_embeddings(components, prompt="a sks dog", batch_size=1):
    """Text embeddings in threestudio's cat([cond, uncond]) order."""
    cond = components.encode_prompts([prompt] * batch_size)
    uncond = components.encode_prompts([""] * batch_size)
    return torch.cat([cond, uncond])  # threestudio's (cond, uncond) order


class PointMassDenoiser(torch.nn.Module):
    """The exact noise predictor for data that is a single point: ``mu_cond`` under the
    prompt, ``mu_uncond`` without it. Its SDS fixed point under threestudio's CFG
    ``eps_c + s (eps_c - eps_u)`` is ``mu_cond + s (mu_cond - mu_uncond)``."""

    def __init__(self, cond_embedding, mu_cond, mu_uncond, alphas_cumprod, prediction_type="epsilon"):
        super().__init__()
        self.cond_embedding, self.mu_cond, self.mu_uncond = cond_embedding, mu_cond, mu_uncond
        self.alphas_cumprod, self.prediction_type = alphas_cumprod, prediction_type
        self.config = SimpleNamespace(sample_size=mu_cond.shape[-1])

    def forward(self, x, t, encoder_hidden_states):
        is_cond = (encoder_hidden_states - self.cond_embedding).abs().flatten(1).amax(1) < 1e-6
        mu = torch.where(is_cond.view(-1, 1, 1, 1), self.mu_cond, self.mu_uncond)
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        eps = (x - a * mu) / s
        return a * eps - s * mu if self.prediction_type == "v_prediction" else eps
