"""Training: what the training recipes run. The runtime every script shares (accelerator, seeds,
autocast, clocks, the first-batch look-ahead, the [speed] line: ``runtime``), the epoch loop and its
warm-up and best-checkpoint bookkeeping (``loop``), optimizer groups and schedule (``optim``),
activation recomputation (``recompute``), the losses of Tasks 1 and 3 (``losses``) and Task 2's
``TrainingArguments`` translation for Hugging Face ``Trainer`` (``hf_trainer``).
"""

from qwen_forensics.training.hf_trainer import (preflight_trainer, resolved_training_config, trainer_arguments,
                                                warm_up_trainer)
from qwen_forensics.training.loop import (best_logged, format_row, keep_best, train_epoch, training_outputs,
                                          warm_up_first_batch)
from qwen_forensics.training.memory import preflight
from qwen_forensics.training.losses import ForensicLossWeights, HybridLossWeights, forensic_loss, hybrid_loss
from qwen_forensics.training.optim import build_optimizer_and_schedule, hybrid_optimizer, optimizer_steps, param_groups
from qwen_forensics.training.recompute import enable_gradient_checkpointing, recompute_frozen_blocks
from qwen_forensics.training.runtime import (FirstBatch, LoaderClock, autocast, evaluation_speed_line, loader_state,
                                             make_accelerator, peak_gib, restore_loader_state, seed_everything,
                                             speed_line, synchronized_clock)

__all__ = ["FirstBatch", "ForensicLossWeights", "HybridLossWeights", "LoaderClock", "autocast", "best_logged",
           "build_optimizer_and_schedule", "enable_gradient_checkpointing", "evaluation_speed_line", "forensic_loss",
           "format_row", "hybrid_loss", "hybrid_optimizer", "keep_best", "loader_state", "make_accelerator", "optimizer_steps",
           "param_groups", "peak_gib", "preflight", "preflight_trainer", "recompute_frozen_blocks",
           "resolved_training_config", "restore_loader_state", "seed_everything", "speed_line", "synchronized_clock", "train_epoch",
           "trainer_arguments", "training_outputs", "warm_up_first_batch", "warm_up_trainer"]
