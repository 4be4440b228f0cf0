"""Optimisation of the custom recipes: parameter groups with their learning rates, AdamW with the
warm-up + cosine schedule, the number of optimizer steps, and Task 3's groups."""

from __future__ import annotations

import math

import torch
import torch.utils.checkpoint
from transformers import get_cosine_schedule_with_warmup

from qwen_forensics.model.hybrid import HybridModel
from qwen_forensics.model.lora import trainable_base_parameters


def param_groups(groups: dict[str, tuple[list[torch.nn.Parameter], float]], weight_decay: float) -> list[dict]:
    """AdamW groups by name; norms, biases and 1-D gains get no weight decay."""
    out = []
    for name, (params, lr) in groups.items():
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        if decay:
            out.append({"name": name, "params": decay, "lr": lr, "weight_decay": weight_decay})
        if no_decay:
            out.append({"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    if not out:
        raise ValueError("no trainable parameters: check the LoRA targets and the heads")
    return out


def build_optimizer_and_schedule(groups: list[dict], *, total_steps: int, warmup_ratio: float):
    """AdamW (the fused single-kernel update when every parameter is already on the GPU) and a
    warm-up + cosine schedule."""
    fused = all(p.is_cuda for group in groups for p in group["params"])
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)
    warmup = int(math.ceil(warmup_ratio * total_steps))
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return optimizer, scheduler


def optimizer_steps(num_batches: int, grad_accum: int, epochs: int, max_steps: int | None) -> int:
    """Optimizer steps the run will take (the schedule's length)."""
    per_epoch = max(1, math.ceil(num_batches / grad_accum))
    total = per_epoch * epochs
    return min(total, max_steps) if max_steps else total


def hybrid_optimizer(model: HybridModel, cfg, total_steps: int):
    """AdamW with groups heads / fusion / vision LoRA / LM LoRA and a warm-up cosine schedule."""
    base_params = trainable_base_parameters(model.base)
    groups = param_groups({
        "heads": (list(model.heads.parameters()), cfg.lr_head),
        "fusion": (list(model.fusion.parameters()) if model.fusion is not None else [], cfg.lr_fusion),
        "lora_vision": (base_params["vision"], cfg.lr_lora),
        "lora_lm": (base_params["lm"], cfg.lr_lora_lm if cfg.lr_lora_lm is not None else cfg.lr_lora),
    }, cfg.weight_decay)
    return build_optimizer_and_schedule(groups, total_steps=total_steps, warmup_ratio=cfg.warmup_ratio)
