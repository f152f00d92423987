"""Installs the extension folder ``custom/threestudio-dreambooth3d`` as the package
``threestudio_dreambooth3d`` (threestudio's launch.py loads the same folder from ./custom)."""
from setuptools import find_packages, setup

EXT_DIR = "custom/threestudio-dreambooth3d"
PKG = "threestudio_dreambooth3d"

subpackages = [f"{PKG}.{p}" for p in find_packages(EXT_DIR)]

setup(
    name="threestudio-dreambooth3d",
    version="0.1.0",
    description="DreamBooth3D (subject-driven text-to-3D) as a threestudio extension",
    python_requires=">=3.9",
    packages=[PKG, *subpackages],
    package_dir={PKG: EXT_DIR, **{p: EXT_DIR + "/" + p[len(PKG) + 1 :].replace(".", "/") for p in subpackages}},
    include_package_data=True,
    install_requires=[
        # torch is not pinned here: GPU users keep their CUDA build; the README pins the CPU wheel.
        "torch>=2.0",
        "diffusers>=0.30",
        "transformers>=4.40",
        "peft>=0.12",
        "safetensors",
        "omegaconf",
        "numpy",
        "pillow",
        "tqdm",
        "trimesh",
        "imageio",
        "imageio-ffmpeg",
    ],
    extras_require={
        # submitit: the sweep's cluster path is tested with its local executor
        "test": ["pytest>=7", "pytest-timeout", "submitit>=1.5"],
        # `dreambooth3d sweep --executor slurm`
        "cluster": ["submitit>=1.5"],
        # what threestudio itself needs beyond the above is installed with threestudio
        "threestudio": ["pytorch-lightning", "nerfacc", "xatlas"],
    },
    entry_points={"console_scripts": ["dreambooth3d=threestudio_dreambooth3d.cli:main"]},
)
