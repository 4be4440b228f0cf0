"""Task 3 checkpoints (``hybrid_train.py``): where the adapter, heads and fusion files live, their
save with rebuild metadata, and the strict reassembly of the hybrid model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from accelerate import Accelerator
from torch import nn

from qwen_forensics.checkpoints.adapters import load_adapter_strict, save_adapter
from qwen_forensics.checkpoints.heads import load_heads_file, save_heads
from qwen_forensics.checkpoints.names import ADAPTER_DIR, FUSION_FILE, HEADS_FILE
from qwen_forensics.checkpoints.tensors import (load_module_safetensors, require_metadata, save_module_safetensors,
                                                save_training_state, write_resolved_config)
from qwen_forensics.model.hybrid import FusionProjector, HybridModel, HybridSpec, assemble_hybrid_model
from qwen_forensics.model.lora import check_lora_wrapped
from qwen_forensics.prompts import answer_token_ids


@dataclass(frozen=True)
class CheckpointPaths:
    """Where each part of a Task 3 checkpoint lives (one folder, or the config's three final paths)."""
    adapter_dir: Path
    heads_file: Path
    fusion_file: Path

    @classmethod
    def folder(cls, ckpt_dir: str | Path) -> "CheckpointPaths":
        ckpt_dir = Path(ckpt_dir)
        return cls(ckpt_dir / ADAPTER_DIR, ckpt_dir / HEADS_FILE, ckpt_dir / FUSION_FILE)

    @classmethod
    def from_config(cls, cfg) -> "CheckpointPaths":
        """The ``lora_checkpoint`` / ``head_checkpoint`` / ``fusion_checkpoint`` keys of a Task 3 config."""
        return cls(Path(cfg.lora_checkpoint), Path(cfg.head_checkpoint), Path(cfg.fusion_checkpoint))


def save_hybrid_weights(model: HybridModel, spec: HybridSpec, paths: CheckpointPaths) -> None:
    """Write the adapter (if any LoRA), heads and fusion projector with their rebuild metadata."""
    if any(spec.lora_targets.values()):
        save_adapter(model.base, paths.adapter_dir)
    save_heads(model.heads, model.layers, paths.heads_file)
    fusion_state = model.fusion.state_dict() if model.fusion is not None else {}
    save_module_safetensors(fusion_state, paths.fusion_file, {
        "fusion_config": json.dumps(model.fusion.config if model.fusion is not None else None),
        "hybrid_spec": json.dumps(asdict(spec)),
    })


def save_task3_checkpoint(paths: CheckpointPaths, state_dir: Path, accelerator: Accelerator, model: nn.Module,
                          spec: HybridSpec, cfg, optimizer, scheduler, step: int, epoch: int,
                          extra: Mapping[str, Any] | None = None) -> None:
    """Weights to ``paths``, resolved config and training state to ``state_dir`` (all processes call it);
    ``extra``: more training state (``save_training_state``)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_hybrid_weights(accelerator.unwrap_model(model), spec, paths)
        write_resolved_config(state_dir, cfg)
    accelerator.wait_for_everyone()
    save_training_state(state_dir, optimizer, scheduler, step, epoch, extra, process_index=accelerator.process_index)
    accelerator.wait_for_everyone()


def read_hybrid_spec(fusion_file: str | Path) -> HybridSpec:
    """The spec stored with the fusion projector (prompt, answer words, image size, layers, LoRA targets)."""
    meta = require_metadata(Path(fusion_file), ["hybrid_spec"], "hybrid_train.py")
    return HybridSpec(**json.loads(meta["hybrid_spec"]))


def load_hybrid_model(base: nn.Module, processor, paths: CheckpointPaths, *,
                      is_trainable: bool = False) -> tuple[HybridModel, HybridSpec]:
    """Attach a saved Task 3 checkpoint to a freshly loaded ``base``, every part strictly.

    The adapter must wrap exactly the modules the spec lists; heads and fusion are rebuilt from
    their saved constructor arguments and must match their files key for key and shape for shape.
    """
    fusion_meta = require_metadata(paths.fusion_file, ["fusion_config", "hybrid_spec"], "hybrid_train.py")
    spec = HybridSpec(**json.loads(fusion_meta["hybrid_spec"]))
    heads, heads_layers = load_heads_file(paths.heads_file, "hybrid_train.py or lora_train.py")
    if heads_layers != spec.visual_layers:
        raise ValueError(f"{paths.heads_file} reads ViT blocks {heads_layers} but {paths.fusion_file} "
                         f"was trained with {spec.visual_layers}: the files come from different runs")
    base.requires_grad_(False)
    if any(spec.lora_targets.values()):
        result = load_adapter_strict(base, paths.adapter_dir, is_trainable=is_trainable)
        if result.root:
            raise ValueError(f"{paths.adapter_dir} is a vision-tower adapter (Task 1); Task 3 needs its full-model adapter")
        check_lora_wrapped(base, spec.lora_targets)
    fusion_config = json.loads(fusion_meta["fusion_config"])
    if (fusion_config is None) != (spec.fusion_tokens == 0):
        raise ValueError(f"{paths.fusion_file}: fusion_config and fusion_tokens={spec.fusion_tokens} disagree")
    fusion = FusionProjector.from_config(fusion_config) if fusion_config is not None else None
    load_module_safetensors(fusion if fusion is not None else nn.Module(), paths.fusion_file)
    return assemble_hybrid_model(base, heads, fusion, spec, processor), spec


def answer_ids_for(processor, spec: HybridSpec) -> tuple[int, int]:
    """(fake id, real id) of the answer words the checkpoint was trained with."""
    return answer_token_ids(processor, spec.fake_word, spec.real_word)
