"""Activation recomputation: gradient checkpointing of the whole model (Task 3) and of frozen ViT
blocks only (Task 1's ``recompute_blocks``)."""

from __future__ import annotations

import functools

import torch
import torch.utils.checkpoint
from torch import nn


def enable_gradient_checkpointing(base: nn.Module) -> None:
    """Non-reentrant checkpointing of every ViT block and decoder layer (the tap needs non-reentrant)."""
    kwargs = {"use_reentrant": False}
    # transformers 5.24 renamed the method (the old name warns); older 5.x releases only have the old one.
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.config.use_cache = False


def recompute_frozen_blocks(tower: nn.Module, count: int, lora_layers: list[int], last_layer: int) -> list[int]:
    """Non-reentrant checkpointing of up to ``count`` frozen ViT blocks of ``tower``; returns their indices.

    Only blocks that keep activations for the backward qualify: from the first LoRA block to the
    last block the heads read (``last_layer``), without LoRA themselves (so no dropout is replayed).
    They are spread evenly over that range. A recomputed block runs its forward twice, so it costs
    about one block forward per step and frees everything the block kept (at 448 px and batch 16 on
    the 7B tower about 0.4 GiB). When fewer blocks qualify than ``count`` (other LoRA or tapped
    layers than the shipped config's), all that qualify are recomputed; the caller compares.
    """
    lora = set(lora_layers)
    candidates = [i for i in range(min(lora_layers), last_layer + 1) if i not in lora] if lora_layers else []
    count = min(count, len(candidates))
    if count <= 0:
        return []
    step = len(candidates) / count
    chosen = [candidates[int(k * step + step / 2)] for k in range(count)]
    for index in chosen:
        block = tower.blocks[index]
        block.gradient_checkpointing = True
        block._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    return chosen
