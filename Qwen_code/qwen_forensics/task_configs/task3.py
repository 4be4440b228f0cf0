"""Task 3 configs: hybrid training and evaluation, with the per-component LoRA block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from qwen_forensics.checkpoints.names import (ADAPTER_DIR, FINAL_DIR, FUSION_FILE, HEADS_FILE, adapter_folder,
                                              weights_file)
from qwen_forensics.config.loading import option
from qwen_forensics.prompts import DEFAULT_PROMPT
from qwen_forensics.task_configs.common import (perturb_option, perturb_seed_option,
                                                ALLOW_VAL_OVERLAP_HELP, DATA, EVAL_OUTPUT_ALIASES,
                                                EXPORT_SUBMISSION_HELP, FAST_PATHS_HELP, GPU_MEMORY_HELP, MODEL,
                                                RESUME_MAY_CHANGE, SAVE_HEATMAPS_HELP, T3, MaskRuleConfig,
                                                check_image_size, check_values)


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
    enabled: bool = option(True, "LoRA on the vision tower")
    blocks: list[int] = option(factory=lambda: [7, 15, 23, 31], help="ViT blocks with LoRA on all their linear layers")
    extra_modules: list[str] = option(factory=list, help="further vision modules by name (with or without 'visual.')")
    extra_patterns: list[str] = option(factory=list, help="the earlier scripts' substring patterns over vision module "
                                                          "names ('visual.blocks.7.attn'); a pattern that matches "
                                                          "nothing is reported")


@dataclass
class LoraSwitch:
    enabled: bool = option(False, "enable this component's LoRA (off when the key is absent, as in the earlier "
                                  "scripts; the shipped config turns the merger on)")


@dataclass
class LoraLM:
    enabled: bool = option(True, "LoRA on the language model")
    layers: list[int] | Literal["all"] | None = option(None, "LM layers with LoRA on all their linear layers; "
                                                             "null: all layers, unless extra_modules or "
                                                             "extra_patterns name the modules (then only those)")
    extra_modules: list[str] = option(factory=list, help="LM modules by name (with or without 'language_model.')")
    extra_patterns: list[str] = option(factory=list, help="substring patterns over LM module names")


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
    OUTPUT_DIR: ClassVar[str] = "output_dir"
    RESUME_MAY_CHANGE: ClassVar[tuple[str, ...]] = RESUME_MAY_CHANGE
    base_model_path: str = option(MODEL, "Qwen2.5-VL model folder", path="in")
    data_root: str = option(DATA, "folder that index paths are relative to", path="in")
    ann_train: str = option(f"{DATA}/trainingset2/train_idx.json", "training index", path="in")
    ann_val: str | None = option(None, "optional validation index", path="in")
    allow_val_overlap: bool = option(False, ALLOW_VAL_OVERLAP_HELP)
    output_dir: str = option(f"{T3}/training", "output folder; relative output names are inside it", path="out_dir")
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
    fast_paths: bool = option(True, FAST_PATHS_HELP)
    gpu_memory_gib: float | None = option(None, GPU_MEMORY_HELP)
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
    train_log: str = option("train_log.csv", "per-epoch training CSV; a name is a file in output_dir", path="out")
    lora_checkpoint: str = option(f"{FINAL_DIR}/{ADAPTER_DIR}", "where the final adapter folder is written", path="out",
                                  resolve=adapter_folder)
    head_checkpoint: str = option(f"{FINAL_DIR}/{HEADS_FILE}", "final heads file (a .pt name is written as "
                                  ".safetensors)", path="out", resolve=weights_file)
    fusion_checkpoint: str = option(f"{FINAL_DIR}/{FUSION_FILE}", "final fusion file (a .pt name is written as "
                                    ".safetensors)", path="out", resolve=weights_file)
    resume: str | None = option(None, "checkpoint folder to continue from", path="in")

    def __post_init__(self) -> None:
        check_image_size(self.image_size, allow_none=False)
        check_values(self)


@dataclass
class Task3EvalConfig:
    """Task 3 evaluation: LM answer, head verdict and pixel metrics side by side."""
    OUTPUT_DIR: ClassVar[str] = "out_dir"
    ALIASES: ClassVar[dict[str, str]] = {"ann_eval": "annotation_file", **EVAL_OUTPUT_ALIASES}
    base_model_path: str = option(MODEL, "Qwen2.5-VL model folder", path="in")
    lora_checkpoint: str = option(f"{T3}/training/{FINAL_DIR}/{ADAPTER_DIR}", "adapter folder (or a file inside it)", path="in",
                                  resolve=adapter_folder)
    head_checkpoint: str = option(f"{T3}/training/{FINAL_DIR}/{HEADS_FILE}", "heads file (a .pt name: the "
                                  ".safetensors of that stem)", path="in", resolve=weights_file)
    fusion_checkpoint: str = option(f"{T3}/training/{FINAL_DIR}/{FUSION_FILE}", "fusion file (a .pt name: the "
                                    ".safetensors of that stem)", path="in", resolve=weights_file)
    data_root: str = option(DATA, "folder that index paths are relative to", path="in")
    annotation_file: str = option(f"{DATA}/testset2/annotation.json", "index to evaluate (earlier name: ann_eval)",
                                  path="in")
    val_annotation_file: str | None = option(None, "validation index for the tuned threshold", path="in")
    allow_val_overlap: bool = option(False, ALLOW_VAL_OVERLAP_HELP)
    out_dir: str = option(f"{T3}/evaluation", "output folder", path="out_dir")
    csv_path: str = option("metrics.csv", "metrics CSV; a name is a file in out_dir (earlier name: metrics_csv)",
                           path="out")
    output_json: str = option("predictions.json", "per-image predictions; a name is a file in out_dir (earlier "
                                                  "name: inference_output)", path="out")
    seed: int = option(42, "random seed")
    batch_size: int = option(8, "images per forward")
    num_workers: int = option(4, "data loader workers")
    image_size: int | None = option(None, "letterbox side (null: the checkpoint's)")
    torch_dtype: Literal["bfloat16", "float16", "float32"] = option("bfloat16", "weights dtype on GPU")
    fast_paths: bool = option(True, FAST_PATHS_HELP)
    visual_layers: list[int] | None = option(None, "accepted for seed compatibility: the checkpoint's are used "
                                                   "(a different value is reported)")
    fusion_tokens: int | None = option(None, "as visual_layers")
    fusion_hidden_dropout: float | None = option(None, "accepted for seed compatibility (no effect at evaluation)")
    lora: HybridLora | None = option(None, "accepted for seed compatibility: the checkpoint's LoRA is loaded (a "
                                           "config describing other targets is reported)")
    prompt: str | None = option(None, "user prompt (null: the training prompt)")
    target_text: TargetText | None = option(None, "answer words (seed shape); the trained words are read")
    fake_token: str | None = option(None, "answer word for fake; the trained word is read (a different word is "
                                          "reported)")
    real_token: str | None = option(None, "as fake_token")
    num_heatmaps: int = option(16, "heatmap pictures to write with save_heatmaps gallery (fakes first)")
    save_heatmaps: Literal["gallery", "all", "none"] = option("gallery", SAVE_HEATMAPS_HELP)
    pixel_threshold: float = option(0.5, "heatmap probability threshold for pixel metrics")
    export_submission: str | None = option(None, EXPORT_SUBMISSION_HELP, path="out", flag="--export-submission")
    mask_rule: MaskRuleConfig = option(factory=MaskRuleConfig, help="GT mask binarisation rule")
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail or skip and list")

    perturb: list[str] = perturb_option()
    perturb_seed: int = perturb_seed_option()

    def __post_init__(self) -> None:
        check_image_size(self.image_size, allow_none=True)
        check_values(self)
