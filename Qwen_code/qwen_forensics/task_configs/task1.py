"""Task 1 configs: training (ViT LoRA + heads), the heads evaluation, the full-model evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from qwen_forensics.checkpoints.names import FINAL_DIR, checkpoint_folder
from qwen_forensics.config.loading import ConfigError, option
from qwen_forensics.prompts import DEFAULT_PROMPT
from qwen_forensics.task_configs.common import (perturb_option, perturb_seed_option,
                                                ALLOW_VAL_OVERLAP_HELP, DATA, EVAL_OUTPUT_ALIASES,
                                                EXPORT_SUBMISSION_HELP, FAST_PATHS_HELP, GPU_MEMORY_HELP, MODEL,
                                                RESUME_MAY_CHANGE, SAVE_HEATMAPS_HELP, T1, VIT_LORA_MODULES,
                                                MaskRuleConfig, check_image_size, check_values)


@dataclass
class Task1TrainConfig:
    """Task 1 training: LoRA on selected ViT blocks + classification and evidence heads."""
    OUTPUT_DIR: ClassVar[str] = "out_dir"
    RESUME_MAY_CHANGE: ClassVar[tuple[str, ...]] = RESUME_MAY_CHANGE
    model_path: str = option(MODEL, "Qwen2.5-VL model folder (HF format)", path="in")
    data_root: str = option(DATA, "folder that index paths are relative to", path="in")
    ann_train: str = option(f"{DATA}/trainingset2/train_idx.json", "training index", path="in")
    ann_val: str | None = option(None, "validation index evaluated after each epoch (null: no validation)", path="in")
    allow_val_overlap: bool = option(False, ALLOW_VAL_OVERLAP_HELP)
    out_dir: str = option(f"{T1}/training", "output folder: checkpoints, logs, resolved config", path="out_dir")
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
    fast_paths: bool = option(True, FAST_PATHS_HELP)
    gpu_memory_gib: float | None = option(None, GPU_MEMORY_HELP)
    recompute_blocks: int = option(0, "frozen ViT blocks (without LoRA, between the first LoRA block and the last "
                                   "tapped one) whose activations are recomputed in the backward instead of kept, at "
                                   "most as many as qualify: each saves about 0.4 GiB at batch 16 and 448 px and "
                                   "costs one more block forward per step (H200, 7B: 10 blocks take the peak from "
                                   "15.2 to 11.2 GiB and 143 to 127 img/s; the shipped config uses 10; 0: keep all)")
    image_size: int = option(448, "letterbox side in pixels (multiple of 28)")
    fuse_dim: int = option(512, "channels of the fused head features")
    lambda_cls: float = option(1.0, "weight of the image-level BCE")
    lambda_evi: float = option(1.0, "weight of the evidence (heatmap) loss")
    lambda_sparse: float = option(0.0, "weight of the mean heatmap probability (sparsity; off by default: it fights localisation)")
    lambda_contrast: float = option(0.0, "weight of (mean prob on reals - mean prob on fakes) (off by default: it rewards whole-image heat)")
    evi_alpha: float = option(0.5, "evidence loss = alpha * BCE + (1 - alpha) * Dice")
    mask_rule: MaskRuleConfig = option(factory=MaskRuleConfig, help="GT mask binarisation rule")
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail listing all, or skip and list them")
    train_log: str = option("train_log.csv", "per-epoch training CSV (appended); a name is a file in out_dir", path="out")
    final_trained_heads: str = option(FINAL_DIR, "final checkpoint folder (a name ending in .pt is the folder of that "
                                      "stem)", path="out", resolve=checkpoint_folder)
    resume: str | None = option(None, "checkpoint folder to continue from (null: fresh run)", path="in",
                                resolve=checkpoint_folder)

    def __post_init__(self) -> None:
        check_image_size(self.image_size, allow_none=False)
        check_values(self)
        if not self.visual_layers:
            raise ConfigError("visual_layers: give at least one ViT block for the heads")


@dataclass
class Task1HeadEvalConfig:
    """Task 1 subtask 1: evaluate the LoRA'd ViT + heads on an index."""
    OUTPUT_DIR: ClassVar[str] = "out_dir"
    ALIASES: ClassVar[dict[str, str]] = EVAL_OUTPUT_ALIASES
    ckpt_path: str = option(f"{T1}/training/{FINAL_DIR}", "Task 1 checkpoint folder (a name ending in .pt: the folder of "
                            "that stem)", path="in", resolve=checkpoint_folder)
    model_path: str = option(MODEL, "Qwen2.5-VL model folder", path="in")
    ann_test: str = option(f"{DATA}/testset2/annotation.json", "index to evaluate", path="in")
    ann_val: str | None = option(None, "validation index used only to tune the decision threshold", path="in")
    allow_val_overlap: bool = option(False, ALLOW_VAL_OVERLAP_HELP)
    data_root: str = option(DATA, "folder that index paths are relative to", path="in")
    out_dir: str = option(f"{T1}/subtask_vit_head_eval", "output folder (predictions, heatmaps)", path="out_dir")
    csv_path: str = option("metrics.csv", "metrics CSV (one row per run); a name is a file in out_dir", path="out")
    output_json: str = option("predictions.json", "per-image predictions; a name is a file in out_dir", path="out")
    batch_size: int = option(32, "images per forward")
    num_workers: int = option(4, "data loader workers")
    image_size: int | None = option(None, "letterbox side (null: the checkpoint's)")
    num_heatmaps: int = option(16, "heatmap pictures to write with save_heatmaps gallery (fakes first)")
    save_heatmaps: Literal["gallery", "all", "none"] = option("gallery", SAVE_HEATMAPS_HELP)
    pixel_threshold: float = option(0.5, "heatmap probability threshold for pixel metrics")
    export_submission: str | None = option(None, EXPORT_SUBMISSION_HELP, path="out", flag="--export-submission")
    mask_rule: MaskRuleConfig = option(factory=MaskRuleConfig, help="GT mask binarisation rule")
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail or skip and list")
    amp_dtype: Literal["bf16", "fp16", "fp32"] = option("bf16", "autocast dtype on GPU")
    fast_paths: bool = option(True, FAST_PATHS_HELP)
    lora_r: int | None = option(None, "accepted for seed compatibility: the adapter's own settings are used "
                                      "(a different value is reported)")
    lora_alpha: int | None = option(None, "as lora_r")
    lora_dropout: float | None = option(None, "as lora_r")
    lora_target_layers: list[int] | None = option(None, "as lora_r")

    perturb: list[str] = perturb_option()
    perturb_seed: int = perturb_seed_option()

    def __post_init__(self) -> None:
        check_image_size(self.image_size, allow_none=True)
        check_values(self)


@dataclass
class Task1FullModelEvalConfig:
    """Task 1 subtask 2: the full model with the Task 1 visual LoRA answers Real/Fake."""
    OUTPUT_DIR: ClassVar[str] = "out_dir"
    ALIASES: ClassVar[dict[str, str]] = EVAL_OUTPUT_ALIASES
    model_path: str = option(MODEL, "Qwen2.5-VL model folder", path="in")
    lora_checkpoint: str = option(f"{T1}/training/{FINAL_DIR}", "Task 1 checkpoint folder (its visual LoRA is used; a "
                                  "name ending in .pt: the folder of that stem)", path="in", resolve=checkpoint_folder)
    annotation_file: str = option(f"{DATA}/testset2/annotation.json", "index to evaluate", path="in")
    val_annotation_file: str | None = option(None, "validation index used only to tune the threshold", path="in")
    allow_val_overlap: bool = option(False, ALLOW_VAL_OVERLAP_HELP)
    data_root: str = option(DATA, "folder that index paths are relative to", path="in")
    out_dir: str = option(f"{T1}/subtask_full_model_eval", "output folder", path="out_dir")
    csv_path: str = option("metrics.csv", "metrics CSV; a name is a file in out_dir", path="out")
    output_json: str = option("predictions.json", "per-image predictions; a name is a file in out_dir", path="out")
    prompt_text: str = option(DEFAULT_PROMPT, "user prompt after the image")
    fake_token: str = option("Fake", "answer word for fake (one token; leading spaces are dropped, with a note)")
    real_token: str = option("Real", "answer word for real (one token; leading spaces are dropped, with a note)")
    max_new_tokens: int = option(0, "generate this many tokens of free text per image (0: logits only)")
    batch_size: int = option(16, "images per forward")
    num_workers: int = option(4, "data loader workers")
    seed: int = option(42, "random seed")
    image_size: int | None = option(None, "letterbox side (null: the checkpoint's)")
    torch_dtype: Literal["bfloat16", "float16", "float32"] = option("bfloat16", "weights dtype on GPU (CPU: float32)")
    fast_paths: bool = option(True, FAST_PATHS_HELP)
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail or skip and list")
    lora_r: int | None = option(None, "accepted for seed compatibility: the adapter's settings are used "
                                      "(a different value is reported)")
    lora_alpha: int | None = option(None, "as lora_r")
    lora_dropout: float | None = option(None, "as lora_r")
    lora_target_layers: list[int] | None = option(None, "as lora_r")

    perturb: list[str] = perturb_option()
    perturb_seed: int = perturb_seed_option()

    def __post_init__(self) -> None:
        check_image_size(self.image_size, allow_none=True)
        check_values(self)
