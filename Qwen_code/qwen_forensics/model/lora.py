"""LoRA on the model: configs for exact targets, injection and the one fp32 cast of trainable weights.

- Task 1 injects one adapter into the bare vision tower (``inject_adapter_in_model``);
- Task 2 wraps the full model in PEFT's model (``attach_lora``), for Hugging Face ``Trainer``;
- Task 3 injects one adapter over every enabled component (``inject_hybrid_lora``).

Targets come from ``lora_targets`` (exact module paths); after injection ``check_lora_wrapped``
confirms PEFT wrapped exactly those. Trainable weights train in fp32 even over a bf16 model
(``trainable_to_fp32``): AdamW updates on bf16 weights stall.
"""

from __future__ import annotations

import contextlib
from typing import Mapping, Sequence

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from qwen_forensics.model.loader import get_visual
from qwen_forensics.model.lora_targets import (LoraTargetSpec, _flatten, exact_target_regex, locate_components,
                                               resolve_targets, resolve_targets_with_notes)

PEFT_MODEL_PREFIX = "base_model.model."


def make_lora_config(
    targets: Mapping[str, Sequence[str]] | Sequence[str],
    r: int,
    alpha: float,
    dropout: float,
    bias: str = "none",
    task_type: str | None = None,
) -> LoraConfig:
    """A LoraConfig wrapping exactly ``targets`` (names relative to the model it is applied to)."""
    names = _flatten(targets)
    if not names:
        raise ValueError("no LoRA targets: enable at least one component (vision blocks, merger or LM layers)")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias=bias,
        task_type=task_type,
        target_modules=exact_target_regex(names),
    )


def lora_wrapped_modules(model: nn.Module) -> list[str]:
    """Names of the modules carrying LoRA layers, relative to the un-wrapped model."""
    return [n.removeprefix(PEFT_MODEL_PREFIX) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def check_lora_wrapped(model: nn.Module, targets: Mapping[str, Sequence[str]] | Sequence[str]) -> None:
    """Raise unless the LoRA-wrapped modules of ``model`` are exactly ``targets``."""
    wanted = set(_flatten(targets))
    wrapped = set(lora_wrapped_modules(model))
    if wanted != wrapped:
        raise RuntimeError(
            "LoRA was injected into the wrong modules: "
            f"missing {sorted(wanted - wrapped)}, unexpected {sorted(wrapped - wanted)}"
        )


class LoraInputCast:
    """Switch off PEFT's cast of each LoRA layer's input to the adapter's dtype, inside autocast.

    PEFT copies the (bf16) input of every LoRA layer to the fp32 dtype of its weights and runs the
    dropout on that copy; under autocast the LoRA matmuls then cast it straight back to bf16. The
    dropout of a bf16 tensor is computed in fp32 and rounded once, so skipping the round trip gives
    the same values with two fewer passes over every LoRA layer's input. Outside autocast the cast
    is needed (fp32 weights, bf16 inputs) and stays on.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, LoraLayer)]

    def set(self, enabled: bool) -> None:
        for layer in self.layers:
            layer.cast_input_dtype_enabled = enabled

    @contextlib.contextmanager
    def off(self):
        """Cast off inside the block; each layer gets back the setting it had."""
        previous = [layer.cast_input_dtype_enabled for layer in self.layers]
        self.set(False)
        try:
            yield
        finally:
            for layer, enabled in zip(self.layers, previous):
                layer.cast_input_dtype_enabled = enabled


def trainer_target_spec(cfg) -> LoraTargetSpec:
    """``Task2TrainConfig`` -> target spec; an empty block list means LoRA on the extra modules only."""
    return LoraTargetSpec(vision_blocks=list(cfg.lora_target_blocks) or None,
                          vision_modules=list(cfg.lora_target_modules),
                          vision_extra_modules=list(cfg.lora_extra_modules))


def attach_lora(model: torch.nn.Module, cfg):
    """Wrap the full model in a PEFT model whose LoRA sits on exactly the configured vision modules."""
    from peft import get_peft_model

    targets = resolve_targets(model, trainer_target_spec(cfg))
    config = make_lora_config(targets, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                              bias=cfg.lora_bias, task_type=cfg.lora_task_type)
    peft_model = get_peft_model(model, config)
    check_lora_wrapped(peft_model, targets)
    return peft_model, targets


def vision_inputs_require_grad(model: torch.nn.Module):
    """Make the patch embedding's output require grad; returns the hook handle.

    With reentrant checkpointing a block's parameters get gradients only if an input of the block
    requires grad. The tower's first input is the frozen patch embedding of pixel values, which does
    not, so every vision LoRA would silently get no gradient. Recent transformers hook the patch
    embedding in ``enable_input_require_grads`` themselves, older ones only the token embeddings;
    this hook makes the gradients independent of the installed version.
    """
    patch_embed = get_visual(model).patch_embed
    return patch_embed.register_forward_hook(lambda module, args, output: output.requires_grad_(True))


def hybrid_target_spec(lora_cfg) -> LoraTargetSpec:
    """The config's ``lora`` block (``task_configs.HybridLora``) as a per-component target spec.

    ``lm.layers`` null means every LM layer unless ``lm.extra_modules`` / ``extra_patterns`` name
    the modules (the earlier scripts' shape), then only those.
    """
    visual, lm = lora_cfg.visual, lora_cfg.lm
    lm_layers = None
    if lm.enabled:
        if lm.layers is not None:
            lm_layers = lm.layers if lm.layers == "all" else list(lm.layers)
        elif not (lm.extra_modules or lm.extra_patterns):
            lm_layers = "all"
    return LoraTargetSpec(
        vision_blocks=list(visual.blocks) if visual.enabled else None,
        vision_extra_modules=list(visual.extra_modules) if visual.enabled else (),
        vision_patterns=list(visual.extra_patterns) if visual.enabled else (),
        merger=lora_cfg.merge.enabled,
        lm_layers=lm_layers,
        lm_extra_modules=list(lm.extra_modules) if lm.enabled else (),
        lm_patterns=list(lm.extra_patterns) if lm.enabled else (),
    )


def inject_hybrid_lora(base: nn.Module, lora_cfg) -> tuple[dict[str, list[str]], list[str]]:
    """Freeze ``base`` and inject ONE adapter over all enabled components; returns the targets and
    notes (patterns that matched nothing).

    Targets are exact module paths per component (``model.lora.resolve_targets``); with every
    component off nothing is injected and the returned lists are all empty.
    """
    base.requires_grad_(False)
    targets, notes = resolve_targets_with_notes(base, hybrid_target_spec(lora_cfg))
    if any(targets.values()):
        config = make_lora_config(targets, r=lora_cfg.r, alpha=lora_cfg.alpha, dropout=lora_cfg.dropout,
                                  bias=lora_cfg.bias)
        inject_adapter_in_model(config, base)
        check_lora_wrapped(base, targets)
    return targets, notes


def trainable_to_fp32(module: nn.Module) -> list[nn.Parameter]:
    """The module's trainable tensors (LoRA, plus biases with ``bias != "none"``), cast to fp32 in place.

    Trainable weights train in fp32 even when the frozen model is bf16: AdamW updates on bf16
    weights stall (the update is below bf16's resolution), so every recipe casts through here.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for param in params:
        param.data = param.data.float()
    return params


def trainable_base_parameters(base: nn.Module) -> dict[str, list[nn.Parameter]]:
    """:func:`trainable_to_fp32` of the full model, split into ``vision`` (tower and merger) and ``lm``."""
    visual_prefix = locate_components(base)["visual"] + "."
    trainable = {id(p) for p in trainable_to_fp32(base)}
    groups: dict[str, list[nn.Parameter]] = {"vision": [], "lm": []}
    for name, param in base.named_parameters():
        if id(param) in trainable:
            groups["vision" if name.startswith(visual_prefix) else "lm"].append(param)
    return groups


