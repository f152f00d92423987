import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory) -> Path:
    """A tiny random Stable Diffusion saved in diffusers layout; loaded back by path."""
    from threestudio_dreambooth3d.testing import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def subject_dir(tmp_path_factory) -> Path:
    """Four synthetic photos of a red disc on white: an easy-to-measure 'subject'."""
    from threestudio_dreambooth3d.testing import make_subject_images

    return make_subject_images(tmp_path_factory.mktemp("subject") / "red_disc", n=4, size=64)
