"""Integration tests against the real threestudio.

threestudio is found through $THREESTUDIO_ROOT (a checkout, put on sys.path) or an
installed package; without it every test here is skipped with the reason.
``cpu.compat.enable()`` runs before threestudio is imported: stand-ins for missing CUDA
extensions (the pure-torch tinycudann among them), and the CPU patches without a GPU.
Tests never import threestudio at module level: they take the ``threestudio`` fixture.
"""
from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIGS = REPO / "configs"


def _setup_threestudio():
    """(threestudio module, None) or (None, why it is unavailable)."""
    from threestudio_dreambooth3d.cpu import compat as cpu_compat
    from threestudio_dreambooth3d.environment.threestudio_root import locate_threestudio
    from threestudio_dreambooth3d.errors import ThreestudioNotFoundError

    try:  # a wrong THREESTUDIO_ROOT is named, never silently replaced by an installed threestudio
        root = locate_threestudio(need_launch=False)
    except ThreestudioNotFoundError as e:
        return None, str(e)
    try:
        cpu_compat.enable(root)
        import threestudio
    except ImportError as e:
        # threestudio imports every system, guidance and extern/ module when it loads: one
        # missing requirement is a skip with the fix, not a collection error
        return None, (f"threestudio at {root} cannot be imported, its requirements are missing "
                      f"({type(e).__name__}: {e}); install them with: pip install -e \".[threestudio]\"")
    return threestudio, None


THREESTUDIO, SKIP_REASON = _setup_threestudio()
THREESTUDIO_ROOT = None if THREESTUDIO is None else Path(THREESTUDIO.__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.threestudio)
            if SKIP_REASON:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="session")
def threestudio():
    if THREESTUDIO is None:
        pytest.skip(SKIP_REASON)
    return THREESTUDIO


@pytest.fixture(scope="session")
def threestudio_root(threestudio) -> Path:
    return THREESTUDIO_ROOT


@pytest.fixture(scope="session")
def dreambooth_run(tiny_sd_path, subject_dir, tmp_path_factory):
    """A tiny DreamBooth run whose checkpoints also train the text encoder (LoRA, 2 steps).

    Returns the finetuning output folder: ``checkpoints/partial`` (step 1) and
    ``checkpoints/full`` (step 2). Training the text encoder makes its weights differ
    from the base model's, which the prompt processor must pick up.
    """
    from threestudio_dreambooth3d.core.dreambooth import DreamBoothConfig, train_dreambooth

    out = tmp_path_factory.mktemp("dreambooth_run")
    cfg = DreamBoothConfig(
        pretrained_model=str(tiny_sd_path), subject_dir=str(subject_dir), output_dir=str(out), class_noun="dog",
        num_class_images=1, class_inference_steps=2, max_steps=2, checkpoint_steps={"partial": 1, "full": 2},
        train_text_encoder=True, learning_rate=1e-2, lora_rank=4, seed=0,
    )
    train_dreambooth(cfg)
    return out


@pytest.fixture
def in_tmp_project(tmp_path, monkeypatch) -> Path:
    """cwd = a scratch project: ./custom links to our extension (launch.py loads ./custom),
    outputs and threestudio's .threestudio_cache land in tmp."""
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "threestudio-dreambooth3d").symlink_to(REPO / "custom" / "threestudio-dreambooth3d")
    monkeypatch.chdir(tmp_path)
    return tmp_path
