"""The config dataclass of every script, with the seed's keys (SPEC 4) plus documented additions.

Inputs default to the user's layout under ``/root/autodl-tmp`` (``--root`` or ``$QWEN_FORENSICS_ROOT``
relocates them); optional inputs (a validation index, an evaluation set during training) are off
unless the config names them. Outputs default to names inside the script's output folder, and a
relative output name in a config is a file inside that folder (see ``config``). Keys of the
earlier scripts that changed name are accepted through each class's ``ALIASES``.
"""

from __future__ import annotations

from qwen_forensics.task_configs.task1 import Task1FullModelEvalConfig, Task1HeadEvalConfig, Task1TrainConfig
from qwen_forensics.task_configs.task2 import (MapDataset, MapJob, Task2EvalSet, Task2InferConfig, Task2MapConfig,
                                               Task2TrainConfig)
from qwen_forensics.task_configs.task3 import (HybridLora, LoraLM, LoraSwitch, LoraVisual, LossWeights, TargetText,
                                               Task3EvalConfig, Task3TrainConfig)

__all__ = ["HybridLora", "LoraLM", "LoraSwitch", "LoraVisual", "LossWeights", "MapDataset", "MapJob", "SHIPPED_CONFIGS",
           "TargetText", "Task1FullModelEvalConfig", "Task1HeadEvalConfig", "Task1TrainConfig", "Task2EvalSet",
           "Task2InferConfig", "Task2MapConfig", "Task2TrainConfig", "Task3EvalConfig", "Task3TrainConfig"]

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
