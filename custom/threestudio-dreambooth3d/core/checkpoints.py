"""DreamBooth checkpoints on disk: safetensors weights + a small JSON, written atomically.

A checkpoint folder holds ``dreambooth.json`` (written last: its presence marks a
complete checkpoint) and the weights of each module it changes (``unet``,
``text_encoder``). A module's weights are one or two *layers* applied in order on
top of the base model the JSON names: ``full`` (the whole module's weights) and/or
``lora`` (adapter weights, with their rank and alpha). ``meta["weights"]`` lists them.

A checkpoint is self-contained: it loads to exactly the weights that were in memory
when it was written, whatever chain of runs produced them. A run continued from
another checkpoint (``--init-checkpoint``) therefore also writes what it started
from and did not train itself: a text encoder trained by the first run and frozen in
the second, or the full UNet a LoRA run sits on. Nothing refers back to the parent
folder, which may be moved or deleted.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Collection, Dict, List, Optional, Tuple, Union

import torch
from safetensors.torch import load_file, save_file

from . import lora
from ..errors import CheckpointNotFoundError, TrainingDivergedError
from ..fs import atomic_write_dir, atomic_write_file

META_FILE = "dreambooth.json"
FORMAT = "dreambooth3d-checkpoint/2"
MODULES = ("unet", "text_encoder")
LORA_TARGETS = {"unet": lora.UNET_TARGETS, "text_encoder": lora.TEXT_ENCODER_TARGETS}


def atomic_torch_save(obj: Any, path: Union[str, Path]) -> None:
    atomic_write_file(path, lambda tmp: torch.save(obj, tmp))


def is_checkpoint(path: Union[str, Path]) -> bool:
    return (Path(path) / META_FILE).is_file()


def read_meta(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not is_checkpoint(path):
        raise CheckpointNotFoundError(
            f"{path} is not a DreamBooth checkpoint (no {META_FILE}). Point at a folder written "
            "by `dreambooth3d finetune`, e.g. OUT/checkpoints/full."
        )
    return json.loads((path / META_FILE).read_text())


def model_source(name_or_path: Union[str, Path]) -> str:
    """How a checkpoint records its base model: a local folder as its absolute path (a relative
    path would mean another folder from another working directory), a hub id as given."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else str(name_or_path)


def same_model_source(a: Union[str, Path], b: Union[str, Path]) -> bool:
    """Whether two model references name the same model: local paths are compared resolved."""
    return model_source(a) == model_source(b)


def resolve_checkpoint(checkpoint: Optional[str], name: Optional[str] = None) -> Optional[Path]:
    """The DreamBooth checkpoint folder a config names, or None for the plain base model.

    ``checkpoint`` is either a checkpoint folder (``.../checkpoints/full``) or a
    finetuning output folder, in which case ``name`` (``partial``, ``full``,
    ``multiview``...) picks ``checkpoint/checkpoints/<name>``.
    """
    if not checkpoint:
        return None
    path = Path(checkpoint)
    if is_checkpoint(path):
        return path
    for candidate in ([path / "checkpoints" / name, path / name] if name else []):
        if is_checkpoint(candidate):
            return candidate
    found = sorted(p.name for p in (path / "checkpoints").glob("*") if is_checkpoint(p)) if path.is_dir() else []
    raise CheckpointNotFoundError(
        f"No DreamBooth checkpoint at {path}" + (f" named {name!r}" if name else "") + ". Set "
        "system.guidance.checkpoint to a checkpoint folder (holding dreambooth.json) or to a finetuning "
        "output folder plus system.guidance.checkpoint_name"
        + (f" (available: {', '.join(found)})" if found else "") + "."
    )


def checkpoint_base_mismatch(checkpoint: Optional[Path], model: str) -> Optional[str]:
    """A warning when ``checkpoint`` was trained on another base model than ``model``, else None."""
    if checkpoint is None:
        return None
    base = read_meta(checkpoint).get("base_model")
    if base and not same_model_source(base, model):
        return f"DreamBooth checkpoint {checkpoint} was trained on {base}, guidance loads {model}"
    return None


def weight_layers(meta: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    """Module name -> its layers ``[{"kind": "full"|"lora", "file", ("rank", "alpha")}]``, in load order."""
    if "weights" in meta:
        return meta["weights"]
    # format 1: one layer per module, of the run's mode; the text encoder only when trained
    layer = {"kind": meta["mode"]}
    if meta["mode"] == "lora":
        layer.update(rank=meta["lora_rank"], alpha=meta["lora_alpha"])
    names = ["unet"] + (["text_encoder"] if meta.get("text_encoder_trained") else [])
    return {m: [{**layer, "file": f"{m}.safetensors"}] for m in names}


def module_files(path: Union[str, Path], module: str) -> List[Path]:
    """The weight files a checkpoint holds for ``module`` (empty when it keeps the base's)."""
    return [Path(path) / layer["file"] for layer in weight_layers(read_meta(path)).get(module, [])]


def nonfinite_tensors(state: Dict[str, Any], prefix: str = "") -> List[str]:
    """Names of the floating-point tensors in a (nested) state dict holding NaN or inf."""
    bad: List[str] = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            bad += nonfinite_tensors(value, prefix=f"{name}/")
        elif torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


def assert_finite_state(state: Dict[str, Any], where: Union[str, Path]) -> None:
    """Refuse to write ``state`` to ``where`` when a tensor is NaN/inf: such a checkpoint is never kept."""
    bad = nonfinite_tensors(state)
    if bad:
        raise TrainingDivergedError(
            f"not writing {where}: {len(bad)} tensors hold NaN/inf (e.g. {bad[0]}). Training diverged: "
            "lower the learning rate (--lr) or train in fp32 (--mixed-precision no).")


def save_checkpoint(
    path: Union[str, Path],
    modules: Dict[str, Tuple[torch.nn.Module, bool]],
    meta: Dict[str, Any],
) -> Path:
    """Write ``modules`` (name -> (module, base_changed)) as they are now.

    ``base_changed`` says the module's plain weights differ from the base model's (a
    full finetune, a loaded full checkpoint or a merged LoRA): they are written whole.
    LoRA adapters present in the module are written as a ``lora`` layer on top.
    A module with neither is left out (the base's weights are used on load).
    """
    layers: Dict[str, List[Dict[str, Any]]] = {}
    tensors: Dict[str, Dict[str, torch.Tensor]] = {}
    for name, (module, base_changed) in modules.items():
        adapter = lora.lora_shape(module)
        out: List[Dict[str, Any]] = []
        if base_changed:
            # the LoRA run's own file keeps the plain name; the full weights under it are its base
            out.append({"kind": "full", "file": f"{name}.base.safetensors" if adapter else f"{name}.safetensors"})
            # fp32 on disk even where mixed-precision training stored the frozen base in half
            tensors[out[-1]["file"]] = {k: v.float() if v.is_floating_point() else v
                                        for k, v in lora.base_state_dict(module).items()}
        if adapter:
            out.append({"kind": "lora", "file": f"{name}.safetensors", "rank": adapter[0], "alpha": adapter[1]})
            tensors[out[-1]["file"]] = lora.lora_state_dict(module)
        if out:
            layers[name] = out

    assert_finite_state(tensors, path)

    def write(tmp: Path) -> None:
        for file, state in tensors.items():
            save_file(state, str(tmp / file))
        full_meta = {"format": FORMAT, **meta, "weights": layers, "text_encoder_trained": "text_encoder" in layers}
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2))

    return atomic_write_dir(Path(path), write)


def load_layer(module: torch.nn.Module, folder: Path, layer: Dict[str, Any], targets) -> None:
    """Load one weight layer into ``module`` (adds LoRA layers if needed)."""
    state = load_file(str(folder / layer["file"]))
    if layer["kind"] == "lora":
        if lora.lora_shape(module) is None:
            # the adapters' random init is overwritten below; drawing it from the global RNG would
            # shift every later random number (a stage's NeRF init and sampling) by whether this
            # load happened, e.g. whether the prompt embeddings were cached
            cuda = sorted({p.device.index or 0 for p in module.parameters() if p.is_cuda})
            with torch.random.fork_rng(devices=cuda):
                lora.add_lora(module, layer["rank"], layer["alpha"], targets)
        lora.load_lora_state_dict(module, state)
    else:
        module.load_state_dict(state)


def apply_checkpoint(
    components, path: Union[str, Path], merge_lora: Union[bool, Collection[str]] = True
) -> Dict[str, Any]:
    """Apply a checkpoint to freshly loaded SD components in place, to the modules that are
    loaded (not None); returns its metadata.

    ``merge_lora``: fold LoRA adapters into plain layers (True), keep them (False), or
    the names of the modules whose adapters to fold.
    """
    path = Path(path)
    meta = read_meta(path)
    merge = set(MODULES) if merge_lora is True else set(merge_lora or ())
    for name, layers in weight_layers(meta).items():
        module = getattr(components, name)
        if module is None:  # not loaded (sd_models.load_sd_components' parts): its files are not read
            continue
        for layer in layers:
            load_layer(module, path, layer, LORA_TARGETS[name])
        if name in merge and lora.lora_shape(module) is not None:
            lora.merge_lora(module)
    return meta
