"""The config dataclass of every script, with the seed's keys (SPEC 4) plus documented additions.

Paths default to the user's layout under ``/root/autodl-tmp``; ``--root`` or ``$QWEN_FORENSICS_ROOT``
relocates them all (see ``config``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .config import ConfigError, option

ROOT = "/root/autodl-tmp"
MODEL = f"{ROOT}/Qwen2.5-VL-7B-Instruct"
DATA = f"{ROOT}/data"
T1 = f"{ROOT}/task1_modular_lora"
T2 = f"{ROOT}/task2_lm_lora"
T3 = f"{ROOT}/task3_hybrid_lora"
VIT_LORA_MODULES = ["attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
DEFAULT_PROMPT = "Is this image real or fake? Answer with one word: Real or Fake."


def _check_image_size(image_size: int | None, allow_none: bool) -> None:
    if image_size is None:
        if not allow_none:
            raise ConfigError("image_size: null is not allowed here; use a multiple of 28 such as 448")
        return
    if image_size <= 0 or image_size % 28:
        raise ConfigError(f"image_size={image_size}: must be a positive multiple of 28 (patch 14 x merge 2), e.g. 448")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{name}={value}: must be > 0")


@dataclass
class MaskRuleConfig:
    """How a soft JPEG mask becomes a binary ground truth (applied once, at the original resolution)."""
    rel: float = option(0.2, "pixel is forged if mask >= rel * quantile(mask, q), mask scaled to [0, 1]")
    quantile: float = option(0.99, "the quantile q of the rule above (0.99 = the seed's p99)")


# --------------------------------------------------------------------------------------------- Task 1
@dataclass
class Task1TrainConfig:
    """Task 1 training: LoRA on selected ViT blocks + classification and evidence heads."""
    model_path: str = option(MODEL, "Qwen2.5-VL model folder (HF format)", path=True)
    data_root: str = option(DATA, "folder that index paths are relative to", path=True)
    ann_train: str = option(f"{DATA}/trainingset2/train_idx.json", "training index", path=True)
    ann_val: str | None = option(f"{DATA}/trainingset2/val_idx.json",
                                 "validation index evaluated after each epoch (null: no validation)", path=True)
    out_dir: str = option(f"{T1}/training", "output folder: checkpoints, logs, resolved config", path=True)
    seed: int = option(42, "random seed (data order, init, dropout)")
    epochs: int = option(3, "training epochs")
    max_steps: int | None = option(None, "stop after this many optimizer steps (null: run all epochs)")
    batch_size: int = option(16, "images per step and process")
    num_workers: int = option(4, "data loader workers")
    grad_accum: int = option(1, "gradient accumulation steps")
    lr_head: float = option(1e-3, "learning rate of the heads")
    lr_lora: float = option(1e-4, "learning rate of the LoRA weights")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_ratio: float = option(0.05, "fraction of steps with linear warm-up before the cosine decay")
    max_norm: float = option(1.0, "gradient clipping norm")
    visual_layers: list[int] = option(factory=lambda: [7, 15, 23, 31], help="ViT blocks whose outputs the heads read")
    lora_target_layers: list[int] = option(factory=lambda: [7, 15, 23, 31], help="ViT blocks that get LoRA")
    lora_target_modules: list[str] = option(factory=lambda: list(VIT_LORA_MODULES),
                                            help="module paths inside each block that get LoRA")
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(16, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    amp_dtype: Literal["bf16", "fp16", "fp32"] = option("bf16", "autocast dtype on GPU (CPU always runs fp32)")
    image_size: int = option(448, "letterbox side in pixels (multiple of 28)")
    fuse_dim: int = option(512, "channels of the fused head features")
    lambda_cls: float = option(1.0, "weight of the image-level BCE")
    lambda_evi: float = option(1.0, "weight of the evidence (heatmap) loss")
    lambda_sparse: float = option(0.0, "weight of the mean heatmap probability (sparsity; off by default: it fights localisation)")
    lambda_contrast: float = option(0.0, "weight of (mean prob on reals - mean prob on fakes) (off by default: it rewards whole-image heat)")
    evi_alpha: float = option(0.5, "evidence loss = alpha * BCE + (1 - alpha) * Dice")
    mask_rule: MaskRuleConfig = option(factory=MaskRuleConfig, help="GT mask binarisation rule")
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail listing all, or skip and list them")
    train_log: str = option(f"{T1}/training/train_log.csv", "per-epoch training CSV (appended)", path=True)
    final_trained_heads: str = option(f"{T1}/training/final", "folder of the final checkpoint", path=True)
    resume: str | None = option(None, "checkpoint folder to continue from (null: fresh run)", path=True)

    def validate(self) -> None:
        _check_image_size(self.image_size, allow_none=False)
        _check_positive(epochs=self.epochs, batch_size=self.batch_size, grad_accum=self.grad_accum,
                        lora_r=self.lora_r, max_steps=self.max_steps)
        if not 0 <= self.evi_alpha <= 1:
            raise ConfigError(f"evi_alpha={self.evi_alpha}: must be in [0, 1]")
        if not self.visual_layers:
            raise ConfigError("visual_layers: give at least one ViT block for the heads")


@dataclass
class Task1HeadEvalConfig:
    """Task 1 subtask 1: evaluate the LoRA'd ViT + heads on an index."""
    ckpt_path: str = option(f"{T1}/training/final", "Task 1 checkpoint folder", path=True)
    model_path: str = option(MODEL, "Qwen2.5-VL model folder", path=True)
    ann_test: str = option(f"{DATA}/testset2/annotation.json", "index to evaluate", path=True)
    ann_val: str | None = option(None, "validation index used only to tune the decision threshold", path=True)
    data_root: str = option(DATA, "folder that index paths are relative to", path=True)
    out_dir: str = option(f"{T1}/subtask_vit_head_eval", "output folder (predictions, heatmaps)", path=True)
    csv_path: str = option(f"{T1}/subtask_vit_head_eval/metrics.csv", "metrics CSV (one row per run)", path=True)
    batch_size: int = option(32, "images per forward")
    num_workers: int = option(4, "data loader workers")
    image_size: int | None = option(None, "letterbox side (null: the checkpoint's)")
    num_heatmaps: int = option(16, "heatmap pictures to write (fakes first)")
    pixel_threshold: float = option(0.5, "heatmap probability threshold for pixel metrics")
    mask_rule: MaskRuleConfig = option(factory=MaskRuleConfig, help="GT mask binarisation rule")
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail or skip and list")
    amp_dtype: Literal["bf16", "fp16", "fp32"] = option("bf16", "autocast dtype on GPU")
    lora_r: int | None = option(None, "accepted for seed compatibility; the adapter's own config is used and checked")
    lora_alpha: int | None = option(None, "as lora_r")
    lora_dropout: float | None = option(None, "as lora_r")
    lora_target_layers: list[int] | None = option(None, "as lora_r")


@dataclass
class Task1FullModelEvalConfig:
    """Task 1 subtask 2: the full model with the Task 1 visual LoRA answers Real/Fake."""
    model_path: str = option(MODEL, "Qwen2.5-VL model folder", path=True)
    lora_checkpoint: str = option(f"{T1}/training/final", "Task 1 checkpoint folder (its visual LoRA is used)", path=True)
    annotation_file: str = option(f"{DATA}/testset2/annotation.json", "index to evaluate", path=True)
    val_annotation_file: str | None = option(None, "validation index used only to tune the threshold", path=True)
    data_root: str = option(DATA, "folder that index paths are relative to", path=True)
    csv_path: str = option(f"{T1}/subtask_full_model_eval/metrics.csv", "metrics CSV", path=True)
    output_json: str = option(f"{T1}/subtask_full_model_eval/predictions.json", "per-image predictions", path=True)
    prompt_text: str = option(DEFAULT_PROMPT, "user prompt after the image")
    fake_token: str = option("Fake", "answer word for fake (must be a single token)")
    real_token: str = option("Real", "answer word for real (must be a single token)")
    max_new_tokens: int = option(0, "generate this many tokens of free text per image (0: logits only)")
    batch_size: int = option(16, "images per forward")
    num_workers: int = option(4, "data loader workers")
    seed: int = option(42, "random seed")
    image_size: int | None = option(None, "letterbox side (null: the checkpoint's)")
    torch_dtype: Literal["bfloat16", "float16", "float32"] = option("bfloat16", "weights dtype on GPU (CPU: float32)")
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail or skip and list")
    lora_r: int | None = option(None, "accepted for seed compatibility; the adapter's config is used")
    lora_alpha: int | None = option(None, "as lora_r")
    lora_dropout: float | None = option(None, "as lora_r")
    lora_target_layers: list[int] | None = option(None, "as lora_r")


# --------------------------------------------------------------------------------------------- Task 2
@dataclass
class Task2MapConfig:
    """Task 2 preprocessing: index -> training records (messages + answer), resumable batches."""
    base_model_path: str = option(MODEL, "Qwen2.5-VL model folder (tokenizer and template)", path=True)
    annotation_file: str = option(f"{DATA}/trainingset2/train_idx.json", "index to convert", path=True)
    data_root: str = option(DATA, "folder that index paths are relative to", path=True)
    map_batch_size: int = option(500, "records per batch file (a rerun skips finished batches)")
    map_kwargs: dict[str, Any] = option(factory=dict, help="accepted for seed compatibility (no effect)")
    batch_output_dir: str = option(f"{T2}/datasets/batches", "folder of batch files", path=True)
    final_dataset_path: str = option(f"{T2}/datasets/train.jsonl", "merged training set", path=True)
    prompt_text: str = option(DEFAULT_PROMPT, "user prompt (same default as evaluation)")
    fake_token: str = option("Fake", "answer for fakes")
    real_token: str = option("Real", "answer for reals")
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail or skip and list")

    def validate(self) -> None:
        _check_positive(map_batch_size=self.map_batch_size)


@dataclass
class Task2TrainConfig:
    """Task 2 training: LM-supervised LoRA on ViT blocks + merger with HF Trainer."""
    base_model_path: str = option(MODEL, "Qwen2.5-VL model folder", path=True)
    torch_dtype: Literal["bfloat16", "float16", "float32"] = option("bfloat16", "weights dtype on GPU")
    train_dataset_path: str = option(f"{T2}/datasets/train.jsonl", "output of map.py", path=True)
    test_dataset: str | None = option(None, "optional evaluation set (map.py output)", path=True)
    data_root: str = option(DATA, "folder that image paths are relative to", path=True)
    image_size: int | None = option(448, "letterbox side; null keeps native resolution")
    lora_target_blocks: list[int] = option(factory=lambda: [7, 15, 23, 31], help="ViT blocks with LoRA")
    lora_target_modules: list[str] = option(factory=lambda: list(VIT_LORA_MODULES), help="modules in each block")
    lora_extra_modules: list[str] = option(factory=lambda: ["merger.mlp.0", "merger.mlp.2"],
                                           help="extra vision modules with LoRA (the merger MLP)")
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(16, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    lora_bias: Literal["none", "all", "lora_only"] = option("none", "PEFT bias mode")
    lora_task_type: str | None = option("CAUSAL_LM", "PEFT task type")
    training_args: dict[str, Any] = option(factory=dict, help="Hugging Face TrainingArguments, as written")
    save_lora_path: str = option(f"{T2}/training/lora_adapter",
                                 "adapter folder (PEFT format + resolved_config.json with the prompt setup)", path=True)

    def validate(self) -> None:
        _check_image_size(self.image_size, allow_none=True)
        _check_positive(lora_r=self.lora_r)


@dataclass
class Task2InferConfig:
    """Task 2 evaluation: P(fake) from the answer-token logits of the LoRA'd model."""
    base_model_path: str = option(MODEL, "Qwen2.5-VL model folder", path=True)
    lora_path: str = option(f"{T2}/training/lora_adapter", "adapter folder from LORA.py", path=True)
    annotation_file: str = option(f"{DATA}/testset2/annotation.json", "index to evaluate", path=True)
    val_annotation_file: str | None = option(None, "validation index used only to tune the threshold", path=True)
    data_root: str = option(DATA, "folder that index paths are relative to", path=True)
    csv_path: str = option(f"{T2}/evaluation/metrics.csv", "metrics CSV", path=True)
    output_json: str = option(f"{T2}/evaluation/predictions.json", "per-image predictions", path=True)
    prompt_text: str | None = option(None, "user prompt after the image (null: the adapter's training prompt)")
    fake_token: str | None = option(None, "answer word for fake (null: the adapter's)")
    real_token: str | None = option(None, "answer word for real (null: the adapter's)")
    max_new_tokens: int = option(0, "also generate free text, its keyword label in its own column (0: logits only)")
    batch_size: int = option(16, "images per forward")
    num_workers: int = option(4, "data loader workers (image decoding)")
    image_size: int | None = option(None, "letterbox side (null: the adapter's training geometry, which may be native)")
    torch_dtype: Literal["bfloat16", "float16", "float32"] = option("bfloat16", "weights dtype on GPU (CPU: float32)")
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail or skip and list")

    def validate(self) -> None:
        _check_image_size(self.image_size, allow_none=True)
        _check_positive(batch_size=self.batch_size)
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens={self.max_new_tokens}: must be >= 0")


# --------------------------------------------------------------------------------------------- Task 3
@dataclass
class TargetText:
    fake: str = option("Fake", "answer for fakes")
    real: str = option("Real", "answer for reals")


@dataclass
class LossWeights:
    lm: float = option(1.0, "LM answer loss")
    head_cls: float = option(1.0, "head image BCE")
    head_evi: float = option(1.0, "head evidence loss")
    head_sparse: float = option(0.0, "head sparsity")
    head_contrast: float = option(0.0, "head contrast")


@dataclass
class LoraVisual:
    enabled: bool = option(True, "LoRA on ViT blocks")
    blocks: list[int] = option(factory=lambda: [7, 15, 23, 31], help="ViT blocks with LoRA")


@dataclass
class LoraSwitch:
    enabled: bool = option(True, "enable this component's LoRA")


@dataclass
class LoraLM:
    enabled: bool = option(True, "LoRA on the language model")
    layers: list[int] | None = option(None, "LM layers with LoRA (null: all)")


@dataclass
class HybridLora:
    r: int = option(8, "LoRA rank")
    alpha: int = option(16, "LoRA alpha")
    dropout: float = option(0.05, "LoRA dropout")
    bias: Literal["none", "all", "lora_only"] = option("none", "PEFT bias mode")
    visual: LoraVisual = option(factory=LoraVisual, help="ViT blocks")
    merge: LoraSwitch = option(factory=LoraSwitch, help="merger MLP")
    lm: LoraLM = option(factory=LoraLM, help="language model")


@dataclass
class Task3TrainConfig:
    """Task 3 training: hybrid LoRA (ViT + merger + LM) with heads and fused soft tokens."""
    base_model_path: str = option(MODEL, "Qwen2.5-VL model folder", path=True)
    data_root: str = option(DATA, "folder that index paths are relative to", path=True)
    ann_train: str = option(f"{DATA}/trainingset2/train_idx.json", "training index", path=True)
    ann_val: str | None = option(None, "optional validation index", path=True)
    output_dir: str = option(f"{T3}/training", "output folder", path=True)
    seed: int = option(42, "random seed")
    epochs: int = option(2, "training epochs")
    max_steps: int | None = option(None, "stop after this many optimizer steps")
    batch_size: int = option(4, "images per step and process")
    num_workers: int = option(4, "data loader workers")
    grad_accum: int = option(4, "gradient accumulation steps")
    lr_head: float = option(1e-3, "heads learning rate")
    lr_lora: float = option(1e-4, "LoRA learning rate")
    lr_lora_lm: float | None = option(None, "separate LM LoRA rate (null: lr_lora)")
    lr_fusion: float = option(5e-4, "fusion projector learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_ratio: float = option(0.05, "warm-up fraction")
    max_norm: float = option(1.0, "gradient clipping norm")
    amp_dtype: Literal["bf16", "fp16", "fp32"] = option("bf16", "autocast dtype on GPU")
    torch_dtype: Literal["bfloat16", "float16", "float32"] = option("bfloat16", "weights dtype on GPU")
    gradient_checkpointing: bool = option(True, "recompute activations to save memory")
    image_size: int = option(448, "letterbox side")
    visual_layers: list[int] = option(factory=lambda: [7, 15, 23, 31], help="ViT blocks the heads read")
    fuse_dim: int = option(512, "channels of the fused head features")
    fusion_tokens: int = option(4, "soft tokens given to the LM (0: none)")
    fusion_hidden_dropout: float = option(0.1, "dropout in the fusion projector")
    head_verdict_prompt: bool = option(False, "add the head's verdict as text to the prompt")
    prompt: str = option(DEFAULT_PROMPT, "user prompt")
    target_text: TargetText = option(factory=TargetText, help="answer words")
    loss_weights: LossWeights = option(factory=LossWeights, help="loss weights")
    evi_alpha: float = option(0.5, "evidence loss = alpha * BCE + (1 - alpha) * Dice")
    lora: HybridLora = option(factory=HybridLora, help="LoRA per component")
    mask_rule: MaskRuleConfig = option(factory=MaskRuleConfig, help="GT mask binarisation rule")
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail or skip and list")
    train_log: str = option(f"{T3}/training/train_log.csv", "per-epoch training CSV", path=True)
    lora_checkpoint: str = option(f"{T3}/training/final/adapter", "where the final adapter is written", path=True)
    head_checkpoint: str = option(f"{T3}/training/final/heads.safetensors", "final heads file", path=True)
    fusion_checkpoint: str = option(f"{T3}/training/final/fusion.safetensors", "final fusion file", path=True)
    resume: str | None = option(None, "checkpoint folder to continue from", path=True)

    def validate(self) -> None:
        _check_image_size(self.image_size, allow_none=False)
        if self.fusion_tokens < 0:
            raise ConfigError("fusion_tokens must be >= 0")


@dataclass
class Task3EvalConfig:
    """Task 3 evaluation: LM answer, head verdict and pixel metrics side by side."""
    base_model_path: str = option(MODEL, "Qwen2.5-VL model folder", path=True)
    lora_checkpoint: str = option(f"{T3}/training/final/adapter", "adapter folder", path=True)
    head_checkpoint: str = option(f"{T3}/training/final/heads.safetensors", "heads file", path=True)
    fusion_checkpoint: str = option(f"{T3}/training/final/fusion.safetensors", "fusion file", path=True)
    data_root: str = option(DATA, "folder that index paths are relative to", path=True)
    annotation_file: str = option(f"{DATA}/testset2/annotation.json", "index to evaluate", path=True)
    val_annotation_file: str | None = option(None, "validation index for the tuned threshold", path=True)
    out_dir: str = option(f"{T3}/evaluation", "output folder", path=True)
    csv_path: str = option(f"{T3}/evaluation/metrics.csv", "metrics CSV", path=True)
    seed: int = option(42, "random seed")
    batch_size: int = option(8, "images per forward")
    num_workers: int = option(4, "data loader workers")
    image_size: int | None = option(None, "letterbox side (null: the checkpoint's)")
    torch_dtype: Literal["bfloat16", "float16", "float32"] = option("bfloat16", "weights dtype on GPU")
    visual_layers: list[int] | None = option(None, "accepted for seed compatibility; must match the checkpoint")
    fusion_tokens: int | None = option(None, "accepted for seed compatibility; must match the checkpoint")
    prompt: str | None = option(None, "user prompt (null: the training prompt)")
    fake_token: str | None = option(None, "answer word for fake (null: training's)")
    real_token: str | None = option(None, "answer word for real (null: training's)")
    num_heatmaps: int = option(16, "heatmap pictures to write")
    pixel_threshold: float = option(0.5, "heatmap probability threshold for pixel metrics")
    mask_rule: MaskRuleConfig = option(factory=MaskRuleConfig, help="GT mask binarisation rule")
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail or skip and list")


# Shipped config file (relative to Qwen_code/) -> its dataclass; tests parse every one.
SHIPPED_CONFIGS = {
    "task1_modular_lora/config_lora.json": Task1TrainConfig,
    "task1_modular_lora/subtask_vit_head_eval/config_eval.json": Task1HeadEvalConfig,
    "task1_modular_lora/subtask_full_model_eval/config_full_model_eval.json": Task1FullModelEvalConfig,
    "task2_lm_lora/config_map.json": Task2MapConfig,
    "task2_lm_lora/config_lora_trainer.json": Task2TrainConfig,
    "task2_lm_lora/config_lora_infer.json": Task2InferConfig,
    "task3_hybrid_lora/config_hybrid_train.json": Task3TrainConfig,
    "task3_hybrid_lora/config_hybrid_eval.json": Task3EvalConfig,
}
