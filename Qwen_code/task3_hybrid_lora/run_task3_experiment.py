"""Task 3 in one command: train the hybrid LoRA (ViT + merger + LM, heads, fused soft tokens), then
evaluate the LM's answer, the heads' verdict and the heatmaps side by side.

    python Qwen_code/task3_hybrid_lora/run_task3_experiment.py [--root DIR] [--skip-train]
        [--train-set KEY=VALUE ...] [--eval-set KEY=VALUE ...] [--train-config FILE] [--eval-config FILE]

Steps: hybrid_train.py (config_hybrid_train.json), then hybrid_eval.py (config_hybrid_eval.json); the
training config's lora_checkpoint / head_checkpoint / fusion_checkpoint are the evaluation config's
inputs, so an override that moves one must move the other. The run stops at the first failing step.
"""

from __future__ import annotations

from pathlib import Path

from qwen_forensics.runner import Link, Step, experiment_main
from qwen_forensics.task_configs import Task3EvalConfig, Task3TrainConfig

HERE = Path(__file__).resolve().parent
STEPS = [
    Step("train", HERE / "hybrid_train.py", "Task 3 training: hybrid LoRA + heads + fusion projector", Task3TrainConfig,
         HERE / "config_hybrid_train.json"),
    Step("eval", HERE / "hybrid_eval.py", "Task 3 evaluation: LM answer, head verdict and pixel metrics",
         Task3EvalConfig, HERE / "config_hybrid_eval.json"),
]
LINKS = [Link(f"its {what}", "train", key, "eval", key)
         for what, key in (("adapter", "lora_checkpoint"), ("heads", "head_checkpoint"),
                           ("fusion projector", "fusion_checkpoint"))]

if __name__ == "__main__":
    raise SystemExit(experiment_main(__doc__, STEPS, links=LINKS))
