"""Task 2 configs: map.py (index -> training records), LORA.py (Trainer), lora_infer.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from qwen_forensics.checkpoints.names import DATASET_FILE, adapter_folder, dataset_file
from qwen_forensics.config.loading import ConfigError, option
from qwen_forensics.prompts import DEFAULT_PROMPT, prompt_from_template
from qwen_forensics.task_configs.common import (perturb_option, perturb_seed_option,
                                                ALLOW_VAL_OVERLAP_HELP, GPU_MEMORY_HELP, FAST_PATHS_HELP, DATA,
                                                EVAL_OUTPUT_ALIASES, MODEL, T2, VIT_LORA_MODULES, check_image_size,
                                                check_values)


@dataclass
class MapDataset:
    """One index of ``config_map.json``'s ``datasets`` list (the earlier map.py's shape)."""
    annotation_file: str = option(help="index to convert", path="in")
    name: str = option("train", "label used in logs and in the default output names")
    data_root: str | None = option(None, "folder image paths are relative to (null: the top-level data_root)", path="in")
    batch_output_dir: str | None = option(None, "folder of batch files (null: <out_dir>/<name>_batches)", path="out")
    final_dataset_path: str | None = option(None, "merged set (null: <out_dir>/<name>.jsonl; a name without .jsonl "
                                            f"is a folder holding {DATASET_FILE})", path="out", resolve=dataset_file)
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
    fake_word: str
    real_word: str


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

    def __post_init__(self) -> None:
        check_values(self)
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
            return prompt_from_template(template)
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
    RESUME_MAY_CHANGE: ClassVar[tuple[str, ...]] = tuple(
        f"training_args.{key}" for key in ("resume_from_checkpoint", "num_train_epochs", "max_steps",
                                           "dataloader_num_workers", "logging_steps", "save_steps", "save_total_limit",
                                           "disable_tqdm", "report_to"))
    base_model_path: str = option(MODEL, "Qwen2.5-VL model folder", path="in")
    torch_dtype: Literal["bfloat16", "float16", "float32"] = option("bfloat16", "weights dtype on GPU")
    fast_paths: bool = option(True, FAST_PATHS_HELP)
    gpu_memory_gib: float | None = option(None, GPU_MEMORY_HELP)
    train_dataset_path: str = option(f"{T2}/datasets/train.jsonl", "output of map.py (a .jsonl file, or a folder "
                                     f"holding {DATASET_FILE})", path="in", resolve=dataset_file)
    test_dataset: str | Task2EvalSet | None = option(None, "evaluation set during training: a map.py output, or an "
                                                           "object {annotation_file, data_root, dataset_limit}",
                                                     path="in", resolve=dataset_file)
    data_root: str | None = option(None, "folder the training set's image paths are relative to (null: the data "
                                         "root map.py recorded next to train_dataset_path; a folder named here "
                                         "replaces it)", path="in")
    out_dir: str = option(f"{T2}/training", "output folder; relative output names are inside it (not in the "
                          "config: the folder of save_lora_path when that is an absolute path)", path="out_dir")
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
    save_lora_path: str = option("lora_adapter", "adapter folder (PEFT format + its recorded config with the "
                                 "prompt setup)", path="out", resolve=adapter_folder)

    def __post_init__(self) -> None:
        check_image_size(self.image_size, allow_none=True)
        check_values(self)


@dataclass
class Task2InferConfig:
    """Task 2 evaluation: P(fake) from the answer-token logits of the LoRA'd model."""
    OUTPUT_DIR: ClassVar[str] = "out_dir"
    ALIASES: ClassVar[dict[str, str]] = EVAL_OUTPUT_ALIASES
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
    fast_paths: bool = option(True, FAST_PATHS_HELP)
    on_bad_sample: Literal["fail", "skip"] = option("fail", "bad index records: fail or skip and list")

    perturb: list[str] = perturb_option()
    perturb_seed: int = perturb_seed_option()

    def __post_init__(self) -> None:
        check_image_size(self.image_size, allow_none=True)
        check_values(self)


