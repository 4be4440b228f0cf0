"""Task 2 training: LoRA on ViT blocks + the merger MLP, supervised by the LM loss on the answer.

The full Qwen2.5-VL model is loaded; LoRA goes on exactly the vision modules the config names
(``lora_target_blocks`` x ``lora_target_modules`` plus ``lora_extra_modules``), everything else is
frozen. Each sample is the chat prompt with its image followed by the answer word ("Fake"/"Real")
and the end-of-turn token; only those two tokens carry labels. Training runs on Hugging Face
``Trainer`` with ``training_args`` as written (``resume_from_checkpoint`` there resumes: a folder, or
true for the newest checkpoint in ``output_dir``), so it works the same under ``torchrun`` and
``accelerate launch``. The adapter is saved in PEFT format to ``save_lora_path`` with
``resolved_config.json`` holding the image geometry, prompt and answer words, which lora_infer.py
uses by default.

    python Qwen_code/task2_lm_lora/LORA.py --config Qwen_code/task2_lm_lora/config_lora_trainer.json [--root DIR]
    torchrun --nproc_per_node 2 Qwen_code/task2_lm_lora/LORA.py --root DIR
"""

from __future__ import annotations

import json
from pathlib import Path

from qwen_forensics.config import load_config_and_paths
from qwen_forensics.model.lora import format_targets
from qwen_forensics.task2 import build_trainer
from qwen_forensics.task_configs import Task2TrainConfig
from qwen_forensics.training import speed_line


def main(argv: list[str] | None = None) -> None:
    cfg, root, _ = load_config_and_paths(Task2TrainConfig, description=__doc__, argv=argv,
                                         default_config=Path(__file__).with_name("config_lora_trainer.json"))
    run = build_trainer(cfg, root)
    if run.trainer.is_world_process_zero():
        print(format_targets(run.targets))
        run.trainer.model.print_trainable_parameters()
    result = run.train()
    run.save(cfg)
    if run.trainer.is_world_process_zero():
        print(json.dumps(result.metrics, indent=1))
        seconds = result.metrics["train_runtime"]
        print(speed_line(round(result.metrics["train_samples_per_second"] * seconds), seconds, "training (Trainer loop)"))
        print(f"adapter: {cfg.save_lora_path}\nTrainer checkpoints: {run.trainer.args.output_dir}")


if __name__ == "__main__":
    main()
