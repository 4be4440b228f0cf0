"""Training: what the training recipes run. The runtime every script shares (accelerator, seeds,
autocast, clocks, the first-batch look-ahead, the [speed] line: ``runtime``), the epoch loop and its
warm-up and best-checkpoint bookkeeping (``loop``), optimizer groups and schedule (``optim``),
activation recomputation (``recompute``), the losses of Tasks 1 and 3 (``losses``) and Task 2's
``TrainingArguments`` translation for Hugging Face ``Trainer`` (``hf_trainer``).
"""

from qwen_forensics import lazy_exports

# Exported name -> the module of this package that defines it (imported on first use: see ``lazy``).
_EXPORTS = {
    "preflight_trainer": "hf_trainer", "resolved_training_config": "hf_trainer", "trainer_arguments": "hf_trainer",
    "warm_up_trainer": "hf_trainer",
    "best_logged": "loop", "format_row": "loop", "keep_best": "loop", "train_epoch": "loop", "training_outputs":
    "loop", "warm_up_first_batch": "loop", "write_training_page": "loop",
    "preflight": "memory",
    "ForensicLossWeights": "losses", "HybridLossWeights": "losses", "forensic_loss": "losses", "hybrid_loss":
    "losses",
    "build_optimizer_and_schedule": "optim", "hybrid_optimizer": "optim", "optimizer_steps": "optim",
    "param_groups": "optim",
    "enable_gradient_checkpointing": "recompute", "recompute_frozen_blocks": "recompute",
    "FirstBatch": "runtime", "LoaderClock": "runtime", "autocast": "runtime", "evaluation_speed_line": "runtime",
    "loader_state": "runtime", "make_accelerator": "runtime", "peak_gib": "runtime", "restore_loader_state": "runtime",
    "seed_everything": "runtime", "speed_line": "runtime", "synchronized_clock": "runtime",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
