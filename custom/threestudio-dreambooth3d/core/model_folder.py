"""What a local Stable Diffusion folder must hold (torch-free: ``doctor`` and ``run`` check it
before anything loads; the loader checks it too)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

# subfolder -> the file that says what it holds (diffusers' save_pretrained layout)
SD_PARTS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
            "tokenizer": "tokenizer_config.json", "scheduler": "scheduler_config.json"}


def model_folder_problem(folder: Union[str, Path]) -> Optional[str]:
    """Why ``folder`` is not a loadable diffusers Stable Diffusion folder, naming what is missing; None if it is."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        return f"{folder} is not a diffusers model folder (no model_index.json)"
    missing = [f"{part}/{file}" for part, file in SD_PARTS.items() if not (folder / part / file).is_file()]
    if missing:
        return f"the model folder {folder} lacks {', '.join(missing)}"
    return None
