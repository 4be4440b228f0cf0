"""Task 1, subtask 1 in one command: train the ViT LoRA + heads, then evaluate with the heads.

    python Qwen_code/task1_modular_lora/run_subtask_vit_head_experiment.py [--root DIR] [--skip-train]
        [--train-set KEY=VALUE ...] [--eval-set KEY=VALUE ...] [--train-config FILE] [--eval-config FILE]

Steps: lora_train.py (config_lora.json), then subtask_vit_head_eval/lora_eval.py (config_eval.json).
The run stops at the first failing step.
"""

from __future__ import annotations

from pathlib import Path

from qwen_forensics.runner import Link, Step, experiment_main
from qwen_forensics.task_configs import Task1HeadEvalConfig, Task1TrainConfig

HERE = Path(__file__).resolve().parent
STEPS = [
    Step("train", HERE / "lora_train.py", "Task 1 training: ViT LoRA + forensic heads", Task1TrainConfig,
         HERE / "config_lora.json"),
    Step("eval", HERE / "subtask_vit_head_eval" / "lora_eval.py", "subtask 1: image and pixel metrics from the heads",
         Task1HeadEvalConfig, HERE / "subtask_vit_head_eval" / "config_eval.json"),
]
LINKS = [Link("its final checkpoint", "train", "final_trained_heads", "eval", "ckpt_path")]

if __name__ == "__main__":
    raise SystemExit(experiment_main(__doc__, STEPS, links=LINKS))
