"""The config dataclass of every script, with the seed's keys (SPEC 4) plus documented additions.

Inputs default to the user's layout under ``/root/autodl-tmp`` (``--root`` or ``$QWEN_FORENSICS_ROOT``
relocates them); optional inputs (a validation index, an evaluation set during training) are off
unless the config names them. Outputs default to names inside the script's output folder, and a
relative output name in a config is a file inside that folder (see ``config``). Keys of the
earlier scripts that changed name are accepted through each class's ``ALIASES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from .checkpoint_paths import adapter_folder, checkpoint_folder, dataset_file, weights_file
from .config import ConfigError, option
from .prompts import DEFAULT_PROMPT, prompt_from_template

ROOT = "/root/autodl-tmp"
MODEL = f"{ROOT}/Qwen2.5-VL-7B-Instruct"
DATA = f"{ROOT}/data"
T1 = f"{ROOT}/task1_modular_lora"
T2 = f"{ROOT}/task2_lm_lora"
T3 = f"{ROOT}/task3_hybrid_lora"
VIT_LORA_MODULES = ["attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


ALLOW_VAL_OVERLAP_HELP = ("run even when the validation index shares video groups with the training index "
                          "(warned; the overlap counts are recorded with the results). Off: the script stops "
                          "before loading a model, since a leaked validation set inflates every number taken from it")


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
    OUTPUT_DIR: ClassVar[str] = "out_dir"
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
    final_trained_heads: str = option("final", "final checkpoint folder (a name ending in .pt is the folder of that "
                                      "stem)", path="out", resolve=checkpoint_folder)
    resume: str | None = option(None, "checkpoint folder to continue from (null: fresh run)", path="in",
                                resolve=checkpoint_folder)

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
    OUTPUT_DIR: ClassVar[str] = "out_dir"
    ckpt_path: str = option(f"{T1}/training/final", "Task 1 checkpoint folder (a name ending in .pt: the folder of "
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
    num_heatmaps: int = option(16, "heatmap pictures to write (fakes first)")
    pixel_threshold: float = option(0.5, "heatmap probability threshold for pixel metrics")
    mask_rule: MaskRuleConfig = option(factory=MaskRuleConfig, help="GT mask binarisation rule")
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail or skip and list")
    amp_dtype: Literal["bf16", "fp16", "fp32"] = option("bf16", "autocast dtype on GPU")
    lora_r: int | None = option(None, "accepted for seed compatibility: the adapter's own settings are used "
                                      "(a different value is reported)")
    lora_alpha: int | None = option(None, "as lora_r")
    lora_dropout: float | None = option(None, "as lora_r")
    lora_target_layers: list[int] | None = option(None, "as lora_r")


@dataclass
class Task1FullModelEvalConfig:
    """Task 1 subtask 2: the full model with the Task 1 visual LoRA answers Real/Fake."""
    OUTPUT_DIR: ClassVar[str] = "out_dir"
    model_path: str = option(MODEL, "Qwen2.5-VL model folder", path="in")
    lora_checkpoint: str = option(f"{T1}/training/final", "Task 1 checkpoint folder (its visual LoRA is used; a "
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
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail or skip and list")
    lora_r: int | None = option(None, "accepted for seed compatibility: the adapter's settings are used "
                                      "(a different value is reported)")
    lora_alpha: int | None = option(None, "as lora_r")
    lora_dropout: float | None = option(None, "as lora_r")
    lora_target_layers: list[int] | None = option(None, "as lora_r")


# --------------------------------------------------------------------------------------------- Task 2
@dataclass
class MapDataset:
    """One index of ``config_map.json``'s ``datasets`` list (the earlier map.py's shape)."""
    annotation_file: str = option(help="index to convert", path="in")
    name: str = option("train", "label used in logs and in the default output names")
    data_root: str | None = option(None, "folder image paths are relative to (null: the top-level data_root)", path="in")
    batch_output_dir: str | None = option(None, "folder of batch files (null: <out_dir>/<name>_batches)", path="out")
    final_dataset_path: str | None = option(None, "merged set (null: <out_dir>/<name>.jsonl; a name without .jsonl "
                                            "is a folder holding records.jsonl)", path="out", resolve=dataset_file)
    prompt_template: str | None = option(None, "this dataset's prompt template (null: the top-level one)")


@dataclass
class MapJob:
    """One conversion run by map.py (built from the config; not a config section)."""
    name: str
    annotation_file: str
    data_root: str
    batch_output_dir: str
    final_dataset_path: str
    prompt_text: str
    fake_token: str
    real_token: str


@dataclass
class Task2MapConfig:
    """Task 2 preprocessing: index -> training records (messages + answer), resumable batches."""
    OUTPUT_DIR: ClassVar[str] = "out_dir"
    base_model_path: str = option(MODEL, "Qwen2.5-VL model folder (tokenizer and template)", path="in")
    annotation_file: str | None = option(None, "index to convert (or give `datasets`)", path="in")
    data_root: str = option(DATA, "folder that index paths are relative to", path="in")
    out_dir: str = option(f"{T2}/datasets", "output folder; relative output names are inside it", path="out_dir")
    map_batch_size: int = option(500, "records per batch file (a rerun skips finished batches)")
    map_kwargs: dict[str, Any] = option(factory=dict, help="accepted for seed compatibility (no effect: nothing is "
                                                           "tokenised here any more)")
    batch_output_dir: str = option("batches", "folder of batch files", path="out")
    final_dataset_path: str = option("train.jsonl", "merged training set", path="out", resolve=dataset_file)
    prompt_text: str | None = option(None, "user prompt (null: the template's question, else the default prompt)")
    prompt_template: str | None = option(None, "the earlier scripts' 'question ... Answer: {label_text}': the text "
                                               "before {label_text} (an 'Answer:' cue dropped) is the user prompt, "
                                               "the label word is the assistant's answer")
    fake_token: str = option("Fake", "answer for fakes")
    real_token: str = option("Real", "answer for reals")
    datasets: list[MapDataset] | None = option(None, "several indexes to convert (the earlier map.py's shape); "
                                                     "replaces annotation_file / batch_output_dir / final_dataset_path")
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail or skip and list")

    def validate(self) -> None:
        _check_positive(map_batch_size=self.map_batch_size)
        if (self.annotation_file is None) == (self.datasets is None):
            raise ConfigError("give either annotation_file (one index) or datasets (a list of indexes), not both "
                              "and not neither")
        if self.prompt_text is not None and self.prompt_template is not None:
            raise ConfigError("give prompt_text or prompt_template, not both")
        if self.datasets is not None:
            names = [d.name for d in self.datasets]
            if not names or len(set(names)) != len(names):
                raise ConfigError(f"datasets: each entry needs a distinct name, got {names}")

    def _prompt(self, template: str | None) -> str:
        if template is not None:
            return prompt_from_template(template, self.fake_token, self.real_token)
        return self.prompt_text if self.prompt_text is not None else DEFAULT_PROMPT

    def training_job(self) -> MapJob:
        """The job whose output LORA.py trains on: the one named "train", else the first."""
        jobs = self.jobs()
        return next((job for job in jobs if job.name == "train"), jobs[0])

    def jobs(self) -> list[MapJob]:
        """Every conversion this config asks for, with its defaults filled in."""
        if self.datasets is None:
            return [MapJob("train", self.annotation_file, self.data_root, self.batch_output_dir,
                           self.final_dataset_path, self._prompt(self.prompt_template), self.fake_token,
                           self.real_token)]
        out = []
        for d in self.datasets:
            batch_dir = d.batch_output_dir or f"{self.out_dir}/{d.name}_batches"
            final = d.final_dataset_path or f"{self.out_dir}/{d.name}.jsonl"
            out.append(MapJob(d.name, d.annotation_file, d.data_root or self.data_root, batch_dir, final,
                              self._prompt(d.prompt_template or self.prompt_template), self.fake_token,
                              self.real_token))
        return out


@dataclass
class Task2EvalSet:
    """The earlier LORA.py's ``test_dataset`` object: an index evaluated during training."""
    annotation_file: str = option(help="index to evaluate on during training", path="in")
    data_root: str | None = option(None, "folder its image paths are relative to (null: the top-level data_root)",
                                   path="in")
    dataset_limit: int | None = option(None, "use only the first N records (null: all)")
    map_kwargs: dict[str, Any] = option(factory=dict, help="accepted for seed compatibility (no effect)")


@dataclass
class Task2TrainConfig:
    """Task 2 training: LM-supervised LoRA on ViT blocks + merger with HF Trainer."""
    OUTPUT_DIR: ClassVar[str] = "out_dir"
    base_model_path: str = option(MODEL, "Qwen2.5-VL model folder", path="in")
    torch_dtype: Literal["bfloat16", "float16", "float32"] = option("bfloat16", "weights dtype on GPU")
    train_dataset_path: str = option(f"{T2}/datasets/train.jsonl", "output of map.py (a .jsonl file, or a folder "
                                     "holding records.jsonl)", path="in", resolve=dataset_file)
    test_dataset: str | Task2EvalSet | None = option(None, "evaluation set during training: a map.py output, or an "
                                                           "object {annotation_file, data_root, dataset_limit}",
                                                     path="in", resolve=dataset_file)
    data_root: str = option(DATA, "folder that image paths are relative to", path="in")
    out_dir: str = option(f"{T2}/training", "output folder; relative output names are inside it", path="out_dir")
    image_size: int | None = option(448, "letterbox side; null keeps native resolution")
    lora_target_blocks: list[int] = option(factory=lambda: [7, 15, 23, 31], help="ViT blocks with LoRA")
    lora_target_modules: list[str] = option(factory=lambda: list(VIT_LORA_MODULES), help="modules in each block")
    lora_extra_modules: list[str] = option(factory=lambda: ["merger.mlp.0", "merger.mlp.2"],
                                           help="extra vision modules with LoRA (the merger MLP), with or without "
                                                "the 'visual.' prefix")
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(16, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    lora_bias: Literal["none", "all", "lora_only"] = option("none", "PEFT bias mode")
    lora_task_type: str | None = option("CAUSAL_LM", "PEFT task type")
    training_args: dict[str, Any] = option(factory=dict, help="Hugging Face TrainingArguments, as written")
    save_lora_path: str = option("lora_adapter", "adapter folder (PEFT format + resolved_config.json with the "
                                 "prompt setup)", path="out", resolve=adapter_folder)

    def validate(self) -> None:
        _check_image_size(self.image_size, allow_none=True)
        _check_positive(lora_r=self.lora_r)


@dataclass
class Task2InferConfig:
    """Task 2 evaluation: P(fake) from the answer-token logits of the LoRA'd model."""
    OUTPUT_DIR: ClassVar[str] = "out_dir"
    base_model_path: str = option(MODEL, "Qwen2.5-VL model folder", path="in")
    lora_path: str = option(f"{T2}/training/lora_adapter", "adapter folder from LORA.py", path="in",
                            resolve=adapter_folder)
    annotation_file: str = option(f"{DATA}/testset2/annotation.json", "index to evaluate", path="in")
    val_annotation_file: str | None = option(None, "validation index used only to tune the threshold", path="in")
    allow_val_overlap: bool = option(False, ALLOW_VAL_OVERLAP_HELP)
    data_root: str = option(DATA, "folder that index paths are relative to", path="in")
    out_dir: str = option(f"{T2}/evaluation", "output folder", path="out_dir")
    csv_path: str = option("metrics.csv", "metrics CSV; a name is a file in out_dir", path="out")
    output_json: str = option("predictions.json", "per-image predictions; a name is a file in out_dir", path="out")
    prompt_text: str | None = option(None, "user prompt after the image (null: the adapter's training prompt)")
    fake_token: str | None = option(None, "answer word for fake; the adapter's trained word is read (a different "
                                          "word is reported)")
    real_token: str | None = option(None, "as fake_token")
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
    lora_checkpoint: str = option("final/adapter", "where the final adapter folder is written", path="out",
                                  resolve=adapter_folder)
    head_checkpoint: str = option("final/heads.safetensors", "final heads file (a .pt name is written as "
                                  ".safetensors)", path="out", resolve=weights_file)
    fusion_checkpoint: str = option("final/fusion.safetensors", "final fusion file (a .pt name is written as "
                                    ".safetensors)", path="out", resolve=weights_file)
    resume: str | None = option(None, "checkpoint folder to continue from", path="in")

    def validate(self) -> None:
        _check_image_size(self.image_size, allow_none=False)
        if self.fusion_tokens < 0:
            raise ConfigError("fusion_tokens must be >= 0")


@dataclass
class Task3EvalConfig:
    """Task 3 evaluation: LM answer, head verdict and pixel metrics side by side."""
    OUTPUT_DIR: ClassVar[str] = "out_dir"
    ALIASES: ClassVar[dict[str, str]] = {"ann_eval": "annotation_file", "metrics_csv": "csv_path",
                                         "inference_output": "output_json"}
    base_model_path: str = option(MODEL, "Qwen2.5-VL model folder", path="in")
    lora_checkpoint: str = option(f"{T3}/training/final/adapter", "adapter folder (or a file inside it)", path="in",
                                  resolve=adapter_folder)
    head_checkpoint: str = option(f"{T3}/training/final/heads.safetensors", "heads file (a .pt name: the "
                                  ".safetensors of that stem)", path="in", resolve=weights_file)
    fusion_checkpoint: str = option(f"{T3}/training/final/fusion.safetensors", "fusion file (a .pt name: the "
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
