"""Checkpoints: every on-disk layout the scripts write and read, and nothing else of the library names
those files. Strict tensor I/O (``tensors``), every file and folder name with the earlier scripts'
names mapped onto them (``names``), PEFT adapters (``adapters``), the heads file shared by Tasks 1
and 3 (``heads``), one module per task (``task1``, ``task2``, ``task3``), what an evaluation config
repeats from training (``notes``), which task wrote a folder (``detect``, for predict.py) and the
run folder with its manifest and ``previous_runs/`` (``runs``).

Task 1 (``lora_train.py``: ``epoch_N/``, ``best_by_*/`` and the final ``final_trained_heads``)::

    adapter/                    PEFT adapter of the vision tower (names relative to the tower)
    heads.safetensors           forensic heads; metadata "heads_config" (constructor args), "visual_layers"
    resolved_config.json        the training config
    training_state.pt, rng_state_*.pt   for resume

Task 2: LORA.py's adapter folder (PEFT format) whose ``resolved_config.json`` also records the
prompt setup (image size, prompt, answer words) that evaluation reads back (``adapter_setup``).

Task 3 (``hybrid_train.py`` writes one folder per epoch; the final one's three weight paths come from
``lora_checkpoint`` / ``head_checkpoint`` / ``fusion_checkpoint``)::

    adapter/                 one PEFT adapter over the full model (names relative to it); absent
                             when every LoRA component is switched off
    heads.safetensors        forensic heads, as in Task 1
    fusion.safetensors       fusion projector (no tensors with fusion_tokens = 0); metadata
                             "fusion_config" and "hybrid_spec" (prompt, answer words, image size,
                             tapped layers, LoRA targets): everything needed to rebuild the model
    resolved_config.json, training_state.pt, rng_state_*.pt

The seed's evaluation configs repeat training settings (LoRA rank, layers, answer words); the
checkpoint's own are what is loaded, and a repeated value that differs is reported.

The run folder (``runs``): ``run_manifest.json`` and ``previous_runs/<start time>/``.
"""

from qwen_forensics.checkpoints.adapters import load_adapter_strict, save_adapter
from qwen_forensics.checkpoints.detect import (MODEL_KEYS, Checkpoint, CheckpointError, base_model_path,
                                               detect_checkpoint)
from qwen_forensics.checkpoints.heads import load_heads
from qwen_forensics.checkpoints.names import best_dir, epoch_dir
from qwen_forensics.checkpoints.notes import check_seed_lora_keys, lora_config_notes, seed_key_notes
from qwen_forensics.checkpoints.runs import Run, start_config_run, start_run
from qwen_forensics.checkpoints.task1 import (attach_task1_checkpoint, attach_task1_lora, checkpoint_image_size,
                                              resume_task1, save_task1_checkpoint)
from qwen_forensics.checkpoints.task2 import adapter_setup, resolve_infer_setup
from qwen_forensics.checkpoints.task3 import (CheckpointPaths, answer_ids_for, load_hybrid_model, read_hybrid_spec,
                                              save_task3_checkpoint)
from qwen_forensics.checkpoints.tensors import load_training_state, read_resolved_config, write_resolved_config

__all__ = ["Checkpoint", "CheckpointError", "CheckpointPaths", "MODEL_KEYS", "Run", "adapter_setup", "answer_ids_for",
           "attach_task1_checkpoint", "attach_task1_lora", "best_dir", "check_seed_lora_keys", "checkpoint_image_size",
           "base_model_path", "detect_checkpoint", "epoch_dir", "load_adapter_strict", "load_heads", "load_hybrid_model",
           "load_training_state", "lora_config_notes", "read_hybrid_spec", "read_resolved_config",
           "resolve_infer_setup", "resume_task1", "save_adapter", "save_task1_checkpoint", "save_task3_checkpoint",
           "seed_key_notes", "start_config_run", "start_run", "write_resolved_config"]
