"""The checkpoint folders of the three tasks, their strict reload, and the checks of a config against them.

Task 1 (``lora_train.py``: ``epoch_N/``, ``best_by_*/`` and the final ``final_trained_heads``)::

    adapter/                    PEFT adapter of the vision tower (names relative to the tower)
    heads.safetensors           forensic heads; metadata "heads_config" (constructor args), "visual_layers"
    resolved_config.json        the training config
    training_state.pt, rng_state_*.pt   for resume

Task 2: LORA.py's adapter folder (PEFT format) whose ``resolved_config.json`` also records the
prompt setup (image size, prompt, answer words) that evaluation reads back (``adapter_setup``).

Task 3 (``hybrid_train.py`` writes one folder per epoch; the final one's three weight paths come from
``lora_checkpoint`` / ``head_checkpoint`` / ``fusion_checkpoint``)::

    adapter/                 one PEFT adapter over the full model (names relative to it); absent
                             when every LoRA component is switched off
    heads.safetensors        forensic heads, as in Task 1
    fusion.safetensors       fusion projector (no tensors with fusion_tokens = 0); metadata
                             "fusion_config" and "hybrid_spec" (prompt, answer words, image size,
                             tapped layers, LoRA targets): everything needed to rebuild the model
    resolved_config.json, training_state.pt, rng_state_*.pt

The seed's evaluation configs repeat training settings (LoRA rank, layers, answer words); the
checkpoint's own are what is loaded, and a repeated value that differs is reported.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from accelerate import Accelerator
from peft.tuners.lora import LoraLayer
from torch import nn

from .adapters import AdapterLoadResult, load_adapter_strict, save_adapter
from .checkpoint import (load_module_safetensors, read_resolved_config, read_safetensors_metadata,
                         save_module_safetensors, save_training_state, write_resolved_config)
from .model.forensic import ForensicViT
from .model.heads import ForensicHeads
from .model.hybrid import FusionProjector, HybridModel, HybridSpec, assemble_hybrid_model
from .model.lora import check_lora_wrapped, hybrid_target_spec
from .model.lora_targets import locate_components, resolve_targets_with_notes
from .prompts import PromptSetup, answer_token_ids


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
        save_heads(inner.heads, inner.layers, ckpt_dir / HEADS_FILE)
        write_resolved_config(ckpt_dir, cfg)
    accelerator.wait_for_everyone()
    save_training_state(ckpt_dir, optimizer, scheduler, step, epoch, process_index=accelerator.process_index)
    accelerator.wait_for_everyone()


def save_heads(heads: ForensicHeads, layers: Sequence[int], path: Path) -> None:
    """The heads with what rebuilds them: their constructor arguments and the ViT blocks they read."""
    save_module_safetensors(heads, path, {"heads_config": json.dumps(heads.config),
                                          "visual_layers": json.dumps(list(layers))})


def load_heads_file(path: Path, writer: str) -> tuple[ForensicHeads, list[int]]:
    """Rebuild heads from their saved constructor arguments and load them strictly; returns the
    heads and the ViT blocks they read. ``writer`` names the script that writes such files."""
    meta = _metadata(path, ["heads_config", "visual_layers"], writer)
    heads = ForensicHeads.from_config(json.loads(meta["heads_config"]))
    load_module_safetensors(heads, path)
    return heads, json.loads(meta["visual_layers"])


def load_heads(ckpt_dir: str | Path) -> tuple[ForensicHeads, list[int]]:
    """The heads of a Task 1 checkpoint folder."""
    return load_heads_file(Path(ckpt_dir) / HEADS_FILE, "lora_train.py")


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


FUSION_FILE = "fusion.safetensors"


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
                          spec: HybridSpec, cfg, optimizer, scheduler, step: int, epoch: int) -> None:
    """Weights to ``paths``, resolved config and training state to ``state_dir`` (all processes call it)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_hybrid_weights(accelerator.unwrap_model(model), spec, paths)
        write_resolved_config(state_dir, cfg)
    accelerator.wait_for_everyone()
    save_training_state(state_dir, optimizer, scheduler, step, epoch, process_index=accelerator.process_index)
    accelerator.wait_for_everyone()


def _metadata(path: Path, keys: Sequence[str], writer: str) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (check the checkpoint paths in the config)")
    meta = read_safetensors_metadata(path)
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ValueError(f"{path}: metadata lacks {missing}; it was not written by {writer}")
    return meta


def read_hybrid_spec(fusion_file: str | Path) -> HybridSpec:
    """The spec stored with the fusion projector (prompt, answer words, image size, layers, LoRA targets)."""
    meta = _metadata(Path(fusion_file), ["hybrid_spec"], "hybrid_train.py")
    return HybridSpec(**json.loads(meta["hybrid_spec"]))


def load_hybrid_model(base: nn.Module, processor, paths: CheckpointPaths, *,
                      is_trainable: bool = False) -> tuple[HybridModel, HybridSpec]:
    """Attach a saved Task 3 checkpoint to a freshly loaded ``base``, every part strictly.

    The adapter must wrap exactly the modules the spec lists; heads and fusion are rebuilt from
    their saved constructor arguments and must match their files key for key and shape for shape.
    """
    fusion_meta = _metadata(paths.fusion_file, ["fusion_config", "hybrid_spec"], "hybrid_train.py")
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


# Keys of the adapter's resolved_config.json that fix what evaluation must feed the model.
SETUP_KEYS = ("image_size", "prompt_text", "fake_token", "real_token")

ANSWER_KEYS = ("fake_token", "real_token")


def adapter_setup(lora_path: str | os.PathLike) -> PromptSetup:
    """The prompt setup LORA.py trained with, read from the adapter folder's resolved_config.json."""
    saved = read_resolved_config(lora_path)
    missing = [k for k in SETUP_KEYS if k not in saved]
    if missing:
        raise ValueError(f"{Path(lora_path) / 'resolved_config.json'} lacks {missing}: the adapter was not "
                         "written by Task 2's LORA.py, which records the geometry, prompt and answer words it "
                         "trained with; point lora_path at a LORA.py adapter folder")
    return PromptSetup(**{k: saved[k] for k in SETUP_KEYS})


def resolve_infer_setup(cfg, trained: PromptSetup) -> tuple[PromptSetup, list[str]]:
    """Evaluation setup and notes for the log: the config's explicit values, else the adapter's.

    The answer words are always the trained ones: reading another token's logit (" Fake" for
    "Fake", SPEC 6.3) gives a meaningless AUROC, so a configured word that differs is reported and
    replaced. A different prompt or geometry is allowed (to probe the model) but announced.
    """
    chosen, notes = {}, []
    for key in SETUP_KEYS:
        value = getattr(cfg, key)
        trained_value = getattr(trained, key)
        if value is None or value == trained_value:
            chosen[key] = trained_value
        elif key in ANSWER_KEYS:
            chosen[key] = trained_value
            notes.append(f"{key}={value!r} is not the answer word the adapter was trained with ({trained_value!r}); "
                         f"the trained word {trained_value!r} is read")
        else:
            chosen[key] = value
            notes.append(f"{key}={value!r} differs from the adapter's training value {trained_value!r}; the model is "
                         "evaluated on inputs it was not trained on")
    return PromptSetup(**chosen), notes


def seed_key_notes(cfg, trained: HybridSpec) -> list[str]:
    """The seed's eval config repeats training settings; the checkpoint's are what is loaded.

    A repeated value that differs, and answer words other than the trained ones (reading another
    token's logit gives a meaningless AUROC, SPEC 6.3), are reported; the trained values are used.
    """
    notes = []
    for key, value, saved in (("visual_layers", cfg.visual_layers, trained.visual_layers),
                              ("fusion_tokens", cfg.fusion_tokens, trained.fusion_tokens)):
        if value is not None and value != saved:
            notes.append(f"config {key}={value} but {cfg.fusion_checkpoint} was trained with {saved}; the "
                         "checkpoint's value is used")
    words = {"fake": [cfg.fake_token, cfg.target_text.fake if cfg.target_text else None],
             "real": [cfg.real_token, cfg.target_text.real if cfg.target_text else None]}
    for label, asked in words.items():
        saved = trained.fake_word if label == "fake" else trained.real_word
        for word in asked:
            if word is not None and word != saved:
                notes.append(f"{label} answer word {word!r} is not the trained one ({saved!r}); the trained word "
                             "is read")
    if cfg.fusion_hidden_dropout is not None:
        notes.append("fusion_hidden_dropout has no effect at evaluation (dropout is off)")
    return notes


def lora_config_notes(base, lora_cfg, trained) -> list[str]:
    """Compare the eval config's ``lora`` block with the checkpoint's recorded LoRA targets."""
    wanted, notes = resolve_targets_with_notes(base, hybrid_target_spec(lora_cfg))
    wanted = sorted(n for names in wanted.values() for n in names)
    saved = sorted(n for names in trained.lora_targets.values() for n in names)
    if wanted != saved:
        notes.append(f"the config's lora block names {len(wanted)} target modules, the checkpoint has {len(saved)} "
                     f"({len(set(wanted) - set(saved))} only in the config, {len(set(saved) - set(wanted))} only in "
                     "the checkpoint); the checkpoint's adapter is loaded")
    return notes
