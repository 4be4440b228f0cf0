"""PEFT adapters on disk: save, and strict load onto the module the adapter was made for.

An adapter's tensor names are relative to the module it was injected into, its *root*. Task 1
trains the LoRA on the vision tower alone, so its root is the tower (names such as
``blocks.7.attn.qkv``); Tasks 2 and 3 use the full model as root (``model.visual.blocks.7...``).
``load_adapter_strict`` attaches an adapter to ``model`` itself when its names resolve there, else
to the vision tower inside ``model``; so a tower adapter loads into a bare tower and into
``Qwen2_5_VLForConditionalGeneration`` alike. Files follow ``PeftModel.save_pretrained``'s layout
(keys prefixed ``base_model.model.``), so ``PeftModel.from_pretrained(root, folder)`` reads them too.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import NamedTuple

import torch
from peft import LoraConfig, PeftModel, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils.constants import CONFIG_NAME as ADAPTER_CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME as ADAPTER_WEIGHTS_NAME
from torch import nn

from qwen_forensics.checkpoints.tensors import mismatch_report, read_tensors, require_file, save_tensors
from qwen_forensics.model.loader import short_list
from qwen_forensics.model.lora import PEFT_MODEL_PREFIX
from qwen_forensics.model.lora_targets import locate_components


def _adapter_owner(model: nn.Module, adapter_name: str) -> nn.Module:
    """The module the adapter was injected into: ``model`` itself or its unique descendant holding it."""
    if adapter_name in (getattr(model, "peft_config", None) or {}):
        return model
    owners = [
        (name, m)
        for name, m in model.named_modules()
        if name and adapter_name in (getattr(m, "peft_config", None) or {})
    ]
    roots = [(n, m) for n, m in owners if not any(n.startswith(f"{o}.") for o, _ in owners if o != n)]
    if len(roots) != 1:
        found = [n for n, _ in roots]
        raise ValueError(f"expected one module carrying PEFT adapter {adapter_name!r} in the model, found {found}")
    return roots[0][1]


def save_adapter(model: nn.Module, adapter_dir: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Write adapter ``adapter_name`` as a PEFT adapter folder (config + safetensors).

    ``model`` is a ``PeftModel``, a module with an injected adapter, or a model containing such a
    module (e.g. the full model whose vision tower got the adapter): names are stored relative to
    the module the adapter was injected into. Under DDP pass the unwrapped model, main process only.
    """
    adapter_dir = Path(adapter_dir)
    owner = _adapter_owner(model, adapter_name)
    config = copy.deepcopy(owner.peft_config[adapter_name])
    config.inference_mode = True
    state = get_peft_model_state_dict(owner, adapter_name=adapter_name, save_embedding_layers=False)
    if not isinstance(owner, PeftModel):
        state = {PEFT_MODEL_PREFIX + k: v for k, v in state.items()}
    save_tensors(state, adapter_dir / ADAPTER_WEIGHTS_NAME, {"format": "pt"})
    config.save_pretrained(str(adapter_dir))
    return adapter_dir


def _target_module_of(key: str) -> str:
    return key.split(".lora_", 1)[0] if ".lora_" in key else key.rsplit(".", 1)[0]


def _has_submodule(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


def _adapter_root(model: nn.Module, keys: list[str], weights_path: Path) -> str:
    modules = sorted({_target_module_of(k) for k in keys})
    candidates = [""]
    visual = locate_components(model)["visual"]
    if visual:
        candidates.append(visual)
    for root in candidates:
        base = model.get_submodule(root)
        if all(_has_submodule(base, m) for m in modules):
            return root
    base = model.get_submodule(candidates[-1])
    absent = [m for m in modules if not _has_submodule(base, m)]
    tried = ", ".join(repr(c or type(model).__name__) for c in candidates)
    raise ValueError(
        f"{weights_path}: adapter modules not found in the model under any root ({tried}): {short_list(absent)}; "
        "the adapter was made for a different model or its tensor names were changed"
    )


class AdapterLoadResult(NamedTuple):
    root: str  # path of the module the adapter was attached to ("" = the model itself)
    config: LoraConfig
    num_tensors: int


def load_adapter_strict(
    model: nn.Module,
    adapter_dir: str | os.PathLike,
    adapter_name: str = "default",
    is_trainable: bool = False,
) -> AdapterLoadResult:
    """Attach a saved LoRA adapter to ``model`` (plain module or PreTrainedModel) and verify it.

    Verification goes both ways after PEFT's key mapping: every LoRA tensor the injected adapter
    created has a tensor in the file, every file tensor belongs to the adapter, shapes agree, and
    after loading each model tensor equals its file tensor. Any failure raises naming the file; the
    model is then half-modified and must be discarded. Injection freezes the root's base weights;
    the LoRA weights train only with ``is_trainable=True``.
    """
    if isinstance(model, PeftModel):
        raise TypeError("load_adapter_strict takes the base model, not a PeftModel")
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG_NAME
    weights_path = adapter_dir / ADAPTER_WEIGHTS_NAME
    require_file(config_path, "adapter config")
    require_file(weights_path, "adapter weights")
    config = LoraConfig.from_pretrained(str(adapter_dir))
    if not isinstance(config, LoraConfig):
        raise ValueError(f"{config_path}: expected a LoRA adapter, found {type(config).__name__}")
    raw, _ = read_tensors(weights_path)
    file_state = {k.removeprefix(PEFT_MODEL_PREFIX): v for k, v in raw.items()}
    if not file_state:
        raise ValueError(f"{weights_path} holds no tensors")
    root_path = _adapter_root(model, list(file_state), weights_path)
    root = model.get_submodule(root_path)
    if any(isinstance(m, LoraLayer) for m in root.modules()):
        raise ValueError(f"the model already carries LoRA layers; load {adapter_dir} into a fresh model")

    config.inference_mode = not is_trainable
    was_training = root.training
    inject_adapter_in_model(config, root, adapter_name=adapter_name)
    # New LoRA modules start in training mode (active dropout); give them the model's mode.
    root.train(was_training)
    expected = get_peft_model_state_dict(root, adapter_name=adapter_name, save_embedding_layers=False)
    report = mismatch_report(weights_path, {k: v.shape for k, v in expected.items()}, file_state)
    if report:
        raise ValueError(report)
    load_result = set_peft_model_state_dict(root, file_state, adapter_name=adapter_name)
    if load_result.unexpected_keys:
        raise ValueError(f"{weights_path}: PEFT did not place {short_list(sorted(load_result.unexpected_keys))}")
    loaded = get_peft_model_state_dict(root, adapter_name=adapter_name, save_embedding_layers=False)
    not_loaded = sorted(
        k
        for k, v in file_state.items()
        if not torch.equal(loaded[k], v.to(device=loaded[k].device, dtype=loaded[k].dtype))
    )
    if not_loaded:
        raise RuntimeError(f"{weights_path}: tensors did not reach the model: {short_list(not_loaded)}")
    return AdapterLoadResult(root=root_path, config=config, num_tensors=len(file_state))
