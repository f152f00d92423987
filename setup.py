"""Installs the extension folder ``custom/threestudio-dreambooth3d`` as the package
``threestudio_dreambooth3d`` (threestudio's launch.py loads the same folder from ./custom)."""
from setuptools import find_packages, setup

EXT_DIR = "custom/threestudio-dreambooth3d"
PKG = "threestudio_dreambooth3d"

subpackages = [f"{PKG}.{p}" for p in find_packages(EXT_DIR)]
package_dir = {PKG: EXT_DIR, **{p: EXT_DIR + "/" + p[len(PKG) + 1 :].replace(".", "/") for p in subpackages}}
# The threestudio configs live at the checkout's top (configs/, where launch.py users look);
# an installed copy (pip install ., a wheel) carries them as threestudio_dreambooth3d/configs
# so `dreambooth3d run` finds them outside a checkout (pipeline.commands.locate_configs).
package_dir[f"{PKG}.configs"] = "configs"

setup(
    name="threestudio-dreambooth3d",
    version="0.1.0",
    description="DreamBooth3D (subject-driven text-to-3D) as a threestudio extension",
    python_requires=">=3.9",
    packages=[PKG, *subpackages, f"{PKG}.configs"],
    package_dir=package_dir,
    package_data={f"{PKG}.configs": ["*.yaml", "*/*.yaml"]},
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
        # Every pure-Python (or wheel-shipped) package threestudio imports when it loads (launch.py
        # imports all its systems, guidance and extern/ modules), at versions that work with ours.
        # threestudio's requirements.txt pins diffusers<0.20, transformers==4.28.1, lightning==2.0.0,
        # which conflict with the above; this list replaces it. Tested set: README, docs/THREESTUDIO.md.
        # Not here: torchvision (install it with torch, from the same index, so pip does not swap
        # torch), and the CUDA builds tinycudann / nvdiffrast / envlight (README: GPU set-up).
        "threestudio": [
            "lightning>=2.0", "pytorch-lightning>=2.0",  # threestudio imports both names
            "omegaconf>=2.3", "jaxtyping", "typeguard>=4",
            "nerfacc>=0.5.2,<0.6",  # PyPI's is pure Python; CUDA kernels JIT-build on a GPU
            "accelerate", "opencv-python-headless", "tensorboard", "matplotlib", "scipy",
            "imageio[ffmpeg]>=2.28", "trimesh", "networkx", "PyMCubes", "xatlas",
            "libigl>=2.4,<2.6",  # 2.6 renamed the functions threestudio.utils.ops imports
            "torchmetrics", "einops", "kornia", "wandb", "requests", "packaging", "huggingface_hub",
            "controlnet_aux", "taming-transformers-rom1504", "ipython",  # imported by guidance it loads
        ],
    },
    entry_points={"console_scripts": ["dreambooth3d=threestudio_dreambooth3d.cli:main"]},
)
