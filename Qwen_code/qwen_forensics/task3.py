"""Task 3 pieces shared by its training and evaluation scripts: LoRA on the three components, the
hybrid model built from a config, the batch collator, the joint loss, batched prediction, and the
checkpoint files (one PEFT adapter, heads, fusion projector) with their strict reload.

Checkpoint folder layout (``hybrid_train.py`` writes one per epoch and a final one whose three
weight paths come from the config keys ``lora_checkpoint`` / ``head_checkpoint`` /
``fusion_checkpoint``)::

    adapter/                 one PEFT adapter over the full model (names relative to it); absent
                             when every LoRA component is switched off
    heads.safetensors        forensic heads; metadata "heads_config", "visual_layers" (as Task 1)
    fusion.safetensors       fusion projector (no tensors with fusion_tokens = 0); metadata
                             "fusion_config" and "hybrid_spec" (prompt, answer words, image size,
                             tapped layers, LoRA targets): everything needed to rebuild the model
    resolved_config.json, training_state.pt, rng_state_*.pt
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from peft import inject_adapter_in_model
from torch import nn

from .checkpoint import (load_adapter_strict, load_module_safetensors, read_safetensors_metadata, save_adapter,
                         save_module_safetensors, save_training_state, write_resolved_config)
from .data.collate import IGNORE_INDEX, VisionLanguageCollator, lm_logits_to_keep, require_mrope_inputs
from .evaluation import HeadPredictions, gather_in_order
from .lm_eval import answer_logits, decode_generated
from .losses import ForensicLossWeights, forensic_loss
from .metrics import combined_score
from .model.heads import ForensicHeads
from .model.hybrid import FusionProjector, HybridModel, HybridPrompt, embedding_rms
from .model.lora import (LoraTargetSpec, check_lora_wrapped, locate_components, make_lora_config,
                         resolve_targets_with_notes)
from .prompts import answer_token_ids
from .training import autocast, build_optimizer_and_schedule, param_groups

ADAPTER_DIR = "adapter"
HEADS_FILE = "heads.safetensors"
FUSION_FILE = "fusion.safetensors"
# Batch keys that are bookkeeping or targets, not arguments of the Qwen2.5-VL forward.
NON_MODEL_KEYS = ("target", "answer_positions", "labels", "mask", "position")


# ----------------------------------------------------------------------------------------- LoRA
def lora_target_spec(lora_cfg) -> LoraTargetSpec:
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
    targets, notes = resolve_targets_with_notes(base, lora_target_spec(lora_cfg))
    if any(targets.values()):
        config = make_lora_config(targets, r=lora_cfg.r, alpha=lora_cfg.alpha, dropout=lora_cfg.dropout,
                                  bias=lora_cfg.bias)
        inject_adapter_in_model(config, base)
        check_lora_wrapped(base, targets)
    return targets, notes


def trainable_base_parameters(base: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The base model's trainable tensors (LoRA, plus biases with ``bias != "none"``) in fp32, split
    into ``vision`` (tower and merger) and ``lm``; fp32 because AdamW updates on bf16 weights stall."""
    visual_prefix = locate_components(base)["visual"] + "."
    groups: dict[str, list[nn.Parameter]] = {"vision": [], "lm": []}
    for name, param in base.named_parameters():
        if param.requires_grad:
            param.data = param.data.float()
            groups["vision" if name.startswith(visual_prefix) else "lm"].append(param)
    return groups


# ----------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class HybridSpec:
    """Everything besides tensors that a hybrid checkpoint needs to rebuild its model and prompt."""

    visual_layers: list[int]
    fusion_tokens: int
    head_verdict_prompt: bool
    prompt: str
    fake_word: str
    real_word: str
    image_size: int
    lora_targets: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_train_config(cls, cfg, lora_targets: Mapping[str, Sequence[str]]) -> "HybridSpec":
        return cls(list(cfg.visual_layers), cfg.fusion_tokens, cfg.head_verdict_prompt, cfg.prompt,
                   cfg.target_text.fake, cfg.target_text.real, cfg.image_size,
                   {k: list(v) for k, v in lora_targets.items()})

    def hybrid_prompt(self, processor) -> HybridPrompt:
        return HybridPrompt.build(processor, self.prompt, self.fusion_tokens, fake_word=self.fake_word,
                                  real_word=self.real_word, head_verdict=self.head_verdict_prompt)


def build_hybrid_model(base: nn.Module, processor, cfg, say=print) -> tuple[HybridModel, HybridSpec]:
    """A fresh hybrid model for training from a ``Task3TrainConfig``: LoRA injected into ``base``,
    new heads and fusion projector on ``base``'s device (sizes read from ``base.config``). Notes on
    the LoRA targets (patterns that matched nothing) go to ``say``."""
    targets, notes = inject_hybrid_lora(base, cfg.lora)
    for note in notes:
        say(f"note: {note}")
    spec = HybridSpec.from_train_config(cfg, targets)
    heads = ForensicHeads.from_vision_config(base.config.vision_config, cfg.visual_layers, cfg.fuse_dim)
    fusion = None
    if cfg.fusion_tokens:
        fusion = FusionProjector(cfg.fuse_dim, int(base.config.text_config.hidden_size), cfg.fusion_tokens,
                                 dropout=cfg.fusion_hidden_dropout, embed_rms=embedding_rms(base))
    return _assemble(base, heads, fusion, spec, processor), spec


def _assemble(base, heads, fusion, spec: HybridSpec, processor) -> HybridModel:
    device = next(base.parameters()).device
    fusion = fusion.to(device) if fusion is not None else None
    return HybridModel(base, heads.to(device), fusion, spec.visual_layers, spec.hybrid_prompt(processor))


def enable_gradient_checkpointing(base: nn.Module) -> None:
    """Non-reentrant checkpointing of every ViT block and decoder layer (the tap needs non-reentrant)."""
    kwargs = {"use_reentrant": False}
    # transformers 5.24 renamed the method (the old name warns); older 5.x releases only have the old one.
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.config.use_cache = False


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


# ----------------------------------------------------------------------------------------- data
class HybridCollator:
    """ForgeryDataset items -> ``VisionLanguageCollator`` batches of the hybrid prompt (left padded).

    With ``answers`` (training) the batch also holds LM ``labels`` and the items' training ``mask``
    [B, S, S] for the head losses; without (evaluation) it is exactly what ``lm_eval`` scores.
    """

    def __init__(self, processor, prompt: HybridPrompt, answers: Mapping[int, str] | None = None):
        self.prompt = prompt
        self.lm = VisionLanguageCollator(processor, prompt.text, answers=answers, padding_side="left")

    def __call__(self, items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        batch = self.lm(items)
        if self.lm.answers is not None:
            batch["mask"] = torch.stack([item["mask"] for item in items])
        return batch


def hybrid_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's arguments for ``HybridModel.forward`` (with ``mm_token_type_ids``, checked: the
    model computes the image's 2-D positions from it)."""
    require_mrope_inputs(batch)
    return {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}


# ----------------------------------------------------------------------------------------- loss
@dataclass
class HybridLossWeights:
    lm: float = 1.0
    head: ForensicLossWeights = field(default_factory=ForensicLossWeights)

    @classmethod
    def from_config(cls, cfg) -> "HybridLossWeights":
        w = cfg.loss_weights
        if w.lm < 0:
            raise ValueError(f"loss_weights.lm must be >= 0, got {w.lm}; fix loss_weights in the config")
        return cls(w.lm, ForensicLossWeights(w.head_cls, w.head_evi, w.head_sparse, w.head_contrast, cfg.evi_alpha))


def answer_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy over the supervised tokens; ``logits`` are the last k positions."""
    keep = logits.shape[1]
    # The logits at position p predict token p + 1: the first kept position predicts nothing kept.
    if bool((labels[:, : labels.shape[1] - keep + 1] != IGNORE_INDEX).any()):
        raise ValueError(f"the logits of the last {keep} positions cannot predict every supervised token; "
                         "keep lm_logits_to_keep(labels) positions")
    kept = labels[:, -keep:]
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), kept[:, 1:].flatten().to(logits.device),
                           ignore_index=IGNORE_INDEX)


def hybrid_loss(model: nn.Module, batch: Mapping[str, torch.Tensor], weights: HybridLossWeights,
                amp_dtype: str, device: torch.device, lora_cast=None) -> dict[str, torch.Tensor]:
    """Forward + joint loss: ``total`` = lm weight * LM answer loss + the weighted head loss.

    Returns ``total``, ``lm``, ``head`` (weighted head total) and the head's unweighted terms.
    ``lora_cast``: a ``model.lora.LoraInputCast`` of the model (see ``training.autocast``).
    """
    labels = batch["labels"]
    with autocast(device, amp_dtype, lora_cast):
        out = model(**hybrid_inputs(batch), logits_to_keep=lm_logits_to_keep(labels))
    lm = answer_lm_loss(out["logits"], labels)
    head = forensic_loss(out["cls_logit"].float(), out["heatmap_logit"].float(), batch["mask"], batch["target"],
                         weights.head)
    return {"total": weights.lm * lm + head["total"], "lm": lm, "head": head["total"],
            **{k: head[k] for k in ("cls", "evi", "sparse", "contrast")}}


def train_step(model: nn.Module, batch: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               weights: HybridLossWeights, *, amp_dtype: str = "bf16", max_norm: float = 1.0,
               lora_cast=None) -> dict[str, torch.Tensor]:
    """One plain optimiser step (no accelerate, no accumulation) on a batch already on the device.

    For benchmarks and tests; ``hybrid_train.py`` runs the same loss inside its accelerate loop.
    """
    model.train()
    device = next(model.parameters()).device
    terms = hybrid_loss(model, batch, weights, amp_dtype, device, lora_cast)
    terms["total"].backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in terms.items()}


# ----------------------------------------------------------------------------------------- prediction
@torch.no_grad()
def eval_batch(model: HybridModel, batch: Mapping[str, torch.Tensor], answer_ids: tuple[int, int], *,
               amp_dtype: str = "bf16") -> dict[str, torch.Tensor]:
    """One inference forward: ``p_fake_lm``, ``p_fake_head`` [B] and ``heatmap`` [B, H, W] probabilities.

    The LM's answer is read by ``lm_eval.answer_logits`` (the shared definition: softmax over the
    fake and real logits at the answer position); the heads' outputs of the same forward are kept
    by a hook, so the vision tower runs once. ``model`` is the unwrapped hybrid model.
    """
    model.eval()
    kept = {}
    handle = model.register_forward_hook(lambda module, args, output: kept.update(output=output))
    try:
        with autocast(next(model.parameters()).device, amp_dtype):
            pair = answer_logits(model, batch, *answer_ids)
    finally:
        handle.remove()
    out = kept["output"]
    return {"p_fake_lm": torch.softmax(pair, dim=-1)[:, 0],
            "p_fake_head": torch.sigmoid(out.cls_logit.float()),
            "heatmap": torch.sigmoid(out.heatmap_logit.float())}


@torch.no_grad()
def greedy_answer_ids(model: HybridModel, batch: Mapping[str, torch.Tensor], max_new_tokens: int, *,
                      eos_token_id: int, pad_token_id: int, amp_dtype: str = "bf16") -> torch.Tensor:
    """[B, max_new_tokens] greedy continuation of each row's prompt: the LM's free-text answer.

    The hybrid model has no generation cache (its soft tokens are made inside the forward from the
    whole image), so each new token is one more full forward over the prompt and the tokens so far;
    the loop stops once every row has emitted ``eos_token_id`` (the end of turn), and a finished
    row's later ids are ``pad_token_id``. The multimodal placeholder tokens (image, video, vision
    start/end, the soft-token slot) are never chosen: appended, they would claim image features or
    slots the prompt does not have. Rows must end with the prompt (``HybridCollator`` without answers).
    """
    inputs = dict(hybrid_inputs(batch))
    input_ids = inputs["input_ids"]
    if not bool((batch["answer_positions"] == input_ids.shape[1] - 1).all()):
        raise ValueError("greedy_answer_ids needs inference batches whose prompt ends every row (left padding, no "
                         "appended answer): build them with HybridCollator without answers")
    config = model.base.config
    banned = torch.tensor([config.image_token_id, config.video_token_id, config.vision_start_token_id,
                           config.vision_end_token_id, model.prompt.slot_token_id], device=input_ids.device)
    rows = input_ids.shape[0]
    out = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=input_ids.device)
    done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
    for step in range(max_new_tokens):
        with autocast(input_ids.device, amp_dtype):
            logits = model(**inputs, logits_to_keep=1).logits[:, -1].float()
        logits[:, banned] = float("-inf")
        token = logits.argmax(-1).masked_fill(done, pad_token_id)
        out[:, step] = token
        done |= token == eos_token_id
        if bool(done.all()):
            break
        inputs["input_ids"] = torch.cat([inputs["input_ids"], token[:, None]], dim=1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(token[:, None])], dim=1)
        # The new token is text (type 0); hybrid_inputs made sure the key is there.
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(token[:, None])], dim=1)
    return out


@dataclass
class HybridPredictions:
    """Per-record outputs, ordered by position in the evaluated record list."""
    p_fake_lm: np.ndarray      # [N] from the answer-token logits
    p_fake_head: np.ndarray    # [N] sigmoid of the heads' classifier logit
    heatmaps: np.ndarray       # [N, H, W] evidence probabilities on the patch grid
    generated: list[str] | None = None  # greedy free-text answer per record (only with max_new_tokens > 0)

    def heads(self) -> HeadPredictions:
        return HeadPredictions(p_fake=self.p_fake_head, heatmaps=self.heatmaps)


def predict_hybrid(model: HybridModel, loader, accelerator: Accelerator, answer_ids: tuple[int, int],
                   amp_dtype: str, num_records: int, *, max_new_tokens: int = 0,
                   tokenizer=None) -> HybridPredictions:
    """Run ``eval_batch`` over ``loader`` (prepared by ``accelerator``; ``model`` unwrapped, on the
    device) on every process and gather every record once, in dataset order. With
    ``max_new_tokens > 0`` each record's free-text answer (``greedy_answer_ids``, decoded with
    ``tokenizer``) comes too; it costs one more forward per generated token."""
    if max_new_tokens and tokenizer is None:
        raise ValueError("predict_hybrid: pass the tokenizer to decode generated text (max_new_tokens > 0)")
    positions, outputs = [], {"p_fake_lm": [], "p_fake_head": [], "heatmap": []}
    if max_new_tokens:
        outputs["generated"] = []
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for batch in loader:
        out = eval_batch(model, batch, answer_ids, amp_dtype=amp_dtype)
        if max_new_tokens:
            out["generated"] = greedy_answer_ids(model, batch, max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                                 pad_token_id=pad_id, amp_dtype=amp_dtype)
        positions.append(batch["position"])
        for key in outputs:
            outputs[key].append(out[key])
    got = gather_in_order(accelerator, positions, outputs, num_records)
    return HybridPredictions(p_fake_lm=got["p_fake_lm"], p_fake_head=got["p_fake_head"], heatmaps=got["heatmap"],
                             generated=decode_generated(tokenizer, got["generated"]) if max_new_tokens else None)


def hybrid_scores(lm_auroc: float, heads: Mapping[str, float]) -> dict[str, float]:
    """Task 3's two combined scores (SPEC 7's (AUROC + pixel_f1 + pixel_iou) / 3), one definition for the
    training log's ``val_score`` / ``val_head_score`` and the evaluation CSV's ``score`` / ``head_score``.

    ``score`` takes the LM's AUROC, since the LM's answer is Task 3's verdict; ``head_score`` the heads'
    AUROC (``heads`` is ``evaluation.score_heads``' report, whose own ``score`` is that one). Both use
    the heads' pixel F1 and IoU: the heatmap is the only localisation Task 3 has.
    """
    return {"score": combined_score(lm_auroc, heads["pixel_f1"], heads["pixel_iou"]), "head_score": heads["score"]}


# ----------------------------------------------------------------------------------------- checkpoint
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
    save_module_safetensors(model.heads, paths.heads_file,
                            {"heads_config": json.dumps(model.heads.config), "visual_layers": json.dumps(model.layers)})
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
    heads_meta = _metadata(paths.heads_file, ["heads_config", "visual_layers"], "hybrid_train.py or lora_train.py")
    if json.loads(heads_meta["visual_layers"]) != spec.visual_layers:
        raise ValueError(f"{paths.heads_file} reads ViT blocks {heads_meta['visual_layers']} but {paths.fusion_file} "
                         f"was trained with {spec.visual_layers}: the files come from different runs")
    base.requires_grad_(False)
    if any(spec.lora_targets.values()):
        result = load_adapter_strict(base, paths.adapter_dir, is_trainable=is_trainable)
        if result.root:
            raise ValueError(f"{paths.adapter_dir} is a vision-tower adapter (Task 1); Task 3 needs its full-model adapter")
        check_lora_wrapped(base, spec.lora_targets)
    heads = ForensicHeads.from_config(json.loads(heads_meta["heads_config"]))
    load_module_safetensors(heads, paths.heads_file)
    fusion_config = json.loads(fusion_meta["fusion_config"])
    if (fusion_config is None) != (spec.fusion_tokens == 0):
        raise ValueError(f"{paths.fusion_file}: fusion_config and fusion_tokens={spec.fusion_tokens} disagree")
    fusion = FusionProjector.from_config(fusion_config) if fusion_config is not None else None
    load_module_safetensors(fusion if fusion is not None else nn.Module(), paths.fusion_file)
    return _assemble(base, heads, fusion, spec, processor), spec


def answer_ids_for(processor, spec: HybridSpec, fake_word: str | None = None,
                   real_word: str | None = None) -> tuple[int, int]:
    """(fake id, real id) read at eval: the trained words unless overridden (then checked)."""
    return answer_token_ids(processor, fake_word or spec.fake_word, real_word or spec.real_word)
