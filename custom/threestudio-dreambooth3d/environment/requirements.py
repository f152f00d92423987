"""What to install, in one place: setup.py reads these lists (without importing the package)
and ``dreambooth3d doctor`` checks this Python against them. Pure data, no imports."""

# The one install command (README, CI's .ci/run, doctor's fix for missing packages), from this
# repository's folder: the CPU torch wheel, our package with its test and threestudio extras.
INSTALL_COMMAND = 'pip install torch==2.13.0 -e ".[test,threestudio]"'

INSTALL_REQUIRES = [
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
    "packaging",  # doctor: requirement checks
    "filelock>=3.12",  # one process per output folder (pipeline/lock.py)
]

# Every pure-Python (or wheel-shipped) package threestudio imports when it loads (launch.py
# imports all its systems, guidance and extern/ modules), at versions that work with ours.
# threestudio's requirements.txt pins diffusers<0.20, transformers==4.28.1, lightning==2.0.0,
# which conflict with the above; this list replaces it (README, *threestudio*).
# Not here: torchvision (install it with torch, from the same index, so pip does not swap
# torch), and the CUDA builds tinycudann / nvdiffrast / envlight (README: GPU set-up).
THREESTUDIO_EXTRA = [
    "lightning>=2.0", "pytorch-lightning>=2.0",  # threestudio imports both names
    "omegaconf>=2.3", "jaxtyping", "typeguard>=4",
    "nerfacc>=0.5.2,<0.6",  # PyPI's is pure Python; CUDA kernels JIT-build on a GPU
    "accelerate", "opencv-python-headless", "tensorboard", "matplotlib", "scipy",
    "imageio[ffmpeg]>=2.28", "trimesh", "networkx", "PyMCubes", "xatlas",
    "libigl>=2.4,<2.6",  # 2.6 dropped functions threestudio.utils.ops imports
    "torchmetrics", "einops", "kornia", "wandb", "requests", "packaging", "huggingface_hub",
    "controlnet_aux", "taming-transformers-rom1504", "ipython",  # imported by guidance it loads
]
