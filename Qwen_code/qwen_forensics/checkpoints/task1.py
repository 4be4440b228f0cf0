"""Task 1 checkpoint folders (``lora_train.py``): save, strict reload of the visual LoRA + heads, and the
image geometry they were trained with."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from accelerate import Accelerator
from torch import nn

from qwen_forensics.checkpoints.adapters import AdapterLoadResult, load_adapter_strict, save_adapter
from qwen_forensics.checkpoints.heads import load_heads, save_heads
from qwen_forensics.checkpoints.names import ADAPTER_DIR, HEADS_FILE
from qwen_forensics.checkpoints.tensors import read_resolved_config, save_training_state, write_resolved_config
from qwen_forensics.model.forensic import ForensicViT
from qwen_forensics.model.heads import ForensicHeads
from qwen_forensics.model.lora_targets import locate_components


def save_task1_checkpoint(ckpt_dir: Path, accelerator: Accelerator, model: nn.Module, cfg, optimizer, scheduler,
                          step: int, epoch: int, extra: Mapping[str, Any] | None = None) -> None:
    """Write a complete, resumable Task 1 checkpoint folder (all processes must call it); ``extra``: more
    training state (``save_training_state``)."""
    accelerator.wait_for_everyone()
    inner: ForensicViT = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_adapter(inner.visual, ckpt_dir / ADAPTER_DIR)
        save_heads(inner.heads, inner.layers, ckpt_dir / HEADS_FILE)
        write_resolved_config(ckpt_dir, cfg)
    accelerator.wait_for_everyone()
    save_training_state(ckpt_dir, optimizer, scheduler, step, epoch, extra, process_index=accelerator.process_index)
    accelerator.wait_for_everyone()


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


def checkpoint_image_size(ckpt_dir: str | Path) -> int:
    """The letterbox side the checkpoint was trained with (evaluation must use the same geometry)."""
    return int(read_resolved_config(ckpt_dir)["image_size"])


def resume_task1(visual: nn.Module, ckpt_dir: str | Path) -> tuple[ForensicHeads, list[int]]:
    """Continue training from a Task 1 checkpoint folder: its LoRA attached to ``visual`` (trainable,
    strictly), and its heads with the ViT blocks they read."""
    load_adapter_strict(visual, Path(ckpt_dir) / ADAPTER_DIR, is_trainable=True)
    return load_heads(ckpt_dir)
