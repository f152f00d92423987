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
# one list of requirements, also read by `dreambooth3d doctor`
REQ: dict = {}
exec(open(f"{EXT_DIR}/environment/requirements.py").read(), REQ)

setup(
    name="threestudio-dreambooth3d",
    version="0.1.0",
    description="DreamBooth3D (subject-driven text-to-3D) as a threestudio extension",
    python_requires=">=3.9",
    packages=[PKG, *subpackages, f"{PKG}.configs"],
    package_dir=package_dir,
    package_data={f"{PKG}.configs": ["*.yaml", "*/*.yaml"]},
    include_package_data=True,
    install_requires=REQ["INSTALL_REQUIRES"],
    extras_require={
        # submitit: the sweep's cluster path is tested with its local executor
        "test": ["pytest>=7", "pytest-timeout", "submitit>=1.5"],
        # `dreambooth3d finetune --use-8bit-adam` (8-bit AdamW optimizer state)
        "8bit": ["bitsandbytes>=0.43"],
        # `dreambooth3d sweep --executor slurm`
        "cluster": ["submitit>=1.5"],
        # `dreambooth3d app`: the web page (its browser test also needs playwright + a Chromium)
        "app": ["gradio>=6.0,<7"],
        # what threestudio imports when it loads (see environment/requirements.py)
        "threestudio": REQ["THREESTUDIO_EXTRA"],
    },
    entry_points={"console_scripts": ["dreambooth3d=threestudio_dreambooth3d.cli:main"]},
)
