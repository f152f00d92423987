"""LoRA on the UNet / text encoder through peft, and merging it back into plain layers."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from ..errors import ConfigError

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def add_lora(model: torch.nn.Module, rank: int, alpha: float, target_modules: Sequence[str]) -> torch.nn.Module:
    """Inject LoRA layers; afterwards only the LoRA weights require grad."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(target_modules))
    return inject_adapter_in_model(cfg, model)


def lora_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def lora_shape(model: torch.nn.Module) -> Optional[Tuple[int, float]]:
    """(rank, alpha) of the LoRA adapters injected in ``model``, or None if it has none."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and "default" in module.r:
            return module.r["default"], module.lora_alpha["default"]
    return None


def base_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The plain module's state dict, without any injected LoRA (keys as before injection)."""
    return {k.replace(".base_layer.", "."): v.detach().cpu().contiguous()
            for k, v in model.state_dict().items() if ".lora_" not in k}


def load_lora_state_dict(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ConfigError(f"LoRA weights do not fit this model: unexpected keys {unexpected[:3]}...")


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every LoRA delta into its base layer and put the plain layer back.

    The merged model runs exactly as fast as the base model, which the SDS guidance
    (called thousands of times) relies on.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = False
    return model
