"""What the pipeline needs and whether this machine has it: ``dreambooth3d doctor`` and the
checks ``dreambooth3d run`` makes before any work.

One :class:`Check` per row: threestudio (root, version, commit), every Python package we and
threestudio import (the lists setup.py installs, from :mod:`.requirements`), torchvision, CUDA and GPU memory, threestudio's
CUDA pieces (tinycudann, nvdiffrast, nerfacc's kernels) and which fallback stands in for each,
the base model (a local folder, a hub id already in the HF cache, or "will download") and free
disk. A row is *blocking* when the chosen preset cannot run without it.

Torch-free at import; torch is imported only by the GPU check.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..cpu.standin import importable
from ..errors import ConfigError

# the threestudio commit the threestudio tier and the smoke run were tested on (README)
from .fetch import TESTED_THREESTUDIO_COMMIT  # noqa: F401  (re-exported: the commit doctor compares against)
from .requirements import INSTALL_COMMAND
# distribution name -> module it provides, where they differ in more than case and '-'/'_'
IMPORT_NAMES = {
    "opencv-python-headless": "cv2", "pytorch-lightning": "pytorch_lightning", "pymcubes": "mcubes",
    "libigl": "igl", "taming-transformers-rom1504": "taming", "ipython": "IPython", "pillow": "PIL",
}
# bytes a run writes (checkpoints, class images, videos). smoke: measured, `du -sh OUT` after
# `run --preset smoke` = 27 MB (two 12 MB Lightning checkpoints of stages 1 and 3), plus a margin
# a CPU preset's run, measured; a GPU run's need is counted from its finetune mode and model (run_disk_need)
MIN_FREE_BYTES = {"smoke": 100 << 20}
# what a default run writes besides the finetunes: class images, NeRF checkpoints, videos, pseudo views, mesh
OTHER_OUTPUTS_BYTES = 1 << 30

OK, MISSING, WARN, INFO = "ok", "MISSING", "warn", "-"


@dataclass
class Check:
    name: str
    status: str  # OK, MISSING, WARN or INFO
    detail: str
    fix: str = ""

    @property
    def blocking(self) -> bool:
        return self.status == MISSING


# -- threestudio ----------------------------------------------------------------------------

def git_commit(root: Path) -> Optional[str]:
    """The checkout's HEAD commit, read from .git without running git; None if not a git checkout."""
    git = root / ".git"
    if git.is_file():  # a worktree or submodule: "gitdir: PATH"
        m = re.match(r"gitdir:\s*(.+)", git.read_text().strip())
        if not m:
            return None
        git = (root / m.group(1).strip()).resolve()
    if not (git / "HEAD").is_file():
        return None
    head = (git / "HEAD").read_text().strip()
    if not head.startswith("ref:"):
        return head  # detached
    ref = head[4:].strip()
    common = (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").is_file() else git
    for base in dict.fromkeys([git, common]):
        if (base / ref).is_file():
            return (base / ref).read_text().strip()
        packed = base / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    return None


def check_threestudio(explicit: Optional[Union[str, Path]] = None) -> List[Check]:
    from .fetch import cached_threestudio, ensure_threestudio
    from .threestudio_root import ThreestudioNotFoundError

    try:
        root = ensure_threestudio(explicit, fetch=False)  # given, installed, or fetched before
    except ThreestudioNotFoundError as e:
        fetchable = not explicit and not os.environ.get("THREESTUDIO_ROOT")
        return [Check("threestudio", MISSING, str(e).split(". ")[0],
                      f"dreambooth3d doctor --fix (git-fetches the tested commit into {cached_threestudio()}; "
                      "`dreambooth3d run` does the same)" if fetchable else
                      "git clone https://github.com/threestudio-project/threestudio && "
                      "export THREESTUDIO_ROOT=$PWD/threestudio")]
    text = (root / "threestudio" / "__init__.py").read_text(errors="replace")
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
    rows = [Check("threestudio", OK, f"{root} (version {m.group(1) if m else 'unknown'})")]
    commit = git_commit(root)
    tested = TESTED_THREESTUDIO_COMMIT[:7]
    if commit is None:
        rows.append(Check("threestudio commit", INFO, f"not a git checkout; tested with {tested}"))
    elif commit.startswith(TESTED_THREESTUDIO_COMMIT[: len(commit)]) or TESTED_THREESTUDIO_COMMIT.startswith(commit):
        rows.append(Check("threestudio commit", OK, f"{commit[:7]} (the tested one)"))
    else:
        rows.append(Check("threestudio commit", WARN, f"{commit[:7]}; tested with {tested}",
                          f"git -C {root} checkout {tested}  (if something fails)"))
    return rows


# -- Python packages ------------------------------------------------------------------------

def requirements(extra: bool = True) -> List[str]:
    """Our install requirements plus (``extra``) the threestudio ones, one per distribution
    (a name listed in both gets both version bounds)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from .requirements import INSTALL_REQUIRES, THREESTUDIO_EXTRA

    merged: dict = {}
    for text in INSTALL_REQUIRES + (THREESTUDIO_EXTRA if extra else []):
        req = Requirement(text)
        key = canonicalize_name(req.name)
        if key in merged:
            merged[key].specifier &= req.specifier
        else:
            req.extras = set()
            merged[key] = req
    return [str(r) for r in merged.values()]


def _module_name(dist: str) -> str:
    return IMPORT_NAMES.get(dist.lower(), dist.lower().replace("-", "_"))


def check_requirement(text: str, version_of: Callable[[str], Optional[str]] = None,
                      find_spec: Callable = None) -> Check:
    """One requirement string ("libigl>=2.4,<2.6"): installed at a version it allows?"""
    from packaging.requirements import Requirement

    version_of = version_of or _dist_version
    find_spec = find_spec or importlib.util.find_spec
    req = Requirement(text)
    fix = INSTALL_COMMAND  # one command installs every package: no line per package
    version = version_of(req.name)
    if version is None:
        if find_spec(_module_name(req.name)) is not None:  # e.g. opencv-python instead of -headless
            return Check(req.name, OK, f"{_module_name(req.name)} importable (from another distribution)")
        return Check(req.name, MISSING, "not installed", fix)
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        return Check(req.name, MISSING, f"{version} installed, {req.specifier} needed", fix)
    return Check(req.name, OK, version)


def _dist_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_packages() -> List[Check]:
    return [check_requirement(r) for r in requirements()] + [check_torchvision()]


def check_torchvision(version_of: Callable[[str], Optional[str]] = None,
                      imports: Callable[[str], bool] = importable) -> Check:
    """threestudio imports torchvision (three modules our stages do not use); where it does not
    import, cpu.compat puts a stand-in in its place. A matching build comes with torch, same index."""
    version_of = version_of or _dist_version
    tv, torch = version_of("torchvision"), version_of("torch")
    pin = f'pip install "torch=={torch}" torchvision' if torch else "pip install torch torchvision"
    if tv is None:
        return Check("torchvision", INFO, "not installed: threestudio loads with a stand-in (cpu.compat); "
                     "its zero123 guidance, co3d data and perceptual loss need it", pin)
    if not imports("torchvision"):
        return Check("torchvision", INFO, f"{tv} installed but does not import (a build for another torch): "
                     "threestudio loads with a stand-in (cpu.compat)", pin)
    return Check("torchvision", OK, tv)


# -- GPU and threestudio's CUDA pieces ------------------------------------------------------

@dataclass
class GpuInfo:
    available: bool
    name: str = ""
    total_bytes: int = 0
    free_bytes: int = 0


def gpu_info() -> GpuInfo:
    import torch

    if not torch.cuda.is_available():
        return GpuInfo(False)
    free, total = torch.cuda.mem_get_info(0)
    return GpuInfo(True, torch.cuda.get_device_name(0), total, free)


def check_gpu(needs_gpu: bool, info: Optional[GpuInfo] = None) -> Check:
    info = info or gpu_info()
    if info.available:
        return Check("CUDA GPU", OK, f"{info.name}, {info.total_bytes / 2**30:.1f} GiB "
                                     f"({info.free_bytes / 2**30:.1f} GiB free)")
    if needs_gpu:
        return Check("CUDA GPU", MISSING, "none visible: the default preset needs one",
                     "run on a GPU machine, or check the set-up here with --preset smoke (CPU)")
    return Check("CUDA GPU", INFO, "none visible: CPU smoke preset only")


def check_cuda_pieces(gpu: bool, importable: Callable[[str], bool] = importable,
                      have_tcnn_fallback: Optional[bool] = None) -> List[Check]:
    """tinycudann / nvdiffrast / nerfacc's CUDA kernels, and what stands in when one is missing.

    Without one, ``run`` launches threestudio through ``cpu.compat``, which puts pure-torch
    versions in place (slower); on a CPU they are what the smoke preset runs on."""
    if have_tcnn_fallback is None:
        have_tcnn_fallback = importlib.util.find_spec("threestudio_dreambooth3d.cpu.tinycudann") is not None
    tcnn_cmd = "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"
    nvd_cmd = "pip install git+https://github.com/NVlabs/nvdiffrast.git"
    rows = []
    if importable("tinycudann"):
        rows.append(Check("tinycudann", OK, "installed"))
    elif not have_tcnn_fallback:
        rows.append(Check("tinycudann", MISSING if gpu else INFO, "not installed: the hash-grid NeRF needs it",
                          tcnn_cmd))
    else:
        rows.append(Check("tinycudann", WARN if gpu else INFO,
                          "not installed: pure-torch fallback (cpu/tinycudann.py)" + (", slower" if gpu else ""),
                          tcnn_cmd))
    if importable("nvdiffrast.torch"):
        rows.append(Check("nvdiffrast", OK, "installed"))
    else:
        rows.append(Check("nvdiffrast", WARN if gpu else INFO,
                          "not installed: pure-torch rasteriser for the mesh export (cpu/nvdiffrast.py)"
                          + (", slower" if gpu else ""), nvd_cmd))
    if not importable("nerfacc"):
        rows.append(Check("nerfacc kernels", MISSING, "nerfacc not installed", 'pip install "nerfacc>=0.5.2,<0.6"'))
    elif not gpu:
        rows.append(Check("nerfacc kernels", INFO, "CPU: pure-torch packed ops (cpu/nerfacc.py)"))
    elif shutil.which("nvcc") or os.environ.get("CUDA_HOME"):
        rows.append(Check("nerfacc kernels", OK, "built by nerfacc on first use (nvcc found)"))
    else:
        rows.append(Check("nerfacc kernels", WARN, "no nvcc to build nerfacc's CUDA kernels: pure-torch packed ops "
                          "(cpu/nerfacc.py), slower", "install the CUDA toolkit (nvcc) matching torch"))
    return rows


# -- the base model and the disk -------------------------------------------------------------

def _hub_cached(repo_id: str) -> Optional[str]:
    from .hub import cached_file

    return cached_file(repo_id, "model_index.json")


def check_model(model: Optional[str], cached: Optional[Callable[[str], Optional[str]]] = None) -> Check:
    """A local diffusers folder, a hub id in the HF cache, or a download (impossible offline)."""
    cached = cached or _hub_cached
    if model is None:
        return Check("base model", OK, "tiny random Stable Diffusion, built in the output folder")
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        from ..core.model_folder import model_folder_problem

        problem = model_folder_problem(path)
        if problem is None:
            return Check("base model", OK, f"local folder {path}")
        return Check("base model", MISSING, problem, "pass --model a folder saved with save_pretrained, or a hub id")
    hit = cached(model)
    if hit:
        return Check("base model", OK, f"{model} (in the HF cache)")
    from .hub import hub_offline

    if hub_offline():
        return Check("base model", MISSING, f"{model} is not in the HF cache and HF_HUB_OFFLINE is set",
                     "download it once with network access, or pass --model a local folder")
    return Check("base model", WARN, f"{model} will download on first use (about 5 GB)")


def model_params(model: Optional[str], cached: Optional[Callable[[str], Optional[str]]] = None) -> Tuple[Dict[str, int], str]:
    """Parameters per component of ``model`` (from its safetensors headers when it is on disk),
    else Stable Diffusion 2.1 base's; and where the numbers come from."""
    from ..core.train_memory import SD21_BASE_PARAMS, folder_params

    folder = None
    if model:
        path = Path(model).expanduser()
        if path.exists():
            folder = path
        else:
            hit = (cached or _hub_cached)(model)
            folder = Path(hit).parent if hit else None
    counts = folder_params(folder) if folder is not None and folder.is_dir() else None
    if counts:
        return counts, f"{model}'s weights"
    return dict(SD21_BASE_PARAMS), "SD 2.1 base sizes"


def run_disk_need(preset: str, model: Optional[str] = "", finetune_args: Sequence[str] = (),
                  cached: Optional[Callable[[str], Optional[str]]] = None) -> Tuple[int, str]:
    """Bytes a run of ``preset`` writes at its peak, and how that was counted. A GPU run's is
    dominated by the DreamBooth training states (full mode: fp32 weights + AdamW moments of every
    trained parameter, ~10 GiB for an SD 2.1 UNet), so it follows ``--mode``, ``--train-text-encoder``
    and ``--use-8bit-adam`` (the preset's finetune options, then ``finetune_args``) and the model's size."""
    from ..core.train_memory import SD21_BASE_LORA16_PARAMS, finetune_disk_bytes, training_bytes
    from ..finetune_options import FinetuneOptions
    from ..pipeline.presets import get_preset

    p = get_preset(preset)
    if p.cpu:
        return MIN_FREE_BYTES.get(p.name, 0), f"a --preset {p.name} run, measured"
    required = ["--subject", "-", "--class-noun", "-", "--out", "-", *p.finetune_args]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            opts = FinetuneOptions.parse(required + list(finetune_args))
    except (SystemExit, ConfigError):  # a bad --set finetune option: the run's own checks name it; size without it
        opts = FinetuneOptions.parse(required)
    params, source = model_params(p.model if model == "" else model, cached)
    state = training_bytes(params, opts.mode, opts.train_text_encoder, amp=True, use_8bit_adam=opts.use_8bit_adam,
                           lora_params=SD21_BASE_LORA16_PARAMS).state_file
    need = finetune_disk_bytes(params, opts.mode, opts.train_text_encoder, opts.use_8bit_adam,
                               lora_params=SD21_BASE_LORA16_PARAMS) + OTHER_OUTPUTS_BYTES
    flags = f"--mode {opts.mode}" + (" --train-text-encoder" if opts.train_text_encoder else "") + (
        " --use-8bit-adam" if opts.use_8bit_adam else "")
    how = (f"{flags} with {source}: 2 finetune states of {state / 2**30:.2f} GiB (+1 while replaced), "
           f"3 checkpoints, ~{OTHER_OUTPUTS_BYTES / 2**30:.0f} GiB of stage outputs")
    return need, how


def check_mvdream(mvdream: Optional[str], tiny: bool = False,
                  cached: Optional[Callable[[str, str], Optional[str]]] = None) -> Check:
    """--prior mvdream's model: a converted folder or a checkpoint file here, the hub's released
    checkpoint in the HF cache, or a download (impossible offline)."""
    from ..defaults import MVDREAM_FILE, MVDREAM_REPO

    if tiny and not mvdream:
        return Check("MVDream model", OK, "tiny random MVDream, built in the output folder")
    if mvdream:
        path = Path(mvdream).expanduser()
        if path.is_dir():
            unet = path / "unet" / "config.json"
            if unet.is_file() and '"MultiViewUNet"' in unet.read_text():
                return Check("MVDream model", OK, f"local folder {path}")
            return Check("MVDream model", MISSING, f"{path} is not a converted MVDream folder (no MultiViewUNet in "
                         "unet/config.json)", "convert the released checkpoint: dreambooth3d convert-mvdream "
                         f"{MVDREAM_FILE} --out FOLDER, or pass --mvdream the .pt file")
        if path.is_file():
            return Check("MVDream model", OK, f"local checkpoint {path} (converted into the output folder once)")
        return Check("MVDream model", MISSING, f"{path} does not exist",
                     f"pass --mvdream a converted folder or the released {MVDREAM_FILE}")
    from .hub import cached_file, hub_offline

    hit = (cached or cached_file)(MVDREAM_REPO, MVDREAM_FILE)
    if hit:
        return Check("MVDream model", OK, f"{MVDREAM_REPO}/{MVDREAM_FILE} (in the HF cache; converted once)")
    if hub_offline():
        return Check("MVDream model", MISSING, f"{MVDREAM_REPO}/{MVDREAM_FILE} is not in the HF cache and "
                     "HF_HUB_OFFLINE is set", f"download it once with network access, or pass --mvdream a local file")
    return Check("MVDream model", WARN, f"{MVDREAM_REPO}/{MVDREAM_FILE} will download on first use (about 5 GB)")


def check_mvdream_gpu(info: GpuInfo, needs_gpu: bool) -> Check:
    """MVDream-threestudio asks for a GPU of at least MVDREAM_MIN_GPU_GB (its 256 px, 4-view stage)."""
    from ..defaults import MVDREAM_MIN_GPU_GB

    need = f"the MVDream stages need >= {MVDREAM_MIN_GPU_GB} GB of GPU memory (MVDream-threestudio's figure)"
    if not needs_gpu:
        return Check("MVDream GPU memory", INFO, need + "; the CPU smoke preset needs none")
    if not info.available:
        return Check("MVDream GPU memory", MISSING, need + "; no GPU visible", "run on a GPU machine")
    if info.total_bytes < MVDREAM_MIN_GPU_GB * 1e9:
        return Check("MVDream GPU memory", WARN, f"{info.name} has {info.total_bytes / 1e9:.1f} GB; " + need,
                     "expect out-of-memory at the 256 px stage; lower data.batch_size/width (--set stage1:...)")
    return Check("MVDream GPU memory", OK, f"{info.total_bytes / 1e9:.1f} GB >= {MVDREAM_MIN_GPU_GB} GB")


def check_disk(where: Union[str, Path], need_bytes: int, how: str = "") -> Check:
    path = Path(where).expanduser().resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    need = f"this run needs about {need_bytes / 2**30:.1f} GiB" + (f" ({how})" if how else "")
    detail = f"{free / 2**30:.1f} GiB free under {path}; {need}"
    if free < need_bytes:
        return Check("free disk", MISSING, detail, "free some space or pass --out on another disk")
    return Check("free disk", OK, detail)


# -- all together ---------------------------------------------------------------------------

def run_checks(preset: str = "default", model: Optional[str] = "", threestudio: Optional[str] = None,
               out: Union[str, Path] = ".", gpu: Optional[GpuInfo] = None,
               finetune_args: Sequence[str] = (), prior: str = "sd", mvdream: Optional[str] = None) -> List[Check]:
    """Every row for ``preset``; ``model=""`` means the preset's own model; ``finetune_args``: the
    user's extra ``dreambooth3d finetune`` options (they size the disk check). ``prior="mvdream"``
    adds the MVDream model (``mvdream``: --mvdream) and the GPU memory its stages need."""
    from ..pipeline.presets import get_preset

    p = get_preset(preset)
    info = gpu or gpu_info()
    rows = check_threestudio(threestudio) + check_packages()
    rows.append(check_gpu(needs_gpu=not p.cpu, info=info))
    rows += check_cuda_pieces(gpu=info.available and not p.cpu)
    rows.append(check_model(p.model if model == "" else model))
    if prior == "mvdream":
        rows.append(check_mvdream(mvdream, tiny=p.model is None))
        rows.append(check_mvdream_gpu(info, needs_gpu=not p.cpu))
    rows.append(check_disk(out, *run_disk_need(preset, model, finetune_args)))
    return rows


def format_table(rows: Sequence[Check]) -> str:
    w1 = max(len(r.name) for r in rows)
    w2 = max(len(r.status) for r in rows)
    lines = [f"{r.name:<{w1}}  {r.status:<{w2}}  {r.detail}" for r in rows]
    fixes: dict = {}  # one line per fix: every missing package shares the install command
    for r in rows:
        if r.fix and r.status in (MISSING, WARN):
            fixes.setdefault(r.fix, []).append(r.name)
    if fixes:
        lines += ["", "to fix:"] + [f"  {', '.join(names)}: {fix}" for fix, names in fixes.items()]
    return "\n".join(lines)


def blocking(rows: Sequence[Check]) -> List[Check]:
    return [r for r in rows if r.blocking]
