"""``dreambooth-prompt-processor``: threestudio's SD prompt processor, embedding with the
text encoder of a DreamBooth checkpoint.

threestudio's ``stable-diffusion-prompt-processor`` loads the text encoder of the base
model and caches embeddings under a hash of the *base model name*. A checkpoint
trained with ``train_text_encoder`` has its own text encoder, so both would be wrong:
this processor loads the base's tokenizer and text encoder plus the checkpoint's text-encoder
weights through :func:`sd_models.load_sd_components` (``parts=TEXT_PARTS``)
and keys its cache on what the embeddings come from (:func:`sd_models.text_encoder_key`:
the base model's text-encoder and tokenizer files, and the checkpoint's text encoder). When the checkpoint kept
the base text encoder, the embeddings (and cache entries) equal the stock processor's.
Everything else (view-dependent prompts, negative prompts, perp-neg fields) is
threestudio's own ``PromptProcessor``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only

import threestudio
from threestudio.models.prompt_processors.base import PromptProcessor, hash_prompt
from threestudio.utils.misc import cleanup

from ..core.checkpoints import resolve_checkpoint
from ..core.config_text import decode_literal
from ..core.sd_models import embed_prompts, text_encoder_key


@threestudio.register("dreambooth-prompt-processor")
class DreamBoothPromptProcessor(PromptProcessor):
    @dataclass
    class Config(PromptProcessor.Config):
        # as in dreambooth-sds-guidance; the configs interpolate them from system.guidance
        checkpoint: Optional[str] = None
        checkpoint_name: Optional[str] = None
        spawn: bool = False  # embeddings are computed in-process (see prepare_text_embeddings)

    cfg: Config

    def configure(self) -> None:
        self.checkpoint_path = resolve_checkpoint(self.cfg.checkpoint, self.cfg.checkpoint_name)
        self._encoder_key = text_encoder_key(self.cfg.pretrained_model_name_or_path, self.checkpoint_path)
        super().configure()

    def preprocess_prompt(self, prompt: str) -> str:
        # the user's text as typed (pipeline/commands.dot encodes one holding "${")
        return super().preprocess_prompt(decode_literal(prompt))

    def _cache_path(self, prompt: str) -> str:
        return os.path.join(self._cache_dir, f"{hash_prompt(self._encoder_key, prompt)}.pt")

    @rank_zero_only
    def prepare_text_embeddings(self) -> None:
        # threestudio spawns a process keyed on the base model name; we embed in-process
        # (the encoder is freed right after) under a key that includes the checkpoint.
        os.makedirs(self._cache_dir, exist_ok=True)
        prompts = [self.prompt, self.negative_prompt, *self.prompts_vd, *self.negative_prompts_vd]
        todo = list(dict.fromkeys(p for p in prompts if not (self.cfg.use_cache and os.path.exists(self._cache_path(p)))))
        if todo:
            embeddings = embed_prompts(self.cfg.pretrained_model_name_or_path, self.checkpoint_path, todo, self.device)
            for prompt, emb in zip(todo, embeddings):
                torch.save(emb.cpu(), self._cache_path(prompt))
            cleanup()

    def load_from_cache(self, prompt: str) -> torch.Tensor:
        path = self._cache_path(prompt)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Text embedding {path} for prompt [{prompt}] was not computed.")
        return torch.load(path, map_location=self.device)
