"""Task 1, subtask 2 in one command: train the ViT LoRA + heads, then ask the full model Real/Fake.

    python Qwen_code/task1_modular_lora/run_subtask_full_model_experiment.py [--root DIR] [--skip-train]
        [--train-set KEY=VALUE ...] [--eval-set KEY=VALUE ...] [--train-config FILE] [--eval-config FILE]

Steps: lora_train.py (config_lora.json), then subtask_full_model_eval/full_model_eval.py
(config_full_model_eval.json). The run stops at the first failing step.
"""

from __future__ import annotations

from pathlib import Path

from qwen_forensics.runner import Link, Step, experiment_main
from qwen_forensics.task_configs import Task1FullModelEvalConfig, Task1TrainConfig

HERE = Path(__file__).resolve().parent
STEPS = [
    Step("train", HERE / "lora_train.py", "Task 1 training: ViT LoRA + forensic heads", Task1TrainConfig,
         HERE / "config_lora.json"),
    Step("eval", HERE / "subtask_full_model_eval" / "full_model_eval.py",
         "subtask 2: the full model with the visual LoRA answers Real/Fake", Task1FullModelEvalConfig,
         HERE / "subtask_full_model_eval" / "config_full_model_eval.json"),
]
LINKS = [Link("its final checkpoint", "train", "final_trained_heads", "eval", "lora_checkpoint")]

if __name__ == "__main__":
    raise SystemExit(experiment_main(__doc__, STEPS, links=LINKS))
