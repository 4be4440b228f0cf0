"""Task 1 pieces shared by its training and evaluation scripts: the checkpoint folder (visual LoRA adapter + heads + training state + config), and the
strict reload of that folder onto a bare vision tower or onto the full model.

Checkpoint folder layout::

    adapter/                    PEFT adapter of the vision tower (names relative to the tower)
    heads.safetensors           forensic heads; metadata "heads_config" = JSON constructor args
    resolved_config.json        the training config
    training_state.pt, rng_state_*.pt   for resume
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from accelerate import Accelerator
from peft.tuners.lora import LoraLayer
from torch import nn

from .checkpoint import (AdapterLoadResult, load_adapter_strict, load_module_safetensors, read_resolved_config,
                         read_safetensors_metadata, save_adapter, save_module_safetensors, save_training_state,
                         write_resolved_config)
from .model.forensic import ForensicViT
from .model.heads import ForensicHeads
from .model.lora import locate_components

ADAPTER_DIR = "adapter"
HEADS_FILE = "heads.safetensors"


def save_task1_checkpoint(ckpt_dir: Path, accelerator: Accelerator, model: nn.Module, cfg, optimizer, scheduler,
                          step: int, epoch: int) -> None:
    """Write a complete, resumable Task 1 checkpoint folder (all processes must call it)."""
    accelerator.wait_for_everyone()
    inner: ForensicViT = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_adapter(inner.visual, ckpt_dir / ADAPTER_DIR)
        save_module_safetensors(inner.heads, ckpt_dir / HEADS_FILE,
                                {"heads_config": json.dumps(inner.heads.config), "visual_layers": json.dumps(inner.layers)})
        write_resolved_config(ckpt_dir, cfg)
    accelerator.wait_for_everyone()
    save_training_state(ckpt_dir, optimizer, scheduler, step, epoch, process_index=accelerator.process_index)
    accelerator.wait_for_everyone()


def load_heads(ckpt_dir: str | Path) -> tuple[ForensicHeads, list[int]]:
    """Rebuild the heads from their own saved constructor arguments and load them strictly."""
    path = Path(ckpt_dir) / HEADS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {ckpt_dir} a Task 1 checkpoint folder?")
    meta = read_safetensors_metadata(path)
    if "heads_config" not in meta or "visual_layers" not in meta:
        raise ValueError(f"{path}: metadata lacks heads_config/visual_layers; it was not written by lora_train.py")
    heads = ForensicHeads.from_config(json.loads(meta["heads_config"]))
    load_module_safetensors(heads, path)
    return heads, json.loads(meta["visual_layers"])


def attach_task1_checkpoint(visual: nn.Module, ckpt_dir: str | Path) -> ForensicViT:
    """Vision tower (bare, or ``model.model.visual`` of the full model) + strict LoRA + strict heads."""
    ckpt_dir = Path(ckpt_dir)
    load_adapter_strict(visual, ckpt_dir / ADAPTER_DIR)
    heads, layers = load_heads(ckpt_dir)
    return ForensicViT(visual, layers, heads.to(next(visual.parameters()).device))


def attach_task1_lora(model: nn.Module, ckpt_dir: str | Path) -> AdapterLoadResult:
    """Strictly attach a Task 1 checkpoint's visual LoRA to the full model's vision tower (subtask 2)."""
    result = load_adapter_strict(model, Path(ckpt_dir) / ADAPTER_DIR)
    visual = locate_components(model)["visual"]
    if result.root != visual:
        raise ValueError(f"{Path(ckpt_dir) / ADAPTER_DIR} attached to {result.root or 'the model root'!r}, not to the "
                         f"vision tower {visual!r}: it is not a Task 1 visual LoRA")
    return result


_BLOCK_INDEX = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
SEED_LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_layers")


def check_seed_lora_keys(cfg, visual: nn.Module, ckpt_dir: str | Path) -> list[str]:
    """The seed's evaluation configs repeat the LoRA settings; the adapter's own are what is loaded.

    The earlier scripts used these keys only as fallbacks for checkpoints that did not record
    their settings; every checkpoint here records them, so a differing value changes nothing. It
    is reported (returned as notes) because it usually means the config was written for another run.
    """
    lora_config = visual.peft_config["default"]
    blocks = sorted({int(m.group(1)) for name, module in visual.named_modules()
                     if isinstance(module, LoraLayer) and (m := _BLOCK_INDEX.search(name))})
    found = {"lora_r": lora_config.r, "lora_alpha": lora_config.lora_alpha, "lora_dropout": lora_config.lora_dropout,
             "lora_target_layers": blocks}
    notes = []
    for key in SEED_LORA_KEYS:
        given = getattr(cfg, key)
        if given is not None and (sorted(given) if key == "lora_target_layers" else given) != found[key]:
            notes.append(f"config {key}={given!r} but the checkpoint {ckpt_dir} was trained with {found[key]!r}; "
                         "the checkpoint's setting is used")
    return notes


def checkpoint_image_size(ckpt_dir: str | Path) -> int:
    """The letterbox side the checkpoint was trained with (evaluation must use the same geometry)."""
    return int(read_resolved_config(ckpt_dir)["image_size"])


def cast_trainable_to_fp32(module: nn.Module) -> list[torch.nn.Parameter]:
    """LoRA weights train in fp32 even when the frozen tower is bf16 (AdamW updates in bf16 stall)."""
    params = [p for n, p in module.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params
