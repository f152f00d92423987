"""Evaluation of rendered views: the DreamBooth3D paper's CLIP R-precision plus the
DreamBooth paper's subject fidelity (CLIP-I, DINO) and prompt fidelity (CLIP-T).

``metrics`` holds pure functions on embeddings, ``encoders`` turns images and prompts
into L2-normalised embeddings with transformers models, ``run_eval`` finds rendered
views and writes eval.json + a view grid, ``cli_eval`` is the ``dreambooth3d eval``
subcommand. This file stays import-light (no torch) so ``dreambooth3d --help`` is fast.
"""

# The three CLIP models of the DreamBooth3D paper's R-precision table.
DEFAULT_CLIP_MODELS = (
    "openai/clip-vit-base-patch16",
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-large-patch14",
)
# The DreamBooth paper's DINO metric uses ViT-S/16 DINO.
DEFAULT_DINO_MODEL = "facebook/dino-vits16"
