import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP threads
# of concurrent tests (and their subprocesses) oversubscribe the cores: one test went from
# seconds to minutes. Set before torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# the cache (tiny eval models, a fetched threestudio) of the tests' own, never the user's ~/.cache
if "DREAMBOOTH3D_CACHE" not in os.environ:
    import tempfile

    os.environ["DREAMBOOTH3D_CACHE"] = tempfile.mkdtemp(prefix="dreambooth3d-test-cache-")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory) -> Path:
    """A tiny random Stable Diffusion saved in diffusers layout; loaded back by path."""
    from threestudio_dreambooth3d.tiny_models.sd import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def tiny_mvdream_path(tmp_path_factory) -> Path:
    """A tiny random MVDream (MultiViewUNet + the tiny SD's VAE/text encoder) in our converted-folder layout."""
    from threestudio_dreambooth3d.tiny_models.mvdream import build_tiny_mvdream

    return build_tiny_mvdream(tmp_path_factory.mktemp("models") / "tiny-mvdream", seed=0)


@pytest.fixture(scope="session")
def subject_dir(tmp_path_factory) -> Path:
    """Four synthetic photos of a red disc on white: an easy-to-measure 'subject'."""
    from threestudio_dreambooth3d.tiny_models.sd import make_subject_images

    return make_subject_images(tmp_path_factory.mktemp("subject") / "red_disc", n=4, size=64)


PERSONALISE_KW = dict(
    class_noun="dog",
    num_class_images=4,
    class_inference_steps=3,
    max_steps=300,
    checkpoint_steps={"partial": 60, "full": 300},
    learning_rate=2e-3,
    lora_rank=8,
    batch_size=2,
    prior_loss_weight=0.3,
    seed=0,
)


@pytest.fixture(scope="session")
def personalised(tiny_sd_path, subject_dir, tmp_path_factory):
    """The tiny model DreamBooth-finetuned on the red-disc subject (LoRA, ~10 s on CPU).

    Returns the TrainResult: ``.checkpoints['partial']`` (step 60) and ``['full']`` (step 300).
    """
    import torch

    from threestudio_dreambooth3d.core.dreambooth import DreamBoothConfig, train_dreambooth

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("personalised")
    cfg = DreamBoothConfig(pretrained_model=str(tiny_sd_path), subject_dir=str(subject_dir), output_dir=str(out), **PERSONALISE_KW)
    return train_dreambooth(cfg)


@pytest.fixture(scope="session")
def subject_latents(tiny_sd_path, subject_dir):
    """Scaled VAE latents of the subject photos, [N, 4, 16, 16]: where personalised samples should land."""
    import torch

    from threestudio_dreambooth3d.core.sd_models import load_sd_components
    from threestudio_dreambooth3d.core.subject import load_subject_images

    comps = load_sd_components(tiny_sd_path)
    pixels, _ = load_subject_images(subject_dir, comps.resolution)
    with torch.no_grad():
        return comps.vae.encode(pixels).latent_dist.mean * comps.vae.config.scaling_factor


# -- a run folder with a fake threestudio checkout (the pipeline's tests; executor: fakes.FakeExecutor)

@pytest.fixture
def fake_threestudio(tmp_path) -> Path:
    root = tmp_path / "threestudio"
    (root / "threestudio").mkdir(parents=True)
    (root / "threestudio" / "__init__.py").write_text("")
    (root / "launch.py").write_text("")
    (root / "load").mkdir()
    return root


@pytest.fixture
def subject(tmp_path, subject_dir) -> Path:
    import shutil

    return Path(shutil.copytree(subject_dir, tmp_path / "subject"))


@pytest.fixture
def configs(tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(ROOT / "configs", tmp_path / "configs"))


@pytest.fixture
def make_ctx(tmp_path, subject, fake_threestudio, configs):
    from fakes import PROMPT
    from threestudio_dreambooth3d.pipeline.context import RunContext
    from threestudio_dreambooth3d.pipeline.presets import get_preset

    def make(preset="smoke", **kw):
        opts = dict(out=tmp_path / "out", subject=subject, class_noun="dog", prompt=PROMPT,
                    preset=get_preset(preset), model="/models/tiny-sd", threestudio_root=fake_threestudio,
                    configs_dir=configs)
        opts.update(kw)
        return RunContext(**opts)

    return make


@pytest.fixture(scope="module")
def tiny(tiny_sd_path):
    """The tiny SD's components, frozen, loaded once per test module: its VAE is calibrated like
    SD's (testing.calibrate_vae), the UNet random."""
    from threestudio_dreambooth3d.core.sd_models import load_sd_components

    return load_sd_components(tiny_sd_path).freeze()
