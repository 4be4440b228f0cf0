"""Task 2 in one command: map the training index, train the LM-supervised ViT LoRA, evaluate it.

    python Qwen_code/task2_lm_lora/run_task2_experiment.py [--root DIR] [--skip-map] [--skip-train]
        [--map-set KEY=VALUE ...] [--train-set KEY=VALUE ...] [--infer-set KEY=VALUE ...]
        [--map-config FILE] [--train-config FILE] [--infer-config FILE]

Steps: map.py (config_map.json), LORA.py (config_lora_trainer.json), lora_infer.py
(config_lora_infer.json). map's final_dataset_path is the trainer's train_dataset_path and the
trainer's save_lora_path the evaluation's lora_path, so an override that moves one must move the
other. The run stops at the first failing step. For several GPUs, run the steps by hand with
``torchrun --nproc_per_node N Qwen_code/task2_lm_lora/LORA.py ...`` (and ``accelerate launch`` for
lora_infer.py).
"""

from __future__ import annotations

from pathlib import Path

from qwen_forensics.runner import Link, Step, experiment_main
from qwen_forensics.task_configs import Task2InferConfig, Task2MapConfig, Task2TrainConfig

HERE = Path(__file__).resolve().parent
STEPS = [
    Step("map", HERE / "map.py", "Task 2 preprocessing: index -> training set (messages + answer, image digests)",
         Task2MapConfig, HERE / "config_map.json"),
    Step("train", HERE / "LORA.py", "Task 2 training: LoRA on ViT blocks + merger with the LM answer loss",
         Task2TrainConfig, HERE / "config_lora_trainer.json"),
    Step("infer", HERE / "lora_infer.py", "Task 2 evaluation: P(fake) from the answer-token logits", Task2InferConfig,
         HERE / "config_lora_infer.json"),
]
LINKS = [
    Link("the training set", "map", lambda cfg: cfg.training_job().final_dataset_path, "train", "train_dataset_path"),
    Link("the adapter", "train", "save_lora_path", "infer", "lora_path"),
]

if __name__ == "__main__":
    raise SystemExit(experiment_main(__doc__, STEPS, links=LINKS))
